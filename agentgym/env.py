"""The multi-turn environment contract: ``AgentEnv``, a ``gymnasium.Env`` whose observations and
actions are text.

Every agentgym environment subclasses ``AgentEnv`` and implements two hooks:

- ``_reset(options) -> EnvReset``: open a task, return the first conversation and the tools;
- ``_step(action_text) -> EnvReply``: apply the raw model text, return what the environment said.

The base class does the bookkeeping that must be identical everywhere: step counting and the step
limit (``truncated``), the chat history, the feedback step indices, coercion of non-text actions
into error feedback, and the ``info`` dict. A malformed action is never an exception: the env
answers with an observation and a ``Feedback(kind="error")`` and the episode goes on.

Model text is hostile (see DESIGN.md, "Trust boundaries"), so ``step`` never raises on any text,
and every step runs under a deadline, ``step_timeout_s`` (60 s by default; ``None`` disables it),
enforced from outside the step by a watchdog (``StepWatchdog``):

- on the main thread, ``SIGALRM`` (``signal.setitimer``) interrupts the step, including a blocking
  ``time.sleep`` or socket read, unless some other code already owns ``SIGALRM``;
- on any other thread (or when ``SIGALRM`` is taken), a shared watchdog thread raises ``StepTimeout``
  in the stepping thread with ``PyThreadState_SetAsyncExc``; it is delivered at the next bytecode
  boundary, so a blocking call in that thread is interrupted only when it returns.

``StepTimeout`` derives from ``BaseException`` so a backend's ``except Exception`` cannot swallow
it, and it is raised again every second until the step gives up. A step that overruns ends the
episode: ``truncated=True``, an observation and a ``Feedback(kind="error", payload={"type":
"step_timeout", ...})`` naming the limit and where the step was interrupted, and
``info["truncated_by"] == "step_timeout"``; the env is usable again after ``reset()``. An unexpected
exception inside ``_step`` is handled the same way (``payload["type"] == "step_error"``).

What no in-process watchdog can do: interrupt C code that holds the GIL (a catastrophic regex, a
huge big-integer power, a C extension's loop). Neither a signal handler nor an asynchronous
exception runs until that C call returns. That is why every parser and backend path in agentgym is
also bounded in its input (length caps, iterative parsing, depth limits, size-bounded snapshots):
the deadline is the second line of defence, not the first. Envs whose work cannot be bounded (model
code) run it in another process (AppWorld's sandbox), where a deadline can kill.

>>> import gymnasium as gym
>>> import agentgym
>>> env = gym.make("agentgym/Echo-v0")
>>> obs, info = env.reset(seed=0, options={"word": "apple"})
>>> obs
'Say the word: apple'
>>> obs, reward, terminated, truncated, info = env.step("apple")
>>> reward, terminated, truncated
(1.0, True, False)
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import math
import os
import signal
import string
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
from gymnasium import spaces

from agentgym.envspec import EnvDefaults
from agentgym.types import Feedback, FeedbackKind, Message, json_safe

__all__ = ["AgentEnv", "EnvReset", "EnvReply", "UnicodeText", "MAX_TEXT_LENGTH", "StepTimeout",
           "StepWatchdog", "DEFAULT_STEP_TIMEOUT_S"]

MAX_TEXT_LENGTH = 1 << 24  # 16 M characters: larger than any observation or action we produce
DEFAULT_STEP_TIMEOUT_S = 60.0  # a step deadline that no legitimate step of a built-in env comes near
_REFIRE_S = 1.0  # a StepTimeout that the step swallowed is raised again after this long

log = logging.getLogger(__name__)


class UnicodeText(spaces.Text):
    """A text space that contains every ``str`` up to ``max_length`` characters.

    ``gymnasium.spaces.Text`` checks membership against a finite character set, which cannot hold
    arbitrary model output or tool results (any Unicode code point may appear). Sampling still
    draws from a printable alphabet so ``check_env`` and random agents get readable strings.
    """

    def __init__(self, max_length: int = MAX_TEXT_LENGTH, *, min_length: int = 0, seed: Any = None):
        super().__init__(max_length=max_length, min_length=min_length,
                         charset=string.printable, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is None and probability is None:
            length = int(self.np_random.integers(self.min_length, min(self.max_length, 64) + 1))
            chars = self.np_random.choice(list(string.printable), size=length)
            return "".join(chars)
        return super().sample(mask=mask, probability=probability)

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"


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


def _where(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame an exception passed through."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    frames = [f for f in frames if not (f.name == "_on_alarm" and f.filename == __file__)]
    if not frames:
        return "unknown location"
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"


def _safe_str(value: Any, limit: int = 300) -> str:
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - e.g. an int too large to print
        text = f"<unprintable {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class EnvReset:
    """What a subclass's ``_reset`` returns."""

    messages: list[Message]  # the conversation the policy starts from (system + first user turn)
    task: dict[str, Any]  # JSON-safe description of the task (id, category, instruction, ...)
    tools: list[dict[str, Any]] = field(default_factory=list)  # OpenAI-style JSON schemas
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class EnvReply:
    """What a subclass's ``_step`` returns for one action."""

    messages: list[Message]  # what the environment says back (tool results, next user turn, ...)
    reward: float = 0.0
    terminated: bool = False
    feedback: list[Feedback] = field(default_factory=list)  # step index is filled in by the base
    info: dict[str, Any] = field(default_factory=dict)
    assistant: Message | None = None  # how the action enters the chat history (default: raw text)
    truncated: bool = False  # an env-specific limit (e.g. BFCL's 20 steps per user turn)


