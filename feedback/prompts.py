"""Every piece of wording that agentgym's feedback sources and teachers put in front of a model.

All prompts live here, as fields of one frozen dataclass, so that changing the wording is one line
and never a code change:

>>> from agentgym.feedback.prompts import PROMPTS
>>> mine = PROMPTS.replace(judge_instruction="Say PASS or FAIL, then why, in two sentences. {transcript}")
>>> mine.judge_instruction.startswith("Say PASS")
True

From a run config the same fields are the ``[feedback.prompts]`` section (``--feedback.prompts.teacher_hint
"..."`` on the command line, ``Trainer(prompts=mine)`` in Python); they reach every source and the
learner's teacher context, and ``config.json`` records the wording a run used. Each template is
checked before anything loads: an unknown name gets a did-you-mean, a ``{field}`` the template does
not receive is an error naming the fields it does receive.

>>> Prompts.from_overrides({"teacher_hnt": "x"})
Traceback (most recent call last):
...
ValueError: unknown prompt 'teacher_hnt'; did you mean 'teacher_hint' or 'teacher_privileged'?
>>> Prompts.from_overrides({"teacher_hint": "Hint: {hnt}"})
Traceback (most recent call last):
...
ValueError: prompt teacher_hint: {hnt} is not a field of this template; it receives {hint}

Two rules hold for the built-in wording (``tests/feedback/test_prompts.py``):

- the teacher turns are the method papers' own (HINT-SD appends one user turn "Consider the
  following feedback to solve this step:\n\n{hint}"; SERL rewrites the last user message as
  "{prompt}\n\n{privileged_context}\n\nCorrectly solve the current task.\n");
- a hint states the correction or the evidence, never a copy of the failed attempt: a small teacher
  shown its own wrong action copies it (measured on SmolLM2-135M: the right answer's log-prob fell
  from -2.46 to -7.00), and distillation then teaches the mistake. ``quote_action=True`` on a
  rule-based source opts back in (``quoted_action`` is then added to its hints).
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass
from typing import Any, Mapping

from agentgym.plugins import suggest

__all__ = ["Prompts", "PROMPTS"]


@dataclass(frozen=True)
class Prompts:
    # ---------------------------------------------------------------- trajectory rendering
    # fields: task
    trajectory_task: str = "TASK\n{task}\n"
    # fields: number (1-based), action, output, reward, terminated
    trajectory_step: str = ("--- Step {number} ---\nAgent action:\n{action}\nEnvironment output:\n{output}\n"
                            "Step reward: {reward:g} | episode ended: {terminated}\n")
    # fields: reward, success
    trajectory_outcome: str = "=== OUTCOME ===\nFinal reward: {reward:g} | task solved: {success}\n"
    # shown where the rendering dropped early steps to fit the character budget; fields: dropped
    trajectory_elided: str = "[... {dropped} earlier characters of the transcript omitted ...]\n"

    # ---------------------------------------------------------------- LLM hindsight (HINT-SD)
    hindsight_system: str = (
        "You review transcripts of an agent that failed a task. You find the agent's mistakes and, "
        "for each, say what it should have done instead. You answer with JSON only.")
    # fields: transcript, max_failures, num_steps
    hindsight_multi: str = (
        "{transcript}\n"
        "The agent did not solve this task. Find the steps where it went wrong (at most {max_failures}, "
        "earliest first; steps are numbered 1 to {num_steps}). For each, write a short correction "
        "(fewer than three sentences) telling the agent what to do at that step instead.\n"
        "Answer with JSON only, in this shape:\n"
        '{{"failures": [{{"step": <step number>, "feedback": "<correction>"}}]}}')
    # fields: transcript, num_steps
    hindsight_single: str = (
        "{transcript}\n"
        "The agent did not solve this task. Find the FIRST step where it went wrong (steps are numbered "
        "1 to {num_steps}) and write a short correction (fewer than three sentences) telling the agent "
        "what to do at that step instead.\n"
        "Answer with JSON only, in this shape:\n"
        '{{"failure_step": <step number>, "feedback": "<correction>"}}')

    # ---------------------------------------------------------------- LLM judge (SERL)
    judge_system: str = "You are a strict evaluator of an agent's attempt at a task."
    # fields: transcript
    judge_instruction: str = (
        "{transcript}\n"
        "In two to four sentences, judge this attempt. Your first sentence must say whether the agent "
        "succeeded. Then say what it did well or badly and what would have solved the task.")

    # ---------------------------------------------------------------- rule-based sources
    # fields: text
    immediate: str = "The environment's direct reply to this action: {text}"
    immediate_error: str = "This action failed: {text}"
    # fields: text
    next_observation: str = "After this action the environment showed:\n{text}"
    # fields: text
    future_trajectory: str = "What happened after this action, in the same attempt:\n{text}"
    # fields: text, reward
    successful_sibling: str = ("Another attempt at the same task succeeded (reward {reward:g}). "
                               "Its actions were:\n{text}")
    # fields: text
    reference: str = "Reference solution:\n{text}"
    # fields: turn, expected, actual
    # (``actual``, the failed action, is offered but not used by default: a teacher copies what it is shown)
    # (``expected`` is what the agent should write there: BFCL's remaining calls as a call list)
    reference_hindsight_wrong: str = "Correct reply:\n{expected}"
    reference_hindsight_missing: str = "Correct reply:\n{expected}"
    # fields: expected, actual
    reference_hindsight_generic: str = "Correct reply:\n{expected}"
    # added to a rule-based source's hint only with ``quote_action=True``; fields: actual
    quoted_action: str = "Your action was: {actual}"
    # fields: state, candidates
    anchor: str = ("From this same state, attempts of this task tried these actions:\n{candidates}\n"
                   "Prefer the actions that led to success.")
    # fields: action, tried, successes, mean, best, worst
    anchor_candidate: str = ("- {action!r}: tried {tried}x, {successes} succeeded, return mean {mean:.3g}, "
                             "best {best:.3g}, worst {worst:.3g}")

    # ---------------------------------------------------------------- teacher context
    # HINT-SD and dense SD: the user turn appended to the student's context (HINT-SD's reference
    # wording); fields: hint
    teacher_hint: str = "Consider the following feedback to solve this step:\n\n{hint}"
    # SERL: the last user message rewritten (``recipe/serl/privileged_context.py``'s template);
    # fields: prompt (that message's text), privileged_context (the feedback)
    teacher_privileged: str = "{prompt}\n\n{privileged_context}\n\nCorrectly solve the current task.\n"

    def replace(self, **changes: str) -> "Prompts":
        """A copy with some templates changed, each checked as ``from_overrides`` checks it."""
        check_templates(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_overrides(cls, overrides: Mapping[str, Any] | None = None, base: "Prompts | None" = None) -> "Prompts":
        """The default wording (or ``base``) with ``overrides`` ({field: template}) applied, checked."""
        overrides = dict(overrides or {})
        check_templates(overrides)
        return dataclasses.replace(base or PROMPTS, **overrides)

    def changed(self) -> dict[str, str]:
        """The templates that differ from the built-in wording."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(PROMPTS, f.name)}

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


