"""What an environment declares so that a run on it works without the user knowing its internals:
the constructor arguments of its training and evaluation envs, its step limit and action length,
what data it needs, and (through ``AgentEnv.tasks()``) the list of its tasks.

An env class sets ``defaults = EnvDefaults(...)``; a plain gymnasium env without one gets
``EnvDefaults()`` (same constructor for train and eval, tasks drawn by seed). Nothing here imports
an env's heavy dependencies until its class is loaded.

>>> env_defaults("agentgym/Echo-v0").max_steps
3
>>> env_defaults("agentgym/Ech-v0")
Traceback (most recent call last):
...
agentgym.plugins.UnknownPluginError: unknown environment 'agentgym/Ech-v0'; did you mean 'agentgym/Echo-v0'...
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

__all__ = ["EnvDefaults", "env_defaults", "env_class", "check_env_id", "list_tasks", "task_key"]


@dataclass(frozen=True)
class EnvDefaults:
    """An environment's declared defaults (see the module docstring)."""

    train_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor kwargs of the training env
    # Constructor kwargs of the evaluation env; None: the training env's, with the evaluation tasks
    # held out of the training pool (for envs without separate splits).
    eval_kwargs: dict[str, Any] | None = None
    max_steps: int | None = None  # rollout step limit (None: the env's own default_max_steps)
    max_new_tokens: int = 256  # tokens per action that its actions need
    data_hint: str = ""  # what to set or run when its data is missing (said in errors)
    # Reads the reference action (text the policy could have written) from the payload of a step's
    # ``reference`` feedback; the trainer tracks its log-prob as a learning signal. None: no such signal.
    reference_action: Callable[[dict[str, Any]], str | None] | None = None
    # The key of the recorded task (``info["task"]``) that names its category for per-category
    # breakdowns (BFCL category, ALFWorld task type, WebShop product category, AppWorld difficulty).
    category_field: str | None = None
    # The benchmark's official headline numbers from evaluation outcomes (``agentgym.evaluation.Outcome``
    # rows of one pass), on the benchmark's published scale; None: success rate and reward only.
    headline: Callable[[Sequence[Any]], dict[str, float]] | None = None

    def replace(self, **changes: Any) -> "EnvDefaults":
        return dataclasses.replace(self, **changes)


def check_env_id(env_id: str) -> str:
    """The gymnasium id, after importing the module of a ``module:Env-v0`` id; raises
    ``UnknownPluginError`` with the nearest registered ids otherwise. Builds no env."""
    import gymnasium as gym

    import agentgym  # noqa: F401  (registers the agentgym ids)
    from agentgym.plugins import UnknownPluginError, suggest
    if not isinstance(env_id, str) or not env_id:
        raise UnknownPluginError(f"env.id must be a gymnasium id, got {env_id!r}")
    name = env_id
    if ":" in env_id:
        module, _, name = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            raise UnknownPluginError(f"env.id {env_id!r}: cannot import {module!r} ({exc})") from None
    if name not in gym.registry:
        known = sorted(gym.registry)
        ours = [k for k in known if k.startswith("agentgym/")]
        raise UnknownPluginError(f"unknown environment {name!r}{suggest(name, known)} "
                                 f"(registered agentgym ids: {', '.join(ours)})")
    return name


def env_class(env_id: str) -> type | None:
    """The class behind a registered id (None when its entry point is a factory function)."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator
    spec = gym.spec(check_env_id(env_id))
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    return creator if isinstance(creator, type) else None


def env_defaults(env_id: str) -> EnvDefaults:
    """The defaults the env's class declares (``EnvDefaults()`` when it declares none)."""
    import gymnasium as gym
    cls = env_class(env_id)
    declared = getattr(cls, "defaults", None)
    out = declared if isinstance(declared, EnvDefaults) else EnvDefaults()
    if out.max_steps is None and cls is not None and isinstance(getattr(cls, "default_max_steps", None), int):
        out = out.replace(max_steps=cls.default_max_steps)
    spec_kwargs = gym.spec(check_env_id(env_id)).kwargs or {}
    if spec_kwargs:  # kwargs given at registration are part of the id's identity
        out = out.replace(train_kwargs={**spec_kwargs, **out.train_kwargs})
    return out


def list_tasks(env: Any) -> list[dict[str, Any]]:
    """Reset options of every task of a built env (``AgentEnv.tasks()``); [] when the env does not
    list its tasks (then episodes are drawn by seed)."""
    tasks = getattr(getattr(env, "unwrapped", env), "tasks", None)
    return [dict(t) for t in tasks()] if callable(tasks) else []


def task_key(options: dict[str, Any]) -> str:
    """A stable, readable key of a task's reset options (for logs and held-out checks)."""
    if len(options) == 1:
        return str(next(iter(options.values())))
    return ",".join(f"{k}={options[k]}" for k in sorted(options))
