"""``agentgym/Remote-v0`` does not trust the env it is served (issue 24, item 4): against a scripted
OpenEnv WebSocket server on 127.0.0.1 that answers each episode with one hostile reply, a bad step
reply truncates only that episode with the cause, a bad reset reply fails only that episode at
reset, non-finite or string rewards are errors (never a success), and the rollout always returns
every trajectory."""

from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("openenv.core", reason="needs openenv-core (setup.sh installs it)")

from websockets.sync.server import serve as ws_serve  # noqa: E402

from agentgym.agents.scripted import ScriptedPolicy  # noqa: E402
from agentgym.rollout import RolloutRunner, failed_at_reset  # noqa: E402

GOOD_RESET = {"text": "Say: apple", "messages": [{"role": "user", "content": "Say: apple"}],
              "task": {"id": "t"}, "tool_schemas": [], "info": {}}


def good_step(action: str) -> dict:
    return {"observation": {"text": "Correct.", "messages": [{"role": "user", "content": "Correct."}],
                            "assistant": {"role": "assistant", "content": action},
                            "feedback": [{"kind": "outcome", "step": 0, "text": "right"}],
                            "terminated": True, "truncated": False, "info": {"success": True}},
            "reward": 1.0, "done": True}


def with_obs(**fields) -> callable:
    def reply(action):
        payload = good_step(action)
        payload["observation"].update(fields)
        return payload
    return reply


def with_reward(raw: str) -> callable:  # raw JSON text for the reward (NaN / Infinity / strings)
    return lambda action: json.dumps(good_step(action)).replace('"reward": 1.0', f'"reward": {raw}')


STEP_ATTACKS = {
    "info.feedback": (with_obs(info={"feedback": "boom"}), "info holds ['feedback']"),
    "info.messages": (with_obs(info={"messages": [{"role": 5}]}), "info holds ['messages']"),
    "info.success": (with_obs(info={"success": "yes"}), "info.success must be a bool"),
    "messages": (with_obs(messages=[{"role": "wizard", "content": "x"}]), "observation.messages.0.role"),
    "messages not a list": (with_obs(messages="hello"), "observation.messages"),
    "feedback": (with_obs(feedback=["boom"]), "observation.feedback.0"),
    "assistant": (with_obs(assistant={"content": 3}), "observation.assistant"),
    "terminated": (with_obs(terminated="yes"), "observation.terminated"),
    "text": (with_obs(text={"a": 1}), "observation.text"),
    "observation": (lambda action: {"observation": [1, 2], "reward": 1.0, "done": True}, "observation: must be an object"),
    "NaN reward": (with_reward("NaN"), "reward: nan is not a finite number"),
    "inf reward": (with_reward("Infinity"), "reward: inf is not a finite number"),
    "-inf reward": (with_reward("-Infinity"), "reward: -inf is not a finite number"),
    "1e400 reward": (with_reward("1e400"), "reward: inf is not a finite number"),
    "huge reward": (with_reward("1e300"), "reward: 1e+300 is not a finite number within"),
    "string reward": (with_reward('"1e308"'), "reward: must be a number, got str"),
    "bool reward": (with_reward("true"), "reward: must be a number, got bool"),
    "not JSON": (lambda action: "{cut off", "JSONDecodeError"),
    "deep JSON": (lambda action: "[" * 100_000 + "]" * 100_000, "RecursionError"),
}
RESET_ATTACKS = {
    "reset info.messages": ({**GOOD_RESET, "info": {"messages": "boom"}}, "info holds ['messages']"),
    "reset messages": ({**GOOD_RESET, "messages": [{"role": "user", "content": ["x"]}]}, "observation.messages.0.content"),
    "reset task": ({**GOOD_RESET, "task": "t"}, "observation.task"),
}


