"""Rollout throughput: framework overhead per step with a zero-cost scripted policy on BFCL (1, 8, 64
concurrent episodes); ALFWorld and AppWorld rollout steps/s with the envs in this process and in
``env.workers`` = 1 and 2 worker processes, side by side, with the framework's overhead per step; and
generation tokens/s of the tiny and SmolLM2 policies on this machine.

    .venv/bin/python benchmarks/rollout.py [--skip-smollm2] [--episodes 64]
    .venv/bin/python benchmarks/rollout.py --only-workers [--workers 0 1 2] [--envs alfworld appworld]
    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-vllm/bin/python benchmarks/rollout.py --backend transformers vllm

The worker rows use a scripted policy (no generation cost), so they measure env stepping + the
framework: with 2 workers on 2 cores the env work of two episodes runs at once.

``--backend`` picks the generation backends compared side by side (vLLM's CPU build lives in
``.venv-vllm``, see scripts/setup_vllm.sh).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gymnasium as gym  # noqa: E402
import psutil  # noqa: E402

import agentgym  # noqa: E402,F401  (registers the envs)
from agentgym.agents import (SamplingParams, ScriptedPolicy, TransformersPolicy, build_smollm2,  # noqa: E402
                             build_tiny_model)
from agentgym.envpool import close_shared_pools  # noqa: E402
from agentgym.rollout import RolloutRunner  # noqa: E402

BFCL = "agentgym/BFCLMultiTurn-v0"


def scripted_bfcl(concurrent: int, episodes: int) -> dict:
    # Calls then prose: every reply costs nothing, so the time is env + framework.
    def script(conv):
        return "[ls(), pwd()]" if conv[-1]["role"] == "user" else "Done."
    tasks = [{"task_id": f"multi_turn_base_{i % 50}"} for i in range(episodes)]
    runner = RolloutRunner(ScriptedPolicy(script), BFCL, tasks, env_kwargs={"split": "all"},
                           max_concurrent=concurrent, progress=False, max_steps=12)
    runner.run()
    s = runner.stats
    return {"steps": s.steps, "steps_per_s": s.steps / s.total_seconds,
            "overhead_ms": 1000 * s.overhead_seconds / max(s.steps, 1),
            "env_ms": 1000 * s.env_seconds / max(s.steps, 1)}


def alfworld_script(conv):
    # Real engine commands (admissible or answered "Nothing happens." by the engine): every step is
    # a full TextWorld step.
    turn = sum(1 for m in conv if m["role"] == "assistant")
    return ("look", "inventory", "go to countertop 1", "examine countertop 1", "go to cabinet 1",
            "open cabinet 1")[turn % 6]


def appworld_script(conv):
    turn = sum(1 for m in conv if m["role"] == "assistant")
    calls = ("apis.supervisor.show_profile()", "apis.api_docs.show_app_descriptions()",
             "apis.supervisor.show_account_passwords()")
    return f"```python\nprint({calls[turn % len(calls)]})\n```"


def env_tasks(env_id: str, n: int, env_kwargs: dict) -> list[dict]:
    env = gym.make(env_id, **env_kwargs)
    try:
        tasks = env.unwrapped.tasks()
    finally:
        env.close()
    if not tasks:
        raise SystemExit(f"{env_id}: no tasks found (see the env's data hint)")
    return [tasks[i % len(tasks)] for i in range(n)]


WORKER_ENVS = {
    "alfworld": ("agentgym/ALFWorld-v0", alfworld_script, {}),
    "appworld": ("agentgym/AppWorld-v0", appworld_script, {"split": "train"}),
}


def worker_rollout(env_id: str, script, env_kwargs: dict, tasks: list[dict], workers: int, max_steps: int,
                   concurrent: int) -> dict:
    # Steady state, as in a training run: a first pass over the same tasks starts the workers (kept
    # for the next run) and warms the envs' caches, in this process or in the workers; then the timed pass.
    RolloutRunner(ScriptedPolicy(script), env_id, tasks, env_kwargs=env_kwargs, max_steps=2,
                  max_concurrent=concurrent, progress=False, workers=workers).run()
    runner = RolloutRunner(ScriptedPolicy(script), env_id, tasks, env_kwargs=env_kwargs, max_steps=max_steps,
                           max_concurrent=concurrent, progress=False, workers=workers)
    trajs = runner.run()
    s = runner.stats
    errors = [t.error for t in trajs if t.error]
    return {"steps": s.steps, "steps_per_s": s.steps / s.total_seconds, "seconds": s.total_seconds,
            "overhead_ms": 1000 * s.overhead_seconds / max(s.steps, 1),
            "env_ms": 1000 * s.env_seconds / max(s.steps + len(trajs), 1), "errors": errors}


def worker_table(envs: list[str], workers: list[int], episodes: int, max_steps: int, concurrent: int) -> None:
    print(f"# env worker pools ({psutil.cpu_count()} CPUs, load {psutil.getloadavg()[0]:.1f} at start; "
          f"{episodes} episodes x {max_steps} steps, {concurrent} concurrent, scripted policy, after a warm-up "
          f"pass; env ms/op: time in the env per reset or step, summed over workers)")
    print(f"{'env':<10}{'workers':>8}{'steps/s':>10}{'speed-up':>10}{'env ms/op':>11}{'overhead ms/step':>18}"
          f"{'errors':>8}")
    for name in envs:
        env_id, script, kwargs = WORKER_ENVS[name]
        try:
            tasks = env_tasks(env_id, episodes, kwargs)
        except Exception as exc:  # noqa: BLE001 - an env whose engine or data is not installed here
            print(f"{name:<10} skipped: {type(exc).__name__}: {exc}")
            continue
        base = None
        for n in workers:
            r = worker_rollout(env_id, script, kwargs, tasks, n, max_steps, concurrent)
            base = base or r["steps_per_s"]
            print(f"{name:<10}{n:>8}{r['steps_per_s']:>10.2f}{r['steps_per_s'] / base:>9.2f}x"
                  f"{r['env_ms']:>11.1f}{r['overhead_ms']:>18.3f}{len(r['errors']):>8}", flush=True)
            if r["errors"]:
                print(f"{'':<10}first error: {r['errors'][0][:200]}")
        close_shared_pools()


def load_policy(backend: str, path):
    if backend == "vllm":
        from agentgym.agents import VLLMPolicy  # only in .venv-vllm (vllm is optional)
        return VLLMPolicy(str(path), dtype="float32", max_model_len=4096, kv_cache_memory_bytes=1 << 30)
    return TransformersPolicy(path, batch_size=8)  # one forward for the largest batch measured


def tokens_per_second(policy, batch: int, new_tokens: int = 32) -> float:
    convs = [[{"role": "user", "content": f"Question {i}: list the files in the folder."}] for i in range(batch)]
    policy.generate(convs[:1], sampling=SamplingParams(max_new_tokens=2))  # warm-up
    start = time.perf_counter()
    outs = policy.generate(convs, sampling=SamplingParams(max_new_tokens=new_tokens, seed=0))
    return sum(len(o.token_ids) for o in outs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--backend", nargs="+", default=["transformers"], choices=["transformers", "vllm"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="env.workers values compared")
    parser.add_argument("--envs", nargs="+", default=["alfworld", "appworld"], choices=sorted(WORKER_ENVS))
    parser.add_argument("--worker-episodes", type=int, default=8, help="episodes per env.workers point")
    parser.add_argument("--worker-steps", type=int, default=10, help="steps per episode in the worker rows")
    parser.add_argument("--worker-concurrent", type=int, default=8, help="concurrent episodes in the worker rows")
    parser.add_argument("--only-workers", action="store_true", help="only the env worker rows")
    parser.add_argument("--skip-workers", action="store_true", help="no env worker rows")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check: 4 BFCL episodes, ALFWorld's worker "
                        "rows only (2 episodes x 2 steps, 0 and 1 workers: AppWorld's workers take a minute to "
                        "start), the tiny model only (what the test suite runs)")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.skip_smollm2, args.workers, args.envs = 4, True, [0, 1], ["alfworld"]
        args.worker_episodes, args.worker_steps, args.worker_concurrent = 2, 2, 2
    if not args.skip_workers:
        worker_table(args.envs, args.workers, args.worker_episodes, args.worker_steps, args.worker_concurrent)
    if args.only_workers:
        return
    print(f"{'measurement':<44}{'value':>12}  unit")
    base = None
    for concurrent in (1, 8, 64):
        r = scripted_bfcl(concurrent, args.episodes)
        base = base or r["steps_per_s"]
        print(f"{f'BFCL scripted, {concurrent:>2} concurrent: steps/s':<44}{r['steps_per_s']:>12.1f}  "
              f"steps/s (x{r['steps_per_s'] / base:.2f} vs 1)")
        print(f"{f'BFCL scripted, {concurrent:>2} concurrent: overhead':<44}{r['overhead_ms']:>12.3f}  "
              f"ms/step framework (env {r['env_ms']:.3f} ms/step)")
    models = [("tiny", build_tiny_model)] + ([] if args.skip_smollm2 else [("SmolLM2-135M", build_smollm2)])
    for name, build in models:
        path = build()
        speed: dict[tuple[str, int], float] = {}
        for backend in args.backend:
            policy = load_policy(backend, path)
            for batch in (1, 8):
                speed[backend, batch] = tokens_per_second(policy, batch)
                ratio = (f" (x{speed[backend, batch] / speed[args.backend[0], batch]:.2f} vs {args.backend[0]})"
                         if backend != args.backend[0] else "")
                print(f"{f'{name} {backend} generate, batch {batch}':<44}{speed[backend, batch]:>12.1f}  "
                      f"tokens/s{ratio}")
            policy.close()


if __name__ == "__main__":
    main()
