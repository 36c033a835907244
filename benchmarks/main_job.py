"""The main job over seeds: the bare ``agentgym train`` (HINT-SD on BFCL v3 multi-turn, SmolLM2-135M,
CPU) run with ``--train.seed 0 1 2``; prints, per seed and as mean ± std over seeds, the held-out
success before / after, the held-out reference log-prob before / after with its paired difference,
the trained task's, the run's teacher_gain, and the wall time of each run.

Run: ``.venv/bin/python benchmarks/main_job.py`` (~3 runs x 3-6 min on 2 cores; ``--jobs 3`` runs the
seeds side by side; ``--tabulate RUN_DIR...`` prints the table of runs already made). The measured
table is in the README ("The main job").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


SMOKE = ["--model.name", "tiny", "--train.updates", "1", "--train.checkpoint_every", "0",
         "--model.gradient_checkpointing", "false", "--env.eval_tasks", "2", "--rollout.max_new_tokens", "8"]


def _ms(xs: list[float], fmt: str = "{:+.3f}") -> str:
    if len(xs) < 2:
        return fmt.format(xs[0]) if xs else "n/a"
    return f"{fmt.format(statistics.mean(xs))} ± {statistics.stdev(xs):.3f}"


def row_of(run: Path, seed: int, wall: float | None) -> dict:
    """One seed's figures from its run folder's summary.json."""
    s = json.loads((run / "summary.json").read_text())
    e = s["effect"]
    if wall is None:  # a finished run: its own seconds (training; evaluations aside)
        wall = (s.get("seconds_per_update") or 0.0) * (s.get("updates") or 0)
    return {"seed": seed, "wall": wall, "success_before": s["success_before"],
            "success_after": s["success_after"], "before": e["before"], "after": e["after"],
            "diff": e["difference"]["mean"], "low": e["difference"]["low"], "high": e["difference"]["high"],
            "tasks": e["difference"]["n"],
            "trained": s["trained_reference_logprob_after"] - s["trained_reference_logprob_before"],
            "gain": (s.get("teacher_signal") or {}).get("teacher_gain")}


def print_table(rows: list[dict]) -> None:
    print("| seed | success before -> after | held-out ref log-prob before -> after | difference [95 % over tasks] | "
          "trained-task ref log-prob difference | teacher_gain | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        interval = f" [{r['low']:+.3f}, {r['high']:+.3f}]" if r["low"] is not None else ""
        print(f"| {r['seed']} | {r['success_before']:.2f} -> {r['success_after']:.2f} | {r['before']:.3f} -> "
              f"{r['after']:.3f} | {r['diff']:+.3f}{interval} | {r['trained']:+.3f} | "
              f"{'n/a' if r['gain'] is None else format(r['gain'], '+.2f')} | {r['wall']:.0f} |")
    diffs = [r["diff"] for r in rows]
    print(f"| mean ± std over {len(rows)} seeds | "
          f"{_ms([r['success_before'] for r in rows], '{:.2f}')} -> {_ms([r['success_after'] for r in rows], '{:.2f}')} | "
          f"{_ms([r['before'] for r in rows], '{:.3f}')} -> {_ms([r['after'] for r in rows], '{:.3f}')} | "
          f"{_ms(diffs)} | {_ms([r['trained'] for r in rows])} | "
          f"{_ms([r['gain'] for r in rows if r['gain'] is not None], '{:+.2f}')} | {_ms([r['wall'] for r in rows], '{:.0f}')} |")
    for label, xs in (("held-out", diffs), ("trained-task", [r["trained"] for r in rows])):
        if len(xs) > 1:
            spread = statistics.stdev(xs)
            print(f"{label} difference / its seed-to-seed std: "
                  f"{statistics.mean(xs) / spread if spread else float('inf'):.1f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1, help="seeds run side by side (each with one torch thread)")
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("--tabulate", nargs="+", default=None, metavar="RUN_DIR",
                    help="print the table of finished runs (seed i = the i-th folder) instead of training")
    ap.add_argument("--smoke", action="store_true", help="seconds-long check: one seed of the same run with the "
                    "tiny model, one update, 2 tasks per evaluation, 8 new tokens (what the test suite runs)")
    ap.add_argument("extra", nargs="*", help="further `agentgym train` overrides (after --)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.extra = 1, [*SMOKE, *args.extra]
    if args.tabulate:
        print_table([row_of(Path(run), i, None) for i, run in enumerate(args.tabulate)])
        return 0
    agentgym = Path(sys.executable).with_name("agentgym")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # built-in models only: no network
    if args.jobs > 1:
        env["OMP_NUM_THREADS"] = "1"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        pending = list(range(args.seeds))
        running: dict[int, tuple[subprocess.Popen, float]] = {}
        while pending or running:
            while pending and len(running) < max(1, args.jobs):
                seed = pending.pop(0)
                root.mkdir(parents=True, exist_ok=True)
                with open(root / f"main-s{seed}.log", "w") as log:  # a file, not a pipe: no child blocks on it
                    proc = subprocess.Popen([str(agentgym), "train", "--train.seed", str(seed), "--train.run_dir",
                                             str(root / f"main-s{seed}"), "--train.progress", "false", *args.extra],
                                            stdout=subprocess.DEVNULL, stderr=log, env=env)
                running[seed] = (proc, time.perf_counter())
            seed = next(iter(running))
            proc, started = running.pop(seed)
            if proc.wait() != 0:
                print((root / f"main-s{seed}.log").read_text()[-3000:], file=sys.stderr)
                for other, _ in running.values():
                    other.kill()
                return proc.returncode
            rows.append(row_of(root / f"main-s{seed}", seed, time.perf_counter() - started))
            print(f"seed {seed}: {rows[-1]['wall']:.0f} s", file=sys.stderr, flush=True)
    print_table(sorted(rows, key=lambda r: r["seed"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
