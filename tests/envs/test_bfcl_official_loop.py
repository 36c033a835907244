"""BFCL multi-turn against bfcl-eval's OWN inference loop: same scripted replies, same verdict.

``ScriptedHandler`` subclasses bfcl-eval's ``OSSHandler`` (the handler family whose decoders are
bfcl-eval's defaults, ``default_decode_execute_prompting``) and overrides only ``_query_prompting``,
the model query: it returns the next scripted reply instead of calling a server. Everything else is
bfcl-eval's code: ``BaseHandler.inference_multi_turn_prompting`` (turns, the 20-step force-quit,
decode failures ending a turn, held-out functions), its executor, and the evaluation in
``eval_runner._evaluate_single_multi_turn_entry`` (the force-terminated check, per-step decoding,
``multi_turn_checker``), which is read from bfcl-eval's source file and run as is (importing
``eval_runner`` would import every vendor SDK). The same replies drive ``BFCLMultiTurn-v0``; each
case asserts the two verdicts agree, that both loops consumed the same replies, and the official
verdict itself (so a case cannot pass by both sides breaking the same way).

The pinned wheel is installed without its dependencies: when ``tree_sitter`` (Java/JS decoding
only) or ``overrides`` (decorators that only check subclasses) are missing they are stubbed, which
changes nothing on the Python decoding path. No network, no model; only scripted text is executed
by bfcl-eval's own executor.
"""

from __future__ import annotations

import ast
import copy
import re
import sys
import types
import uuid
from pathlib import Path

import pytest

import agentgym  # noqa: F401  (registers the envs)
from agentgym.envs.bfcl import bfcl_package_root
from agentgym.envs.bfcl.data import MULTI_TURN_CATEGORIES, function_docs, get_entry
from agentgym.envs.bfcl.multi_turn import BFCLMultiTurnEnv

DONE = "Done."  # prose: ends the turn in both loops; also what an exhausted script answers


def _install_missing_dependency_stubs() -> None:
    try:
        import tree_sitter  # noqa: F401
    except ImportError:
        for name, func in (("java_parser", "parse_java_function_call"), ("js_parser", "parse_javascript_function_call")):
            module = types.ModuleType(f"bfcl_eval.model_handler.parser.{name}")

            def unavailable(*args, **kwargs):
                raise NotImplementedError("tree-sitter is not installed (Java/JS decoding only)")

            setattr(module, func, unavailable)
            sys.modules.setdefault(module.__name__, module)
    try:
        import overrides  # noqa: F401
    except ImportError:
        module = types.ModuleType("overrides")
        module.final = module.override = lambda func: func
        module.EnforceOverrides = type("EnforceOverrides", (), {})
        sys.modules.setdefault("overrides", module)


_install_missing_dependency_stubs()
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils  # noqa: E402
from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker  # noqa: E402
from bfcl_eval.model_handler.base_handler import BaseHandler  # noqa: E402
from bfcl_eval.model_handler.local_inference.base_oss_handler import OSSHandler  # noqa: E402


def _official_function(relative_path: str, name: str, namespace: dict):
    """One top-level function of bfcl-eval, compiled from its own source file (bfcl-eval's code, not
    model text), with ``namespace`` as its globals."""
    path = bfcl_package_root() / relative_path
    tree = ast.parse(path.read_text(encoding="utf-8"))
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    module = ast.Module(body=[node], type_ignores=[])
    exec(compile(module, str(path), "exec"), namespace)  # noqa: S102 - bfcl-eval's own source
    return namespace[name]


evaluate_single_multi_turn_entry = _official_function(
    "eval_checker/eval_runner.py", "_evaluate_single_multi_turn_entry",
    {"BaseHandler": BaseHandler, "multi_turn_checker": multi_turn_checker,
     "is_empty_execute_response": multi_turn_utils.is_empty_execute_response})


class Script:
    """Replies handed out in order; past the end, plain text (which ends a turn)."""

    def __init__(self, replies: list[str]):
        self.replies = list(replies)
        self.used = 0

    def next(self) -> str:
        reply = self.replies[self.used] if self.used < len(self.replies) else DONE
        self.used += 1
        return reply


class ScriptedHandler(OSSHandler):
    """bfcl-eval's OSS handler whose model query returns scripted replies (no server, no model)."""

    def __init__(self, script: Script):
        super().__init__(model_name=f"scripted-{uuid.uuid4().hex}", temperature=0.0,
                         registry_name="scripted", is_fc_model=False)
        self.script = script

    def _query_prompting(self, inference_data: dict):
        text = self.script.next()
        response = types.SimpleNamespace(choices=[types.SimpleNamespace(text=text)],
                                         usage=types.SimpleNamespace(prompt_tokens=0, completion_tokens=0))
        return response, 0.0


