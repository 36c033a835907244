"""One registry mechanism for every kind of plugin: learners, feedback sources, selectors, rollout
backends and models (environments use gymnasium's own registry; see ``agentgym.registration``).

A registry maps names to classes (or factories). Built-in entries are ``"module:attr"`` strings, so
listing names, checking a name and suggesting the nearest one never import torch or a benchmark;
the object loads on first use. Three ways in, all ending in the same table:

- a decorator in your own module or script: ``@LEARNERS.register("my_learner")``;
- an entry point of your installed package, in the group named by the registry
  (``[project.entry-points."agentgym.learners"] my_learner = "mypkg.learner:MyLearner"``);
- ``agentgym train --import mypkg.plugins`` (or ``--import ./my_plugins.py``), which imports a module
  whose decorators register its plugins, as ``import_plugins`` does from Python.

A plugin's settings are its ``Settings`` class (a pydantic model; ``PluginSettings`` for rollout
backends and teachers): a learner's are ``[learner]``, a rollout backend's ``[rollout.<name>]``, a
teacher's ``[feedback.teacher.<name>]`` (``agentgym.config``), so a new plugin is one file.

>>> reg = Registry("widget", group="agentgym.widgets-doctest")
>>> @reg.register("round")
... class Round: pass
>>> reg.get("round") is Round
True
>>> reg.get("rund")
Traceback (most recent call last):
...
agentgym.plugins.UnknownPluginError: unknown widget 'rund'; did you mean 'round'? (known: round)
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict

__all__ = ["Registry", "UnknownPluginError", "LEARNERS", "SOURCES", "SELECTORS", "ROLLOUT_BACKENDS", "MODELS", "TEACHERS",
           "PluginSettings", "settings_class", "import_plugins", "suggest"]

T = TypeVar("T")


class UnknownPluginError(KeyError, ValueError):
    """A name that no registry entry, entry point or imported plugin module provides."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def suggest(name: str, known: list[str] | Any) -> str:
    """`` did you mean 'x'?`` for the closest known names ('' when nothing is close)."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=2, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


class PluginSettings(BaseModel):
    """Base of a plugin's own settings (a rollout backend's ``Settings``, a teacher's): the config
    section ``[rollout.<name>]`` / ``[feedback.teacher.<name>]`` is validated against it, so unknown
    keys and non-finite numbers are errors. A plugin without a ``Settings`` attribute has none."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def settings_class(plugin: Any, what: str = "plugin") -> type[BaseModel]:
    """The ``Settings`` model a plugin declares (``PluginSettings``, i.e. none, when it declares none)."""
    cls = getattr(plugin, "Settings", None)
    if cls is None:
        return PluginSettings
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise TypeError(f"{what}: Settings must be a pydantic BaseModel subclass, got {cls!r}")
    return cls


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Names -> plugins of one kind, with lazy built-ins, entry points and "did you mean" errors."""

    def __init__(self, kind: str, *, group: str, builtins: dict[str, str] | None = None):
        self.kind, self.group = kind, group
        self._entries: dict[str, T | str] = dict(builtins or {})
        self._entry_points_loaded = False

    # ---------------------------------------------------------------- registration
    def register(self, name: str | None = None, obj: T | None = None) -> Any:
        """``@registry.register("name")`` (or ``register("name", obj)``); the name defaults to the
        object's ``name`` attribute. Re-registering a name replaces the entry (a re-imported script)."""
        def add(target: T) -> T:
            key = name or getattr(target, "name", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"a {self.kind} needs a name: pass register('name') or set a 'name' attribute")
            old = self._entries.get(key)
            if old is not None and not isinstance(old, str) and _origin(old) != _origin(target):
                warnings.warn(f"{self.kind} {key!r}: {_qualname(target)} replaces {_qualname(old)}", stacklevel=3)
            self._entries[key] = target
            return target
        return add(obj) if obj is not None else add

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.group):
            self._entries.setdefault(ep.name, ep.value)

    # ---------------------------------------------------------------- lookup
    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def check(self, name: str) -> None:
        """Raise ``UnknownPluginError`` (with suggestions) unless ``name`` is known; imports nothing."""
        if name not in self:
            known = self.names()
            raise UnknownPluginError(f"unknown {self.kind} {name!r}{suggest(name, known)} (known: {', '.join(known)})")

    def get(self, name: str) -> T:
        self.check(name)
        entry = self._entries[name]
        if isinstance(entry, str):
            try:
                entry = _load(entry)
            except (ImportError, AttributeError) as exc:
                raise ImportError(f"{self.kind} {name!r} could not be loaded from {self._entries[name]!r}: {exc}") from exc
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    __getitem__ = get

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _origin(obj: Any) -> tuple[str, str]:
    """(source file, qualified name): the same class from a script imported twice (once by pytest
    or ``import``, once by ``--import path.py``) is the same plugin, not a replacement."""
    module = sys.modules.get(getattr(obj, "__module__", ""))
    return (str(getattr(module, "__file__", "") or getattr(obj, "__module__", "?")), getattr(obj, "__qualname__", repr(obj)))


