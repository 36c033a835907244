"""Env worker pools: the same trajectories as in-process, a killed worker truncates only its own
episodes (with the cause) and is respawned, env errors inside a worker read as they do in-process."""

from __future__ import annotations

import os
import signal
import time

import gymnasium as gym
import pytest

import agentgym  # noqa: F401  (registers the envs)
from agentgym.agents.scripted import ScriptedPolicy
from agentgym.config import ConfigError, load_config
from agentgym.envs.echo.env import EchoEnv
from agentgym.envpool import EnvPool
from agentgym.rollout import RolloutRunner, rollout

WORDS = list(EchoEnv.WORDS)


class SleepyEnv(EchoEnv):
    """Echo whose steps take 0.2 s of waiting (an env blocked on I/O or a simulator)."""

    def _step(self, action):
        time.sleep(0.2)
        return super()._step(action)


if "agentgym-test/PoolSleepy-v0" not in gym.registry:
    gym.register(id="agentgym-test/PoolSleepy-v0", entry_point="tests.core.test_envpool:SleepyEnv",
                 disable_env_checker=True)

if "agentgym-test/PoolRaising-v0" not in gym.registry:
    # A string entry point: the spawned workers import that module to build the env.
    gym.register(id="agentgym-test/PoolRaising-v0", entry_point="tests.core.test_rollout:FlakyEnv",  # raises for ember / stone
                 disable_env_checker=True)


def third_turn_right(conv):
    """Wrong twice, right on the third turn, except for 'apple' (right at once): 1-3 step episodes."""
    word = conv[1 if conv[0]["role"] == "system" else 0]["content"].split()[-1]
    turn = sum(1 for m in conv if m["role"] == "assistant")
    return word if word == "apple" or turn == 2 else f"not {word} ({turn})"


def comparable(traj):
    data = traj.model_dump(mode="json")
    data["run_id"] = data["group_id"] = None
    for key in ("seconds", "env_worker", "policy"):
        data["metadata"].pop(key, None)
    return data


def test_workers_give_the_same_trajectories_as_in_process():
    tasks = [{"word": w} for w in WORDS]
    results = {}
    for workers in (0, 1, 2):
        runner = RolloutRunner(ScriptedPolicy(third_turn_right), "agentgym/Echo-v0", tasks, group_size=2,
                               max_concurrent=5, progress=False, run_id="same", workers=workers)
        trajs = runner.run()
        results[workers] = [comparable(t) for t in trajs]
        assert runner.stats.workers == workers and runner.stats.steps == sum(t.num_steps for t in trajs)
        if workers:
            assert {t.metadata["env_worker"] for t in trajs} == set(range(workers))
    assert results[0] == results[1] == results[2]
    assert [t["num_steps"] if "num_steps" in t else len(t["steps"]) for t in results[2][:2]] == [1, 1]  # apple
    assert all(len(t["steps"]) == 3 and t["success"] for t in results[2][2:])


def test_generation_overlaps_env_steps():
    """With workers, the policy generates for some episodes while others step: the run takes less
    wall time than its generation time plus its env time (in-process it takes at least their sum)."""
    def slow_script(conv):
        time.sleep(0.1)  # a generation that costs time (per conversation)
        return "wrong"

    with EnvPool("agentgym-test/PoolSleepy-v0", workers=2) as pool:
        rollout(ScriptedPolicy(lambda conv: "apple"), "agentgym-test/PoolSleepy-v0", [{"word": "apple"}] * 2,
                progress=False, workers=pool)  # both workers up: their start-up is not measured
        runner = RolloutRunner(ScriptedPolicy(slow_script), "agentgym-test/PoolSleepy-v0",
                               [{"word": w} for w in WORDS[:4]], progress=False, workers=pool)
        trajs = runner.run()
    s = runner.stats
    assert all(len(t.steps) == 3 and t.error is None for t in trajs)
    assert s.env_seconds >= 12 * 0.2 and s.policy_seconds >= 12 * 0.1
    assert s.total_seconds < 0.75 * (s.env_seconds + s.policy_seconds), s


def test_a_killed_worker_truncates_its_episodes_with_the_cause_and_is_respawned():
    killed = {}

    def script(conv):
        word = conv[0]["content"].split()[-1]
        turn = sum(1 for m in conv if m["role"] == "assistant")
        if word == "river" and turn == 1 and not killed:  # mid-episode: kill the worker holding it
            index = runner.env_worker("1:0")
            killed.update(index=index, pid=runner.pool.workers[index].pid)
            os.kill(killed["pid"], signal.SIGKILL)
            runner.pool.workers[index].process.join(10)  # dead before the loop looks again
        return word if turn == 2 else "wrong"

    tasks = [{"word": w} for w in WORDS]
    runner = RolloutRunner(ScriptedPolicy(script), "agentgym/Echo-v0", tasks, max_concurrent=4,
                           progress=False, workers=2)
    trajs = runner.run()
    assert len(trajs) == len(WORDS) and killed
    failed = [t for t in trajs if t.error]
    assert "echo-river" in {t.task_id for t in failed}
    for t in failed:  # only episodes of the dead worker, each naming the cause
        assert t.truncated and not t.success and t.metadata["env_worker"] == killed["index"]
        assert f"env worker {killed['index']} (pid {killed['pid']}) died: killed by signal SIGKILL" in t.error
        assert t.error.startswith("step ")
    ok = [t for t in trajs if not t.error]
    assert len(ok) >= len(WORDS) - 2 and all(t.success and len(t.steps) == 3 for t in ok)
    # Later episodes ran on the respawned worker in the dead one's slot.
    assert any(t.metadata["env_worker"] == killed["index"] for t in ok)
    assert runner.stats.worker_respawns == 1


