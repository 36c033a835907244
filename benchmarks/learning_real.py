"""Learning on a REAL benchmark within CPU minutes: learners side by side over seeds, held out.

Run: ``.venv/bin/python benchmarks/learning_real.py`` (SmolLM2-135M-Instruct + LoRA on 2 CPU cores;
``--jobs 3`` runs seeds side by side) or ``--smoke`` (tiny model, one update: what the test suite runs).

The setting is BFCL v3 single-turn ``simple_python`` (the real entries and the official AST checker
of bfcl-eval 2026.3.23): one function schema per task, one reply per episode (a Python call list),
success = the checker accepts the call. ``--train-tasks`` entries are trained on and
``--eval-tasks`` other entries are held out (the same for every learner and seed: a fixed shuffle). Every learner starts from the CPU demo preset's settings for this env and gets
the same model, LoRA, learning rate, tasks, group size, update count and sampling; HINT-SD's feedback
is the reference hindsight (the first acceptable call, "Correct reply: [f(x=1)]"), GRPO has rewards
only. Printed, per learner as mean ± std over seeds: held-out success before / after (greedy), the
held-out reference log-prob (mean per-token log-prob of an acceptable call under the student, paired
task by task) before / after and its difference over its seed-to-seed std, teacher_gain, and
seconds per update. The measured table is in the README ("Learning on a real benchmark").
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _learning import common_args, demo_config, mean_std, run_all, train_one

from agentgym.envs.bfcl.single_turn import load_single_turn

ENV = "agentgym/BFCLSingleTurn-v0"
FEEDBACK = {"hint_sd": {"source": "reference_hindsight", "selector": "hindsight_multi"},
            "dense_sd": {"source": "reference_hindsight", "selector": "dense"}}


def config(learner: str, seed: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    return demo_config(ENV, learner, {
        "model": {"name": args.model},
        "env": {"id": ENV, "kwargs": {"category": args.category}, "tasks_per_update": args.tasks,
                "group_size": args.group, "max_steps": 1, **split_tasks(args)},
        "rollout": {"temperature": 1.0, "eval_temperature": 0.0, "max_new_tokens": args.max_new_tokens},
        "feedback": FEEDBACK.get(learner, {}),
        "learner": {"name": learner, **({"lr": args.lr} if args.lr else {})},
        "train": {"updates": args.updates, "seed": seed, "run_dir": str(run_dir), "eval_every": 0}})


def split_tasks(args: argparse.Namespace) -> dict[str, list[str]]:
    """The same held-out and training entries for every learner and seed: a fixed shuffle of the
    category's ids, the first ``eval_tasks`` held out, the next ``train_tasks`` trained on."""
    ids = [e["id"] for e in load_single_turn(args.category)]
    random.Random(f"learning_real/{args.category}").shuffle(ids)
    return {"eval_task_ids": ids[:args.eval_tasks], "task_ids": ids[args.eval_tasks:args.eval_tasks + args.train_tasks]}


def one_run(learner: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    summary, _, wall = train_one(config(learner, seed, args, root / f"{learner}-s{seed}"), args.jobs > 1)
    effect = summary.get("effect") or {}
    signal = summary.get("teacher_signal") or {}
    return {"learner": learner, "seed": seed, "success_before": summary["success_before"],
            "success_after": summary["success_after"], "ref_before": effect.get("before"),
            "ref_after": effect.get("after"), "diff": (effect.get("difference") or {}).get("mean"),
            "teacher_gain": signal.get("teacher_gain"), "seconds_per_update": summary["seconds_per_update"],
            "wall_seconds": wall}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| learner | held-out success before -> after | held-out ref log-prob before -> after | "
             "difference (paired by task) | difference / seed std | teacher_gain | s / update |",
             "|" + "---|" * 7]
    for learner in dict.fromkeys(r["learner"] for r in rows):
        mine = [r for r in rows if r["learner"] == learner]
        col = lambda key, fmt="{:.3f}": mean_std([r[key] for r in mine], fmt)  # noqa: E731
        diffs = [r["diff"] for r in mine if r["diff"] is not None]
        ratio = (f"{statistics.mean(diffs) / statistics.stdev(diffs):+.1f}x"
                 if len(diffs) > 1 and statistics.stdev(diffs) > 0 else "n/a")
        lines.append(f"| {learner} | {col('success_before', '{:.2f}')} -> {col('success_after', '{:.2f}')} | "
                     f"{col('ref_before')} -> {col('ref_after')} | {col('diff', '{:+.3f}')} | {ratio} | "
                     f"{col('teacher_gain', '{:+.2f}')} | {col('seconds_per_update', '{:.0f}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(ap, "grpo,hint_sd", updates=6)
    ap.add_argument("--category", default="simple_python")
    ap.add_argument("--train-tasks", type=int, default=16, help="entries trained on")
    ap.add_argument("--eval-tasks", type=int, default=16, help="held-out entries evaluated")
    ap.add_argument("--tasks", type=int, default=4, help="tasks per update")
    ap.add_argument("--group", type=int, default=4, help="rollouts per task")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.seeds, args.updates, args.tasks, args.group = "tiny", 1, 1, 1, 2
        args.train_tasks, args.eval_tasks, args.max_new_tokens = 2, 2, 8
    learners = [n.strip() for n in args.learners.split(",") if n.strip()]
    jobs = [(learner, seed) for learner in learners for seed in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_all(one_run, [(lr, s, args, Path(args.out or tmp)) for lr, s in jobs], args.jobs)
    for r in rows:
        print(json.dumps(r), file=sys.stderr, flush=True)
    print(f"{ENV} ({args.category}), {args.model}, the demo preset's settings, {args.updates} updates x {args.tasks} "
          f"tasks x {args.group} rollouts from {args.train_tasks} training entries, {args.eval_tasks} held-out entries "
          f"(greedy); mean ± std over {args.seeds} seed(s)\n")
    print(table(rows))
    print(f"\ntotal {sum(r['wall_seconds'] for r in rows) / 60:.1f} min of runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
