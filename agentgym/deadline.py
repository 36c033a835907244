"""The step deadline: ``StepWatchdog`` enforces it from outside the step, ``StepTimeout`` is what it
raises, ``abort_text`` words a step that overran or raised (the error observation that both
``AgentEnv`` and the ``agentgym.wrappers.StepDeadline`` / ``StepErrors`` wrappers return).

- on the main thread, ``SIGALRM`` (``signal.setitimer``) interrupts the step, including a blocking
  ``time.sleep`` or socket read, unless some other code already owns ``SIGALRM``;
- on any other thread (or when ``SIGALRM`` is taken), a shared watchdog thread raises ``StepTimeout``
  in the stepping thread with ``PyThreadState_SetAsyncExc``; it is delivered at the next bytecode
  boundary, so a blocking call in that thread is interrupted only when it returns.

``StepTimeout`` derives from ``BaseException`` so a backend's ``except Exception`` cannot swallow
it, and it is raised again every second until the step gives up. C code that holds the GIL cannot be
interrupted (see ``agentgym.env``'s module docstring).
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import math
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["StepTimeout", "StepWatchdog", "DEFAULT_STEP_TIMEOUT_S", "Aborted", "call_with_deadline", "check_timeout",
           "where_raised", "safe_str"]

DEFAULT_STEP_TIMEOUT_S = 60.0  # a step deadline that no legitimate step of a built-in env comes near
_REFIRE_S = 1.0  # a StepTimeout that the step swallowed is raised again after this long


class StepTimeout(BaseException):
    """Raised inside a step that ran past its deadline, by the watchdog (never by the step itself).

    A ``BaseException`` (like ``KeyboardInterrupt``) so that ``except Exception`` in env or backend
    code does not swallow it."""


class _Guard:
    """One armed deadline: which thread it guards, whether it fired, whether the step is over."""

    __slots__ = ("thread_id", "fired", "done", "lock")

    def __init__(self, thread_id: int):
        self.thread_id = thread_id
        self.fired = 0  # how many times StepTimeout was raised in the thread
        self.done = False
        self.lock = threading.Lock()

    def fire(self) -> bool:
        """Raise StepTimeout asynchronously in the guarded thread; False once the step is over."""
        with self.lock:
            if self.done:
                return False
            self.fired += 1
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id),
                                                       ctypes.py_object(StepTimeout))
            return True

    def disarm(self) -> None:
        with self.lock:
            self.done = True
            if self.fired:  # clear a StepTimeout that was set but not yet delivered
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), None)


class _WatchdogThread:
    """One daemon thread per process that raises ``StepTimeout`` in threads whose step overran."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Guard]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._compact_at = 256

    def add(self, guard: _Guard, when: float) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="agentgym-step-watchdog", daemon=True)
                self._thread.start()
            if len(self._heap) >= self._compact_at:  # drop finished guards (they are popped lazily)
                self._heap = [e for e in self._heap if not e[2].done]
                heapq.heapify(self._heap)
                self._compact_at = max(256, 2 * len(self._heap))
            heapq.heappush(self._heap, (when, next(self._seq), guard))
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                when, _, guard = self._heap[0]
                now = time.monotonic()
                if when > now:
                    self._cond.wait(when - now)
                    continue
                heapq.heappop(self._heap)
                if guard.fire():  # raised again until the step gives up
                    heapq.heappush(self._heap, (now + _REFIRE_S, next(self._seq), guard))


_WATCHDOG = _WatchdogThread()


def _reset_watchdog_after_fork() -> None:  # the parent's thread and lock state do not survive fork
    global _WATCHDOG
    _WATCHDOG = _WatchdogThread()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_watchdog_after_fork)


