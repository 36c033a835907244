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

Bounded on hostile calls (ARCHITECTURE.md, "Trust boundaries"): argument values are checked iteratively
(depth, integer size) before a call; the file system's ``cp`` copies a directory shallowly, so a
~1.5 KB reply of ``mkdir``/``cd``/``cp`` calls can make directories share contents until the tree,
read as paths, has billions of entries. The recursive file-system methods (``find``, ``du``) are
therefore refused, before they run, when the tree they would walk has more than ``MAX_FS_ENTRIES``
paths (counted once per distinct directory); and the state snapshot behind ``state_diff`` is
iterative, expands a shared object once (later references read ``{"$shared": "<path>"}``), cuts
cycles, and stops at ``MAX_SNAPSHOT_NODES`` nodes or ``MAX_SNAPSHOT_DEPTH`` levels with a marker.
"""

from __future__ import annotations

import copy
import decimal
import functools
import importlib
import inspect
import itertools
import json
import keyword
import time
from dataclasses import dataclass
from typing import Any, Callable

from agentgym.parsing import MAX_ARGUMENT_DEPTH, check_json_value
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
MAX_FS_ENTRIES = 100_000  # paths a recursive file-system walk may visit (official scenarios: < 100)
MAX_SNAPSHOT_NODES = 200_000  # values in one state snapshot (the largest official state: ~2k)
MAX_SNAPSHOT_DEPTH = 64  # nesting levels in one snapshot (official states: < 12)
_RECURSIVE_FS_METHODS = {"find": "path", "du": None}  # method -> parameter naming the start directory


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
        refusal = self._refuse_unbounded(class_name, name, kwargs)
        if refusal is not None:  # not executed, so not re-executed by the official checker either
            return CallResult(f"Error during execution: {refusal}", True, class_name, None, kwargs)
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

    def _refuse_unbounded(self, class_name: str, name: str, kwargs: dict[str, Any]) -> str | None:
        """Why a call would do unbounded work on this state (a recursive walk of a file system whose
        directories share contents), or None. Costs one pass over the distinct directories."""
        if class_name != "GorillaFileSystem" or name not in _RECURSIVE_FS_METHODS:
            return None
        fs = self.instances[class_name]
        start = getattr(fs, "_current_dir", None)
        param = _RECURSIVE_FS_METHODS[name]
        if param is not None and isinstance(kwargs.get(param), str) and kwargs[param] not in ("", "."):
            start = getattr(fs, "root", start)  # a path elsewhere: bound by the whole tree
        if start is None:
            return None
        entries = _tree_entries(start, MAX_FS_ENTRIES)
        if entries > MAX_FS_ENTRIES:
            return (f"{name}() refused: the directory tree it would walk has more than {MAX_FS_ENTRIES} "
                    "entries (directories copied with cp share their contents, so each copy multiplies "
                    "the paths); the limit keeps every call bounded")
        return None

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
            check_json_value(value, f"{name}(): argument {key!r}", MAX_ARGUMENT_DEPTH)
            _check_size(name, key, value)
        return kwargs

    # ------------------------------------------------------------------ state for state_diff
    def snapshot(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """Public state of the given backends as plain JSON-safe data."""
        names = self.instances if class_names is None else class_names
        return {n: _plain(self.instances[n]) for n in names}


def _check_size(func: str, key: str, value: Any) -> None:
    limit = ARGUMENT_LIMITS.get((func, key))
    stack = [value]  # iterative: the depth was checked, but a custom parser may hand anything
    while stack:
        value = stack.pop()
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            if limit is not None and abs(value) > limit:
                raise ValueError(f"{func}(): {key}={value!r} exceeds the limit of {limit:g}")
            if isinstance(value, int) and abs(value) > MAX_ABS_INT:
                shown = value if value.bit_length() < 256 else f"<{value.bit_length()}-bit integer>"
                raise ValueError(f"{func}(): integer {key}={shown} is out of range (|x| <= {MAX_ABS_INT})")
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.values())


def _tree_entries(start: Any, limit: int) -> int:
    """How many paths a recursive walk from directory ``start`` visits (a directory reached along two
    paths counts twice), computed over distinct directories only and capped just above ``limit``.
    A cycle counts as over the limit."""
    counts: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(start, False)]
    while stack:
        node, expanded = stack.pop()
        key = id(node)
        if expanded:
            on_path.discard(key)
            total = 0
            for child in getattr(node, "contents", {}).values():
                total += 1 + counts.get(id(child), 0)
                if total > limit:
                    break
            counts[key] = min(total, limit + 1)
            continue
        if key in counts:
            continue
        if key in on_path:
            return limit + 1
        on_path.add(key)
        stack.append((node, True))
        for child in getattr(node, "contents", {}).values():
            if hasattr(child, "contents") and id(child) not in counts:
                stack.append((child, False))
    return counts.get(id(start), 0)


_SCALARS = (bool, int, float, str)


def _plain(obj: Any) -> Any:
    """Objects -> JSON-safe data of their public attributes, bounded in time and memory.

    Iterative (any depth); ``parent`` links and private attributes are left out; an object or
    container reached a second time is written ``{"$shared": "<path of its first occurrence>"}``
    (a cycle: ``"<cycle>"``), so the snapshot grows with the distinct objects, not the paths through
    them; past ``MAX_SNAPSHOT_DEPTH`` levels or ``MAX_SNAPSHOT_NODES`` values the rest of a container
    is a ``"<snapshot limit: ...>"`` marker. On states without sharing the result equals a plain
    recursive conversion.
    """
    if obj is None or isinstance(obj, _SCALARS):
        return obj
    budget = MAX_SNAPSHOT_NODES
    first_path: dict[int, str] = {}
    on_path: set[int] = set()
    root_box: list[Any] = [None]
    sets_to_sort: list[list[Any]] = []
    # (value, container to fill, key in it, path, depth) ; a None value with key "$leave" pops on_path
    stack: list[tuple[Any, Any, Any, str, int]] = [(obj, root_box, 0, "", 0)]
    while stack:
        value, parent, key, path, depth = stack.pop()
        if parent is None:  # leaving a container
            on_path.discard(value)
            continue
        if value is None or isinstance(value, _SCALARS):
            parent[key] = value
            continue
        budget -= 1
        ident = id(value)
        if ident in on_path:
            parent[key] = "<cycle>"
            continue
        if ident in first_path:
            parent[key] = {"$shared": first_path[ident]}
            continue
        if budget < 0 or depth >= MAX_SNAPSHOT_DEPTH:
            why = (f"more than {MAX_SNAPSHOT_NODES} values" if budget < 0
                   else f"deeper than {MAX_SNAPSHOT_DEPTH} levels")
            parent[key] = f"<snapshot limit: {why}>"
            continue
        if isinstance(value, dict):
            items = [(str(k), v) for k, v in value.items()]
            out: Any = {}
        elif isinstance(value, (list, tuple, set, frozenset)):
            items = list(enumerate(value))
            out = [None] * len(items)
            if isinstance(value, (set, frozenset)):
                sets_to_sort.append(out)
        elif hasattr(value, "__dict__"):
            items = [(k, v) for k, v in vars(value).items() if not k.startswith("_") and k != "parent"]
            out = {}
        else:
            parent[key] = json_safe(value)
            continue
        first_path[ident] = path or "$"
        on_path.add(ident)
        parent[key] = out
        stack.append((ident, None, None, "", 0))
        if isinstance(out, dict):
            for k, _ in items:
                out[k] = None  # keep the source's key order
        for k, v in reversed(items):
            stack.append((v, out, k, f"{path}.{k}" if path else str(k), depth + 1))
    for out in reversed(sets_to_sort):  # inner sets were added later: sort them first
        out.sort(key=repr)
    return root_box[0]


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
    if _larger_than(value, limit):  # do not serialise a huge subtree to keep 300 characters of it
        text = json.dumps(_prune(value, limit), default=repr)
        return text[:limit] + "..."
    text = json.dumps(value, default=repr)
    return value if len(text) <= limit else text[:limit] + "..."


def _larger_than(value: Any, limit: int) -> bool:
    """Whether ``value`` holds more than ``limit`` scalars or characters (stops early)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += len(item) if isinstance(item, str) else 1
        if seen > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _prune(value: Any, limit: int, depth: int = 0) -> Any:
    """A small prefix of a big value: at most ``limit`` characters of a string, the first 10 items of
    a container, 8 levels."""
    if isinstance(value, str):
        return value[:limit]
    if depth >= 8:
        return "..."
    if isinstance(value, dict):
        return {k: _prune(v, limit, depth + 1) for k, v in itertools.islice(value.items(), 10)}
    if isinstance(value, list):
        return [_prune(v, limit, depth + 1) for v in value[:10]]
    return value
