"""BFCL v3 multi-turn environment: framework overhead, grading cost, fidelity and speed against the
official executor, and memory over many episodes. Run: ``.venv/bin/python benchmarks/bfcl_env.py``.

Printed side by side in one run:
- env-step overhead: median / p90 microseconds per step spent outside the backend methods
  (parsing, dispatch, feedback, history, state snapshots), with and without state_diff;
- grading: median milliseconds of the official checker per episode;
- execution of the 800 ground truths: our dispatcher vs the official ``eval``-based executor on
  the same calls (identical result strings counted), and the time ratio;
- RSS: growth over 2,000 consecutive episodes (budget 50 MB) and the per-step budget (1 ms).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import uuid

import gymnasium as gym
import psutil

import agentgym  # noqa: F401
from agentgym.envs.bfcl.backends import BackendSet
from agentgym.envs.bfcl.data import MULTI_TURN_CATEGORIES, load_multi_turn
from agentgym.envs.bfcl.multi_turn import BFCLMultiTurnEnv
from agentgym.parsing import AutoToolCallParser

STEP_BUDGET_US = 1000.0
RSS_BUDGET_MB = 50.0


def replay(env: BFCLMultiTurnEnv, entry, step_overheads: list[float] | None = None) -> tuple[float, float]:
    """Play the entry's ground truth; returns (reward, grading seconds)."""
    env.reset(options={"task_id": entry.id})
    grading = 0.0
    actions = []
    for calls in entry.ground_truth:
        if calls:
            actions.append("[" + ", ".join(calls) + "]")
        actions.append("Done.")
    reward = 0.0
    for i, action in enumerate(actions):
        backend_before = env.backends.backend_seconds
        last = i == len(actions) - 1
        started = time.perf_counter()
        _, reward, terminated, truncated, info = env.step(action)
        elapsed = time.perf_counter() - started
        if last:  # the final step runs the official checker: measured as grading, not overhead
            grading = elapsed
        elif step_overheads is not None:
            step_overheads.append((elapsed - (env.backends.backend_seconds - backend_before)) * 1e6)
    return reward, grading


def overhead(entries, record_state_diff: bool) -> tuple[list[float], list[float], int]:
    env = BFCLMultiTurnEnv(category=MULTI_TURN_CATEGORIES, split="all", record_state_diff=record_state_diff)
    steps, gradings, solved = [], [], 0
    for entry in entries:
        reward, grading = replay(env, entry, steps)
        gradings.append(grading)
        solved += reward == 1.0
    return steps, gradings, solved


def execution_comparison(entries) -> tuple[float, float, int, int]:
    """Our dispatcher vs the official executor on every ground-truth call of every entry."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import execute_multi_turn_func_call

    parse = AutoToolCallParser()
    decoded = {e.id: [[c for call in turn for c in parse(call).calls] for turn in e.ground_truth] for e in entries}
    ours_out, theirs_out = [], []
    started = time.perf_counter()
    for e in entries:
        backends = BackendSet(e)
        for turn in decoded[e.id]:
            ours_out.extend(backends.call(c).text for c in turn)
    ours = time.perf_counter() - started
    started = time.perf_counter()
    for e in entries:
        name = f"bench_{uuid.uuid4().hex}"
        for turn in e.ground_truth:
            results, _ = execute_multi_turn_func_call(turn, e.initial_config, e.involved_classes, name, e.id,
                                                      long_context=e.long_context)
            theirs_out.extend(results)
        for key in [k for k in vars(multi_turn_utils) if k.startswith(name)]:
            delattr(multi_turn_utils, key)
    theirs = time.perf_counter() - started
    same = sum(a == b for a, b in zip(ours_out, theirs_out))
    return ours, theirs, same, len(theirs_out)


def rss_growth(entries, episodes: int) -> tuple[float, float, float]:
    env = gym.make("agentgym/BFCLMultiTurn-v0", category=MULTI_TURN_CATEGORIES, split="all").unwrapped
    proc = psutil.Process()
    for entry in entries[:100]:  # warm caches (data files, imported backends)
        replay(env, entry)
    gc.collect()
    start = proc.memory_info().rss
    peak = start
    for i in range(episodes):
        replay(env, entries[i % len(entries)])
        if i % 50 == 0:
            peak = max(peak, proc.memory_info().rss)
    gc.collect()
    end = proc.memory_info().rss
    return start / 2**20, (max(peak, end) - start) / 2**20, (end - start) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2000, help="episodes for the RSS measurement")
    parser.add_argument("--entries", type=int, default=None, help="only the first N entries (default: all 800)")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check: 6 entries, 20 RSS episodes "
                        "(what the test suite runs)")
    args = parser.parse_args()
    if args.smoke:
        args.entries, args.episodes = 6, 20
    entries = load_multi_turn(MULTI_TURN_CATEGORIES)[:args.entries]

    with_diff, gradings, solved = overhead(entries, record_state_diff=True)
    without_diff, _, _ = overhead(entries, record_state_diff=False)
    ours, theirs, same, total_calls = execution_comparison(entries)
    rss_start, rss_peak, rss_end = rss_growth(entries, args.episodes)

    def pct(values, q):
        return statistics.quantiles(values, n=100)[q - 1]

    print(f"BFCL v3 multi-turn, {len(entries)} entries ({', '.join(MULTI_TURN_CATEGORIES)}); ground truth replayed")
    print(f"{'measure':<52}{'value':>14}{'budget':>12}")
    rows = [
        ("ground truths solved", f"{solved}/{len(entries)}", ""),
        ("env-step overhead, median us (with state_diff)", f"{statistics.median(with_diff):.0f}", f"{STEP_BUDGET_US:.0f}"),
        ("env-step overhead, p90 us (with state_diff)", f"{pct(with_diff, 90):.0f}", ""),
        ("env-step overhead, median us (no state_diff)", f"{statistics.median(without_diff):.0f}", f"{STEP_BUDGET_US:.0f}"),
        ("env-step overhead, p90 us (no state_diff)", f"{pct(without_diff, 90):.0f}", ""),
        ("grading per episode, median ms (official checker)", f"{statistics.median(gradings) * 1e3:.2f}", ""),
        ("grading per episode, p90 ms", f"{pct(gradings, 90) * 1e3:.2f}", ""),
        ("execution of all ground-truth calls, ours (s)", f"{ours:.3f}", ""),
        ("execution of all ground-truth calls, official (s)", f"{theirs:.3f}", ""),
        ("ratio ours / official", f"{ours / theirs:.2f}x", ""),
        ("identical result strings ours vs official", f"{same}/{total_calls}", ""),
        (f"RSS at start of {args.episodes} episodes (MB)", f"{rss_start:.0f}", ""),
        (f"RSS peak growth over {args.episodes} episodes (MB)", f"{rss_peak:.1f}", f"{RSS_BUDGET_MB:.0f}"),
        (f"RSS growth at end (MB)", f"{rss_end:.1f}", ""),
    ]
    for name, value, budget in rows:
        print(f"{name:<52}{value:>14}{budget:>12}")
    verdict = statistics.median(with_diff) < STEP_BUDGET_US and rss_peak < RSS_BUDGET_MB
    print(f"budgets met: {verdict}")


if __name__ == "__main__":
    main()