class StepWatchdog:
    """A deadline for the code inside ``with StepWatchdog(seconds):``, enforced from outside it.

    On the main thread, when nobody else uses ``SIGALRM``, an interval timer raises ``StepTimeout``
    from the signal handler (this also interrupts ``time.sleep`` and blocking I/O); otherwise the
    process's watchdog thread raises it with ``PyThreadState_SetAsyncExc``. Either way it is raised
    again every second until the block exits, and ``fired`` tells afterwards whether the deadline
    passed. ``seconds=None`` arms nothing. C code holding the GIL cannot be interrupted (see the
    module docstring).

    >>> with StepWatchdog(5.0) as dog:
    ...     pass
    >>> dog.fired
    False
    """

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.mode: str | None = None  # "signal" | "thread" | None
        self._guard: _Guard | None = None
        self._previous_handler: Any = None

    @property
    def fired(self) -> bool:
        return bool(self._guard is not None and self._guard.fired)

    def __enter__(self) -> "StepWatchdog":
        if self.seconds is None:
            return self
        guard = self._guard = _Guard(threading.get_ident())
        if self._signal_available():
            self._previous_handler = signal.signal(signal.SIGALRM, self._on_alarm)
            self.mode = "signal"
            signal.setitimer(signal.ITIMER_REAL, self.seconds, _REFIRE_S)
        else:
            self.mode = "thread"
            _WATCHDOG.add(guard, time.monotonic() + self.seconds)
        return self

    @staticmethod
    def _signal_available() -> bool:
        if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
            return False
        if signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, signal.SIG_IGN, None):
            return False  # someone else's handler (pytest-timeout, an outer step): leave it alone
        return signal.getitimer(signal.ITIMER_REAL)[0] == 0.0

    def _on_alarm(self, signum: int, frame: Any) -> None:
        guard = self._guard
        if guard is not None and not guard.done:
            guard.fired += 1
            raise StepTimeout(f"step deadline of {self.seconds} s passed")

    def __exit__(self, *exc: Any) -> bool:
        if self._guard is None:
            return False
        while True:  # a StepTimeout may land while disarming; disarming is idempotent, so retry
            try:
                self._disarm()
                break
            except StepTimeout:
                continue
        return False

    def _disarm(self) -> None:
        if self.mode == "signal":
            self._guard.done = True  # from here on a late SIGALRM is ignored by _on_alarm
            signal.setitimer(signal.ITIMER_REAL, 0)
            if self._previous_handler is not None:
                signal.signal(signal.SIGALRM, self._previous_handler)
                self._previous_handler = None
        else:
            self._guard.disarm()


def where_raised(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame an exception passed through."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    frames = [f for f in frames if not (f.name == "_on_alarm" and f.filename == __file__)]
    if not frames:
        return "unknown location"
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"


def safe_str(value: Any, limit: int = 300) -> str:
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - e.g. an int too large to print
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def check_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"step_timeout_s must be a positive number of seconds or None, got {value!r}")
    return float(value)



@dataclass(frozen=True)
class Aborted:
    """A step that overran its deadline (``kind="step_timeout"``) or raised (``"step_error"``)."""

    kind: str
    elapsed: float  # seconds the step ran
    where: str  # ``file:line in function`` where it was interrupted or raised
    exc: BaseException | None = None  # the exception of a step_error

    def describe(self, limit_s: float | None) -> tuple[str, dict[str, Any]]:
        """The error observation and feedback payload; the episode is truncated."""
        if self.kind == "step_timeout":
            text = (f"Step aborted: the environment did not answer within step_timeout_s="
                    f"{limit_s:g} s (interrupted after {self.elapsed:.2f} s in {self.where}). "
                    "The episode is truncated.")
            payload: dict[str, Any] = {"type": self.kind, "limit_s": limit_s}
        else:
            text = (f"Step failed: {type(self.exc).__name__}: {safe_str(self.exc)} (in {self.where}). "
                    "The episode is truncated.")
            payload = {"type": self.kind, "exception": type(self.exc).__name__}
        payload.update(elapsed_s=round(self.elapsed, 6), where=self.where)
        return text, payload


def call_with_deadline(step: Callable[[], Any], seconds: float | None, *,
                       catch_errors: bool = True) -> tuple[Any, Aborted | None]:
    """``(step(), None)``, or ``(None, Aborted(...))`` when it overran ``seconds`` (``None``: no
    deadline) or, with ``catch_errors``, raised an ``Exception``. A ``StepTimeout`` of an outer
    deadline (a step inside a step) is not ours: it propagates."""
    started = time.monotonic()
    watchdog = StepWatchdog(seconds)
    try:
        try:
            with watchdog:
                value = step()
        except StepTimeout as exc:
            if not watchdog.fired:
                raise
            return None, Aborted("step_timeout", time.monotonic() - started, where_raised(exc))
        if watchdog.fired:  # the step swallowed StepTimeout and still returned: too late anyway
            return None, Aborted("step_timeout", time.monotonic() - started, "the step, which caught StepTimeout")
        return value, None
    except Exception as exc:  # noqa: BLE001 - an env step never raises on any text
        if not catch_errors:
            raise
        return None, Aborted("step_error", time.monotonic() - started, where_raised(exc), exc)
