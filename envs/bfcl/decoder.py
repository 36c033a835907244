"""bfcl-eval's decoders, reproduced without ever evaluating model text: ``decoding="official"`` of the
BFCL environments (a benchmark's decoder lives in its env package; the core parsers in
``agentgym.parsing`` look it up by name, ``register_python_decoder``).

- ``OfficialPythonCallParser``: Python call lists as ``default_decode_execute_prompting`` reads them:
  one call that does not decode fails the whole reply; bare names are strings (``symbol=AAPL`` is
  ``'AAPL'``, ``a=true`` is ``'true'``); arithmetic of literals is computed (``order_id=6223*2`` is
  12446) by ``fold_constant``, which walks the ``ast`` with literal operands only and bounded sizes
  (never ``eval``); a fence with a language tag is not stripped (```` ```python ```` makes the reply
  no call). Replies with ``<tool_call>`` tags follow bfcl-eval's Qwen FC handler
  (``JsonToolCallParser(decoding="official")``).

>>> from agentgym.parsing import AutoToolCallParser
>>> official = AutoToolCallParser(decoding="official")
>>> official("[get_stock_info(symbol=AAPL), cancel_order(order_id=6223*2)]").calls[1].arguments
{'order_id': 12446}
>>> official("[ls(a=True), cd(folder=os.sep)]").calls
[]
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Any

from agentgym.parsing import (MAX_ARGUMENT_DEPTH, MAX_CALLS, ParsedAction, _clip, _looks_like_call, _node_text,
                              _read_call, _safe_repr, _to_json_value, register_python_decoder)
from agentgym.types import ToolCall

__all__ = ["OfficialPythonCallParser", "fold_constant", "MAX_FOLD_BITS", "MAX_FOLD_EXPONENT", "MAX_FOLD_SIZE",
           "MAX_FOLD_NODES"]

# fold_constant (official decoding: arithmetic of literals in arguments) is bounded by these:
MAX_FOLD_NODES = 64  # operands and operators in one expression (BFCL needs 3: 6223*2)
MAX_FOLD_BITS = 1024  # integers inside an expression (the argument itself: MAX_INT_BITS)
MAX_FOLD_EXPONENT = 1024  # |exponent| of ** (and bits of a << shift's result)
MAX_FOLD_SIZE = 10_000  # characters plus items a string or list may reach (e.g. by 'ab' * n)
_TAGGED_FENCE = re.compile(r"\s*```[A-Za-z]")  # anchored, no repetition after the fence: linear


class OfficialPythonCallParser:
    """bfcl-eval's ``default_decode_execute_prompting`` (the decoder behind its published multi-turn
    numbers for prompting models), reproduced on the ``ast`` without ever evaluating the text.

    The reply is stripped of backticks, newlines and spaces at both ends and wrapped in ``[...]``,
    then parsed; every element must be a call, and any problem fails the whole reply (bfcl-eval then
    ends the turn with no call run). Argument values read as bfcl-eval reads them:

    - literals as ``ast`` gives them; a bare name is its text (``symbol=AAPL`` -> ``'AAPL'``,
      ``a=true`` -> ``'true'``); a call without keywords is its source text; ``x[0]`` its text;
    - arithmetic (``6223*2``): bfcl-eval ``eval``s it; here ``fold_constant`` computes it from literal
      operands only, within ``MAX_FOLD_*`` bounds (names, calls, attributes in it: a decode error);
    - a unary operator on a literal is negated, whatever the operator (bfcl-eval's quirk: ``+5`` is -5);
    - ``{}`` fails the reply and a dict whose values are all dicts would become a nested call
      (bfcl-eval renders ``{'f': {'x': 1}}`` as ``f(x=1)``): both are decode errors.

    Deliberate differences: positional arguments are kept (``"$0"``...; bfcl-eval drops them);
    a call on something other than a (dotted) name, ``*args``/``**kwargs``, and values JSON cannot
    hold (bytes, complex, non-finite floats) are decode errors; tuples become lists; the size limits
    of this module apply.
    """

    def __call__(self, text: str) -> ParsedAction:
        stripped = text.strip("`\n ")
        if not stripped:  # bfcl-eval decodes "[]": an empty reply, which ends the turn
            return ParsedAction(attempted=False, syntax="python")
        source = stripped if stripped.startswith("[") else "[" + stripped
        source = source if source.endswith("]") else source + "]"
        source = source.strip().strip("'")
        try:
            calls = self._decode(source)
        except Exception as exc:  # noqa: BLE001 - bfcl-eval fails the reply on any exception
            if not (stripped.startswith(("[", "{")) or _looks_like_call(stripped)):
                return ParsedAction(attempted=False, syntax="python")  # prose: no call
            if isinstance(exc, SyntaxError):
                problem = f"could not parse the function call(s): {exc.msg}"
            elif isinstance(exc, ValueError):
                problem = _clip(str(exc), 300)
            else:
                problem = f"{type(exc).__name__}: {_clip(str(exc), 160)}"
            if _TAGGED_FENCE.match(text):
                problem += "; bfcl-eval's decoder strips backticks but not a fence's language tag"
            return ParsedAction(errors=[problem + " (bfcl-eval's decoder rejects the whole reply, so none "
                                        "of its calls run)"], attempted=True, syntax="python")
        return ParsedAction(calls=calls, attempted=True, syntax="python")

    def _decode(self, source: str) -> list[ToolCall]:
        body = ast.parse(source, mode="eval").body
        if isinstance(body, ast.Call):
            nodes = [body]
        elif isinstance(body, (ast.List, ast.Tuple, ast.Set)):
            nodes = body.elts
        else:
            raise ValueError(f"expected a list of function calls, got {type(body).__name__}: {_node_text(body)}")
        if len(nodes) > MAX_CALLS:
            raise ValueError(f"the reply holds {len(nodes)} calls; the limit is {MAX_CALLS} per reply")
        # (a repeated keyword keeps the last value, as the official decoder's dict does)
        calls = [_read_call(node, _official_argument, refuse_repeats=False) for node in nodes]
        return calls


def _official_argument(node: ast.expr, what: str) -> Any:
    value = _official_value(node, what, 0)
    # bfcl-eval's parse_nested_value renders dicts (and the dicts inside them) before execution.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not item:
                raise ValueError(f"{what}: bfcl-eval's decoder fails on an empty dict ({{}}) argument")
            if all(isinstance(v, dict) for v in item.values()):
                raise ValueError(f"{what}: bfcl-eval's decoder turns a dict of dicts into a nested function "
                                 f"call ({_clip(_safe_repr(item))}); nested calls are not run")
            stack.extend(item.values())
    return _to_json_value(value, what)


def _call_name(func: ast.expr) -> str:
    """bfcl-eval's resolve_ast_call naming: the attribute chain, plus the base if it is a name."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _official_value(node: ast.expr, what: str, depth: int) -> Any:
    """bfcl-eval's resolve_ast_by_type, branch by branch, with fold_constant in place of eval."""
    if depth > MAX_ARGUMENT_DEPTH:
        raise ValueError(f"{what} nests lists/objects more than {MAX_ARGUMENT_DEPTH} levels deep; "
                         f"the limit is {MAX_ARGUMENT_DEPTH}")
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp):  # bfcl-eval: -value.operand.value, whatever the operator
        operand = node.operand
        if not isinstance(operand, ast.Constant) or type(operand.value) not in (int, float, bool, complex):
            raise ValueError(f"{what}: bfcl-eval's decoder reads a unary operator only on a number, "
                             f"got {_node_text(node)}")
        return -operand.value
    if isinstance(node, ast.List):
        return [_official_value(v, what, depth + 1) for v in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError(f"{what}: ** inside a dict is not allowed")
        return {_official_value(k, what, depth + 1): _official_value(v, what, depth + 1)
                for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.BinOp):
        return fold_constant(node, what)
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        if not node.keywords:
            return ast.unparse(node)
        return {_call_name(node.func): {kw.arg: _official_value(kw.value, what, depth + 1) for kw in node.keywords}}
    if isinstance(node, ast.Tuple):
        return tuple(_official_value(v, what, depth + 1) for v in node.elts)
    if isinstance(node, ast.Subscript):
        return ast.unparse(node.value) + "[" + ast.unparse(node.slice) + "]"
    raise ValueError(f"{what}: bfcl-eval's decoder does not read a {type(node).__name__}: {_node_text(node)}")


_FOLD_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
                ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
                ast.Pow: operator.pow, ast.LShift: operator.lshift, ast.RShift: operator.rshift,
                ast.BitOr: operator.or_, ast.BitXor: operator.xor, ast.BitAnd: operator.and_,
                ast.MatMult: operator.matmul}
