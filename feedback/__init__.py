"""Feedback sources and selectors: where teacher text comes from, and which steps get distilled.

The stable surface (what learners code against):

- ``FeedbackSource``: ``source(trajectory, group=()) -> list[Feedback]`` for one trajectory (``group``:
  the rollouts of the same task, needed by ``successful_sibling`` and ``anchor``), and
  ``source.annotate(trajectories) -> list[list[Feedback]]`` for a batch (groups formed from
  ``group_id``; model-based sources batch their calls). Records: ``Feedback(kind, step (0-based),
  text (teacher-ready), payload (JSON), source=<name>)``. ``source.stats``: counters (teacher calls,
  tokens, unparsable answers, ...). ``by_step(feedback)`` gives the step -> records mapping.
- ``Selector``: ``selector(trajectory, feedback=()) -> list[Target]``, pure and deterministic;
  targets sorted, unique per step, span = token range of that step's ``action_ids`` (the whole
  action unless ``decode=`` narrows it), ``hint`` = the text to put in the teacher context.
  Successful trajectories select nothing unless ``include_successful=True``. Compose with
  ``a | b`` (union), ``a & b`` (intersection), ``a.cap(k)`` (k earliest).
- Registries: ``SOURCES`` and ``SELECTORS`` (``agentgym.plugins``; name -> class, lazy, with "did you
  mean" errors), with ``make_source("immediate+reference", policy=...)`` and
  ``make_selector("hindsight_multi", k=3)``; ``@register_source`` / ``@register_selector`` add yours.
- ``PROMPTS`` / ``Prompts``: every template, overridable with ``PROMPTS.replace(name=...)``.
- ``teacher_message(hint)``: the extra user message a distillation teacher gets for a target.

Mixing a source, a selector and a learner:

>>> from agentgym.types import Step, Trajectory, Feedback
>>> traj = Trajectory(task_id="t", steps=[
...     Step(index=0, action_ids=[5, 6], action_text="[ls()]"),
...     Step(index=1, action_ids=[7], action_text="[rm(file='x')]",
...          feedback=[Feedback(kind="error", step=0, text="rm: no such file")])])
>>> source, selector = make_source("immediate"), make_selector("first_error")
>>> targets = selector(traj, source(traj))
>>> [(t.step, t.span, t.hint) for t in targets]
[(1, (0, 1), 'This action failed: rm: no such file')]
"""

from agentgym.feedback.parsing import HindsightAnswer, parse_hindsight
from agentgym.feedback.prompts import PROMPTS, Prompts
from agentgym.feedback.reference import DIVERGENCE_RULES, Divergence, first_divergence
from agentgym.feedback.selectors import (SELECTORS, Cap, Dense, FirstDivergence, FirstError, FirstStep, Fixed,
                                         HindsightMulti, HindsightSingle, Intersection, LastStep, Selector, Union,
                                         make_selector, register_selector)
from agentgym.feedback.base import CombinedSource, FeedbackSource, by_step, groups_of, make_source, register_source
from agentgym.feedback.sources import (FutureTrajectorySource, ImmediateSource, LLMHindsightSource, LLMJudgeSource,
                                       LLMStepHintSource, NextObservationSource, ReferenceHindsightSource,
                                       ReferenceSource, SuccessfulSiblingSource)
from agentgym.plugins import SOURCES
from agentgym.feedback.anchors import AnchorSource



def teacher_message(hint: str, prompts: Prompts = PROMPTS) -> dict[str, str]:
    """The user message appended to a student's context to build the teacher's context."""
    return {"role": "user", "content": prompts.teacher_hint.format(hint=hint)}


__all__ = [
    "FeedbackSource", "Selector", "SOURCES", "SELECTORS", "make_source", "make_selector", "register_source",
    "register_selector", "by_step", "groups_of",
    "PROMPTS", "Prompts", "teacher_message", "parse_hindsight", "HindsightAnswer", "first_divergence",
    "Divergence", "DIVERGENCE_RULES",
    "ImmediateSource", "NextObservationSource", "FutureTrajectorySource", "SuccessfulSiblingSource",
    "ReferenceSource", "ReferenceHindsightSource", "AnchorSource", "LLMJudgeSource", "LLMStepHintSource",
    "LLMHindsightSource", "CombinedSource",
    "Dense", "Fixed", "FirstStep", "LastStep", "FirstError", "FirstDivergence", "HindsightMulti",
    "HindsightSingle", "Union", "Intersection", "Cap",
]
