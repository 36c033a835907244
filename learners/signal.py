"""Does the teacher know better? The teacher-signal diagnostic of every teacher-using learner.

Self-distillation only teaches where the teacher's context makes the right action MORE likely than
the student's own context does. A wording that quotes the failed attempt, or a hint a small model
answers instead of using, turns the teacher into a copy of the mistake, and distilling from it makes
the model worse while the loss goes down. So on every update, on the steps that got a teacher
context and where the env has a reference action (``EnvDefaults.reference_action``), this scores
that reference action under both contexts (current student weights for the student side, the
teacher's weights for the teacher side, raw temperature-1 distributions):

- ``teacher_gain``: mean over those steps of [mean per-token log-prob of the reference action under
  the teacher context] - [the same under the student context]; > 0 means the hint helps;
- ``teacher_prefers_reference``: the fraction of those steps where that difference is > 0;
- ``teacher_kl``: mean KL(student || teacher) per distilled token (top-k + tail, as the loss).

>>> s = TeacherSignal(teacher=[-1.0, -3.0], student=[-2.0, -2.5])
>>> s.metrics()["teacher_gain"], s.metrics()["teacher_prefers_reference"]
(0.25, 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from agentgym.learners.samples import Sample, plan_micro_batches

if TYPE_CHECKING:  # pragma: no cover - base imports this module (the learner is only a type here)
    from agentgym.learners.base import Learner

__all__ = ["TeacherSignal", "teacher_signal", "SIGNAL_METRICS", "signal_problem"]

SIGNAL_METRICS = {
    "teacher_gain": "mean per-token log-prob of the env's reference action under the teacher context minus under "
                    "the student context, on targeted steps that have one (> 0: the teacher prefers the reference)",
    "teacher_prefers_reference": "fraction of those steps where the teacher context raises the reference action",
    "teacher_gain_targets": "targeted steps with a reference action (what teacher_gain averages over)",
    "teacher_kl": "mean KL(student || teacher) per distilled token (top-k + tail)",
}


@dataclass
class TeacherSignal:
    """Per-step mean log-probs of the reference action under the teacher and student contexts."""

    teacher: list[float] = field(default_factory=list)
    student: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        if not self.teacher:
            return {"teacher_gain_targets": 0.0}
        gains = [t - s for t, s in zip(self.teacher, self.student)]
        return {"teacher_gain": sum(gains) / len(gains),
                "teacher_prefers_reference": sum(g > 0 for g in gains) / len(gains),
                "teacher_gain_targets": float(len(gains)),
                "teacher_reference_logprob": sum(self.teacher) / len(self.teacher),
                "student_reference_logprob": sum(self.student) / len(self.student)}


def _mean_logp(lps: list[torch.Tensor], actions: Sequence[Sequence[int]]) -> list[float]:
    return [float(lp.gather(-1, torch.tensor(a, device=lp.device).unsqueeze(-1)).mean()) for lp, a in zip(lps, actions)]


@torch.no_grad()
def teacher_signal(learner: "Learner", samples: Sequence["Sample"]) -> TeacherSignal:
    """Score each sample's reference action under its teacher context (teacher weights) and its
    student context (current weights). Runs before the optimiser step; empty when no sample has both."""
    rows = [s for s in samples if s.teacher_context is not None and s.reference_action]
    out = TeacherSignal()
    if not rows:
        return out
    params = learner.teacher_weights.overrides() if learner.teacher_weights is not None else None
    was_training = learner.model.training
    learner.model.eval()
    try:
        for side, contexts, sink in (("student", [s.context for s in rows], out.student),
                                     ("teacher", [s.teacher_context for s in rows], out.teacher)):
            lengths = [len(c) + len(s.reference_action) for c, s in zip(contexts, rows)]
            scores: dict[int, float] = {}
            for plan in plan_micro_batches(lengths, learner.settings.token_budget):
                acts = [rows[i].reference_action for i in plan]
                lps = learner.log_probs([contexts[i] for i in plan], acts,
                                        params=(params or None) if side == "teacher" else None, temperature=1.0)
                scores.update(zip(plan, _mean_logp(lps, acts)))
            sink.extend(scores[i] for i in range(len(rows)))
    finally:
        learner.model.train(was_training)
    return out


def signal_problem(metrics: dict[str, float], source: str | None = None, teacher: str | None = None) -> str | None:
    """A one-paragraph warning when an update's teacher did not prefer the reference (gain <= 0);
    ``teacher``: the learner's teacher-weights mode (a lagging teacher is one of the causes)."""
    gain = metrics.get("teacher_gain")
    if gain is None or not math.isfinite(gain) or gain > 0:
        return None
    n = int(metrics.get("teacher_gain_targets", 0))
    frac = metrics.get("teacher_prefers_reference", 0.0)
    return (f"teacher_gain {gain:+.3f} <= 0 on {n} targeted step(s) (the teacher prefers the reference on "
            f"{frac:.0%}; reference log-prob {metrics.get('teacher_reference_logprob', float('nan')):.3f} under the "
            f"teacher context vs {metrics.get('student_reference_logprob', float('nan')):.3f} under the student's): "
            "distilling from this teacher moves the model AWAY from the reference. Likely causes: the hint quotes "
            "the failed attempt or does not state the correction (feedback source "
            f"{source or 'n/a'}), or the teacher answers the feedback message instead of using it (try other "
            "[feedback.prompts] wording, or `agentgym diagnose` to compare sources before training)"
            + (f"; or the student has moved past its teacher's weights (teacher = {teacher!r} lags the student: "
               "--learner.teacher current, or a larger --learner.teacher_rate, keeps it level)"
               if teacher in ("ema", "fixed", "refresh") else "") + ".")