class AgentEnv(gym.Env[str, str]):
    """Base class of every agentgym environment (see the module docstring for the contract).

    Attributes subclasses may set: ``default_max_steps`` (the episode step limit when the
    constructor gets none) and ``defaults`` (``agentgym.envspec.EnvDefaults``: the constructor
    arguments of its train and eval envs, action length, what data it needs). ``tasks()`` lists the
    reset options of every task the env was built for, which is how a run picks its train and
    held-out evaluation tasks; an env that returns [] is sampled by seed.

    ``default_step_timeout_s`` is the step deadline when the constructor gets none;
    ``step_timeout_s`` (seconds, or ``None`` for no deadline) may also be changed on a live env.
    Subclasses may override ``_on_step_aborted(kind)`` to drop state that an interrupted step may
    have left half-updated (it runs before the truncated reply is returned; ``reset`` must work
    after it).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 1}  # text has no frame rate; the checker wants > 0
    default_max_steps: ClassVar[int] = 50
    default_step_timeout_s: ClassVar[float | None] = DEFAULT_STEP_TIMEOUT_S

    def __init__(self, *, max_steps: int | None = None, max_action_chars: int = 100_000,
                 render_mode: str | None = None, step_timeout_s: float | None | str = "default"):
        if max_steps is None:
            max_steps = self.default_max_steps
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if isinstance(step_timeout_s, str) and step_timeout_s == "default":
            step_timeout_s = self.default_step_timeout_s
        self.max_steps = max_steps
        self.step_timeout_s = _check_timeout(step_timeout_s)
        self.max_action_chars = max_action_chars
        self.render_mode = render_mode
        self.observation_space = UnicodeText()
        self.action_space = UnicodeText()
        self.messages: list[Message] = []
        self.tools: list[dict[str, Any]] = []
        self.task: dict[str, Any] = {}
        self.step_count = 0
        self._done = True
        self._last_observation = ""

    # ----------------------------------------------------------------- hooks for subclasses
    def tasks(self) -> list[dict[str, Any]]:
        """Reset options of each task of this env's split, in a stable order ([]: sampled by seed)."""
        return []

    def _reset(self, options: dict[str, Any]) -> EnvReset:  # pragma: no cover - abstract
        raise NotImplementedError

    def _step(self, action: str) -> EnvReply:  # pragma: no cover - abstract
        raise NotImplementedError

    # ----------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict or None, got {type(options).__name__}")
        opened = self._reset(dict(options or {}))
        self.messages = list(opened.messages)
        self.tools = opened.tools
        self.task = json_safe(opened.task)
        self.step_count = 0
        self._done = False
        observation = "\n".join(m.content for m in opened.messages if m.role != "system")
        self._last_observation = observation
        info = {"messages": list(self.messages), "tools": self.tools, "task": self.task, **opened.info}
        return observation, info

    def step(self, action: str):
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        index = self.step_count
        self.step_count += 1
        problem = self._reject_action(action)
        if problem is not None:
            reply = EnvReply(messages=[Message(role="user", content=problem)],
                             feedback=[Feedback(kind=FeedbackKind.ERROR, step=index, text=problem,
                                                payload={"type": "invalid_action"})])
            # stored clipped: a rejected action must not grow the history by its own size
            action_text = action if isinstance(action, str) else repr(action)[:200]
            if len(action_text) > self.max_action_chars:
                action_text = (action_text[:self.max_action_chars] + f"... [{len(action_text) - self.max_action_chars}"
                               " more characters not stored]")
        else:
            action_text = action
            reply = self._guarded_step(action)
        for fb in reply.feedback:
            fb.step = index
        self.messages.append(reply.assistant or Message(role="assistant", content=action_text))
        self.messages.extend(reply.messages)
        terminated = bool(reply.terminated)
        truncated = not terminated and (reply.truncated or self.step_count >= self.max_steps)
        self._done = terminated or truncated
        observation = "\n".join(m.content for m in reply.messages)
        self._last_observation = observation
        info = {"feedback": reply.feedback, "messages": list(self.messages), "new_messages": reply.messages,
                "tools": self.tools, "step": index, **reply.info}
        return observation, float(reply.reward), terminated, truncated, info

    def _guarded_step(self, action: str) -> EnvReply:
        """``_step`` under the deadline; an overrun or an exception becomes a truncated reply."""
        started = time.monotonic()
        watchdog = StepWatchdog(_check_timeout(self.step_timeout_s))
        try:
            try:
                with watchdog:
                    reply = self._step(action)
            except StepTimeout as exc:
                if not watchdog.fired:
                    raise  # an outer deadline (a step inside a step): not ours to handle
                return self._aborted("step_timeout", time.monotonic() - started, _where(exc))
            if watchdog.fired:  # the step swallowed StepTimeout and still returned: too late anyway
                return self._aborted("step_timeout", time.monotonic() - started,
                                     "the step, which caught StepTimeout")
            if not isinstance(reply, EnvReply):
                raise TypeError(f"{type(self).__name__}._step returned {type(reply).__name__}, not EnvReply")
            return reply
        except Exception as exc:  # noqa: BLE001 - step() never raises on any text
            log.warning("%s step %d failed; the episode is truncated", type(self).__name__,
                        self.step_count - 1, exc_info=True)
            return self._aborted("step_error", time.monotonic() - started, _where(exc), exc)

    def _aborted(self, kind: str, elapsed: float, where: str, exc: BaseException | None = None) -> EnvReply:
        if kind == "step_timeout":
            text = (f"Step aborted: the environment did not answer within step_timeout_s="
                    f"{self.step_timeout_s:g} s (interrupted after {elapsed:.2f} s in {where}). "
                    "The episode is truncated.")
            payload: dict[str, Any] = {"type": kind, "limit_s": self.step_timeout_s}
        else:
            text = (f"Step failed: {type(exc).__name__}: {_safe_str(exc)} (in {where}). "
                    "The episode is truncated.")
            payload = {"type": kind, "exception": type(exc).__name__}
        payload.update(elapsed_s=round(elapsed, 6), where=where)
        try:
            self._on_step_aborted(kind)
        except Exception:  # noqa: BLE001 - cleanup is best effort; reset() starts afresh
            log.warning("%s._on_step_aborted failed", type(self).__name__, exc_info=True)
        return EnvReply(messages=[Message(role="user", content=text)], truncated=True,
                        feedback=[Feedback(kind=FeedbackKind.ERROR, step=0, text=text, payload=payload)],
                        info={"truncated_by": kind, "step_error": text})

    def _on_step_aborted(self, kind: str) -> None:
        """Hook: an interrupted or failed step may have left state half-updated (default: nothing)."""

    def _reject_action(self, action: Any) -> str | None:
        """Why an action cannot even reach the parser (wrong type, too long), or None."""
        if not isinstance(action, str):
            return f"Invalid action: expected text, got {type(action).__name__}."
        if len(action) > self.max_action_chars:
            return (f"Invalid action: {len(action)} characters exceed the limit of "
                    f"{self.max_action_chars}.")
        return None

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_observation
        return None