_FOLD_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert, ast.Not: operator.not_}
_SEQUENCES = (str, list, tuple)


def fold_constant(node: ast.expr, what: str = "the expression") -> Any:
    """The value Python gives an expression of literal operands (``6223*2``, ``'a' + 'b'``,
    ``-1.5 ** 2``), computed on the ``ast``: never ``eval``, no names, calls or attributes.

    Bounded: at most ``MAX_FOLD_NODES`` operands and operators, integers of at most ``MAX_FOLD_BITS``
    bits, exponents of at most ``MAX_FOLD_EXPONENT``, strings and lists of at most ``MAX_FOLD_SIZE``
    characters plus items; a size is checked before the operation that would produce it. Anything
    else, and what Python itself refuses (``1/0``, ``'a' - 1``), raises ``ValueError``.

    >>> fold_constant(ast.parse("6223*2 - 2**3", mode="eval").body)
    12438
    >>> fold_constant(ast.parse("10**10**10", mode="eval").body)
    Traceback (most recent call last):
    ...
    ValueError: the expression: 10 ** 10 ** 10 has an exponent beyond the limit of 1024
    """
    budget = [MAX_FOLD_NODES]
    try:
        return _fold(node, what, budget)
    except (TypeError, ZeroDivisionError, OverflowError, ArithmeticError) as exc:
        raise ValueError(f"{what}: {_node_text(node)} does not compute ({type(exc).__name__}: "
                         f"{_clip(str(exc), 120)})") from None
    except RecursionError:
        raise ValueError(f"{what}: {_node_text(node)} nests too deep") from None


