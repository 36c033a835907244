"""In-process envs persist across rollouts: a second ``RolloutRunner.run()`` with the same env id and
kwargs builds no new env and resets the old ones (same trajectories as fresh envs); other kwargs,
``keep_envs=False`` and a failed env do not reuse; ``close_idle_envs`` closes what is kept."""

from __future__ import annotations

import gymnasium as gym
import pytest

from agentgym.agents.scripted import ScriptedPolicy
from agentgym.envs.echo.env import EchoEnv
from agentgym.envshelf import close_idle_envs, idle_envs
from agentgym.rollout import RolloutRunner

ENV = "agentgym-test/CountedEcho-v0"


class CountedEcho(EchoEnv):
    """Echo that counts the instances built and closed (class-wide); its reset fails on 'stone'."""

    built: list["CountedEcho"] = []
    closed = 0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        type(self).built.append(self)

    def _reset(self, options):
        if options.get("word") == "stone":
            raise OSError("disk on fire")
        return super()._reset(options)

    def close(self):
        type(self).closed += 1
        super().close()


if ENV not in gym.registry:
    gym.register(id=ENV, entry_point=CountedEcho)


@pytest.fixture(autouse=True)
def fresh_counts():
    close_idle_envs()
    CountedEcho.built, CountedEcho.closed = [], 0
    yield
    close_idle_envs()


def run(tasks, **kwargs):
    policy = ScriptedPolicy(lambda conv: conv[-1]["content"].split()[-1])  # says the word: wins in one step
    return RolloutRunner(policy, ENV, tasks, group_size=2, progress=False, **kwargs).run()


TASKS = [{"word": "apple"}, {"word": "river"}, {"word": "cloud"}]


def test_second_run_with_same_id_and_kwargs_builds_no_env():
    first = run(TASKS, max_concurrent=4)
    built = len(CountedEcho.built)
    assert 1 <= built <= 4 and CountedEcho.closed == 0 and idle_envs(ENV) == built
    second = run(TASKS, max_concurrent=4, seed=0)
    assert len(CountedEcho.built) == built  # every env of the second run was an old one, reset
    assert [t.success for t in second] == [True] * 6
    assert [(t.task_index, t.member, t.final_reward) for t in second] == [(t.task_index, t.member, t.final_reward) for t in first]
    assert close_idle_envs(ENV) == built and CountedEcho.closed == built and idle_envs(ENV) == 0


def test_other_kwargs_and_keep_envs_false_do_not_reuse():
    run(TASKS, max_concurrent=2)
    built = len(CountedEcho.built)
    run(TASKS, max_concurrent=2, env_kwargs={"reference": True})
    assert len(CountedEcho.built) > built  # other kwargs: other envs
    kept = idle_envs(ENV)
    count = len(CountedEcho.built)
    run(TASKS, max_concurrent=2, keep_envs=False)
    assert len(CountedEcho.built) > count and idle_envs(ENV) == kept  # built its own, kept none
    assert CountedEcho.closed == len(CountedEcho.built) - kept


def test_an_env_that_failed_is_closed_not_kept():
    trajs = run([{"word": "stone"}], max_concurrent=1)
    assert all(t.error and "disk on fire" in t.error for t in trajs)
    assert idle_envs(ENV) == 0 and CountedEcho.closed == len(CountedEcho.built)


CYCLIC = "agentgym-test/CyclicEcho-v0"


class CyclicEcho(EchoEnv):
    """Echo caught in a reference cycle of its own, as a closed remote session's asyncio transport is
    in CPython 3.11: only the cycle collector frees it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.me = self


if CYCLIC not in gym.registry:
    gym.register(id=CYCLIC, entry_point=CyclicEcho)


def test_a_run_that_closes_its_envs_frees_their_cycles_when_it_ends():
    import gc
    import weakref

    gc.collect()
    gc.disable()  # no automatic collection: what is freed, the run freed
    try:
        runner = RolloutRunner(ScriptedPolicy(lambda conv: "apple"), CYCLIC, tasks=[{"word": "apple"}] * 3,
                               max_concurrent=3, progress=False, keep_envs=False)
        runner._envs.take = _watching(runner._envs.take, envs := weakref.WeakSet())
        assert all(t.success for t in runner.run())
        assert len(envs) == 0  # built, closed and freed by the end of the run
    finally:
        gc.enable()


def _watching(take, seen):
    def watched():
        env = take()
        seen.add(env.unwrapped)
        return env
    return watched
