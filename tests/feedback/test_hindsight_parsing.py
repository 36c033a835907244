"""The hindsight answer parser: the documented hard cases, and a fuzz test that it never raises."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentgym.feedback import parse_hindsight
from agentgym.testing.strategies import hindsight_answers, malformed_hindsight_answers


@pytest.mark.parametrize("answer, num_steps, k, variant, items, status", [
    ('{"failures": [{"step": 2, "feedback": "cd first"}]}', 4, 3, "multi", [(1, "cd first")], "ok"),
    ('I looked at it.\n```json\n{"failures": [{"step": 1, "feedback": "a"},]}\n```\nDone', 2, 3, "multi",
     [(0, "a")], "ok"),
    ('{"failures": [{"step": "3", "feedback": "c"}, {"step": 1, "feedback": "a"}]}', 3, 3, "multi",
     [(0, "a"), (2, "c")], "ok"),  # strings for numbers, sorted earliest first
    ('{"failures": [{"step": 9, "feedback": "x"}, {"step": 0, "feedback": "y"}, {"step": -1, "feedback": "z"}]}',
     3, 3, "multi", [], "no_valid_steps"),
    ('{"failures": [{"step": 2, "feedback": "first"}, {"step": 2, "feedback": "again"}]}', 3, 3, "multi",
     [(1, "first")], "ok"),
    ('{"failures": []}', 3, 3, "multi", [], "empty"),
    ('{"failures": [' + ", ".join(f'{{"step": {i}, "feedback": "f{i}"}}' for i in range(6, 0, -1)) + "]}", 6, 3,
     "multi", [(0, "f1"), (1, "f2"), (2, "f3")], "ok"),
    ('{"failure_step": 2, "feedback": "stop"}', 3, 3, "single", [(1, "stop")], "ok"),
    ('{"failure_step": "2.0", "feedback": "stop"}', 3, 3, "single", [], "no_valid_steps"),
    ('{"failure_step": 2.0, "feedback": "stop"}', 3, 3, "single", [(1, "stop")], "ok"),
    ("{'failures': [{'step': 1, 'feedback': 'python quotes'}]}", 2, 3, "multi", [(0, "python quotes")], "ok"),
    ('{"failures": [{"step": 3, "feedback": "b"}, {"step": 2, "feedback": "a"}]}', 3, 3, "single", [(1, "a")], "ok"),
    ("The agent failed at step 2 because it used the wrong folder.", 3, 3, "multi", [], "unparsable"),
    ('{"failures": [{"step": true, "feedback": "bool"}, {"step": 1, "feedback": ""}]}', 3, 3, "multi", [],
     "no_valid_steps"),
    ("[1, 2] then {\"failures\": [{\"step\": 1, \"feedback\": \"after a list\"}]}", 2, 3, "multi",
     [(0, "after a list")], "ok"),
])
def test_hard_cases(answer, num_steps, k, variant, items, status):
    got = parse_hindsight(answer, num_steps=num_steps, k=k, variant=variant)
    assert (got.items, got.status) == (items, status), got.problems
    assert got.ok == (status == "ok")


def test_problems_are_reported():
    got = parse_hindsight('{"failures": [{"step": 7, "feedback": "x"}, {"step": 1, "feedback": "y"}]}', num_steps=2)
    assert got.items == [(0, "y")] and got.problems == ["step 7 outside 1..2"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answer=st.one_of(malformed_hindsight_answers(), st.text(max_size=300), st.binary(max_size=50),
                        st.none(), st.integers()),
       num_steps=st.integers(0, 12), k=st.integers(0, 5), variant=st.sampled_from(["multi", "single"]))
def test_parser_never_raises_on_malformed_answers(answer, num_steps, k, variant):
    got = parse_hindsight(answer, num_steps=num_steps, k=k, variant=variant)
    steps = [s for s, _ in got.items]
    assert steps == sorted(set(steps))
    assert all(0 <= s < num_steps for s in steps)
    assert len(steps) <= (1 if variant == "single" else k)
    assert all(isinstance(text, str) and text.strip() for _, text in got.items)
    assert got.ok == bool(got.items)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), num_steps=st.integers(1, 10), variant=st.sampled_from(["multi", "single"]))
def test_valid_answers_parse(data, num_steps, variant):
    answer = data.draw(hindsight_answers(num_steps, variant=variant))
    got = parse_hindsight(answer, num_steps=num_steps, k=3, variant=variant)
    assert got.ok, (answer, got.problems)
    assert 1 <= len(got.items) <= (1 if variant == "single" else 3)
