"""AppWorld env throughput, latency and memory (real workers on the project's tasks).

    .venv/bin/python benchmarks/appworld.py [--episodes 300] [--workers 1 2 4] [--tput-episodes 24]

Prints, side by side:
- episodes/s with 1, 2, 4 envs (each env owns a sandbox template + an apps worker + a grader)
  running in threads, every episode = reset + the task's solution in one action + the grade, over
  the train split, next to the figures before the OS sandbox (one long-lived AppWorld worker
  executing agent code behind a Python-level screen);
- per-episode start-up: reset (apps worker opens the task world + a fresh sandboxed process forked
  from the template) and the fork alone, p50/p95; the template's own start and the first reset;
- execute latency (one action through HTTP + AppWorld) and evaluate latency (the grader), p50/p95;
- worker memory (RSS of an episode worker and a grader);
- RSS of the episode worker, the grader and this process over ``--episodes`` consecutive episodes
  (with the periodic restart every ``--restart-every`` episodes), start vs end, to expose leaks.
"""

from __future__ import annotations

import argparse
import threading
import time

import psutil

from agentgym.envs.appworld.env import AppWorldEnv


def solution(env: AppWorldEnv, task_id: str) -> str:
    return "```python\n" + (env.root / "data" / "tasks" / task_id / "ground_truth" / "solution.py").read_text() + "\n```"


def episode(env: AppWorldEnv, task_id: str, timings: dict[str, list[float]] | None = None) -> float:
    env.reset(options={"task_id": task_id})
    started = time.perf_counter()
    _, reward, terminated, _, info = env.step(solution(env, task_id))
    if timings is not None:
        timings["episode_step"].append(time.perf_counter() - started)
    if reward != 1.0:
        raise RuntimeError(f"{task_id}: solution scored {reward} ({info.get('failures')})")
    return reward


BEFORE_SANDBOX = {1: 0.45, 2: 0.72, 4: 0.82}  # episodes/s measured on this 2-core machine before


