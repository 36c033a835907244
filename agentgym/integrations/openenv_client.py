"""``agentgym/Remote-v0``: an env served by ``agentgym serve`` (or any server speaking its wire
format, see ``agentgym.integrations.openenv_server``) as a local ``AgentEnv``, so agentgym's own
rollout and trainer run episodes on envs living on another machine:

    env = gym.make("agentgym/Remote-v0", url="http://envhost:8000")
    RolloutRunner(policy, "agentgym/Remote-v0", tasks, env_kwargs={"url": "http://envhost:8000"}).run()

One instance is one OpenEnv WebSocket session (openenv-core's own ``GenericEnvClient``), opened at
the first ``reset`` and closed by ``close()``. The server's env keeps its own step limits and
deadlines; the episode's typed feedback, messages, tools, reward and info come back as the local
env would have returned them. A server that does not answer within ``message_timeout_s`` (default
60 s), refuses the session (``CAPACITY_REACHED``) or answers an error makes ``reset`` raise (the
rollout records a failed episode) and ``step`` end the episode truncated with ``step_error``
feedback naming the cause (``AgentEnv``); the next ``reset`` opens a new session.

A served env is not trusted: every reply is validated (``RemoteReply``: typed messages and feedback
records, booleans that are booleans, a reward that is a finite JSON number within
``MAX_ABS_REWARD``, an ``info`` that does not shadow the keys agentgym's rollout reads) and a reply
that fails is a ``RemoteReplyError`` naming the server and the field. At ``reset`` that fails the
episode at reset; at ``step`` it truncates that episode with the cause (``step_error``), never the
rollout; either way the session is dropped. Messages over ``max_message_bytes`` (default 16 MiB)
end the connection.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, field_validator

from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.envspec import EnvDefaults
from agentgym.types import Feedback, Message

__all__ = ["RemoteEnv", "RemoteReply", "RemoteReplyError", "MAX_ABS_REWARD"]

MAX_ABS_REWARD = 1e12  # a larger reward is refused: sums of a few would overflow to inf
RESERVED_INFO = frozenset({"feedback", "messages", "new_messages", "tools", "step", "task"})  # AgentEnv's own keys


class RemoteReplyError(ValueError):
    """A served env's reply that cannot be used (named field, server)."""


class RemoteReply(BaseModel):
    """One observation from ``agentgym serve`` (``AgentObservation`` on the wire), as validated here."""

    model_config = ConfigDict(extra="ignore")

    text: StrictStr = ""
    messages: list[Message] = Field(default_factory=list)
    assistant: Message | None = None
    feedback: list[Feedback] = Field(default_factory=list)
    tool_schemas: list[dict[str, Any]] = Field(default_factory=list)
    terminated: StrictBool = False
    truncated: StrictBool = False
    task: dict[str, Any] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)

    @field_validator("info")
    @classmethod
    def _no_shadowing(cls, info: dict[str, Any]) -> dict[str, Any]:
        shadowed = sorted(RESERVED_INFO & set(info))
        if shadowed:
            raise ValueError(f"info holds {shadowed}, which the env reply carries itself (a served env never "
                             "sends them in info)")
        if "success" in info and not isinstance(info["success"], bool):
            raise ValueError(f"info.success must be a bool, got {info['success']!r}")
        if "step_error" in info and not isinstance(info["step_error"], str):
            raise ValueError(f"info.step_error must be a string, got {type(info['step_error']).__name__}")
        return info


def check_reward(value: Any) -> float:
    """A step's reward: a JSON number (not a string or a bool), finite, within ``MAX_ABS_REWARD``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number, got {type(value).__name__} {str(value)[:40]!r}")
    try:
        reward = float(value)
    except OverflowError:
        raise ValueError(f"{str(value)[:40]} is not a finite number") from None
    if not math.isfinite(reward) or abs(reward) > MAX_ABS_REWARD:
        raise ValueError(f"{reward!r} is not a finite number within +-{MAX_ABS_REWARD:g}")
    return reward


def _connection_closed(exc: BaseException) -> bool:
    """Whether ``exc`` says the session's WebSocket was closed (by the server or the network)."""
    try:
        from websockets.exceptions import ConnectionClosed  # openenv-core's transport
    except ImportError:  # pragma: no cover - openenv-core brings websockets
        return isinstance(exc, ConnectionError)
    return isinstance(exc, (ConnectionClosed, ConnectionError))


