"""Every piece of wording that agentgym's feedback sources put in front of a model or a teacher.

All prompts live here, as fields of one frozen dataclass, so that changing the wording is one line
and never a code change:

>>> from agentgym.feedback.prompts import PROMPTS
>>> mine = PROMPTS.replace(judge_instruction="Say PASS or FAIL, then why, in two sentences.")
>>> mine.judge_instruction.startswith("Say PASS")
True

Give ``prompts=mine`` to any LLM-based source (``LLMJudgeSource(policy, prompts=mine)``).
Templates use ``str.format`` fields; the fields each template receives are listed beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
    reference: str = "Reference solution: {text}"
    # fields: turn, expected, actual
    reference_hindsight_wrong: str = (
        "This step departs from the reference for turn {turn}. The reference calls are: {expected}. "
        "You called: {actual}. Make the reference call next instead.")
    reference_hindsight_missing: str = (
        "You ended turn {turn} too early: the reference still needs {expected}. Make those calls "
        "before answering in plain text.")
    # fields: expected, actual
    reference_hindsight_generic: str = (
        "This step departs from the reference. Expected: {expected}. You did: {actual}.")
    # fields: state, candidates
    anchor: str = ("From this same state, attempts of this task tried these actions:\n{candidates}\n"
                   "Prefer the actions that led to success.")
    # fields: action, tried, successes, mean, best, worst
    anchor_candidate: str = ("- {action!r}: tried {tried}x, {successes} succeeded, return mean {mean:.3g}, "
                             "best {best:.3g}, worst {worst:.3g}")

    # ---------------------------------------------------------------- teacher context
    # The extra user message a distillation teacher gets; fields: hint
    teacher_hint: str = "Here is feedback on how to act at this step. Use it to solve this step:\n{hint}"

    def replace(self, **changes: str) -> "Prompts":
        """A copy with some templates changed (unknown names raise ``TypeError``)."""
        return dataclasses.replace(self, **changes)


PROMPTS = Prompts()
