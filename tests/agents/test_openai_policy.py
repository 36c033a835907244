"""The API policy against the scripted OpenAI-compatible server: retries, faults, tool calls, BFCL."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest

import agentgym
from agentgym.agents.base import PolicyError, SamplingParams
from agentgym.agents.openai_policy import APIRetryError, OpenAIPolicy, _header_seconds
from agentgym.rollout import rollout
from agentgym.store import read_trajectories
from agentgym.testing.openai_server import MISBEHAVIOURS, Fault, Reply, ScriptedOpenAIServer

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
    # The deadline is short only where the fault is a stall (longer than it); elsewhere a loaded machine's
    # slow answer must not count as one more fault.
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="fine"), timeout_seconds=6.0) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, timeout=2.5 if kind == "timeout" else 20.0,
                              backoff_initial=0.01)
        server.fail_next(Fault(kind, retry_after=0.01, seconds=6.0), kind if kind != "timeout" else "500")
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
        member = getattr(t, "member", None)  # a typed field, or (older stores) in the metadata
        return (t.task_id, t.metadata["member"] if member is None else member, t.final_reward, t.success,
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


# ---------------------------------------------------------------------------------------- API key
@pytest.mark.parametrize("env, kwargs, expected", [
    ({"OPENAI_API_KEY": "sk-env"}, {}, "sk-env"),
    ({"OPENAI_API_KEY": "sk-env"}, {"api_key": "sk-arg"}, "sk-arg"),
    ({"OPENAI_API_KEY": "sk-env", "OTHER_KEY": "sk-other"}, {"api_key_env": "OTHER_KEY"}, "sk-other"),
    ({"OPENAI_API_KEY": "sk-env"}, {"api_key_env": None}, "EMPTY"),
    ({}, {}, "EMPTY"),
])
def test_api_key_from_argument_environment_or_empty(monkeypatch, env, kwargs, expected):
    for name in ("OPENAI_API_KEY", "OTHER_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="ok"), api_key=expected) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, **kwargs)
        assert policy.generate(HI)[0].text == "ok"  # the server refuses any other key with a 401
        assert server.request_headers[0]["authorization"] == f"Bearer {expected}"
        policy.close()


# ---------------------------------------------------------------------------------------- deadline
@pytest.mark.parametrize("kind", ["drip", "drip_headers"])
def test_slow_drip_hits_the_whole_request_deadline(kind):
    """One byte every 0.1 s never trips a 0.5 s per-read timeout; the request deadline still holds."""
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="fine")) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, timeout=0.5, max_attempts=1)
        server.fail_next(Fault(kind, interval=0.1))
        start = time.perf_counter()
        with pytest.raises(APIRetryError, match=r"gave up after 1 tries; last error: DeadlineExceeded: no complete "
                                                r"response within the 0.5 s request deadline"):
            policy.generate(HI)
        assert 0.4 < time.perf_counter() - start < 2.0
        server.fail_next(Fault(kind, interval=0.1))  # and it is retried like any timeout
        policy2 = OpenAIPolicy("m", base_url=server.base_url, timeout=0.3, max_attempts=2, backoff_initial=0.01)
        assert policy2.generate(HI)[0].text == "fine" and policy2.attempts == 2
        policy.close()
        policy2.close()


# ---------------------------------------------------------------------------------------- bad headers
BAD_RETRY_AFTER = [{"Retry-After": v} for v in ("nan", "NaN", "inf", "-inf", "-5", "1e999", "soon", "", "0x10",
                                                  "1_0", "99999999999999999999999999e99")] + [
    {"Retry-After-Ms": "nan"}, {"Retry-After-Ms": "inf", "Retry-After": "nan"}]


def test_bad_retry_after_headers_fall_back_to_backoff():
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="ok")) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, max_attempts=len(BAD_RETRY_AFTER) + 1,
                              backoff_initial=0.001, backoff_max=0.01, max_retry_after=60)
        server.fail_next(*[Fault("429", retry_after=None, headers=h) for h in BAD_RETRY_AFTER])
        start = time.perf_counter()
        assert policy.generate(HI)[0].text == "ok"
        assert time.perf_counter() - start < 2 and policy.attempts == len(BAD_RETRY_AFTER) + 1
        server.fail_next(Fault("503", headers={"Retry-After": "nan"}), Fault("429", headers={"Retry-After": "nan"}))
        policy2 = OpenAIPolicy("m", base_url=server.base_url, max_attempts=2, backoff_initial=0.001)
        with pytest.raises(APIRetryError, match="gave up after 2 tries; last error: RateLimitError"):
            policy2.generate(HI)
        policy.close()
        policy2.close()


def test_retry_after_values():
    import email.utils
    assert _header_seconds("0.25", 1.0) == 0.25 and _header_seconds("250", 1e-3) == 0.25
    for junk in ("nan", "inf", "-1", "1e999", "", "soon", "Wed, 99 Foo 2015"):
        assert _header_seconds(junk, 1.0) is None, junk
    assert _header_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1.0) == 0.0  # in the past: now
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < _header_seconds(soon, 1.0) <= 30
    assert _header_seconds(soon, 1e-3) is None  # -ms takes numbers only


# ---------------------------------------------------------------------------------------- malformed bodies
MALFORMED = {  # the shared transport's typed response model names the field and what it got
    "truncated": r"TransportError: connection failed or the response was cut off: RemoteProtocolError: peer closed",
    "malformed": r"MalformedResponseError: the response is not JSON",
    "bad_content_length": r"TransportError: .*Content-Length",
    "not_json": r"the response is not JSON \(Expecting value.*'<html><body>502 Bad Gateway",
    "json_not_object": r"the body: Input should be a valid dictionary .*\(got a list of \d+\)",
    "empty_body": r"MalformedResponseError: the response body is empty",
    "error_200": r"the body: Value error, a 200 carrying an error: .*the engine is overloaded",
    "missing_choices": r"unusable response: choices: Field required",
    "empty_choices": r"unusable response: choices: List should have at least 1 item after validation, not 0",
    "missing_message": r"choices\[0\]\.message: Field required",
    "content_not_string": r"choices\[0\]\.message\.content: Input should be a valid string \(got an object\)",
    "missing_function": r"choices\[0\]\.message\.tool_calls\[0\]\.function: Field required",
    "null_name": r"tool_calls\[0\]\.function\.name: Input should be a valid string \(got null\)",
    "null_logprob": r"choices\[0\]\.logprobs\.content\[1\]\.logprob: Input should be a valid number \(got null\)",
    "nan_logprob": r"logprobs\.content\[1\]\.logprob: Input should be a finite number \(got nan\)",
    "inf_logprob": r"logprobs\.content\[1\]\.logprob: Input should be a finite number \(got -inf\)",
    "missing_token": r"choices\[0\]\.logprobs\.content\[0\]\.token: Field required",
    "deep_arguments": r"tool_calls\[0\] \('f'\): arguments nest 5000 levels deep \(> max_argument_depth=64\)",
    "deep_body": r"MalformedResponseError: the response nests too deeply to parse",
    "huge_arguments": r"tool_calls\[0\] \('f'\): arguments are 1,000,01\d characters \(> max_argument_chars=1,000,000\)",
}


def test_every_misbehaviour_has_a_case():
    assert set(MISBEHAVIOURS) - {"drip", "drip_headers"} <= set(MALFORMED)


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_response_is_retried_then_a_clear_policy_error(kind):
    fault = Fault(kind, size=1_000_000)
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="fine", logprobs=[-0.5])) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, max_attempts=2, backoff_initial=0.001, timeout=5)
        server.fail_next(fault)  # once: retried, then the good answer
        [out] = policy.generate(HI)
        assert out.text == "fine" and out.logprobs == [-0.5] and policy.attempts == 2
        server.fail_next(fault, fault)  # on every try: a PolicyError that says what was wrong
        with pytest.raises(APIRetryError, match="gave up after 2 tries; last error: .*" + MALFORMED[kind]):
            policy.generate(HI)
        assert policy.attempts == 4
        policy.close()


def test_malformed_responses_never_stop_a_rollout_with_a_raw_exception():
    """Every misbehaviour at a 40% rate: the rollout equals the fault-free one; at 100%: a PolicyError."""
    kinds = tuple(sorted(MALFORMED))
    tasks = [{"word": w} for w in ("apple", "river", "stone", "cloud")]

    def run(**faults):
        with ScriptedOpenAIServer(responder=echo_responder, seed=3, **faults) as server:
            policy = OpenAIPolicy("m", base_url=server.base_url, max_concurrency=8, max_attempts=12, timeout=2,
                                  backoff_initial=0.001, backoff_max=0.005)
            try:
                trajs = rollout(policy, "agentgym/Echo-v0", tasks, group_size=2, progress=False)
            finally:
                policy.close()
            return [(t.task_id, t.final_reward, [s.action_text for s in t.steps]) for t in trajs], server.requests

    clean, _ = run()
    faulty, requests = run(fault_rate=0.4, fault_kinds=kinds)
    assert faulty == clean and sum(1 for _, f in requests if f) >= 5
    for kind in ("null_name", "nan_logprob", "deep_arguments"):
        with pytest.raises(PolicyError, match=MALFORMED[kind]):
            run(fault_rate=1.0, fault_kinds=(kind,))


def test_lenient_where_unambiguous():
    """Null content, a tool call of a function without parameters, an empty log-prob list: all fine."""
    replies = [Reply(content=None, tool_calls=[{"name": "ls"}]), Reply(content="x", logprobs=[])]
    with ScriptedOpenAIServer() as server:
        server.enqueue(*replies)
        policy = OpenAIPolicy("m", base_url=server.base_url)
        [a] = policy.generate(HI)
        [b] = policy.generate(HI)
        policy.close()
    assert a.tool_calls[0].name == "ls" and a.tool_calls[0].arguments == {}
    assert b.text == "x" and b.logprobs == []
