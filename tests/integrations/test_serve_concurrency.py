"""``agentgym serve`` schedules sessions as the env declares: ALFWorld (engine calls under one
process lock) with 8 concurrent sessions completes every episode; an env that declares
``SUPPORTS_CONCURRENT_SESSIONS = False`` never has two env calls running at once, while the same env
without the declaration does (so the check can fail)."""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("openenv.core", reason="needs openenv-core (setup.sh installs it)")

from openenv.core.generic_client import GenericEnvClient  # noqa: E402

from agentgym.envs.alfworld.env import ALFWorldEnv  # noqa: E402
from agentgym.envs.alfworld.games import rebuild_trial  # noqa: E402

from tests.integrations.conftest import Served  # noqa: E402

OVERLAP_ENV = '''
import threading, time, gymnasium as gym
from agentgym.envs.echo.env import EchoEnv

class Overlap(EchoEnv):
    """Echo whose step takes 0.2 s and answers how many steps of any instance ran at once (at most)."""
    SUPPORTS_CONCURRENT_SESSIONS = {safe}
    lock, active, most = threading.Lock(), 0, 0

    def _step(self, action):
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.most = max(cls.most, cls.active)
        time.sleep(0.2)
        with cls.lock:
            cls.active -= 1
        reply = super()._step(action)
        reply.info["most_at_once"] = cls.most
        return reply

gym.register(id="overlaptest/Overlap-v0", entry_point=Overlap)
'''


def run_sessions(url: str, count: int, play) -> dict[int, object]:
    """``play(client, index)`` in ``count`` concurrent sessions (all opened before any plays)."""
    barrier = threading.Barrier(count, timeout=120)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def session(index: int) -> None:
        try:
            with GenericEnvClient(base_url=url, message_timeout_s=120).sync() as env:
                barrier.wait()
                results[index] = play(env, index, barrier)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=session, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    return results


@pytest.mark.parametrize("safe", [False, True], ids=["declared-unsafe", "undeclared-safe"])
def test_sessions_run_env_calls_one_at_a_time_when_the_env_says_so(safe, tmp_path):
    module = tmp_path / "overlap_env.py"
    module.write_text(OVERLAP_ENV.format(safe=safe))
    server = Served("overlaptest/Overlap-v0", "--import", str(module), "--max-sessions", "4")
    try:
        assert ("one session at a time" in "".join(server.lines)) is (not safe)

        def play(env, index, barrier):
            env.reset(options={"word": "apple"})
            barrier.wait()
            most = 0
            for _ in range(3):
                result = env.step({"type": "text", "text": "pear"})
                most = max(most, result.observation["info"]["most_at_once"])
            return most

        most = max(run_sessions(server.url, 4, play).values())
    finally:
        rc, out, err = server.stop()
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert most == 1 if not safe else most > 1


def test_served_alfworld_with_eight_concurrent_sessions_completes_every_episode(shared_data, tmp_path):
    game = rebuild_trial(shared_data / "alfworld" / "debug-trial", tmp_path)
    local = ALFWorldEnv(games=str(game))
    _, info = local.reset(seed=0)
    plan = info["expert_plan"]
    local.close()
    assert plan
    server = Served("agentgym/ALFWorld-v0", "--env-kwargs", json.dumps({"games": str(game)}), "--max-sessions", "8")
    try:
        assert "one session at a time" not in "".join(server.lines)  # ALFWorld declares its sessions safe

        def play(env, index, barrier):
            outcomes = []
            for _episode in range(2):
                env.reset(seed=index)
                reward = 0.0
                for command in plan:
                    result = env.step({"type": "text", "text": command})
                    reward = result.reward
                outcomes.append((reward, result.observation["terminated"]))
            return outcomes

        results = run_sessions(server.url, 8, play)
    finally:
        rc, out, err = server.stop()
    assert results == {i: [(1.0, True)] * 2 for i in range(8)}
    assert rc == 0 and "0 still open" in out and "Traceback" not in err, err[-2000:]
