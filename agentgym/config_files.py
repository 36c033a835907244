"""Reading a configuration: TOML / YAML / JSON files, ``--section.key value`` overrides, a run
folder's ``config.json`` read as data, and the limits every one of them is held to before anything
expands or recurses over it. ``agentgym.config`` validates what these return into a ``RunConfig``
(and re-exports every name here that it always exported).

>>> parse_overrides(["--learner.lr", "3e-6", "--env.group_size=4", "--import", "my_plugins.py"])
(None, {'learner': {'lr': 3e-06}, 'env': {'group_size': 4}, 'plugins': ['my_plugins.py']})
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from agentgym.safeio import read_regular

__all__ = ["ConfigError", "MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH", "MAX_CONFIG_VALUES", "MAX_CONFIG_CHARS",
           "MAX_YAML_ALIASES", "SECTIONS", "NAMED_SECTIONS", "check_config_limits", "parse_overrides",
           "run_folder_config"]

SECTIONS = ("model", "env", "rollout", "feedback", "learner", "train")  # RunConfig's sections (besides plugins)
# Sections whose plain string value names the plugin: ``--feedback.teacher openai`` is
# ``--feedback.teacher.name openai``, and ``[feedback.teacher.<name>]`` tables sit beside it.
NAMED_SECTIONS = ("feedback.teacher",)


class ConfigError(ValueError):
    """A configuration file or override is invalid (the message names the key and the value)."""


# ------------------------------------------------------------------------------------------ loading
# Limits on what a configuration may hold, from a file or overrides: a real one is a few KB, a few
# levels deep, with no YAML aliases at all. Beyond them it is refused in one line (a "billion laughs"
# alias bomb, a file nested 100,000 deep), before anything expands or recurses over it.
MAX_CONFIG_BYTES = 4 << 20
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_VALUES = 200_000  # counted as written out: a value an alias repeats counts each time
MAX_CONFIG_CHARS = 16 << 20  # total characters of the strings, counted the same way
MAX_YAML_ALIASES = 100


def check_config_limits(data: Any, where: str = "the configuration") -> None:
    """Raise ``ConfigError`` when ``data`` is nested deeper than ``MAX_CONFIG_DEPTH`` or holds more
    than ``MAX_CONFIG_VALUES`` values / ``MAX_CONFIG_CHARS`` characters (shared sub-trees counted
    every time they occur). Iterative and stops at the first limit: fast on any input.

    >>> check_config_limits({"a": [1, 2, {"b": "c"}]})
    >>> deep = []
    >>> for _ in range(40):
    ...     deep = [deep]
    >>> check_config_limits({"rollout": {"vllm": {"kwargs": deep}}})
    Traceback (most recent call last):
    ...
    agentgym.config_files.ConfigError: the configuration is nested deeper than 32 levels (at rollout.vllm.kwargs[0][0][0]...); refused
    """
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    values = chars = 0
    while stack:
        node, depth, at = stack.pop()
        values += 1
        if values > MAX_CONFIG_VALUES:
            raise ConfigError(f"{where} holds more than {MAX_CONFIG_VALUES:,} values (counting each repetition of a "
                              "YAML alias); refused")
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{where} is nested deeper than {MAX_CONFIG_DEPTH} levels (at {at[:60]}...); refused")
        if isinstance(node, str):
            chars += len(node)
        elif isinstance(node, dict):
            for k, v in node.items():
                chars += len(k) if isinstance(k, str) else 0
                stack.append((v, depth + 1, f"{at}.{k}" if at else str(k)))
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1, f"{at}[{i}]") for i, v in enumerate(node))
        if chars > MAX_CONFIG_CHARS:
            raise ConfigError(f"{where} holds more than {MAX_CONFIG_CHARS:,} characters of text (counting each "
                              "repetition of a YAML alias); refused")


def _yaml_load(text: str, path: Path) -> Any:
    """``yaml.safe_load`` (no object tags) that refuses more than ``MAX_YAML_ALIASES`` aliases."""
    try:
        import yaml  # optional: only YAML configs need PyYAML
    except ImportError as exc:
        raise ConfigError("YAML configs need PyYAML (pip install pyyaml); TOML needs nothing") from exc

    class BoundedLoader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise ConfigError(f"{path}: more than {MAX_YAML_ALIASES} YAML aliases (*name); refused "
                                      "(an alias bomb expands exponentially)")
            return super().compose_node(parent, index)

    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())[:300]}") from None
    finally:
        loader.dispose()


def _read_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"config file {str(path)!r}: use .toml, .yaml/.yml or .json")
    with open(path, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {str(path)!r} is larger than {MAX_CONFIG_BYTES:,} bytes; refused")
    text = raw.decode("utf-8", errors="replace")
    try:
        if path.suffix == ".toml":
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        elif path.suffix == ".json":
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        else:
            data = _yaml_load(text, path)
            data = {} if data is None else data
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read (more than {MAX_CONFIG_DEPTH} levels are refused)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    check_config_limits(data, str(path))
    return data


def _same_module(named: str, given: list[str]) -> bool:
    if named.endswith(".py"):
        return any(g.endswith(".py") and Path(g).resolve() == Path(named).resolve() for g in given)
    return named in given


def run_folder_config(run_dir: str | Path, argv: list[str]) -> dict[str, Any]:
    """A run folder's ``config.json`` as the base of a command's config (``agentgym eval RUN``),
    read as data: nothing it names is imported. A run folder may be someone else's, so the modules
    it names (its ``plugins`` and the module of a ``module:Env-v0`` env id) are imported only when the
    command line passes them itself (``--import``, or a ``--config`` file of the user's): otherwise a
    ``ConfigError`` says which ones the run needs. The returned dict has no ``plugins``; the
    command's own ``--import`` values are added by ``load_config`` as usual."""
    path = Path(run_dir) / "config.json"
    if not (path.is_file() or path.is_symlink()):
        raise ConfigError(f"{str(run_dir)!r} is not a run folder (no config.json)")
    try:
        data = json.loads(read_regular(path, MAX_CONFIG_BYTES, str(path)))
    except OSError as exc:
        raise ConfigError(f"{path}: not read: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object, got {type(data).__name__}")
    check_config_limits(data, str(path))
    named = data.pop("plugins", None) or []
    if not isinstance(named, list) or not all(isinstance(m, str) for m in named):
        raise ConfigError(f"{path}: plugins must be a list of module names, got {str(named)[:80]!r}")
    env = data.get("env") if isinstance(data.get("env"), dict) else {}
    config_file, overrides = parse_overrides(list(argv))
    given = list(overrides.get("plugins", []))
    if config_file is not None:
        given += [str(m) for m in _read_file(config_file).get("plugins") or []]
    env_id = ((overrides.get("env") or {}).get("id") if isinstance(overrides.get("env"), dict) else None) or env.get("id")
    if isinstance(env_id, str) and ":" in env_id:
        named = [*named, env_id.partition(":")[0]]
    missing = [m for m in dict.fromkeys(named) if not _same_module(m, given)]
    if missing:
        flags = " ".join(f"--import {m}" for m in missing)
        raise ConfigError(f"{path} names plugin module(s) {', '.join(repr(m) for m in missing)}; agentgym never "
                          f"imports modules named inside a run folder: if you trust them, pass {flags}")
    return data


def _parse_value(text: str) -> Any:
    """Override values: JSON when they parse as JSON (numbers, true/false, null, lists, objects), else
    the string itself."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ConfigError(f"override value {text[:40]!r}...: nested too deeply") from None
    except ValueError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text
    check_config_limits(value, f"override value {text[:40]!r}")
    return value


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        if isinstance(node.get(key), str) and ".".join(keys[:i + 1]) in NAMED_SECTIONS:
            node[key] = {"name": node[key]}  # --feedback.teacher openai --feedback.teacher.openai.model m
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--{dotted}: {key!r} is a value, not a section")
        node = nxt
    if dotted in NAMED_SECTIONS and isinstance(node.get(keys[-1]), dict) and isinstance(value, str):
        node[keys[-1]]["name"] = value
        return
    node[keys[-1]] = value


def parse_overrides(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """``[--config FILE] [--import MODULE] --a.b VALUE --c.d=VALUE ...`` -> (file, nested overrides);
    ``--import`` values are collected in the top-level ``plugins`` list."""
    config_file, tree = None, {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"expected --section.key VALUE, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            value = argv[i + 1]
            i += 1
        i += 1
        if key == "config":
            config_file = value
            continue
        if key in ("import", "plugins"):
            tree.setdefault("plugins", []).extend(v.strip() for v in value.split(",") if v.strip())
            continue
        if "." not in key:
            raise ConfigError(f"--{key}: overrides are --section.key (sections: {sorted(SECTIONS)}; also --import MODULE)")
        _set(tree, key, _parse_value(value))
    return config_file, tree


_OPAQUE = ("kwargs", "eval_kwargs", "vllm_kwargs")  # dict-valued settings replace, never merge


def _merge(base: dict[str, Any], over: dict[str, Any], at: str = "") -> dict[str, Any]:
    """``over`` on top of ``base``, section by section (a named section's plain string is its name)."""
    out = dict(base)
    for k, v in over.items():
        where = f"{at}.{k}" if at else str(k)
        if where in NAMED_SECTIONS and isinstance(v, dict) != isinstance(out.get(k), dict) and k in out:
            out[k], v = ({"name": out[k]}, v) if isinstance(v, dict) else (out[k], {"name": v})
        if k == "plugins":
            out[k] = list(dict.fromkeys([*out.get(k, []), *v]))
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _OPAQUE:
            out[k] = _merge(out[k], v, where)
        else:
            out[k] = v
    return out


