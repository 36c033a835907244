"""Where a trajectory first departs from the benchmark's reference (its ``kind=reference`` feedback).

Each env exposes its ground truth differently, so the rule is chosen by the shape of the reference
payload, through the ``DIVERGENCE_RULES`` registry (first rule whose ``applies`` is true wins):

- ``bfcl``: payload ``{"turn", "ground_truth": [call strings], "calls": [{"name", "arguments"}]}``
  (``calls``, when present, names positional ground-truth arguments). Within each turn, a call that
  matches none of the turn's not-yet-made ground-truth calls (name and arguments equal) diverges;
  so does ending the turn (a step without calls) while ground-truth calls remain. With
  ``ordered=True`` calls must also come in the ground truth's order.
- ``webshop``: payload ``{"path", "path_from_start"}`` (shortest path to the target from the page
  after the step): a step after which the path did not get shorter diverges.
- ``next_command``: payload ``{"next_command"}`` (ALFWorld's expert): an action other than the
  expert's next command from the previous state diverges.

>>> from agentgym.types import Feedback, Step, Trajectory
>>> ref = lambda turn, gt: Feedback(kind="reference", step=0, payload={"turn": turn, "ground_truth": gt})
>>> steps = [Step(index=0, action_text="[ls()]", info={"calls": [{"name": "ls", "arguments": {}}]},
...               feedback=[ref(0, ["ls()", "cd(folder='a')"])]),
...          Step(index=1, action_text="[cd(folder='b')]", info={"calls": [{"name": "cd", "arguments": {"folder": "b"}}]},
...               feedback=[ref(0, ["ls()", "cd(folder='a')"])])]
>>> first_divergence(Trajectory(task_id="t", steps=steps)).step
1
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

from agentgym.feedback.prompts import PROMPTS
from agentgym.parsing import AutoToolCallParser, PythonCallParser
from agentgym.types import FeedbackKind, Step, Trajectory

__all__ = ["Divergence", "DivergenceRule", "DIVERGENCE_RULES", "first_divergence", "describe_divergence",
           "reference_of", "step_calls"]


@dataclass(frozen=True)
class Divergence:
    step: int
    expected: str
    actual: str
    rule: str
    detail: dict[str, Any] = field(default_factory=dict)


def reference_of(step: Step):
    """The env's last reference feedback of ``step`` (None if it has none)."""
    refs = [f for f in step.feedback if f.kind is FeedbackKind.REFERENCE]
    return refs[-1] if refs else None


def _norm(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


@lru_cache(maxsize=4096)
def _parse_truth(call: str) -> tuple[str, str] | None:
    parsed = PythonCallParser()(call)
    if len(parsed.calls) != 1:
        return None
    c = parsed.calls[0]
    return c.name, _norm(c.arguments)


_AUTO = AutoToolCallParser()


def step_calls(step: Step) -> list[tuple[str, str]]:
    """(name, normalised arguments) of the calls a step made: what the env recorded in
    ``info["calls"]``, else what the action text decodes to."""
    calls = step.info.get("calls")
    if isinstance(calls, list):
        out = []
        for c in calls:
            if isinstance(c, dict) and isinstance(c.get("name"), str):
                out.append((c["name"], _norm(c.get("arguments") or {})))
        return out
    return [(c.name, _norm(c.arguments)) for c in _AUTO(step.action_text).calls]


def _show(calls: list[tuple[str, str]]) -> str:
    """Calls as the Python call list a BFCL reply is written in: ``[cd(folder='a'), ls()]``."""
    if not calls:
        return "(no call)"
    return "[" + ", ".join(f"{n}({', '.join(f'{k}={v!r}' for k, v in json.loads(a).items())})" for n, a in calls) + "]"


class DivergenceRule:
    name = "base"

    def applies(self, payload: dict[str, Any]) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def find(self, trajectory: Trajectory) -> Divergence | None:  # pragma: no cover - interface
        raise NotImplementedError


class BFCLRule(DivergenceRule):
    name = "bfcl"

    def __init__(self, ordered: bool = False):
        self.ordered = ordered

    def applies(self, payload):
        return isinstance(payload.get("ground_truth"), list) and "turn" in payload

    def find(self, trajectory):
        remaining: list[tuple[str, str]] = []
        truth_text: list[str] = []
        turn = None
        for step in trajectory.steps:
            ref = reference_of(step)
            if ref is None or not self.applies(ref.payload):
                continue
            if ref.payload["turn"] != turn:
                turn = ref.payload["turn"]
                truth_text = [str(c) for c in ref.payload["ground_truth"]]
                named = ref.payload.get("calls")  # keyword form (positional arguments named) when the env gives it
                if isinstance(named, list) and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in named):
                    remaining = [(c["name"], _norm(c.get("arguments") or {})) for c in named]
                else:
                    remaining = [p for p in (_parse_truth(c) for c in truth_text) if p is not None]
            calls = step_calls(step)
            if not calls:
                if remaining:  # the turn ended (or the reply did not decode) with work left
                    return Divergence(step.index, _show(remaining), step.action_text[:200] or "(empty)", self.name,
                                      {"turn": turn, "reason": "missing_calls", "ground_truth": truth_text})
                continue
            for call in calls:
                if call in (remaining[:1] if self.ordered else remaining):
                    remaining.remove(call)
                    continue
                return Divergence(step.index, _show(remaining), _show([call]), self.name,
                                  {"turn": turn, "reason": "wrong_call", "ground_truth": truth_text})
        return None


