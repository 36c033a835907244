"""Training samples and their batching: token-exact step samples, the batch of one update, micro-batches
by token budget, and the one forward that turns contexts + actions into action-token log-probs.

Token bookkeeping: the student side of every loss is ONE forward over ``step.prompt_ids +
step.action_ids`` (the exact rollout ids, never a re-tokenized rendering), with log-probs taken only
at the action tokens, so environment tokens never carry loss.

>>> plan_micro_batches([10, 3, 7, 2], token_budget=12)
[[0], [2], [1, 3]]
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from agentgym.feedback.spans import ACTION_SPAN_KEY
from agentgym.types import Message, Target, Trajectory

__all__ = ["Sample", "Batch", "last_turns", "plan_micro_batches", "action_log_probs"]


@dataclass
class Sample:
    """One step of one trajectory as a training sample."""

    traj: int  # index of the trajectory in the batch
    step: int  # step index in that trajectory
    context: list[int]  # exact prompt ids of the step
    action: list[int]  # exact sampled ids
    old_logprobs: list[float] | None = None  # sampling log-probs (PPO ratio denominator)
    reward: float = 0.0
    group: str = ""
    advantage: float = 0.0
    target: Target | None = None  # the selected span + hint of this step, if any
    teacher_context: list[int] | None = None  # context + feedback message, when a teacher scores it
    token_mask: list[float] = field(default_factory=list)  # per action token: 1 where the loss applies
    # True: the sample adds exactly 0 to the loss numerator (a zero advantage without a KL term), so
    # its forward pass is skipped; its tokens still count in the aggregation's denominator.
    skip_forward: bool = False
    text: str = ""  # the step's action_text (what env.step received)
    reported_span: Any = None  # the env's info["action_span"] ([start, end) characters of text), if any
    reweight_span: tuple[int, int] | None = None  # SERL: the action-content tokens it reweights
    last_message: Message | None = None  # the turn right before the generation prompt (SERL rewrites it)
    reference_action: list[int] | None = None  # the env's reference action ids here, if it has one (diagnostics)

    def __len__(self) -> int:
        return len(self.context) + len(self.action)

    def span_mask(self) -> list[float]:
        """1.0 on the target span's tokens, 0 elsewhere (all zeros without a target)."""
        mask = [0.0] * len(self.action)
        if self.target is not None:
            start, end = self.target.span
            for i in range(max(0, start), min(end, len(self.action))):
                mask[i] = 1.0
        return mask


def last_turns(trajectory: Trajectory) -> list[Message | None]:
    """Per step, the message right before its generation prompt: the last initial message for the
    first step, then the last message of the previous step's reply (None where there is none)."""
    out: list[Message | None] = []
    last = trajectory.messages[-1] if trajectory.messages else None
    for step in trajectory.steps:
        out.append(last)
        last = step.reply[-1] if step.reply else None
    return out


@dataclass
class Batch:
    """Trajectories of one update and the targets selected on each (same order). ``references``:
    the env's reference action ids at (trajectory index, step index), where it has one; the
    teacher-signal diagnostic scores them (``agentgym.learners.signal``)."""

    trajectories: list[Trajectory]
    targets: list[list[Target]] | None = None
    references: dict[tuple[int, int], list[int]] | None = None

    def __post_init__(self):
        if self.targets is None:
            self.targets = [[] for _ in self.trajectories]
        if len(self.targets) != len(self.trajectories):
            raise ValueError(f"{len(self.targets)} target lists for {len(self.trajectories)} trajectories")

    def samples(self) -> tuple[list[Sample], Counter]:
        """Every step with recorded ids as a Sample (its target attached); counts what was skipped."""
        out, counts = [], Counter()
        for i, (traj, targets) in enumerate(zip(self.trajectories, self.targets)):
            by_step = {t.step: t for t in targets}
            for step, last in zip(traj.steps, last_turns(traj)):
                if not step.action_ids or not step.prompt_ids:
                    counts["steps_without_ids"] += 1
                    continue
                out.append(Sample(traj=i, step=step.index, context=list(step.prompt_ids),
                                  action=list(step.action_ids),
                                  old_logprobs=list(step.action_logprobs) or None,
                                  reward=float(traj.final_reward), group=traj.group_id or f"#{i}",
                                  target=by_step.get(step.index), text=step.action_text,
                                  reported_span=step.info.get(ACTION_SPAN_KEY), last_message=last,
                                  reference_action=(self.references or {}).get((i, step.index))))
        return out, counts


def plan_micro_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Group sample indices so that rows x longest-row <= ``token_budget`` (padded tokens).

    Longest first, greedy; a sample longer than the budget gets a micro-batch of its own.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be >= 1, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = max([lengths[j] for j in current] + [lengths[i]])
        if current and width * (len(current) + 1) > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def action_log_probs(model: Any, contexts: Sequence[Sequence[int]], actions: Sequence[Sequence[int]], *,
                     pad_id: int, temperature: float = 1.0, params: dict[str, torch.Tensor] | None = None,
                     ) -> list[torch.Tensor]:
    """Full-vocabulary log-probs ``[len(action), vocab]`` at each action token, one tensor per row.

    One left-padded forward over context + action (explicit position ids, so padding does not shift
    positions); only the last ``max(len(action)) + 1`` positions are projected to the vocabulary.
    ``params``: parameter overrides applied with ``torch.func.functional_call`` (plain models only;
    the learners swap teacher weights in with ``agentgym.sharding.swapped``, which works sharded).
    """
    device = next(model.parameters()).device
    seqs = [list(c) + list(a) for c, a in zip(contexts, actions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(seqs):
        ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = max(len(a) for a in actions) + 1
    kwargs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                  logits_to_keep=keep, use_cache=False)
    if params:
        logits = torch.func.functional_call(model, params, args=(), kwargs=kwargs, strict=False).logits
    else:
        logits = model(**kwargs).logits
    logits = logits[:, -keep:]
    out = []
    for row, a in enumerate(actions):
        m = len(a)
        # position j predicts token j + 1: the action's m tokens are predicted by the m positions
        # before the last one.
        out.append(torch.log_softmax(logits[row, keep - 1 - m:keep - 1].float() / temperature, dim=-1))
    return out
