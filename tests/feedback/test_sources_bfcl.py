"""Every rule-based source and selector on REAL BFCL multi-turn trajectories: the ground truth played
through the env by a scripted policy, with injected mistakes at known steps."""

from __future__ import annotations

import re

import pytest

import agentgym  # noqa: F401  (registers the envs)
from agentgym.agents.scripted import ScriptedPolicy, by_turn
from agentgym.envs.bfcl.data import get_entry
from agentgym.feedback import (SOURCES, AnchorSource, Dense, FirstDivergence, FirstError, FutureTrajectorySource,
                               HindsightMulti, HindsightSingle, ImmediateSource, NextObservationSource,
                               ReferenceHindsightSource, ReferenceSource, SuccessfulSiblingSource, by_step,
                               make_source)
from agentgym.rollout import rollout

TASK = "multi_turn_base_0"
ENTRY = get_entry(TASK)


def script(turns: list[list[str]]) -> tuple[list[str], list[int]]:
    """One call per step, then "Done." to end each turn; also the turn of every step."""
    replies, turn_of = [], []
    for t, calls in enumerate(turns):
        for call in calls:
            replies.append(f"[{call}]")
            turn_of.append(t)
        replies.append("Done.")
        turn_of.append(t)
    return replies, turn_of


def play(turns: list[list[str]]):
    replies, _ = script(turns)
    [traj] = rollout(ScriptedPolicy(by_turn(replies, default="Done.")), "agentgym/BFCLMultiTurn-v0",
                     tasks=[{"task_id": TASK}], env_kwargs={"split": "all"}, progress=False)
    assert traj.num_steps == len(replies) and traj.terminated
    return traj


def mutated(turn: int, index: int, new: str | None) -> list[list[str]]:
    turns = [list(c) for c in ENTRY.ground_truth]
    if new is None:
        turns[turn].pop(index)
    else:
        turns[turn][index] = new
    return turns


def step_of(turns: list[list[str]], turn: int, index: int) -> int:
    """Step index of call ``index`` of ``turn`` in the one-call-per-step script (len = the Done)."""
    return sum(len(c) + 1 for c in turns[:turn]) + index


@pytest.fixture(scope="module")
def runs():
    truth = [list(c) for c in ENTRY.ground_truth]
    cases = {
        "truth": (truth, None),
        # an argument corrupted: cd into a folder that does not exist (turn 1, first call)
        "corrupt": (mutated(1, 0, "cd(folder='no_such_folder')"), step_of(truth, 1, 0)),
        # a wrong function called in place of mkdir (turn 0, second call)
        "wrong_function": (mutated(0, 1, "ls()"), step_of(truth, 0, 1)),
        # a call dropped: turn 3 ends with the diff never made -> the Done of turn 3 departs
        "drop": (mutated(3, 3, None), step_of(mutated(3, 3, None), 3, 3)),
        # a function that does not exist: an execution error at that step
        "unknown_function": (mutated(2, 0, "frobnicate(file='final_report.pdf')"), step_of(truth, 2, 0)),
    }
    out = {name: (play(turns), turns, step) for name, (turns, step) in cases.items()}
    group_id = "g/" + TASK
    for name, (traj, turns, step) in out.items():  # one task group, as a G=5 rollout would give
        out[name] = (traj.model_copy(update={"group_id": group_id}), turns, step)
    return out


def test_ground_truth_succeeds_and_mutations_fail(runs):
    assert runs["truth"][0].success and runs["truth"][0].final_reward == 1.0
    for name in ("corrupt", "wrong_function", "drop", "unknown_function"):
        assert not runs[name][0].success, name


@pytest.mark.parametrize("name", ["corrupt", "wrong_function", "drop", "unknown_function"])
def test_first_divergence_finds_the_injected_step(runs, name):
    traj, turns, injected = runs[name]
    [target] = FirstDivergence()(traj)
    assert target.step == injected
    assert target.span == (0, len(traj.steps[injected].action_ids))
    assert FirstDivergence()(runs["truth"][0], []) == []  # succeeded: nothing
    assert FirstDivergence(include_successful=True)(runs["truth"][0]) == []  # and no departure either


@pytest.mark.parametrize("name", ["corrupt", "unknown_function"])
def test_first_error_finds_the_injected_step(runs, name):
    traj, _, injected = runs[name]
    [target] = FirstError()(traj)
    assert target.step == injected
    assert "no_such_folder" in target.hint or "frobnicate" in target.hint
    assert not any(s.errors for s in runs["truth"][0].steps)


