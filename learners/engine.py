"""The engine under every learner: the model, its optimiser and accelerator, the second weight sets
(teacher and KL reference), the unsharded mirror of a sharded model, backward passes, gradient
clipping, the optimiser step, all-reduces across processes, and the state a checkpoint saves.

A learner (``agentgym.learners.base``) is an objective on an engine: it decides which samples train
and what their loss is, and asks the engine for forwards, backwards and the step. The trainer, the
checkpoint and the teacher policy talk to the engine's public interface:

- the model: ``model`` (as prepared by the accelerator), ``unwrapped``, ``served`` (what rollouts
  generate with and what is exported), ``attach_mirror``, ``sharded``, ``world_size``, ``pad_id``;
- the schedule: ``set_lr``, ``updates`` (optimiser steps taken);
- a step: ``start_step``, ``log_probs``, ``accumulating``, ``backward``, ``empty_pass``, ``clip``,
  ``step`` / ``discard``; all-reduces: ``all_sum``, ``all_max``, ``all_max_list``, ``any_process``;
- second weight sets: ``keep_teacher``, ``keep_reference``, ``teacher_weights``, ``reference``,
  ``want_teacher_generation`` / ``teacher_generation`` (the ``agents.teachers.TeacherWeightsHost``
  interface of a feedback writer generating with the teacher's weights);
- checkpoints: ``state_dict`` / ``load_state_dict`` (``agentgym.checkpoint.Checkpointable``).

Sharded models (FSDP2 DTensor / DeepSpeed ZeRO-3 parameters): every forward is a collective, so
every process runs the same passes, the second weight sets hold this process's shard only
(``agentgym.sharding``), and rollouts generate with a mirror (see ``attach_mirror``).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ContextManager, Sequence

import torch
import torch.distributed as dist

from agentgym.agents.teachers import TeacherWeights
from agentgym.learners.samples import action_log_probs
from agentgym.learners.settings import LearnerSettings
from agentgym.sharding import full, full_state, is_dtensor, is_sharded, is_zero3, load_full, shard_as, snapshot, swapped

__all__ = ["Engine"]


class Engine:
    """Model, optimiser (AdamW from ``settings`` unless one is given) and accelerator of one learner.

    ``accelerator.prepare`` wraps the model and the optimiser (DDP, FSDP2 or DeepSpeed); without an
    accelerator the model trains as it is, on one process.
    """

    def __init__(self, model: torch.nn.Module, pad_id: int, settings: LearnerSettings, *, accelerator: Any = None,
                 optimizer: torch.optim.Optimizer | None = None):
        s = self.settings = settings
        self.accelerator = accelerator
        self.pad_id = pad_id
        self.updates = 0  # optimiser steps taken
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters (LoRA not attached, or all frozen)")
        self.optimizer = optimizer or torch.optim.AdamW(trainable, lr=s.lr, betas=(s.beta1, s.beta2),
                                                        weight_decay=s.weight_decay)
        if accelerator is not None:
            if self.deepspeed:
                self._deepspeed_defaults()
            self.model, self.optimizer = accelerator.prepare(model, self.optimizer)
        else:
            self.model = model
        # FSDP2 DTensor / ZeRO-3 parameters: every forward is a collective, so every process runs the
        # same passes (teacher and reference ones included), and the second weight sets below hold
        # this process's shard only.
        self.sharded = is_sharded(self.unwrapped)
        self.zero3 = any(is_zero3(p) for p in self.unwrapped.parameters())
        self.mirror: torch.nn.Module | None = None  # see attach_mirror
        self.serve_teacher = False
        self._mirror_teacher: dict[str, torch.Tensor] = {}
        self.teacher_weights: TeacherWeights | None = None
        self.reference: dict[str, torch.Tensor] | None = None

    # ---------------------------------------------------------------- the model
    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model) if self.accelerator is not None else self.model

    @property
    def served(self) -> torch.nn.Module:
        """The unsharded model that rollouts generate with and that is exported: the mirror of a
        sharded model, else the model itself."""
        return self.mirror if self.mirror is not None else self.unwrapped

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def deepspeed(self) -> bool:
        return self.accelerator is not None and str(getattr(self.accelerator, "distributed_type", "")).endswith("DEEPSPEED")

    def set_lr(self, lr: float) -> None:
        """The learning rate of every parameter group (the trainer's warmup / decay schedule)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

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

    # ---------------------------------------------------------------- second weight sets
    def keep_teacher(self, mode: str, rate: float, every: int) -> None:
        """Hold teacher weights (``TeacherWeights``: fixed / EMA / refresh copy, or the current student)."""
        self.teacher_weights = TeacherWeights(self.unwrapped, mode, rate, every)

    def keep_reference(self) -> None:
        """Hold a copy of the initial trainable weights (the KL term's reference policy)."""
        self.reference = snapshot(self.unwrapped)

    def want_teacher_generation(self) -> None:
        """A feedback writer generates with the teacher weights (``teacher_generation``): under
        sharding the mirror then also keeps a whole copy of the teacher, refreshed per update."""
        if not self.serve_teacher:
            self.serve_teacher = True
            self._refresh_mirror()

    def teacher_generation(self) -> ContextManager[None]:
        """Context in which ``served`` generates with the teacher's weights."""
        tw = self.teacher_weights
        if tw is None or not tw.params:
            return contextlib.nullcontext()
        if self.mirror is None:
            return tw.swapped_in(self.unwrapped)
        if not self._mirror_teacher:
            raise RuntimeError("teacher_generation on a sharded learner needs want_teacher_generation() first")
        return swapped(self.mirror, self._mirror_teacher)

    # ---------------------------------------------------------------- forward / backward / step
    def log_probs(self, contexts: Sequence[Sequence[int]], actions: Sequence[Sequence[int]], *, temperature: float,
                  params: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Log-probs under the student (with grad, through the prepared model) or, with ``params``,
        under those weights swapped into the model (no autograd graph may be alive: the update runs
        these passes before the student's forward)."""
        if params is None:
            return action_log_probs(self.model, contexts, actions, pad_id=self.pad_id, temperature=temperature)
        with swapped(self.unwrapped, params):
            return action_log_probs(self.unwrapped, contexts, actions, pad_id=self.pad_id, temperature=temperature)

    def start_step(self) -> None:
        """Training mode, no gradients: the start of an update's micro-batches."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)

    def accumulating(self, sync: bool) -> ContextManager[Any]:
        """Context of one micro-batch's backward: gradients are reduced across processes only when
        ``sync`` (the update's last micro-batch)."""
        return contextlib.nullcontext() if sync or self.accelerator is None else self.accelerator.no_sync(self.model)

    def backward(self, loss: torch.Tensor, sync: bool = True) -> None:
        if self.accelerator is not None:
            if self.deepspeed:
                # DeepSpeed steps its engine inside backward on a gradient-accumulation boundary:
                # the boundary is this update's last micro-batch.
                self.accelerator.gradient_state._set_sync_gradients(sync)
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def empty_pass(self, temperature: float) -> torch.Tensor:
        """Under DDP every process must run as many forward/backward passes as the others: a process
        with fewer micro-batches runs a one-token forward through the wrapped model with weight 0."""
        [lp] = self.log_probs([[self.pad_id]], [[self.pad_id]], temperature=temperature)
        return lp.sum() * 0.0

    def clip(self) -> float:
        """Clip the gradient norm to ``settings.grad_clip``; returns the norm before clipping (nan
        when it is not finite)."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.sharded and not self.deepspeed:
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

    def step(self) -> None:
        """The optimiser step, then the teacher's move (EMA / refresh) and the mirror's refresh."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.teacher_weights is not None:
            self.teacher_weights.after_update(self.unwrapped, self.updates)
        self._refresh_mirror()

    def discard(self) -> None:
        """Drop the accumulated gradients without a step (weights, moments and teacher unchanged)."""
        self.optimizer.zero_grad(set_to_none=True)

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

    # ---------------------------------------------------------------- across processes
    def all_sum(self, value: float) -> float:
        return self._all_reduce(value, "sum")

    def all_max(self, value: float) -> float:
        return self._all_reduce(value, "max")

    def _all_reduce(self, value: float, op: str) -> float:
        if self.world_size == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(t.item())

    def all_max_list(self, values: list[float]) -> list[float]:
        if self.world_size == 1 or not values:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (all-reduced, so all processes agree)."""
        return self.all_max(float(flag)) > 0

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Updates, optimizer, teacher and reference weights, every tensor whole and on CPU (sharded
        ones gathered: a collective, so every process calls it), the same for a sharded run as for
        one process."""
        return {"updates": self.updates, "optimizer": full_state(self.optimizer.state_dict()),
                "teacher": self.teacher_weights.state_dict() if self.teacher_weights is not None else None,
                "reference": {n: full(t) for n, t in self.reference.items()} if self.reference else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` (whole tensors; each process keeps its shard of sharded ones)."""
        self.updates = int(state["updates"])
        self.optimizer.load_state_dict(self._shard_optimizer_state(state["optimizer"]))
        if self.teacher_weights is not None and state.get("teacher"):
            self.teacher_weights.load_state_dict(state["teacher"])
        if self.reference is not None and state.get("reference"):
            for n, t in state["reference"].items():
                load_full(self.reference[n], t)
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
