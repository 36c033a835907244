"""The AgentEnv contract: spaces, step bookkeeping, truncation vs termination, user envs."""

from __future__ import annotations

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import agentgym
from agentgym import AgentEnv, EnvReply, EnvReset, Feedback, FeedbackKind, Message


class CountdownEnv(AgentEnv):
    """A user's own env: say the numbers from n down to 1."""

    default_max_steps = 10

    def _reset(self, options):
        self.next = int(options.get("start", 3))
        return EnvReset(messages=[Message(role="user", content=f"Count down from {self.next}.")],
                        task={"id": f"countdown-{self.next}"},
                        tools=[{"type": "function", "function": {"name": "say", "parameters": {"type": "object"}}}])

    def _step(self, action):
        if action.strip() != str(self.next):
            return EnvReply(messages=[Message(role="user", content=f"Expected {self.next}.")],
                            feedback=[Feedback(kind="error", step=0, text="wrong number")])
        self.next -= 1
        done = self.next == 0
        return EnvReply(messages=[Message(role="user", content="Done!" if done else "Next.")],
                        reward=1.0 if done else 0.0, terminated=done)


@pytest.fixture(scope="module", autouse=True)
def _register():
    gym.register(id="usertest/Countdown-v0", entry_point=CountdownEnv, disable_env_checker=True)
    yield
    del gym.registry["usertest/Countdown-v0"]


def test_check_env_passes_for_builtin_and_user_envs():
    check_env(gym.make("agentgym/Echo-v0").unwrapped)
    check_env(gym.make("usertest/Countdown-v0").unwrapped)


def test_user_env_episode_terminates_with_history_and_feedback():
    env = gym.make("usertest/Countdown-v0")
    obs, info = env.reset(options={"start": 2})
    assert obs == "Count down from 2." and info["task"] == {"id": "countdown-2"}
    obs, reward, terminated, truncated, info = env.step("5")
    assert info["feedback"][0].kind is FeedbackKind.ERROR and info["feedback"][0].step == 0
    env.step("2")
    obs, reward, terminated, truncated, info = env.step("1")
    assert (reward, terminated, truncated) == (1.0, True, False)
    assert [m.role for m in info["messages"]] == ["user"] + ["assistant", "user"] * 3
    assert info["step"] == 2 and info["feedback"] == []


def test_step_limit_truncates_and_never_terminates():
    env = gym.make("usertest/Countdown-v0", max_steps=2)
    env.reset(options={"start": 5})
    assert env.step("x")[3] is False
    obs, reward, terminated, truncated, info = env.step("x")
    assert truncated and not terminated
    with pytest.raises(RuntimeError, match="call reset"):
        env.step("x")


@pytest.mark.parametrize("action", [None, 42, b"bytes", ["list"], "y" * 100_001])
def test_non_text_or_oversized_actions_become_error_feedback(action):
    env = gym.make("agentgym/Echo-v0")
    env.reset(options={"word": "apple"})
    obs, reward, terminated, truncated, info = env.step(action)
    assert info["feedback"][0].kind is FeedbackKind.ERROR
    assert "Invalid action" in obs and not terminated


def test_constructor_and_reset_errors_are_precise():
    with pytest.raises(ValueError, match="max_steps must be a positive int, got 0"):
        gym.make("agentgym/Echo-v0", max_steps=0)
    with pytest.raises(TypeError, match="options must be a dict or None, got list"):
        gym.make("agentgym/Echo-v0").reset(options=["word"])


def test_render_ansi_returns_the_last_observation():
    env = gym.make("agentgym/Echo-v0", render_mode="ansi")
    env.reset(options={"word": "river"})
    assert env.render() == "Say the word: river"


def test_registration_is_idempotent_and_lists_every_builtin():
    agentgym.register_envs()
    ids = {k for k in gym.registry if k.startswith("agentgym/")}
    assert {"agentgym/BFCLMultiTurn-v0", "agentgym/BFCLSingleTurn-v0", "agentgym/WebShop-v0",
            "agentgym/ALFWorld-v0", "agentgym/AppWorld-v0", "agentgym/Echo-v0"} <= ids


def test_env_metadata_lives_in_the_class_defaults_and_is_resolved_once_per_id():
    from agentgym.envs.echo.env import EchoEnv
    from agentgym.envspec import EnvDefaults, env_defaults, resolve_env

    resolved = resolve_env("agentgym/Echo-v0")
    assert resolved is resolve_env("agentgym/Echo-v0")  # cached per id
    assert resolved.cls is EchoEnv and resolved.defaults is EchoEnv.defaults is env_defaults("agentgym/Echo-v0")
    assert resolved.defaults.max_steps == 3 == gym.make("agentgym/Echo-v0").unwrapped.max_steps
    # The older spelling, a class attribute default_max_steps, is folded into the one EnvDefaults.
    assert CountdownEnv.defaults.max_steps == 10 == env_defaults("usertest/Countdown-v0").max_steps
    assert gym.make("usertest/Countdown-v0").unwrapped.max_steps == 10

    class TwoLimits(CountdownEnv):  # a run's limit below the env's own (BFCL multi-turn: 20 of 168)
        defaults = EnvDefaults(max_steps=4, env_max_steps=12)

    class Inherits(TwoLimits):
        pass

    assert (Inherits.defaults.max_steps, Inherits.defaults.env_max_steps) == (4, 12)
    assert Inherits().max_steps == 12
    gym.register(id="usertest/Countdown-v1", entry_point=TwoLimits, disable_env_checker=True,
                 kwargs={"max_action_chars": 50})
    try:
        declared = resolve_env("usertest/Countdown-v1").defaults
        assert declared.max_steps == 4 and declared.train_kwargs == {"max_action_chars": 50}
    finally:
        del gym.registry["usertest/Countdown-v1"]
