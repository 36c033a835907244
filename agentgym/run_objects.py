"""Parts given to ``Trainer(...)`` as objects become the run config: a plugin class defined in the
user's script is registered under its ``name``, a composed source or selector is recorded as
``python:<repr>`` (the run folder then says it was built in Python), an env class or factory gets a
gymnasium id.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from agentgym.config import FROM_PYTHON, ConfigError, LearnerConfig, RunConfig, validate_config
from agentgym.feedback.base import CombinedSource
from agentgym.learners.base import Learner
from agentgym.plugins import LEARNERS, SELECTORS, SOURCES

__all__ = ["register_if_new", "describe", "env_id_for", "config_with"]


def register_if_new(registry: Any, obj: Any) -> str:
    """The registered name of a plugin object's class, registering the class under its ``name``
    when it is not registered yet (a plugin defined in the user's script)."""
    cls = obj if isinstance(obj, type) else type(obj)
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name' to be used as a {registry.kind}")
    if name not in registry or registry.get(name) is not cls:
        if name in registry and not issubclass(cls, registry.get(name)):
            raise ValueError(f"{registry.kind} name {name!r} is taken by {registry.get(name).__qualname__}; "
                             f"give {cls.__qualname__} its own name")
        registry.register(name, cls)
    return name


def describe(obj: Any, registry: Any) -> str:
    """A config value for a source or selector given as an object: its name when that rebuilds it,
    else ``python:<repr>`` (the run folder then says it was built in Python)."""
    if isinstance(obj, CombinedSource):
        return "+".join(describe(part, registry) for part in obj.sources)
    composite = getattr(obj, "parts", None) is not None
    if composite or not isinstance(getattr(type(obj), "name", None), str):
        return f"{FROM_PYTHON}{obj!r}"
    return register_if_new(registry, obj)


def env_id_for(env: Any) -> str:
    """A gymnasium id for an env given as a class or a factory (registered on the fly)."""
    name = getattr(env, "__name__", type(env).__name__)
    env_id = f"agentgym-python/{name}-v0"
    if env_id not in gym.registry or gym.spec(env_id).entry_point is not env:
        gym.register(id=env_id, entry_point=env, disable_env_checker=True, order_enforce=True)
    return env_id


def config_with(config: RunConfig | dict[str, Any] | None, *, env: Any = None, model: Any = None, learner: Any = None,
                source: Any = None, selector: Any = None, rollout: Any = None, prompts: Any = None
                ) -> tuple[RunConfig, dict[str, Any]]:
    """(the resolved run config with every part given to ``Trainer(...)`` written into it, the parts
    given as objects: model, learner, source, selector and rollout, None where a name was given)."""
    cfg = config if isinstance(config, RunConfig) else validate_config(dict(config or {}))
    cfg = cfg.model_copy(deep=True)
    if env is not None:
        cfg.env.id = env if isinstance(env, str) else env_id_for(env)
    if isinstance(model, str):
        cfg.model.name = model
    if isinstance(learner, str):
        cfg.learner = LearnerConfig(name=learner)
    elif learner is not None:
        name = register_if_new(LEARNERS, learner)
        settings = learner.settings if isinstance(learner, Learner) else learner.Settings()
        cfg.learner = LearnerConfig(name=name, **settings.model_dump())
    if isinstance(source, str):
        cfg.feedback.source = source
    elif source is not None:
        cfg.feedback.source = describe(source, SOURCES)
    if isinstance(selector, str):
        cfg.feedback.selector = selector
    elif selector is not None:
        cfg.feedback.selector = describe(selector, SELECTORS)
    if isinstance(rollout, str):
        cfg.rollout.backend = rollout
    if prompts is not None:
        cfg.feedback.prompts = {**cfg.feedback.prompts, **prompts.changed()}
    given = {"model": None if isinstance(model, str) else model,
             "learner": learner if isinstance(learner, Learner) else None,
             "source": None if isinstance(source, str) else source,
             "selector": None if isinstance(selector, str) else selector,
             "rollout": None if isinstance(rollout, str) else rollout}
    cfg = cfg.resolved()
    for key in ("source", "selector"):
        if given[key] is None and getattr(cfg.feedback, key).startswith(FROM_PYTHON):
            raise ConfigError(f"feedback.{key}: {getattr(cfg.feedback, key)!r} was given to Trainer(...) as an "
                              f"object; pass the same object again (Trainer({key}=...)) to resume or evaluate")
    return cfg, given
