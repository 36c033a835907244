"""``agentgym/BFCLMultiTurn-v0``: BFCL v3 multi-turn function calling on the real backends.

An episode is one BFCL entry: several user turns, each answered by as many model steps as the
model needs. The official inference loop (bfcl-eval's ``inference_multi_turn_prompting``) holds: a
reply without a decodable call ends the turn; at most 20 steps per turn (a 21st step force-quits:
before the last turn the entry fails, ``truncated``; in the last turn every turn is present, so the
entry is graded and ``terminated``); functions held out in ``miss_func`` appear at their turn with
a user message saying more functions are available. Replies are decoded as bfcl-eval decodes them
(``decoding="official"``, see ``agentgym.parsing``); ``decoding="lenient"`` is an opt-in for
training. The episode ``terminated`` after the last turn, and the reward is the official checker's
verdict (1.0 valid, 0.0 not), with the verdict in ``info["verdict"]``.

>>> import gymnasium as gym, agentgym
>>> env = gym.make("agentgym/BFCLMultiTurn-v0", split="all")
>>> obs, info = env.reset(options={"task_id": "multi_turn_base_0"})
>>> obs.startswith("Move 'final_report.pdf'")
True
>>> obs, reward, terminated, truncated, info = env.step("[cd(folder='document'), mkdir(dir_name='temp')]")
>>> obs
'{"current_working_directory": "document"}\\nNone'
>>> [f.kind.value for f in info["feedback"]]
['observation', 'observation', 'state_diff', 'reference']
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from agentgym.envspec import EnvDefaults
from agentgym.evaluation import category_accuracy
from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.parsing import DECODINGS, AutoToolCallParser, ToolCallParser
from agentgym.types import Feedback, FeedbackKind, Message, ToolCall

from agentgym.envs.bfcl import decoder as _decoder  # noqa: F401 - registers decoding="official"
from agentgym.envs.bfcl.backends import BackendSet, state_diff
from agentgym.envs.bfcl.data import (DEFAULT_CATEGORIES, function_docs, get_entry, split_ids,
                                     tool_schema, _check_categories)
from agentgym.envs.bfcl.grading import grade_multi_turn

MAX_STEPS_PER_TURN = 20  # bfcl_eval.constants.default_prompts.MAXIMUM_STEP_LIMIT

SYSTEM_PROMPT = (
    "You complete the user's requests by calling the available functions.\n"
    "To call functions, reply with only a Python list of calls, for example "
    "[func_a(arg1='value', arg2=2), func_b()], or with JSON tool calls in <tool_call></tool_call> tags. "
    "Each result comes back as a "
    "tool message. Use as many replies as the request needs. When the request is done, or when no "
    "function fits or a required parameter is missing, reply in plain text without any call."
)
# The official message that reveals held-out functions (FC wording; docs follow when shown in text).
MORE_FUNCTIONS_PROMPT = "I have updated some more functions you can choose from. What about now?"


def reference_call_list(payload: dict[str, Any]) -> str | None:
    """The turn's ground-truth calls as the Python call list BFCL prompts ask for."""
    truth = payload.get("ground_truth")
    return "[" + ", ".join(map(str, truth)) + "]" if isinstance(truth, list) and truth else None


def multi_turn_headline(rows) -> dict[str, float]:
    """BFCL's multi-turn numbers: accuracy (%) per category and their unweighted mean, as the official
    ``calculate_unweighted_accuracy`` forms "Multi Turn Overall Acc" (which counts an unevaluated
    category as 0 and shows N/A: ``categories_evaluated`` says how many of the four were)."""
    per = category_accuracy(rows, "accuracy")
    return {**per, "overall_accuracy": sum(per.values()) / len(per), "categories_evaluated": float(len(per))}