def _fold(node: ast.expr, what: str, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"{what}: an expression of more than {MAX_FOLD_NODES} operands and operators; "
                         f"the limit is {MAX_FOLD_NODES}")
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (bool, float)):
            return value
        if isinstance(value, int):
            return _fold_checked(value, what, node)
        if isinstance(value, str):
            return _fold_checked(value, what, node)
        raise ValueError(f"{what}: {type(value).__name__} literals are not computed ({_node_text(node)})")
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_fold(e, what, budget) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError(f"{what}: ** inside a dict is not allowed")
        return {_fold(k, what, budget): _fold(v, what, budget) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and type(node.op) in _FOLD_UNARY:
        return _FOLD_UNARY[type(node.op)](_fold(node.operand, what, budget))
    if isinstance(node, ast.BinOp) and type(node.op) in _FOLD_BINARY:
        left, right = _fold(node.left, what, budget), _fold(node.right, what, budget)
        _fold_precheck(node.op, left, right, what, node)
        return _fold_checked(_FOLD_BINARY[type(node.op)](left, right), what, node)
    raise ValueError(f"{what}: only literal operands are computed, got {type(node).__name__}: {_node_text(node)}")


def _fold_size(value: Any, limit: int = MAX_FOLD_SIZE) -> int:
    """Characters of strings plus other values (containers included) in ``value``, shared parts counted
    each time, counted up to ``limit + 1``: ``[0] * n`` has size n + 1."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
            continue
        total += 1
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return total


def _fold_precheck(op: ast.operator, left: Any, right: Any, what: str, node: ast.expr) -> None:
    """Refuse, before computing it, an operation whose result would pass the bounds."""
    ints = isinstance(left, int) and isinstance(right, int)
    numbers = all(isinstance(x, (int, float)) for x in (left, right))
    if isinstance(op, ast.Pow) and numbers:
        if abs(right) > MAX_FOLD_EXPONENT:
            raise ValueError(f"{what}: {_node_text(node)} has an exponent beyond the limit of {MAX_FOLD_EXPONENT}")
        if ints and right > 0 and abs(left) > 1 and (abs(left).bit_length() - 1) * right > MAX_FOLD_BITS:
            raise ValueError(f"{what}: {_node_text(node)} would have more than {MAX_FOLD_BITS} bits")
    elif isinstance(op, ast.LShift) and ints and left and right > 0:
        if abs(left).bit_length() + right > MAX_FOLD_BITS:
            raise ValueError(f"{what}: {_node_text(node)} would have more than {MAX_FOLD_BITS} bits")
    elif isinstance(op, ast.Mult):
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and isinstance(count, int) and count > 0:
                if _fold_size(seq) * count > MAX_FOLD_SIZE:
                    raise ValueError(f"{what}: {_node_text(node)} would be longer than the limit of "
                                     f"{MAX_FOLD_SIZE} characters and items")
    elif isinstance(op, ast.Add) and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        if _fold_size(left) + _fold_size(right) > MAX_FOLD_SIZE:
            raise ValueError(f"{what}: {_node_text(node)} would be longer than the limit of {MAX_FOLD_SIZE} "
                             "characters and items")
    elif isinstance(op, ast.Mod) and isinstance(left, str):
        raise ValueError(f"{what}: %-formatting of strings is not computed ({_node_text(node)})")


def _fold_checked(value: Any, what: str, node: ast.expr) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_FOLD_BITS:
        raise ValueError(f"{what}: {_node_text(node)} has an integer of more than {MAX_FOLD_BITS} bits; "
                         f"the limit is {MAX_FOLD_BITS}")
    if isinstance(value, (str, list, tuple, dict)) and _fold_size(value) > MAX_FOLD_SIZE:
        raise ValueError(f"{what}: {_node_text(node)} is longer than the limit of {MAX_FOLD_SIZE} characters "
                         "and items")
    return value


register_python_decoder("official", OfficialPythonCallParser)
