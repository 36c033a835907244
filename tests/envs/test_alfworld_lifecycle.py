"""ALFWorld envs over a process's lifetime: one planner library per process whatever the number of
envs built and closed (nothing left in $TMPDIR, no deleted copy mapped, flat RSS), engines that
share it play exactly as if alone, and envs in several threads of one process complete every
episode."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import pytest

from agentgym.envs.alfworld import planner
from agentgym.envs.alfworld.env import ALFWorldEnv
from agentgym.envs.alfworld.games import rebuild_trial
from agentgym.paths import data_dir


@pytest.fixture(scope="module")
def games(shared_data, tmp_path_factory) -> list[str]:
    """Two different games: the rebuilt trial and one generated game (cached in the data dir)."""
    from agentgym.envs.alfworld.generate import generate_games

    trial = rebuild_trial(shared_data / "alfworld" / "debug-trial", tmp_path_factory.mktemp("alfworld-life"))
    generated = generate_games(2, seed=7, out=data_dir("alfworld", "generated-noop")).games[0]["path"]
    return [str(trial), str(generated)]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def planner_mappings() -> list[str]:
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if "libdownward" in line]


def play(env: ALFWorldEnv, game: str) -> list:
    """The expert's plan through the env; the transcript of everything the game said."""
    obs, info = env.reset(seed=0, options={"game": game})
    transcript = [obs, info["admissible_commands"]]
    reward, terminated = 0.0, False
    for command in info["expert_plan"]:
        obs, reward, terminated, _, info = env.step(command)
        transcript += [obs, info["admissible_commands"]]
    transcript.append((reward, terminated))
    return transcript


def test_twenty_envs_built_and_closed_hold_one_planner_and_flat_rss(games, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where fast_downward.load_lib copied to
    rss = []
    for i in range(20):
        env = ALFWorldEnv(games=games[0], reference_plan="reset")
        _, info = env.reset(seed=i)
        for command in info["expert_plan"][:3]:
            env.step(command)
        assert planner.users() == 1
        env.close()
        assert planner.users() == 0
        rss.append(rss_mb())
    maps = planner_mappings()
    assert len({line.split()[-1] for line in maps}) <= 1, maps
    assert not any("(deleted)" in line for line in maps), maps
    assert list(tmp_path.iterdir()) == []  # no library copy written (or left) in $TMPDIR
    assert rss[-1] - rss[0] < 5.0, f"RSS after each env (MB): {[round(r, 1) for r in rss]}"


def test_engines_sharing_the_planner_play_as_if_alone(games):
    """Two envs on two games, stepped alternately (each step swaps the other's game out of the shared
    library), say exactly what each says when played alone."""
    alone = []
    for game in games:
        env = ALFWorldEnv(games=game, reference_plan="reset")
        alone.append(play(env, game))
        env.close()
    a, b = ALFWorldEnv(games=games[0]), ALFWorldEnv(games=games[1])
    steps = []
    for env, game in ((a, games[0]), (b, games[1])):
        obs, info = env.reset(seed=0, options={"game": game})
        steps.append([obs, info["admissible_commands"]])
    plan_a, plan_b = a._plan, b._plan
    results = [None, None]
    for i in range(max(len(plan_a), len(plan_b))):
        for k, (env, plan) in enumerate(((a, plan_a), (b, plan_b))):
            if i < len(plan):
                obs, reward, terminated, _, info = env.step(plan[i])
                steps[k] += [obs, info["admissible_commands"]]
                results[k] = (reward, terminated)
    for k in range(2):
        assert steps[k] + [results[k]] == alone[k]
        assert results[k] == (1.0, True)
    assert a._engine._planner.restores > 1 and b._engine._planner.restores > 1  # they did swap
    a.close()
    b.close()
    assert planner.users() == 0


@pytest.mark.parametrize("text_cache", [True, False], ids=["text-cache", "textworld-parsing"])
def test_four_threads_each_with_its_own_env_complete_every_episode(games, text_cache):
    """TextWorld's tatsu parser and the planner's C globals are not thread-safe; the engine lock
    makes four envs stepped by four threads complete every episode with the expected transcript."""
    reference = {}
    env = ALFWorldEnv(games=games[0], text_cache=text_cache)
    for game in games:
        reference[game] = play(env, game)
    env.close()
    episodes = 2
    outcomes: dict[int, list] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(index: int) -> None:
        try:
            env = ALFWorldEnv(games=games[0], text_cache=text_cache)
            start.wait()
            outcomes[index] = []
            for episode in range(episodes):
                game = games[(index + episode) % 2]
                outcomes[index].append(play(env, game) == reference[game])
            env.close()
        except BaseException as error:  # reported below with the thread's index
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert outcomes == {i: [True] * episodes for i in range(4)}
    assert planner.users() == 0
