"""The data model: validation at construction and a lossless JSON Lines round trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentgym.types import Feedback, FeedbackKind, Message, Step, Target, ToolCall, Trajectory, dumps_jsonl

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10)
payloads = st.dictionaries(st.text(max_size=10), json_values, max_size=4)
tool_calls = st.builds(ToolCall, name=st.text(min_size=1, max_size=12), arguments=payloads,
                       id=st.none() | st.text(max_size=8))
messages = st.builds(Message, role=st.sampled_from(["system", "user", "assistant", "tool"]),
                     content=st.text(max_size=60), tool_calls=st.lists(tool_calls, max_size=2),
                     tool_call_id=st.none() | st.text(max_size=6), name=st.none() | st.text(max_size=6))
feedback = st.builds(Feedback, kind=st.sampled_from(list(FeedbackKind)), step=st.integers(0, 50),
                     text=st.text(max_size=60), payload=payloads, source=st.text(max_size=10))


@st.composite
def steps(draw, index: int):
    n = draw(st.integers(0, 12))
    ids = draw(st.lists(st.integers(0, 200_000), min_size=n, max_size=n))
    logprobs = draw(st.lists(st.floats(max_value=0.0, allow_nan=False), min_size=n, max_size=n))
    return Step(index=index, prompt_ids=draw(st.lists(st.integers(0, 200_000), max_size=30)),
                action_ids=ids, action_logprobs=logprobs, action_text=draw(st.text(max_size=80)),
                observation=draw(st.text(max_size=80)), reply=draw(st.lists(messages, max_size=2)),
                feedback=draw(st.lists(feedback, max_size=3)),
                reward=draw(st.floats(allow_nan=False)), terminated=draw(st.booleans()),
                truncated=draw(st.booleans()), info=draw(payloads))


@st.composite
def trajectories(draw):
    n = draw(st.integers(0, 3))
    return Trajectory(task_id=draw(st.text(max_size=20)), group_id=draw(st.text(max_size=10)),
                      env_id=draw(st.text(max_size=20)), messages=draw(st.lists(messages, max_size=3)),
                      steps=[draw(steps(i)) for i in range(n)], final_reward=draw(st.floats(allow_nan=False)),
                      success=draw(st.booleans()), terminated=draw(st.booleans()), truncated=draw(st.booleans()),
                      error=draw(st.none() | st.text(max_size=30)), metadata=draw(payloads))


@settings(max_examples=100, deadline=None)
@given(trajectories())
def test_trajectory_json_round_trip_is_lossless(traj):
    line = traj.to_json()
    assert "\n" not in line
    assert Trajectory.from_json(line) == traj


@settings(max_examples=25, deadline=None)
@given(st.lists(trajectories(), max_size=3))
def test_jsonl_of_many_records(trajs):
    text = dumps_jsonl(trajs)
    back = [Trajectory.from_json(line) for line in text.splitlines()]
    assert back == trajs


def test_infinite_rewards_survive_the_round_trip():
    step = Step(index=0, reward=-math.inf)
    assert Step.from_json(step.to_json()).reward == -math.inf


@given(st.integers(0, 100), st.integers(0, 100))
def test_target_span_round_trip_and_validation(a, b):
    start, end = min(a, b), max(a, b)
    target = Target(step=3, span=(start, end), hint="use mkdir first")
    assert Target.from_json(target.to_json()) == target
    assert isinstance(Target.from_json(target.to_json()).span, tuple)


def test_validation_errors_name_the_problem():
    with pytest.raises(ValidationError, match="0 <= start <= end"):
        Target(step=0, span=(5, 2))
    with pytest.raises(ValidationError, match="must align token for token"):
        Step(index=0, action_ids=[1, 2], action_logprobs=[-0.1])
    with pytest.raises(ValidationError, match="indices must be 0..T-1"):
        Trajectory(task_id="t", steps=[Step(index=1)])
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Feedback(kind="error", step=0, colour="red")
    with pytest.raises(ValidationError):
        Feedback(kind="complaint", step=0)


def test_message_to_chat_is_what_templates_take():
    msg = Message(role="assistant", content="", tool_calls=[ToolCall(name="ls", arguments={"a": True}, id="c1")])
    assert msg.to_chat() == {"role": "assistant", "content": "",
                             "tool_calls": [{"id": "c1", "type": "function",
                                             "function": {"name": "ls", "arguments": {"a": True}}}]}


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40))
def test_any_text_including_lone_surrogates_and_unicode_line_breaks(text):
    step = Step(index=0, observation=text + "\x85\u2028\u2029", action_text=text)
    line = step.to_json()
    assert len(line.splitlines()) == 1
    assert Step.from_json(line) == step
