"""The real BFCL backends of one episode, and a dispatcher that calls them by method name.

The official executor builds a Python string per call and ``eval``s it, caching backend instances
in module globals; this one never evaluates text. A decoded ``ToolCall`` is looked up in a table of
the public methods of the episode's own backend instances, its positional arguments are mapped onto
parameter names with the method signature, and the bound method is called. Results are rendered
exactly as the official executor renders them (``str`` as is, ``dict`` as JSON, anything else with
``str()``, an exception as ``"Error during execution: ..."``) so observations match the leaderboard's.

Two process-wide settings the math backend mutates (``mpmath.mp.dps`` and the ``decimal``
context precision) are saved and restored around every call, so one episode cannot change the
numbers of the next.
"""

from __future__ import annotations

import copy
import decimal
import functools
import importlib
import inspect
import json
import keyword
import time
from dataclasses import dataclass
from typing import Any, Callable

from agentgym.types import ToolCall, json_safe

# Arguments that make a backend compute for minutes or exhaust memory in a single C-level call
# (big-integer powers, arbitrary-precision arithmetic) are refused before the call. Plain integers
# are bounded too; no BFCL task needs more than these.
MAX_ABS_INT = 10**12
ARGUMENT_LIMITS: dict[tuple[str, str], float] = {
    ("power", "exponent"): 1_000,
    ("square_root", "precision"): 1_000,
    ("logarithm", "precision"): 1_000,
}


@dataclass
class CallResult:
    text: str  # exactly what the official executor would show the model
    error: bool  # an exception, a refused call, or a backend answer with an "error" key
    class_name: str | None  # the backend that handled it (None when no backend was reached)
    canonical: str | None  # the keyword-form call string the official checker consumes
    arguments: dict[str, Any] | None = None  # the arguments by parameter name (positional mapped)


@functools.lru_cache(maxsize=None)
def _backend_class(class_name: str) -> type:
    from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING

    return getattr(importlib.import_module(CLASS_FILE_PATH_MAPPING[class_name]), class_name)


@functools.lru_cache(maxsize=None)
def _parameters(cls: type, method: str) -> tuple[str, ...]:
    sig = inspect.signature(getattr(cls, method))
    return tuple(p for p in sig.parameters if p != "self")


def _render(result: Any) -> str:
    # The official executor's rendering, kept byte for byte.
    if type(result) is str:
        return result
    if type(result) is dict:
        try:
            return json.dumps(result)
        except Exception:
            return str(result)
    return str(result)


class _ProcessGlobals:
    """Save and restore the numeric precision settings backends change for the whole process."""

    def __enter__(self):
        import mpmath

        self._dps = mpmath.mp.dps
        self._prec = decimal.getcontext().prec
        return self

    def __exit__(self, *exc):
        import mpmath

        mpmath.mp.dps = self._dps
        decimal.getcontext().prec = self._prec
        return False