class WebShopRule(DivergenceRule):
    name = "webshop"

    def applies(self, payload):
        return isinstance(payload.get("path"), list) and isinstance(payload.get("path_from_start"), list)

    def find(self, trajectory):
        before: list | None = None
        for step in trajectory.steps:
            ref = reference_of(step)
            if ref is None or not self.applies(ref.payload):
                continue
            if before is None:
                before = ref.payload["path_from_start"]
            after = ref.payload["path"]
            done = step.terminated and step.reward >= 1.0
            if not done and before and len(after) >= len(before):
                return Divergence(step.index, str(before[0]), step.action_text[:200], self.name,
                                  {"path_before": before, "path_after": after})
            before = after
        return None


class NextCommandRule(DivergenceRule):
    name = "next_command"

    def applies(self, payload):
        return "next_command" in payload

    def find(self, trajectory):
        expected = None
        for step in trajectory.steps:
            ref = reference_of(step)
            if ref is None or not self.applies(ref.payload):
                continue
            if step.index == 0 and ref.payload.get("plan_scope") == "episode_start" and ref.payload.get("plan"):
                expected = ref.payload["plan"][0]
            action = " ".join(step.action_text.split()).lower()
            if isinstance(expected, str) and action != " ".join(expected.split()).lower():
                return Divergence(step.index, expected, step.action_text[:200], self.name, {})
            expected = ref.payload.get("next_command")
        return None


class ReferenceActionRule(DivergenceRule):
    """Payload ``{"reference_action"}`` (one acceptable action for the step, e.g. BFCL single-turn's
    call list): the first such step whose reward is below 1 diverges (the env graded it wrong)."""

    name = "reference_action"

    def applies(self, payload):
        return isinstance(payload.get("reference_action"), str)

    def find(self, trajectory):
        for step in trajectory.steps:
            ref = reference_of(step)
            if ref is not None and self.applies(ref.payload) and step.reward < 1.0:
                return Divergence(step.index, ref.payload["reference_action"], step.action_text[:200], self.name, {})
        return None


# Checked in order; the first rule that applies to a trajectory's first reference payload is used.
DIVERGENCE_RULES: dict[str, Callable[[], DivergenceRule]] = {
    "bfcl": BFCLRule,
    "webshop": WebShopRule,
    "next_command": NextCommandRule,
    "reference_action": ReferenceActionRule,
}


def first_divergence(trajectory: Trajectory, rules: dict[str, Callable[[], DivergenceRule]] | None = None,
                     ) -> Divergence | None:
    """The first step that departs from the reference, or None (no reference, or no departure)."""
    payload = next((ref.payload for s in trajectory.steps if (ref := reference_of(s)) is not None), None)
    if payload is None:
        return None
    for make in (rules or DIVERGENCE_RULES).values():
        rule = make()
        if rule.applies(payload):
            return rule.find(trajectory)
    return None


def describe_divergence(div: Divergence, prompts=None) -> str:
    """The correction a reference-based hindsight writes for ``div`` (wording in ``prompts``)."""
    prompts = prompts or PROMPTS
    if div.rule == "bfcl":
        template = (prompts.reference_hindsight_missing if div.detail.get("reason") == "missing_calls"
                    else prompts.reference_hindsight_wrong)
        return template.format(turn=div.detail.get("turn"), expected=div.expected, actual=div.actual)
    return prompts.reference_hindsight_generic.format(expected=div.expected, actual=div.actual)
