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
"""

from __future__ import annotations

from typing import Any

from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.envspec import EnvDefaults
from agentgym.types import Feedback, Message

__all__ = ["RemoteEnv"]


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
                 max_steps: int | None = None, tasks: list[dict[str, Any]] | None = None, **kwargs: Any):
        super().__init__(max_steps=max_steps, **kwargs)
        if not isinstance(url, str) or not url.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError(f"url must be an http(s):// or ws(s):// URL, got {url!r}")
        self.url = url
        self.connect_timeout_s, self.message_timeout_s = connect_timeout_s, message_timeout_s
        self._tasks = [dict(t) for t in (tasks or [])]
        self._client: Any = None

    def tasks(self) -> list[dict[str, Any]]:
        return [dict(t) for t in self._tasks]

    def _session(self) -> Any:
        if self._client is None:
            from openenv.core.generic_client import GenericEnvClient
            client = GenericEnvClient(base_url=self.url, connect_timeout_s=self.connect_timeout_s,
                                      message_timeout_s=self.message_timeout_s).sync()
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
        result = self._call("reset", seed=getattr(self, "_seed", None), options=options)
        obs = result.observation
        return EnvReset(messages=[Message.model_validate(m) for m in obs.get("messages", [])],
                        task=dict(obs.get("task") or {}), tools=list(obs.get("tool_schemas") or []),
                        info=dict(obs.get("info") or {}))

    def _step(self, action: str) -> EnvReply:
        result = self._call("step", {"type": "text", "text": action})
        obs = result.observation
        self.tools = list(obs.get("tool_schemas") or self.tools)  # tools revealed mid-episode
        assistant = obs.get("assistant")
        info = dict(obs.get("info") or {})
        return EnvReply(messages=[Message.model_validate(m) for m in obs.get("messages", [])],
                        reward=float(result.reward or 0.0), terminated=bool(obs.get("terminated")),
                        truncated=bool(obs.get("truncated")),
                        feedback=[Feedback.model_validate(f) for f in obs.get("feedback", [])],
                        assistant=Message.model_validate(assistant) if assistant else None, info=info)

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
