"""The API policy against the scripted OpenAI-compatible server: retries, faults, tool calls, BFCL."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

import agentgym
from agentgym.agents.base import PolicyError, SamplingParams
from agentgym.agents.openai_policy import APIRetryError, OpenAIPolicy
from agentgym.rollout import rollout
from agentgym.store import read_trajectories
from agentgym.testing.openai_server import Fault, Reply, ScriptedOpenAIServer

HI = [[{"role": "user", "content": "hi"}]]


def echo_responder(body):
    """Answers Echo-v0 deterministically from the conversation: wrong first, then right for half the
    words (by hash), so results depend on the content only, never on timing or retries."""
    conv = body["messages"]
    word = conv[0]["content"].split()[-1]
    turn = sum(1 for m in conv if m["role"] == "assistant")
    good = int(hashlib.sha1(word.encode()).hexdigest(), 16) % 2 == 0
    text = word if (turn == 1 and good) or turn == 2 else f"not-{word}"
    return Reply(content=text, logprobs=[-0.5, -0.25], tokens=["a", "b"])


@pytest.mark.parametrize("kind", ["429", "500", "503", "timeout", "malformed", "truncated"])
def test_each_transient_fault_is_retried(kind):
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="fine"), timeout_seconds=1.0) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, timeout=0.3, backoff_initial=0.01)
        server.fail_next(Fault(kind, retry_after=0.01, seconds=1.0), kind if kind != "timeout" else "500")
        assert policy.generate(HI)[0].text == "fine"
        assert [f for _, f in server.requests][:3] == [kind, kind if kind != "timeout" else "500", None]
        assert policy.attempts == 3


def test_retry_after_is_honoured():
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="ok")) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, backoff_initial=0.0, backoff_max=0.0)
        server.fail_next(Fault("429", retry_after=0.6))
        start = time.perf_counter()
        assert policy.generate(HI)[0].text == "ok"
        assert time.perf_counter() - start >= 0.6


def test_clear_error_after_the_last_try():
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="ok")) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, max_attempts=3, backoff_initial=0.01)
        server.fail_next("503", "500", "500")
        with pytest.raises(APIRetryError, match=r"gave up after 3 tries; last error: InternalServerError"):
            policy.generate(HI)
        assert len(server.requests) == 3


def test_permanent_401_fails_fast_without_retries():
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="ok"), api_key="right") as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, api_key="wrong", max_attempts=10)
        start = time.perf_counter()
        with pytest.raises(PolicyError, match=r"HTTP 401 \(not retried\): .*Incorrect API key") as info:
            rollout(policy, "agentgym/Echo-v0", 8, progress=False)
        assert not isinstance(info.value, APIRetryError)
        assert time.perf_counter() - start < 5 and len(server.requests) <= 8  # one try per request


def test_native_tool_calls_logprobs_and_messages():
    tools = [{"type": "function", "function": {"name": "ls", "parameters": {"type": "object", "properties": {}}}}]
    with ScriptedOpenAIServer(responder=lambda b: Reply(content=None, tool_calls=[{"name": "ls", "arguments": {"a": True}}],
                                                        logprobs=[-0.1, -0.2, -0.3])) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url)
        conv = [{"role": "user", "content": "list"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": {}}}]},
                {"role": "tool", "content": "a.txt", "tool_call_id": "c1"}]
        [out] = policy.generate([conv], tools, SamplingParams(temperature=0.5, max_new_tokens=7, seed=3))
        body = server.requests[0][0]
    assert out.tool_calls[0].name == "ls" and out.tool_calls[0].arguments == {"a": True}
    assert out.text == '<tool_call>{"name": "ls", "arguments": {"a": true}}</tool_call>'
    assert out.logprobs == [-0.1, -0.2, -0.3] and out.finish_reason == "tool_calls"
    assert body["tools"] == tools and body["logprobs"] is True and body["max_tokens"] == 7 and body["seed"] == 3
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == "{}"  # OpenAI wants a JSON string


def test_concurrency_limit_is_respected():
    active, peak, lock = [0], [0], threading.Lock()

    def slow(body):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return Reply(content="x")

    with ScriptedOpenAIServer(responder=slow) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, max_concurrency=3)
        assert len(policy.generate(HI * 12)) == 12
    assert peak[0] == 3


def test_streaming_and_truncated_stream_from_the_server():
    from openai import OpenAI
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="a fairly long streamed answer")) as server:
        client = OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        chunks = list(client.chat.completions.create(model="m", messages=HI[0], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "a fairly long streamed answer"
        server.fail_next("truncated")
        got = []
        with pytest.raises(Exception):
            for c in client.chat.completions.create(model="m", messages=HI[0], stream=True):
                got.append(c.choices[0].delta.content)
            raise AssertionError(f"stream ended normally: {got}")  # without [DONE] it must not look complete
        assert 0 < len(got) < len(chunks)


def test_fault_injection_64_episodes_identical_to_fault_free(tmp_path):
    tasks = [{"word": w} for w in ("apple", "river", "stone", "cloud", "ember", "field", "glass", "honey")]

    def run(fault_rate, store):
        with ScriptedOpenAIServer(responder=echo_responder, fault_rate=fault_rate, seed=1,
                                  timeout_seconds=0.5) as server:
            policy = OpenAIPolicy("m", base_url=server.base_url, max_concurrency=16, max_attempts=12,
                                  timeout=0.25, backoff_initial=0.005, backoff_max=0.05)
            trajs = rollout(policy, "agentgym/Echo-v0", tasks, group_size=8, progress=False, store=store,
                            max_concurrent=64)
            return trajs, [f for _, f in server.requests]

    clean, clean_faults = run(0.0, tmp_path / "clean.jsonl")
    faulty, faults = run(0.3, tmp_path / "faulty.jsonl")
    assert not any(clean_faults) and 0.2 < sum(map(bool, faults)) / len(faults) < 0.4
    assert {f for f in faults if f} == {"429", "500", "503", "timeout", "malformed", "truncated"}
    assert len(faulty) == 64 and len(list(read_trajectories(tmp_path / "faulty.jsonl"))) == 64

    def outcome(t):
        return (t.task_id, t.metadata["member"], t.final_reward, t.success,
                [(s.action_text, s.observation, s.reward, s.info.get("logprobs")) for s in t.steps])
    assert [outcome(t) for t in faulty] == [outcome(t) for t in clean]
    assert {t.success for t in clean} == {True} and {t.num_steps for t in clean} == {2, 3}


def test_bfcl_episode_with_the_api_policy():
    """Native tool calls from the API drive BFCL: the scripted server replays the ground truth."""
    from agentgym.envs.bfcl.data import get_entry
    from agentgym.parsing import AutoToolCallParser

    entry = get_entry("multi_turn_base_0")
    parse = AutoToolCallParser()

    def responder(body):
        conv = body["messages"]
        users = sum(1 for m in conv if m["role"] == "user")
        if conv[-1]["role"] != "user":
            return Reply(content="Done.")
        calls = parse("[" + ", ".join(entry.ground_truth[users - 1]) + "]").calls
        return Reply(content=None, tool_calls=[{"name": c.name, "arguments": c.arguments} for c in calls])

    with ScriptedOpenAIServer(responder=responder) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url)
        trajs = rollout(policy, "agentgym/BFCLMultiTurn-v0", [{"task_id": "multi_turn_base_0"}], group_size=2,
                        env_kwargs={"split": "all"}, progress=False)
        assert server.requests[0][0]["tools"]  # the env's tool schemas went out as native tools
    for t in trajs:
        assert t.error is None and t.terminated and t.final_reward == 1.0 and t.success
        assert t.steps[0].info["tool_calls"]
    assert trajs[0].messages == trajs[1].messages