def test_env_errors_inside_workers_read_as_in_process():
    tasks = [{"word": w} for w in ("apple", "stone", "ember", "river")]
    by_workers = {}
    for workers in (0, 2):
        trajs = rollout(ScriptedPolicy(third_turn_right), "agentgym-test/PoolRaising-v0", tasks,
                        progress=False, workers=workers)
        by_workers[workers] = [(t.error, t.truncated, t.success, len(t.steps)) for t in trajs]
    assert by_workers[0] == by_workers[2]
    assert by_workers[2][1][0] == "reset: OSError: disk on fire"
    assert by_workers[2][2][0].startswith("step 0: Step failed: RuntimeError: backend crashed")
    assert by_workers[2][0][2] and by_workers[2][3][2]


def test_a_given_pool_serves_several_runs_and_stays_open():
    with EnvPool("agentgym/Echo-v0", workers=1) as pool:
        for _ in range(2):
            trajs = rollout(ScriptedPolicy(third_turn_right), "agentgym/Echo-v0", [{"word": "apple"}],
                            progress=False, workers=pool)
            assert trajs[0].success
        assert not pool.closed and pool.workers[0].process.is_alive()
    assert pool.closed and not pool.workers[0].process.is_alive()


def test_workers_are_kept_for_the_next_run_with_the_same_env():
    from agentgym.envpool import close_shared_pools, shared_pool
    pids = []
    for _ in range(2):
        runner = RolloutRunner(ScriptedPolicy(third_turn_right), "agentgym/Echo-v0", [{"word": "apple"}],
                               progress=False, workers=1, env_kwargs={"max_steps": 2})
        assert runner.run()[0].success
        pool = shared_pool("agentgym/Echo-v0", {"max_steps": 2}, 1)
        pids.append(pool.workers[0].pid)
    assert pids[0] == pids[1] and pool.workers[0].process.is_alive()  # one start-up for both runs
    assert shared_pool("agentgym/Echo-v0", {"max_steps": 3}, 1) is not pool  # other kwargs: other workers
    close_shared_pools()
    assert pool.closed and not pool.workers[0].process.is_alive()


def test_an_env_from_a_plugin_file_runs_in_workers(tmp_path):
    from agentgym.plugins import import_plugins
    plugin = tmp_path / "pool_plugin_envs.py"
    plugin.write_text(
        "import gymnasium as gym\n"
        "from agentgym.envs.echo.env import EchoEnv\n"
        "class ShoutEnv(EchoEnv):\n"
        "    def _step(self, action):\n"
        "        return super()._step(action.lower())\n"
        "if 'pooltest/Shout-v0' not in gym.registry:\n"
        "    gym.register(id='pooltest/Shout-v0', entry_point=ShoutEnv, disable_env_checker=True)\n")
    import_plugins(str(plugin))  # a class entry point from a file: the workers import the file too
    [t] = rollout(ScriptedPolicy(lambda conv: "APPLE"), "pooltest/Shout-v0", [{"word": "apple"}],
                  progress=False, workers=1)
    assert t.success and t.error is None and t.metadata["env_worker"] == 0


def test_bad_worker_settings_are_clear_errors():
    with pytest.raises(ValueError, match="workers must be an int >= 0"):
        RolloutRunner(ScriptedPolicy(third_turn_right), "agentgym/Echo-v0", 1, workers=-1)
    with pytest.raises(ConfigError, match="env.workers"):
        load_config(["--env.workers", "-2"])
    assert load_config(["--env.workers", "3"]).env.workers == 3


def test_the_trainer_rolls_out_in_env_workers(tmp_path):
    """``env.workers`` reaches the trainer's rollouts (train and evaluation)."""
    from agentgym.store import read_trajectories
    from agentgym.train import Trainer
    cfg = load_config(["--train.run_dir", str(tmp_path), "--env.workers", "2"], base={
        "model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},
        "env": {"id": "agentgym/Echo-v0", "kwargs": {}, "tasks_per_update": 2, "group_size": 2, "max_steps": 2,
                "eval_task_ids": ["a"]},
        "rollout": {"temperature": 1.0, "max_new_tokens": 4},
        "learner": {"name": "grpo"},  # the workers are tested, not learning: no gradient does not stop it
        "train": {"updates": 1, "progress": False, "deterministic": True, "max_no_gradient_fraction": 1.0}})
    Trainer(cfg).run()
    trajs = list(read_trajectories(tmp_path / "trajectories.jsonl"))
    assert {t.phase for t in trajs} == {"train", "eval"}
    assert all(t.metadata.get("env_worker") in (0, 1) and t.error is None for t in trajs)
