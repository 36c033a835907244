"""Tool-call parsers: raw model text -> ``ToolCall`` records, without ever executing the text.

Two syntaxes are understood, and ``AutoToolCallParser`` picks per reply:

- Python call syntax as BFCL prompts use it: ``[cd(folder='docs'), ls(a=True)]`` or a bare
  ``ls()``. It is read with ``ast.parse`` and every argument with ``ast.literal_eval``; anything
  that is not a literal (a name, a call, an attribute, an operator) is a parse error, so no model
  text is ever evaluated.
- JSON tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (Hermes / Qwen
  templates), a bare JSON object or list of them, and OpenAI's ``{"function": {"name": ...,
  "arguments": "<json string>"}}`` shape. Read with ``json.loads``.

>>> parse = AutoToolCallParser()
>>> [c.name for c in parse("[cd(folder='docs'), ls(a=True)]").calls]
['cd', 'ls']
>>> parse("__import__('os').system('ls')").errors
["function name must be a plain or dotted name, got a Call: __import__('os')"]
>>> parse("I cannot help with that.").attempted
False
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentgym.types import ToolCall

__all__ = ["ParsedAction", "ToolCallParser", "PythonCallParser", "JsonToolCallParser",
           "AutoToolCallParser", "format_python_call", "MAX_CALL_TEXT"]

MAX_CALL_TEXT = 200_000  # characters: longer replies are rejected before parsing
_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\s*\n?(.*?)```", re.DOTALL)
_TOOL_CALL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_CALL_SHAPE = re.compile(r"[A-Za-z_][\w.]*\s*\(")


@dataclass
class ParsedAction:
    """The calls decoded from one reply, the problems found, and whether a call was attempted.

    ``attempted`` is False for plain prose (a legitimate "no call" reply, which ends a BFCL turn);
    a reply that looks like a call but does not decode has ``attempted=True`` and ``errors``.
    """

    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    attempted: bool = False
    syntax: str = ""  # "python" | "json" | ""


class ToolCallParser(Protocol):
    def __call__(self, text: str) -> ParsedAction: ...


# ------------------------------------------------------------------------------ python syntax
def _dotted_name(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise ValueError(f"function name must be a plain or dotted name, got a {type(node).__name__}: "
                         f"{_clip(ast.unparse(node))}")
    parts.append(node.id)
    return ".".join(reversed(parts))


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _literal(node: ast.expr, what: str) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{what} must be a literal (a quoted string, number, bool, None, list or dict), "
                         f"got {type(node).__name__}: {_clip(ast.unparse(node))}") from None
    return _to_json_value(value, what)


def _to_json_value(value: Any, what: str) -> Any:
    """Literals -> JSON-compatible values (tuples/sets become lists); reject what JSON cannot hold."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be a finite number, got {value!r}")
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_to_json_value(v, what) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) or k is None:
                raise ValueError(f"{what} has a dict key of type {type(k).__name__}; keys must be strings")
            out[str(k)] = _to_json_value(v, what)
        return out
    raise ValueError(f"{what} has a value of type {type(value).__name__} ({_clip(repr(value))}), "
                     "which a tool cannot take")


def _strip_wrappers(text: str) -> str:
    fenced = _FENCE.findall(text)
    if fenced:
        text = fenced[-1]
    return text.strip().strip("`").strip()


class PythonCallParser:
    """Python call syntax: a call or a list/tuple of calls, keyword or positional literal arguments.

    Positional arguments are kept in ``ToolCall.arguments`` under the keys ``"$0"``, ``"$1"``...;
    the environment maps them onto parameter names with the tool schema.
    """

    def __call__(self, text: str) -> ParsedAction:
        source = _strip_wrappers(text)
        attempted = bool(_CALL_SHAPE.search(source)) or source.startswith("[")
        if not source:
            return ParsedAction(attempted=False, syntax="python")
        try:
            tree = ast.parse(source, mode="eval")
        except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
            if not attempted:
                return ParsedAction(attempted=False, syntax="python")
            msg = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
            return ParsedAction(errors=[f"could not parse the function call(s): {msg}"],
                                attempted=True, syntax="python")
        body = tree.body
        if isinstance(body, (ast.List, ast.Tuple)):
            nodes = list(body.elts)
        elif isinstance(body, ast.Call):
            nodes = [body]
        else:
            if not attempted:
                return ParsedAction(attempted=False, syntax="python")
            return ParsedAction(errors=[f"expected a function call or a list of calls, got "
                                        f"{type(body).__name__}"], attempted=True, syntax="python")
        result = ParsedAction(attempted=True, syntax="python")
        for node in nodes:
            try:
                result.calls.append(self._call(node))
            except ValueError as exc:
                result.errors.append(str(exc))
        return result

    @staticmethod
    def _call(node: ast.expr) -> ToolCall:
        if not isinstance(node, ast.Call):
            raise ValueError(f"expected a function call, got {type(node).__name__}: {_clip(ast.unparse(node))}")
        name = _dotted_name(node.func)
        args: dict[str, Any] = {}
        for i, arg in enumerate(node.args):
            if isinstance(arg, ast.Starred):
                raise ValueError(f"{name}: *args are not allowed")
            args[f"${i}"] = _literal(arg, f"{name}: positional argument {i}")
        for kw in node.keywords:
            if kw.arg is None:
                raise ValueError(f"{name}: **kwargs are not allowed")
            if kw.arg in args:
                raise ValueError(f"{name}: argument {kw.arg!r} given twice")
            args[kw.arg] = _literal(kw.value, f"{name}: argument {kw.arg!r}")
        return ToolCall(name=name, arguments=args)


