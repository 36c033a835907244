"""Selectors and teacher cost on real BFCL trajectories. Run: ``.venv/bin/python benchmarks/hindsight_selectors.py``.

The batch: ``--tasks`` BFCL multi-turn base tasks x ``--group`` rollouts, played through the real env
by a token-level scripted policy (the tiny model's tokenizer): member 0 plays the ground truth, the
others the ground truth with one injected mistake (a dropped call, a corrupted argument, a wrong
function), so most rollouts fail at a known step, as a weak policy's would.

Printed side by side in one run:
- selection cost: median microseconds per trajectory of each rule-based selector;
- teacher cost per training batch, dense per-step feedback (one judge call per step, every step
  distilled) vs HINT-SD hindsight selection (one hindsight call per FAILED rollout, <= K steps
  distilled): generation calls, prompt tokens, completion tokens, distillation targets (teacher
  scoring passes) and scored action tokens, with the dense / hindsight ratio. The teacher is a
  token-level scripted policy, so tokens are counted with a real tokenizer and chat template.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import agentgym  # noqa: E402,F401
from transformers import AutoTokenizer  # noqa: E402

from agentgym.agents import SamplingParams, ScriptedPolicy, build_tiny_model  # noqa: E402
from agentgym.agents.scripted import by_turn  # noqa: E402
from agentgym.envs.bfcl.data import get_entry, split_ids  # noqa: E402
from agentgym.feedback import (Dense, FirstDivergence, FirstError, FirstStep, HindsightMulti,  # noqa: E402
                               HindsightSingle, LastStep, LLMHindsightSource, LLMStepHintSource,
                               ReferenceHindsightSource)
from agentgym.feedback.render import render_trajectory  # noqa: E402
from agentgym.rollout import rollout  # noqa: E402


def mutate(turns: list[list[str]], rng: random.Random, kind: str) -> list[list[str]]:
    turns = [list(c) for c in turns]
    spots = [(t, i) for t, calls in enumerate(turns) for i in range(len(calls))]
    t, i = rng.choice(spots)
    if kind == "drop":
        turns[t].pop(i)
    elif kind == "corrupt":
        new = re.sub(r"='([^']*)'", r"='\1_x'", turns[t][i], count=1)
        turns[t][i] = new if new != turns[t][i] else "ls()"
    else:
        turns[t][i] = "pwd()"
    return turns


def script(turns: list[list[str]]) -> list[str]:
    return [r for calls in turns for r in [f"[{c}]" for c in calls] + ["Done."]]


def build_batch(tokenizer, n_tasks: int, group: int, seed: int):
    rng = random.Random(seed)
    ids = [i for i in split_ids(("base",), "all")][:n_tasks]
    trajs = []
    for task_id in ids:
        truth = get_entry(task_id).ground_truth
        for member in range(group):
            turns = truth if member == 0 else mutate(truth, rng, ("drop", "corrupt", "wrong")[member % 3])
            [t] = rollout(ScriptedPolicy(by_turn(script(turns), "Done."), tokenizer=tokenizer),
                          "agentgym/BFCLMultiTurn-v0", tasks=[{"task_id": task_id}], env_kwargs={"split": "all"},
                          progress=False)
            trajs.append(t.model_copy(update={"group_id": task_id,
                                              "metadata": {**t.metadata, "episode": f"{task_id}:{member}"}}))
    return trajs


def time_selectors(trajs, feedback, repeats: int) -> dict[str, float]:
    selectors = {"dense": Dense(), "first": FirstStep(), "last": LastStep(), "first_error": FirstError(),
                 "first_divergence": FirstDivergence(), "hindsight_multi(3)": HindsightMulti(k=3),
                 "hindsight_single": HindsightSingle(), "first_error|first_divergence": FirstError() | FirstDivergence(),
                 "dense.cap(3)": Dense().cap(3)}
    out = {}
    for name, sel in selectors.items():
        times = []
        for _ in range(repeats):
            for t, fb in zip(trajs, feedback):
                t0 = time.perf_counter()
                sel(t, fb)
                times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times) * 1e6
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=6)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="seconds-long check: 1 task x 3 rollouts, 2 repeats "
                    "(what the test suite runs)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.tasks, args.group, args.repeats = 1, 3, 2

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model())
    t0 = time.perf_counter()
    trajs = build_batch(tokenizer, args.tasks, args.group, args.seed)
    print(f"batch: {len(trajs)} BFCL rollouts ({args.tasks} tasks x {args.group}), "
          f"{sum(t.num_steps for t in trajs)} steps, {sum(not t.success for t in trajs)} failed "
          f"(built in {time.perf_counter() - t0:.1f}s)\n")

    hints = ReferenceHindsightSource().annotate(trajs)
    print("selection cost per trajectory (median of %d x %d calls)" % (args.repeats, len(trajs)))
    for name, us in time_selectors(trajs, hints, args.repeats).items():
        print(f"  {name:32s} {us:9.1f} us")

    # The teacher answers like a competent hindsight model (the reference-based correction) and a
    # dense judge (one sentence per step); token counts come from the real tokenizer + template.
    expected = {render_trajectory(t): h for t, h in zip(trajs, hints) if not t.success}

    def answer(conv):
        prompt = conv[-1]["content"]
        if '"failures"' not in prompt:
            return "Check the previous output before calling the next function."
        found = next((h for transcript, h in expected.items() if prompt.startswith(transcript)), [])
        return json.dumps({"failures": [{"step": h.step + 1, "feedback": h.text} for h in found]})

    teacher = ScriptedPolicy(answer, tokenizer=tokenizer, name="teacher")
    sampling = SamplingParams(temperature=0.0, max_new_tokens=512)
    dense_src = LLMStepHintSource(teacher, sampling=sampling)
    dense_fb = dense_src.annotate(trajs)
    dense_targets = [Dense(include_successful=True)(t, fb) for t, fb in zip(trajs, dense_fb)]
    hs_src = LLMHindsightSource(teacher, variant="multi", k=3)
    hs_fb = hs_src.annotate(trajs)
    hs_targets = [HindsightMulti(k=3)(t, fb) for t, fb in zip(trajs, hs_fb)]

    def scored_tokens(targets):
        return sum(x.span[1] - x.span[0] for ts in targets for x in ts)

    rows = [
        ("teacher generation calls", dense_src.stats["teacher_calls"], hs_src.stats["teacher_calls"]),
        ("teacher prompt tokens", dense_src.stats["prompt_tokens"], hs_src.stats["prompt_tokens"]),
        ("teacher completion tokens", dense_src.stats["completion_tokens"], hs_src.stats["completion_tokens"]),
        ("distillation targets (teacher passes)", sum(map(len, dense_targets)), sum(map(len, hs_targets))),
        ("scored action tokens", scored_tokens(dense_targets), scored_tokens(hs_targets)),
    ]
    print(f"\nteacher cost per training batch ({len(trajs)} rollouts)")
    print(f"  {'':40s} {'dense':>10s} {'hindsight':>10s} {'ratio':>8s}")
    for name, d, h in rows:
        ratio = f"{d / h:.1f}x" if h else "inf"
        print(f"  {name:40s} {d:10d} {h:10d} {ratio:>8s}")
    print(f"  hindsight answers: {dict((k, v) for k, v in hs_src.stats.items() if k.startswith('answers_'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
