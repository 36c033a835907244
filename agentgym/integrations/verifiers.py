"""An agentgym env as a verifiers 0.4 (``verifiers.v1``) taskset + env, the engine playing the user
(the pattern of verifiers' own TextArena and OpenEnv tasksets):

    import agentgym.integrations.verifiers as agv    # registers the taskset id "agentgym_taskset"
    config = agv.env_config("agentgym/BFCLMultiTurn-v0", split="eval")   # a verifiers EnvConfig
    env = verifiers.v1.utils.loaders.load_environment(config)            # then run its slots as vf-eval does

The default agent (``player``) is verifiers' null harness (a plain chat loop) in the local
subprocess runtime; pass ``player=vf.AgentConfig(...)`` to ``env_config`` for another.

Each task is one of the env's tasks (its reset options); its prompt is the env's first
conversation (the system message as the task's system prompt). ``AgentGymEnv.run`` makes a fresh
agentgym env per episode, and every assistant reply is one ``env.step`` (the env parses it with its
own parser: tool calls as ``<tool_call>`` JSON or the env's native syntax, never evaluated); the
env's reply comes back as the next user turn until the episode terminates or is truncated. The
trace carries the env's reward (``env_reward``, the sum of step rewards, weight 1), and in
``trace.info``: ``agentgym_task_id``, ``agentgym_success``, ``agentgym_steps``, ``agentgym_truncated``
and ``agentgym_feedback`` (every step's typed ``Feedback`` records as JSON dicts).

Limits: the model answers in text (the chat program's own tool calls are not the env's tools);
env replies that are several chat messages (BFCL tool results) arrive as one user turn holding the
env's observation text.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from pydantic import Field

import verifiers.v1 as vf
from verifiers.v1.harnesses.null import NullHarnessConfig
from verifiers.v1.runtimes import SubprocessConfig

__all__ = ["AgentGymTaskset", "AgentGymEnv", "AgentGymTasksetConfig", "AgentGymEnvConfig", "env_config", "TASKSET_ID"]

TASKSET_ID = "agentgym_taskset"  # verifiers resolves taskset ids to importable top-level modules


class AgentGymTasksetConfig(vf.TasksetConfig):
    env_id: str = "agentgym/Echo-v0"
    """The agentgym (gymnasium) env id."""
    split: str = "train"
    """train / eval (the env's declared constructor kwargs), or another split of an env taking ``split``."""
    env_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Constructor kwargs on top of the split's."""
    tasks: list[dict[str, Any]] | None = None
    """Reset options of the tasks (default: every task the env lists)."""
    max_tasks: int | None = None
    seed: int = 0
    """Reset seed of task i: seed + i (as agentgym's rollout)."""


class AgentGymData(vf.TaskData):
    info: dict[str, Any]
    """env_id, constructor kwargs, reset options and seed: what the env reproduces the episode from."""


class AgentGymTask(vf.Task[AgentGymData, vf.State, vf.TaskConfig]):
    pass


class AgentGymEnvConfig(vf.EnvConfig):
    # A plain chat loop (verifiers' null harness) in the local subprocess runtime: the env is text in,
    # text out, so the agent needs no tools or sandbox of its own (override with player=...).
    player: vf.AgentConfig = vf.AgentConfig(harness=NullHarnessConfig(id="null"), runtime=SubprocessConfig())


def _kwargs(config: AgentGymTasksetConfig) -> dict[str, Any]:
    from agentgym.integrations.trl import _env_kwargs
    return _env_kwargs(config.env_id, config.split, config.env_kwargs)


class AgentGymEnv(vf.Env[AgentGymEnvConfig]):
    async def run(self, task: AgentGymTask, agents: Any) -> None:
        import asyncio

        import gymnasium as gym

        import agentgym  # noqa: F401  (registers the ids)

        info = task.data.info
        env = gym.make(info["env_id"], **info["env_kwargs"])
        total, steps, feedback, outcome = 0.0, 0, [], {}
        try:
            await asyncio.to_thread(env.reset, seed=info["seed"], options=dict(info["options"]))
            async with agents.player.interaction(task) as interaction:
                segment = await interaction.turn()
                while not segment.terminated:
                    obs, reward, terminated, truncated, step_info = await asyncio.to_thread(
                        env.step, segment.last_reply or "")
                    steps += 1
                    total += float(reward)
                    feedback.extend(f.model_dump(mode="json") for f in step_info.get("feedback", []))
                    if terminated or truncated:
                        outcome = {"terminated": bool(terminated), "truncated": bool(truncated),
                                   "success": step_info.get("success")}
                        break
                    segment = await interaction.turn(obs)
        finally:
            env.close()
        trace = interaction.trace
        trace.record_reward("env_reward", total, 1.0)
        success = outcome.get("success")
        trace.info.update(agentgym_task_id=info["task_id"], agentgym_steps=steps, agentgym_feedback=feedback,
                          agentgym_truncated=bool(outcome.get("truncated", not outcome)),
                          agentgym_success=bool(success) if isinstance(success, bool) else total >= 1.0)


class AgentGymTaskset(vf.Taskset[AgentGymTask, AgentGymTasksetConfig]):
    def load(self) -> Iterator[AgentGymTask]:
        import gymnasium as gym

        import agentgym  # noqa: F401
        from agentgym.envspec import check_env_id, list_tasks, task_key

        config = self.config
        env_id = check_env_id(config.env_id)
        kwargs = _kwargs(config)
        env = gym.make(env_id, **kwargs)
        try:
            options = [dict(t) for t in (config.tasks if config.tasks is not None else list_tasks(env))]
            if config.max_tasks is not None:
                options = options[:config.max_tasks]
            for i, opts in enumerate(options):
                _, info = env.reset(seed=config.seed + i, options=dict(opts))
                messages = info["messages"]
                system = "\n\n".join(m.content for m in messages if m.role == "system") or None
                prompt = [{"role": m.role, "content": m.content} for m in messages if m.role != "system"]
                task_id = str((info.get("task") or {}).get("id") or task_key(opts) or f"task-{i}")
                yield AgentGymTask(AgentGymData(
                    name=task_id, prompt=prompt, system_prompt=system,
                    info={"env_id": env_id, "env_kwargs": kwargs, "options": opts, "seed": config.seed + i,
                          "task_id": task_id}), config.task)
        finally:
            env.close()


def env_config(env_id: str, *, split: str = "train", env_kwargs: dict[str, Any] | None = None,
               tasks: list[dict[str, Any]] | None = None, max_tasks: int | None = None, seed: int = 0,
               **env_fields: Any) -> AgentGymEnvConfig:
    """The verifiers ``EnvConfig`` of an agentgym env (``load_environment(env_config(...))``)."""
    taskset = AgentGymTasksetConfig(id=TASKSET_ID, env_id=env_id, split=split, env_kwargs=dict(env_kwargs or {}),
                                    tasks=tasks, max_tasks=max_tasks, seed=seed)
    return AgentGymEnvConfig(taskset=taskset, **env_fields)


sys.modules.setdefault(TASKSET_ID, sys.modules[__name__])