# The fields each template receives, and a sample value of each field's type (used to try a template).
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "trajectory_task": ("task",), "trajectory_step": ("number", "action", "output", "reward", "terminated"),
    "trajectory_outcome": ("reward", "success"), "trajectory_elided": ("dropped",),
    "hindsight_system": (), "hindsight_multi": ("transcript", "max_failures", "num_steps"),
    "hindsight_single": ("transcript", "num_steps"), "judge_system": (), "judge_instruction": ("transcript",),
    "immediate": ("text",), "immediate_error": ("text",), "next_observation": ("text",),
    "future_trajectory": ("text",), "successful_sibling": ("text", "reward"), "reference": ("text",),
    "reference_hindsight_wrong": ("turn", "expected", "actual"),
    "reference_hindsight_missing": ("turn", "expected", "actual"),
    "reference_hindsight_generic": ("expected", "actual"), "quoted_action": ("actual",),
    "anchor": ("state", "candidates"), "anchor_candidate": ("action", "tried", "successes", "mean", "best", "worst"),
    "teacher_hint": ("hint",), "teacher_privileged": ("prompt", "privileged_context"),
}
_SAMPLE: dict[str, Any] = {"number": 1, "reward": 0.5, "terminated": False, "success": False, "dropped": 10,
                           "max_failures": 3, "num_steps": 4, "tried": 2, "successes": 1, "mean": 0.5, "best": 1.0,
                           "worst": 0.0, "turn": 0}


def check_templates(templates: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first problem: an unknown prompt name (with a did-you-mean), a
    template that is not a string, or a ``{field}`` / format spec the template cannot be given."""
    for name, template in templates.items():
        if name not in TEMPLATE_FIELDS:
            near = suggest(name, TEMPLATE_FIELDS) or f"; the prompts are {sorted(TEMPLATE_FIELDS)}"
            raise ValueError(f"unknown prompt {name!r}{near}")
        if not isinstance(template, str):
            raise ValueError(f"prompt {name}: a template must be a string, got {type(template).__name__} {template!r}")
        allowed = TEMPLATE_FIELDS[name]
        receives = ", ".join("{" + f + "}" for f in allowed) or "no fields (write {{ and }} for braces)"
        try:
            used = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
        except ValueError as exc:
            raise ValueError(f"prompt {name}: not a str.format template ({exc}); it receives {receives}") from None
        for field in used:
            root = field.split(".")[0].split("[")[0]
            if root not in allowed:
                shown = "{" + field + "}" if field else "{} (a positional field)"
                raise ValueError(f"prompt {name}: {shown} is not a field of this template; it receives {receives}")
        try:
            template.format(**{f: _SAMPLE.get(f, "text") for f in allowed})
        except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
            raise ValueError(f"prompt {name}: the template does not format ({type(exc).__name__}: {exc}); "
                             f"it receives {receives}") from None


PROMPTS = Prompts()
