"""Config sections owned by plugins: a section that names a registered plugin holds each plugin's
own settings in a table under it (``[rollout.<backend>]``, ``[feedback.teacher.<name>]``), validated
against the plugin's ``Settings`` class with one-line errors and the nearest valid key. Also the
plugin settings that moved out of the core sections, read at their new place for old config files.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from agentgym.config_help import format_errors
from agentgym.plugins import Registry, UnknownPluginError, settings_class, suggest

__all__ = ["PluginSection", "settings_of", "moved_keys", "MOVED"]


def settings_of(cls: type[BaseModel], value: Any, where: str, owner: str, also: tuple[str, ...] = ()) -> BaseModel:
    """``value`` (a table) validated into a plugin's ``Settings`` ``cls``: an unknown key names the
    nearest known one, a bad value its key under ``where``."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        raise ValueError(f"{where}: the settings of {owner} must be a table of its settings, got {value!r}")
    known = sorted(cls.model_fields)
    for key in value:
        if key not in known:
            raise ValueError(f"{where}.{key}: unknown key in [{where}] for {owner}{suggest(key, known)}; "
                             f"known keys: {[*also, *known]}")
    try:
        return cls.model_validate(value)
    except ValidationError as exc:
        raise ValueError(format_errors(exc, prefix=where)) from None


class PluginSection(BaseModel):
    """A section that names a registered plugin (its ``plugin_field``) and holds ``[<section>.<name>]``
    tables: each registered plugin's own ``Settings`` (``agentgym.plugins.PluginSettings``).
    ``settings`` is the chosen plugin's, validated; config.json holds its concrete values."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    plugin_registry: ClassVar[Registry]
    plugin_field: ClassVar[str]  # the field that names the chosen plugin
    plugin_section: ClassVar[str]  # the section's dotted name, for messages
    _settings: Any = PrivateAttr(default=None)

    def __init_subclass__(cls, registry: Registry | None = None, field: str = "name", section: str = "",
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if registry is not None:  # class RolloutConfig(PluginSection, registry=..., field=..., section=...)
            cls.plugin_registry, cls.plugin_field, cls.plugin_section = registry, field, section

    @model_validator(mode="after")
    def _plugin_settings(self) -> "PluginSection":
        registry, where = self.plugin_registry, self.plugin_section
        chosen, fields = getattr(self, self.plugin_field), sorted(type(self).model_fields)
        try:
            registry.check(chosen)
        except UnknownPluginError as exc:
            raise ValueError(f"{where}.{self.plugin_field}: {exc}") from None
        tables = dict(self.model_extra or {})
        for key in tables:
            if key not in registry:
                raise ValueError(f"{where}.{key}: unknown key in [{where}]{suggest(key, fields + registry.names())}; "
                                 f"[{where}] takes {fields} and [{where}.<{registry.kind}>] settings of "
                                 f"{', '.join(registry.names())}")
        tables.setdefault(chosen, {})
        settings = {}
        for name, table in tables.items():
            try:
                cls = settings_class(registry.get(name), f"{where}.{name}")
            except (ImportError, TypeError) as exc:
                raise ValueError(f"{where}.{name}: {exc}") from None
            settings[name] = settings_of(cls, table, f"{where}.{name}", f"{registry.kind} {name!r}")
        self._settings = settings.get(chosen)
        self.__pydantic_extra__ = {name: s.model_dump() for name, s in settings.items()
                                   if name != chosen or type(s).model_fields or name in (self.model_extra or {})}
        return self

    @property
    def settings(self) -> Any:
        """The validated ``Settings`` instance of the chosen plugin."""
        return self._settings


# Plugin settings that lived in the core sections, read at their new place (with a FutureWarning) so that
# old config files and run folders keep working: section -> old key -> (new table, new key, old default).
# An old key at its old default is dropped silently (every old config.json holds all of them).
MOVED: dict[str, dict[str, tuple[tuple[str, ...], str, Any]]] = {
    "rollout": {"vllm_gpu_memory_utilization": (("vllm",), "gpu_memory_utilization", 0.4),
                "vllm_kwargs": (("vllm",), "kwargs", {}),
                "servers": (("vllm_server",), "servers", []),
                "sync_dir": (("vllm_server",), "sync_dir", None),
                "server_timeout_s": (("vllm_server",), "timeout_s", 600.0)},
    "feedback": {"api_base_url": (("teacher", "openai"), "base_url", None),
                 "api_model": (("teacher", "openai"), "model", None),
                 "api_key_env": (("teacher", "openai"), "api_key_env", "OPENAI_API_KEY"),
                 "api_timeout_s": (("teacher", "openai"), "timeout_s", 60.0),
                 "api_max_concurrency": (("teacher", "openai"), "max_concurrency", 8),
                 "api_max_attempts": (("teacher", "openai"), "max_attempts", 6)},
}


def moved_keys(data: Any, section: str) -> Any:
    """``data`` with the old flat keys of ``section`` moved to their plugin's table (see ``MOVED``)."""
    moves = MOVED[section]
    if not isinstance(data, dict) or not moves.keys() & data.keys():
        return data
    data = dict(data)
    for old, (path, new, default) in moves.items():
        if old not in data:
            continue
        value, node = data.pop(old), data
        if value == default:
            continue
        for part in path:
            child = node.get(part)
            node[part] = {"name": child} if isinstance(child, str) else dict(child or {})
            node = node[part]
        where = ".".join((section, *path))
        if new not in node:
            node[new] = value
        warnings.warn(f"{section}.{old} moved to [{where}] {new} (--{where}.{new}); the old key is read there "
                      f"for now", FutureWarning, stacklevel=2)
    return data
