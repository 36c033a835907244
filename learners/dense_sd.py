"""Dense per-turn self-distillation: feedback on EVERY step (one judge call and one teacher pass per
step), and the top-k + tail distillation loss on every step's action tokens (at temperature 1,
``distill_temperature``, as HINT-SD's reference distils).

The teacher is the policy itself (EMA weights by default) conditioned on the student's context plus
one feedback message; steps for which the feedback source produced no hint are counted and skipped.
"""

from __future__ import annotations

from agentgym.learners.base import Forward, Learner, register
from agentgym.learners.samples import Batch, Sample
from agentgym.learners.settings import DistillSettings, LearnerSettings

__all__ = ["DenseSD", "DenseSDSettings"]


class DenseSDSettings(LearnerSettings, DistillSettings):
    """Dense SD's settings: the shared ones and an EMA teacher distilling top-k + tail."""


@register
class DenseSD(Learner):
    name = "dense_sd"
    Settings = DenseSDSettings
    uses_teacher = True
    default_source = "llm_step_hint"
    default_selector = "dense"

    def prepare(self, batch: Batch, samples: list[Sample]) -> list[Sample]:
        out = []
        for s in samples:
            if s.target is None or not s.target.hint:
                self.stats["steps_without_feedback"] += 1
                continue
            s.token_mask = s.span_mask()
            out.append(self.with_teacher_context(s, s.target.hint))
        return out

    def objective(self, fwd: Forward):
        return self.distill(fwd)
