"""What an environment declares so that a run on it works without the user knowing its internals:
the constructor arguments of its training and evaluation envs, its step limit and action length,
what data it needs, and (through ``AgentEnv.tasks()``) the list of its tasks.

Env metadata lives in one place: the env class's ``defaults = EnvDefaults(...)`` (its step limit
included). A plain gymnasium env without one gets ``EnvDefaults()`` (same constructor for train and
eval, tasks drawn by seed; the step limit of its registration's ``max_episode_steps``, if any).
``resolve_env(env_id)`` reads it once per id, with the class and spec (``ResolvedEnv``);
``env_defaults`` and ``env_class`` are its two parts. Nothing here imports an env's heavy
dependencies until its class is loaded.

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
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec, load_env_creator

from agentgym.plugins import UnknownPluginError, suggest
from agentgym.registration import register_envs

__all__ = ["EnvDefaults", "ResolvedEnv", "resolve_env", "env_defaults", "env_class", "check_env_id",
           "declared_defaults", "list_tasks", "task_key", "DEFAULT_MAX_STEPS"]

DEFAULT_MAX_STEPS = 50  # the step limit of an env that declares none


@dataclass(frozen=True)
class EnvDefaults:
    """An environment's declared defaults (see the module docstring)."""

    train_kwargs: dict[str, Any] = field(default_factory=dict)  # constructor kwargs of the training env
    # Constructor kwargs of the evaluation env; None: the training env's, with the evaluation tasks
    # held out of the training pool (for envs without separate splits).
    eval_kwargs: dict[str, Any] | None = None
    max_steps: int | None = None  # the episode step limit of a run (and of the env itself, see below)
    # The env's own step limit (``AgentEnv``'s constructor default) where it differs from a run's
    # ``max_steps`` (BFCL multi-turn: 168 possible steps, 20 in the paper's runs); None: ``max_steps``.
    env_max_steps: int | None = None
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

    @property
    def env_step_limit(self) -> int:
        """The env's own step limit: ``env_max_steps``, else ``max_steps``, else ``DEFAULT_MAX_STEPS``."""
        return self.env_max_steps or self.max_steps or DEFAULT_MAX_STEPS

    def replace(self, **changes: Any) -> "EnvDefaults":
        return dataclasses.replace(self, **changes)


def declared_defaults(cls: type) -> EnvDefaults:
    """The one ``EnvDefaults`` of an env class (``AgentEnv`` stores it as ``cls.defaults`` when the
    class is defined): its own ``defaults``, else its parent's, with the older spelling, a class
    attribute ``default_max_steps`` (the env's own step limit), folded in; a step limit the class
    leaves out is inherited."""
    parent = getattr(super(cls, cls), "defaults", None)
    parent = parent if isinstance(parent, EnvDefaults) else EnvDefaults()
    own = cls.__dict__.get("defaults")
    own = own if isinstance(own, EnvDefaults) else None
    legacy = cls.__dict__.get("default_max_steps")
    legacy = legacy if isinstance(legacy, int) and not isinstance(legacy, bool) else None
    env_limit = ((own.env_max_steps if own else None) or legacy or (own.max_steps if own else None)
                 or parent.env_max_steps or parent.max_steps or DEFAULT_MAX_STEPS)
    if own is not None and own.max_steps is not None:
        run_limit = own.max_steps
    elif own is None and parent.env_max_steps is not None:  # the parent's run limit was its own choice
        run_limit = parent.max_steps
    else:
        run_limit = env_limit
    return (own or parent).replace(max_steps=run_limit, env_max_steps=env_limit if env_limit != run_limit else None)


def check_env_id(env_id: str) -> str:
    """The gymnasium id, after importing the module of a ``module:Env-v0`` id; raises
    ``UnknownPluginError`` with the nearest registered ids otherwise. Builds no env."""
    register_envs()
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


@dataclass(frozen=True)
class ResolvedEnv:
    """An env id resolved once: its gymnasium id and spec, the class behind it (None for a factory
    entry point) and its ``EnvDefaults`` (the class's declaration, plus the kwargs and
    ``max_episode_steps`` given at registration, which are part of the id's identity)."""

    id: str
    spec: EnvSpec
    cls: type | None
    defaults: EnvDefaults


_RESOLVED: dict[str, ResolvedEnv] = {}
_RESOLVED_LOCK = threading.Lock()


def resolve_env(env_id: str) -> ResolvedEnv:
    """``env_id`` resolved (cached per id while its registration stays the same); raises
    ``UnknownPluginError`` with the nearest registered ids for an unknown one. Builds no env."""
    with _RESOLVED_LOCK:
        cached = _RESOLVED.get(env_id)
    if cached is not None and gym.registry.get(cached.id) is cached.spec:
        return cached
    name = check_env_id(env_id)
    spec = gym.spec(name)
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    cls = creator if isinstance(creator, type) else None
    declared = getattr(cls, "defaults", None)
    out = declared if isinstance(declared, EnvDefaults) else EnvDefaults()
    if out.max_steps is None and cls is not None and isinstance(getattr(cls, "default_max_steps", None), int):
        out = out.replace(max_steps=cls.default_max_steps)  # a plain env class that names its limit so
    if out.max_steps is None and spec.max_episode_steps is not None:
        out = out.replace(max_steps=spec.max_episode_steps)
    if spec.kwargs:
        out = out.replace(train_kwargs={**spec.kwargs, **out.train_kwargs})
    resolved = ResolvedEnv(id=name, spec=spec, cls=cls, defaults=out)
    with _RESOLVED_LOCK:
        _RESOLVED[env_id] = resolved
    return resolved


def env_class(env_id: str) -> type | None:
    """The class behind a registered id (None when its entry point is a factory function)."""
    return resolve_env(env_id).cls


def env_defaults(env_id: str) -> EnvDefaults:
    """The env's declared defaults (``EnvDefaults()`` when it declares none): ``resolve_env(env_id).defaults``."""
    return resolve_env(env_id).defaults


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
