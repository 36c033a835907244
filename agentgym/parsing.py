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

Hostile text is bounded (ARCHITECTURE.md, "Trust boundaries"): replies longer than ``MAX_CALL_TEXT`` are
refused before parsing; every scan is linear in the text (no backtracking regular expression runs
over model text); argument values nest at most ``MAX_ARGUMENT_DEPTH`` deep, integers have at most
``MAX_INT_BITS`` bits, a reply holds at most ``MAX_CALLS`` calls and reports at most ``MAX_ERRORS``
problems. Each limit is reported as a parse error that says what was received and the limit, and the
parsers never raise.

Two decodings (``AutoToolCallParser(decoding=...)``):

- ``"lenient"`` (the default here): the rules above; a fenced block is unwrapped, and a reply with
  one bad call keeps its good calls.
- ``"official"``: bfcl-eval's own decoders, so BFCL verdicts match published numbers: Python call
  lists with ``OfficialPythonCallParser``, which lives with the BFCL environments
  (``agentgym.envs.bfcl.decoder``, registered under this name with ``register_python_decoder``);
  replies with ``<tool_call>`` tags as bfcl-eval's Qwen FC handler reads them (a block whose JSON
  does not parse is skipped, a malformed call fails the reply).
"""

from __future__ import annotations

import ast
import json
import math
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from agentgym.types import ToolCall

__all__ = ["ParsedAction", "ToolCallParser", "PythonCallParser", "JsonToolCallParser",
           "AutoToolCallParser", "format_python_call", "check_json_value", "MAX_CALL_TEXT",
           "MAX_ARGUMENT_DEPTH", "MAX_INT_BITS", "MAX_CALLS", "MAX_ERRORS", "tag_contents", "tag_spans", "DECODINGS",
           "register_python_decoder"]

MAX_CALL_TEXT = 200_000  # characters: longer replies are rejected before parsing
MAX_ARGUMENT_DEPTH = 32  # nesting of lists/dicts in one argument value (BFCL needs 3)
MAX_INT_BITS = 128  # |int| < 2**128: beyond, printing and JSON encoding get slow or refuse
MAX_CALLS = 256  # calls in one reply (the official BFCL ground truths have at most ~10)
MAX_ERRORS = 20  # problems reported for one reply; the rest are counted
DECODINGS = ("lenient", "official")
_FENCE_HEAD = re.compile(r"[a-zA-Z0-9_+-]*\s*\n?")  # after ```: a language tag, blanks (never backtracks)
_TOOL_CALL_TAG = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)  # linear: lazy, one exit
# A name run followed by "(": anchored at the start of a run of name characters, so each run is
# scanned once (an unanchored ``[A-Za-z_][\w.]*\s*\(`` retries at every position: quadratic).
_NAME_RUN_CALL = re.compile(r"(?<![\w.])[\w.]+\s*\(")
_ASCII_NAME_START = re.compile(r"[A-Za-z_]")


def _looks_like_call(source: str) -> bool:
    """Whether ``source`` contains ``name(`` (a name starting with an ASCII letter or _), in O(n)."""
    return any(_ASCII_NAME_START.search(m.group()) for m in _NAME_RUN_CALL.finditer(source))


def tag_contents(text: str, tag: str, *, ignore_case: bool = True) -> list[str]:
    """Contents of the closed ``<tag>...</tag>`` blocks, as ``re.findall(r"<tag>(.*?)</tag>", text,
    re.DOTALL | re.IGNORECASE)`` returns them, in one left-to-right pass.

    That pattern retries its lazy scan from every unclosed ``<tag>`` to the end of the text, which is
    quadratic (100 KB of ``<action>`` took 5 s); here each character is looked at a bounded number
    of times.

    >>> tag_contents("<action>a</action> <ACTION>b</action><action>open", "action")
    ['a', 'b']
    """
    return [text[start:end] for start, end in tag_spans(text, tag, ignore_case=ignore_case)]


def tag_spans(text: str, tag: str, *, ignore_case: bool = True) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of the contents of the closed ``<tag>...</tag>`` blocks, in
    one left-to-right pass (what ``tag_contents`` returns the text of).

    >>> tag_spans("x<action>ab</action>", "action")
    [(9, 11)]
    """
    flags = re.IGNORECASE if ignore_case else 0
    opening = re.compile(re.escape(f"<{tag}>"), flags)
    closing = re.compile(re.escape(f"</{tag}>"), flags)
    out: list[tuple[int, int]] = []
    pos = 0
    while True:
        start = opening.search(text, pos)
        if start is None:
            return out
        end = closing.search(text, start.end())
        if end is None:
            return out
        out.append((start.end(), end.start()))
        pos = end.end()


def _fenced_blocks(text: str) -> list[str]:
    """Contents of the ```-fenced blocks, as ``re.findall(r"```[a-zA-Z0-9_+-]*\\s*\\n?(.*?)```", text,
    re.DOTALL)`` would return them, but in one left-to-right pass (that pattern is quadratic on an
    unclosed fence followed by a long tag)."""
    out: list[str] = []
    pos = 0
    while True:
        opening = text.find("```", pos)
        if opening < 0:
            return out
        start = _FENCE_HEAD.match(text, opening + 3).end()
        closing = text.find("```", start)
        if closing < 0:
            return out
        out.append(text[start:closing])
        pos = closing + 3


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
    dropped_errors: int = field(default=0, repr=False)  # problems beyond MAX_ERRORS (while parsing)


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


def _node_text(node: ast.AST, limit: int = 80) -> str:
    """The source of a node for an error message, clipped; never unparses a huge or deep node."""
    line, end_line = getattr(node, "lineno", 0), getattr(node, "end_lineno", None)
    width = (getattr(node, "end_col_offset", 0) or 0) - (getattr(node, "col_offset", 0) or 0)
    if end_line != line or width > 4 * limit:
        return f"<{type(node).__name__} of {'several lines' if end_line != line else f'{width} bytes'}>"
    try:
        return _clip(ast.unparse(node), limit)
    except Exception:  # noqa: BLE001 - RecursionError on a deep expression
        return f"<{type(node).__name__}>"


def _literal(node: ast.expr, what: str) -> Any:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{what} must be a literal (a quoted string, number, bool, None, list or dict), "
                         f"got {type(node).__name__}: {_node_text(node)}") from None
    return _to_json_value(value, what)


