"""ALFWorld env: step / reset latency side by side with the official ``AlfredTWEnv`` on the same games,
then memory over many consecutive episodes.

    .venv/bin/python benchmarks/alfworld_env.py [--episodes 500] [--steps 5] [--games DIR]
    .venv/bin/python benchmarks/alfworld_env.py --only-compare [--compare-games 3] [--compare-resets 3]

Side by side: for each of the first COMPARE_GAMES games, the official env
(``alfworld.agents.environment.AlfredTWEnv(config).init_env(batch_size=1)``, handcoded expert as in
ALFWorld's dagger config, the game alone in its data path) and agentgym's env (with and without its
TextWorld parsing caches) play the same commands (random admissible ones, seeded); the step
observations are compared text for text and reset / step latencies reported (median).

Then plays EPISODES consecutive resets + episodes (random admissible commands, STEPS per episode, the
expert plan computed at each reset as in the default config) in one process over the rebuilt shared
trial plus any generated games, and prints RSS growth against the 100 MB budget and latencies.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from agentgym.envs.alfworld.engine import install_translation_cache, uninstall_translation_cache
from agentgym.envs.alfworld.env import ALFWorldEnv
from agentgym.envs.alfworld.games import find_games, rebuild_trial
from agentgym.envs.alfworld.textcache import install_text_caches, uninstall_text_caches
from agentgym.paths import data_dir

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "alfworld" / "debug-trial"
BUDGET_MB = 100.0


def official_env(game_dir: Path, max_steps: int):
    """ALFWorld's own env over the one game in ``game_dir`` (dagger training config, handcoded expert)."""
    import alfworld
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv
    logic = Path(alfworld.__file__).parent / "data"
    config = {"dataset": {"data_path": str(game_dir), "eval_id_data_path": str(game_dir),
                          "eval_ood_data_path": str(game_dir), "num_train_games": -1, "num_eval_games": -1},
              "logic": {"domain": str(logic / "alfred.pddl"), "grammar": str(logic / "alfred.twl2")},
              "env": {"type": "AlfredTWEnv", "task_types": [1, 2, 3, 4, 5, 6], "expert_type": "handcoded",
                      "domain_randomization": False, "goal_desc_human_anns_prob": 0.0},
              "general": {"training_method": "dagger"},
              "dagger": {"training": {"max_nb_steps_per_episode": max_steps}}}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        tw = AlfredTWEnv(config, train_eval="train")  # it prints its game counts and a progress bar
    if not tw.game_files:  # its reset would cycle over an empty list forever
        raise SystemExit(f"the official AlfredTWEnv found no game in {game_dir}")
    return tw.init_env(batch_size=1)


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def compare(games: list[str], resets: int, steps: int) -> None:
    def caches(on: bool) -> None:  # the official env's worker process is forked: it inherits them
        if on:
            install_translation_cache()
            install_text_caches()
        else:
            uninstall_translation_cache()
            uninstall_text_caches()
    print(f"# side by side with the official AlfredTWEnv ({len(games)} games, {resets} resets x {steps} "
          f"steps each, same commands; load {psutil.getloadavg()[0]:.1f} at start)")
    print(f"{'game':<40}{'env':<28}{'reset ms':>10}{'step ms':>10}  step observations")
    totals: dict[str, dict[str, list[float]]] = {}
    for game in games:
        game_dir = Path(game).parent
        rng = random.Random(0)
        # The commands: agentgym's env picks random admissible ones once; every env replays them.
        probe = ALFWorldEnv(games=[str(game_dir)], max_steps=steps + 1)
        _, info = probe.reset(seed=0, options={"game": game})
        commands = []
        for _ in range(steps):
            commands.append(rng.choice(info["admissible_commands"]))
            _, _, terminated, _, info = probe.step(commands[-1])
            if terminated:
                break
        probe.close()
        with tempfile.TemporaryDirectory(prefix="alfworld-official-") as tmp:
            shutil.copytree(game_dir, Path(tmp) / game_dir.name)  # os.walk does not follow symlinks
            caches(False)
            official = official_env(Path(tmp), max_steps=steps + 1)
            rows = {}
            for name in ("official AlfredTWEnv", "agentgym, text caches off", "agentgym"):
                caches(name == "agentgym")
                reset_s, step_s, observations = [], [], []
                env = None if name.startswith("official") else ALFWorldEnv(
                    games=[str(game_dir)], max_steps=steps + 1, text_cache=name == "agentgym")
                for _ in range(resets):
                    if env is None:
                        _, dt = timed(official.reset)
                    else:
                        _, dt = timed(lambda: env.reset(seed=0, options={"game": game}))
                    reset_s.append(dt)
                    episode = []
                    for command in commands:
                        if env is None:
                            (obs, _, _, _), dt = timed(official.step, [command])
                            episode.append(obs[0])
                        else:
                            (obs, *_), dt = timed(env.step, command)
                            episode.append(obs)
                        step_s.append(dt)
                    observations.append(episode)
                if env is not None:
                    env.close()
                rows[name] = (reset_s, step_s, observations)
            official.close()
        reference = rows["official AlfredTWEnv"][2]
        for name, (reset_s, step_s, observations) in rows.items():
            same = "identical" if observations == reference else "DIFFERENT"
            print(f"{Path(game).parent.name[:38]:<40}{name:<28}{statistics.median(reset_s) * 1e3:>10.1f}"
                  f"{statistics.median(step_s) * 1e3:>10.1f}  {same if not name.startswith('official') else ''}")
            totals.setdefault(name, {"reset": [], "step": []})
            totals[name]["reset"] += reset_s
            totals[name]["step"] += step_s
    base = totals["official AlfredTWEnv"]
    for name, t in totals.items():
        r, s_ = statistics.median(t["reset"]), statistics.median(t["step"])
        print(f"{'all games (median)':<40}{name:<28}{r * 1e3:>10.1f}{s_ * 1e3:>10.1f}  "
              f"reset x{statistics.median(base['reset']) / r:.1f}, step x{statistics.median(base['step']) / s_:.1f} "
              f"faster than official" if not name.startswith("official") else
              f"{'all games (median)':<40}{name:<28}{r * 1e3:>10.1f}{s_ * 1e3:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--games", action="append", default=[])
    parser.add_argument("--compare-games", type=int, default=3, help="games in the side-by-side (0: none)")
    parser.add_argument("--compare-resets", type=int, default=3)
    parser.add_argument("--compare-steps", type=int, default=10)
    parser.add_argument("--only-compare", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check: 1 game side by side (1 reset "
                        "x 3 steps), then 3 episodes x 3 steps (what the test suite runs)")
    args = parser.parse_args()
    if args.smoke:
        args.episodes, args.steps, args.compare_games, args.compare_resets, args.compare_steps = 3, 3, 1, 1, 3
    roots = list(args.games)
    if not roots:
        tmp = Path(tempfile.mkdtemp(prefix="alfworld-bench-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # the rebuilt trial is this run's alone
        rebuild_trial(SHARED, tmp)
        roots.append(str(tmp))
        generated = data_dir("alfworld", "generated", create=False)
        if generated.is_dir():
            roots.append(str(generated))
    if args.compare_games:
        compare([g.path for g in find_games([Path(r) for r in roots])][:args.compare_games],
                args.compare_resets, args.compare_steps)
    if args.only_compare:
        return
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
