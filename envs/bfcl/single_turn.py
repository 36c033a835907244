"""``agentgym/BFCLSingleTurn-v0``: BFCL's single-turn categories as one-step episodes, graded by the
official AST checker.

Relevance categories follow the official runner: ``irrelevance`` / ``live_irrelevance`` succeed
when the reply decodes to no call, ``live_relevance`` when it decodes to at least one call. As in
the official decoder, only keyword arguments count (a positional argument is reported as an error
and ignored).

>>> import gymnasium as gym, agentgym
>>> env = gym.make("agentgym/BFCLSingleTurn-v0", category="simple_python")
>>> obs, info = env.reset(options={"task_id": "simple_python_0"})
>>> env.step("calculate_triangle_area(base=10, height=5)")[1:3]
(1.0, True)
"""

from __future__ import annotations

import functools
import json
import sys
import types
import uuid
from typing import Any, Iterable

from agentgym.envspec import EnvDefaults
from agentgym.evaluation import category_accuracy
from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.parsing import AutoToolCallParser, ToolCallParser
from agentgym.types import Feedback, FeedbackKind, Message

from agentgym.envs.bfcl.data import (FILE_PREFIX, SINGLE_TURN_CATEGORIES, _read_jsonl, data_root,
                                     tool_schema)

SYSTEM_PROMPT = (
    "You answer the user's request by calling the available functions. Reply with only a Python "
    "list of calls, for example [func_a(arg1='value', arg2=2)], or with JSON tool calls. If no "
    "function fits the request, reply in plain text without any call."
)
RELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance", "live_relevance")


@functools.lru_cache(maxsize=None)
def load_single_turn(category: str) -> tuple[dict[str, Any], ...]:
    """Entries of one single-turn category, each with its ``ground_truth`` (None for relevance)."""
    if category not in SINGLE_TURN_CATEGORIES:
        raise ValueError(f"unknown BFCL single-turn category {category!r}; choose from {SINGLE_TURN_CATEGORIES}")
    questions = _read_jsonl(data_root() / f"{FILE_PREFIX}{category}.json")
    answers_path = data_root() / "possible_answer" / f"{FILE_PREFIX}{category}.json"
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(answers_path)} if answers_path.exists() else {}
    return tuple({**q, "ground_truth": answers.get(q["id"])} for q in questions)


def _ast_checker():
    """The official AST checker. Its module imports the leaderboard's model table, which imports
    every vendor SDK; when those are absent, a table answering "no name rewriting" stands in (the
    only thing the checker reads from it)."""
    try:
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    except ImportError:
        table = types.ModuleType("bfcl_eval.constants.model_config")
        table.MODEL_CONFIG_MAPPING = _NoRewrite()
        sys.modules["bfcl_eval.constants.model_config"] = table
        sys.modules.pop("bfcl_eval.eval_checker.ast_eval.ast_checker", None)
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    return ast_checker


class _NoRewrite(dict):
    def __missing__(self, key: str) -> Any:
        return types.SimpleNamespace(underscore_to_dot=False)


def grade_single_turn(entry: dict[str, Any], calls: list[dict[str, dict[str, Any]]], category: str) -> dict[str, Any]:
    """Official verdict for decoded ``[{name: {arg: value}}]`` calls of one entry."""
    if category in RELEVANCE_CATEGORIES:
        has_call = bool(calls)
        valid = has_call if category == "live_relevance" else not has_call
        return {"valid": valid, "error_type": None if valid else f"relevance:{category}",
                "error_message": None if valid else ("expected a function call" if category == "live_relevance"
                                                     else "expected no function call")}
    from bfcl_eval.constants.enums import Language

    try:
        result = _ast_checker()(entry["function"], calls, entry["ground_truth"], Language.PYTHON, category,
                                f"agentgym-{uuid.uuid4().hex[:8]}")
    except Exception as exc:  # the checker indexes into model output; malformed output is a failure
        result = {"valid": False, "error_type": "ast_checker:error", "error": [f"{type(exc).__name__}: {exc}"]}
    errors = result.get("error") or []
    return {"valid": bool(result.get("valid")), "error_type": result.get("error_type"),
            "error_message": "; ".join(map(str, errors)) if isinstance(errors, list) else str(errors)}


