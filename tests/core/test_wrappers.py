"""A plain gymnasium env (not an AgentEnv) built through agentgym gets the step guarantees an AgentEnv
has: a step deadline, exceptions turned into a truncated step with an error observation, and a step
limit (agentgym/wrappers.py)."""

from __future__ import annotations

import time

import gymnasium as gym
import pytest

import agentgym  # noqa: F401  (registers the envs)
from agentgym.agents.scripted import ScriptedPolicy
from agentgym.envspec import DEFAULT_MAX_STEPS
from agentgym.rollout import RolloutRunner
from agentgym.wrappers import StepDeadline, make


class PlainTextEnv(gym.Env):
    """A text env written against gymnasium alone: ``mode`` says how its step misbehaves."""

    observation_space = gym.spaces.Text(64)
    action_space = gym.spaces.Text(64)

    def __init__(self, mode: str = "forever"):
        self.mode = mode
        self.steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return "go", {"messages": [{"role": "user", "content": "go"}]}

    def step(self, action):
        self.steps += 1
        if self.mode == "stall":
            time.sleep(30)
        if self.mode == "raise":
            raise ConnectionError("backend down")
        return "again", 0.0, False, False, {"new_messages": [{"role": "user", "content": "again"}]}


@pytest.fixture(scope="module", autouse=True)
def plain_env():
    gym.register(id="wrapperstest/Plain-v0", entry_point=PlainTextEnv, disable_env_checker=True)
    yield
    gym.registry.pop("wrapperstest/Plain-v0", None)


def test_a_stalling_step_is_truncated_at_the_deadline_with_an_error():
    env = make("wrapperstest/Plain-v0", mode="stall", step_timeout_s=0.5)
    env.reset(seed=0)
    started = time.monotonic()
    obs, reward, terminated, truncated, info = env.step("hello")
    assert time.monotonic() - started < 5  # not the 30 s the step wanted
    assert (terminated, truncated, reward) == (False, True, 0.0)
    assert obs.startswith("Step aborted: the environment did not answer within step_timeout_s=0.5 s")
    assert info["truncated_by"] == "step_timeout" and info["step_error"] == obs
    [feedback] = info["feedback"]
    assert feedback.kind == "error" and feedback.payload["type"] == "step_timeout" and feedback.payload["limit_s"] == 0.5
    env.unwrapped.mode = "forever"  # usable again after reset
    env.reset(seed=1)
    assert env.step("hello")[3] is False


def test_a_raising_step_is_a_truncated_step_with_an_error_observation():
    env = make("wrapperstest/Plain-v0", mode="raise")
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("hello")
    assert (terminated, truncated) == (False, True)
    assert obs.startswith("Step failed: ConnectionError: backend down (in test_wrappers.py:")
    assert info["truncated_by"] == "step_error" and info["feedback"][0].payload["exception"] == "ConnectionError"
    assert info["new_messages"][0].content == obs


def test_an_episode_that_never_ends_is_truncated_at_the_step_limit():
    env = make("wrapperstest/Plain-v0", max_steps=4)
    env.reset(seed=0)
    results = [env.step("x") for _ in range(4)]
    assert [r[3] for r in results] == [False, False, False, True]
    assert results[-1][4]["truncated_by"] == "max_steps=4" and "truncated_by" not in results[-2][4]
    unlimited = make("wrapperstest/Plain-v0")  # no limit given: the default one
    unlimited.reset(seed=0)
    assert [unlimited.step("x")[3] for _ in range(DEFAULT_MAX_STEPS)][-2:] == [False, True]


def test_the_rollout_runner_gives_a_plain_env_the_deadline():
    runner = RolloutRunner(ScriptedPolicy(lambda conv: "hello"), "wrapperstest/Plain-v0", tasks=1,
                           env_kwargs={"mode": "stall", "step_timeout_s": 0.5}, progress=False, keep_envs=False)
    started = time.monotonic()
    [traj] = runner.run()
    assert time.monotonic() - started < 10
    assert traj.truncated and not traj.terminated and len(traj.steps) == 1
    assert traj.error.startswith("step 0: Step aborted: the environment did not answer within step_timeout_s=0.5 s")
    assert traj.steps[0].feedback[0].payload["type"] == "step_timeout"


def test_an_agent_env_is_not_wrapped_twice_and_takes_the_settings_itself():
    env = make("agentgym/Echo-v0", step_timeout_s=2.0, max_steps=2)
    layer = env
    while isinstance(layer, gym.Wrapper):
        assert not isinstance(layer, StepDeadline)
        layer = layer.env
    assert (env.unwrapped.step_timeout_s, env.unwrapped.max_steps) == (2.0, 2)


def test_a_configured_step_deadline_reaches_a_plain_env_through_the_run_settings():
    """``env.step_timeout_s`` of a run config reaches any env, not only agentgym's own classes."""
    from agentgym.tasks import runner_settings

    settings = runner_settings("wrapperstest/Plain-v0", {"mode": "stall"}, max_steps=3, step_timeout_s=0.5)
    runner = RolloutRunner(ScriptedPolicy(lambda conv: "hello"), "wrapperstest/Plain-v0", tasks=1, progress=False,
                           keep_envs=False, **settings)
    started = time.monotonic()
    [traj] = runner.run()
    assert time.monotonic() - started < 10
    assert traj.truncated and traj.steps[0].feedback[0].payload["type"] == "step_timeout"
    assert runner_settings("wrapperstest/Plain-v0", {}, max_steps=3, step_timeout_s=0)["env_kwargs"] == {
        "step_timeout_s": None}