def import_plugins(modules: str | list[str]) -> list[Any]:
    """Import plugin modules (dotted names or ``.py`` paths) so that their decorators register. Each
    is imported once per process: a ``.py`` file already imported from the same path is not run again.

    >>> import_plugins("json")[0].__name__
    'json'
    """
    out = []
    for spec in [modules] if isinstance(modules, str) else list(modules):
        for item in [s.strip() for s in str(spec).split(",") if s.strip()]:
            path = Path(item)
            if item.endswith(".py"):
                if not path.is_file():
                    raise FileNotFoundError(f"--import {item!r}: no such file")
                name = f"agentgym_plugin_{path.stem}"
                loaded = sys.modules.get(name)
                if loaded is not None and getattr(loaded, "__file__", None) == str(path.resolve()):
                    out.append(loaded)  # imported once: a config validated twice does not run it again
                    continue
                module_spec = importlib.util.spec_from_file_location(name, path.resolve())
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[name] = module
                try:
                    module_spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)  # a failed import is not "imported": the next try runs it
                    raise
            else:
                try:
                    module = importlib.import_module(item)
                except ModuleNotFoundError as exc:
                    raise ModuleNotFoundError(f"--import {item!r}: {exc}") from exc
            out.append(module)
    return out


# ------------------------------------------------------------------------------------------ the registries
LEARNERS: Registry[Any] = Registry("learner", group="agentgym.learners", builtins={
    "grpo": "agentgym.learners.grpo:GRPO",
    "dense_sd": "agentgym.learners.dense_sd:DenseSD",
    "hint_sd": "agentgym.learners.hint_sd:HintSD",
    "serl": "agentgym.learners.serl:SERL",
    "gigpo": "agentgym.learners.gigpo:GiGPO",
})

SOURCES: Registry[Any] = Registry("feedback source", group="agentgym.sources", builtins={
    "immediate": "agentgym.feedback.sources:ImmediateSource",
    "next_observation": "agentgym.feedback.sources:NextObservationSource",
    "future_trajectory": "agentgym.feedback.sources:FutureTrajectorySource",
    "successful_sibling": "agentgym.feedback.sources:SuccessfulSiblingSource",
    "reference": "agentgym.feedback.sources:ReferenceSource",
    "reference_hindsight": "agentgym.feedback.sources:ReferenceHindsightSource",
    "anchor": "agentgym.feedback.anchors:AnchorSource",
    "llm_judge": "agentgym.feedback.sources:LLMJudgeSource",
    "llm_step_hint": "agentgym.feedback.sources:LLMStepHintSource",
    "llm_hindsight": "agentgym.feedback.sources:LLMHindsightSource",
})

SELECTORS: Registry[Any] = Registry("selector", group="agentgym.selectors", builtins={
    "dense": "agentgym.feedback.selectors:Dense",
    "fixed": "agentgym.feedback.selectors:Fixed",
    "first": "agentgym.feedback.selectors:FirstStep",
    "last": "agentgym.feedback.selectors:LastStep",
    "first_error": "agentgym.feedback.selectors:FirstError",
    "first_divergence": "agentgym.feedback.selectors:FirstDivergence",
    "hindsight_multi": "agentgym.feedback.selectors:HindsightMulti",
    "hindsight_single": "agentgym.feedback.selectors:HindsightSingle",
})

# name -> class(student, *, model_path, lora, lora_r, settings) with policy / sync / close; its ``Settings``
# class is the [rollout.<name>] section (agentgym.agents.backends).
ROLLOUT_BACKENDS: Registry[Any] = Registry("rollout backend", group="agentgym.rollout_backends", builtins={
    "transformers": "agentgym.agents.backends:TransformersBackend",
    "vllm": "agentgym.agents.backends:VLLMBackend",
    "vllm_server": "agentgym.agents.backends:VLLMServerBackend",
})

# Who writes model-based feedback: name -> factory(its settings, student policy, learner) -> Policy; the
# factory's ``Settings`` attribute (a PluginSettings) is the [feedback.teacher.<name>] section.
TEACHERS: Registry[Any] = Registry("teacher", group="agentgym.teachers", builtins={
    "policy": "agentgym.agents.teacher_backends:policy_teacher",
    "openai": "agentgym.agents.teacher_backends:openai_teacher",
})

# name -> a function () -> (local model folder, display name); anything else is a folder or a hub id.
MODELS: Registry[Callable[[], tuple[str, str]]] = Registry("model", group="agentgym.models", builtins={
    "tiny": "agentgym.agents.models:tiny_model",
    "smollm2": "agentgym.agents.models:smollm2_model",
    "auto": "agentgym.agents.models:auto_model",
    "random-0.5b": "agentgym.agents.models:random_qwen2_model",
})
