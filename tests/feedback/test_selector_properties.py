"""Property tests of every selector (200 generated examples each) and of the composition laws."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentgym.feedback import (Cap, Dense, FirstDivergence, FirstError, FirstStep, Fixed, HindsightMulti,
                               HindsightSingle, Intersection, LastStep, ReferenceHindsightSource, Union)
from agentgym.testing.strategies import char_decode, hindsight_feedback, trajectories

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# auxiliary properties (beyond the acceptance invariants) run fewer examples to keep the suite lean
AUX = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SELECTORS = {
    "dense": lambda: Dense(),
    "dense_with_success": lambda: Dense(include_successful=True),
    "first": lambda: FirstStep(),
    "last": lambda: LastStep(),
    "fixed_2": lambda: Fixed(2),
    "fixed_-2": lambda: Fixed(-2, include_successful=True),
    "first_error": lambda: FirstError(),
    "first_divergence": lambda: FirstDivergence(),
    "hindsight_multi": lambda: HindsightMulti(k=3),
    "hindsight_multi_k1": lambda: HindsightMulti(k=1),
    "hindsight_single": lambda: HindsightSingle(),
    "dense_narrow_spans": lambda: Dense(decode=char_decode, include_successful=True),
    "union": lambda: FirstError() | HindsightMulti(k=2),
    "intersection": lambda: Dense() & HindsightMulti(k=3),
    "cap": lambda: Dense().cap(2),
}
MAX_TARGETS = {"first": 1, "last": 1, "fixed_2": 1, "fixed_-2": 1, "first_error": 1, "first_divergence": 1,
               "hindsight_multi": 3, "hindsight_multi_k1": 1, "hindsight_single": 1, "union": 3,
               "intersection": 3, "cap": 2}


@st.composite
def cases(draw):
    """A trajectory (with BFCL-shaped references half of the time, char-level tokens half of the
    time) and a mix of hindsight and other feedback about it."""
    traj = draw(trajectories(with_reference=draw(st.booleans()), char_tokens=draw(st.booleans())))
    return traj, draw(hindsight_feedback(traj))


@PROPS
@given(case=cases())
def test_selector_invariants(case):
    """Every selector sees the same 200 generated cases (generation is the expensive part)."""
    traj, feedback = case
    for name, make in SELECTORS.items():
        selector = make()
        targets = selector(traj, feedback)
        steps = [t.step for t in targets]
        assert steps == sorted(set(steps)), f"{name}: targets sorted and unique"
        for t in targets:
            assert 0 <= t.step < traj.num_steps, f"{name}: an action step of this trajectory"
            start, end = t.span
            assert 0 <= start <= end <= len(traj.steps[t.step].action_ids), f"{name}: span inside the action"
        assert len(targets) <= MAX_TARGETS.get(name, traj.num_steps), f"{name}: at most K"
        assert make()(traj, list(feedback)) == targets, f"{name}: deterministic"
        assert selector(traj, feedback) == targets, f"{name}: no state kept between calls"


@PROPS
@given(case=cases())
def test_dense_selects_exactly_the_action_steps(case):
    traj, feedback = case
    assert [t.step for t in Dense(include_successful=True)(traj, feedback)] == list(range(traj.num_steps))
    assert all(t.span == (0, len(traj.steps[t.step].action_ids)) for t in Dense(include_successful=True)(traj))
    assert [t.step for t in Dense()(traj, feedback)] == ([] if traj.success else list(range(traj.num_steps)))


@PROPS
@given(traj=trajectories(success=True, with_reference=True), data=st.data())
def test_hindsight_selectors_select_nothing_on_success(traj, data):
    feedback = data.draw(hindsight_feedback(traj))
    feedback += ReferenceHindsightSource()(traj)  # the source itself also skips successes
    for selector in (HindsightMulti(k=3), HindsightSingle(), FirstError(), FirstDivergence()):
        assert selector(traj, feedback) == []


@AUX
@given(traj=trajectories(success=False), data=st.data())
def test_hindsight_multi_takes_the_k_earliest_named_steps(traj, data):
    feedback = data.draw(hindsight_feedback(traj))
    k = data.draw(st.integers(0, 4))
    named = sorted({f.step for f in feedback if f.kind.value == "hint" and f.step < traj.num_steps})
    got = HindsightMulti(k=k)(traj, feedback)
    assert [t.step for t in got] == named[:k]
    assert [t.step for t in HindsightSingle()(traj, feedback)] == named[:1]
    for t in got:  # the hint is the first correction given for that step
        assert t.hint == (next(f.text for f in feedback if f.step == t.step and f.kind.value == "hint") or None)


@AUX
@given(traj=trajectories(success=False, errors=True))
def test_first_error_is_the_earliest_error_step(traj):
    [target] = FirstError()(traj)
    assert target.step == min(s.index for s in traj.steps if s.errors)


BASES = [Dense(), FirstStep(), LastStep(), FirstError(), FirstDivergence(), HindsightMulti(k=2), HindsightSingle(),
         Fixed(1)]


@PROPS
@given(case=cases(), a=st.sampled_from(BASES), b=st.sampled_from(BASES), k=st.integers(0, 4))
def test_composition_laws(case, a, b, k):
    traj, feedback = case
    sa = {t.step for t in a(traj, feedback)}
    sb = {t.step for t in b(traj, feedback)}
    union = Union(a, b)(traj, feedback)
    inter = Intersection(a, b)(traj, feedback)
    assert {t.step for t in union} == sa | sb, "union contains both, and nothing else"
    assert {t.step for t in inter} == sa & sb, "intersection contained in both"
    assert [t.step for t in Cap(a, k)(traj, feedback)] == sorted(sa)[:k], "cap keeps the earliest"
    for t in union:  # widened spans stay inside the action
        assert 0 <= t.span[0] <= t.span[1] <= len(traj.steps[t.step].action_ids)
    assert Union(a, b)(traj, feedback) == union and Intersection(b, a)(traj, feedback) == Intersection(b, a)(traj, feedback)


@AUX
@given(traj=trajectories(char_tokens=True, min_steps=1))
def test_narrowed_spans_cover_exactly_the_command(traj):
    for t in Dense(decode=char_decode, include_successful=True)(traj):
        step = traj.steps[t.step]
        inner = step.action_text[t.span[0]:t.span[1]]
        if "<action>" in step.action_text and "</action>" in step.action_text and \
                step.action_text.split("<action>")[-1].split("</action>")[0]:
            assert inner == step.action_text.rsplit("<action>", 1)[1].split("</action>", 1)[0]
        elif t.span != (0, len(step.action_ids)):
            assert inner.startswith(("search[", "click[")) and inner.endswith("]")
