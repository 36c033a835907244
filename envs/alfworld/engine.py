"""The real ALFWorld engine in-process: TextWorld's ``PddlEnv`` (fast-downward underneath) wrapped by
ALFWorld's own ``AlfredDemangler``, ``AlfredInfos`` and ``AlfredExpert`` (the handcoded expert), the
same wrapper chain ``alfworld.agents.environment.AlfredTWEnv.init_env`` registers with
``textworld.gym`` - minus the asynchronous worker processes, so there is nothing to leak.

Two things are added on top, neither changes what the game says:

- ``pddl2sas`` (fast-downward's PDDL -> SAS translation, ~1 s per call and called twice per
  ``load`` and twice per ``reset``) is memoised in a bounded LRU keyed by the (domain, problem) text.
  It is a pure function of its inputs; the translated task is only read afterwards.
- textworld interns every ``Signature`` and ``Proposition`` it ever builds in one process-wide dict
  (``mementos.core._memento_cache``, never evicted). Object names carry scene coordinates, so each
  new game adds thousands of entries that outlive the game: this was the steady RSS growth over
  many resets (~0.35 MB per episode). Interning is only a sharing optimisation - both classes
  compare and hash by value - so ``Engine.start`` empties it once it passes ``INTERN_LIMIT``
  entries (see ``trim_interned``); memory is then bounded by the pool's working set, not history.
- TextWorld's template and query parsing (what a step spends most of its time on) and the deep
  copies of derivation contexts are memoised / avoided by ``textcache.install_text_caches`` (see
  there; ``Engine(text_cache=False)`` leaves TextWorld's own code alone for side-by-side checks).
- The handcoded expert draws from the global ``random`` module when it is unsure; the engine swaps in
  its own seeded state around every engine call so an episode (and an expert plan) replays
  identically and the caller's global ``random`` is left untouched.

>>> eng = Engine()                                            # doctest: +SKIP
>>> state = eng.start("game/game.tw-pddl", seed=0)            # doctest: +SKIP
>>> state["admissible_commands"][:2], state["extra.expert_plan"]   # doctest: +SKIP
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import random
import threading
from typing import Any, Iterator

import mementos.core as _mementos
import textworld
import textworld.envs.pddl.logic as _pddl_logic
from textworld.envs.pddl import PddlEnv

from alfworld.agents.environment.alfred_tw_env import (AlfredDemangler, AlfredExpert, AlfredExpertType,
                                                       AlfredInfos)

from . import planner
from .planner import PLANNER_LOCK
from .textcache import install_text_caches

__all__ = ["Engine", "TranslationCache", "install_translation_cache", "uninstall_translation_cache", "trim_interned",
           "INTERN_LIMIT"]

# A few games' worth of interned facts (one ALFWorld game interns ~2-5k): enough that a game being
# replayed keeps its sharing, small enough (~10 MB) that it is never the memory budget.
INTERN_LIMIT = 20_000


def trim_interned(limit: int | None = None) -> int:
    """Empty textworld's process-wide intern table of ``Signature``/``Proposition`` objects if it
    holds more than ``limit`` (default ``INTERN_LIMIT``) entries; returns how many were dropped.

    Safe for live games: both classes define ``__eq__``/``__hash__`` by value (textworld.logic), so
    an object built after the trim equals (but is not identical to) an older one still in a state.
    """
    limit = INTERN_LIMIT if limit is None else limit
    cache = _mementos._memento_cache
    size = len(cache)
    if size <= limit:
        return 0
    cache.clear()
    return size


class TranslationCache:
    """A bounded LRU memo of ``fast_downward.pddl2sas`` (a pure function of domain + problem text)."""

    def __init__(self, module: Any, maxsize: int = 32):
        self._module = module
        self.maxsize = maxsize
        self._memo: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __getattr__(self, name: str) -> Any:  # everything but pddl2sas is the real module
        return getattr(self._module, name)

    def pddl2sas(self, domain: str, problem: str, verbose: bool = False, optimize: bool = False):
        key = (hashlib.sha1(domain.encode()).hexdigest(), hashlib.sha1(problem.encode()).hexdigest(),
               bool(optimize))
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                self.hits += 1
                return self._memo[key]
        result = self._module.pddl2sas(domain, problem, verbose=verbose, optimize=optimize)
        with self._lock:
            self.misses += 1
            self._memo[key] = result
            while len(self._memo) > self.maxsize:
                self._memo.popitem(last=False)
        return result

    def clear(self) -> None:
        with self._lock:
            self._memo.clear()


def install_translation_cache(maxsize: int = 32) -> TranslationCache:
    """Route textworld's PDDL states through one process-wide ``TranslationCache`` (idempotent)."""
    current = _pddl_logic.fast_downward
    if isinstance(current, TranslationCache):
        current.maxsize = max(current.maxsize, maxsize)  # sized to the largest game pool asking
        return current
    cache = TranslationCache(current, maxsize=maxsize)
    _pddl_logic.fast_downward = cache
    return cache


