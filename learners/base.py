"""What every learner shares: token-exact step samples, student and teacher log-probs, teacher
weights (fixed / EMA / hard refresh), micro-batching by token budget, gradient accumulation and
clipping, AdamW, and one ``update()`` that a learner only specialises with its ``objective``.

A learner sees a batch of trajectories and, per trajectory, the ``Target`` list a selector chose
(step, token span of that step's action, hint). It does not care where the targets came from.

Token bookkeeping: the student side of every loss is ONE forward over ``step.prompt_ids +
step.action_ids`` (the exact rollout ids, never a re-tokenized rendering), with log-probs taken only
at the action tokens, so environment tokens never carry loss. The teacher context is the student
context + one feedback user message (rendered by the chat template, appended as tokens) + the
generation prompt, and the teacher scores the student's own action ids under it.

>>> from agentgym.learners.base import plan_micro_batches
>>> plan_micro_batches([10, 3, 7, 2], token_budget=12)
[[0], [2], [1, 3]]
"""

from __future__ import annotations

import abc
import contextlib
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentgym.agents.teachers import AppendedTurn, TeacherContext, TeacherContextError, TeacherWeights
from agentgym.faults import crash_point
from agentgym.feedback.prompts import PROMPTS, Prompts
from agentgym.feedback.spans import ACTION_SPAN_KEY
from agentgym.sharding import full, full_state, is_dtensor, is_sharded, is_zero3, load_full, shard_as, snapshot, swapped
from agentgym.plugins import LEARNERS
from agentgym.types import Message, Target, Trajectory
from agentgym.learners.losses import AGGREGATIONS, DIRECTIONS, aggregation_normaliser, divergence, k3_kl, topk_tail
from agentgym.learners.signal import teacher_signal

__all__ = ["Sample", "Batch", "Learner", "LearnerSettings", "PPOSettings", "TeacherSettings", "DistillSettings",
           "TeacherWeights", "TeacherContext", "plan_micro_batches", "action_log_probs", "LEARNERS", "register"]


def register(cls: type["Learner"]) -> type["Learner"]:
    """Class decorator: registers a learner under its ``name`` (``agentgym.plugins.LEARNERS``)."""
    return LEARNERS.register(cls.name, cls)


# ------------------------------------------------------------------------------------------ data
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


# ------------------------------------------------------------------------------------------ forward
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


# ------------------------------------------------------------------------------------------ settings
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


# ------------------------------------------------------------------------------------------ learner
@dataclass
class Forward:
    """What a learner's objective gets for one micro-batch: the student's full log-probs at the
    action tokens (with grad), lazily the teacher's (no grad), and helpers."""

    learner: "Learner"
    samples: list[Sample]
    student: list[torch.Tensor]  # [m_i, V] per sample, with grad
    _teacher: list[torch.Tensor] | None = None
    _ref: list[torch.Tensor] | None = None
    _parent: "Forward | None" = None  # a subset's micro-batch (its teacher / reference run once, batched)
    _rows: list[int] | None = None

    def subset(self, rows: Sequence[int]) -> "Forward":
        """The same forward restricted to ``rows`` (teacher and reference computed once for all)."""
        return Forward(self.learner, [self.samples[i] for i in rows], [self.student[i] for i in rows],
                       _parent=self, _rows=list(rows))

    def token_logp(self) -> list[torch.Tensor]:
        """Student log-prob of each sampled action token (with grad)."""
        return [lp.gather(-1, torch.tensor(s.action, device=lp.device).unsqueeze(-1)).squeeze(-1)
                for lp, s in zip(self.student, self.samples)]

    def teacher(self) -> list[torch.Tensor | None]:
        """Teacher log-probs [m_i, V] on each sample's teacher context (None where it has none)."""
        if self._teacher is None:
            self._teacher = [self._parent.teacher()[i] for i in self._rows] if self._parent is not None \
                else self.learner.teacher_log_probs(self.samples)
        return self._teacher

    def reference(self) -> list[torch.Tensor]:
        """Per-token log-probs of the reference (initial) policy."""
        if self._ref is None:
            self._ref = [self._parent.reference()[i] for i in self._rows] if self._parent is not None \
                else self.learner.reference_log_probs(self.samples)
        return self._ref