class HostileEnvServer:
    """Speaks OpenEnv's WebSocket protocol; each session's attack is named by its reset options."""

    def __init__(self):
        self._server = ws_serve(self._session, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.socket.getsockname()[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _session(self, ws) -> None:
        attack = None
        for raw in ws:
            message = json.loads(raw)
            if message["type"] == "close":
                return
            if message["type"] == "reset":
                attack = message["data"]["options"].get("attack")
                observation = RESET_ATTACKS[attack][0] if attack in RESET_ATTACKS else GOOD_RESET
                ws.send(json.dumps({"type": "observation", "data": {"observation": observation, "reward": None,
                                                                    "done": False}}))
            elif message["type"] == "step":
                action = message["data"]["text"]
                reply = STEP_ATTACKS[attack][0](action) if attack in STEP_ATTACKS else good_step(action)
                if isinstance(reply, dict):
                    reply = json.dumps({"type": "observation", "data": reply})
                elif reply.startswith("{\"observation"):
                    reply = '{"type": "observation", "data": ' + reply + "}"
                ws.send(reply)

    def stop(self) -> None:
        self._server.shutdown()


@pytest.fixture(scope="module")
def hostile():
    server = HostileEnvServer()
    yield server
    server.stop()


def test_a_bad_step_reply_truncates_only_its_episode_with_the_cause(hostile):
    tasks = [{"attack": name} for name in STEP_ATTACKS] + [{"attack": "none"}]
    trajectories = RolloutRunner(ScriptedPolicy(lambda conv: "apple"), "agentgym/Remote-v0", tasks,
                                 env_kwargs={"url": hostile.url, "message_timeout_s": 10}, progress=False).run()
    assert len(trajectories) == len(tasks)  # the rollout survived every attack
    by_attack = {t.metadata["options"]["attack"]: t for t in trajectories}
    good = by_attack.pop("none")
    assert good.error is None and good.success and good.final_reward == 1.0  # the same env, an honest reply
    for name, traj in by_attack.items():
        words = STEP_ATTACKS[name][1]
        assert traj.error is not None and traj.error.startswith("step 0:") and words in traj.error, (name, traj.error)
        assert hostile.url in traj.error or words in ("JSONDecodeError", "RecursionError"), (name, traj.error)
        assert not traj.success and traj.final_reward == 0.0 and traj.truncated, name
        assert traj.steps[-1].truncated


def test_a_bad_reset_reply_fails_only_its_episode_at_reset(hostile):
    tasks = [{"attack": name} for name in RESET_ATTACKS] + [{"attack": "none"}]
    trajectories = RolloutRunner(ScriptedPolicy(lambda conv: "apple"), "agentgym/Remote-v0", tasks,
                                 env_kwargs={"url": hostile.url, "message_timeout_s": 10}, progress=False).run()
    by_attack = {t.metadata["options"]["attack"]: t for t in trajectories}
    assert by_attack.pop("none").success
    for name, traj in by_attack.items():
        assert failed_at_reset(traj) and "RemoteReplyError" in traj.error, (name, traj.error)
        assert RESET_ATTACKS[name][1] in traj.error and hostile.url in traj.error, (name, traj.error)


def test_a_message_over_the_size_cap_ends_only_its_episode(hostile):
    import gymnasium as gym

    env = gym.make("agentgym/Remote-v0", url=hostile.url, max_message_bytes=4096)
    try:
        env.reset(options={"attack": "none"})
        obs, reward, terminated, truncated, info = env.step("x" * 10_000)  # the echoed action makes it too big
        assert truncated and reward == 0.0 and "step_error" in info and "1009" in info["step_error"]
        env.reset(options={"attack": "none"})  # a new session, and it works
        assert env.step("apple")[1] == 1.0
    finally:
        env.close()


def test_a_session_the_server_closed_between_episodes_is_replaced_at_the_next_reset(serve):
    """The server reaps an idle session (``--session-timeout``); the env's next episode opens a new
    session instead of failing at reset."""
    import time

    import gymnasium as gym

    server = serve("agentgym/Echo-v0", "--session-timeout", "1")
    env = gym.make("agentgym/Remote-v0", url=server.url)
    try:
        env.reset(seed=0, options={"word": "apple"})
        assert env.step("apple")[2]
        time.sleep(3.5)  # reaped: the server closes the socket (4408) after 1 s idle
        observation, info = env.reset(seed=1, options={"word": "stone"})
        assert "stone" in observation
        assert env.step("stone")[2]
    finally:
        env.close()
