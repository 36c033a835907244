"""The multi-turn environment contract: ``AgentEnv``, a ``gymnasium.Env`` whose observations and
actions are text.

Every agentgym environment subclasses ``AgentEnv`` and implements two hooks:

- ``_reset(options) -> EnvReset``: open a task, return the first conversation and the tools;
- ``_step(action_text) -> EnvReply``: apply the raw model text, return what the environment said.

The base class does the bookkeeping that must be identical everywhere: step counting and the step
limit (``truncated``), the chat history, the feedback step indices, coercion of non-text actions
into error feedback, and the ``info`` dict. A malformed action is never an exception: the env
answers with an observation and a ``Feedback(kind="error")`` and the episode goes on.

Model text is hostile (see ARCHITECTURE.md, "Trust boundaries"), so ``step`` never raises on any text,
and every step runs under a deadline, ``step_timeout_s`` (60 s by default; ``None`` disables it),
enforced from outside the step by a watchdog (``StepWatchdog``, ``agentgym.deadline``: ``SIGALRM``
on the main thread, an asynchronous ``StepTimeout`` on any other). A step that overruns ends the
episode: ``truncated=True``, an observation and a ``Feedback(kind="error", payload={"type":
"step_timeout", ...})`` naming the limit and where the step was interrupted, and
``info["truncated_by"] == "step_timeout"``; the env is usable again after ``reset()``. An unexpected
exception inside ``_step`` is handled the same way (``payload["type"] == "step_error"``). A plain
``gymnasium.Env`` built through agentgym (``agentgym.wrappers.make``: the rollout runner, the env
pool) gets the same deadline, error handling and a step limit from gymnasium wrappers.

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

import logging
import string
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
from gymnasium import spaces

from agentgym.deadline import DEFAULT_STEP_TIMEOUT_S, Aborted, StepTimeout, StepWatchdog, call_with_deadline, check_timeout
from agentgym.envspec import DEFAULT_MAX_STEPS, EnvDefaults, declared_defaults
from agentgym.types import Feedback, FeedbackKind, Message, json_safe

__all__ = ["AgentEnv", "EnvReset", "EnvReply", "UnicodeText", "MAX_TEXT_LENGTH", "StepTimeout",
           "StepWatchdog", "DEFAULT_STEP_TIMEOUT_S"]

MAX_TEXT_LENGTH = 1 << 24  # 16 M characters: larger than any observation or action we produce

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

    An env declares its metadata in one place, the class attribute ``defaults``
    (``agentgym.envspec.EnvDefaults``): its step limit (``max_steps``; ``env_max_steps`` where the
    env's own limit differs from a run's), the constructor arguments of its train and eval envs,
    action length, what data it needs. ``tasks()`` lists the
    reset options of every task the env was built for, which is how a run picks its train and
    held-out evaluation tasks; an env that returns [] is sampled by seed. (The older spelling, a class
    attribute ``default_max_steps``, is folded into ``defaults`` when the class is defined.)

    ``default_step_timeout_s`` is the step deadline when the constructor gets none;
    ``step_timeout_s`` (seconds, or ``None`` for no deadline) may also be changed on a live env.
    Subclasses may override ``_on_step_aborted(kind)`` to drop state that an interrupted step may
    have left half-updated (it runs before the truncated reply is returned; ``reset`` must work
    after it).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 1}  # text has no frame rate; the checker wants > 0
    defaults: ClassVar[EnvDefaults] = EnvDefaults(max_steps=DEFAULT_MAX_STEPS)
    default_step_timeout_s: ClassVar[float | None] = DEFAULT_STEP_TIMEOUT_S

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        cls.defaults = declared_defaults(cls)

    @property
    def default_max_steps(self) -> int:
        """The env's own step limit when its constructor gets none (from ``defaults``)."""
        return self.defaults.env_step_limit

    def __init__(self, *, max_steps: int | None = None, max_action_chars: int = 100_000,
                 render_mode: str | None = None, step_timeout_s: float | None | str = "default"):
        if max_steps is None:
            max_steps = self.defaults.env_step_limit
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        if isinstance(step_timeout_s, str) and step_timeout_s == "default":
            step_timeout_s = self.default_step_timeout_s
        self.max_steps = max_steps
        self.step_timeout_s = check_timeout(step_timeout_s)
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
        reply, aborted = call_with_deadline(lambda: self._checked_step(action), check_timeout(self.step_timeout_s))
        if aborted is None:
            return reply
        if aborted.kind == "step_error":
            log.warning("%s step %d failed; the episode is truncated", type(self).__name__,
                        self.step_count - 1, exc_info=aborted.exc)
        return self._aborted(aborted)

    def _checked_step(self, action: str) -> EnvReply:
        reply = self._step(action)
        if not isinstance(reply, EnvReply):
            raise TypeError(f"{type(self).__name__}._step returned {type(reply).__name__}, not EnvReply")
        return reply

    def _aborted(self, aborted: Aborted) -> EnvReply:
        text, payload = aborted.describe(self.step_timeout_s)
        try:
            self._on_step_aborted(aborted.kind)
        except Exception:  # noqa: BLE001 - cleanup is best effort; reset() starts afresh
            log.warning("%s._on_step_aborted failed", type(self).__name__, exc_info=True)
        return EnvReply(messages=[Message(role="user", content=text)], truncated=True,
                        feedback=[Feedback(kind=FeedbackKind.ERROR, step=0, text=text, payload=payload)],
                        info={"truncated_by": aborted.kind, "step_error": text})

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

