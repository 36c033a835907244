"""Feedback sources: a finished trajectory (and its group) -> per-step ``Feedback`` records.

Every source is called the same way, ``source(trajectory, group=()) -> list[Feedback]``, and has
``annotate(trajectories) -> list[list[Feedback]]`` for a whole batch (groups are formed from
``group_id``; LLM sources batch their model calls there). Records carry ``source=<name>``, the
``step`` they are about (0-based), the prompt ``text`` and a JSON ``payload``. Counters (calls,
tokens, unparsable answers, ...) accumulate in ``source.stats``.

>>> from agentgym.types import Step, Trajectory, Feedback
>>> t = Trajectory(task_id="t", steps=[
...     Step(index=0, action_text="go north", observation="Nothing happens."),
...     Step(index=1, action_text="take key", observation="You take the key.")])
>>> [(f.step, f.source) for f in NextObservationSource()(t)]
[(0, 'next_observation'), (1, 'next_observation')]

Rule-based: ``immediate``, ``next_observation``, ``future_trajectory``, ``successful_sibling``,
``reference``, ``reference_hindsight``, ``anchor`` (see ``agentgym.feedback.anchors``).
Model-based (take a ``Policy``): ``llm_judge``, ``llm_step_hint`` (dense: one call per step),
``llm_hindsight`` (HINT-SD; ``variant="multi"`` or ``"single"``). The ``FeedbackSource`` interface,
``CombinedSource`` (several, concatenated) and the registry helpers are in ``agentgym.feedback.base``.
Wording: ``agentgym.feedback.prompts``.
"""

from __future__ import annotations

import abc
import re
import warnings
from typing import Any, ClassVar, Sequence

from agentgym.agents.base import SamplingParams
from agentgym.types import Feedback, FeedbackKind, Trajectory

from agentgym.feedback.base import FeedbackSource, groups_of
from agentgym.feedback.parsing import parse_hindsight
from agentgym.feedback.prompts import Prompts
from agentgym.feedback.reference import describe_divergence, first_divergence, reference_of
from agentgym.feedback.render import clip, render_trajectory, step_output, task_text

__all__ = ["ImmediateSource", "NextObservationSource", "FutureTrajectorySource", "SuccessfulSiblingSource",
           "ReferenceSource", "ReferenceHindsightSource", "LLMSource", "LLMJudgeSource", "LLMStepHintSource",
           "LLMHindsightSource"]


# ------------------------------------------------------------------------------ rule-based sources
ACTION_PLACEHOLDER = "[the action]"


def without_action(text: str, action: str) -> str:
    """``text`` with every verbatim copy of ``action`` (stripped; case-insensitive; whole words at
    its ends) replaced by ``[the action]``: evidence without the failed attempt, which a small
    teacher would copy.

    >>> without_action("Wrong: you said 'Pear'.", "pear")
    "Wrong: you said '[the action]'."
    >>> without_action("appear", "pear")
    'appear'
    """
    needle = action.strip()
    if not needle:
        return text
    pattern = (r"(?<!\w)" if needle[0].isalnum() else "") + re.escape(needle) + (r"(?!\w)" if needle[-1].isalnum() else "")
    return re.sub(pattern, ACTION_PLACEHOLDER, text, flags=re.IGNORECASE)


