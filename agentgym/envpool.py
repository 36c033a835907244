"""Environment worker pools: episodes step in N spawned worker processes, so a rollout uses every core
while the policy generates for other episodes (``env.workers = N``, ``RolloutRunner(workers=N)``).

Each worker holds the envs of the episodes assigned to it (an episode stays on its worker from reset
to the end; finished envs are kept for the next episode, as the in-process loop reuses them). The
rollout loop sends ``reset`` / ``step`` requests without waiting and collects the replies as they
come (``EnvPool.poll``), so generation overlaps with env steps.

A worker that dies (killed, segfault, out of memory) takes its envs with it: every episode it held
gets a failure naming the cause (``env worker 1 (pid 4242) died: killed by signal SIGKILL``), the
rollout records those episodes as truncated with that error, and a fresh worker is spawned for the
episodes that follow. A worker that cannot even start (the env id or a plugin does not import) is an
``EnvWorkerError`` at once, never an endless respawn loop.

``RolloutRunner(workers=N)`` (and so ``env.workers``) takes its pool from ``shared_pool``: the
workers outlive the run and serve the next one with the same env id, kwargs and N, their envs and
caches warm (``close_shared_pools()`` or interpreter exit stops them).

Workers are started with the ``spawn`` method (no fork of a process holding threads, CUDA or model
weights); the env's gymnasium ``EnvSpec`` travels to them, so envs registered in a test module, a
script passed with ``--import`` or an installed plugin work as in-process. Envs are built with
``agentgym.wrappers.make``, so step deadlines, step limits and step errors are handled inside the
worker (by ``AgentEnv`` itself, or by the wrappers a plain gymnasium env gets); workers ignore SIGINT
(the parent stops them) and exit when their parent goes away.

>>> import agentgym
>>> with EnvPool("agentgym/Echo-v0", workers=1) as pool:
...     pool.reset("ep", seed=0, options={"word": "apple"})
...     [(key, ok)] = [(e.key, e.ok) for e in pool.poll(timeout=60)]
...     pool.step("ep", "apple")
...     [event] = pool.poll(timeout=60)
>>> key, ok, event.value[1:3]
('ep', True, (1.0, True))
"""

from __future__ import annotations

import atexit
import importlib.util
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait as wait_any
from typing import Any

import gymnasium as gym

from agentgym.registration import register_envs
from agentgym.wrappers import make

__all__ = ["EnvPool", "EnvEvent", "RemoteError", "EnvWorkerError", "WorkerDied", "shared_pool", "close_shared_pools"]


class EnvWorkerError(RuntimeError):
    """The pool cannot run at all (a worker failed to start: the env or a plugin does not import)."""


class RemoteError(Exception):
    """An exception raised by an env inside a worker, carried back by name, message and traceback."""

    def __init__(self, type_name: str, message: str, remote_traceback: str = ""):
        super().__init__(message)
        self.type_name, self.remote_traceback = type_name, remote_traceback


class WorkerDied(RemoteError):
    """The worker holding the episode's env died; ``message`` says how."""

    def __init__(self, message: str):
        super().__init__("WorkerDied", message)


