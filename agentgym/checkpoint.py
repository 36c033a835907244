"""Checkpoints of a training run: everything needed to resume exactly where a run stopped.

``RUN_DIR/checkpoints/step-K/`` holds (see the run-folder contract):

- ``model/``: the peft adapter (``save_pretrained``) or the full model;
- ``optimizer.pt``: the optimizer state;
- ``teacher.pt``: the teacher's weights (the EMA / refreshed copy of the trainable parameters, i.e.
  the second adapter under LoRA) with its mode, or None for learners without a teacher;
- ``schedule.pt``: the update counter (schedules such as SERL's lambda derive from it) and the
  reference weights of the KL term when it is on;
- ``rng.pt``: python / numpy / torch (and CUDA) RNG states;
- ``state.json``: ``{"step": K, "config_hash": ..., "time": ...}``, written last, so a checkpoint
  without it is incomplete and ignored.

A checkpoint is written to a temporary folder and renamed into place, so a run killed while saving
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "latest_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, model: Any, learner: Any, *, config_hash: str,
                    extra: dict[str, Any] | None = None, keep: int = 2) -> Path:
    """Write ``checkpoints/step-{step}`` atomically and prune all but the ``keep`` latest."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}-", dir=root))
    try:
        model.save_pretrained(tmp / "model")
        state = learner.state_dict()
        torch.save(state.pop("optimizer"), tmp / "optimizer.pt")
        torch.save(state.pop("teacher"), tmp / "teacher.pt")
        torch.save(state, tmp / "schedule.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        state = {"step": step, "config_hash": config_hash, "time": time.time(), **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    done = sorted((p for p in root.glob("step-*") if (p / "state.json").is_file()),
                  key=lambda p: int(p.name.split("-")[1]))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step-*") if (p / "state.json").is_file() and p.name.split("-")[1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def load_checkpoint(path: str | Path, model: Any, learner: Any, *, config_hash: str | None = None) -> dict[str, Any]:
    """Restore model weights, learner state and RNG states from ``path``; returns ``state.json``."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if config_hash is not None and state.get("config_hash") != config_hash:
        raise ValueError(f"checkpoint {path} was written by a different configuration "
                         f"(hash {state.get('config_hash')} != {config_hash}); use a new run_dir or --train.resume false")
    weights = _load_weights(path / "model")
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        result = set_peft_model_state_dict(model, weights)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"adapter checkpoint {path} does not fit the model: unexpected {unexpected[:5]}")
    else:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected:
            raise ValueError(f"model checkpoint {path} does not fit the model: unexpected {unexpected[:5]}")
    learner_state = torch.load(path / "schedule.pt", weights_only=False)
    learner_state["optimizer"] = torch.load(path / "optimizer.pt", weights_only=False)
    learner_state["teacher"] = torch.load(path / "teacher.pt", weights_only=False)
    learner.load_state_dict(learner_state)
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return state


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out