def test_reference_source_yields_the_turns_ground_truth_calls(runs):
    traj, turns, _ = runs["corrupt"]
    _, turn_of = script(turns)
    fb = ReferenceSource()(traj)
    assert [f.step for f in fb] == list(range(traj.num_steps))
    for f in fb:
        assert f.source == "reference" and f.kind.value == "reference"
        assert f.payload["turn"] == turn_of[f.step]
        assert f.payload["ground_truth"] == ENTRY.ground_truth[turn_of[f.step]]
        assert all(call in f.text for call in ENTRY.ground_truth[turn_of[f.step]])


@pytest.mark.parametrize("name", ["corrupt", "wrong_function", "drop"])
def test_reference_hindsight_writes_a_correction_at_the_injected_step(runs, name):
    traj, _, injected = runs[name]
    [hint] = ReferenceHindsightSource()(traj)
    assert hint.step == injected and hint.payload["hindsight"] is True and hint.kind.value == "hint"
    truth = ENTRY.ground_truth[hint.payload["turn"]]
    assert any(c.split("(")[0] in hint.text for c in truth)
    assert [t.step for t in HindsightMulti()(traj, [hint])] == [injected]
    assert [(t.step, t.hint) for t in HindsightSingle()(traj, [hint])] == [(injected, hint.text)]
    assert ReferenceHindsightSource()(runs["truth"][0]) == []


def test_immediate_next_observation_and_future(runs):
    traj, _, injected = runs["corrupt"]
    imm = ImmediateSource()(traj)
    assert [f.step for f in imm] == list(range(traj.num_steps))
    assert imm[injected].kind.value == "error" and "no_such_folder" in imm[injected].text
    assert all(f.kind.value != "error" for f in imm[:injected])
    nxt = NextObservationSource()(traj)
    assert all(traj.steps[f.step].observation in f.text for f in nxt)
    fut = FutureTrajectorySource(budget=600)(traj)
    assert len(fut) == traj.num_steps
    assert all(len(f.text) <= 600 + 200 for f in fut)  # budget plus the fixed wording
    assert traj.steps[injected + 1].action_text in fut[injected].text
    assert "Outcome: reward 0" in fut[-1].text and fut[-1].payload["later_steps"] == 0


def test_successful_sibling_is_never_the_sample_itself(runs):
    group = [r[0] for r in runs.values()]
    src = SuccessfulSiblingSource()
    failed = runs["drop"][0]
    fb = src(failed, group)
    assert len(fb) == failed.num_steps
    assert fb[0].payload["actions"] == [s.action_text for s in runs["truth"][0].steps]
    assert src(runs["truth"][0], group) == []  # the only success has no successful sibling
    assert src(failed, [r for r in group if r is not runs["truth"][0]]) == []


def test_anchor_groups_the_same_start_state(runs):
    group = [r[0] for r in runs.values()]
    fb = by_step(AnchorSource()(runs["corrupt"][0], group))
    # step 0: every member starts from the same task text and makes the same first call
    first = fb[0][0].payload
    assert first["visits"] == len(group)
    [only] = first["candidates"]
    assert (only["action"], only["tried"], only["successes"]) == ("[cd(folder='document')]", 5, 1)
    assert (only["best"], only["worst"], only["mean"]) == (1.0, 0.0, 0.2)
    # step 1: the same state (after the cd); two actions were tried from it, the successful one first
    rows = fb[1][0].payload["candidates"]
    assert [(r["action"], r["tried"], r["successes"]) for r in rows] == [
        ("[mkdir(dir_name='temp')]", 4, 1), ("[ls()]", 1, 0)]
    assert "tried 4x, 1 succeeded" in fb[1][0].text


def test_combined_sources_and_batch_annotation(runs):
    trajs = [r[0] for r in runs.values()]
    combined = make_source("immediate+reference+reference_hindsight+successful_sibling")
    batch = combined.annotate(trajs)
    for traj, fb in zip(trajs, batch):
        names = {f.source for f in fb}
        assert {"immediate", "reference"} <= names
        assert ("reference_hindsight" in names) == (not traj.success)
        assert ("successful_sibling" in names) == (not traj.success)
    assert combined.stats["reference_hindsight.skipped_successful"] == 1
    targets = (FirstDivergence() | FirstError())(runs["corrupt"][0], batch[1])
    assert [t.step for t in targets] == [runs["corrupt"][2]]
    assert "no_such_folder" in targets[0].hint and len(Dense()(runs["corrupt"][0])) == runs["corrupt"][0].num_steps


def test_registry_and_clear_errors():
    assert set(SOURCES) >= {"immediate", "next_observation", "future_trajectory", "successful_sibling", "reference",
                            "llm_judge", "llm_hindsight", "reference_hindsight", "anchor"}
    with pytest.raises(KeyError, match="unknown feedback source 'nope'"):
        make_source("immediate+nope")
    assert re.search(r"judge", "llm_judge")
