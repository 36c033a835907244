"""What the learning benchmarks share: a run config that starts from the CPU demo preset, one training
run with its records, runs side by side in processes, and mean ± std over seeds."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from agentgym import Trainer
from agentgym.config import _merge
from agentgym.presets import PRESETS


def demo_config(env_id: str, learner: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The demo preset's settings for ``env_id`` and ``learner`` (what ``agentgym train --env.id ENV
    --learner.name LEARNER`` starts from) with ``overrides`` on top. Runs keep every update's records;
    a reward-only learner whose samples all fail has no gradient: a result to report, not an error."""
    quiet = {"model": {"gradient_checkpointing": False},
             "train": {"progress": False, "max_no_gradient_fraction": 1.0, "checkpoint_every": 0, "tensorboard": False}}
    return _merge(_merge(PRESETS["demo"].base_for(env_id, learner), quiet), overrides)


def train_one(config: dict[str, Any], one_thread: bool) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """(summary, metrics records, wall seconds) of one training run."""
    if one_thread:
        torch.set_num_threads(1)
    started = time.perf_counter()
    summary = Trainer(config).fit()
    path = Path(config["train"]["run_dir"]) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return summary, records, time.perf_counter() - started


def run_all(fn: Callable[..., dict[str, Any]], calls: Sequence[tuple], jobs: int) -> list[dict[str, Any]]:
    """``fn(*call)`` for every call, ``jobs`` at a time in processes (one torch thread each)."""
    if jobs <= 1:
        return [fn(*call) for call in calls]
    os.environ["OMP_NUM_THREADS"] = "1"
    with ProcessPoolExecutor(jobs) as pool:
        return [f.result() for f in [pool.submit(fn, *call) for call in calls]]


def mean_std(values: Sequence[float | None], fmt: str = "{:.2f}") -> str:
    """'mean ± std' over the values that exist ('n/a' when none; the value alone for one)."""
    xs = [v for v in values if v is not None]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs))}"


def common_args(ap: argparse.ArgumentParser, learners: str, updates: int) -> None:
    """The options both learning benchmarks take (and their offline, quiet environment)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the benchmarks' own choice: models come from the local cache
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap.add_argument("--learners", default=learners, help="comma-separated learner names")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--updates", type=int, default=updates)
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: the demo preset's)")
    ap.add_argument("--model", default="auto", help="auto = SmolLM2-135M-Instruct when installed, else tiny")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side (each with one torch thread)")
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--smoke", action="store_true", help="seconds-long check: tiny model, 1 seed, 1 update")
