"""What every learner shares: one ``update()`` that a learner only specialises with its
``prepare`` (which samples train, and where the loss applies) and its ``objective`` (the loss of a
micro-batch), and the objectives several learners use (top-k + tail distillation, PPO's old log-probs).

A learner sees a batch of trajectories and, per trajectory, the ``Target`` list a selector chose
(step, token span of that step's action, hint). It does not care where the targets came from.
Samples and micro-batching live in ``agentgym.learners.samples``, the shared settings in
``agentgym.learners.settings``, and the model, optimiser, accelerator, sharding, clipping and
all-reduces in the learner's ``Engine`` (``agentgym.learners.engine``).

The teacher context is the student context + one feedback user message (rendered by the chat
template, appended as tokens) + the generation prompt, and the teacher scores the student's own
action ids under it.
"""

from __future__ import annotations

import abc
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, ContextManager, Sequence

import torch
from pydantic import BaseModel

from agentgym.agents.teachers import AppendedTurn, TeacherContext, TeacherContextError, TeacherWeights
from agentgym.faults import crash_point
from agentgym.feedback.prompts import PROMPTS, Prompts
from agentgym.plugins import LEARNERS
from agentgym.learners.engine import Engine
from agentgym.learners.losses import aggregation_normaliser, divergence, topk_tail
from agentgym.learners.samples import Batch, Sample, action_log_probs, plan_micro_batches
from agentgym.learners.settings import DistillSettings, LearnerSettings, PPOSettings, TeacherSettings
from agentgym.learners.signal import SIGNAL_METRICS, teacher_signal

__all__ = ["Sample", "Batch", "Learner", "Forward", "Engine", "LearnerSettings", "PPOSettings", "TeacherSettings",
           "DistillSettings", "TeacherWeights", "TeacherContext", "plan_micro_batches", "action_log_probs", "LEARNERS",
           "register"]


