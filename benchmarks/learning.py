"""Learning: learner against learner on the same small learnable task set and budget, 3 seeds each.

Run: ``.venv/bin/python benchmarks/learning.py`` (CPU, SmolLM2-135M-Instruct + LoRA, ~15-25 min on 2
cores) or ``--learners grpo,hint_sd --seeds 1 --updates 2`` for a quick look.

The task set is ``agentgym/Echo-v0`` with ``reference=True``: "Say the word: X", one step per
episode (``max_steps 1``: the first answer is the episode), success only for exactly the word.
Four words are trained on and four are held out for evaluation. Every learner gets the same model,
LoRA, learning rate, tasks, group size, update count and sampling; what differs is each learner's
own objective and the feedback it is built to use:

- grpo / gigpo: rewards only (a group whose samples all fail has no gradient);
- hint_sd: the env's reference as hindsight on failed episodes (``reference_hindsight``: the first
  departing step gets "the expected answer was X"), distilled from the teacher that sees it;
- dense_sd: the env's reference on every step (``reference`` source, ``dense`` selector);
- serl: its default ``immediate`` feedback (the env's own reply, "Wrong: you said ...").

Printed per learner, as mean ± std over seeds: held-out success and reward after N updates (greedy),
the held-out reference log-prob (mean per-token log-prob of the expected word, the metric that
moves before success does) before and after, seconds per update and teacher calls per update. The
measured table is in the README ("How the learners compare").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LEARNERS = ("grpo", "dense_sd", "hint_sd", "serl", "gigpo")
FEEDBACK = {"hint_sd": {"source": "reference_hindsight", "selector": "hindsight_multi"},
            "dense_sd": {"source": "reference", "selector": "dense"}}


def config(learner: str, seed: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    return {
        "model": {"name": args.model, "lora_r": 8, "lora_alpha": 16},
        "env": {"id": "agentgym/Echo-v0", "kwargs": {"reference": True}, "tasks_per_update": args.tasks,
                "group_size": args.group, "max_steps": 1, "eval_tasks": 4},
        "rollout": {"temperature": 1.0, "eval_temperature": 0.0, "max_new_tokens": 8},
        "feedback": FEEDBACK.get(learner, {}),
        "learner": {"name": learner, "lr": args.lr},
        "train": {"updates": args.updates, "seed": seed, "run_dir": str(run_dir), "progress": False,
                  "checkpoint_every": 0, "tensorboard": False},
    }


def one_run(learner: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from agentgym.train import Trainer
    run_dir = root / f"{learner}-s{seed}"
    started = time.perf_counter()
    summary = Trainer(config(learner, seed, args, run_dir)).fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["phase"] == "train"]
    evals = [r for r in records if r["phase"] == "eval"]
    effect = summary.get("effect") or {}
    return {"learner": learner, "seed": seed, "success_before": evals[0]["success_rate"],
            "success_after": evals[-1]["success_rate"], "reward_after": evals[-1]["reward_mean"],
            "ref_before": effect.get("before"), "ref_after": effect.get("after"),
            "seconds_per_update": summary["seconds_per_update"],
            "teacher_calls": sum(r.get("teacher_calls", 0.0) for r in train) / max(1, len(train)),
            "train_success": sum(r["success_rate"] for r in train) / max(1, len(train)),
            "wall_seconds": time.perf_counter() - started}


def _ms(values: list[float | None], fmt: str = "{:.2f}") -> str:
    xs = [v for v in values if v is not None]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(statistics.mean(xs))} ± {fmt.format(statistics.stdev(xs))}"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| learner | success before | success after | reward after | train success | ref log-prob before | "
            "ref log-prob after | s / update | teacher calls / update |")
    lines = [head, "|" + "---|" * 9]
    for learner in dict.fromkeys(r["learner"] for r in rows):
        mine = [r for r in rows if r["learner"] == learner]
        col = lambda key, fmt="{:.2f}": _ms([r[key] for r in mine], fmt)  # noqa: E731
        lines.append(f"| {learner} | {col('success_before')} | {col('success_after')} | {col('reward_after')} | "
                     f"{col('train_success')} | {col('ref_before')} | {col('ref_after')} | "
                     f"{col('seconds_per_update', '{:.1f}')} | {col('teacher_calls', '{:.1f}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--learners", default=",".join(LEARNERS), help="comma-separated learner names")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--updates", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=2, help="tasks per update")
    ap.add_argument("--group", type=int, default=4, help="rollouts per task")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--model", default="auto", help="auto = SmolLM2-135M-Instruct when installed, else tiny")
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temporary folder)")
    args = ap.parse_args(argv)
    learners = [n.strip() for n in args.learners.split(",") if n.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for learner in learners:
            for seed in range(args.seeds):
                rows.append(one_run(learner, seed, args, root))
                r = rows[-1]
                print(f"{learner} seed {seed}: success {r['success_before']:.2f} -> {r['success_after']:.2f}, "
                      f"ref log-prob {r['ref_before']} -> {r['ref_after']}, {r['wall_seconds']:.0f} s",
                      file=sys.stderr, flush=True)
    print(f"Echo-v0 (reference), {args.model}, LoRA r8, lr {args.lr}, {args.updates} updates x {args.tasks} tasks x "
          f"{args.group} rollouts, max_steps 1, 4 held-out words (greedy); mean ± std over {args.seeds} seeds\n")
    print(table(rows))
    print(f"\ntotal {sum(r['wall_seconds'] for r in rows) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
