"""HINT-SD: targeted hindsight self-distillation.

Only FAILED trajectories contribute, and of those only the steps a hindsight source named (multi:
up to K = 3 steps with one correction each; single: the first mistaken step). For each selected
step the teacher (an EMA copy of the policy's LoRA adapter, rate 0.001) scores the student's own
action under the student's context plus the correction; the loss is the reverse-KL top-k + tail
distillation on the selected span's tokens, averaged over those tokens, between the raw
(temperature 1, ``distill_temperature``) student and teacher distributions as in the reference,
whatever temperature the rollout sampled at. No reward term, no ratio, no clipping. Unselected steps and successful trajectories contribute exactly zero.
"""

from __future__ import annotations

from agentgym.learners.base import Forward, Learner, register
from agentgym.learners.samples import Batch, Sample
from agentgym.learners.settings import DistillSettings, LearnerSettings

__all__ = ["HintSD", "HintSDSettings"]


class HintSDSettings(LearnerSettings, DistillSettings):
    """HINT-SD's settings: the shared ones and an EMA teacher (rate 0.001) distilling top-k + tail."""


@register
class HintSD(Learner):
    name = "hint_sd"
    Settings = HintSDSettings
    uses_teacher = True
    default_source = "llm_hindsight"
    default_selector = "hindsight_multi"
    feeds_successful = False  # only failed trajectories are distilled
    metrics = {"active_fraction": "fraction of steps selected for distillation",
               "selected_steps": "steps distilled in this update"}

    def prepare(self, batch: Batch, samples: list[Sample]) -> list[Sample]:
        out = []
        for s in samples:
            if batch.trajectories[s.traj].success:
                if s.target is not None:
                    self.stats["targets_on_successful_ignored"] += 1
                continue
            if s.target is None or not s.target.hint or s.target.span[1] <= s.target.span[0]:
                continue
            s.token_mask = s.span_mask()
            out.append(self.with_teacher_context(s, s.target.hint))
        self.stats["selected_steps"] += len(out)
        self.stats["all_steps"] += len(samples)
        return out

    def objective(self, fwd: Forward):
        return self.distill(fwd)

    def extra_metrics(self) -> dict[str, float]:
        total = self.stats["all_steps"]
        return {"active_fraction": self.stats["selected_steps"] / total if total else 0.0,
                "selected_steps": float(self.stats["selected_steps"])}
