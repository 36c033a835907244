"""Learning: learner against learner on the same small learnable task set and budget, over seeds.

Run: ``.venv/bin/python benchmarks/learning.py`` (CPU, SmolLM2-135M-Instruct + LoRA; 5 learners x 3
seeds; ``--jobs 3`` runs seeds side by side, one torch thread each) or
``--learners grpo,hint_sd --seeds 1 --updates 2`` for a quick look; ``--smoke`` is the seconds-long
check the test suite runs (tiny model, one update).

Every run starts from the CPU demo preset's settings for Echo (what a bare ``agentgym train --env.id
agentgym/Echo-v0`` uses: its learning rate, LoRA, teacher and teacher wording) with the same task
set and budget for every learner: ``agentgym/Echo-v0`` with ``reference=True``, "Say the word: X",
one step per episode (``max_steps 1``: the first answer is the episode), success only for exactly
the word. Four words are trained on and four are held out. What differs is each learner's own
objective and the feedback it is built to use:

- grpo / gigpo: rewards only (a group whose samples all fail has no gradient);
- hint_sd: the env's reference as hindsight on failed episodes (``reference_hindsight``: the first
  departing step gets "Correct reply: X"), distilled from the teacher that sees it;
- dense_sd: the env's reference on every step, successful or not (``reference`` source: "Reference
  solution: X", ``dense`` selector);
- serl: its default ``immediate`` feedback (the env's own reply), reweighting GRPO's advantages.

Printed per learner, as mean ± std over seeds: held-out success before, after each update and at the
end (greedy), the held-out reference log-prob (mean per-token log-prob of the expected word) before
and after, the teacher signal (``teacher_gain``: reference log-prob under the teacher context minus
under the student's, on targeted steps), seconds per update. The measured table is in the README
("How the learners compare").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _learning import common_args, demo_config, mean_std, run_all, train_one

LEARNERS = ("grpo", "dense_sd", "hint_sd", "serl", "gigpo")
FEEDBACK = {"dense_sd": {"source": "reference", "selector": "dense"}}
ENV = "agentgym/Echo-v0"


def config(learner: str, seed: int, args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """The demo preset's settings for Echo and this learner, with the benchmark's task set and budget."""
    return demo_config(ENV, learner, {
        "model": {"name": args.model},
        "env": {"id": ENV, "kwargs": {"reference": True}, "tasks_per_update": args.tasks, "group_size": args.group,
                "max_steps": 1, "eval_tasks": 4},
        "rollout": {"temperature": 1.0, "eval_temperature": 0.0, "max_new_tokens": 8},
        "feedback": FEEDBACK.get(learner, {}),
        "learner": {"name": learner, **({"lr": args.lr} if args.lr else {})},
        "train": {"updates": args.updates, "seed": seed, "run_dir": str(run_dir), "eval_every": 1}})


def one_run(learner: str, seed: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    summary, records, wall = train_one(config(learner, seed, args, root / f"{learner}-s{seed}"), args.jobs > 1)
    train = [r for r in records if r["phase"] == "train"]
    evals = sorted((r for r in records if r["phase"] == "eval"), key=lambda r: r["update"])
    effect = summary.get("effect") or {}
    signal = summary.get("teacher_signal") or {}
    return {"learner": learner, "seed": seed, "curve": [r["success_rate"] for r in evals],
            "success_before": evals[0]["success_rate"], "success_after": evals[-1]["success_rate"],
            "ref_before": effect.get("before"), "ref_after": effect.get("after"),
            "teacher_gain": signal.get("teacher_gain"), "teacher_prefers": signal.get("teacher_prefers_reference"),
            "seconds_per_update": summary["seconds_per_update"],
            "train_success": sum(r["success_rate"] for r in train) / max(1, len(train)), "wall_seconds": wall}


def table(rows: list[dict[str, Any]], updates: int) -> str:
    head = ("| learner | held-out success before | after update 1 .. N (mean over seeds) | success after | "
            "ref log-prob before -> after | teacher_gain (prefers ref) | s / update |")
    lines = [head, "|" + "---|" * 7]
    for learner in dict.fromkeys(r["learner"] for r in rows):
        mine = [r for r in rows if r["learner"] == learner]
        col = lambda key, fmt="{:.2f}": mean_std([r[key] for r in mine], fmt)  # noqa: E731
        curve = " / ".join(f"{statistics.mean(r['curve'][k] for r in mine):.2f}" for k in range(1, updates + 1)
                           if all(len(r["curve"]) > k for r in mine))
        gain = "n/a" if all(r["teacher_gain"] is None for r in mine) else \
            f"{col('teacher_gain', '{:+.2f}')} ({col('teacher_prefers', '{:.0%}')})"
        lines.append(f"| {learner} | {col('success_before')} | {curve} | {col('success_after')} | "
                     f"{col('ref_before')} -> {col('ref_after')} | {gain} | {col('seconds_per_update', '{:.1f}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(ap, ",".join(LEARNERS), updates=3)
    ap.add_argument("--tasks", type=int, default=2, help="tasks per update")
    ap.add_argument("--group", type=int, default=4, help="rollouts per task")
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.seeds, args.updates, args.tasks, args.group = "tiny", 1, 1, 1, 2
    learners = [n.strip() for n in args.learners.split(",") if n.strip()]
    jobs = [(learner, seed) for learner in learners for seed in range(args.seeds)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        rows = run_all(one_run, [(learner, seed, args, root) for learner, seed in jobs], args.jobs)
        for r in rows:
            print(f"{r['learner']} seed {r['seed']}: success {' -> '.join(f'{x:.2f}' for x in r['curve'])}, "
                  f"teacher_gain {r['teacher_gain']}, {r['wall_seconds']:.0f} s", file=sys.stderr, flush=True)
    print(f"{ENV} (reference), {args.model}, the demo preset's settings, {args.updates} updates x {args.tasks} tasks x "
          f"{args.group} rollouts, max_steps 1, 4 held-out words (greedy); mean ± std over {args.seeds} seed(s)\n")
    print(table(rows, args.updates))
    print(f"\ntotal {sum(r['wall_seconds'] for r in rows) / 60:.1f} min of runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
