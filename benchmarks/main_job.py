"""The main job over seeds: the bare ``agentgym train`` (HINT-SD on BFCL v3 multi-turn, SmolLM2-135M,
CPU) run with ``--train.seed 0 1 2``; prints, per seed and as mean ± std over seeds, the held-out
success before / after and the held-out reference log-prob before / after with its paired
difference, and the wall time of each run.

Run: ``.venv/bin/python benchmarks/main_job.py`` (~3 runs x 3-6 min on 2 cores). The measured table
is in the README ("The main job").
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


def _ms(xs: list[float], fmt: str = "{:+.3f}") -> str:
    if len(xs) < 2:
        return fmt.format(xs[0]) if xs else "n/a"
    return f"{fmt.format(statistics.mean(xs))} ± {statistics.stdev(xs):.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temporary folder)")
    ap.add_argument("extra", nargs="*", help="further `agentgym train` overrides (after --)")
    args = ap.parse_args(argv)
    agentgym = Path(sys.executable).with_name("agentgym")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        for seed in range(args.seeds):
            run = root / f"main-s{seed}"
            started = time.perf_counter()
            proc = subprocess.run([str(agentgym), "train", "--train.seed", str(seed), "--train.run_dir", str(run),
                                   "--train.progress", "false", *args.extra], capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})  # built-in models only: no network
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
            s = json.loads((run / "summary.json").read_text())
            e = s["effect"]
            rows.append({"seed": seed, "wall": time.perf_counter() - started, "success_before": s["success_before"],
                         "success_after": s["success_after"], "before": e["before"], "after": e["after"],
                         "diff": e["difference"]["mean"], "low": e["difference"]["low"],
                         "high": e["difference"]["high"], "tasks": e["difference"]["n"],
                         "trained": s["trained_reference_logprob_after"] - s["trained_reference_logprob_before"]})
            r = rows[-1]
            print(f"seed {seed}: {r['wall']:.0f} s", file=sys.stderr, flush=True)
    print("| seed | success before -> after | held-out ref log-prob before -> after | difference [95 % over tasks] | "
          "trained-task ref log-prob difference | wall s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        interval = f" [{r['low']:+.3f}, {r['high']:+.3f}]" if r["low"] is not None else ""
        print(f"| {r['seed']} | {r['success_before']:.2f} -> {r['success_after']:.2f} | {r['before']:.3f} -> "
              f"{r['after']:.3f} | {r['diff']:+.3f}{interval} | {r['trained']:+.3f} | {r['wall']:.0f} |")
    diffs = [r["diff"] for r in rows]
    print(f"| mean ± std over {len(rows)} seeds | "
          f"{_ms([r['success_before'] for r in rows], '{:.2f}')} -> {_ms([r['success_after'] for r in rows], '{:.2f}')} | "
          f"{_ms([r['before'] for r in rows], '{:.3f}')} -> {_ms([r['after'] for r in rows], '{:.3f}')} | "
          f"{_ms(diffs)} | {_ms([r['trained'] for r in rows])} | {_ms([r['wall'] for r in rows], '{:.0f}')} |")
    for label, xs in (("held-out", diffs), ("trained-task", [r["trained"] for r in rows])):
        if len(xs) > 1:
            spread = statistics.stdev(xs)
            print(f"{label} difference / its seed-to-seed std: "
                  f"{statistics.mean(xs) / spread if spread else float('inf'):.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