class Learner(abc.ABC):
    """Base of all learners. A subclass sets ``name``, its ``Settings`` class and what it declares
    (below), and implements:

    - ``prepare(batch, samples) -> samples``: which samples train, their advantages/teacher contexts
      and ``token_mask`` (where the loss applies);
    - ``objective(fwd) -> (sum of per-token losses over the micro-batch, metrics)``; the sum is
      additive over samples (``seq_mean_token_mean`` calls it on one-sample subsets).

    ``update(batch)`` does the rest: micro-batches by token budget, the global normalisation of
    ``loss_aggregation`` (so the gradient does not depend on how the batch was split, nor on the
    number of processes), gradient clipping, the AdamW step, and the teacher update. Samples marked
    ``skip_forward`` (zero advantage) are not run but count in the normaliser. A non-finite loss or
    gradient norm (on any process) skips the optimiser step: the weights, the optimiser state and
    the teacher stay as they were, and ``skipped_nonfinite`` is 1 in the metrics.

    A learner is built from its settings alone (``HintSD(lr=5e-6)``) and bound to a model later
    (``learner.bind(model, tokenizer)``, which the trainer does), or both at once
    (``HintSD(model, tokenizer, lr=5e-6)``).
    """

    name: ClassVar[str] = "learner"
    Settings: ClassVar[type[LearnerSettings]] = LearnerSettings
    uses_teacher: ClassVar[bool] = False  # holds teacher weights (Settings then has the teacher fields)
    default_source: ClassVar[str | None] = None  # feedback source when the run leaves it open
    default_selector: ClassVar[str | None] = None  # selector when the run leaves it open
    feeds_successful: ClassVar[bool] = True  # selectors also choose steps of successful trajectories
    metrics: ClassVar[dict[str, str]] = {}  # the metrics it adds to metrics.jsonl -> what each means (--help)
    # How the teacher's context is built from the student's (a learner with a teacher declares it):
    # AppendedTurn (HINT-SD, dense SD) or RewrittenLastTurn (SERL), worded by that kind's Prompts field.
    teacher_context_kind: ClassVar[type[TeacherContext]] = AppendedTurn

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.uses_teacher:  # every teacher-using learner reports the teacher-signal diagnostic
            from agentgym.learners.signal import SIGNAL_METRICS
            cls.metrics = {**cls.metrics, **SIGNAL_METRICS}

    def __init__(self, model: torch.nn.Module | None = None, tokenizer: Any = None,
                 settings: LearnerSettings | dict[str, Any] | None = None, *, accelerator: Any = None,
                 optimizer: torch.optim.Optimizer | None = None, temperature: float = 1.0,
                 prompts: Prompts | None = None, **overrides: Any):
        if isinstance(settings, self.Settings):
            given = settings.model_dump()  # this learner's own settings object: every value
        elif isinstance(settings, BaseModel):
            given = settings.model_dump(exclude_unset=True)  # another class's: what was set explicitly
        else:
            given = dict(settings or {})
        self.settings = self.Settings.model_validate({**given, **overrides})
        self.temperature = temperature  # log-probs of the temperature-scaled distribution, as sampled
        self.prompts = prompts or PROMPTS  # the teacher turn's wording (Prompts.teacher_hint / teacher_privileged)
        self.model = None
        self.updates = 0  # optimiser steps taken
        self.stats: Counter = Counter()
        if model is not None:
            if tokenizer is None:
                raise TypeError(f"{type(self).__name__}(model, tokenizer, ...): a tokenizer is needed with the model")
            self.bind(model, tokenizer, accelerator=accelerator, optimizer=optimizer)

    def bind(self, model: torch.nn.Module, tokenizer: Any, *, accelerator: Any = None,
             optimizer: torch.optim.Optimizer | None = None, temperature: float | None = None,
             prompts: Prompts | None = None) -> "Learner":
        """Attach the model to train (optimizer, teacher weights, accelerator wrapping); ``prompts``
        words the teacher turn (default: the learner's, else the built-in wording)."""
        s = self.settings
        if temperature is not None:
            self.temperature = temperature
        if prompts is not None:
            self.prompts = prompts
        self.accelerator = accelerator
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters (LoRA not attached, or all frozen)")
        self.optimizer = optimizer or torch.optim.AdamW(trainable, lr=s.lr, betas=(s.beta1, s.beta2),
                                                        weight_decay=s.weight_decay)
        if accelerator is not None:
            if self._deepspeed:
                self._deepspeed_defaults()
            self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        else:
            self.model = model
        # FSDP2 DTensor / ZeRO-3 parameters: every forward is a collective, so every process runs the
        # same passes (teacher and reference ones included), and the second weight sets below hold
        # this process's shard only.
        self.sharded = is_sharded(self.unwrapped)
        if any(is_zero3(p) for p in self.unwrapped.parameters()) and (self.uses_teacher or s.kl_coef > 0):
            # ZeRO-3 keeps small parameters (LoRA matrices among them) gathered in p.data beside their
            # partition, so swapping partitions would not swap them: refused rather than wrong.
            raise NotImplementedError(f"{self.name} holds a teacher or a KL reference, which is not supported under "
                                      "DeepSpeed ZeRO-3; use FSDP2 (configs/accelerate/fsdp2_*.yaml) or ZeRO-2")
        self.mirror: torch.nn.Module | None = None  # see attach_mirror
        self.serve_teacher = False
        self._mirror_teacher: dict[str, torch.Tensor] = {}
        self.teacher_weights = TeacherWeights(self.unwrapped, s.teacher, s.teacher_rate, s.teacher_every) \
            if self.uses_teacher else None
        self._reference: dict[str, torch.Tensor] | None = None
        if s.kl_coef > 0:
            self._reference = snapshot(self.unwrapped)
        kind = type(self).teacher_context_kind
        self.teacher_context = kind(tokenizer, getattr(self.prompts, kind.prompt_field))
        self._context_warned = False
        return self

    def wants_feedback(self) -> bool:
        """Whether this update needs feedback at all (SERL stops asking once its lambda reaches 0)."""
        return True

    def __repr__(self) -> str:
        changed = self.settings.model_dump(exclude_defaults=True)
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # ---------------------------------------------------------------- plumbing
    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model) if self.accelerator is not None else self.model

    @property
    def served(self) -> torch.nn.Module:
        """The unsharded model that rollouts generate with and that is exported: the mirror of a
        sharded model, else the model itself."""
        return self.mirror if self.mirror is not None else self.unwrapped

    def attach_mirror(self, mirror: torch.nn.Module) -> None:
        """Keep ``mirror`` (an unsharded copy of the model, same parameter names) equal to the
        sharded weights: refreshed after every optimiser step and every ``load_state_dict`` by
        gathering the trainable parameters one at a time (a collective: the update and the resume
        run on every process). Rollouts generate token by token, a different number of forwards per
        process, which a sharded model cannot serve (each of its forwards is a collective)."""
        self.mirror = mirror
        self._refresh_mirror()

    def _refresh_mirror(self) -> None:
        if self.mirror is None:
            return
        named = dict(self.mirror.named_parameters())
        with torch.no_grad():
            for n, p in self.unwrapped.named_parameters():
                if p.requires_grad:
                    named[n].copy_(full(p, p))
            if self.serve_teacher and self.teacher_weights is not None and self.teacher_weights.params:
                self._mirror_teacher = {n: full(t).to(named[n].device, named[n].dtype)
                                        for n, t in self.teacher_weights.params.items()}

    def want_teacher_generation(self) -> None:
        """A feedback writer generates with the teacher weights (``teacher_generation``): under
        sharding the mirror then also keeps a whole copy of the teacher, refreshed per update."""
        if not self.serve_teacher:
            self.serve_teacher = True
            self._refresh_mirror()

    def teacher_generation(self):
        """Context in which ``served`` generates with the teacher's weights."""
        tw = self.teacher_weights
        if tw is None or not tw.params:
            return contextlib.nullcontext()
        if self.mirror is None:
            return tw.swapped_in(self.unwrapped)
        if not self._mirror_teacher:
            raise RuntimeError("teacher_generation on a sharded learner needs want_teacher_generation() first")
        return swapped(self.mirror, self._mirror_teacher)

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    def _all_sum(self, value: float) -> float:
        return self._all_reduce(value, "sum")

    def _all_reduce(self, value: float, op: str) -> float:
        if self.world_size == 1:
            return value
        import torch.distributed as dist
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(t.item())

    @property
    def student_temperature(self) -> float:
        """Temperature of the log-probs the objective sees (student and teacher alike): the
        distillation temperature (1 by default, the raw distributions, as HINT-SD's reference) for
        distilling learners, else the rollout's sampling temperature (PPO ratios against the
        recorded sampling log-probs)."""
        if isinstance(self.settings, DistillSettings):
            return float(self.settings.distill_temperature)
        return self.temperature

    def log_probs(self, contexts, actions, params=None, temperature: float | None = None) -> list[torch.Tensor]:
        """Log-probs under the student (with grad, through the prepared model) or, with ``params``,
        under those weights swapped into the model (no autograd graph may be alive: the update runs
        these passes before the student's forward)."""
        temperature = self.student_temperature if temperature is None else temperature
        if params is None:
            return action_log_probs(self.model, contexts, actions, pad_id=self.pad_id, temperature=temperature)
        with swapped(self.unwrapped, params):
            return action_log_probs(self.unwrapped, contexts, actions, pad_id=self.pad_id, temperature=temperature)

    @torch.no_grad()
    def teacher_log_probs(self, samples: Sequence[Sample], *, collective: bool = False) -> list[torch.Tensor | None]:
        """Teacher log-probs on each sample's teacher context (the student's own action ids).
        ``collective``: run one forward even when no sample here has a teacher context (sharded
        weights: another process is scoring, and its forward needs this one's shards)."""
        out: list[torch.Tensor | None] = [None] * len(samples)
        idx = [i for i, s in enumerate(samples) if s.teacher_context is not None]
        params = self.teacher_weights.overrides() if self.teacher_weights is not None else None
        if idx:
            lps = self.log_probs([samples[i].teacher_context for i in idx], [samples[i].action for i in idx],
                                 params=params if params else None)
            self.stats["teacher_tokens"] += sum(len(samples[i].teacher_context) + len(samples[i].action) for i in idx)
            self.stats["teacher_calls"] += len(idx)
            for i, lp in zip(idx, lps):
                out[i] = lp.detach()
        elif collective:
            self.log_probs([[self.pad_id]], [[self.pad_id]], params=params if params else None)
        return out

    @torch.no_grad()
    def reference_log_probs(self, samples: Sequence[Sample], *, collective: bool = False) -> list[torch.Tensor]:
        if not samples:
            if collective:
                self.log_probs([[self.pad_id]], [[self.pad_id]], params=self._reference, temperature=self.temperature)
            return []
        lps = self.log_probs([s.context for s in samples], [s.action for s in samples], params=self._reference,
                             temperature=self.temperature)  # the k3 KL compares sampling distributions
        return [lp.gather(-1, torch.tensor(s.action, device=lp.device).unsqueeze(-1)).squeeze(-1)
                for lp, s in zip(lps, samples)]

    def with_teacher_context(self, sample: Sample, hint: str | None) -> Sample:
        """Give ``sample`` its teacher context (the declared kind, worded by ``self.prompts``). A
        context that cannot be built token-exactly is counted (``teacher_context_errors``), warned
        about once, and leaves the sample without a teacher."""
        if hint:
            try:
                sample.teacher_context = self.teacher_context(sample.context, hint, sample.last_message)
            except TeacherContextError as exc:
                self.stats["teacher_context_errors"] += 1
                if not getattr(self, "_context_warned", False):
                    self._context_warned = True
                    warnings.warn(f"{self.name}: no teacher context for a step ({exc}); such steps get no teacher",
                                  RuntimeWarning, stacklevel=2)
        return sample

    # ---------------------------------------------------------------- shared objectives
    def distill(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum over masked tokens of the top-k + tail divergence between student and teacher."""
        total = fwd.student[0].new_zeros(())
        teacher = fwd.teacher()
        n = 0.0
        for s, slp, tlp in zip(fwd.samples, fwd.student, teacher):
            mask = torch.tensor(s.token_mask, device=slp.device, dtype=slp.dtype)
            if tlp is None or float(mask.sum()) == 0:
                continue
            st, tt = topk_tail(slp, tlp, self.settings.topk)
            total = total + (divergence(st, tt, self.settings.alpha) * mask).sum()
            n += float(mask.sum())
        return total, {"distill_tokens": n}

    def old_logp(self, fwd: Forward) -> list[torch.Tensor]:
        cur = [lp.detach() for lp in fwd.token_logp()]
        if self.settings.old_logprobs == "recompute":
            return cur  # this update's weights before the step: ratio 1, gradient A * grad log pi
        out = []
        for s, c in zip(fwd.samples, cur):
            out.append(torch.tensor(s.old_logprobs, device=c.device, dtype=c.dtype) if s.old_logprobs else c)
        return out

    # ---------------------------------------------------------------- to specialise
    @abc.abstractmethod
    def prepare(self, batch: Batch, samples: list[Sample]) -> list[Sample]:
        """Pick and annotate the training samples of a batch."""

    @abc.abstractmethod
    def objective(self, fwd: Forward) -> tuple[torch.Tensor, dict[str, float]]:
        """Sum of per-token losses of one micro-batch (normalised by the base) and metrics sums."""

    def extra_metrics(self) -> dict[str, float]:
        return {}

    # ---------------------------------------------------------------- the update
    def update(self, batch: Batch) -> dict[str, float]:
        """One optimiser step on ``batch``; returns metrics (loss = the aggregated objective)."""
        started = time.perf_counter()
        self.stats = Counter()
        samples, counts = batch.samples()
        self.stats.update(counts)
        action_tokens = sum(len(s.action) for s in samples)
        samples = self.prepare(batch, samples)
        # The teacher-signal diagnostic, before the step (skipped when sharded: its passes are not collective).
        signal = teacher_signal(self, samples).metrics() if self.uses_teacher and not self.sharded else {}
        counted = [s for s in samples if sum(s.token_mask) > 0]
        loss_tokens = sum(sum(s.token_mask) for s in counted)
        trained = [s for s in counted if not s.skip_forward]
        mode = self.settings.loss_aggregation
        # global normaliser: every process's loss tokens / samples, those of skipped (zero) samples too
        norm = aggregation_normaliser(mode, self._all_sum(loss_tokens) if mode == "token_mean" else 0.0,
                                      self._all_sum(len(counted)) if mode != "token_mean" else 0.0,
                                      self.settings.loss_constant)
        metrics: dict[str, float] = {"num_samples": len(samples), "loss_tokens": loss_tokens,
                                     "action_tokens": action_tokens, "trained_samples": float(len(trained)),
                                     "zero_advantage_samples": float(len(counted) - len(trained)),
                                     "distilled_token_fraction": 0.0}
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: Counter = Counter()
        loss_local = 0.0  # this process's share of the aggregated loss
        # DDP averages gradients over processes, hence x world
        scale = self.world_size / norm if norm > 0 else 0.0
        plans = plan_micro_batches([len(s) for s in trained], self.settings.token_budget) if trained else []
        # Every process must run the same number of backward passes under DDP: pad with empty passes.
        n_micro = int(self._all_max(len(plans)))
        # Which micro-batches need a teacher pass (any process's, when sharded: the pass is collective).
        scored = [float(i < len(plans) and scale > 0 and any(trained[j].teacher_context is not None for j in plans[i]))
                  for i in range(n_micro)]
        if self.sharded:
            scored = self._all_max_list(scored)
        for i in range(n_micro):
            mb = [trained[j] for j in plans[i]] if i < len(plans) else []
            active = bool(mb) and scale > 0
            sync = i == n_micro - 1
            ctx = contextlib.nullcontext() if sync or self.accelerator is None else self.accelerator.no_sync(self.model)
            # Teacher and reference passes first: their weights are swapped in while no graph is alive.
            teacher = ref = None
            if active or self.sharded:
                here = mb if active else []
                extra = {"collective": True} if self.sharded else {}
                teacher = self.teacher_log_probs(here, **extra) if scored[i] else [None] * len(here)
                if self._reference is not None:
                    ref = self.reference_log_probs(here, **extra)
            with ctx:
                if active:
                    student = self.log_probs([s.context for s in mb], [s.action for s in mb])
                    fwd = Forward(self, mb, student, _teacher=teacher, _ref=ref)
                    if mode == "seq_mean_token_mean":  # each sample's token mean, then the mean over samples
                        loss = student[0].new_zeros(())
                        for row, s in enumerate(mb):
                            part, m = self.objective(fwd.subset([row]))
                            sums.update(m)
                            loss = loss + part / float(sum(s.token_mask))
                    else:
                        loss, m = self.objective(fwd)
                        sums.update(m)
                    if teacher is not None:
                        sums.update(self._teacher_kl(mb, student, teacher))
                    loss_local += float(loss.detach()) / norm
                    self._backward(loss * scale, sync)
                elif self.world_size > 1:
                    self._backward(self._empty_pass(), sync)
        grad_norm = self._clip()
        bad = not (math.isfinite(loss_local) and math.isfinite(grad_norm))
        skipped = self._any_process(bad)  # every process skips, or none does
        crash_point("optimizer", self.updates)
        if skipped:
            # A NaN/inf loss or gradient never reaches the weights, the optimiser moments or the teacher.
            self.optimizer.zero_grad(set_to_none=True)
            warnings.warn(f"{self.name}: non-finite loss ({loss_local}) or gradient norm ({grad_norm}) at update "
                          f"{self.updates}; the optimiser step was skipped (weights unchanged)", RuntimeWarning,
                          stacklevel=2)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.updates += 1
            if self.teacher_weights is not None:
                self.teacher_weights.after_update(self.unwrapped, self.updates)
            self._refresh_mirror()
        metrics.update({k: float(v) for k, v in sums.items()})
        metrics["loss"] = self._all_sum(loss_local)
        metrics["grad_norm"] = grad_norm
        metrics["skipped_nonfinite"] = float(skipped)
        metrics["distilled_token_fraction"] = sums.get("distill_tokens", 0.0) / action_tokens if action_tokens else 0.0
        metrics["teacher_calls"] = float(self.stats["teacher_calls"])
        metrics["teacher_tokens"] = float(self.stats["teacher_tokens"])
        metrics["empty_batches"] = float(not trained)
        metrics["steps_without_ids"] = float(self.stats["steps_without_ids"])
        if self.uses_teacher:
            kl_tokens = metrics.pop("teacher_kl_tokens", 0.0)
            kl_sum = metrics.pop("teacher_kl_sum", 0.0)
            if kl_tokens:
                metrics["teacher_kl"] = kl_sum / kl_tokens
            metrics["teacher_context_errors"] = float(self.stats["teacher_context_errors"])
            metrics.update(signal)
        metrics.update(self.extra_metrics())
        metrics["update_seconds"] = time.perf_counter() - started
        return metrics

    @torch.no_grad()
    def _teacher_kl(self, mb: Sequence[Sample], student: Sequence[torch.Tensor],
                    teacher: Sequence[torch.Tensor | None]) -> dict[str, float]:
        """Sum and count of KL(student || teacher) (top-k + tail) over the loss tokens of teacher-scored samples."""
        k = getattr(self.settings, "topk", 100)
        total = n = 0.0
        for s, slp, tlp in zip(mb, student, teacher):
            if tlp is None:
                continue
            mask = torch.tensor(s.token_mask, device=slp.device, dtype=slp.dtype)
            st, tt = topk_tail(slp.detach(), tlp, k)
            total += float((divergence(st, tt, 1.0) * mask).sum())
            n += float(mask.sum())
        return {"teacher_kl_sum": total, "teacher_kl_tokens": n}

    def _all_max(self, value: float) -> float:
        return self._all_reduce(value, "max")

    def _all_max_list(self, values: list[float]) -> list[float]:
        if self.world_size == 1 or not values:
            return values
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def _any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (all-reduced, so all processes agree)."""
        return self._all_max(float(flag)) > 0

    def _empty_pass(self) -> torch.Tensor:
        # Under DDP every process must run as many forward/backward passes as the others: a process
        # with fewer micro-batches runs a one-token forward through the wrapped model with weight 0.
        [lp] = self.log_probs([[self.pad_id]], [[self.pad_id]])
        return lp.sum() * 0.0

    def _backward(self, loss: torch.Tensor, sync: bool = True) -> None:
        if self.accelerator is not None:
            if self._deepspeed:
                # DeepSpeed steps its engine inside backward on a gradient-accumulation boundary:
                # the boundary is this update's last micro-batch.
                self.accelerator.gradient_state._set_sync_gradients(sync)
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def _deepspeed_defaults(self) -> None:
        """accelerate's DeepSpeed config leaves the micro-batch size 'auto' (filled from a dataloader,
        which a learner has none of: its micro-batches are token-budgeted) and the clip 'auto'."""
        config = self.accelerator.state.deepspeed_plugin.deepspeed_config
        if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            config["train_micro_batch_size_per_gpu"] = 1
        if config.get("gradient_clipping", "auto") == "auto":
            config["gradient_clipping"] = self.settings.grad_clip
        if config.get("gradient_accumulation_steps", "auto") == "auto":
            config["gradient_accumulation_steps"] = 1
        # The learner's optimizer is torch's (AdamW, or the one passed to bind): ZeRO wraps it.
        config.setdefault("zero_allow_untested_optimizer", True)

    @property
    def _deepspeed(self) -> bool:
        return self.accelerator is not None and str(getattr(self.accelerator, "distributed_type", "")).endswith("DEEPSPEED")

    def _clip(self) -> float:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.sharded and not self._deepspeed:
            # FSDP2: torch's clip works on DTensor gradients (the norm is reduced over the shards).
            # accelerate's FSDP branch compares parameter lists with ==, which raises for tensors
            # once it holds another prepared model.
            norm = torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        elif self.accelerator is not None:
            norm = self.accelerator.clip_grad_norm_(params, self.settings.grad_clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
        if is_dtensor(norm):  # FSDP2: the global norm, replicated
            norm = norm.full_tensor()
        norm = float(norm) if norm is not None else 0.0
        return norm if math.isfinite(norm) else float("nan")

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Updates, optimizer, teacher and reference weights, every tensor whole and on CPU (sharded
        ones gathered: a collective, so every process calls it), the same for a sharded run as for
        one process."""
        return {"updates": self.updates, "optimizer": full_state(self.optimizer.state_dict()),
                "teacher": self.teacher_weights.state_dict() if self.teacher_weights is not None else None,
                "reference": {n: full(t) for n, t in self._reference.items()} if self._reference else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` (whole tensors; each process keeps its shard of sharded ones)."""
        self.updates = int(state["updates"])
        self.optimizer.load_state_dict(self._shard_optimizer_state(state["optimizer"]))
        if self.teacher_weights is not None and state.get("teacher"):
            self.teacher_weights.load_state_dict(state["teacher"])
        if self._reference is not None and state.get("reference"):
            for n, t in state["reference"].items():
                load_full(self._reference[n], t)
        self._refresh_mirror()

    def _shard_optimizer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """A whole optimizer state dict laid out like the parameters (DTensor moments under FSDP2)."""
        if not self.sharded:
            return state
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        out = {**state, "state": {}}
        for idx, per_param in state["state"].items():
            p = params[int(idx)]
            out["state"][idx] = {k: shard_as(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape else v
                                 for k, v in per_param.items()}
        return out