def reference_call(ground_truth: Any) -> str | None:
    """One acceptable answer of a single-turn entry as a Python call list: each parameter takes its
    first acceptable value, and a parameter whose only acceptable value is "" (may be omitted) is
    left out. None for a shape it does not know (relevance entries have no ground truth).

    >>> reference_call([{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}])
    "[calculate_triangle_area(base=10, height=5, unit='units')]"
    >>> reference_call([{"math.hypot": {"x": [4], "y": [5], "z": ["", 0]}}])
    '[math.hypot(x=4, y=5, z=0)]'
    """
    if not isinstance(ground_truth, list) or not ground_truth:
        return None
    calls = []
    for call in ground_truth:
        if not isinstance(call, dict) or len(call) != 1:
            return None
        [(name, params)] = call.items()
        if not isinstance(params, dict):
            return None
        args = []
        for key, values in params.items():
            if not isinstance(values, list):
                return None
            given = [v for v in values if v != ""]
            if given:
                args.append(f"{key}={given[0]!r}")
            elif "" not in values:
                return None
        calls.append(f"{name}({', '.join(args)})")
    return "[" + ", ".join(calls) + "]"


class BFCLSingleTurnEnv(AgentEnv):
    """One BFCL single-turn entry per episode; one step; reward 1.0 when the official checker agrees.

    Args:
        category: one of ``SINGLE_TURN_CATEGORIES`` or a list of them.
        parser: raw text -> calls (default: Python call lists and JSON tool calls).
    """

    # One category pool: evaluation tasks are held out of it. Headline: BFCL's AST accuracy (%) per category.
    defaults = EnvDefaults(max_steps=1, max_new_tokens=256, category_field="category",
                           headline=lambda rows: category_accuracy(rows, "accuracy"),
                           reference_action=lambda payload: payload.get("reference_action"))

    def tasks(self) -> list[dict[str, Any]]:
        return [{"task_id": t} for t in self.ids]

    def __init__(self, category: str | Iterable[str] = "simple_python", *, parser: ToolCallParser | None = None,
                 system_prompt: str = SYSTEM_PROMPT, render_mode: str | None = None,
                 step_timeout_s: float | None | str = "default"):
        super().__init__(max_steps=1, render_mode=render_mode, step_timeout_s=step_timeout_s)
        self.categories = [category] if isinstance(category, str) else list(category)
        self.entries = {e["id"]: (c, e) for c in self.categories for e in load_single_turn(c)}
        self.ids = list(self.entries)
        self.parser = parser or AutoToolCallParser()
        self.system_prompt = system_prompt

    def _reset(self, options: dict[str, Any]) -> EnvReset:
        task_id = options.get("task_id") or self.ids[int(self.np_random.integers(len(self.ids)))]
        if task_id not in self.entries:
            raise KeyError(f"no entry {task_id!r} in categories {self.categories}")
        self.category, self.entry = self.entries[task_id]
        turn = self.entry["question"][0]
        messages = [Message(role="system", content=self.system_prompt)]
        messages += [Message(role=m["role"], content=m["content"]) for m in turn]
        return EnvReset(messages=messages, tools=[tool_schema(d) for d in self.entry["function"]],
                        task={"id": task_id, "category": self.category})

    def _step(self, action: str) -> EnvReply:
        parsed = self.parser(action)
        feedback = [Feedback(kind=FeedbackKind.ERROR, step=0, text=e, payload={"type": "parse_error"})
                    for e in parsed.errors]
        calls = []
        for call in parsed.calls:
            positional = [k for k in call.arguments if k.startswith("$")]
            if positional:
                feedback.append(Feedback(kind=FeedbackKind.ERROR, step=0,
                                         text=f"{call.name}: positional arguments are ignored; use keywords",
                                         payload={"type": "positional_arguments", "call": call.name}))
            calls.append({call.name: {k: v for k, v in call.arguments.items() if not k.startswith("$")}})
        if parsed.errors and self.category not in RELEVANCE_CATEGORIES:
            calls = []  # the official decoder fails the whole reply on any undecodable part
        verdict = grade_single_turn(self.entry, calls, self.category)
        if self.entry.get("ground_truth") is not None:
            reference = {"ground_truth": self.entry["ground_truth"]}
            call = reference_call(self.entry["ground_truth"])
            if call is not None:  # one acceptable answer, as the call list a reply is written in
                reference["reference_action"] = call
            feedback.append(Feedback(kind=FeedbackKind.REFERENCE, step=0,
                                     text="Acceptable answers: " + json.dumps(self.entry["ground_truth"]),
                                     payload=reference))
        feedback.append(Feedback(kind=FeedbackKind.OUTCOME, step=0,
                                 text="correct" if verdict["valid"] else f"incorrect: {verdict['error_message']}",
                                 payload={"verdict": verdict}))
        return EnvReply(messages=[], reward=1.0 if verdict["valid"] else 0.0, terminated=True,
                        feedback=feedback, info={"verdict": verdict, "success": verdict["valid"]})
