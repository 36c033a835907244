"""GRPO for multi-turn agents: every step is a sample carrying its episode's group-normalised
advantage, trained with the PPO clipped surrogate on the action tokens (token-mean), optional k3 KL
to the initial policy (coefficient 0 by default).

A = (R - mean_G R) / (std_G R + 1e-6), mean and std over all step-samples of the task group;
|A| < 1e-6 is exactly 0 (``losses.ZERO_ADVANTAGE_TOL``).

Aggregation as verl's ``token-mean`` (the default ``loss_aggregation``): the loss is the sum of
per-token losses over ALL action tokens of the update divided by their number, the tokens of
zero-advantage samples (all-fail / all-pass groups) included. Those samples add exactly 0 to the
numerator, so their forward pass is skipped (``Sample.skip_forward``) unless a KL term applies.
"""

from __future__ import annotations

import torch

from agentgym.learners.base import Forward, Learner, register
from agentgym.learners.samples import Batch, Sample
from agentgym.learners.settings import LearnerSettings, PPOSettings
from agentgym.learners.losses import group_advantages, k3_kl, ppo_token_loss

__all__ = ["GRPO", "GRPOSettings", "assign_group_advantages"]


def assign_group_advantages(samples: list[Sample]) -> list[Sample]:
    """Set each step-sample's advantage from its episode reward within its group."""
    advs = group_advantages([s.reward for s in samples], [s.group for s in samples])
    for s, a in zip(samples, advs):
        s.advantage = a
    return samples


class GRPOSettings(LearnerSettings, PPOSettings):
    """GRPO's settings: the shared ones and the clipped surrogate's."""


@register
class GRPO(Learner):
    name = "grpo"
    Settings = GRPOSettings
    uses_teacher = False
    metrics = {"clipped_tokens": "action tokens whose ratio was clipped", "ratio_sum": "sum of PPO ratios"}

    def prepare(self, batch: Batch, samples: list[Sample]) -> list[Sample]:
        for s in assign_group_advantages(samples):
            s.token_mask = [1.0] * len(s.action)
        return self.mark_zero_advantage(samples)

    def mark_zero_advantage(self, samples: list[Sample]) -> list[Sample]:
        """Zero-advantage samples (groups where every episode got the same reward) stay in the batch
        - their tokens count in the denominator, as verl counts them - but add nothing to the
        numerator, so their forward is skipped (not with a KL term, which they do carry)."""
        for s in samples:
            s.skip_forward = s.advantage == 0.0 and self.settings.kl_coef == 0
        return samples

    def policy_loss(self, fwd: Forward, advantages: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over tokens of the clipped surrogate with per-token advantages (+ k3 KL)."""
        logp, old = fwd.token_logp(), self.old_logp(fwd)
        refs = fwd.reference() if self.settings.kl_coef > 0 else [None] * len(logp)
        total = logp[0].new_zeros(())
        clipped = kl_sum = ratio_sum = 0.0
        for s, lp, olp, adv, ref in zip(fwd.samples, logp, old, advantages, refs):
            mask = torch.tensor(s.token_mask, dtype=lp.dtype, device=lp.device)
            loss, was_clipped = ppo_token_loss(lp, olp, adv, clip=self.settings.clip_eps,
                                               dual_clip=self.settings.dual_clip)
            if ref is not None:
                kl = k3_kl(lp, ref)
                loss = loss + self.settings.kl_coef * kl
                kl_sum += float((kl.detach() * mask).sum())
            total = total + (loss * mask).sum()
            clipped += float((was_clipped * mask).sum())
            ratio_sum += float((torch.exp(lp.detach() - olp) * mask).sum())
        return total, {"clipped_tokens": clipped, "kl_sum": kl_sum, "ratio_sum": ratio_sum}

    def objective(self, fwd: Forward):
        advantages = [torch.full((len(s.action),), s.advantage, device=fwd.student[0].device)
                      for s in fwd.samples]
        return self.policy_loss(fwd, advantages)

    def extra_metrics(self) -> dict[str, float]:
        return {}
