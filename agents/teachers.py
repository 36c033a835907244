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
>>> teacher = Teacher(policy, TeacherWeights(policy.model, "ema", rate=0.5))
>>> teacher.weights.mode
'ema'
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterator, Protocol, Sequence

from agentgym.agents.base import Conversation, Generation, Policy, SamplingParams, ScoreResult, as_chat
from agentgym.agents.chat import ChatRenderer

# agentgym.sharding (torch) is imported inside TeacherWeights' methods: importing this module stays torch-free.

__all__ = ["Teacher", "TeacherContext", "AppendedTurn", "RewrittenLastTurn", "TeacherContextError", "TeacherWeights", "TeacherPolicy",
           "TeacherWeightsHost"]


class TeacherWeights:
    """The teacher's copy of the trainable parameters, kept ``fixed``, moved by ``ema`` (theta_T <-
    (1 - rate) theta_T + rate theta_S after each optimiser step), hard-copied every ``every`` updates
    (``refresh``), or the ``current`` student weights (no copy).

    With LoRA the copy is the adapter's parameters (a second adapter, held as tensors); without, all
    trainable weights. Under FSDP2 / ZeRO-3 each process holds the teacher's copy of *its shard*
    only (``agentgym.sharding``): the EMA and the refresh move shards in place, and scoring or
    generating with the teacher swaps the shards in (no full-state gather). ``state_dict`` gathers
    the whole copy (a collective under sharding) and ``load_state_dict`` cuts each process's shard
    back out, so a checkpoint is the same whether the run was sharded or not.

    >>> import torch
    >>> lin = torch.nn.Linear(1, 1, bias=False); _ = lin.weight.data.fill_(1.0)
    >>> tw = TeacherWeights(lin, mode="ema", rate=0.5); _ = lin.weight.data.fill_(3.0)
    >>> tw.after_update(lin, 1); float(tw.params["weight"])
    2.0
    """

    MODES = ("fixed", "ema", "refresh", "current")

    def __init__(self, model: "torch.nn.Module", mode: str = "ema", rate: float = 0.001, every: int = 10):
        from agentgym.sharding import snapshot
        if mode not in self.MODES:
            raise ValueError(f"teacher mode must be one of {self.MODES}, got {mode!r}")
        if mode == "ema" and not 0 < rate <= 1:
            raise ValueError(f"EMA rate must be in (0, 1], got {rate}")
        if mode == "refresh" and every < 1:
            raise ValueError(f"refresh interval must be >= 1, got {every}")
        self.mode, self.rate, self.every = mode, rate, every
        self.params: dict[str, Any] = {}
        if mode != "current":
            self.params = snapshot(model)

    def after_update(self, model: "torch.nn.Module", update: int) -> None:
        """Call after optimiser step number ``update`` (1-based)."""
        import torch

        with torch.no_grad():
            self._move(model, update)

    def _move(self, model: "torch.nn.Module", update: int) -> None:
        from agentgym.sharding import local_data
        if self.mode == "ema":
            for n, p in model.named_parameters():
                if n in self.params:
                    self.params[n].lerp_(local_data(p), self.rate)
        elif self.mode == "refresh" and update % self.every == 0:
            for n, p in model.named_parameters():
                if n in self.params:
                    self.params[n].copy_(local_data(p))

    def overrides(self) -> "dict[str, torch.Tensor] | None":
        return self.params or None

    @contextlib.contextmanager
    def swapped_in(self, model: "torch.nn.Module") -> Iterator[None]:
        """The teacher's weights in place of the student's (for scoring and generation; no autograd
        graph may be alive while they are swapped)."""
        from agentgym.sharding import swapped
        with swapped(model, self.params):
            yield

    def state_dict(self) -> dict[str, Any]:
        from agentgym.sharding import full
        return {"mode": self.mode, "rate": self.rate, "every": self.every,
                "params": {n: full(t) for n, t in self.params.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from agentgym.sharding import load_full
        for n, t in state["params"].items():
            if n not in self.params:
                raise KeyError(f"teacher checkpoint has parameter {n!r} that this model does not train")
            load_full(self.params[n], t)


class Teacher:
    """A backend (any ``Policy``) used as a teacher, optionally with its own weights."""

    def __init__(self, backend: Policy, weights: TeacherWeights | None = None):
        self.backend, self.weights = backend, weights
        self._context: AppendedTurn | None = None

    def _ctx(self):
        if self.weights is None:
            return contextlib.nullcontext()
        return self.weights.swapped_in(self.backend.model)

    def generate(self, conversations: Sequence[Conversation], tools: Any = None,
                 sampling: SamplingParams | None = None) -> list[Generation]:
        with self._ctx():
            return self.backend.generate(conversations, tools, sampling)

    def score(self, context_ids: Sequence[int], action_ids: Sequence[int], top_k: int = 0, *,
              temperature: float = 1.0) -> ScoreResult:
        with self._ctx():
            return self.backend.score(context_ids, action_ids, top_k, temperature=temperature)

    def teacher_context(self, student_prompt_ids: Sequence[int], hint: str) -> list[int]:
        """The student's exact context + one user message carrying ``hint`` + the generation prompt."""
        if self._context is None:
            self._context = AppendedTurn(self.backend.tokenizer)
        return self._context(student_prompt_ids, hint)


class TeacherContextError(ValueError):
    """A teacher context cannot be built token-exactly for this student context."""


class TeacherContext:
    """How a learner turns a student's context (exact ids, ending with the generation prompt) and a
    hint into the teacher's context, as tokens. Nothing the student saw is re-tokenized: the
    builders only cut at a chat-turn boundary they have checked and render new turns with the
    model's own template (``ChatRenderer.delta_text``).

    A kind names the ``Prompts`` field it words the hint with (``prompt_field``) and the fields that
    template receives; a learner declares its kind (``Learner.teacher_context_kind``).
    ``TeacherContext(tokenizer)`` with no template is the bare hint as one appended user turn.
    """

    prompt_field: str = "teacher_hint"

    def __init__(self, tokenizer: Any, template: str | None = None):
        self.renderer = ChatRenderer(tokenizer)
        self.template = template
        self.gen_prompt_ids = self.renderer.encode(self.renderer.delta_text([]))

    def _check_tail(self, context: Sequence[int]) -> int:
        n = len(self.gen_prompt_ids)
        if list(context[len(context) - n:]) != self.gen_prompt_ids:
            raise TeacherContextError(f"the student context does not end with the generation prompt "
                                      f"{self.gen_prompt_ids}; got tail {list(context[-n:])}")
        return n

    def __call__(self, context: Sequence[int], hint: str, last_message: Any = None) -> list[int]:
        raise NotImplementedError


class AppendedTurn(TeacherContext):
    """HINT-SD / dense SD: the student's context + ONE user turn ``teacher_hint.format(hint=...)``
    + the generation prompt (the reference's "Consider the following feedback to solve this step")."""

    prompt_field = "teacher_hint"

    def __call__(self, context: Sequence[int], hint: str, last_message: Any = None) -> list[int]:
        n = self._check_tail(context)
        text = self.template.format(hint=hint) if self.template is not None else hint
        return list(context[:len(context) - n]) + self.renderer.encode(
            self.renderer.delta_text([{"role": "user", "content": text}]))


class RewrittenLastTurn(TeacherContext):
    """SERL: the student's context with its LAST message (the step prompt, right before the
    generation prompt) rewritten as ``teacher_privileged.format(prompt=<its text>,
    privileged_context=hint)`` in the same role, as SERL's reference rebuilds the step's messages.

    The last turn's tokens are located by rendering it alone as the template renders a turn after
    an assistant message (``delta_text``) and checking that the context ends with exactly those ids;
    a context that does not (another template's layout, a truncated context) raises
    ``TeacherContextError`` instead of guessing."""

    prompt_field = "teacher_privileged"

    def __call__(self, context: Sequence[int], hint: str, last_message: Any = None) -> list[int]:
        self._check_tail(context)
        if last_message is None:
            raise TeacherContextError("rewriting the last turn needs that turn's message (Sample.last_message)")
        message = as_chat(last_message)
        text = message.get("content")
        if not isinstance(text, str):
            raise TeacherContextError(f"the last turn's content is not text: {type(text).__name__}")
        tail = self.renderer.encode(self.renderer.delta_text([message]))
        if len(tail) > len(context) or list(context[len(context) - len(tail):]) != tail:
            raise TeacherContextError(f"the student context does not end with its last {message.get('role')!r} turn "
                                      f"rendered by the chat template ({len(tail)} ids)")
        template = self.template if self.template is not None else "{prompt}\n\n{privileged_context}"
        rewritten = {**message, "content": template.format(prompt=text, privileged_context=hint)}
        return list(context[:len(context) - len(tail)]) + self.renderer.encode(self.renderer.delta_text([rewritten]))


# ------------------------------------------------------------------------------------------ feedback teachers
class TeacherWeightsHost(Protocol):
    """What a ``TeacherPolicy`` generates through: whoever holds the teacher's weights beside the
    served model (a learner's ``Engine``, or the ``Learner``, which forwards to its engine)."""

    def want_teacher_generation(self) -> None:
        """Keep the teacher ready to generate with (a sharded model's mirror keeps a whole copy)."""

    def teacher_generation(self) -> ContextManager[None]:
        """Context in which the served model generates with the teacher's weights."""


class TeacherPolicy:
    """The student's policy generating with the learner's teacher weights (HINT-SD's hindsight
    model by default): model-based feedback sources get this as their ``policy``. ``learner``: the
    ``TeacherWeightsHost`` holding those weights."""

    token_level = True

    def __init__(self, policy: Any, learner: TeacherWeightsHost):
        self.policy, self.learner = policy, learner
        self.name = f"{getattr(policy, 'name', 'policy')}:teacher"
        self.renderer = policy.renderer
        learner.want_teacher_generation()  # a sharded learner keeps the teacher beside its mirror

    def generate(self, conversations, tools=None, sampling=None, *, prompt_ids=None, seeds=None):
        extra = {"seeds": seeds} if seeds is not None else {}
        with self.learner.teacher_generation():
            return self.policy.generate(conversations, tools, sampling, prompt_ids=prompt_ids, **extra)

    def close(self):
        pass