class BackendSet:
    """Fresh backend instances for one BFCL entry, plus the dispatcher.

    >>> from agentgym.envs.bfcl.data import get_entry
    >>> backends = BackendSet(get_entry("multi_turn_base_0"))
    >>> backends.call(ToolCall(name="pwd")).text
    '{"current_working_directory": "/workspace"}'
    """

    def __init__(self, entry: Any, *, allowed: set[str] | None = None):
        from bfcl_eval.constants.executable_backend_config import STATELESS_CLASSES

        self.instances: dict[str, Any] = {}
        self.methods: dict[str, tuple[str, Callable[..., Any]]] = {}
        for class_name in entry.involved_classes:
            instance = _backend_class(class_name)()
            if class_name not in STATELESS_CLASSES:
                with _ProcessGlobals():
                    instance._load_scenario(copy.deepcopy(entry.initial_config.get(class_name, {})),
                                            long_context=entry.long_context)
            self.instances[class_name] = instance
            # Later classes win on a name clash, as in the official executor.
            for name, method in inspect.getmembers(instance, predicate=inspect.ismethod):
                if not name.startswith("_"):
                    self.methods[name] = (class_name, method)
        self.allowed = set(self.methods) if allowed is None else set(allowed)
        self.backend_seconds = 0.0  # time inside backend methods (benchmarks subtract it)

    def call(self, call: ToolCall) -> CallResult:
        name = call.name
        if name not in self.methods or name not in self.allowed:
            # The official executor would raise NameError inside eval for an unknown name.
            return CallResult(f"Error during execution: name '{name}' is not defined", True, None, None)
        class_name, method = self.methods[name]
        try:
            kwargs = self._bind(class_name, name, call.arguments)
        except ValueError as exc:
            return CallResult(f"Error during execution: {exc}", True, class_name, None)
        canonical = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
        started = time.perf_counter()
        try:
            with _ProcessGlobals():
                result = method(**kwargs)
                text = _render(result)  # mpmath numbers print at the precision the call set
        except Exception as exc:  # a backend bug or bad argument must not end the episode
            return CallResult(f"Error during execution: {exc}", True, class_name, canonical, kwargs)
        finally:
            self.backend_seconds += time.perf_counter() - started
        error = isinstance(result, dict) and "error" in result
        return CallResult(text, error, class_name, canonical, kwargs)

    def keyword_form(self, call: ToolCall) -> ToolCall:
        """The call with positional arguments named after the method's parameters (no execution);
        unchanged when the name is unknown or the arguments do not bind."""
        if call.name not in self.methods:
            return call
        try:
            return ToolCall(name=call.name, arguments=self._bind(self.methods[call.name][0], call.name, call.arguments))
        except ValueError:
            return call

    def _bind(self, class_name: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        params = _parameters(type(self.instances[class_name]), name)
        kwargs: dict[str, Any] = {}
        positional = sorted((int(k[1:]), v) for k, v in arguments.items() if k.startswith("$"))
        for index, value in positional:
            if index >= len(params):
                raise ValueError(f"{name}() takes {len(params)} positional arguments but "
                                 f"{index + 1} were given")
            kwargs[params[index]] = value
        for key, value in arguments.items():
            if key.startswith("$"):
                continue
            # Keys end up in the call string the official checker evaluates: identifiers only.
            if not key.isidentifier() or keyword.iskeyword(key):
                raise ValueError(f"{name}() got an invalid argument name {key[:60]!r}")
            if key in kwargs:
                raise ValueError(f"{name}() got multiple values for argument '{key}'")
            kwargs[key] = value
        for key, value in kwargs.items():
            _check_size(name, key, value)
        return kwargs

    # ------------------------------------------------------------------ state for state_diff
    def snapshot(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """Public state of the given backends as plain JSON-safe data."""
        names = self.instances if class_names is None else class_names
        return {n: _plain(self.instances[n]) for n in names}


def _check_size(func: str, key: str, value: Any) -> None:
    limit = ARGUMENT_LIMITS.get((func, key))
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if limit is not None and abs(value) > limit:
            raise ValueError(f"{func}(): {key}={value!r} exceeds the limit of {limit:g}")
        if isinstance(value, int) and abs(value) > MAX_ABS_INT:
            raise ValueError(f"{func}(): integer {key}={value} is out of range (|x| <= {MAX_ABS_INT})")
    elif isinstance(value, list):
        for v in value:
            _check_size(func, key, v)
    elif isinstance(value, dict):
        for v in value.values():
            _check_size(func, key, v)


def _plain(obj: Any, _seen: frozenset[int] = frozenset()) -> Any:
    """Objects -> dicts of their public attributes (``parent`` links and cycles cut)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if id(obj) in _seen:
        return "<cycle>"
    seen = _seen | {id(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v, seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, seen) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((_plain(v, seen) for v in obj), key=repr)
    if hasattr(obj, "__dict__"):
        return {k: _plain(v, seen) for k, v in vars(obj).items() if not k.startswith("_") and k != "parent"}
    return json_safe(obj)


def state_diff(before: Any, after: Any, path: str = "", out: list | None = None,
               limit: int = 50) -> list[dict[str, Any]]:
    """Changes between two snapshots as ``{"path", "op", "before", "after"}`` records."""
    out = [] if out is None else out
    if len(out) >= limit or before == after:
        return out
    if isinstance(before, dict) and isinstance(after, dict):
        for key in before.keys() | after.keys():
            sub = f"{path}.{key}" if path else str(key)
            if key not in after:
                out.append({"path": sub, "op": "removed", "before": _short(before[key]), "after": None})
            elif key not in before:
                out.append({"path": sub, "op": "added", "before": None, "after": _short(after[key])})
            else:
                state_diff(before[key], after[key], sub, out, limit)
            if len(out) >= limit:
                break
        out.sort(key=lambda r: r["path"])
        return out
    out.append({"path": path, "op": "changed", "before": _short(before), "after": _short(after)})
    return out


def _short(value: Any, limit: int = 300) -> Any:
    text = json.dumps(value, default=repr)
    return value if len(text) <= limit else text[:limit] + "..."