def check_json_value(value: Any, what: str, max_depth: int = MAX_ARGUMENT_DEPTH) -> None:
    """Raise ValueError if ``value`` nests lists/dicts deeper than ``max_depth`` or holds an integer
    of more than ``MAX_INT_BITS`` bits. Iterative: any depth is checked without recursion."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if item.bit_length() > MAX_INT_BITS:
                raise ValueError(f"{what} has an integer of {item.bit_length()} bits; the limit is "
                                 f"{MAX_INT_BITS} bits")
        elif isinstance(item, (list, tuple, set, frozenset, dict)):
            if depth >= max_depth:
                raise ValueError(f"{what} nests lists/objects more than {max_depth} levels deep; "
                                 f"the limit is {max_depth}")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def _to_json_value(value: Any, what: str, _checked: bool = False) -> Any:
    """Literals -> JSON-compatible values (tuples/sets become lists); reject what JSON cannot hold."""
    if not _checked:
        check_json_value(value, what)  # bounds the recursion below
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be a finite number, got {value!r}")
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_to_json_value(v, what, True) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) or k is None:
                raise ValueError(f"{what} has a dict key of type {type(k).__name__}; keys must be strings")
            out[str(k)] = _to_json_value(v, what, True)
        return out
    raise ValueError(f"{what} has a value of type {type(value).__name__} ({_clip(_safe_repr(value))}), "
                     "which a tool cannot take")


def _safe_repr(value: Any) -> str:
    try:
        return reprlib.repr(value)
    except Exception:  # noqa: BLE001
        return f"<{type(value).__name__}>"


def _add_errors(result: "ParsedAction", errors: list[str]) -> None:
    """Keep the first ``MAX_ERRORS`` problems of a reply and count the rest."""
    for error in errors:
        if len(result.errors) < MAX_ERRORS:
            result.errors.append(error)
        else:
            result.dropped_errors += 1


def _finish(result: "ParsedAction") -> "ParsedAction":
    if len(result.calls) > MAX_CALLS:
        extra = len(result.calls) - MAX_CALLS
        result.calls = result.calls[:MAX_CALLS]
        _add_errors(result, [f"the reply holds {MAX_CALLS + extra} calls; the limit is {MAX_CALLS} per reply, "
                             f"the last {extra} were dropped"])
    if result.dropped_errors:
        result.errors.append(f"... and {result.dropped_errors} more problems")
        result.dropped_errors = 0
    return result


def _strip_wrappers(text: str) -> str:
    fenced = _fenced_blocks(text)
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
        if not source:
            return ParsedAction(attempted=False, syntax="python")
        attempted = source.startswith("[") or _looks_like_call(source)
        try:
            tree = ast.parse(source, mode="eval")
        except Exception as exc:  # noqa: BLE001 - SyntaxError, MemoryError/RecursionError (too deep), ValueError
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
        if len(nodes) > MAX_CALLS:
            _add_errors(result, [f"the reply holds {len(nodes)} calls; the limit is {MAX_CALLS} per reply, "
                                 f"the last {len(nodes) - MAX_CALLS} were not read"])
            nodes = nodes[:MAX_CALLS]
        for node in nodes:
            try:
                result.calls.append(self._call(node))
            except ValueError as exc:
                _add_errors(result, [str(exc)])
        return _finish(result)

    @staticmethod
    def _call(node: ast.expr) -> ToolCall:
        return _read_call(node, _literal, refuse_repeats=True)


# decoding -> the factory of its Python-call-syntax decoder. "official" (bfcl-eval's) is registered by
# agentgym.envs.bfcl.decoder: a benchmark's decoder lives in its env package, never imported here.
_PYTHON_DECODERS: dict[str, Callable[[], ToolCallParser]] = {"lenient": PythonCallParser}


def register_python_decoder(decoding: str, factory: Callable[[], ToolCallParser]) -> None:
    """Make ``factory()`` the Python-call decoder of ``AutoToolCallParser(decoding=decoding)``."""
    if decoding not in DECODINGS:
        raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
    _PYTHON_DECODERS[decoding] = factory


def _python_decoder(decoding: str) -> ToolCallParser:
    factory = _PYTHON_DECODERS.get(decoding)
    if factory is None:
        raise ValueError(f"decoding {decoding!r} has no Python-call decoder registered; bfcl-eval's comes with "
                         "the BFCL environments: import agentgym.envs.bfcl.decoder")
    return factory()


def _read_call(node: ast.expr, read_argument: Callable[[ast.expr, str], Any], *, refuse_repeats: bool) -> ToolCall:
    """A ``ToolCall`` from one call node: positional arguments as ``$i``, each value read by
    ``read_argument`` (the lenient literal reader or the official decoder's)."""
    if not isinstance(node, ast.Call):
        raise ValueError(f"expected a function call, got {type(node).__name__}: {_node_text(node)}")
    name = _dotted_name(node.func)
    args: dict[str, Any] = {}
    for i, arg in enumerate(node.args):
        if isinstance(arg, ast.Starred):
            raise ValueError(f"{name}: *args are not allowed")
        args[f"${i}"] = read_argument(arg, f"{name}: positional argument {i}")
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError(f"{name}: **kwargs are not allowed")
        if refuse_repeats and kw.arg in args:
            raise ValueError(f"{name}: argument {kw.arg!r} given twice")
        args[kw.arg] = read_argument(kw.value, f"{name}: argument {kw.arg!r}")
    return ToolCall(name=name, arguments=args)


# ------------------------------------------------------------------------------ JSON syntax
class JsonToolCallParser:
    """JSON tool calls: tagged, bare objects or lists, and the OpenAI function shape.

    ``decoding="official"`` follows bfcl-eval's Qwen FC handler (``<tool_call>`` JSON): a block whose
    JSON does not parse is skipped (the others run), but a call without ``name`` and ``arguments``
    (an object, or a JSON string of one) fails the whole reply.
    """

    def __init__(self, decoding: str = "lenient"):
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        self.decoding = decoding

    def __call__(self, text: str) -> ParsedAction:
        result = self._parse(text)
        if self.decoding == "official" and result.calls and any(e.startswith(_WHOLE_REPLY) for e in result.errors):
            result.calls = []  # a malformed call fails the reply, as bfcl-eval's decode_execute raises
        return result

    def _parse(self, text: str) -> ParsedAction:
        tagged = _TOOL_CALL_TAG.findall(text)
        chunks = [t.strip() for t in tagged] if tagged else [_strip_wrappers(text)]
        result = ParsedAction(attempted=True, syntax="json")
        for chunk in chunks:
            if len(result.calls) >= MAX_CALLS:
                _add_errors(result, [f"the reply holds more than {MAX_CALLS} calls; the limit is "
                                     f"{MAX_CALLS} per reply, the rest were not read"])
                break
            data, problem = _load_json(chunk, "the JSON tool call")
            if problem is not None:
                _add_errors(result, [problem])
                continue
            for item in data if isinstance(data, list) else [data]:
                try:
                    result.calls.append(self._call(item) if self.decoding == "lenient" else self._official_call(item))
                except ValueError as exc:
                    _add_errors(result, [str(exc)])
                if len(result.calls) > MAX_CALLS:
                    break
        return _finish(result)

    def _official_call(self, item: Any) -> ToolCall:
        if not isinstance(item, dict) or "name" not in item or "arguments" not in item:
            raise ValueError(f"{_WHOLE_REPLY}a tool call must be an object with \"name\" and \"arguments\", got "
                             f"{_clip(_safe_repr(item))}")
        if not isinstance(item["arguments"], (dict, str)):
            raise ValueError(f"{_WHOLE_REPLY}{_clip(str(item['name']))}: arguments must be an object, got "
                             f"{type(item['arguments']).__name__}")
        try:
            return self._call({"name": item["name"], "arguments": item["arguments"]})
        except ValueError as exc:
            raise ValueError(f"{_WHOLE_REPLY}{exc}") from None

    @staticmethod
    def _call(item: Any) -> ToolCall:
        if not isinstance(item, dict):
            raise ValueError(f"a JSON tool call must be an object, got {type(item).__name__}")
        if isinstance(item.get("function"), dict):  # OpenAI shape
            item = item["function"]
        name = item.get("name")
        if not isinstance(name, str) or len(name) > 200 or not re.fullmatch(r"[A-Za-z_][\w.]*", name):
            raise ValueError(f"a JSON tool call needs a function name, got name={_clip(_safe_repr(name))}")
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):  # OpenAI sends arguments as a JSON string
            if not args.strip():
                args = {}
            else:
                args, problem = _load_json(args, f"{name}: arguments")
                if problem is not None:
                    raise ValueError(problem)
        if not isinstance(args, dict):
            raise ValueError(f"{name}: arguments must be an object, got {type(args).__name__}")
        return ToolCall(name=name, arguments={str(k): _to_json_value(v, f"{name}: argument {_clip(repr(str(k)))}")
                                              for k, v in args.items()})