def _official_test_entry(entry) -> dict:
    raw = copy.deepcopy(entry.raw)
    raw["function"] = [copy.deepcopy(d) for c in entry.involved_classes for d in function_docs(c)]
    return raw


def official_run(entry_id: str, replies: list[str]) -> tuple[bool, int, dict]:
    """bfcl-eval's inference loop on the scripted replies, then its evaluation: (valid, replies used, result)."""
    entry = get_entry(entry_id)
    script = Script(replies)
    handler = ScriptedHandler(script)
    prefix = re.sub(r"[-./:]", "_", handler.model_name_underline_replaced)
    try:
        model_result, _ = handler.inference(_official_test_entry(entry), include_input_log=False,
                                            exclude_state_log=True)
        result = evaluate_single_multi_turn_entry(
            handler, entry.id, model_result, entry.ground_truth, _official_test_entry(entry),
            handler.model_name_underline_replaced, f"multi_turn_{entry.category}")
    finally:
        for key in [k for k in vars(multi_turn_utils) if k.startswith(prefix)]:
            delattr(multi_turn_utils, key)
    return bool(result["valid"]), script.used, result


def agentgym_run(entry_id: str, replies: list[str], **kwargs) -> tuple[bool, int, dict]:
    """BFCLMultiTurn-v0 on the same replies: (valid, replies used, last info)."""
    env = BFCLMultiTurnEnv(category=MULTI_TURN_CATEGORIES, split="all", **kwargs)
    env.reset(options={"task_id": entry_id})
    script = Script(replies)
    while True:
        obs, reward, terminated, truncated, info = env.step(script.next())
        if terminated or truncated:
            return reward == 1.0 and terminated, script.used, info


def calls(*texts: str) -> str:
    return "[" + ", ".join(texts) + "]"


def answer_turns(turns: list[list[str]]) -> list[str]:
    """Each turn answered by its calls in one reply, then plain text."""
    out = []
    for turn in turns:
        if turn:
            out.append(calls(*turn))
        out.append(DONE)
    return out


BASE_4 = get_entry("multi_turn_base_4")  # ls(a=True) | sort(file_name=...) | post_tweet(...)
BASE_102 = get_entry("multi_turn_base_102")  # place_order(symbol='TSLA'...) | get_order_details(order_id=12446) | ...


def _last_turn_force_quit() -> list[str]:
    *head, last = BASE_4.ground_truth
    return answer_turns(head) + [calls(*last)] + ["[pwd()]"] * 20  # 21 steps in the last turn


def _first_turn_force_quit() -> list[str]:
    first, *rest = BASE_4.ground_truth
    return [calls(*first)] + ["[pwd()]"] * 20 + answer_turns(rest)


def _102(turn0: str | None = None, turn1: str | None = None, turn2: str | None = None) -> list[str]:
    """BASE_102's ground truth with some turns' replies replaced."""
    replies = []
    for t, (truth, override) in enumerate(zip(BASE_102.ground_truth, (turn0, turn1, turn2, None, None))):
        replies += [override if override is not None else calls(*truth), DONE]
    return replies


def _4(turn0: str) -> list[str]:
    return [turn0, DONE] + answer_turns(BASE_4.ground_truth[1:])


PLACE = "place_order(order_type='Buy',symbol='TSLA',price=700,amount=100)"

