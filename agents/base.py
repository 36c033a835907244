"""The one interface every policy and teacher backend implements.

- ``generate(conversations, tools, sampling)``: one completion per conversation, with its text,
  the exact token ids sampled and their log-probs (token-level backends), or the text, native tool
  calls and whatever log-probs the server returns (API backends).
- ``score(context_ids, action_ids, top_k)``: log-probs of given action tokens under a given context
  (local backends), optionally with the top-k alternatives and the tail mass
  ``log(1 - sum(top-k probs))`` that distillation losses need (see ALGORITHMS.md).

Token-level backends also own a ``ChatRenderer`` (``policy.renderer``) that turns messages into
ids; the rollout uses it to extend a context without re-tokenizing past actions.

Seeds: ``generate(..., seeds=[...])`` gives each conversation its own seed (the rollout derives one
per (sampling seed, runner seed, task, member, step) with ``derive_seed``), so the steps of an
episode and the members of a group draw independent samples while a run replays exactly. Without
``seeds``, request ``i`` of a call gets ``derive_seed(sampling.seed, i)`` (``request_seeds``).
"""

from __future__ import annotations

import abc
import hashlib
import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from agentgym.types import Message, ToolCall

__all__ = ["SamplingParams", "Generation", "ScoreResult", "Policy", "TokenPolicy", "PolicyError", "Conversation",
           "as_chat", "per_conversation", "derive_seed", "request_seeds"]

Conversation = Sequence["Message | dict[str, Any]"]


class PolicyError(RuntimeError):
    """A backend could not produce a completion (and retrying will not help)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature=0`` means greedy. Log-probs are recorded under the
    temperature-scaled distribution (``log_softmax(logits / T)``; T = 1 when greedy), before top-p /
    top-k truncation, which is what ``score(..., temperature=T)`` recomputes. ``seed`` is the seed
    each request's own seed derives from (``request_seeds``; the rollout's per task, member and
    step); ``None``: unseeded."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def logprob_temperature(self) -> float:
        return self.temperature if self.temperature > 0 else 1.0


@dataclass
class Generation:
    """One completion. ``prompt_ids`` is the exact context the model was conditioned on (empty for
    API backends that do not expose it); ``token_ids``/``logprobs`` align token for token."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_ids: list[int] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" | "length" | "tool_calls"
    tool_calls: list[ToolCall] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreResult:
    """Per action token: its log-prob; with ``top_k > 0`` also the top-k ids and log-probs at that
    position and the tail log-mass ``log(1 - sum(exp(topk_logprobs)))``."""

    logprobs: list[float]
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None
    tail_logprobs: list[float] | None = None


class Policy(abc.ABC):
    """Base of every backend. ``token_level`` says whether ``generate`` returns exact token ids
    (and accepts ``prompt_ids``) so that a rollout can record token-exact steps."""

    token_level: ClassVar[bool] = False
    name: str = "policy"

    @abc.abstractmethod
    def generate(self, conversations: Sequence[Conversation], tools: Any = None,
                 sampling: SamplingParams | None = None, *,
                 prompt_ids: Sequence[Sequence[int] | None] | None = None,
                 seeds: Sequence[int | None] | None = None) -> list[Generation]:
        """One completion per conversation. ``tools`` is one list of JSON schemas for all, or one
        per conversation. ``prompt_ids`` (token-level backends) overrides the rendering of the
        conversation with an exact context. ``seeds`` (optional; one per conversation, ``None`` for
        unseeded) seeds each request on its own, overriding ``sampling.seed`` (see
        ``request_seeds``). Backends whose ``generate`` has no ``seeds`` parameter still work: the
        rollout passes seeds only to a ``generate`` that names it."""

    def score(self, context_ids: Sequence[int], action_ids: Sequence[int], top_k: int = 0, *,
              temperature: float = 1.0) -> ScoreResult:
        raise PolicyError(f"{type(self).__name__} cannot score token ids (only local backends can)")

    def close(self) -> None:
        """Release engines, threads and connections (idempotent)."""


class TokenPolicy(Policy):
    """A policy that generates from prompt token ids: each conversation rendered once with the
    policy's chat template, or the recorded ids of a continuation (token-exact), with one seed per
    request (``request_seeds``). A subclass implements ``generate_ids`` only."""

    def generate(self, conversations: Sequence[Conversation], tools: Any = None,
                 sampling: SamplingParams | None = None, *,
                 prompt_ids: Sequence[Sequence[int] | None] | None = None,
                 seeds: Sequence[int | None] | None = None) -> list[Generation]:
        sampling = sampling or SamplingParams()
        row_seeds = request_seeds(sampling, len(conversations), seeds)
        return self.generate_ids(request_prompts(self, conversations, tools, prompt_ids), sampling, row_seeds)

    @abc.abstractmethod
    def generate_ids(self, prompts: list[list[int]], sampling: SamplingParams,
                     row_seeds: list[int | None]) -> list[Generation]:
        """One ``Generation`` per prompt, sampled with ``sampling`` and the row's seed."""


def derive_seed(*parts: Any) -> int:
    """A seed in [0, 2**63) from ``parts`` (ints / strings): a stable hash (blake2b of their text),
    the same in every process, platform and Python version (unlike ``hash``), so that seeds depend
    only on what names a request, never on process history.

    >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    True
    """
    text = "\x1f".join(map(str, parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def request_seeds(sampling: SamplingParams, n: int, seeds: Sequence[int | None] | None = None) -> list[int | None]:
    """The seed of each of ``n`` requests: ``seeds`` when given (one per request); else, when
    ``sampling.seed`` is set, ``derive_seed(sampling.seed, i)`` for request ``i`` (so the requests of
    one call never share a stream); else ``None`` (unseeded)."""
    if seeds is not None:
        seeds = [None if s is None else operator.index(s) for s in seeds]
        if len(seeds) != n:
            raise ValueError(f"seeds: one per conversation ({n}), got {len(seeds)}")
        for s in seeds:
            if s is not None and not 0 <= s < 2**63:
                raise ValueError(f"seeds: each an int in [0, 2**63) or None, got {s!r}")
        return seeds
    if sampling.seed is None:
        return [None] * n
    return [derive_seed(sampling.seed, i) for i in range(n)]


def as_chat(message: Message | dict[str, Any]) -> dict[str, Any]:
    return message.to_chat() if isinstance(message, Message) else dict(message)


def request_prompts(policy: Any, conversations: Sequence[Any], tools: Any,
                    prompt_ids: Sequence[Sequence[int] | None] | None) -> list[list[int]]:
    """The prompt ids of each request: ``prompt_ids[i]`` when given (the recorded context, so a
    continuation stays token-exact), else ``policy.renderer.prompt_ids`` of conversation ``i`` with
    its tools (the renderer is only needed for conversations without recorded ids)."""
    tools_per = per_conversation(tools, len(conversations), "tools")
    return [list(prompt_ids[i]) if prompt_ids is not None and prompt_ids[i] is not None
            else policy.renderer.prompt_ids(conv, tools_per[i]) for i, conv in enumerate(conversations)]


def per_conversation(value: Any, n: int, what: str) -> list[Any]:
    """Broadcast ``tools`` (one list for all, or one per conversation) to ``n`` entries."""
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(
            v is None or isinstance(v, (list, tuple)) for v in value) and n > 0 and not (
            value and isinstance(value[0], dict)):
        return list(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, dict) for v in value):
        return [list(value)] * n
    raise TypeError(f"{what} must be a list of JSON schemas or one such list per conversation "
                    f"({n}), got {type(value).__name__} of length {len(value) if hasattr(value, '__len__') else '?'}")
