"""Rollout throughput: framework overhead per step with a zero-cost scripted policy on BFCL (1, 8, 64
concurrent episodes), and generation tokens/s of the tiny and SmolLM2 policies on this machine.

    .venv/bin/python benchmarks/rollout.py [--skip-smollm2] [--episodes 64]
    VLLM_ENABLE_V1_MULTIPROCESSING=0 .venv-vllm/bin/python benchmarks/rollout.py --backend transformers vllm

``--backend`` picks the generation backends compared side by side (vLLM's CPU build lives in
``.venv-vllm``, see scripts/setup_vllm.sh).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import agentgym  # noqa: E402
from agentgym.agents.scripted import ScriptedPolicy  # noqa: E402
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


def load_policy(backend: str, path):
    if backend == "vllm":
        from agentgym.agents import VLLMPolicy
        return VLLMPolicy(str(path), dtype="float32", max_model_len=4096, kv_cache_memory_bytes=1 << 30)
    from agentgym.agents import TransformersPolicy
    return TransformersPolicy(path, batch_size=8)  # one forward for the largest batch measured


def tokens_per_second(policy, batch: int, new_tokens: int = 32) -> float:
    from agentgym.agents import SamplingParams
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
    args = parser.parse_args()
    print(f"{'measurement':<44}{'value':>12}  unit")
    base = None
    for concurrent in (1, 8, 64):
        r = scripted_bfcl(concurrent, args.episodes)
        base = base or r["steps_per_s"]
        print(f"{f'BFCL scripted, {concurrent:>2} concurrent: steps/s':<44}{r['steps_per_s']:>12.1f}  "
              f"steps/s (x{r['steps_per_s'] / base:.2f} vs 1)")
        print(f"{f'BFCL scripted, {concurrent:>2} concurrent: overhead':<44}{r['overhead_ms']:>12.3f}  "
              f"ms/step framework (env {r['env_ms']:.3f} ms/step)")
    from agentgym.agents.models import build_smollm2, build_tiny_model
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
