"""LLM-based sources (hindsight multi/single, judge, dense step hints) against a real local
OpenAI-compatible HTTP server with scripted answers, and against a local transformers teacher."""

from __future__ import annotations

import json

import pytest

from agentgym.agents.base import SamplingParams
from agentgym.agents.openai_policy import OpenAIPolicy
from agentgym.feedback import (HindsightMulti, HindsightSingle, LLMHindsightSource, LLMJudgeSource,
                               LLMStepHintSource, make_source)
from agentgym.testing.openai_server import Reply, ScriptedOpenAIServer
from agentgym.types import Feedback, Message, Step, Trajectory


def traj(name: str, n: int = 4, success: bool = False) -> Trajectory:
    return Trajectory(task_id="t", group_id="g", messages=[Message(role="user", content=f"TASK {name}")],
                      steps=[Step(index=i, action_text=f"act{i}", action_ids=[1, 2, 3], observation=f"obs{i}",
                                  feedback=[Feedback(kind="error", step=0, text="boom")] if i == 2 else [])
                             for i in range(n)],
                      final_reward=1.0 if success else 0.0, success=success, metadata={"episode": name})


def by_task(answers: dict[str, str]):
    """A responder that answers by the task name in the transcript (order-independent)."""
    def respond(body):
        prompt = body["messages"][-1]["content"]
        for key, text in answers.items():
            if f"TASK {key}\n" in prompt:
                return Reply(content=text)
        return Reply(content="no idea")
    return respond


ANSWERS = {
    "fenced": '```json\n{"failures": [{"step": 3, "feedback": "Check the error first."},'
              ' {"step": 1, "feedback": "Start by listing files."},]}\n```',
    "prose": 'The mistakes: {"failures": [{"step": "2", "feedback": "Use cd."}, {"step": 2, "feedback": "dup"}]} ok',
    "garbage": "I am not sure what went wrong here.",
    "range": '{"failures": [{"step": 0, "feedback": "x"}, {"step": 99, "feedback": "y"}]}',
}


def test_hindsight_multi_through_a_real_http_server():
    batch = [traj(name) for name in ANSWERS] + [traj("won", success=True)]
    with ScriptedOpenAIServer(responder=by_task(ANSWERS)) as server:
        policy = OpenAIPolicy("hindsight", base_url=server.base_url, api_key="k")
        source = LLMHindsightSource(policy, variant="multi", k=3)
        out = source.annotate(batch)
        bodies = [b for b, _ in server.requests]
    assert len(bodies) == 4  # the successful trajectory is never sent
    assert all(b["temperature"] == 0.6 and b["top_p"] == 0.95 for b in bodies)
    assert all(b.get("max_tokens", b.get("max_completion_tokens")) == 512 for b in bodies)
    assert '{"failures": [{"step"' in bodies[0]["messages"][-1]["content"]
    steps = [[(f.step, f.text) for f in fb] for fb in out]
    assert steps[0] == [(0, "Start by listing files."), (2, "Check the error first.")]
    assert steps[1] == [(1, "Use cd.")]
    assert steps[2] == [] and steps[3] == [] and steps[4] == []
    assert source.stats["answers_ok"] == 2 and source.stats["answers_unparsable"] == 1
    assert source.stats["answers_no_valid_steps"] == 1 and source.stats["skipped_successful"] == 1
    assert source.stats["teacher_calls"] == 4
    targets = HindsightMulti(k=3)(batch[0], out[0])
    assert [(t.step, t.hint) for t in targets] == [(0, "Start by listing files."), (2, "Check the error first.")]
    assert HindsightSingle()(batch[0], out[0])[0].step == 0


def test_hindsight_single_and_judge_through_a_real_http_server():
    answers = {"a": '{"failure_step": 2, "feedback": "Read the error."}', "b": "{not json"}
    with ScriptedOpenAIServer(responder=by_task(answers)) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, api_key="k")
        single = LLMHindsightSource(policy, variant="single")
        out = single.annotate([traj("a"), traj("b")])
        assert [(f.step, f.text, f.payload["variant"]) for f in out[0]] == [(1, "Read the error.", "single")]
        assert out[1] == [] and single.stats["answers_unparsable"] == 1
        assert '"failure_step"' in server.requests[0][0]["messages"][-1]["content"]
    verdict = "The agent failed. It ignored the error at step 3. It should have checked the path."
    with ScriptedOpenAIServer(responder=lambda body: Reply(content=verdict)) as server:
        judge = LLMJudgeSource(OpenAIPolicy("judge", base_url=server.base_url, api_key="k"))
        fb = judge(traj("c"))
        assert server.requests[0][0]["temperature"] == 0.0
        assert "task solved: False" in server.requests[0][0]["messages"][-1]["content"]
    assert [f.step for f in fb] == [0, 1, 2, 3] and all(f.text == verdict for f in fb)
    assert all(f.payload["scope"] == "trajectory" and f.source == "llm_judge" for f in fb)


def test_teacher_failure_is_counted_not_raised():
    with ScriptedOpenAIServer(responder=lambda body: Reply(content="x")) as server:
        policy = OpenAIPolicy("m", base_url=server.base_url, api_key="k")
        server.fail_next("401")
        source = LLMHindsightSource(policy)
        with pytest.warns(RuntimeWarning, match="teacher failed"):
            assert source.annotate([traj("a")]) == [[]]
        assert source.stats["teacher_errors"] == 1
        server.fail_next("401")
        with pytest.raises(Exception):
            LLMHindsightSource(policy, on_error="raise").annotate([traj("a")])


def test_local_transformers_teacher(tiny_model_path):
    """The tiny random model writes garbage: the plumbing must hold, and unparsable answers counted."""
    from agentgym.agents import TransformersPolicy
    policy = TransformersPolicy(tiny_model_path, batch_size=4)
    batch = [traj("x"), traj("y", n=2), traj("z", success=True)]
    source = LLMHindsightSource(policy, sampling=SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=16, seed=0),
                                budget=1500)
    out = source.annotate(batch)
    assert len(out) == 3 and out[2] == []
    assert source.stats["teacher_calls"] == 2 and source.stats["skipped_successful"] == 1
    assert 0 < source.stats["completion_tokens"] <= 32 and source.stats["prompt_tokens"] > 0
    statuses = sum(v for k, v in source.stats.items() if k.startswith("answers_"))
    assert statuses == 2  # every answer was read and classified
    assert source.stats["answers_ok"] + source.stats["answers_unparsable"] + source.stats["answers_empty"] + \
        source.stats["answers_no_valid_steps"] == 2
    for t, fb in zip(batch, out):
        assert all(0 <= f.step < t.num_steps for f in fb)
    dense = LLMStepHintSource(policy, sampling=SamplingParams(temperature=0.0, max_new_tokens=4))
    fb = dense.annotate(batch[:2])
    assert dense.stats["teacher_calls"] == 6  # one per step: the cost hindsight avoids
    assert all(f.payload["scope"] == "step" for f in fb[0] + fb[1])
    combined = make_source("llm_judge+immediate", policy=policy, sampling=SamplingParams(temperature=0.0, max_new_tokens=8))
    out = combined.annotate(batch[:1])
    assert {f.source for f in out[0]} >= {"immediate"} and combined.stats["llm_judge.teacher_calls"] == 1
    json.dumps([f.model_dump(mode="json") for f in out[0]])  # JSON-safe records
