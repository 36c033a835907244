"""The settings every learner shares (``LearnerSettings``) and the mixins a learner adds to its own
``Settings`` class: the clipped surrogate (``PPOSettings``), teacher weights (``TeacherSettings``) and
token-level distillation (``DistillSettings``). The run config's ``[learner]`` section is the learner's
``Settings`` class, so its fields reach ``--help`` and config files without touching the core."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentgym.learners.losses import AGGREGATIONS, DIRECTIONS

__all__ = ["LearnerSettings", "PPOSettings", "TeacherSettings", "DistillSettings"]


class LearnerSettings(BaseModel):
    """Hyper-parameters every learner has. A learner's ``Settings`` class extends this with its own
    fields (and the mixins below); the run config's ``[learner]`` section is exactly that class, so a
    new learner's settings reach ``--help`` and config files without touching the core."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    lr: float = Field(5e-6, gt=0, allow_inf_nan=False, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False, description="AdamW weight decay")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2")
    grad_clip: float = Field(1.0, gt=0, allow_inf_nan=False, description="gradient-norm clip")
    token_budget: int = Field(16384, ge=1, le=1 << 24, description="padded tokens per micro-batch")
    kl_coef: float = Field(0.0, ge=0, allow_inf_nan=False, description="k3 KL to the initial policy")
    loss_aggregation: Literal[AGGREGATIONS] = Field(
        "token_mean", description="how per-token losses become the loss: 'token_mean' (verl's default: sum over "
        "all loss tokens of the update / their number, zero-advantage samples' tokens included), "
        "'seq_mean_token_mean' (mean over samples of each sample's token mean), 'constant' (Dr.GRPO: sum / "
        "(loss_constant x number of samples)); all normalisers are global (all processes, all micro-batches)")
    loss_constant: float = Field(512.0, gt=0, allow_inf_nan=False,
                                 description="tokens per sample of the 'constant' aggregation's divisor (Dr.GRPO's "
                                 "fixed length; set it to the run's max_new_tokens - 512 in SERL's reference)")


class PPOSettings(BaseModel):
    """The clipped-surrogate fields of the policy-gradient learners."""

    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip")
    dual_clip: float | None = Field(3.0, gt=1, allow_inf_nan=False, description="dual clip for negative advantages (None: off)")
    old_logprobs: Literal["rollout", "recompute"] = Field("rollout", description="PPO ratio denominator: the "
                                                          "sampling log-probs, or a no-grad forward before the step")


class TeacherSettings(BaseModel):
    """Which weights a teacher scores with (fixed copy, EMA, hard refresh, or the current student)."""

    teacher: Literal["fixed", "ema", "refresh", "current"] = Field("ema", description="teacher weights")
    teacher_rate: float = Field(0.001, gt=0, le=1, description="EMA rate (theta_T <- (1-rate) theta_T + rate theta_S)")
    teacher_every: int = Field(10, ge=1, description="hard-refresh interval in updates (teacher = 'refresh')")


class DistillSettings(TeacherSettings):
    """Token-level distillation from a teacher distribution."""

    topk: int = Field(100, ge=0, description="distillation over the student's top-k + tail (0: full vocabulary)")
    distill_temperature: float = Field(1.0, gt=0, allow_inf_nan=False,
                                       description="temperature of the student and teacher distributions that are "
                                       "distilled (1: the raw distributions, as HINT-SD's reference; the rollout's "
                                       "sampling temperature is not applied)")
    kl_direction: str | float = Field("reverse", description="'forward', 'reverse', 'jsd' or SDPO's alpha in [0, 1]")

    @field_validator("kl_direction")
    @classmethod
    def _direction(cls, v):
        if isinstance(v, str) and v not in DIRECTIONS:
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"must be one of {sorted(DIRECTIONS)} or a float in [0, 1], got {v!r}") from None
        if isinstance(v, float) and not 0 <= v <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {v}")
        return v

    @property
    def alpha(self) -> float:
        """0 forward KL, 1 reverse KL, 0.5 JSD."""
        return DIRECTIONS[self.kl_direction] if isinstance(self.kl_direction, str) else float(self.kl_direction)
