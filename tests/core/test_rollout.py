"""The rollout loop: groups, limits, failing envs, streaming store, BFCL end to end."""

from __future__ import annotations

import time

import gymnasium as gym
import pytest

import agentgym
from agentgym.agents.scripted import ScriptedPolicy, by_turn
from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.envs.echo.env import EchoEnv
from agentgym.rollout import RolloutRunner, rollout
from agentgym.store import read_trajectories
from agentgym.types import Message, episode_tokens


class FlakyEnv(EchoEnv):
    """Echo that raises in step when the word is 'ember' and in reset when it is 'stone'."""

    def _reset(self, options):
        if options.get("word") == "stone":
            raise OSError("disk on fire")
        return super()._reset(options)

    def _step(self, action):
        if self._word == "ember":
            raise RuntimeError("backend crashed")
        return super()._step(action)


class SlowEnv(EchoEnv):
    defaults = EchoEnv.defaults.replace(max_steps=100)

    def _step(self, action):
        time.sleep(0.05)
        return super()._step(action)


for _id, _cls in {"agentgym-test/Flaky-v0": FlakyEnv, "agentgym-test/Slow-v0": SlowEnv}.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point=_cls, disable_env_checker=True)


def test_groups_share_start_states_and_group_ids():
    seen = []
    policy = ScriptedPolicy(lambda conv: (seen.append(conv[-1]["content"]), "nope")[1])
    trajs = rollout(policy, "agentgym/Echo-v0", tasks=4, group_size=3, seed=7, progress=False)
    assert len(trajs) == 12
    for i in range(4):
        group = trajs[3 * i:3 * i + 3]
        assert {t.group_id for t in group} == {group[0].group_id}
        assert all(t.messages == group[0].messages and t.task_id == group[0].task_id for t in group)
        assert [t.member for t in group] == [0, 1, 2]
    assert len({t.group_id for t in trajs}) == 4
    assert all(t.truncated and t.num_steps == 3 for t in trajs)  # Echo's own step limit


def test_success_and_rewards_are_recorded():
    trajs = rollout(ScriptedPolicy(by_turn(["pear", "apple"])), "agentgym/Echo-v0",
                    [{"word": "apple"}], group_size=2, progress=False)
    for t in trajs:
        assert t.success and t.terminated and not t.truncated and t.final_reward == 1.0
        assert [s.action_text for s in t.steps] == ["pear", "apple"]
        assert t.steps[0].feedback[0].kind.value == "error" and t.steps[0].observation.startswith("Wrong")


def test_failing_env_is_recorded_as_truncated_and_the_run_goes_on(tmp_path):
    tasks = [{"word": "apple"}, {"word": "ember"}, {"word": "stone"}, {"word": "honey"}]
    store = tmp_path / "run.jsonl"
    trajs = rollout(ScriptedPolicy(lambda conv: conv[0]["content"].split()[-1]), "agentgym-test/Flaky-v0",
                    tasks, group_size=2, progress=False, store=store)
    assert len(trajs) == 8 and len(list(read_trajectories(store))) == 8
    by_word = {t.metadata["options"]["word"]: t for t in trajs}
    assert by_word["apple"].success and by_word["honey"].success
    ember, stone = by_word["ember"], by_word["stone"]
    assert ember.truncated and "RuntimeError: backend crashed" in ember.error and ember.num_steps == 1
    assert ember.steps[0].action_text == "ember"  # the action that broke the env is kept
    assert stone.truncated and "OSError: disk on fire" in stone.error and stone.num_steps == 0


def test_step_and_time_limits():
    never = ScriptedPolicy(lambda conv: "wrong")
    [t] = rollout(never, "agentgym-test/Slow-v0", [{"word": "apple"}], max_steps=4, progress=False)
    assert t.truncated and t.num_steps == 4 and t.steps[-1].truncated
    assert t.steps[-1].info["truncated_by"] == "rollout max_steps=4"
    [t] = rollout(never, "agentgym-test/Slow-v0", [{"word": "apple"}], max_episode_seconds=0.3, progress=False)
    assert t.truncated and t.error.startswith("time limit") and 2 <= t.num_steps < 100