class RuleSource(FeedbackSource):
    """A rule-based source about each step itself. Its hints never quote the step's own action
    back (``without_action``) unless ``quote_action=True``: a teacher shown its failed attempt
    copies it (HINT-SD's hints are corrections, not copies)."""

    def __init__(self, *, quote_action: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.quote_action = bool(quote_action)

    def _unquoted(self, text: str, step: Any) -> str:
        return text if self.quote_action else without_action(text, step.action_text)


class ImmediateSource(RuleSource):
    """The env's direct reply to each action: its errors if any, else its page diff if it has one,
    else its observation (e.g. "Nothing happens.")."""

    name = "immediate"

    def __init__(self, max_chars: int = 2000, **kwargs):
        super().__init__(**kwargs)
        self.max_chars = max_chars

    def __call__(self, trajectory, group=()):
        out = []
        for step in trajectory.steps:
            errors = [f.text for f in step.errors if f.text]
            diffs = [f.text for f in step.feedback if f.kind is FeedbackKind.PAGE_DIFF and f.text]
            if errors:
                text, kind, template = "\n".join(errors), FeedbackKind.ERROR, self.prompts.immediate_error
            elif diffs:
                text, kind, template = "\n".join(diffs), FeedbackKind.PAGE_DIFF, self.prompts.immediate
            else:
                text, kind, template = step_output(step, self.max_chars), FeedbackKind.OBSERVATION, self.prompts.immediate
            text = clip(text, self.max_chars)
            out.append(self._record(kind, step.index, template.format(text=self._unquoted(text, step)), {"reply": text}))
        return out


class NextObservationSource(RuleSource):
    """The full state the env showed after each action."""

    name = "next_observation"

    def __init__(self, max_chars: int = 4000, **kwargs):
        super().__init__(**kwargs)
        self.max_chars = max_chars

    def __call__(self, trajectory, group=()):
        return [self._record(FeedbackKind.OBSERVATION, s.index,
                             self.prompts.next_observation.format(
                                 text=self._unquoted(clip(s.observation or "(no output)", self.max_chars), s)),
                             {"observation": clip(s.observation, self.max_chars)})
                for s in trajectory.steps]


class FutureTrajectorySource(FeedbackSource):
    """For each step, the later actions and replies of the same rollout, nearest first, within
    ``budget`` characters (each reply clipped to ``step_chars``), ending with the outcome."""

    name = "future_trajectory"

    def __init__(self, budget: int = 4000, step_chars: int = 400, **kwargs):
        super().__init__(**kwargs)
        self.budget, self.step_chars = budget, step_chars

    def __call__(self, trajectory, group=()):
        out = []
        outcome = f"Outcome: reward {trajectory.final_reward:g}, solved: {trajectory.success}"
        lines = [f"Step {s.index + 1}: {clip(s.action_text, self.step_chars)!r} -> {step_output(s, self.step_chars)}"
                 for s in trajectory.steps]
        for step in trajectory.steps:
            kept, used, later = [], len(outcome), lines[step.index + 1:]
            for line in later:
                if used + len(line) + 1 > self.budget:
                    kept.append(f"[... {len(later) - len(kept)} later steps omitted]")
                    break
                kept.append(line)
                used += len(line) + 1
            text = "\n".join(kept + [outcome])
            out.append(self._record(FeedbackKind.OBSERVATION, step.index,
                                    self.prompts.future_trajectory.format(text=text),
                                    {"later_steps": len(later), "shown_steps": sum(1 for k in kept if not k.startswith("[..."))}))
        return out


def _is_same(a: Trajectory, b: Trajectory) -> bool:
    if a is b:
        return True
    ea, eb = a.episode or None, b.episode or None
    if ea is not None and eb is not None:
        return ea == eb and a.run_id == b.run_id
    return a == b


class SuccessfulSiblingSource(FeedbackSource):
    """A successful rollout of the same task from the group (never the sample itself): its
    actions, shown at every step. The sibling with the highest reward, then fewest steps, then
    earliest in the group is used; nothing when no sibling succeeded."""

    name = "successful_sibling"

    def __init__(self, budget: int = 4000, step_chars: int = 300, **kwargs):
        super().__init__(**kwargs)
        self.budget, self.step_chars = budget, step_chars

    def __call__(self, trajectory, group=()):
        siblings = [(i, g) for i, g in enumerate(group) if g.success and not _is_same(g, trajectory)
                    and g.task_id == trajectory.task_id]
        if not siblings:
            self.stats["no_sibling"] += 1
            return []
        index, best = min(siblings, key=lambda p: (-p[1].final_reward, len(p[1].steps), p[0]))
        actions = [clip(s.action_text, self.step_chars) for s in best.steps]
        text = clip("\n".join(f"{i + 1}. {a}" for i, a in enumerate(actions)), self.budget)
        body = self.prompts.successful_sibling.format(text=text, reward=best.final_reward)
        payload = {"sibling_index": index, "sibling_episode": best.episode or None,
                   "actions": actions, "reward": best.final_reward}
        return [self._record(FeedbackKind.REFERENCE, s.index, body, payload) for s in trajectory.steps]


class ReferenceSource(RuleSource):
    """The env's own reference feedback of each step (BFCL: the turn's ground-truth calls; WebShop:
    the target and shortest path; ALFWorld: the expert's plan; AppWorld: the solution)."""

    name = "reference"

    def __init__(self, max_chars: int = 4000, **kwargs):
        super().__init__(**kwargs)
        self.max_chars = max_chars

    def __call__(self, trajectory, group=()):
        out = []
        for step in trajectory.steps:
            ref = reference_of(step)
            if ref is not None:
                out.append(self._record(FeedbackKind.REFERENCE, step.index,
                                        self.prompts.reference.format(text=self._unquoted(clip(ref.text, self.max_chars), step)),
                                        dict(ref.payload)))
        return out


class ReferenceHindsightSource(RuleSource):
    """Hindsight without a model: on a failed trajectory, the first step that departs from the
    env's reference gets a correction written from the reference (BFCL: the turn's ground-truth
    calls): what to do there, not what was done (``quote_action=True`` adds ``Prompts.quoted_action``).
    Records are ``kind=hint`` with ``payload["hindsight"] = True`` (what the hindsight selectors read)."""

    name = "reference_hindsight"

    def __call__(self, trajectory, group=()):
        if trajectory.success:
            self.stats["skipped_successful"] += 1
            return []
        div = first_divergence(trajectory)
        if div is None:
            self.stats["no_divergence"] += 1
            return []
        payload = {"hindsight": True, "variant": "reference", "rule": div.rule, "expected": div.expected,
                   "actual": div.actual, "step_number": div.step + 1, **{k: v for k, v in div.detail.items()
                                                                       if k in ("turn", "reason", "ground_truth")}}
        text = describe_divergence(div, self.prompts)
        if self.quote_action:
            text = f"{text} {self.prompts.quoted_action.format(actual=div.actual)}"
        return [self._record(FeedbackKind.HINT, div.step, text, payload)]


# ------------------------------------------------------------------------------ model-based sources
class LLMSource(FeedbackSource):
    """Base of the sources that ask a ``Policy`` (judge / hindsight model). One batched
    ``policy.generate`` call per ``annotate``; a backend failure is counted in
    ``stats["teacher_errors"]`` (and warned about) and yields no feedback, unless ``on_error="raise"``."""

    sampling_defaults: ClassVar[dict[str, Any]] = {"temperature": 0.0, "max_new_tokens": 512}
    needs_policy = True

    def __init__(self, policy: Any, *, sampling: Any = None, budget: int = 12_000, on_error: str = "skip",
                 temperature: float | None = None, max_new_tokens: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if policy is None:
            raise TypeError(f"{type(self).__name__} needs a policy that writes the feedback (policy=...)")
        self.policy = policy
        overrides = {k: v for k, v in (("temperature", temperature), ("max_new_tokens", max_new_tokens)) if v is not None}
        self.sampling = sampling or SamplingParams(**{**self.sampling_defaults, **overrides})
        self.budget, self.on_error = budget, on_error

    def usage(self) -> dict[str, float]:
        st = self.stats
        return {"teacher_calls": float(st["teacher_calls"]),
                "teacher_tokens": float(st["prompt_tokens"] + st["completion_tokens"]),
                "unparsable": float(sum(v for k, v in st.items() if k.startswith("answers_") and k not in
                                        ("answers_ok", "answers_empty"))),
                "empty": float(st["empty_answers"] + st["answers_empty"])}

    # subclasses: which prompts to send for one trajectory, and how to read the answers
    @abc.abstractmethod
    def requests(self, trajectory: Trajectory, group: Sequence[Trajectory]) -> list[tuple[Any, list[dict[str, str]]]]:
        """(key, conversation) pairs to send for this trajectory."""

    @abc.abstractmethod
    def read(self, trajectory: Trajectory, key: Any, answer: str) -> list[Feedback]:
        """Feedback records from one answer."""

    def __call__(self, trajectory, group=()):
        return self.annotate_groups([trajectory], [list(group) or [trajectory]])[0]

    def annotate(self, trajectories):
        return self.annotate_groups(trajectories, groups_of(trajectories))

    def annotate_groups(self, trajectories, groups):
        pending = [(i, key, conv) for i, (t, g) in enumerate(zip(trajectories, groups)) for key, conv in self.requests(t, g)]
        out: list[list[Feedback]] = [[] for _ in trajectories]
        if not pending:
            return out
        self.stats["teacher_calls"] += len(pending)
        self.stats["prompt_chars"] += sum(len(m["content"]) for _, _, conv in pending for m in conv)
        try:
            gens = self.policy.generate([conv for _, _, conv in pending], None, self.sampling)
        except Exception as exc:
            if self.on_error == "raise":
                raise
            self.stats["teacher_errors"] += len(pending)
            warnings.warn(f"{self.name}: the teacher failed on {len(pending)} requests: {type(exc).__name__}: {exc}",
                          RuntimeWarning, stacklevel=2)
            return out
        for (i, key, _), gen in zip(pending, gens, strict=True):
            self.stats["completion_tokens"] += len(gen.token_ids)
            self.stats["prompt_tokens"] += len(gen.prompt_ids)
            out[i].extend(self.read(trajectories[i], key, gen.text if isinstance(gen.text, str) else ""))
        return out

    def _conversation(self, system: str, user: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class LLMJudgeSource(LLMSource):
    """SERL's current-trajectory judge: a 2-4 sentence verdict on the whole rollout (temperature
    0), given as feedback at every step (``payload["scope"] == "trajectory"``)."""

    name = "llm_judge"

    def requests(self, trajectory, group):
        if not trajectory.steps:
            return []
        transcript = render_trajectory(trajectory, budget=self.budget, prompts=self.prompts)
        return [(None, self._conversation(self.prompts.judge_system,
                                          self.prompts.judge_instruction.format(transcript=transcript)))]

    def read(self, trajectory, key, answer):
        verdict = answer.strip()
        if not verdict:
            self.stats["empty_answers"] += 1
            return []
        verdict = clip(verdict, 2000)
        return [self._record(FeedbackKind.HINT, s.index, verdict, {"scope": "trajectory", "verdict": verdict})
                for s in trajectory.steps]


class LLMStepHintSource(LLMSource):
    """Dense per-step feedback (the baseline HINT-SD is compared with): one judge call per step,
    reading the task, the action and the next observation."""

    name = "llm_step_hint"
    step_instruction: ClassVar[str] = ""

    def requests(self, trajectory, group):
        task = task_text(trajectory, 2000)
        out = []
        for s in trajectory.steps:
            user = (f"TASK\n{task}\nAgent action:\n{clip(s.action_text, 2000)}\n"
                    f"Environment output:\n{step_output(s, 2000)}\n"
                    "In at most two sentences, tell the agent how to act better at this step.")
            out.append((s.index, self._conversation(self.prompts.judge_system, user)))
        return out

    def read(self, trajectory, key, answer):
        text = answer.strip()
        if not text:
            self.stats["empty_answers"] += 1
            return []
        return [self._record(FeedbackKind.HINT, key, clip(text, 2000), {"scope": "step"})]


class LLMHindsightSource(LLMSource):
    """HINT-SD's hindsight: for FAILED trajectories only, the rendered transcript (tail kept within
    ``budget`` characters) goes to the hindsight model (temperature 0.6, top-p 0.95, <= 512 new
    tokens), which names problematic steps with one correction each. ``variant="multi"``: up to
    ``k`` steps, earliest first; ``"single"``: the first mistake. Unusable answers yield nothing and
    are counted in ``stats`` (``answers_<status>``, ``answer_problems``)."""

    name = "llm_hindsight"
    sampling_defaults = {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 512}

    def __init__(self, policy: Any, *, variant: str = "multi", k: int = 3, **kwargs):
        super().__init__(policy, **kwargs)
        if variant not in ("multi", "single"):
            raise ValueError(f"variant must be 'multi' or 'single', got {variant!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.variant, self.k = variant, k

    def requests(self, trajectory, group):
        if trajectory.success:
            self.stats["skipped_successful"] += 1
            return []
        if not trajectory.steps:
            self.stats["skipped_empty"] += 1
            return []
        transcript = render_trajectory(trajectory, budget=self.budget, prompts=self.prompts)
        n = len(trajectory.steps)
        user = (self.prompts.hindsight_multi.format(transcript=transcript, max_failures=self.k, num_steps=n)
                if self.variant == "multi" else self.prompts.hindsight_single.format(transcript=transcript, num_steps=n))
        return [(None, self._conversation(self.prompts.hindsight_system, user))]

    def read(self, trajectory, key, answer):
        parsed = parse_hindsight(answer, num_steps=len(trajectory.steps), k=self.k, variant=self.variant)
        self.stats[f"answers_{parsed.status}"] += 1
        self.stats["answer_problems"] += len(parsed.problems)
        return [self._record(FeedbackKind.HINT, step, text,
                             {"hindsight": True, "variant": self.variant, "rank": rank, "step_number": step + 1})
                for rank, (step, text) in enumerate(parsed.items)]