@dataclass
class EnvEvent:
    """One reply: ``key`` (the episode), ``op`` (reset | step), ``ok``; ``value`` the env's return
    value (reset: (obs, info); step: (obs, reward, terminated, truncated, info)) or a
    ``RemoteError``; ``seconds`` spent in the env inside the worker."""

    key: str
    op: str
    ok: bool
    value: Any
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------ the worker
class _Encoded(bytes):
    """An env's return value pickled inside the worker; the pool unpickles it per reply."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _import_plugin_files(files: list[tuple[str, str]]) -> None:
    for name, path in files:
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def _worker_main(index: int, requests: Any, results: Any, spec_bytes: bytes, plugin_files: list,
                 env_kwargs: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the pool; Ctrl-C is for it
    parent = os.getppid()
    try:
        register_envs()
        _import_plugin_files(plugin_files)
        spec = pickle.loads(spec_bytes)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which stops the run
        results.send(("", "start", False, ("startup", f"{type(exc).__name__}: {exc}", traceback.format_exc()), 0.0))
        return
    results.send(("", "ready", True, os.getpid(), 0.0))
    envs: dict[str, Any] = {}
    idle: list[Any] = []

    def close(env: Any) -> None:
        try:
            env.close()
        except Exception:  # noqa: BLE001 - a broken env must not take the worker down
            pass

    try:
        while True:
            try:
                msg = requests.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # orphaned: the rollout is gone
                    return
                continue
            if msg is None:
                return
            op, key, payload = msg
            if op == "release":  # the episode ended cleanly: keep its env for the next one
                env = envs.pop(key, None)
                if env is not None:
                    idle.append(env)
                continue
            if op == "close":  # the episode failed: its env is not trusted again
                env = envs.pop(key, None)
                if env is not None:
                    close(env)
                continue
            started = time.perf_counter()
            try:
                if op == "reset":
                    env = envs.pop(key, None) or (idle.pop() if idle else make(spec, **env_kwargs))
                    envs[key] = env
                    value = env.reset(seed=payload[0], options=payload[1])
                elif op == "step":
                    if key not in envs:
                        raise KeyError(f"no env for episode {key!r} on env worker {index}")
                    value = envs[key].step(payload)
                else:
                    raise ValueError(f"unknown env worker request {op!r}")
                reply = (key, op, True, value, time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - the env failed: report it, drop the env
                env = envs.pop(key, None)
                if env is not None:
                    close(env)
                reply = (key, op, False, (type(exc).__name__, str(exc), traceback.format_exc(limit=-3)),
                         time.perf_counter() - started)
            try:
                if reply[2]:  # pickled on its own: a value the rollout process cannot unpickle then fails
                    # only its episode (the key and op travel outside it), never the whole pool
                    reply = (*reply[:3], _Encoded(pickle.dumps(reply[3], protocol=pickle.HIGHEST_PROTOCOL)), reply[4])
                results.send(reply)
            except Exception as exc:  # noqa: BLE001 - e.g. an info dict holding an unpicklable object
                env = envs.pop(key, None)
                if env is not None:
                    close(env)
                results.send((key, op, False, (type(exc).__name__, f"the env's {op} result could not be sent "
                                               f"back from the worker: {exc}", ""), time.perf_counter() - started))
    finally:
        for env in [*envs.values(), *idle]:
            close(env)


# ------------------------------------------------------------------------------------------ the pool
class _Worker:
    def __init__(self, pool: "EnvPool", index: int):
        ctx = pool._ctx
        self.index = index
        self.requests = ctx.Queue()
        self.results, child_end = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=_worker_main, name=f"agentgym-env-worker-{index}", daemon=True,
                                   args=(index, self.requests, child_end, pool._spec_bytes, pool._plugin_files,
                                         pool.env_kwargs))
        self.process.start()
        child_end.close()
        self.ready = False
        self.early_deaths = 0  # consecutive deaths of this slot's workers before they were ready
        self.keys: dict[str, str | None] = {}  # episode key -> op in flight (None: waiting)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def stop(self, timeout: float) -> None:
        try:
            self.requests.put(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.requests.close()
        self.requests.cancel_join_thread()
        self.results.close()


def _plugin_files_for(spec: gym.envs.registration.EnvSpec) -> list[tuple[str, str]]:
    """Every module imported from a file path (``--import my_envs.py``, ``import_plugins``): the
    worker imports them the same way before it unpickles the spec, whose entry point may live in one
    (or need its registrations)."""
    entry = spec.entry_point
    module = sys.modules.get(getattr(entry, "__module__", "") or "")
    files = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("agentgym_plugin_") and getattr(mod, "__file__", None):
            files.append((name, mod.__file__))
    if module is not None and module.__name__ == "__main__" and getattr(module, "__file__", None):
        raise EnvWorkerError(f"env {spec.id!r} is registered from the __main__ script ({module.__file__}); "
                             "env workers cannot import it: register it in an importable module, or pass "
                             "the script with --import / import_plugins")
    return files


class EnvPool:
    """``workers`` spawned processes running envs of ``env_id`` (built with ``env_kwargs``).

    ``reset(key, seed, options)`` places episode ``key`` on the least-loaded worker; ``step(key,
    action)`` sends it an action; ``release(key)`` / ``close_env(key)`` end it (env kept for reuse /
    dropped); ``poll(timeout)`` returns the replies that have arrived (``EnvEvent``), waiting up to
    ``timeout`` seconds (None: until at least one) for the first. A dead worker's episodes come back
    as failed events (``WorkerDied``) and the worker is respawned (``respawns`` counts them).
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None = None, workers: int = 1, *,
                 start_method: str = "spawn"):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if env_id not in gym.registry:
            raise gym.error.NameNotFound(f"environment {env_id!r} is not registered")
        spec = gym.spec(env_id)
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        self._plugin_files = _plugin_files_for(spec)
        try:
            self._spec_bytes = pickle.dumps(spec)
            pickle.dumps(self.env_kwargs)
        except Exception as exc:  # noqa: BLE001
            raise EnvWorkerError(f"env {env_id!r} cannot be sent to env workers (its spec or kwargs do not "
                                 f"pickle: {exc}); use workers=0") from exc
        self._ctx = mp.get_context(start_method)
        self._workers = [_Worker(self, i) for i in range(workers)]
        self._where: dict[str, _Worker] = {}
        self._backlog: list[EnvEvent] = []
        self.respawns = 0
        self.closed = False

    # ---------------------------------------------------------------- requests
    @property
    def workers(self) -> list[_Worker]:
        return list(self._workers)

    def __len__(self) -> int:
        return len(self._workers)

    def worker_of(self, key: str) -> int | None:
        worker = self._where.get(key)
        return None if worker is None else worker.index

    def _send(self, worker: _Worker, msg: tuple) -> None:
        try:
            worker.requests.put(msg)
        except (OSError, ValueError) as exc:  # the queue of a worker that is being torn down
            self._backlog.append(EnvEvent(msg[1], msg[0], False, WorkerDied(f"env worker {worker.index}: {exc}")))

    def reset(self, key: str, seed: int | None, options: dict[str, Any] | None) -> None:
        self._check_open()
        if key in self._where:
            worker = self._where[key]
        else:
            worker = min(self._workers, key=lambda w: (len(w.keys), w.index))
            self._where[key] = worker
        worker.keys[key] = "reset"
        self._send(worker, ("reset", key, (seed, dict(options or {}))))

    def step(self, key: str, action: str) -> None:
        self._check_open()
        worker = self._where.get(key)
        if worker is None:
            raise KeyError(f"episode {key!r} is not on any env worker (reset it first)")
        worker.keys[key] = "step"
        self._send(worker, ("step", key, action))

    def release(self, key: str) -> None:
        self._end(key, "release")

    def close_env(self, key: str) -> None:
        self._end(key, "close")

    def _end(self, key: str, op: str) -> None:
        worker = self._where.pop(key, None)
        if worker is not None and not self.closed:
            worker.keys.pop(key, None)
            self._send(worker, (op, key, None))

    # ---------------------------------------------------------------- replies
    def poll(self, timeout: float | None = None) -> list[EnvEvent]:
        """The replies that arrived; waits up to ``timeout`` seconds (None: forever) for the first."""
        self._check_open()
        events, self._backlog = self._backlog, []
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for worker in list(self._workers):
                events.extend(self._drain(worker))
            if events or not any(op is not None for w in self._workers for op in w.keys.values()):
                return events  # something arrived, or nothing is in flight that could arrive
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return events
            waitables = [w.results for w in self._workers] + [w.process.sentinel for w in self._workers]
            wait_any(waitables, timeout=left)

    def _drain(self, worker: _Worker) -> list[EnvEvent]:
        events = []
        try:
            while worker.results.poll():
                events.extend(self._handle(worker, worker.results.recv()))
        except (EOFError, OSError):
            pass  # the worker's end is closed: it died (checked below)
        if not worker.process.is_alive():
            try:  # replies it managed to send before dying still count
                while worker.results.poll():
                    events.extend(self._handle(worker, worker.results.recv()))
            except (EOFError, OSError):
                pass
            events.extend(self._died(worker))
        return events

    def _handle(self, worker: _Worker, reply: tuple) -> list[EnvEvent]:
        key, op, ok, value, seconds = reply
        if ok and isinstance(value, _Encoded):
            try:
                value = pickle.loads(value)
            except Exception as exc:  # noqa: BLE001 - e.g. a class whose __setstate__ / __init__ fails here
                ok = False
                value = ("UndecodableReply", f"env worker {worker.index}: the env's {op} result could not be decoded "
                         f"in the rollout process ({type(exc).__name__}: {str(exc)[:300]}); the episode was "
                         "truncated", "")
                if worker.keys.get(key) == op:
                    self._send(worker, ("close", key, None))  # the worker drops the env it still holds
        if op == "ready":
            worker.ready = True
            return []
        if op == "start":
            raise EnvWorkerError(f"env worker {worker.index} for {self.env_id!r} could not start: {value[1]}\n"
                                 f"{value[2]}")
        if worker.keys.get(key) != op:
            return []  # a reply for an episode that was already ended (e.g. by a time limit)
        worker.keys[key] = None
        if not ok:
            self._where.pop(key, None)
            worker.keys.pop(key, None)
            value = RemoteError(*value)
        return [EnvEvent(key, op, ok, value, seconds)]

    def _died(self, worker: _Worker) -> list[EnvEvent]:
        code = worker.process.exitcode
        cause = (f"env worker {worker.index} (pid {worker.pid}) died: {_describe_exit(code)}; "
                 "its episodes were truncated and the worker respawned")
        events = [EnvEvent(key, op or "step", False, WorkerDied(cause)) for key, op in worker.keys.items()]
        for key in worker.keys:
            self._where.pop(key, None)
        worker.keys.clear()
        early = 0 if worker.ready else worker.early_deaths + 1
        worker.stop(timeout=0.1)
        if early >= 2:  # twice in a row before serving anything: it cannot start here
            raise EnvWorkerError(f"env worker {worker.index} for {self.env_id!r} died twice before it started "
                                 f"({_describe_exit(code)})")
        fresh = _Worker(self, worker.index)
        fresh.early_deaths = early
        self._workers[worker.index] = fresh
        self.respawns += 1
        return events

    # ---------------------------------------------------------------- lifetime
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("the env pool was closed")

    def close(self, timeout: float = 10.0) -> None:
        """Stop every worker (their envs are closed inside them); idempotent."""
        if self.closed:
            return
        self.closed = True
        for worker in self._workers:
            try:
                worker.requests.put(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.stop(timeout)
        self._where.clear()

    def __enter__(self) -> "EnvPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close(timeout=1.0)
        except Exception:  # noqa: BLE001
            pass


# ------------------------------------------------------------------------------------------ shared pools
_SHARED: dict[tuple, EnvPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(env_id: str, env_kwargs: dict[str, Any] | None, workers: int) -> EnvPool:
    """The process-wide pool of ``workers`` workers for ``env_id`` built with ``env_kwargs``: created
    on first use, then reused by every later rollout with the same three (a trainer's updates), so
    worker start-up and the envs' warm caches (ALFWorld's plans and parsed templates, say) are paid
    once, not per update. ``close_shared_pools()`` stops them; so does interpreter exit."""
    try:
        key = (env_id, pickle.dumps(sorted(dict(env_kwargs or {}).items())), workers)
    except Exception as exc:  # noqa: BLE001
        raise EnvWorkerError(f"env kwargs of {env_id!r} cannot be sent to env workers: {exc}") from exc
    with _SHARED_LOCK:
        pool = _SHARED.get(key)
        if pool is None or pool.closed:
            pool = _SHARED[key] = EnvPool(env_id, env_kwargs, workers)
        return pool


def close_shared_pools() -> None:
    """Stop every shared pool's workers (idempotent)."""
    with _SHARED_LOCK:
        pools = list(_SHARED.values())
        _SHARED.clear()
    for pool in pools:
        pool.close()


atexit.register(close_shared_pools)