_WHOLE_REPLY = "the whole reply fails to decode (bfcl-eval), none of its calls run: "


def _load_json(text: str, what: str) -> tuple[Any, str | None]:
    """``json.loads`` that reports instead of raising, with the nesting and integer limits checked."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"could not parse {what}: {exc.msg} (line {exc.lineno}, column {exc.colno})"
    except RecursionError:
        return None, (f"could not parse {what}: nesting too deep (the limit is {MAX_ARGUMENT_DEPTH} "
                      "levels in argument values)")
    except ValueError as exc:  # e.g. an integer literal of more than 4300 digits
        return None, f"could not parse {what}: {_clip(str(exc), 160)}"
    try:  # a tool call is at most {"function": {"arguments": VALUE}}: 3 levels above the values
        check_json_value(data, what, MAX_ARGUMENT_DEPTH + 3)
    except ValueError as exc:
        return None, str(exc)
    return data, None


class AutoToolCallParser:
    """JSON when the reply is tagged or starts like a JSON call; Python call syntax otherwise.

    ``decoding="official"``: bfcl-eval's decoders (the module docstring): ``<tool_call>`` replies as
    its Qwen FC handler reads them, everything else with ``OfficialPythonCallParser``
    (``agentgym.envs.bfcl.decoder``, which registers it).
    """

    def __init__(self, max_chars: int = MAX_CALL_TEXT, decoding: str = "lenient"):
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {DECODINGS}, got {decoding!r}")
        self.max_chars = max_chars
        self.decoding = decoding
        self.python = _python_decoder(decoding)
        self.json = JsonToolCallParser(decoding)

    def __call__(self, text: str) -> ParsedAction:
        try:
            return self._parse(text)
        except Exception as exc:  # noqa: BLE001 - a parser bug must not become an env exception
            return ParsedAction(errors=[f"the reply could not be parsed ({type(exc).__name__}: "
                                        f"{_clip(str(exc), 160)})"], attempted=True)

    def _parse(self, text: str) -> ParsedAction:
        if not isinstance(text, str):
            return ParsedAction(errors=[f"expected text, got {type(text).__name__}"], attempted=True)
        if len(text) > self.max_chars:
            return ParsedAction(errors=[f"reply of {len(text)} characters exceeds the parser limit of "
                                        f"{self.max_chars}"], attempted=True)
        if "\x00" in text:
            return ParsedAction(errors=["reply contains NUL bytes; not a function call"], attempted=True)
        if self.decoding == "official":  # bfcl-eval: Qwen FC's decoder for tags, else the default one
            return self.json(text) if "<tool_call>" in text else self.python(text)
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