class BFCLMultiTurnEnv(AgentEnv):
    """BFCL v3 multi-turn as a Gymnasium env (see the module docstring).

    Args:
        category: one or several of "base", "miss_func", "miss_param", "long_context".
        split: "train", "eval", "test" (HINT-SD's 50/10/40 split, seed 42) or "all".
        decoding: how replies become calls. "official" (default): bfcl-eval's decoders, so verdicts
            match published numbers (one undecodable call fails the whole reply, bare names are
            strings, arithmetic of literals is computed, a ```python fence is not stripped).
            "lenient": agentgym's forgiving parser (fences stripped, a reply's good calls run even
            when another does not decode, names and arithmetic refused), for training only.
        parser: raw model text -> calls; overrides ``decoding``.
        max_steps_per_turn: the official per-turn limit (20).
        end_turn_on_parse_error: a reply that tries to call but does not decode ends the turn, as in
            the official runner (True); False answers with the parse error and stays in the turn.
        tools_in_prompt: also list the function docs (JSON) in the system prompt, for policies
            whose chat template does not render tools.
        record_state_diff: emit ``state_diff`` feedback (costs a state snapshot per step).
        step_timeout_s: the deadline of one step (``AgentEnv``; default 60 s, None: none).
    """

    # HINT-SD's 50/10/40 split; 20 steps per episode (the paper's BFCL setting); the env itself allows
    # 8 turns of at most MAX_STEPS_PER_TURN steps each (BFCL v3).
    defaults = EnvDefaults(train_kwargs={"split": "train"}, eval_kwargs={"split": "eval"}, max_steps=20,
                           env_max_steps=8 * (MAX_STEPS_PER_TURN + 1),
                           max_new_tokens=256, reference_action=lambda payload: reference_call_list(payload),
                           category_field="category", headline=multi_turn_headline)

    def tasks(self) -> list[dict[str, Any]]:
        return [{"task_id": t} for t in self.task_ids]

    def __init__(self, category: str | Iterable[str] = DEFAULT_CATEGORIES, split: str = "train", *,
                 decoding: str = "official", parser: ToolCallParser | None = None,
                 max_steps_per_turn: int = MAX_STEPS_PER_TURN,
                 end_turn_on_parse_error: bool = True, tools_in_prompt: bool = False,
                 system_prompt: str = SYSTEM_PROMPT, record_state_diff: bool = True,
                 max_steps: int | None = None, render_mode: str | None = None,
                 step_timeout_s: float | None | str = "default"):
        super().__init__(max_steps=max_steps, render_mode=render_mode, step_timeout_s=step_timeout_s)
        self.categories = _check_categories(category)
        self.split = split
        self.task_ids = split_ids(self.categories, split)
        if max_steps_per_turn < 1:
            raise ValueError(f"max_steps_per_turn must be >= 1, got {max_steps_per_turn}")
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        self.decoding = decoding
        self.parser = parser or AutoToolCallParser(decoding=decoding)
        self.max_steps_per_turn = max_steps_per_turn
        self.end_turn_on_parse_error = end_turn_on_parse_error
        self.tools_in_prompt = tools_in_prompt
        self.system_prompt = system_prompt
        self.record_state_diff = record_state_diff
        self.entry = None
        self.backends: BackendSet | None = None

    # ------------------------------------------------------------------ reset
    def _reset(self, options: dict[str, Any]) -> EnvReset:
        task_id = options.get("task_id")
        if task_id is None:
            task_id = self.task_ids[int(self.np_random.integers(len(self.task_ids)))]
        self.entry = entry = get_entry(task_id)
        self.turn = 0
        self.steps_in_turn = 0
        self.decoded: list[list[list[str]]] = [[]]
        self._reference_calls: list[list[dict[str, Any]] | None] = [None] * len(entry.turns)
        held_out = {n for names in entry.missed_functions.values() for n in names}
        docs = [d for c in entry.involved_classes for d in function_docs(c)]
        self._docs = {d["name"]: d for d in docs}
        visible = [d for d in docs if d["name"] not in held_out and d["name"] not in entry.excluded_functions]
        # Excluded functions are refused. Held-out (miss_func) functions stay callable before their
        # reveal, as in the official runner, which only hides them from the prompt: one official
        # ground truth (multi_turn_miss_func_49) calls `tail` a turn before it is revealed.
        self.backends = BackendSet(entry, allowed=set(self._docs) - set(entry.excluded_functions))
        self._state = self.backends.snapshot() if self.record_state_diff else {}
        system = self.system_prompt
        if self.tools_in_prompt:
            system += "\n\nAvailable functions:\n" + json.dumps(visible)
        messages = [Message(role="system", content=system)] + self._turn_messages(0)
        task = {"id": entry.id, "category": entry.category, "num_turns": len(entry.turns),
                "involved_classes": entry.involved_classes, "excluded_functions": entry.excluded_functions}
        return EnvReset(messages=messages, task=task, tools=[tool_schema(d) for d in visible],
                        info={"turn": 0})

    def _turn_messages(self, turn: int) -> list[Message]:
        entry = self.entry
        if turn in entry.missed_functions:
            revealed = [self._docs[n] for n in entry.missed_functions[turn]]
            self.tools = self.tools + [tool_schema(d) for d in revealed]
            text = MORE_FUNCTIONS_PROMPT
            if self.tools_in_prompt:
                text = json.dumps(revealed) + "\n" + text
            return [Message(role="user", content=text)]
        return [Message(role=m["role"], content=m["content"]) for m in entry.turns[turn]]

    # ------------------------------------------------------------------ step
    def _step(self, action: str) -> EnvReply:
        parsed = self.parser(action)
        feedback: list[Feedback] = [Feedback(kind=FeedbackKind.ERROR, step=0, text=e,
                                             payload={"type": "parse_error", "turn": self.turn})
                                    for e in parsed.errors]
        if not parsed.calls:
            failed = parsed.attempted and bool(parsed.errors)  # "[]" is an empty reply, not an error
            if failed and not self.end_turn_on_parse_error:
                text = "Your reply could not be decoded as function calls: " + "; ".join(parsed.errors)
                return self._continue_turn([Message(role="user", content=text)], feedback, [])
            return self._end_turn(feedback, reason="parse_error" if failed else "no_call")
        return self._execute(action, parsed.calls, feedback)

    def _execute(self, action: str, calls: list[ToolCall], feedback: list[Feedback]) -> EnvReply:
        replies, executed, touched = [], [], []
        for i, call in enumerate(calls):
            result = self.backends.call(call)
            call_id = f"call_{self.step_count - 1}_{i}"
            call.id = call_id
            replies.append(Message(role="tool", content=result.text, name=call.name, tool_call_id=call_id))
            payload = {"call": call.name, "arguments": call.arguments, "result": result.text, "turn": self.turn}
            kind = FeedbackKind.ERROR if result.error else FeedbackKind.OBSERVATION
            if result.error:
                payload["type"] = "execution_error"
            feedback.append(Feedback(kind=kind, step=0, text=f"{call.name}: {result.text}", payload=payload))
            if result.arguments is not None:
                call.arguments = result.arguments  # recorded by parameter name, positional mapped
            if result.canonical is not None:
                executed.append(result.canonical)
                if result.class_name not in touched:
                    touched.append(result.class_name)
        if self.record_state_diff and touched:
            after = self.backends.snapshot(touched)
            changes = state_diff({k: self._state[k] for k in touched}, after)
            self._state.update(after)
            if changes:
                text = "; ".join(f"{c['op']} {c['path']}" for c in changes[:10])
                feedback.append(Feedback(kind=FeedbackKind.STATE_DIFF, step=0, text=text,
                                         payload={"changes": changes, "turn": self.turn}))
        # The history pairs each tool message with its call, as OpenAI-style APIs require.
        assistant = Message(role="assistant", content=action, tool_calls=calls)
        return self._continue_turn(replies, feedback, executed, calls=calls, assistant=assistant)

    def _continue_turn(self, replies: list[Message], feedback: list[Feedback], executed: list[str],
                       calls: list[ToolCall] | None = None, assistant: Message | None = None) -> EnvReply:
        if executed:
            self.decoded[self.turn].append(executed)
        feedback.append(self._reference())
        self.steps_in_turn += 1
        info: dict[str, Any] = {"turn": self.turn, "calls": [c.model_dump() for c in calls or []]}
        if self.steps_in_turn > self.max_steps_per_turn:
            if self.turn == len(self.entry.turns) - 1:
                # bfcl-eval breaks out of the loop with every turn recorded, so the entry is graded.
                verdict = grade_multi_turn(self.decoded, self.entry)
                feedback.append(self._outcome(verdict))
                return EnvReply(messages=replies, feedback=feedback, reward=1.0 if verdict["valid"] else 0.0,
                                terminated=True, assistant=assistant,
                                info={**info, "turn_ended": self.turn, "turn_end_reason": "force_quit",
                                      "verdict": verdict, "success": verdict["valid"]})
            verdict = {"valid": False, "error_type": "multi_turn:force_terminated",
                       "error_message": f"more than {self.max_steps_per_turn} steps in turn {self.turn}"}
            feedback.append(self._outcome(verdict))
            return EnvReply(messages=replies, feedback=feedback, truncated=True, assistant=assistant,
                            info={**info, "verdict": verdict})
        if self.step_count >= self.max_steps:  # the base class truncates after this step
            verdict = {"valid": False, "error_type": "multi_turn:force_terminated",
                       "error_message": f"episode step limit {self.max_steps} reached in turn {self.turn}"}
            feedback.append(self._outcome(verdict))
            info["verdict"] = verdict
        return EnvReply(messages=replies, feedback=feedback, info=info, assistant=assistant)

    def _end_turn(self, feedback: list[Feedback], reason: str) -> EnvReply:
        feedback.append(self._reference())
        ended = self.turn
        self.turn += 1
        self.steps_in_turn = 0
        info: dict[str, Any] = {"turn": self.turn, "turn_ended": ended, "turn_end_reason": reason}
        if self.turn >= len(self.entry.turns):
            verdict = grade_multi_turn(self.decoded, self.entry)
            feedback.append(self._outcome(verdict))
            reward = 1.0 if verdict["valid"] else 0.0
            return EnvReply(messages=[], reward=reward, terminated=True, feedback=feedback,
                            info={**info, "verdict": verdict, "success": verdict["valid"]})
        self.decoded.append([])
        return EnvReply(messages=self._turn_messages(self.turn), feedback=feedback,
                        info={**info, "tools_changed": self.turn in self.entry.missed_functions})

    # ------------------------------------------------------------------ feedback helpers
    def _reference(self) -> Feedback:
        truth = self.entry.ground_truth[self.turn]
        if self._reference_calls[self.turn] is None:  # ground-truth calls by parameter name, once per turn
            self._reference_calls[self.turn] = [self.backends.keyword_form(c).model_dump(include={"name", "arguments"})
                                                for text in truth for c in self.parser(text).calls]
        return Feedback(kind=FeedbackKind.REFERENCE, step=0, source="env",
                        text="Ground-truth calls for this turn: " + (", ".join(truth) or "(none: no call fits)"),
                        payload={"turn": self.turn, "ground_truth": list(truth),
                                 "calls": self._reference_calls[self.turn]})

    def _outcome(self, verdict: dict[str, Any]) -> Feedback:
        text = "The task succeeded." if verdict["valid"] else (
            f"The task failed ({verdict.get('error_type')}): {verdict.get('error_message')}")
        return Feedback(kind=FeedbackKind.OUTCOME, step=0, text=text, payload={"verdict": verdict})