def test_store_streams_episodes_as_they_finish_and_survives_a_crash(tmp_path):
    store = tmp_path / "run.jsonl"

    class Boom(Exception):
        pass

    calls = {"n": 0}

    def script(conv):
        calls["n"] += 1
        word = conv[0]["content"].split()[-1]
        if word == "river":
            if calls["n"] > 3:
                raise Boom("policy died")  # e.g. the GPU fell over mid-run
            return "wrong"
        return word

    tasks = [{"word": "apple"}, {"word": "river"}, {"word": "cloud"}]
    with pytest.raises(Boom):
        rollout(ScriptedPolicy(script), "agentgym/Echo-v0", tasks, progress=False, store=store, max_concurrent=3)
    kept = list(read_trajectories(store))  # finished episodes are on disk, the in-flight one is not
    assert sorted(t.metadata["options"]["word"] for t in kept) == ["apple", "cloud"]
    with open(store, "a") as f:
        f.write(kept[0].to_json()[:57])  # a write cut off by the crash
    with pytest.warns(UserWarning, match="truncated record"):
        assert len(list(read_trajectories(store))) == 2
    # Resuming the same run id skips what is stored, repairs the torn line, appends the rest.
    runner = RolloutRunner(ScriptedPolicy(lambda conv: conv[0]["content"].split()[-1]), "agentgym/Echo-v0",
                           tasks, progress=False, store=store, resume=True, run_id=kept[0].run_id)
    assert [t.metadata["options"]["word"] for t in runner.run()] == ["river"]
    with pytest.warns(UserWarning, match="truncated record"):
        assert sorted(t.metadata["options"]["word"] for t in read_trajectories(store)) == ["apple", "cloud", "river"]


def test_unknown_env_id_is_a_clear_error():
    with pytest.raises(gym.error.NameNotFound, match="not registered"):
        rollout(ScriptedPolicy(lambda c: ""), "agentgym/Nope-v0", 1)


def test_episode_tokens_rejects_a_re_tokenized_context():
    from agentgym.types import Step, Trajectory
    traj = Trajectory(task_id="t", steps=[Step(index=0, prompt_ids=[1, 2], action_ids=[3]),
                                          Step(index=1, prompt_ids=[1, 2, 4, 5], action_ids=[6])])
    with pytest.raises(ValueError, match="do not extend"):
        episode_tokens(traj)


# ---------------------------------------------------------------------------------- BFCL
BFCL = "agentgym/BFCLMultiTurn-v0"
BFCL_TASK = {"task_id": "multi_turn_base_0"}


def _bfcl_env_kwargs():
    return {"split": "all"}


def test_bfcl_end_to_end_with_the_tiny_model(tiny_model_path, tmp_path):
    from agentgym.agents import SamplingParams, TransformersPolicy

    policy = TransformersPolicy(tiny_model_path)
    # BFCL prompts are ~8k tiny-model tokens (27 tool schemas): one task, two members, two steps.
    trajs = rollout(policy, BFCL, [BFCL_TASK], group_size=2,
                    env_kwargs=_bfcl_env_kwargs(), sampling=SamplingParams(max_new_tokens=8, seed=0),
                    max_steps=2, progress=False, store=tmp_path / "bfcl.jsonl")
    assert len(trajs) == 2 and all(t.error is None for t in trajs)
    for a, b in (trajs,):
        assert a.steps[0].prompt_ids == b.steps[0].prompt_ids  # identical start states
        assert a.messages == b.messages and a.metadata["tools"] == b.metadata["tools"]
    for t in trajs:
        assert t.task_id.startswith("multi_turn_base_") and t.num_steps >= 1
        layout = episode_tokens(t)
        assert sum(layout.policy_mask) == sum(len(s.action_ids) for s in t.steps)
        # The tools reached the model through the chat template.
        assert '"name": "' + t.metadata["tools"][0]["function"]["name"] in policy.tokenizer.decode(t.steps[0].prompt_ids)
    assert [t.task_id for t in read_trajectories(tmp_path / "bfcl.jsonl")].count("multi_turn_base_0") == 2


def test_bfcl_expert_replay_succeeds():
    """A scripted policy replaying BFCL's ground truth gets the official reward: the rollout wires
    actions, turns and rewards through correctly."""
    from agentgym.envs.bfcl.data import get_entry

    entry = get_entry("multi_turn_base_0")
    answers = [f"[{', '.join(calls)}]" for turn in entry.ground_truth for calls in [turn]]

    def script(conv):
        # One call list per user turn, then plain text to end the turn.
        users = sum(1 for m in conv if m["role"] == "user")
        last = conv[-1]["role"]
        return answers[users - 1] if last == "user" else "Done."
    [t] = rollout(ScriptedPolicy(script), BFCL, [BFCL_TASK], env_kwargs=_bfcl_env_kwargs(), progress=False)
    assert t.terminated and t.final_reward == 1.0 and t.success, (t.error, [s.observation for s in t.steps])
