"""Teachers: a backend that generates text (hints, judge summaries) and, for local models, scores
a student's action ids under a teacher context (top-k + tail, see ALGORITHMS.md).

The self-teacher is the policy itself with other weights. ``TeacherWeights`` keeps a copy of the
policy's trainable parameters (the LoRA weights, or all weights without an adapter) and swaps it in
for the duration of a teacher call. Its schedule is a setting: ``fixed`` (never updated: a frozen
copy), ``ema(rate)`` (theta_T <- (1 - rate) theta_T + rate theta_S after each update; HINT-SD uses
0.001, SDPO 0.05) or ``refresh(every)`` (a hard copy every N updates; SERL uses 10).

>>> from agentgym.agents import TransformersPolicy
>>> from agentgym.agents.models import build_tiny_model
>>> policy = TransformersPolicy(build_tiny_model())
>>> teacher = Teacher(policy, TeacherWeights(policy, "ema", rate=0.5))
>>> teacher.weights.updates
0
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from agentgym.agents.base import Conversation, Generation, Policy, SamplingParams, ScoreResult

__all__ = ["Teacher", "TeacherWeights"]

_MODES = {"fixed", "ema", "refresh"}


class TeacherWeights:
    """A second set of weights for a local policy (see the module docstring)."""

    def __init__(self, policy: Any, mode: str = "fixed", *, rate: float = 0.001, every: int = 10):
        import torch

        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
        if mode == "ema" and not 0 < rate <= 1:
            raise ValueError(f"ema rate must be in (0, 1], got {rate}")
        if mode == "refresh" and every < 1:
            raise ValueError(f"refresh every must be >= 1, got {every}")
        self.policy, self.mode, self.rate, self.every = policy, mode, rate, every
        params = dict(policy.model.named_parameters())
        trainable = {n: p for n, p in params.items() if p.requires_grad}
        # LoRA: only adapter weights differ between student and teacher; otherwise all weights.
        self._params = trainable if hasattr(policy.model, "peft_config") and trainable else params
        with torch.no_grad():
            self.state = {n: p.detach().clone() for n, p in self._params.items()}
        self.updates = 0

    def update(self) -> None:
        """Call after each optimiser step of the student."""
        import torch

        self.updates += 1
        with torch.no_grad():
            if self.mode == "ema":
                for n, p in self._params.items():
                    self.state[n].lerp_(p.detach().to(self.state[n].dtype), self.rate)
            elif self.mode == "refresh" and self.updates % self.every == 0:
                for n, p in self._params.items():
                    self.state[n].copy_(p.detach())

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Temporarily load the teacher weights into the policy's model (restored afterwards)."""
        import torch

        with torch.no_grad():
            saved = {n: p.detach().clone() for n, p in self._params.items()}
            for n, p in self._params.items():
                p.copy_(self.state[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self._params.items():
                    p.copy_(saved[n])


class Teacher:
    """A backend (any ``Policy``) used as a teacher, optionally with its own weights."""

    def __init__(self, backend: Policy, weights: TeacherWeights | None = None):
        self.backend, self.weights = backend, weights

    def _ctx(self):
        return self.weights.active() if self.weights is not None else contextlib.nullcontext()

    def generate(self, conversations: Sequence[Conversation], tools: Any = None,
                 sampling: SamplingParams | None = None) -> list[Generation]:
        with self._ctx():
            return self.backend.generate(conversations, tools, sampling)

    def score(self, context_ids: Sequence[int], action_ids: Sequence[int], top_k: int = 0, *,
              temperature: float = 1.0) -> ScoreResult:
        with self._ctx():
            return self.backend.score(context_ids, action_ids, top_k, temperature=temperature)

    def teacher_context(self, student_prompt_ids: Sequence[int], hint: str) -> list[int]:
        """The student's exact context + one user message carrying ``hint`` + the generation prompt.

        The student context ends with the generation prompt; the hint turn goes before it: strip
        the generation prompt, append the user turn as the template renders it (with a new
        generation prompt). Nothing earlier in the context is re-tokenized."""
        renderer = self.backend.renderer
        gen = renderer.delta_text([], None)  # the bare generation prompt
        user_and_gen = renderer.delta_text([{"role": "user", "content": hint}], None)
        gen_ids = renderer.encode(gen)
        ids = list(student_prompt_ids)
        if gen_ids and ids[-len(gen_ids):] == gen_ids:
            ids = ids[:-len(gen_ids)]
            return ids + renderer.encode(user_and_gen)
        raise ValueError("the student context does not end with this template's generation prompt; "
                         f"cannot insert a hint turn (context tail {renderer.tokenizer.decode(ids[-10:])!r})")
