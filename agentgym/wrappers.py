"""The step guarantees of an agentgym env, as gymnasium wrappers any env gets when agentgym builds it.

``AgentEnv`` enforces them itself (a step deadline, a step limit, an exception turned into a
truncated step with an error observation; see ``agentgym.env``). A plain ``gymnasium.Env`` gets the
same three from these wrappers when it is built through ``make`` here, which is what the rollout
runner and the env worker pool use:

- ``StepDeadline``: the step runs under ``agentgym.deadline.StepWatchdog``; past ``step_timeout_s``
  it is interrupted and the step comes back truncated, ``info["truncated_by"] == "step_timeout"``;
- ``StepErrors``: an exception inside ``step`` comes back as a truncated step whose observation
  names it, ``info["truncated_by"] == "step_error"``;
- ``StepLimit``: gymnasium's ``TimeLimit`` that also says why it truncated
  (``info["truncated_by"] == "max_steps=N"``).

A truncated error step's ``info`` carries what the rollout reads from an ``AgentEnv``: ``step_error``
(the text), ``feedback`` (one ``Feedback(kind="error")`` with the ``step_timeout`` / ``step_error``
payload) and ``new_messages``.

>>> import gymnasium as gym
>>> class Broken(gym.Env):
...     observation_space = action_space = gym.spaces.Discrete(2)
...     def reset(self, *, seed=None, options=None):
...         return 0, {}
...     def step(self, action):
...         raise ConnectionError("backend down")
>>> env = guard(Broken())
>>> _ = env.reset(seed=0)
>>> obs, reward, terminated, truncated, info = env.step(1)
>>> obs.split(" (in ")[0], truncated, info["truncated_by"]
('Step failed: ConnectionError: backend down', True, 'step_error')
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec, load_env_creator
from gymnasium.wrappers import TimeLimit

from agentgym.deadline import DEFAULT_STEP_TIMEOUT_S, Aborted, call_with_deadline, check_timeout, where_raised
from agentgym.env import AgentEnv
from agentgym.envspec import DEFAULT_MAX_STEPS, EnvDefaults, resolve_env
from agentgym.types import Feedback, FeedbackKind, Message

__all__ = ["StepDeadline", "StepErrors", "StepLimit", "guard", "make", "WRAPPER_KWARGS"]

WRAPPER_KWARGS = ("step_timeout_s", "max_steps")  # what ``make`` gives the wrappers of a plain env
log = logging.getLogger(__name__)


class _StepGuard(gym.Wrapper):
    """Counts the steps of an episode and turns an ``Aborted`` step into a truncated one."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._steps = 0

    def reset(self, **kwargs: Any):
        self._steps = 0
        return super().reset(**kwargs)

    def _truncated(self, aborted: Aborted, limit_s: float | None) -> tuple:
        text, payload = aborted.describe(limit_s)
        info = {"truncated_by": aborted.kind, "step_error": text, "new_messages": [Message(role="user", content=text)],
                "feedback": [Feedback(kind=FeedbackKind.ERROR, step=self._steps - 1, text=text, payload=payload)]}
        return text, 0.0, False, True, info


class StepDeadline(_StepGuard):
    """A step that runs past ``step_timeout_s`` seconds (``None``: no deadline) is interrupted and
    comes back truncated with an error observation (see the module docstring)."""

    def __init__(self, env: gym.Env, step_timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S):
        super().__init__(env)
        self.step_timeout_s = check_timeout(step_timeout_s)

    def step(self, action: Any):
        self._steps += 1
        result, aborted = call_with_deadline(lambda: self.env.step(action), check_timeout(self.step_timeout_s),
                                             catch_errors=False)
        return result if aborted is None else self._truncated(aborted, self.step_timeout_s)


class StepErrors(_StepGuard):
    """An exception inside ``step`` comes back as a truncated step with an error observation."""

    def step(self, action: Any):
        self._steps += 1
        started = time.monotonic()
        try:
            return self.env.step(action)
        except Exception as exc:  # noqa: BLE001 - a step never raises on any action
            log.warning("%s step %d failed; the episode is truncated", type(self.unwrapped).__name__,
                        self._steps - 1, exc_info=exc)
            return self._truncated(Aborted("step_error", time.monotonic() - started, where_raised(exc), exc), None)


class StepLimit(TimeLimit):
    """Gymnasium's ``TimeLimit``, plus ``info["truncated_by"]`` on the step it truncates."""

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = super().step(action)
        if truncated and not terminated and self._elapsed_steps >= self._max_episode_steps:
            info = {"truncated_by": f"max_steps={self._max_episode_steps}", **info}
        return obs, reward, terminated, truncated, info


def _has_time_limit(env: gym.Env) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, TimeLimit):
            return True
        env = env.env
    return False


def guard(env: gym.Env, *, step_timeout_s: float | None | str = "default", max_steps: int | None = None) -> gym.Env:
    """``env`` with a step deadline, errors turned into truncation and a step limit. An ``AgentEnv``
    enforces them itself: it comes back as it is, with a given deadline or limit set on it. A plain
    env's limit is ``max_steps``, else a ``TimeLimit`` it already has (its registration's
    ``max_episode_steps``), else its class's ``defaults.max_steps``, else ``DEFAULT_MAX_STEPS``."""
    inner = env.unwrapped
    if isinstance(inner, AgentEnv):
        if step_timeout_s != "default":
            inner.step_timeout_s = check_timeout(step_timeout_s)
        if max_steps is not None:
            inner.max_steps = max_steps
        return env
    timeout = DEFAULT_STEP_TIMEOUT_S if step_timeout_s == "default" else step_timeout_s
    wrapped = StepErrors(StepDeadline(env, timeout))
    if max_steps is None and _has_time_limit(env):
        return wrapped
    declared = getattr(type(inner), "defaults", None)
    declared = declared if isinstance(declared, EnvDefaults) else EnvDefaults()
    return StepLimit(wrapped, max_steps or declared.max_steps or DEFAULT_MAX_STEPS)


def make(env: str | EnvSpec, **kwargs: Any) -> gym.Env:
    """``gymnasium.make(env, **kwargs)`` through ``guard``: the way agentgym builds every env. An
    ``AgentEnv`` class gets ``step_timeout_s`` / ``max_steps`` as constructor arguments; any other
    env's wrappers get them."""
    if isinstance(env, EnvSpec):
        creator = load_env_creator(env.entry_point) if isinstance(env.entry_point, str) else env.entry_point
        cls = creator if isinstance(creator, type) else None
    else:
        cls = resolve_env(env).cls
    wrapper_kwargs: dict[str, Any] = {}
    if not (isinstance(cls, type) and issubclass(cls, AgentEnv)):
        wrapper_kwargs = {k: kwargs.pop(k) for k in WRAPPER_KWARGS if k in kwargs}
    return guard(gym.make(env, **kwargs), **wrapper_kwargs)