class RemoteEnv(AgentEnv):
    """A remote agentgym env reached by URL (see the module docstring).

    Args:
        url: the server's base URL (``http://host:port`` or ``ws://host:port``).
        connect_timeout_s / message_timeout_s: openenv-core client timeouts.
        max_steps: a local step limit on top of the server env's own (default: none of its own).
        tasks: reset options of the tasks this env offers to a run (``tasks()``); the server does
            not list its tasks, so a run on a remote env passes them (or draws by seed).
    """

    default_max_steps = 1 << 30  # the server's env enforces its own limits
    default_step_timeout_s = None  # the client's message timeout bounds every step
    defaults = EnvDefaults()

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0, message_timeout_s: float = 60.0,
                 max_steps: int | None = None, tasks: list[dict[str, Any]] | None = None,
                 max_message_bytes: int = 16 << 20, **kwargs: Any):
        super().__init__(max_steps=max_steps, **kwargs)
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError(f"url must be an http(s):// or ws(s):// URL, got {url!r}")
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) or max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be an int >= 1024, got {max_message_bytes!r}")
        self.url = url
        self.connect_timeout_s, self.message_timeout_s = connect_timeout_s, message_timeout_s
        self.max_message_bytes = max_message_bytes
        self._tasks = [dict(t) for t in (tasks or [])]
        self._client: Any = None

    def tasks(self) -> list[dict[str, Any]]:
        return [dict(t) for t in self._tasks]

    def _session(self) -> Any:
        if self._client is None:
            from openenv.core.generic_client import GenericEnvClient
            client = GenericEnvClient(base_url=self.url, connect_timeout_s=self.connect_timeout_s,
                                      message_timeout_s=self.message_timeout_s,
                                      max_message_size_mb=self.max_message_bytes / (1 << 20)).sync()
            client.connect()
            self._client = client
        return self._client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._session(), method)(*args, **kwargs)
        except BaseException:
            self._drop()  # the session is in an unknown state: the next reset opens a new one
            raise

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._seed = seed  # the server's env is reset with the same seed
        return super().reset(seed=seed, options=options)

    def _reset(self, options: dict[str, Any]) -> EnvReset:
        seed = getattr(self, "_seed", None)
        reused = self._client is not None
        try:
            result = self._call("reset", seed=seed, options=options)
        except Exception as exc:  # noqa: BLE001 - only a closed connection is retried
            if not (reused and _connection_closed(exc)):
                raise
            # The server closed this idle session between episodes (reaped, restarted): a reset is
            # safe to repeat, so the episode starts on a new session instead of failing.
            result = self._call("reset", seed=seed, options=options)
        reply, _ = self._validated("reset", result)
        return EnvReset(messages=reply.messages, task=dict(reply.task), tools=list(reply.tool_schemas),
                        info=dict(reply.info))

    def _step(self, action: str) -> EnvReply:
        reply, reward = self._validated("step", self._call("step", {"type": "text", "text": action}))
        self.tools = list(reply.tool_schemas or self.tools)  # tools revealed mid-episode
        return EnvReply(messages=reply.messages, reward=reward, terminated=reply.terminated,
                        truncated=reply.truncated, feedback=reply.feedback, assistant=reply.assistant,
                        info=dict(reply.info))

    def _validated(self, what: str, result: Any) -> tuple[RemoteReply, float]:
        """The server's reply checked field by field; ``RemoteReplyError`` (and the session dropped)
        when anything is off."""
        try:
            observation = getattr(result, "observation", None)
            if not isinstance(observation, dict):
                raise RemoteReplyError(f"observation: must be an object, got {type(observation).__name__}")
            reply = RemoteReply.model_validate(observation)
            raw = getattr(result, "reward", None)
            try:
                reward = 0.0 if raw is None else check_reward(raw)
            except ValueError as exc:
                raise RemoteReplyError(f"reward: {exc}") from None
        except ValidationError as exc:
            self._drop()
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
            raise RemoteReplyError(f"{self.url} sent an unusable {what} reply: observation.{where}: "
                                   f"{first.get('msg')}{more}") from None
        except RemoteReplyError as exc:
            self._drop()
            raise RemoteReplyError(f"{self.url} sent an unusable {what} reply: {exc}") from None
        return reply, reward

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - the connection is gone either way
                pass

    def close(self) -> None:
        self._drop()
        super().close()
