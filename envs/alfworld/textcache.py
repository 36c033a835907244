"""Memoised text parsing for TextWorld's PDDL games: what an ALFWorld step and reset recompute.

Every TextWorld step builds the text of every admissible command and of the feedback by *parsing*
template strings with a tatsu (PEG) parser: ``textgen.ContextSensitiveGrammar.derive`` parses its
start string (``"go to {r}"``, ``"#intro#"``, a feedback rule) each call, and every conditional
production parses its condition with ``Rule.parse_conjunctive_query``. The strings come from the
game's grammar, a finite set, so the same few hundred strings are parsed again and again (about 80 %
of a step's time). Both parsers are pure functions of the string:

- ``derive``'s template parse gives fresh ``Symbol`` objects that the derivation then mutates
  (their ``context``), so the memo keeps the parsed symbols and hands out a structural clone per
  call (same classes, same fields, a fresh empty context - exactly what a new parse returns);
- ``parse_conjunctive_query`` gives a ``Rule`` of immutable tuples of predicates that is only read
  (``State.all_assignments``), so the memo hands out the same object.

Both memos are bounded LRUs (``maxsize`` strings each; ALFWorld's grammar has a few hundred distinct
templates per game, mostly shared between games; the env sizes them to its game pool). Nothing about
what the game says changes: ``tests/envs/test_alfworld_cache.py`` plays the same games and commands
with and without the caches and compares every observation, admissible command list and expert
plan.

>>> caches = install_text_caches()                  # doctest: +SKIP
>>> caches["templates"].hits, caches["queries"].hits  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

import textworld.envs.pddl.textgen as _textgen
import textworld.logic as _logic

__all__ = ["LRUMemo", "install_text_caches", "uninstall_text_caches", "text_caches", "DEFAULT_SIZE"]

DEFAULT_SIZE = 4096  # strings per memo: ~10x one game's templates, a few MB at most

_ORIGINAL_PARSE = _textgen._parse_and_convert
_ORIGINAL_QUERY = _logic.Rule.__dict__["parse_conjunctive_query"]  # the classmethod object
_ORIGINAL_COPY_CONTEXT = _textgen.copy_context


class LRUMemo:
    """A bounded, thread-safe LRU memo of ``function(*key)`` (keys: hashable tuples); ``get(key,
    compute)`` memoises ``compute()`` instead, for values that need more than the key to compute."""

    def __init__(self, function: Callable[..., Any] | None, maxsize: int = DEFAULT_SIZE):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.function, self.maxsize = function, maxsize
        self._memo: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._memo)

    def get(self, key: tuple, compute: Callable[[], Any] | None = None) -> Any:
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                self.hits += 1
                return self._memo[key]
        # Outside the lock: a parse takes milliseconds, an expert plan longer.
        value = compute() if compute is not None else self.function(*key)
        with self._lock:
            self.misses += 1
            self._memo[key] = value
            self._memo.move_to_end(key)
            while len(self._memo) > self.maxsize:
                self._memo.popitem(last=False)
        return value

    def resize(self, maxsize: int) -> None:
        with self._lock:
            self.maxsize = max(self.maxsize, maxsize)

    def clear(self) -> None:
        with self._lock:
            self._memo.clear()


# ------------------------------------------------------------------------------------------ clones
def _clone(symbol: Any) -> Any:
    """A fresh copy of a just-parsed textgen symbol (what ``_parse_and_convert`` would build)."""
    cls = type(symbol)
    if cls is _textgen.TerminalSymbol or cls is _textgen.NonterminalSymbol:
        return cls(symbol.symbol, {})
    if cls is _textgen.EvalSymbol:
        return cls(symbol.expression, {})
    if cls is _textgen.ConditionalSymbol:
        return cls(_clone(symbol.expression), symbol.given, {})
    if cls is _textgen.ListSymbol:
        return cls(_clone(symbol.symbol), {})
    if isinstance(symbol, list):
        return [_clone(s) for s in symbol]
    if isinstance(symbol, str):
        return symbol
    raise TypeError(f"unexpected textgen node {cls.__name__}")  # a textworld this module does not know


def _copy_context(context: dict[str, Any]) -> dict[str, Any]:
    """textgen's ``copy_context`` without its deep copies: a derivation only adds keys to the
    ``variables`` and ``mapping`` dicts of a context (``query``), never changes the entity infos,
    placeholders and variables they hold (grammar expressions only read attributes), so copying the
    two dicts gives the same derivations as deep-copying everything in them (most of a step's time
    once parsing is memoised)."""
    return {"state": context["state"], "facts": context["facts"], "variables": dict(context["variables"]),
            "mapping": dict(context["mapping"]), "entity_infos": context["entity_infos"]}


def _parse_uncached(text: str, rule_name: str) -> Any:
    return _ORIGINAL_PARSE(text, rule_name=rule_name)


_STATE: dict[str, LRUMemo] = {}


def _cached_parse(*args: Any, **kwargs: Any) -> Any:
    memo = _STATE.get("templates")
    text = args[0] if args else kwargs.get("text")
    rule_name = kwargs.get("rule_name")
    # Only the plain (text, rule_name) form is memoised; tracing or other options parse afresh.
    if memo is None or len(args) != 1 or set(kwargs) - {"rule_name", "trace"} or kwargs.get("trace") \
            or not isinstance(text, str) or not isinstance(rule_name, str):
        return _ORIGINAL_PARSE(*args, **kwargs)
    return _clone(memo.get((text, rule_name)))


def _cached_query(cls: type, expr: str) -> Any:
    memo = _STATE.get("queries")
    if memo is None or cls is not _logic.Rule or not isinstance(expr, str):
        return _ORIGINAL_QUERY.__func__(cls, expr)
    return memo.get((expr,))


def _query_uncached(expr: str) -> Any:
    return _ORIGINAL_QUERY.__func__(_logic.Rule, expr)


def install_text_caches(maxsize: int = DEFAULT_SIZE) -> dict[str, LRUMemo]:
    """Route TextWorld's template and query parsing through the memos (idempotent; a larger
    ``maxsize`` grows them). Returns ``{"templates": ..., "queries": ...}``."""
    if "templates" not in _STATE:
        _STATE["templates"] = LRUMemo(_parse_uncached, maxsize)
        _STATE["queries"] = LRUMemo(_query_uncached, maxsize)
        _textgen._parse_and_convert = _cached_parse
        _textgen.copy_context = _copy_context
        _logic.Rule.parse_conjunctive_query = classmethod(_cached_query)
    else:
        for memo in _STATE.values():
            memo.resize(maxsize)
    return dict(_STATE)


def uninstall_text_caches() -> None:
    """Back to TextWorld's own parsing (for side-by-side measurements and tests)."""
    _textgen._parse_and_convert = _ORIGINAL_PARSE
    _textgen.copy_context = _ORIGINAL_COPY_CONTEXT
    _logic.Rule.parse_conjunctive_query = _ORIGINAL_QUERY
    _STATE.clear()


def text_caches() -> dict[str, LRUMemo]:
    """The installed memos (empty when not installed)."""
    return dict(_STATE)
