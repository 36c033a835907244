"""The words of the configuration: one-line validation errors that name the key, the value received
and the nearest valid key, and the ``--help`` listing of every setting (the registered learners',
rollout backends' and teachers' own settings included). ``agentgym.config`` passes its root model in,
so nothing here imports it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from agentgym.feedback.prompts import PROMPTS, TEMPLATE_FIELDS
from agentgym.plugins import LEARNERS, SELECTORS, SOURCES, Registry, settings_class, suggest

__all__ = ["format_errors", "render_help"]


def format_errors(exc: ValidationError, prefix: str = "", root: type[BaseModel] | None = None) -> str:
    """``exc`` as one line: each error as ``section.key: message (got value)``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(err["loc"], prefix, root))
        elif msg.startswith(f"{loc}.") or msg.startswith(f"{loc}:") or (prefix and msg.startswith(f"{prefix}.")):
            lines.append(msg)  # a nested section already named its keys
        elif err["type"] == "value_error":
            lines.append(f"{loc}: {msg}" if loc else msg)
        else:
            lines.append(f"{loc}: {msg} (got {err.get('input')!r})")
    return "; ".join(lines)


def _unknown_key(loc: tuple, prefix: str, root: type[BaseModel] | None) -> str:
    model: Any = None if prefix else root  # a prefixed section names its own keys
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(str(part)) if model is not None else None
        model = field.annotation if field is not None and isinstance(field.annotation, type) else None
    key = str(loc[-1])
    section = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(loc[:-1]))
    known = sorted(model.model_fields) if model is not None and hasattr(model, "model_fields") else []
    full = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(loc))
    return (f"{full}: unknown key" + (f" in [{section}]" if section else "") + suggest(key, known) +
            (f"; known keys: {known}" if known else ""))


def _default_of(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not None else f.default


def _field_lines(model: type[BaseModel], prefix: str, current: Any, indent: str = "  ") -> list[str]:
    lines = []
    for name, f in model.model_fields.items():
        value = getattr(current, name) if current is not None else "(required)" if f.is_required() else _default_of(f)
        lines.append(f"{indent}--{prefix}.{name} = {value!r}: {f.description}")
    return lines


def _plugin_lines(registry: Registry, prefix: str, chosen: str | None, current: Any) -> list[str]:
    """Each registered plugin's own settings (``--<prefix>.<name>.<field>``), this run's first."""
    lines = []
    for name in sorted(registry.names(), key=lambda n: n != chosen):
        try:
            cls = settings_class(registry.get(name), f"{registry.kind} {name!r}")
        except (ImportError, TypeError) as exc:
            lines.append(f"  ({name}: cannot be loaded: {exc})")
            continue
        tag = " (this run)" if name == chosen else ""
        lines.append(f"  settings of {registry.kind} {name}{tag}: [{prefix}.{name}]"
                     + ("" if cls.model_fields else " none"))
        lines += _field_lines(cls, f"{prefix}.{name}", current if tag else None, indent="    ")
    return lines


def _learner_lines(current: Any, default: str) -> list[str]:
    lines = []
    chosen = current.name if current is not None else default
    for lname in sorted(LEARNERS.names(), key=lambda n: n != chosen):  # this run's learner first
        try:
            cls = LEARNERS.get(lname)
        except ImportError as exc:
            lines.append(f"  ({lname}: cannot be loaded: {exc})")
            continue
        tag = " (this run)" if lname == chosen else ""
        lines.append(f"  settings of {lname}{tag}: default source {cls.default_source}, selector "
                     f"{cls.default_selector}, teacher {'yes' if cls.uses_teacher else 'no'}"
                     + (f"; metrics: {', '.join(f'{k} ({v})' for k, v in cls.metrics.items())}"
                        if cls.metrics else ""))
        lines += _field_lines(cls.Settings, "learner", current.settings if tag and current is not None else None,
                              indent="    ")
    return lines


def _section_lines(model: type[BaseModel], prefix: str, current: Any) -> list[str]:
    """The fields of a section; a nested plugin section (``feedback.teacher``) with its plugins'."""
    lines = []
    for name, f in model.model_fields.items():
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            lines += _section_lines(sub, f"{prefix}.{name}", getattr(current, name) if current is not None else None)
            continue
        value = getattr(current, name) if current is not None else _default_of(f)
        lines.append(f"  --{prefix}.{name} = {value!r}: {f.description}")
    registry = getattr(model, "plugin_registry", None)
    if registry is not None:
        field = model.plugin_field
        chosen = getattr(current, field) if current is not None else model.model_fields[field].default
        lines += _plugin_lines(registry, prefix, chosen, current.settings if current is not None else None)
    return lines


def render_help(root: type[BaseModel], config: Any = None) -> str:
    """Every field of ``root``'s sections with the value ``config`` would use (or its default) and its
    description; the learner section lists every registered learner's settings, the plugin sections
    every registered plugin's."""
    lines = []
    for section, field in root.model_fields.items():
        if section == "plugins":
            lines.append(f"--import MODULE  (top-level 'plugins' list) {field.description}")
            continue
        model = field.annotation
        lines.append(f"[{section}]  {field.description}")
        current = getattr(config, section) if config is not None else None
        if section == "learner":
            lines += _field_lines(model, section, current)
            lines += _learner_lines(current, model.model_fields["name"].default)
            continue
        lines += _section_lines(model, section, current)
        if section == "feedback":
            lines.append("  --feedback.<source or selector>.<option> VALUE: constructor options of a registered "
                         f"source ({', '.join(SOURCES.names())}) or selector ({', '.join(SELECTORS.names())})")
            for pname, fields in TEMPLATE_FIELDS.items():
                lines.append(f"  --feedback.prompts.{pname} = {getattr(PROMPTS, pname)!r}  (fields: "
                             f"{', '.join(fields) or 'none'})")
    return "\n".join(lines)