def register(cls: type["Learner"]) -> type["Learner"]:
    """Class decorator: registers a learner under its ``name`` (``agentgym.plugins.LEARNERS``)."""
    return LEARNERS.register(cls.name, cls)


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
        self.engine: Engine | None = None  # the model, optimiser and accelerator, once bound
        self.stats: Counter = Counter()
        if model is not None:
            if tokenizer is None:
                raise TypeError(f"{type(self).__name__}(model, tokenizer, ...): a tokenizer is needed with the model")
            self.bind(model, tokenizer, accelerator=accelerator, optimizer=optimizer)

    def bind(self, model: torch.nn.Module, tokenizer: Any, *, accelerator: Any = None,
             optimizer: torch.optim.Optimizer | None = None, temperature: float | None = None,
             prompts: Prompts | None = None) -> "Learner":
        """Attach the model to train (its ``Engine``: optimizer, accelerator wrapping, teacher and
        reference weights); ``prompts`` words the teacher turn (default: the learner's, else the
        built-in wording)."""
        s = self.settings
        if temperature is not None:
            self.temperature = temperature
        if prompts is not None:
            self.prompts = prompts
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.engine = Engine(model, self.pad_id, s, accelerator=accelerator, optimizer=optimizer)
        if self.engine.zero3 and (self.uses_teacher or s.kl_coef > 0):
            # ZeRO-3 keeps small parameters (LoRA matrices among them) gathered in p.data beside their
            # partition, so swapping partitions would not swap them: refused rather than wrong.
            raise NotImplementedError(f"{self.name} holds a teacher or a KL reference, which is not supported under "
                                      "DeepSpeed ZeRO-3; use FSDP2 (configs/accelerate/fsdp2_*.yaml) or ZeRO-2")
        if self.uses_teacher:
            self.engine.keep_teacher(s.teacher, s.teacher_rate, s.teacher_every)
        if s.kl_coef > 0:
            self.engine.keep_reference()
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

    # ---------------------------------------------------------------- the engine's, for objectives
    @property
    def model(self) -> torch.nn.Module | None:
        """The model as the accelerator prepared it (None until bound)."""
        return self.engine.model if self.engine is not None else None

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.engine.unwrapped

    @property
    def served(self) -> torch.nn.Module:
        return self.engine.served

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.engine.optimizer

    @property
    def sharded(self) -> bool:
        return self.engine.sharded

    @property
    def teacher_weights(self) -> TeacherWeights | None:
        return self.engine.teacher_weights

    @property
    def updates(self) -> int:
        """Optimiser steps taken (SERL's lambda and the teacher's refresh count them)."""
        return self.engine.updates if self.engine is not None else 0

    @updates.setter
    def updates(self, value: int) -> None:
        self.engine.updates = value

    # The ``agents.teachers.TeacherWeightsHost`` interface (a feedback writer generating with the teacher).
    def want_teacher_generation(self) -> None:
        self.engine.want_teacher_generation()

    def teacher_generation(self) -> ContextManager[None]:
        return self.engine.teacher_generation()

    # The ``agentgym.checkpoint.Checkpointable`` state (the engine's: updates, optimizer, teacher, reference).
    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.load_state_dict(state)

    # ---------------------------------------------------------------- log-probs
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
        """Log-probs under the student (with grad) or, with ``params``, under those weights (``Engine.log_probs``)."""
        temperature = self.student_temperature if temperature is None else temperature
        return self.engine.log_probs(contexts, actions, temperature=temperature, params=params)

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
        reference = self.engine.reference
        if not samples:
            if collective:
                self.log_probs([[self.pad_id]], [[self.pad_id]], params=reference, temperature=self.temperature)
            return []
        lps = self.log_probs([s.context for s in samples], [s.action for s in samples], params=reference,
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
        engine = self.engine
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
        norm = aggregation_normaliser(mode, engine.all_sum(loss_tokens) if mode == "token_mean" else 0.0,
                                      engine.all_sum(len(counted)) if mode != "token_mean" else 0.0,
                                      self.settings.loss_constant)
        metrics: dict[str, float] = {"num_samples": len(samples), "loss_tokens": loss_tokens,
                                     "action_tokens": action_tokens, "trained_samples": float(len(trained)),
                                     "zero_advantage_samples": float(len(counted) - len(trained)),
                                     "distilled_token_fraction": 0.0}
        sums, loss_local = self._accumulate(trained, norm)
        grad_norm = engine.clip()
        bad = not (math.isfinite(loss_local) and math.isfinite(grad_norm))
        skipped = engine.any_process(bad)  # every process skips, or none does
        crash_point("optimizer", self.updates)
        if skipped:
            # A NaN/inf loss or gradient never reaches the weights, the optimiser moments or the teacher.
            engine.discard()
            warnings.warn(f"{self.name}: non-finite loss ({loss_local}) or gradient norm ({grad_norm}) at update "
                          f"{self.updates}; the optimiser step was skipped (weights unchanged)", RuntimeWarning,
                          stacklevel=2)
        else:
            engine.step()
        metrics.update({k: float(v) for k, v in sums.items()})
        metrics["loss"] = engine.all_sum(loss_local)
        metrics["grad_norm"] = grad_norm
        metrics["skipped_nonfinite"] = float(skipped)
        metrics["distilled_token_fraction"] = sums.get("distill_tokens", 0.0) / action_tokens if action_tokens else 0.0
        metrics.update(self._counted_metrics(trained, metrics, signal))
        metrics["update_seconds"] = time.perf_counter() - started
        return metrics

    def _accumulate(self, trained: list[Sample], norm: float) -> tuple[Counter, float]:
        """Forward and backward of ``trained`` in token-budgeted micro-batches, gradients scaled by
        the global normaliser ``norm``; returns the objective's metric sums and this process's share
        of the aggregated loss."""
        engine = self.engine
        engine.start_step()
        sums: Counter = Counter()
        loss_local = 0.0
        # DDP averages gradients over processes, hence x world
        scale = engine.world_size / norm if norm > 0 else 0.0
        plans = plan_micro_batches([len(s) for s in trained], self.settings.token_budget) if trained else []
        # Every process must run the same number of backward passes under DDP: pad with empty passes.
        n_micro = int(engine.all_max(len(plans)))
        # Which micro-batches need a teacher pass (any process's, when sharded: the pass is collective).
        scored = [float(i < len(plans) and scale > 0 and any(trained[j].teacher_context is not None for j in plans[i]))
                  for i in range(n_micro)]
        if self.sharded:
            scored = engine.all_max_list(scored)
        for i in range(n_micro):
            mb = [trained[j] for j in plans[i]] if i < len(plans) else []
            active = bool(mb) and scale > 0
            sync = i == n_micro - 1
            # Teacher and reference passes first: their weights are swapped in while no graph is alive.
            teacher = ref = None
            if active or self.sharded:
                here = mb if active else []
                extra = {"collective": True} if self.sharded else {}
                teacher = self.teacher_log_probs(here, **extra) if scored[i] else [None] * len(here)
                if engine.reference is not None:
                    ref = self.reference_log_probs(here, **extra)
            with engine.accumulating(sync):
                if active:
                    loss = self._micro_batch_loss(mb, teacher, ref, sums)
                    loss_local += float(loss.detach()) / norm
                    engine.backward(loss * scale, sync)
                elif engine.world_size > 1:
                    engine.backward(engine.empty_pass(self.student_temperature), sync)
        return sums, loss_local

    def _micro_batch_loss(self, mb: list[Sample], teacher: list[torch.Tensor | None] | None,
                          ref: list[torch.Tensor] | None, sums: Counter) -> torch.Tensor:
        """The student's forward and the objective of one micro-batch (its metrics added to ``sums``)."""
        student = self.log_probs([s.context for s in mb], [s.action for s in mb])
        fwd = Forward(self, mb, student, _teacher=teacher, _ref=ref)
        if self.settings.loss_aggregation == "seq_mean_token_mean":  # each sample's token mean, then the mean over samples
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
        return loss

    def _counted_metrics(self, trained: list[Sample], metrics: dict[str, float],
                         signal: dict[str, float]) -> dict[str, float]:
        """The update's counters (teacher calls and tokens, empty batches, steps without ids), the
        teacher's KL and signal, and the learner's own ``extra_metrics``; pops the KL sums."""
        out = {"teacher_calls": float(self.stats["teacher_calls"]), "teacher_tokens": float(self.stats["teacher_tokens"]),
               "empty_batches": float(not trained), "steps_without_ids": float(self.stats["steps_without_ids"])}
        if self.uses_teacher:
            kl_tokens = metrics.pop("teacher_kl_tokens", 0.0)
            kl_sum = metrics.pop("teacher_kl_sum", 0.0)
            if kl_tokens:
                out["teacher_kl"] = kl_sum / kl_tokens
            out["teacher_context_errors"] = float(self.stats["teacher_context_errors"])
            out.update(signal)
        out.update(self.extra_metrics())
        return out

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
