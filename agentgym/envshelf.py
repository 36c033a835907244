"""In-process envs kept between rollout runs: a healthy env goes back to a process-wide shelf keyed by
env id and constructor kwargs when its run ends, and the next run with the same id and kwargs (a
trainer's next update) resets it instead of building a new one. ``close_idle_envs()`` or interpreter
exit closes the shelf.

The key holds the kwargs pickled with ``pickle.dumps``: only compared, never loaded, so no data from
elsewhere is ever unpickled here; kwargs that cannot be pickled (a callable, a lock) get no key and
their run builds its own envs.
"""

from __future__ import annotations

import atexit
import gc
import pickle
import threading
from typing import Any, Iterable

from agentgym.wrappers import make

__all__ = ["RunEnvs", "shelf_key", "take", "put", "idle_envs", "close_idle_envs"]

_SHELF: dict[tuple, list[Any]] = {}  # (env id, pickled sorted kwargs) -> idle envs, ready for a reset
_SHELF_LOCK = threading.Lock()


def shelf_key(env_id: str, env_kwargs: dict[str, Any]) -> tuple | None:
    """The shelf key of an env id and kwargs; None for kwargs that cannot be keyed (never shared)."""
    try:
        return (env_id, pickle.dumps(sorted(env_kwargs.items())))
    except Exception:  # noqa: BLE001 - a callable or a lock in the kwargs: that run builds its own envs
        return None


def take(key: tuple) -> Any | None:
    """An idle env kept under ``key``, or None."""
    with _SHELF_LOCK:
        shelf = _SHELF.get(key)
        return shelf.pop() if shelf else None


def put(key: tuple, envs: Iterable[Any]) -> None:
    """Keep ``envs`` (healthy, their episodes over) for the next run with the same key."""
    with _SHELF_LOCK:
        _SHELF.setdefault(key, []).extend(envs)


class RunEnvs:
    """The in-process envs of one rollout run: a finished episode's healthy env serves the run's next
    episode; at the end of the run they go on the shelf (``keep=True``) or are closed. New envs are
    built with ``agentgym.wrappers.make``."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], keep: bool = True):
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs)
        self.key = shelf_key(env_id, self.env_kwargs) if keep else None
        self.idle: list[Any] = []

    def take(self) -> Any:
        """An idle env of this run, else of an earlier run with the same id and kwargs, else a new one."""
        if self.idle:
            return self.idle.pop()
        env = take(self.key) if self.key is not None else None
        return env if env is not None else make(self.env_id, **self.env_kwargs)

    def give_back(self, env: Any) -> None:
        """``env``'s episode ended cleanly: it serves the next one (``reset()`` starts it afresh)."""
        self.idle.append(env)

    def end_run(self) -> None:
        """The run is over: its idle envs wait for the next run, or are closed when not kept."""
        envs, self.idle = self.idle, []
        if self.key is not None:
            put(self.key, envs)
            return
        if envs:
            _close_all(envs)
            _free_cycles()  # after _close_all: it holds the last references


def _close_all(envs: list[Any]) -> None:
    """Close ``envs`` and empty the list (so no reference outlives the call)."""
    for env in envs:
        try:
            env.close()
        except Exception:  # noqa: BLE001 - closing is best effort; the others still close
            pass
    envs.clear()


def _free_cycles() -> None:
    """Collect the reference cycles of envs just closed now, not at the interpreter's next full
    collection: a closed remote session leaves CPython 3.11's asyncio transport in a cycle, and an
    engine's parser or grammar can be one. Left for later, every run's cycles pile up and their
    scattered frees fragment the heap: a client reopening 8 Echo sessions per 200 episodes grew
    1.5 MB per 1,000 episodes that way, and 0.15 with this (``benchmarks/soak.py``, mode churn)."""
    gc.collect()


def idle_envs(env_id: str | None = None) -> int:
    """How many in-process envs (of ``env_id``, or all) wait on the shelf for the next run."""
    with _SHELF_LOCK:
        return sum(len(envs) for key, envs in _SHELF.items() if env_id is None or key[0] == env_id)


def close_idle_envs(env_id: str | None = None) -> int:
    """Close the in-process envs kept between runs (of ``env_id``, or all); returns how many."""
    with _SHELF_LOCK:
        keys = [key for key in _SHELF if env_id is None or key[0] == env_id]
        envs = [env for key in keys for env in _SHELF.pop(key)]
    closed = len(envs)
    if envs:
        _close_all(envs)
        _free_cycles()
    return closed


atexit.register(close_idle_envs)
