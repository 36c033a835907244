"""Selectors: which steps of a trajectory (and which tokens of each action) get distillation.

A selector is a pure function ``selector(trajectory, feedback=()) -> list[Target]``: targets are
sorted by step, unique per step, each names an action step of that trajectory and a token span
inside that step's ``action_ids``, and equal inputs give equal outputs. ``feedback`` is what the
feedback sources produced for this trajectory (``Feedback`` records with ``step`` indices); the
env's own feedback is read from ``trajectory.steps[i].feedback``.

Successful trajectories select nothing unless ``include_successful=True``.

>>> from agentgym.types import Step, Trajectory, Feedback
>>> t = Trajectory(task_id="t", steps=[Step(index=i, action_ids=[1, 2, 3]) for i in range(4)])
>>> [x.step for x in Dense()(t)]
[0, 1, 2, 3]
>>> hints = [Feedback(kind="hint", step=2, text="fix", payload={"hindsight": True}),
...          Feedback(kind="hint", step=0, text="first", payload={"hindsight": True})]
>>> [(x.step, x.hint) for x in HindsightMulti(k=3)(t, hints)]
[(0, 'first'), (2, 'fix')]
>>> [x.step for x in (Dense() & LastStep())(t)], [x.step for x in Dense().cap(2)(t)]
([3], [0, 1])

Spans: the whole action ``(0, len(action_ids))`` by default; give ``decode`` (the policy's
``tokenizer.decode``) to narrow it to the command inside ``<action>...</action>`` or WebShop's
``search[...]``/``click[...]`` (see ``agentgym.feedback.spans``).
"""

from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterable, Sequence

from agentgym.plugins import SELECTORS
from agentgym.types import Feedback, FeedbackKind, Target, Trajectory

from agentgym.feedback.base import accepted_options, check_options
from agentgym.feedback.prompts import PROMPTS, Prompts
from agentgym.feedback.reference import describe_divergence, first_divergence
from agentgym.feedback.spans import action_token_span

__all__ = ["Selector", "Dense", "Fixed", "FirstStep", "LastStep", "FirstError", "FirstDivergence",
           "HindsightMulti", "HindsightSingle", "Union", "Intersection", "Cap", "SELECTORS",
           "make_selector", "register_selector", "external_hint"]


def external_hint(step: int, feedback: Sequence[Feedback]) -> str | None:
    """The texts of the sources' feedback about ``step``, joined (None when there is none)."""
    texts = [f.text for f in feedback if f.step == step and f.text]
    return "\n\n".join(texts) if texts else None


class Selector(abc.ABC):
    """Base: subclasses implement ``choose`` (step -> hint, any order); the base applies the success
    rule, drops steps that are not in the trajectory, computes spans, sorts and caps."""

    name: ClassVar[str] = "selector"

    @classmethod
    def from_config(cls, options: dict[str, Any] | None = None, **given: Any) -> "Selector":
        """An instance from config options (checked against the constructor, with suggestions);
        ``given``: what the trainer supplies (e.g. ``include_successful`` from the learner)."""
        options = dict(options or {})
        check_options(cls, options, f"feedback.{cls.name}")
        ok = accepted_options(cls) | accepted_options(Selector)
        return cls(**{**{k: v for k, v in given.items() if k in ok}, **options})

    def __init__(self, *, include_successful: bool = False, decode: Callable[[list[int]], str] | None = None):
        self.include_successful = include_successful
        self.decode = decode

    @abc.abstractmethod
    def choose(self, trajectory: Trajectory, feedback: Sequence[Feedback]) -> dict[int, str | None]:
        """The chosen steps with their hints."""

    def __call__(self, trajectory: Trajectory, feedback: Sequence[Feedback] = ()) -> list[Target]:
        if trajectory.success and not self.include_successful:
            return []
        feedback = list(feedback)
        chosen = self.choose(trajectory, feedback)
        targets = []
        for index in sorted(i for i in chosen if 0 <= i < len(trajectory.steps)):
            step = trajectory.steps[index]
            span = action_token_span(step.action_text, step.action_ids, self.decode)
            targets.append(Target(step=index, span=span, hint=chosen[index], source=self.name))
        return targets

    # composition sugar
    def __or__(self, other: "Selector") -> "Union":
        return Union(self, other)

    def __and__(self, other: "Selector") -> "Intersection":
        return Intersection(self, other)

    def cap(self, k: int) -> "Cap":
        return Cap(self, k)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Dense(Selector):
    """Every action step (dense per-turn self-distillation)."""

    name = "dense"

    def choose(self, trajectory, feedback):
        return {s.index: external_hint(s.index, feedback) for s in trajectory.steps}


class Fixed(Selector):
    """One fixed step: ``index`` (negative counts from the end, -1 = last); nothing if out of range."""

    name = "fixed"

    def __init__(self, index: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"index must be an int, got {type(index).__name__}: {index!r}")
        self.index = index

    def choose(self, trajectory, feedback):
        n = len(trajectory.steps)
        i = self.index if self.index >= 0 else n + self.index
        return {i: external_hint(i, feedback)} if 0 <= i < n else {}


