"""Learners: time per training step of dense per-turn SD vs HINT-SD on the SAME recorded BFCL batch,
same model and hardware, feedback generation included; GRPO and SERL for reference; peak memory.

Run: ``.venv/bin/agentgym bench learners`` (CPU, tiny model) or, on a GPU,
``python benchmarks/learners.py --device cuda --model random-0.5b`` (bf16, randomly initialised
Qwen2 with Qwen2.5-0.5B's shape) which also prints tokens/s per learner.

What one "training step" costs per learner (the batch is recorded once, then every learner starts
from the same initial weights):

- dense_sd: one ``llm_step_hint`` generation per STEP (the policy with its teacher weights writes a
  hint for every step), then a teacher pass and the distillation loss on every step;
- hint_sd: one ``llm_hindsight`` generation per FAILED TRAJECTORY (multi variant, K = 3), then
  teacher passes and distillation on the selected steps only. A small random model rarely writes
  parseable hindsight JSON, so the BFCL reference hindsight is added to the source (a rule, no model
  call): the model's hindsight call is paid for in full and every failed trajectory still has a
  target (at least its first divergence from the ground truth, as the paper's multi variant has
  1..3);
- grpo / serl: no generation; SERL scores step-level feedback (immediate env replies) with its
  teacher. The recorded episodes all fail (a group with equal rewards has no gradient), so for these
  two the rewards are replaced by alternating 1 / 0 - only the timing is measured.

Published claim (HINT-SD paper): 2.26x lower time per training step for HINT-SD than dense SD.

Measured (CPU, 2 shared cores, tiny model, 2 episodes x 4 steps of multi_turn_base_146, mean context
3,813 tokens; the machine was shared with other jobs, so absolute times are noisy, ratios less so):

    learner   s/step  feedback s  update s  fb calls  targets  teacher  tokens/s  peak RSS MB
    dense_sd    9.18        0.49      8.68         8        8        8      3535         1923
    hint_sd     1.52        0.46      1.06         2        2        2      7028         1067
    grpo        8.61        0.00      8.61         0        0        0      3564         1647
    serl       19.40        0.00     19.40         0        8        8      1583         2073
    dense SD / HINT-SD: 6.05x per training step (published: 2.26x)

The ratio grows with the steps per episode (dense pays T teacher passes and T hints, HINT-SD at most
K = 3 per failed episode); feedback generation is batched, so its cost grows slower than the call
count. GPU (bf16, random-0.5b): not measured in this session (no device lent); run
``python benchmarks/learners.py --device cuda --model random-0.5b --group 4 --max-steps 6``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil
import torch

import agentgym  # noqa: F401  (registers the envs)
from agentgym.agents import SamplingParams, TransformersPolicy
from agentgym.agents.teachers import TeacherPolicy
from agentgym.config import load_config
from agentgym.feedback import make_selector, make_source
from agentgym.learners import Batch, make_learner
from agentgym.model_loading import load_model
from agentgym.rollout import rollout

LEARNERS = ("dense_sd", "hint_sd", "grpo", "serl")
CLAIM = 2.26


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def build(args, learner: str):
    cfg = load_config(["--model.name", args.model, "--model.device", args.device, "--learner.name", learner,
                       "--train.seed", str(args.seed)]).resolved()
    device = torch.device(args.device)
    model, tok, name = load_model(cfg, device)
    # the learner's own defaults (teacher kind and schedule), with the benchmark's lr and budget
    settings = cfg.learner.settings.model_copy(update={"lr": 1e-5, "token_budget": args.token_budget})
    if "topk" in type(settings).model_fields:
        settings = settings.model_copy(update={"topk": 100})
    lrn = make_learner(learner, model, tok, settings, temperature=1.0)
    policy = TransformersPolicy(lrn.unwrapped, tok, device=args.device, dtype=next(model.parameters()).dtype,
                                batch_size=16, trainable=True)
    return lrn, policy, tok, name


def record_batch(args, policy) -> list:
    """G episodes of one BFCL task, truncated after --max-steps steps (recorded once)."""
    trajs = rollout(policy, "agentgym/BFCLMultiTurn-v0", [{"task_id": args.task}], group_size=args.group,
                    env_kwargs={"split": "all"}, max_steps=args.max_steps, progress=False,
                    sampling=SamplingParams(temperature=1.0, max_new_tokens=args.action_tokens, seed=args.seed))
    return trajs


def feedback_for(learner: str, lrn, policy, args):
    sampling = SamplingParams(temperature=0.6, top_p=0.95, max_new_tokens=args.feedback_tokens, seed=args.seed)
    teacher = TeacherPolicy(policy, lrn)
    if learner == "dense_sd":
        return (make_source("llm_step_hint", policy=teacher, sampling=sampling),
                make_selector("dense", include_successful=True))
    if learner == "hint_sd":
        return (make_source("llm_hindsight+reference_hindsight", policy=teacher, sampling=sampling, k=3),
                make_selector("hindsight_multi", k=3))
    if learner == "serl":
        return make_source("immediate"), make_selector("dense", include_successful=True)
    return None, None


def bench_learner(learner: str, trajs: list, args) -> dict[str, Any]:
    lrn, policy, tok, _ = build(args, learner)
    if learner in ("grpo", "serl"):
        trajs = [t.model_copy(update={"final_reward": float(i % 2), "success": bool(i % 2)})
                 for i, t in enumerate(trajs)]
    source, selector = feedback_for(learner, lrn, policy, args)
    rows = []
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        for i in range(args.warmup + args.steps):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            before = dict(source.stats) if source is not None else {}
            targets = [[] for _ in trajs]
            if source is not None:
                fb = source.annotate(trajs)
                targets = [selector(t, f) for t, f in zip(trajs, fb)]
            if cuda:
                torch.cuda.synchronize()
            t1 = time.perf_counter()
            m = lrn.update(Batch(trajs, targets))
            if cuda:
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            after = dict(source.stats) if source is not None else {}
            calls = sum(v - before.get(k, 0) for k, v in after.items() if k.split(".")[-1] == "teacher_calls")
            trained_tokens = sum(len(s.prompt_ids) + len(s.action_ids) for t, tg in zip(trajs, targets)
                                 for s in t.steps) if learner in ("grpo", "serl") else sum(
                len(t.steps[x.step].prompt_ids) + len(t.steps[x.step].action_ids) for t, tg in zip(trajs, targets)
                for x in tg)
            if i >= args.warmup:
                rows.append({"step": t2 - t0, "feedback": t1 - t0, "update": t2 - t1, "feedback_calls": calls,
                             "targets": sum(len(x) for x in targets), "teacher_passes": m["teacher_calls"],
                             "trained_tokens": trained_tokens, "loss": m["loss"]})
    out = {k: statistics.mean(r[k] for r in rows) for k in rows[0]}
    out["tokens_per_s"] = out["trained_tokens"] / out["update"] if out["update"] > 0 else 0.0
    out["peak_rss_mb"] = mem.peak / 2**20
    if cuda:
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    del lrn, policy
    if cuda:
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny | smollm2 | random-0.5b | a model folder")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--task", default="multi_turn_base_146", help="BFCL task of the recorded batch")
    p.add_argument("--group", type=int, default=2, help="episodes in the batch")
    p.add_argument("--max-steps", type=int, default=4, help="steps per recorded episode")
    p.add_argument("--action-tokens", type=int, default=24, help="max tokens per recorded action")
    p.add_argument("--feedback-tokens", type=int, default=48, help="max tokens per hint / hindsight answer")
    p.add_argument("--steps", type=int, default=2, help="timed training steps per learner")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--token-budget", type=int, default=16384)
    p.add_argument("--learners", default=",".join(LEARNERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--smoke", action="store_true", help="seconds-long check: 2 episodes x 1 step, short "
                   "actions and feedback, one timed step, no warm-up (what the test suite runs)")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.group, args.max_steps, args.action_tokens, args.feedback_tokens = "tiny", 2, 1, 8, 16
        args.steps, args.warmup = 1, 0

    started = time.perf_counter()
    _, policy, _, model_name = build(args, "grpo")
    trajs = record_batch(args, policy)
    del policy
    steps = sum(t.num_steps for t in trajs)
    ctx = statistics.mean(len(s.prompt_ids) for t in trajs for s in t.steps)
    print(f"recorded batch: {len(trajs)} episodes of {args.task}, {steps} steps, mean context {ctx:.0f} tokens, "
          f"model {model_name} on {args.device}, all failed: {not any(t.success for t in trajs)}")
    results = {name: bench_learner(name, trajs, args) for name in args.learners.split(",")}
    head = (f"{'learner':<9} {'s/step':>8} {'feedback s':>10} {'update s':>9} {'fb calls':>8} {'targets':>7} "
            f"{'teacher':>7} {'tokens/s':>9} {'peak RSS MB':>11}" + (" peak CUDA MB" if args.device == "cuda" else ""))
    print(head)
    for name, r in results.items():
        print(f"{name:<9} {r['step']:>8.2f} {r['feedback']:>10.2f} {r['update']:>9.2f} {r['feedback_calls']:>8.0f} "
              f"{r['targets']:>7.0f} {r['teacher_passes']:>7.0f} {r['tokens_per_s']:>9.0f} {r['peak_rss_mb']:>11.0f}"
              + (f" {r['peak_cuda_mb']:>12.0f}" if "peak_cuda_mb" in r else ""))
    if "dense_sd" in results and "hint_sd" in results and results["hint_sd"]["step"] > 0:
        ratio = results["dense_sd"]["step"] / results["hint_sd"]["step"]
        print(f"time per training step, dense SD / HINT-SD: {ratio:.2f}x (published claim: {CLAIM}x lower for "
              f"HINT-SD; ours on {steps} steps x {len(trajs)} episodes)")
        results["ratio_dense_over_hint"] = ratio
    print(f"total benchmark time {time.perf_counter() - started:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
