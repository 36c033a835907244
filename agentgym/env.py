"""The multi-turn environment contract: ``AgentEnv``, a ``gymnasium.Env`` whose observations and
actions are text.

Every agentgym environment subclasses ``AgentEnv`` and implements two hooks:

- ``_reset(options) -> EnvReset``: open a task, return the first conversation and the tools;
- ``_step(action_text) -> EnvReply``: apply the raw model text, return what the environment said.

The base class does the bookkeeping that must be identical everywhere: step counting and the step
limit (``truncated``), the chat history, the feedback step indices, coercion of non-text actions
into error feedback, and the ``info`` dict. A malformed action is never an exception: the env
answers with an observation and a ``Feedback(kind="error")`` and the episode goes on.

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

import string
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
from gymnasium import spaces

from agentgym.types import Feedback, FeedbackKind, Message, json_safe

__all__ = ["AgentEnv", "EnvReset", "EnvReply", "UnicodeText", "MAX_TEXT_LENGTH"]

MAX_TEXT_LENGTH = 1 << 24  # 16 M characters: larger than any observation or action we produce


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

    Attributes subclasses may set: ``default_max_steps`` (the episode step limit when the
    constructor gets none).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 1}  # text has no frame rate; the checker wants > 0
    default_max_steps: ClassVar[int] = 50

    def __init__(self, *, max_steps: int | None = None, max_action_chars: int = 100_000,
                 render_mode: str | None = None):
        if max_steps is None:
            max_steps = self.default_max_steps
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.max_steps = max_steps
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
            action_text = action if isinstance(action, str) else repr(action)[:200]
        else:
            action_text = action
            reply = self._step(action)
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


class EchoEnv(AgentEnv):
    """The smallest real AgentEnv: repeat a word. Used in docs and as a user-env template."""

    WORDS = ("apple", "river", "stone", "cloud", "ember", "field", "glass", "honey")
    default_max_steps = 3

    def _reset(self, options: dict[str, Any]) -> EnvReset:
        word = options.get("word") or self.WORDS[int(self.np_random.integers(len(self.WORDS)))]
        if not isinstance(word, str) or not word:
            raise ValueError(f"options['word'] must be a non-empty string, got {word!r}")
        self._word = word
        return EnvReset(messages=[Message(role="user", content=f"Say the word: {word}")],
                        task={"id": f"echo-{word}", "word": word})

    def _step(self, action: str) -> EnvReply:
        said = action.strip().lower()
        if said == self._word:
            return EnvReply(messages=[Message(role="user", content="Correct.")], reward=1.0, terminated=True,
                            feedback=[Feedback(kind=FeedbackKind.OUTCOME, step=0, text="correct",
                                               payload={"success": True})])
        text = f"Wrong: you said {said[:80]!r}."
        return EnvReply(messages=[Message(role="user", content=text)],
                        feedback=[Feedback(kind=FeedbackKind.ERROR, step=0, text=text,
                                           payload={"expected": self._word})])