def _check_timeout(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"step_timeout_s must be a positive number of seconds or None, got {value!r}")
    return float(value)


class EchoEnv(AgentEnv):
    """The smallest real AgentEnv: repeat a word. Used in docs and as a user-env template.

    ``reference=True`` adds a ``reference`` feedback record to every step (the expected word, in the
    ``next_command`` / ``plan`` shape ALFWorld's expert uses), so reference-based hindsight and the
    held-out reference log-prob work on it: ``benchmarks/learning.py`` uses it as its learnable task.
    """

    WORDS = ("apple", "river", "stone", "cloud", "ember", "field", "glass", "honey")
    default_max_steps = 3
    defaults = EnvDefaults(max_new_tokens=8, reference_action=lambda payload: (
        payload["plan"][0] if payload.get("plan_scope") == "episode_start" and payload.get("plan") else None))

    def __init__(self, *, reference: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.reference = bool(reference)

    def tasks(self) -> list[dict[str, Any]]:
        return [{"word": w} for w in self.WORDS]

    def _reset(self, options: dict[str, Any]) -> EnvReset:
        word = options.get("word") or self.WORDS[int(self.np_random.integers(len(self.WORDS)))]
        if not isinstance(word, str) or not word:
            raise ValueError(f"options['word'] must be a non-empty string, got {word!r}")
        self._word = word
        return EnvReset(messages=[Message(role="user", content=f"Say the word: {word}")],
                        task={"id": f"echo-{word}", "word": word})

    def _step(self, action: str) -> EnvReply:
        said = action.strip().lower()
        reference = [Feedback(kind=FeedbackKind.REFERENCE, step=0, text=self._word,
                              payload={"next_command": self._word, "plan": [self._word],
                                       "plan_scope": "episode_start"})] if self.reference else []
        if said == self._word:
            return EnvReply(messages=[Message(role="user", content="Correct.")], reward=1.0, terminated=True,
                            feedback=[Feedback(kind=FeedbackKind.OUTCOME, step=0, text="correct",
                                               payload={"success": True}), *reference])
        text = f"Wrong: you said {said[:80]!r}."
        return EnvReply(messages=[Message(role="user", content=text)],
                        feedback=[Feedback(kind=FeedbackKind.ERROR, step=0, text=text,
                                           payload={"expected": self._word}), *reference])

