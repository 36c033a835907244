"""ALFWorld env: memory over many consecutive episodes, and step / reset latency.

    .venv/bin/python benchmarks/alfworld_env.py [--episodes 500] [--steps 5] [--games DIR]

Plays EPISODES consecutive resets + episodes (random admissible commands, STEPS per episode, the
expert plan computed at each reset as in the default config) in one process over the rebuilt shared
trial plus any generated games, and prints RSS growth against the 100 MB budget and latencies.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from agentgym.envs.alfworld.env import ALFWorldEnv
from agentgym.envs.alfworld.games import rebuild_trial
from agentgym.paths import data_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "alfworld" / "debug-trial"
BUDGET_MB = 100.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--games", action="append", default=[])
    args = parser.parse_args()
    roots = list(args.games)
    if not roots:
        tmp = Path(tempfile.mkdtemp(prefix="alfworld-bench-"))
        rebuild_trial(SHARED, tmp)
        roots.append(str(tmp))
        generated = data_dir("alfworld", "generated", create=False)
        if generated.is_dir():
            roots.append(str(generated))
    env = ALFWorldEnv(games=roots, max_steps=args.steps)
    rng = random.Random(0)
    proc = psutil.Process()
    resets, steps, rss = [], [], []
    for episode in range(args.episodes):
        t0 = time.perf_counter()
        _, info = env.reset(seed=episode)
        resets.append(time.perf_counter() - t0)
        done = False
        while not done:
            t0 = time.perf_counter()
            _, _, terminated, truncated, info = env.step(rng.choice(info["admissible_commands"]))
            steps.append(time.perf_counter() - t0)
            done = terminated or truncated
        rss.append(proc.memory_info().rss / 2**20)
        if episode == 0 or (episode + 1) % 50 == 0:
            print(f"episode {episode + 1:>4}: rss {rss[-1]:7.1f} MB", flush=True)
    env.close()
    warm = rss[min(9, len(rss) - 1)]  # after the first games' translations are cached
    growth = rss[-1] - warm
    q = statistics.quantiles(steps, n=100) if len(steps) > 1 else [steps[0]] * 99
    print(f"games in pool: {len(env.games)}; episodes: {args.episodes}; steps: {len(steps)}")
    warm_at = min(10, len(rss))
    print(f"RSS after 1 episode {rss[0]:.1f} MB, after {warm_at} {warm:.1f} MB, "
          f"after {args.episodes}: {rss[-1]:.1f} MB")
    print(f"growth after episode {warm_at}: {growth:+.1f} MB (budget < {BUDGET_MB:.0f} MB, "
          f"ratio {growth / BUDGET_MB:.2f}); from episode 1: {rss[-1] - rss[0]:+.1f} MB "
          f"(ratio {(rss[-1] - rss[0]) / BUDGET_MB:.2f})")
    half = rss[len(rss) // 2:]
    if len(half) >= 2:
        # A leak shows as a steady slope once the caches are full; allocator noise does not.
        slope = statistics.linear_regression(range(len(half)), half).slope
        print(f"second-half trend (least squares over episodes {len(rss) - len(half) + 1}-{len(rss)}): "
              f"{slope:+.4f} MB/episode = {slope * 1000:+.1f} MB per 1000 episodes")
    print(f"step latency: median {statistics.median(steps) * 1e3:.1f} ms, p95 {q[94] * 1e3:.1f} ms; "
          f"reset latency: median {statistics.median(resets) * 1e3:.1f} ms, max {max(resets) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
