"""ALFWorld's caches change nothing the game says: the same games and commands with TextWorld's own
parsing and with the memoised one give identical observations, admissible commands, rewards and
expert plans; the caches are bounded and the expert plan is shared by the envs of a process."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agentgym.envs.alfworld import env as alfworld_env
from agentgym.envs.alfworld.env import ALFWorldEnv
from agentgym.envs.alfworld.games import find_games, rebuild_trial
from agentgym.envs.alfworld.textcache import LRUMemo, install_text_caches, text_caches, uninstall_text_caches
from agentgym.paths import data_dir


@pytest.fixture(scope="module")
def games(shared_data, tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("alfworld-cache")
    found = [str(rebuild_trial(shared_data / "alfworld" / "debug-trial", out))]
    generated = data_dir("alfworld", "generated", create=False)
    if generated.is_dir():
        found += [g.path for g in find_games([generated])[:3]]
    return found


def play(env: ALFWorldEnv, game: str, seed: int) -> list:
    """Reset, then commands: random admissible ones, one inadmissible, and the expert's next one."""
    rng = random.Random(seed)
    obs, info = env.reset(seed=0, options={"game": game})
    record = [obs, info["admissible_commands"], info["expert_plan"]]
    for i in range(10):
        if i == 3:
            command = "fly to the moon"
        elif i % 3 == 2:
            command = next((f.payload["next_command"] for f in info["feedback"] if f.kind == "reference"), "look")
        else:
            command = rng.choice(info["admissible_commands"])
        obs, reward, terminated, truncated, info = env.step(command or "look")
        record.append((obs, info["admissible_commands"], reward, terminated, truncated,
                       [(f.kind, f.text) for f in info["feedback"]]))
        if terminated or truncated:
            break
    return record


@pytest.mark.parametrize("how_many", [2, pytest.param(None, marks=pytest.mark.slow)])
def test_cached_and_uncached_play_say_exactly_the_same(games, how_many):
    games = games[:how_many]
    runs = {}
    try:
        for cached in (False, True):
            uninstall_text_caches()
            alfworld_env._PLANS.clear()  # each run computes its own expert plans
            env = ALFWorldEnv(games=games, text_cache=cached, max_steps=50)
            try:
                runs[cached] = [play(env, g, seed=k) for k, g in enumerate(games)]
            finally:
                env.close()
            memos = text_caches()
            if cached:  # the memos did the work: parses were served from them
                assert memos["templates"].hits > 5 * memos["templates"].misses > 0  # ~10x on the shared trial
                assert memos["queries"].hits > 0
            else:
                assert memos == {}  # TextWorld's own code ran
    finally:
        install_text_caches()
    assert len(runs[True]) == len(games) and all(len(r) > 3 for r in runs[True])
    assert runs[False] == runs[True]


def test_expert_plans_are_shared_by_the_envs_of_a_process(games, monkeypatch):
    alfworld_env._PLANS.clear()
    first, second = ALFWorldEnv(games=games), ALFWorldEnv(games=games)
    try:
        _, info = first.reset(seed=0, options={"game": games[0]})
        calls = []
        real = alfworld_env.Engine.expert_rollout
        monkeypatch.setattr(alfworld_env.Engine, "expert_rollout",
                            lambda self, *a, **k: calls.append(a) or real(self, *a, **k))
        _, again = second.reset(seed=5, options={"game": games[0]})
        assert calls == [] and again["expert_plan"] == info["expert_plan"] and info["expert_plan"]
        # A rewritten game file is a new key: its plan is computed again.
        path = Path(first._game["game"])
        path.write_text(path.read_text())
        second.reset(seed=0, options={"game": games[0]})
        assert len(calls) == 1
    finally:
        first.close()
        second.close()


def test_memos_are_bounded_lru():
    memo = LRUMemo(lambda x: x * 2, maxsize=3)
    for x in (1, 2, 3, 1, 4):  # 1 is refreshed, so 2 is the one evicted
        memo.get((x,))
    assert len(memo) == 3 and memo.misses == 4 and memo.hits == 1
    memo.get((2,))
    assert memo.misses == 5
    with pytest.raises(ValueError, match="maxsize must be >= 1"):
        LRUMemo(lambda x: x, maxsize=0)
    with pytest.raises(ValueError, match="plan_cache_size must be >= 1"):
        ALFWorldEnv(plan_cache_size=0)
