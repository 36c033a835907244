"""``openai:NAME`` model specs and the OpenAI teacher's settings, against the scripted server (a real
HTTP server on 127.0.0.1 that refuses any key but its own with a 401)."""

from __future__ import annotations

import pytest

import agentgym  # noqa: F401  (registers the envs)
from agentgym.agents.base import PolicyError
from agentgym.agents.openai_policy import is_openai_spec, openai_policy_from_spec
from agentgym.config import FeedbackConfig, load_config
from agentgym.rollout import rollout
from agentgym.testing.openai_server import Reply, ScriptedOpenAIServer

HI = [[{"role": "user", "content": "hi"}]]


def test_spec_reads_the_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="ok"), api_key="sk-from-env") as server:
        policy = openai_policy_from_spec("openai:org/model:v1", base_url=server.base_url)
        assert policy.generate(HI)[0].text == "ok"
        assert server.request_headers[0]["authorization"] == "Bearer sk-from-env"
        assert server.requests[0][0]["model"] == "org/model:v1"  # everything after the prefix
        policy.close()


def test_spec_key_setting_beats_the_environment_and_a_wrong_key_is_a_401(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
    monkeypatch.setenv("MY_KEY", "sk-right")
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="ok"), api_key="sk-right") as server:
        by_env = openai_policy_from_spec("openai:m", base_url=server.base_url, api_key_env="MY_KEY")
        assert by_env.generate(HI)[0].text == "ok"
        by_arg = openai_policy_from_spec("openai:m", base_url=server.base_url, api_key="sk-right")
        assert by_arg.generate(HI)[0].text == "ok"
        assert [h["authorization"] for h in server.request_headers] == ["Bearer sk-right"] * 2
        wrong = openai_policy_from_spec("openai:m", base_url=server.base_url, max_attempts=4)
        with pytest.raises(PolicyError, match="401"):
            wrong.generate(HI)
        assert len(server.requests) == 3  # a 401 is not retried
        for p in (by_env, by_arg, wrong):
            p.close()


@pytest.mark.parametrize("spec, base_url, message", [
    ("gpt-4o", None, "write openai:NAME"),
    ("openai:", None, "model name after 'openai:' is empty"),
    (None, None, "does not name an OpenAI-compatible model"),
    ("openai:m", "localhost:8000", "base_url must be an http"),
])
def test_bad_specs_are_clear_errors(spec, base_url, message):
    with pytest.raises(ValueError, match=message):
        openai_policy_from_spec(spec, base_url=base_url)


def test_bad_limits_are_clear_errors():
    with pytest.raises(ValueError, match="max_concurrency must be an int >= 1"):
        openai_policy_from_spec("openai:m", base_url="http://127.0.0.1:9/v1", max_concurrency=0)
    with pytest.raises(ValueError, match="timeout must be a finite number"):
        openai_policy_from_spec("openai:m", base_url="http://127.0.0.1:9/v1", timeout=float("inf"))
    assert is_openai_spec("openai:x") and not is_openai_spec("tiny") and not is_openai_spec(3)


def test_openai_teacher_takes_key_timeout_concurrency_and_retries_from_the_config(monkeypatch):
    from agentgym.agents.teacher_backends import openai_teacher
    monkeypatch.setenv("TEACHER_KEY", "sk-teacher")
    with ScriptedOpenAIServer(responder=lambda b: Reply(content="hint"), api_key="sk-teacher") as server:
        cfg = load_config(["--feedback.teacher", "openai", "--feedback.teacher.openai.model", "judge",
                           "--feedback.teacher.openai.base_url", server.base_url,
                           "--feedback.teacher.openai.api_key_env", "TEACHER_KEY",
                           "--feedback.teacher.openai.timeout_s", "7.5", "--feedback.teacher.openai.max_concurrency",
                           "3", "--feedback.teacher.openai.max_attempts", "2"])
        teacher = openai_teacher(cfg.feedback.teacher.settings, None, None)
        assert (teacher.model, teacher.timeout, teacher.max_attempts, teacher._pool._max_workers) == \
            ("judge", 7.5, 2, 3)
        assert teacher.generate(HI)[0].text == "hint"
        assert server.request_headers[0]["authorization"] == "Bearer sk-teacher"
        teacher.close()
    with pytest.raises(ValueError, match="feedback.teacher.openai.max_concurrency"):
        FeedbackConfig(teacher={"name": "openai", "openai": {"max_concurrency": 0}})


def test_a_spec_policy_runs_an_evaluation_rollout():
    def answer(body):  # the Echo env asks for a word: say it
        return Reply(content=body["messages"][0]["content"].split()[-1])
    with ScriptedOpenAIServer(responder=answer, api_key="k") as server:
        policy = openai_policy_from_spec("openai:m", base_url=server.base_url, api_key="k")
        trajs = rollout(policy, "agentgym/Echo-v0", [{"word": "apple"}, {"word": "river"}], progress=False)
        policy.close()
    assert [(t.success, t.error) for t in trajs] == [(True, None), (True, None)]