def throughput(num_envs: int, episodes: int) -> float:
    envs = [AppWorldEnv(split="train") for _ in range(num_envs)]
    try:
        # warm start: every env's workers are up before the clock starts
        threads = [threading.Thread(target=episode, args=(e, e.task_ids[0])) for e in envs]
        [t.start() for t in threads]
        [t.join() for t in threads]
        per_env = episodes // num_envs

        def run(env: AppWorldEnv, offset: int) -> None:
            for i in range(per_env):
                episode(env, env.task_ids[(offset + i) % len(env.task_ids)])

        started = time.perf_counter()
        threads = [threading.Thread(target=run, args=(e, k * 7)) for k, e in enumerate(envs)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        return per_env * num_envs / (time.perf_counter() - started)
    finally:
        for e in envs:
            e.close()


def latencies(env: AppWorldEnv, n: int) -> dict[str, list[float]]:
    out = {"execute": [], "evaluate": []}
    for i in range(n):
        task_id = env.task_ids[i % len(env.task_ids)]
        env.reset(options={"task_id": task_id})
        started = time.perf_counter()
        env.step("```python\nprint(apis.supervisor.show_profile())\n```")
        out["execute"].append(time.perf_counter() - started)
        env.apps.call("/save", {}, timeout=60)
        started = time.perf_counter()
        env.grader.ensure()
        env.grader.call("/evaluate", {"task_id": task_id, "experiment_name": env.experiment_name}, timeout=60)
        out["evaluate"].append(time.perf_counter() - started)
    return out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def startup(env: AppWorldEnv, n: int) -> None:
    """Print the per-episode start-up (``n`` resets and ``n`` forks), the template's start, the first
    reset, ``n`` execute / evaluate latencies and the workers' memory."""
    started = time.perf_counter()
    env.reset(options={"task_id": env.task_ids[0]})
    first = time.perf_counter() - started
    resets, forks = [], []
    for i in range(n):
        started = time.perf_counter()
        env.reset(options={"task_id": env.task_ids[i % len(env.task_ids)]})
        resets.append(time.perf_counter() - started)
    for _ in range(n):
        started = time.perf_counter()
        env.sandbox.spawn().close()
        forks.append(time.perf_counter() - started)
    env.sandbox.kill()
    started = time.perf_counter()
    env.sandbox.start()
    template = time.perf_counter() - started
    print(f"per-episode start-up: reset p50 {pct(resets, .5):.0f} ms, p95 {pct(resets, .95):.0f} ms; "
          f"sandboxed process fork p50 {pct(forks, .5):.1f} ms, p95 {pct(forks, .95):.1f} ms "
          f"(before: one worker start of 10-25 s, reused across episodes)")
    print(f"sandbox template start {template * 1000:.0f} ms; first reset of a new env {first:.1f} s "
          f"(apps worker + grader import AppWorld)")
    lat = latencies(env, n)
    for name, values in lat.items():
        print(f"{name} latency: p50 {pct(values, .5):.0f} ms, p95 {pct(values, .95):.0f} ms (n={len(values)})")
    print(f"worker memory: apps worker {env.apps.rss_bytes() / 2**20:.0f} MiB, "
          f"grader {env.grader.rss_bytes() / 2**20:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=300, help="episodes for the RSS run")
    parser.add_argument("--tput-episodes", type=int, default=24, help="episodes per throughput point")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--restart-every", type=int, default=150)
    parser.add_argument("--samples", type=int, default=30, help="resets, forks and latencies timed")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check: 1 env, 2 throughput episodes, "
                        "3 samples, 3 RSS episodes (what the test suite runs)")
    args = parser.parse_args()
    if args.smoke:
        args.workers, args.tput_episodes, args.samples, args.episodes = [1], 2, 3, 3
    me = psutil.Process()

    print(f"# AppWorld env benchmark ({psutil.cpu_count()} CPUs, load {psutil.getloadavg()[0]:.1f})")
    rates = {}
    for n in args.workers:
        rates[n] = throughput(n, max(args.tput_episodes, n))
    base = rates[args.workers[0]]
    print("envs | episodes/s sandboxed | before (no OS sandbox) | speed-up vs 1 env")
    for n, rate in rates.items():
        before = BEFORE_SANDBOX.get(n)
        print(f"{n:>4} | {rate:19.2f} | {before if before else float('nan'):22.2f} | {rate / base:6.2f}x")

    env = AppWorldEnv(split="train", restart_every=args.restart_every)
    try:
        startup(env, args.samples)
        samples = []
        timings: dict[str, list[float]] = {"episode_step": []}
        started = time.perf_counter()
        for i in range(args.episodes):
            episode(env, env.task_ids[i % len(env.task_ids)], timings)
            if i in (0, args.episodes // 2, args.episodes - 1) or i % 50 == 0:
                samples.append((i + 1, env.apps.rss_bytes(), env.grader.rss_bytes(), me.memory_info().rss))
        elapsed = time.perf_counter() - started
        print(f"{args.episodes} episodes in {elapsed:.0f} s ({args.episodes / elapsed:.2f}/s), "
              f"worker starts: apps {env.apps.starts}, grader {env.grader.starts}, sandbox template "
              f"{env.sandbox.starts}")
        print("episode | apps RSS MiB | grader RSS MiB | agentgym RSS MiB")
        for i, w, g, m in samples:
            print(f"{i:>7} | {w / 2**20:14.0f} | {g / 2**20:14.0f} | {m / 2**20:16.0f}")
        first, last = samples[0], samples[-1]
        window = [x for x in samples if x[0] <= args.restart_every] or samples
        slope = (window[-1][1] - window[0][1]) / 2**20 / max(window[-1][0] - window[0][0], 1)
        print(f"RSS over {args.episodes} episodes: worker {first[1] / 2**20:.0f} -> {last[1] / 2**20:.0f} MiB "
              f"(peak {max(x[1] for x in samples) / 2**20:.0f} MiB; grows {slope:+.2f} MiB/episode between "
              f"restarts every {args.restart_every}), grader {(last[2] - first[2]) / 2**20:+.0f} MiB, "
              f"agentgym {(last[3] - first[3]) / 2**20:+.0f} MiB")
    finally:
        env.close()


if __name__ == "__main__":
    main()
