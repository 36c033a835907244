"""Models and policies from a run config: ``load_model`` (a registered name, folder or hub id, with
LoRA attached when configured), the in-process policy ``agentgym eval`` evaluates (a run's final
adapter or weights, a checkpoint or a folder), and the one scorer of an action's mean per-token
log-prob that training and evaluation report.

Importing this module loads torch and transformers: the commands import it only once their settings
are checked, so that ``--help`` and config errors stay fast.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import peft
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from agentgym.agents.models import ModelSource, check_attention, resolve_model
from agentgym.agents.transformers_policy import TransformersPolicy
from agentgym.checkpoint import latest_intact_checkpoint, verify_checkpoint
from agentgym.config import ConfigError, RunConfig
from agentgym.learners.base import action_log_probs

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # before any tokenizer runs (and forks)

__all__ = ["load_model", "prepare_model", "pick_device", "score_action", "action_scorer", "weights_folder",
           "load_policy", "ModelSource", "resolve_model"]


# ------------------------------------------------------------------------------------------ models
def load_model(cfg: RunConfig, device: Any, source: Any = None) -> tuple[Any, Any, str]:
    """(model with LoRA attached when configured, tokenizer, display name)."""
    m = cfg.model
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[m.dtype]
    torch.manual_seed(cfg.train.seed)
    source = source or resolve_model(m.name)
    attn = check_attention(m.attn_implementation, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if source.build is not None:
        model = source.build().to(dtype)
        if attn is not None:
            model.set_attn_implementation(attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype,
                                                     **({"attn_implementation": attn} if attn else {}))
    return prepare_model(cfg, model, tokenizer, device), tokenizer, source.name


def prepare_model(cfg: RunConfig, model: Any, tokenizer: Any, device: Any) -> Any:
    """``model`` on ``device`` with the configured gradient checkpointing and LoRA adapter (unless it
    has one); the tokenizer gets a pad token."""
    m = cfg.model
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if m.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works under LoRA.
        # (transformers >= 5.2x renamed it activation checkpointing; older ones only have the old name.)
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if m.lora and not hasattr(model, "peft_config"):
        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=m.target_modules,
                task_type="CAUSAL_LM"))
    return model.to(device)


def pick_device(cfg: RunConfig) -> torch.device:
    """CUDA when ``model.device`` asks for it or is ``auto`` with a GPU present, else the CPU."""
    return torch.device("cuda" if cfg.model.device == "cuda" or (cfg.model.device == "auto" and
                                                                 torch.cuda.is_available()) else "cpu")


# ------------------------------------------------------------------------------------------ scoring
def score_action(model: Any, ctx: list[int], act: list[int], *, pad_id: int) -> float:
    """Mean per-token log-prob of ``act`` after ``ctx`` under ``model`` (temperature 1)."""
    with torch.no_grad():
        [lp] = action_log_probs(model, [ctx], [act], pad_id=pad_id, temperature=1.0)
    return float(lp.gather(-1, torch.tensor(act, device=lp.device).unsqueeze(-1)).mean())


def action_scorer(model: Any, tokenizer: Any) -> Callable[[list[int], list[int]], float]:
    """``score_action`` under ``model``, padding with the tokenizer's pad id."""
    return lambda ctx, act: score_action(model, ctx, act, pad_id=tokenizer.pad_token_id or 0)


# ------------------------------------------------------------------------------------------ what an eval loads
def weights_folder(settings: Any, lora: bool) -> tuple[Path | None, str]:
    """(folder of the adapter / model to load, how it was chosen) for a run or checkpoint."""
    if settings.checkpoint is not None:
        path = Path(settings.checkpoint)
        if (path / "state.json").is_file():
            verify_checkpoint(path)  # raises CheckpointError saying what is damaged
            return path / "model", f"checkpoint {path}"
        if path.is_dir():
            return path, f"folder {path}"
        raise ConfigError(f"--checkpoint {str(path)!r} is not a folder")
    if settings.run is None or settings.model is not None:
        return None, "base model"  # --model NAME with a run folder: the run's env and tasks, NAME's weights
    run = Path(settings.run)
    final = run / ("adapter" if lora else "model")
    if final.is_dir():
        return final, f"final {'adapter' if lora else 'weights'} of {run}"
    found = latest_intact_checkpoint(run)
    if found is None:
        raise ConfigError(f"{run} has no final {'adapter' if lora else 'model'} folder and no intact checkpoint")
    return found / "model", f"newest intact checkpoint {found.name} of {run} (the run has not finished)"


def load_policy(cfg: Any, settings: Any) -> tuple[Any, Any, str, str]:
    """(in-process policy, tokenizer, model display name, what weights) of ``agentgym eval``'s settings."""
    folder, what = weights_folder(settings, cfg.model.lora)
    device = pick_device(cfg)
    base_cfg = cfg.model_copy(deep=True)
    base_cfg.model.lora = False
    base_cfg.model.gradient_checkpointing = False
    if folder is not None and not (folder / "adapter_config.json").is_file():
        base_cfg.model.name = str(folder)  # full weights
        model, tok, name = load_model(base_cfg, device)
    else:
        model, tok, name = load_model(base_cfg, device)
        if folder is not None:
            model = peft.PeftModel.from_pretrained(model, str(folder)).to(device)
    model.eval()
    policy = TransformersPolicy(model, tok, device=str(device), dtype=next(model.parameters()).dtype,
                                batch_size=cfg.rollout.batch_size)
    policy.name = name
    return policy, tok, name, what