def uninstall_translation_cache() -> None:
    """Back to fast-downward's own ``pddl2sas`` (for side-by-side measurements)."""
    current = _pddl_logic.fast_downward
    if isinstance(current, TranslationCache):
        _pddl_logic.fast_downward = current._module


class _SharedPddlEnv(PddlEnv):
    """TextWorld's ``PddlEnv`` on the process's shared planner (``planner.py``) instead of a private
    copy of ``libdownward.so`` per env (what leaked: copies are never unmapped)."""

    def __init__(self, infos: Any, lib: planner.PlannerHandle) -> None:
        textworld.Environment.__init__(self, infos)
        self.downward_lib = lib


def _locked(method):
    """Run an engine call under the process-wide planner lock (see ``planner``)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with PLANNER_LOCK:
            return method(self, *args, **kwargs)
    return locked


class Engine:
    """One ALFWorld game engine, reused across games (``start`` loads a new game into it).

    Every engine of a process plays on one shared fast-downward library (``planner.py``), and every
    call runs under ``PLANNER_LOCK``: engines may be used from several threads (each engine by one
    thread at a time). ``close()`` gives the library back; the last close frees its state.
    """

    REQUEST_INFOS = dict(won=True, admissible_commands=True, facts=True, extras=["gamefile", "expert_plan"])

    @_locked
    def __init__(self, text_cache: bool = True) -> None:
        install_translation_cache()
        if text_cache:
            install_text_caches()
        infos = textworld.EnvInfos(**{k: (list(v) if isinstance(v, list) else v)
                                      for k, v in self.REQUEST_INFOS.items()})
        self._planner = planner.acquire()
        self._pddl = _SharedPddlEnv(infos, self._planner)
        env = AlfredDemangler(self._pddl, shuffle=False)
        env = AlfredInfos(env)
        self._env = AlfredExpert(env, expert_type=AlfredExpertType.HANDCODED)
        self._rng_state: Any = None
        self.gamefile: str | None = None
        self.closed = False

    # ------------------------------------------------------------------ expert randomness
    @contextlib.contextmanager
    def _own_random(self) -> Iterator[None]:
        outer = random.getstate()
        random.setstate(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)

    # ------------------------------------------------------------------ game play
    @_locked
    def start(self, gamefile: str, seed: int = 0) -> dict[str, Any]:
        """Load ``gamefile`` (a ``game.tw-pddl`` next to its ``traj_data.json``) and reset it."""
        self._check_open()
        # Always load: a folder may have been rewritten since (the generator retries in place); the
        # translation cache makes a reload of an unchanged game cheap.
        trim_interned()
        self._env.load(gamefile)
        self.gamefile = gamefile
        return self.reset(seed)

    @_locked
    def reset(self, seed: int = 0) -> dict[str, Any]:
        self._check_open()
        self._rng_state = random.Random(seed).getstate()
        with self._own_random():
            return self._env.reset()

    @_locked
    def step(self, command: str) -> tuple[dict[str, Any], bool]:
        self._check_open()
        with self._own_random():
            state, _score, done = self._env.step(command)
        return state, bool(state["won"])

    @_locked
    def expert_rollout(self, history: list[str], seed: int, max_steps: int,
                       restore: bool = True) -> tuple[list[str], bool]:
        """The handcoded expert's full plan from the state reached by ``history``.

        Replays ``history`` from a fresh reset (the engine cannot snapshot fast-downward's state), lets
        the expert act until it wins or ``max_steps`` pass, then resets and replays ``history`` again
        so the engine is back where it was (``restore=False`` skips that). Returns (plan, won).
        """
        state = self.reset(seed)
        for command in history:
            state, _ = self.step(command)
        plan: list[str] = []
        won = bool(state["won"])
        while not won and len(plan) < max_steps:
            command = state["extra.expert_plan"][0]
            plan.append(command)
            state, won = self.step(command)
        if restore:
            self.reset(seed)
            for command in history:
                self.step(command)
        return plan, won

    # ------------------------------------------------------------------ lifetime
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the ALFWorld engine was closed")

    def close(self) -> None:
        """Give the shared planner back (the last engine's close frees its state); idempotent."""
        with PLANNER_LOCK:
            if self.closed:
                return
            self.closed = True
            if self._pddl is not None:
                self._pddl._pddl_state = None
                self._pddl.downward_lib = None
            self._env = None
            self._pddl = None
            self._planner.release()
