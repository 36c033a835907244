"""WebShop speed figures on the shared catalogue, and search scaling on replicated catalogues.

    .venv/bin/python benchmarks/webshop.py [--data ../shared/data/webshop] [--scales 10000 100000]

Prints: index build time (tokenise + BM25) and cached-index load time, median / p95 search latency
over the goal instructions, env steps per second for an oracle agent (reset + reference path,
scoring included) and for a random agent, and search latency on the catalogue replicated to each
scale (copies get new ASINs; the texts repeat, so each query matches k copies of every hit).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agentgym.envs.webshop.catalog import load_catalogue  # noqa: E402
from agentgym.envs.webshop.env import WebShopEnv  # noqa: E402
from agentgym.envs.webshop.goals import synthetic_goals  # noqa: E402
from agentgym.envs.webshop.reward import title_nouns  # noqa: E402  (loads spaCy on its first call, timed below)
from agentgym.envs.webshop.search import SearchIndex  # noqa: E402


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def latencies(index: SearchIndex, queries: list[str]) -> list[float]:
    out = []
    for q in queries:
        start = time.perf_counter()
        index.search(q, 50)
        out.append(time.perf_counter() - start)
    return out


def ms(values: list[float], q: float) -> float:
    return 1000 * statistics.quantiles(values, n=100)[int(q) - 1] if q < 100 else 1000 * max(values)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "webshop"))
    parser.add_argument("--scales", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="seconds-long check: 5 episodes, one 1,000-product "
                        "scale (what the test suite runs)")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.scales = 5, [1000]

    cat = load_catalogue(args.data)
    ids = [p["asin"] for p in cat.products]
    goals = synthetic_goals(cat)
    queries = [g["instruction_text"] for g in goals] + [p["query"] for p in cat.products]
    print(f"catalogue: {len(cat.products)} products, {len(goals)} synthetic goals, {len(queries)} queries")

    with tempfile.TemporaryDirectory() as tmp:
        _, build_s = timed(SearchIndex.load_or_build, cat.contents, ids, cat.fingerprint, Path(tmp))
        index, load_s = timed(SearchIndex.load_or_build, cat.contents, ids, cat.fingerprint, Path(tmp))
    lat = latencies(index, queries)
    base_median = statistics.median(lat)
    print(f"index build: {build_s * 1000:.1f} ms; cached load: {load_s * 1000:.1f} ms "
          f"(x{build_s / load_s:.1f} faster)")
    print(f"search latency (100 products): median {base_median * 1000:.3f} ms, p95 {ms(lat, 95):.3f} ms")

    _, spacy_s = timed(title_nouns, "warm up the spaCy model")
    print(f"spaCy model load (first purchase score only): {spacy_s:.2f} s")
    env = WebShopEnv(args.data)
    steps, start = 0, time.perf_counter()
    for episode in range(args.episodes):
        _, info = env.reset(options={"goal_index": episode % len(env.shop.goals)})
        for action in info["reference"]["path"]:
            env.step(action)
            steps += 1
    oracle_s = time.perf_counter() - start
    rng, rsteps, start = random.Random(0), 0, time.perf_counter()
    words = "dress table shoes hair oil wood black small pack set".split()
    for episode in range(args.episodes):
        _, info = env.reset(seed=episode)
        done = False
        while not done:
            action = rng.choice(info["available_actions"])
            if action.startswith("search["):
                action = f"search[{rng.choice(words)} {rng.choice(words)}]"
            _, _, term, trunc, info = env.step(action)
            rsteps += 1
            done = term or trunc
    random_s = time.perf_counter() - start
    print(f"env steps/s: oracle {steps / oracle_s:.0f} ({steps} steps, {args.episodes} episodes incl. reset "
          f"and purchase scoring); random {rsteps / random_s:.0f} ({rsteps} steps)")

    print("search scaling (catalogue replicated):")
    print(f"  {'products':>9} {'build s':>9} {'median ms':>10} {'p95 ms':>9} {'x median vs 100':>16}")
    print(f"  {len(ids):>9} {build_s:>9.2f} {base_median * 1000:>10.3f} {ms(lat, 95):>9.3f} {1.0:>16.1f}")
    for scale in args.scales:
        copies = -(-scale // len(ids))
        texts = (cat.contents * copies)[:scale]
        big_ids = [f"{asin}-{c}" for c in range(copies) for asin in ids][:scale]
        big, build = timed(SearchIndex.build, texts, big_ids)
        big_lat = latencies(big, queries)
        median = statistics.median(big_lat)
        print(f"  {scale:>9} {build:>9.2f} {median * 1000:>10.3f} {ms(big_lat, 95):>9.3f} "
              f"{median / base_median:>16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