# ------------------------------------------------------------------------------ JSON syntax
class JsonToolCallParser:
    """JSON tool calls: tagged, bare objects or lists, and the OpenAI function shape."""

    def __call__(self, text: str) -> ParsedAction:
        tagged = _TOOL_CALL_TAG.findall(text)
        chunks = [t.strip() for t in tagged] if tagged else [_strip_wrappers(text)]
        result = ParsedAction(attempted=True, syntax="json")
        for chunk in chunks:
            try:
                data = json.loads(chunk)
            except (json.JSONDecodeError, RecursionError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "nesting too deep"
                result.errors.append(f"could not parse the JSON tool call: {msg}")
                continue
            for item in data if isinstance(data, list) else [data]:
                try:
                    result.calls.append(self._call(item))
                except ValueError as exc:
                    result.errors.append(str(exc))
        return result

    @staticmethod
    def _call(item: Any) -> ToolCall:
        if not isinstance(item, dict):
            raise ValueError(f"a JSON tool call must be an object, got {type(item).__name__}")
        if isinstance(item.get("function"), dict):  # OpenAI shape
            item = item["function"]
        name = item.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", name):
            raise ValueError(f"a JSON tool call needs a function name, got name={_clip(repr(name))}")
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):  # OpenAI sends arguments as a JSON string
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"{name}: arguments are not valid JSON ({exc.msg})") from None
        if not isinstance(args, dict):
            raise ValueError(f"{name}: arguments must be an object, got {type(args).__name__}")
        return ToolCall(name=name, arguments={str(k): _to_json_value(v, f"{name}: argument {k!r}")
                                              for k, v in args.items()})


class AutoToolCallParser:
    """JSON when the reply is tagged or starts like a JSON call; Python call syntax otherwise."""

    def __init__(self, max_chars: int = MAX_CALL_TEXT):
        self.max_chars = max_chars
        self.python = PythonCallParser()
        self.json = JsonToolCallParser()

    def __call__(self, text: str) -> ParsedAction:
        if not isinstance(text, str):
            return ParsedAction(errors=[f"expected text, got {type(text).__name__}"], attempted=True)
        if len(text) > self.max_chars:
            return ParsedAction(errors=[f"reply of {len(text)} characters exceeds the parser limit of "
                                        f"{self.max_chars}"], attempted=True)
        if "\x00" in text:
            return ParsedAction(errors=["reply contains NUL bytes; not a function call"], attempted=True)
        stripped = _strip_wrappers(text)
        if "<tool_call>" in text or stripped.startswith("{") or re.match(r"\[\s*\{", stripped):
            return self.json(text)
        return self.python(text)


def format_python_call(call: ToolCall) -> str:
    """The canonical Python-syntax string of a decoded call: ``name(key=repr(value), ...)``.

    Built only from a validated name and JSON values, so the string is itself a literal-only call
    (this is the form the official BFCL checker consumes).
    """
    if not re.fullmatch(r"[A-Za-z_][\w.]*", call.name):
        raise ValueError(f"not a valid function name: {call.name!r}")
    bad = [k for k in call.arguments if not k.isidentifier()]
    if bad:
        raise ValueError(f"{call.name}: argument names must be identifiers, got {bad}")
    # repr of JSON values is Python literal source (True/None, not true/null).
    return f"{call.name}({', '.join(f'{k}={v!r}' for k, v in call.arguments.items())})"