class FirstStep(Fixed):
    name = "first"

    def __init__(self, **kwargs):
        super().__init__(0, **kwargs)


class LastStep(Fixed):
    name = "last"

    def __init__(self, **kwargs):
        super().__init__(-1, **kwargs)


class FirstError(Selector):
    """The first step with an error: the env's ``error`` feedback on the step, or an ``error``
    record among the given feedback. Hint: the sources' feedback for it, else the error text."""

    name = "first_error"

    def choose(self, trajectory, feedback):
        given = {f.step for f in feedback if f.kind is FeedbackKind.ERROR}
        for step in trajectory.steps:
            if step.errors or step.index in given:
                errors = "; ".join(f.text for f in step.errors if f.text) or None
                return {step.index: external_hint(step.index, feedback) or errors}
        return {}


class FirstDivergence(Selector):
    """The first step that departs from the env's reference (``agentgym.feedback.reference``)."""

    name = "first_divergence"

    def __init__(self, *, prompts: Prompts = PROMPTS, **kwargs):
        super().__init__(**kwargs)
        self.prompts = prompts

    def choose(self, trajectory, feedback):
        div = first_divergence(trajectory)
        if div is None:
            return {}
        return {div.step: external_hint(div.step, feedback) or describe_divergence(div, self.prompts)}


class HindsightMulti(Selector):
    """Steps named by hindsight feedback (records with ``payload["hindsight"] is True``, from
    ``LLMHindsightSource`` or ``ReferenceHindsightSource``), the ``k`` earliest, hint = correction.
    ``sources`` restricts which source names count."""

    name = "hindsight_multi"

    def __init__(self, k: int = 3, *, sources: Iterable[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        self.k = k
        self.sources = None if sources is None else frozenset(sources)

    def choose(self, trajectory, feedback):
        chosen: dict[int, str | None] = {}
        n = len(trajectory.steps)
        for f in sorted(feedback, key=lambda f: f.step):  # stable: first record per step wins
            if f.kind is not FeedbackKind.HINT or f.payload.get("hindsight") is not True:
                continue
            if self.sources is not None and f.source not in self.sources:
                continue
            if 0 <= f.step < n and f.step not in chosen:
                chosen[f.step] = f.text or None
        return dict(sorted(chosen.items())[: self.k])


class HindsightSingle(HindsightMulti):
    """Only the earliest step named by hindsight feedback."""

    name = "hindsight_single"

    def __init__(self, **kwargs):
        kwargs.pop("k", None)
        super().__init__(1, **kwargs)


class _Composite(Selector):
    def __init__(self, *parts: Selector):
        if not parts or not all(isinstance(p, Selector) for p in parts):
            raise TypeError(f"compose Selector instances, got {[type(p).__name__ for p in parts]}")
        super().__init__(include_successful=True)  # the parts apply their own success rule
        self.parts = parts

    def choose(self, trajectory, feedback):  # pragma: no cover - __call__ is overridden
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(map(repr, self.parts))})"


class Union(_Composite):
    """Steps chosen by any part; for a step chosen by several, the first part's target, with the
    span widened to cover all parts' spans and distinct hints joined."""

    name = "union"

    def __call__(self, trajectory, feedback=()):
        merged: dict[int, Target] = {}
        for part in self.parts:
            for t in part(trajectory, feedback):
                if t.step not in merged:
                    merged[t.step] = t
                    continue
                old = merged[t.step]
                hint = old.hint if not t.hint or t.hint == old.hint else (
                    t.hint if not old.hint else old.hint + "\n\n" + t.hint)
                span = (min(old.span[0], t.span[0]), max(old.span[1], t.span[1]))
                merged[t.step] = old.model_copy(update={"span": span, "hint": hint})
        return [merged[s] for s in sorted(merged)]


class Intersection(_Composite):
    """Steps chosen by every part (the first part's targets)."""

    name = "intersection"

    def __call__(self, trajectory, feedback=()):
        first, *rest = [part(trajectory, feedback) for part in self.parts]
        keep = set.intersection({t.step for t in first}, *({t.step for t in r} for r in rest)) if rest else None
        return [t for t in first if keep is None or t.step in keep]


class Cap(_Composite):
    """The ``k`` earliest targets of a selector."""

    name = "cap"

    def __init__(self, part: Selector, k: int):
        super().__init__(part)
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k must be an int >= 0, got {k!r}")
        self.k = k

    def __call__(self, trajectory, feedback=()):
        return self.parts[0](trajectory, feedback)[: self.k]

    def __repr__(self):
        return f"Cap({self.parts[0]!r}, k={self.k})"


def register_selector(cls: type[Selector]) -> type[Selector]:
    """Class decorator: register a selector under its ``name``."""
    return SELECTORS.register(cls.name, cls)


def make_selector(name: str, **kwargs) -> Selector:
    """A registered selector by name (unknown names get a suggestion); ``kwargs`` go to its
    constructor, which rejects unknown ones."""
    return SELECTORS.get(name).from_config(kwargs)
