"""No silent no-op training, and a resumed run's summary that reads as an uninterrupted one's.

No-op training: an update in which no sample carried a gradient (every advantage zero
and no distillation target) is said in the log, the update's metrics (``no_gradient``) and the run's
notes, with its likely cause; a run in which more than ``train.max_no_gradient_fraction`` of the
updates are like that stops (``TrainingError``, exit 1) with the cause instead of exiting 0.

The cause is read from the update's own episodes: episodes cut off by ``env.max_steps`` while the
env's reference plan needs more steps ("no episode can succeed within env.max_steps = 4; the env's
tasks need up to 31 steps"), every episode failing (no reward signal for the advantage), every
episode succeeding, or feedback that gave no target.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from agentgym.runlog import read_records
from agentgym.safeio import read_regular, write_atomic

__all__ = ["NoGradientWatch", "no_gradient_cause"]


def _plan_length(trajectory: Any) -> int | None:
    """Steps the env's reference plan from the episode's start needs (a ``reference`` record of the
    first step with ``plan_scope: episode_start``), or None when the env gives no such plan."""
    for step in trajectory.steps[:1]:
        for fb in step.feedback:
            payload = fb.payload or {}
            plan = payload.get("plan")
            if getattr(fb.kind, "value", fb.kind) == "reference" and isinstance(plan, list) and \
                    payload.get("plan_scope", "episode_start") == "episode_start":
                return len(plan)
    return None


def no_gradient_cause(trajectories: Sequence[Any], max_steps: int | None, num_targets: int) -> str:
    """Why no sample of an update carried a gradient, as far as its episodes tell."""
    trajs = list(trajectories)
    if not trajs:
        return "the update had no episodes"
    cut = [t for t in trajs if t.steps and not t.success and "truncated_by" in (t.steps[-1].info or {})]
    needs = [n for n in (_plan_length(t) for t in trajs) if n is not None]
    if max_steps is not None and needs and max(needs) > max_steps and len(cut) == len(trajs):
        return (f"no episode can succeed within env.max_steps = {max_steps}; the env's tasks need up to "
                f"{max(needs)} steps (raise --env.max_steps)")
    if all(not t.success for t in trajs):
        why = "no episode succeeded, so every advantage is zero"
        if cut:
            why += f" ({len(cut)}/{len(trajs)} were cut off at env.max_steps = {max_steps})"
    elif all(t.success for t in trajs):
        why = "every episode succeeded, so every advantage is zero"
    else:
        why = "every group's episodes had the same reward, so every advantage is zero"
    return why + (", and the feedback gave no distillation target" if num_targets == 0 else "")


class NoGradientWatch:
    """Counts the updates that carried no gradient and stops the run when they are most of it."""

    def __init__(self, total_updates: int, max_fraction: float, *, log: bool = True):
        self.total, self.max_fraction, self.log = total_updates, max_fraction, log
        self.count = 0
        self.cause: str | None = None

    def observe(self, update: int, trajectories: Sequence[Any], trained_samples: float, num_targets: int,
                max_steps: int | None) -> dict[str, Any]:
        """The fields to add to update ``update``'s train record: ``no_gradient`` (1.0 when no sample
        of any process was trained on) and then ``no_gradient_cause``."""
        if trained_samples > 0:
            return {"no_gradient": 0.0}
        self.count += 1
        self.cause = no_gradient_cause(trajectories, max_steps, num_targets)
        if self.log:
            print(f"warning: update {update}: no sample carried a gradient (loss 0, weights unchanged): "
                  f"{self.cause}", file=sys.stderr, flush=True)
        return {"no_gradient": 1.0, "no_gradient_cause": self.cause}

    def note(self) -> str | None:
        """The run's note (for summary.json), or None while every update carried a gradient."""
        if not self.count:
            return None
        return f"{self.count} update(s) carried no gradient (weights unchanged); last cause: {self.cause}"

    def check(self) -> str | None:
        """The reason to stop the run, once more than ``max_fraction`` of its updates carried none."""
        if self.count and self.count > self.max_fraction * self.total:
            return (f"{self.count} of {self.total} updates carried no gradient (more than "
                    f"train.max_no_gradient_fraction = {self.max_fraction:g}): {self.cause}")
        return None


# ------------------------------------------------------------------------------------------ resume
# A resumed run keeps what its first process measured: the in-sample reference probe (context and
# action ids of the first task trained on, and its log-prob before any update) and the seconds of
# the updates done before the resume, so its summary reads as an uninterrupted run's.
PROBE_FILE = "reference_probe.json"


def save_probe(run_dir: Any, probe: tuple[list[int], list[int]], before: float | None) -> None:
    write_atomic(Path(run_dir) / PROBE_FILE, json.dumps({"context": list(probe[0]), "action": list(probe[1]),
                                                         "before": before}))


def load_probe(run_dir: Any) -> tuple[tuple[list[int], list[int]], float | None] | None:
    """The saved probe and its score before training, or None (absent or not a probe record)."""
    try:
        data = json.loads(read_regular(Path(run_dir) / PROBE_FILE, 8 << 20, PROBE_FILE))
        ctx, act, before = data["context"], data["action"], data["before"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(ctx, list) and isinstance(act, list) and all(isinstance(i, int) for i in ctx + act)):
        return None
    return (ctx, act), (float(before) if isinstance(before, (int, float)) else None)


def recorded_seconds(run_dir: Any, start: int) -> list[float]:
    """The ``seconds`` of the train records of updates ``< start`` in the run's metrics.jsonl."""
    out: dict[int, float] = {}
    for rec in read_records(Path(run_dir) / "metrics.jsonl", "train") if start > 0 else []:
        if isinstance(rec.get("update"), int) and rec["update"] < start and isinstance(rec.get("seconds"), (int, float)):
            out[rec["update"]] = float(rec["seconds"])
    return [out[k] for k in sorted(out)]