# case -> (entry, replies, official verdict)
CASES = {
    "ground_truth": ("multi_turn_base_4", answer_turns(BASE_4.ground_truth), True),
    # force-quit (21 steps) in the LAST turn: every turn is present, the entry is graded
    "force_quit_in_last_turn": ("multi_turn_base_4", _last_turn_force_quit(), True),
    # force-quit before the last turn: the entry fails (force_terminated)
    "force_quit_in_first_turn": ("multi_turn_base_4", _first_turn_force_quit(), False),
    # one undecodable call among good ones: the whole reply fails, the turn ends with no call
    "one_undecodable_call": ("multi_turn_base_102", _102(turn0=calls(PLACE, "get_account_info(x=os.sep)")), False),
    "undecodable_call_then_retry": ("multi_turn_base_102",
                                    [calls(PLACE, "get_account_info(x=os.sep)")] + _102()[0:], False),
    # bare names are strings
    "bare_name_symbol": ("multi_turn_base_102",
                         _102(turn0="[place_order(order_type=Buy, symbol=TSLA, price=700, amount=100)]"), True),
    "bare_name_true": ("multi_turn_base_4", _4("[ls(a=true)]"), True),
    # arithmetic of literals is computed
    "arithmetic": ("multi_turn_base_102", _102(turn1="[get_order_details(order_id=6223*2)]",
                                               turn2="[cancel_order(order_id=12446 + 0 * 7)]"), True),
    "arithmetic_wrong_value": ("multi_turn_base_102", _102(turn1="[get_order_details(order_id=6223*3)]"), False),
    # bfcl-eval negates any unary operator on a literal: price=+700 places an order at -700
    "unary_plus_quirk": ("multi_turn_base_102", _102(turn0=f"[{PLACE.replace('price=700', 'price=+700')}]"), False),
    # a fence with a language tag is not a call; one without a tag is
    "fence_with_language_tag": ("multi_turn_base_4", _4("```python\n[ls(a=True)]\n```"), False),
    "fence_without_tag": ("multi_turn_base_4", _4("```\n[ls(a=True)]\n```"), True),
    # an empty dict fails bfcl-eval's decoder (parse_nested_value), so the reply has no call
    "empty_dict_argument": ("multi_turn_base_4", _4("[ls(a=True, b={})]"), False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_verdict_as_bfcl_eval_inference_loop(case):
    entry_id, replies, expected = CASES[case]
    official_valid, official_used, result = official_run(entry_id, replies)
    ours_valid, ours_used, info = agentgym_run(entry_id, replies)
    assert official_valid is expected, result.get("error")
    assert ours_valid == official_valid, (info.get("verdict"), result.get("error"))
    assert ours_used == official_used
    if not official_valid and "error" in result:  # the same kind of failure
        assert info["verdict"]["error_type"] == result["error"]["error_type"]


def test_force_quit_in_the_last_turn_is_graded():
    valid, used, info = agentgym_run("multi_turn_base_4", _last_turn_force_quit())
    assert valid and info["turn_end_reason"] == "force_quit" and info["success"]
    valid, used, info = agentgym_run("multi_turn_base_4", _first_turn_force_quit())
    assert not valid and info["verdict"]["error_type"] == "multi_turn:force_terminated"


@pytest.mark.parametrize("case", ["one_undecodable_call", "bare_name_symbol", "arithmetic", "fence_with_language_tag"])
def test_lenient_decoding_is_an_explicit_option_that_disagrees(case):
    """``decoding="lenient"`` keeps agentgym's forgiving parser (for training): on these replies its
    verdict differs from bfcl-eval's, which is why it is not the default."""
    entry_id, replies, expected = CASES[case]
    assert agentgym_run(entry_id, replies, decoding="lenient")[0] != expected
    assert agentgym_run(entry_id, replies)[0] == expected


def test_decoding_setting_is_validated():
    with pytest.raises(ValueError, match="decoding must be one of"):
        BFCLMultiTurnEnv(split="all", decoding="strict")
    assert BFCLMultiTurnEnv(split="all").decoding == "official"


def test_bfcl_eval_decoder_and_ours_read_the_same_values():
    """The argument values bfcl-eval's default decoder produces, and ours, on the listed behaviours."""
    from bfcl_eval.model_handler.utils import default_decode_execute_prompting

    import agentgym.envs.bfcl.decoder  # noqa: F401 - registers decoding="official"
    from agentgym.parsing import AutoToolCallParser

    parse = AutoToolCallParser(decoding="official")
    agree = ["get_stock_info(symbol=AAPL)", "ls(a=true)", "cancel_order(order_id=6223*2)",
             "f(a=-3, b=+3, c=2**10, d='ab'*3, e=[1]+[2], f=7//2, g=7/2, h=1<<4, i=(1+2)*3)",
             "f(a=g(1), b=x[0], c=..., d={'k': [1, {'j': 2}]}, e=[g(x=1)])",
             "```\n[ls(), pwd()]\n```"]
    for text in agree:
        (official,) = [default_decode_execute_prompting(text)]
        ours = [f"{c.name}({', '.join(f'{k}={v!r}' for k, v in c.arguments.items())})" for c in parse(text).calls]
        assert ours == official, text
    fail = ["[ls(), cd(folder=os.sep)]", "```python\n[ls()]\n```", "f(a={})", "f(a=lambda: 1)", "f(a=1/0)",
            "f(a=-(-1))", "f(a={1, 2})", "f(a=f'{x}')", "[ls(), 'text']"]
    for text in fail:
        with pytest.raises(Exception):
            default_decode_execute_prompting(text)
        assert parse(text).calls == [], text
