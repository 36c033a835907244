"""SERL: selective environment-reweighted learning.

Direction from reward, placement and magnitude from feedback. GRPO advantages A; on samples that
have feedback context, each token i of the action span gets

    delta_i = stopgrad(log pi_teacher(a_i | context + feedback) - log pi_current(a_i | context))
              (both at the sampling temperature, as the PPO ratio)
    w_i     = clip(exp(sign(A) * delta_i), 1 - 0.2, 1 + 0.2)
    b_i     = (1 - lambda_k) + lambda_k * w_i          (b_i = 1 outside the span)

and the PPO clipped loss uses A * b_i. Since b_i > 0 an update never flips the sign of A.

The span is the action *content*, as in the reference: the tokens of the command the env executed
(``<action>...</action>``, a BFCL call list or tool call, WebShop's ``search[...]`` / ``click[...]``),
found by ``agentgym.feedback.spans`` - the env's ``info["action_span"]`` when it reports one, else
patterns that mirror the env parsers - inside the selector's target span; reasoning tokens keep
b_i = 1 (plain GRPO). ``serl_span = "target"`` uses the selector's span as it is. Only samples with
a non-zero advantage (|A| >= 1e-6) and a hint get a teacher context, so no teacher call is spent on
a sample whose loss is 0.
lambda_k = 0.5 * max(0, 1 - k / 50) over updates k; once it reaches 0 the teacher (a hard copy of
the student refreshed every 10 updates, scoring only) is no longer queried and SERL is plain GRPO.
Step-level or anchor-level feedback is whatever the feedback source wrote into the targets' hints.
The teacher context is the reference's: the step's last user message rewritten as
``Prompts.teacher_privileged`` ("{prompt}\n\n{privileged_context}\n\nCorrectly solve the current
task.\n"), not an appended turn.
"""

from __future__ import annotations

import torch

from typing import Literal

from pydantic import Field

from agentgym.agents.teachers import RewrittenLastTurn
from agentgym.feedback.spans import action_token_span
from agentgym.learners.base import Forward, register
from agentgym.learners.grpo import GRPO, GRPOSettings, assign_group_advantages
from agentgym.learners.samples import Batch, Sample
from agentgym.learners.settings import TeacherSettings

__all__ = ["SERL", "SERLSettings", "serl_lambda", "serl_weights"]


def serl_lambda(update: int, lambda0: float = 0.5, horizon: int = 50) -> float:
    """lambda_k = lambda0 * max(0, 1 - k / horizon)."""
    return lambda0 * max(0.0, 1.0 - update / horizon)


def serl_weights(advantage: float, teacher_logp: torch.Tensor, current_logp: torch.Tensor,
                 span_mask: torch.Tensor, lam: float, clip: float = 0.2) -> torch.Tensor:
    """Per-token blend weights b_i (1 outside the span); no gradient flows through them."""
    sign = float(torch.sign(torch.tensor(advantage)))
    delta = (teacher_logp - current_logp).detach()
    w = torch.exp(sign * delta).clamp(1 - clip, 1 + clip)
    b = (1 - lam) + lam * w
    return torch.where(span_mask > 0, b, torch.ones_like(b))


class SERLSettings(GRPOSettings, TeacherSettings):
    """SERL's settings: GRPO's, a teacher hard-copied from the student every 10 updates, and the
    lambda schedule and weight clip of the reweighting."""

    teacher: Literal["fixed", "ema", "refresh", "current"] = Field("refresh", description="teacher weights")
    teacher_every: int = Field(10, ge=1, description="hard-refresh interval in updates")
    serl_lambda0: float = Field(0.5, ge=0, le=1, description="lambda at update 0")
    serl_lambda_updates: int = Field(50, ge=1, description="lambda reaches 0 after this many updates")
    serl_clip: float = Field(0.2, gt=0, lt=1, description="weight clip: w in [1 - c, 1 + c]")
    serl_span: Literal["action", "target"] = Field(
        "action", description="tokens that are reweighted: 'action' - the action content inside the target's span "
        "(the env's info['action_span'], else <action>...</action>, a tool call / BFCL call list, "
        "search[...]/click[...]; the reference's choice), 'target' - the selector's span as it is")


@register
class SERL(GRPO):
    name = "serl"
    Settings = SERLSettings
    uses_teacher = True
    default_source = "immediate"
    default_selector = "dense"
    metrics = {**GRPO.metrics, "serl_lambda": "the blend weight lambda of this update"}
    teacher_context_kind = RewrittenLastTurn  # the step prompt rewritten with the feedback, as the reference

    def wants_feedback(self) -> bool:
        return self.lam > 0  # once lambda reaches 0, SERL is plain GRPO: no teacher queries

    @property
    def lam(self) -> float:
        return serl_lambda(self.updates, self.settings.serl_lambda0, self.settings.serl_lambda_updates)

    def prepare(self, batch: Batch, samples: list[Sample]) -> list[Sample]:
        self.lambda_used = lam = self.lam
        for s in assign_group_advantages(samples):
            s.token_mask = [1.0] * len(s.action)
            if lam > 0 and s.advantage != 0 and s.target is not None and s.target.hint:
                self.with_teacher_context(s, s.target.hint)
                s.reweight_span = self.reweight_span(s)
        return self.mark_zero_advantage(samples)

    def reweight_span(self, s: Sample) -> tuple[int, int]:
        """The tokens of ``s`` that get b_i: the action content within the target's span (the
        target's span when they do not overlap, or with ``serl_span = "target"``)."""
        target = s.target.span
        if self.settings.serl_span == "target":
            return target
        tok = self.tokenizer

        def decode(ids):
            return tok.decode(ids, skip_special_tokens=False)

        start, end = action_token_span(s.text, s.action, decode, reported=s.reported_span)
        start, end = max(start, target[0]), min(end, target[1])
        return (start, end) if end > start else target

    @staticmethod
    def _span_mask(s: Sample, like: torch.Tensor) -> torch.Tensor:
        start, end = s.reweight_span if s.reweight_span is not None else s.target.span
        mask = torch.zeros_like(like)
        mask[max(0, start):min(end, len(s.action))] = 1.0
        return mask

    def objective(self, fwd: Forward):
        lam = self.lam
        logp = fwd.token_logp()
        teacher = fwd.teacher() if lam > 0 else [None] * len(logp)
        advantages, weight_sum, weighted = [], 0.0, 0.0
        for s, lp, tlp in zip(fwd.samples, logp, teacher):
            adv = torch.full_like(lp, s.advantage).detach()
            if tlp is not None:
                t_tok = tlp.gather(-1, torch.tensor(s.action, device=tlp.device).unsqueeze(-1)).squeeze(-1)
                span = self._span_mask(s, lp.detach())
                b = serl_weights(s.advantage, t_tok, lp, span, lam, self.settings.serl_clip)
                adv = adv * b
                weight_sum += float((b * span).sum())
                weighted += float(span.sum())
            advantages.append(adv)
        loss, metrics = self.policy_loss(fwd, advantages)
        metrics.update(serl_weight_sum=weight_sum, serl_weighted_tokens=weighted)
        return loss, metrics

    def extra_metrics(self) -> dict[str, float]:
        return {"serl_lambda": self.lambda_used}
