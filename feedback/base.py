"""The feedback-source interface: ``FeedbackSource`` (one trajectory and its group -> per-step
``Feedback`` records), ``CombinedSource`` (several, concatenated), the source registry's helpers
(``register_source``, ``make_source``, ``check_options``) and the batch helpers (``groups_of``,
``by_step``). The sources agentgym ships are in ``agentgym.feedback.sources``.
"""

from __future__ import annotations

import abc
import inspect
from collections import Counter, defaultdict
from typing import Any, ClassVar, Sequence

from agentgym.feedback.prompts import PROMPTS, Prompts
from agentgym.plugins import SOURCES, suggest
from agentgym.types import Feedback, FeedbackKind, Trajectory

__all__ = ["FeedbackSource", "CombinedSource", "groups_of", "by_step", "check_options", "accepted_options",
           "register_source", "make_source"]


def groups_of(trajectories: Sequence[Trajectory]) -> list[list[Trajectory]]:
    """For each trajectory, the trajectories sharing its ``group_id`` (itself included; an empty
    group_id is a group of one)."""
    by_group: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        if t.group_id:
            by_group[t.group_id].append(t)
    return [by_group[t.group_id] if t.group_id else [t] for t in trajectories]


def by_step(feedback: Sequence[Feedback]) -> dict[int, list[Feedback]]:
    """Feedback records grouped by step (the mapping view of a source's output)."""
    out: dict[int, list[Feedback]] = defaultdict(list)
    for f in feedback:
        out[f.step].append(f)
    return dict(sorted(out.items()))


class FeedbackSource(abc.ABC):
    """Base class. Subclasses implement ``__call__``; ``annotate`` handles batches.

    A source declares what it needs: ``needs_policy`` (a model that writes the feedback: the
    trainer passes its teacher as ``policy=``). ``from_config(options, policy=...)`` builds it from
    its config section (``--feedback.<name>.<key> value``: the constructor's keyword arguments), and
    ``usage()`` reports what it cost. Register your own with ``@register_source`` (or the
    ``agentgym.sources`` entry-point group).
    """

    name: ClassVar[str] = "source"
    needs_policy: ClassVar[bool] = False

    @classmethod
    def from_config(cls, options: dict[str, Any] | None = None, *, policy: Any = None) -> "FeedbackSource":
        """An instance from config options (checked against the constructor, with suggestions)."""
        options = dict(options or {})
        check_options(cls, options, f"feedback.{cls.name}", reserved=("policy",))
        return cls(policy, **options) if cls.needs_policy else cls(**options)

    def usage(self) -> dict[str, float]:
        """Totals so far: ``teacher_calls``, ``teacher_tokens``, ``unparsable`` and ``empty`` answers."""
        return {"teacher_calls": 0.0, "teacher_tokens": 0.0, "unparsable": 0.0, "empty": 0.0}

    def __init__(self, *, prompts: Prompts = PROMPTS):
        self.prompts = prompts
        self.stats: Counter[str] = Counter()

    @abc.abstractmethod
    def __call__(self, trajectory: Trajectory, group: Sequence[Trajectory] = ()) -> list[Feedback]:
        """Feedback about ``trajectory``'s steps (``group``: the rollouts of the same task)."""

    def annotate(self, trajectories: Sequence[Trajectory]) -> list[list[Feedback]]:
        return [self(t, g) for t, g in zip(trajectories, groups_of(trajectories))]

    def _record(self, kind: FeedbackKind | str, step: int, text: str, payload: dict[str, Any] | None = None,
                ) -> Feedback:
        self.stats["feedback"] += 1
        return Feedback(kind=kind, step=step, text=text, payload=payload or {}, source=self.name)

    def __add__(self, other: "FeedbackSource") -> "CombinedSource":
        return CombinedSource([self, other])

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ------------------------------------------------------------------------------ combination
class CombinedSource(FeedbackSource):
    """Several sources' records, in the order given (``a + b`` builds one)."""

    name = "combined"

    def __init__(self, sources: Sequence[FeedbackSource], **kwargs):
        super().__init__(**kwargs)
        flat: list[FeedbackSource] = []
        for s in sources:
            if not isinstance(s, FeedbackSource):
                raise TypeError(f"CombinedSource takes FeedbackSource instances, got {type(s).__name__}")
            flat.extend(s.sources if isinstance(s, CombinedSource) else [s])
        self.sources = flat

    def __call__(self, trajectory, group=()):
        return [f for s in self.sources for f in s(trajectory, group)]

    def annotate(self, trajectories):
        per_source = [s.annotate(trajectories) for s in self.sources]
        return [[f for outs in per_source for f in outs[i]] for i in range(len(trajectories))]

    needs_policy = False  # the parts were built with what they need

    def usage(self) -> dict[str, float]:
        total: Counter[str] = Counter()
        for s in self.sources:
            total.update(s.usage())
        return {k: float(total[k]) for k in FeedbackSource.usage(self)}

    @property
    def stats(self) -> Counter:  # type: ignore[override]
        total: Counter[str] = Counter()
        for s in self.sources:
            total.update({f"{s.name}.{k}": v for k, v in s.stats.items()})
        return total

    @stats.setter
    def stats(self, value) -> None:
        pass  # the parts keep their own counters

    def __repr__(self):
        return f"CombinedSource({self.sources!r})"


def check_options(cls: type, options: dict[str, Any], section: str, reserved: Sequence[str] = ()) -> None:
    """Raise ``TypeError`` naming the unknown option (with a suggestion) unless ``cls(**options)``
    accepts every key."""
    known = sorted(accepted_options(cls) - set(reserved))
    for key in options:
        if key not in known:
            raise TypeError(f"{section}: unknown option {key!r}{suggest(key, known)} (options: {', '.join(known) or 'none'})")


def register_source(cls: type[FeedbackSource]) -> type[FeedbackSource]:
    """Class decorator: register a feedback source under its ``name``."""
    return SOURCES.register(cls.name, cls)


def accepted_options(cls: type) -> set[str]:
    """The keyword arguments the constructors along ``cls``'s MRO name (``self``, ``*args`` and
    ``**kwargs`` aside)."""
    return {name for c in cls.__mro__ if "__init__" in vars(c) and c is not object
            for name, p in inspect.signature(c.__init__).parameters.items()
            if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def make_source(spec: str | Sequence[str], *, policy: Any = None, options: dict[str, dict[str, Any]] | None = None,
                prompts: Prompts | None = None, **kwargs: Any) -> FeedbackSource:
    """A source from a registered name; ``"a+b"`` or a list builds a ``CombinedSource``. ``policy``
    reaches the sources that declare ``needs_policy``; ``options`` maps a name to its settings;
    ``prompts`` (the run's wording) reaches every part that takes ``prompts``; other keyword
    arguments go to every part whose constructor accepts them (all of them to a single source, so
    that a typo is an error)."""
    names = [n.strip() for n in (spec.split("+") if isinstance(spec, str) else list(spec))]
    parts = []
    for name in names:
        cls = SOURCES.get(name)
        extra = kwargs if len(names) == 1 else {k: v for k, v in kwargs.items() if k in accepted_options(cls)}
        if prompts is not None and "prompts" in accepted_options(cls):
            extra = {**extra, "prompts": prompts}
        parts.append(cls.from_config({**(options or {}).get(name, {}), **extra}, policy=policy))
    return parts[0] if len(parts) == 1 else CombinedSource(parts)
