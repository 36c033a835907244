"""``agentgym serve`` keeps a cleanly ended session's env for the next session: a server builds at
most ``--max-sessions`` envs however many sessions come and go, a reused env shows nothing of its
last session before the new session's reset, an env a call failed in is closed instead, an env
kept longer than ``--session-timeout`` is closed, and shutdown closes every env it built."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("openenv.core", reason="needs openenv-core (setup.sh installs it)")

from openenv.core.generic_client import GenericEnvClient  # noqa: E402

import agentgym  # noqa: E402,F401
from agentgym.integrations.openenv_server import AgentAction, AgentGymEnvironment  # noqa: E402
from agentgym.integrations.openenv_sessions import _Open  # noqa: E402

from tests.integrations.conftest import Served  # noqa: E402
from tests.integrations.test_openenv_server import (BFCL, TASK, assert_same_episode, bfcl_actions,  # noqa: E402
                                                    play_both)

COUNTING_ENV = '''
import os, gymnasium as gym
from agentgym.envs.echo.env import EchoEnv

class Counted(EchoEnv):
    """Echo that appends 'built' / 'closed' to a log file, so a test sees what the server built."""
    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.log = log
        self._write("built")

    def _write(self, what):
        with open(self.log, "a") as out:
            out.write(what + "\\n")

    def close(self):
        self._write("closed")
        super().close()

gym.register(id="counttest/Counted-v0", entry_point=Counted)
'''


def counted_server(tmp_path, *options: str) -> tuple[Served, object]:
    module, log = tmp_path / "counted_env.py", tmp_path / "envs.log"
    module.write_text(COUNTING_ENV)
    server = Served("counttest/Counted-v0", "--import", str(module), "--env-kwargs",
                    '{"log": "%s"}' % log, *options)
    return server, log


def events(log) -> list[str]:
    return log.read_text().split() if log.exists() else []


def one_episode(url: str, word: str = "apple") -> float:
    with GenericEnvClient(base_url=url, message_timeout_s=30).sync() as env:
        env.reset(options={"word": word})
        return env.step({"type": "text", "text": word}).reward


def test_sequential_sessions_share_one_env_and_shutdown_closes_it(tmp_path):
    server, log = counted_server(tmp_path, "--max-sessions", "4")
    try:
        rewards = [one_episode(server.url, word) for word in ("apple", "river", "stone", "cloud", "ember")]
        time.sleep(0.5)  # the server closes a session moments after its client
        during = events(log)
    finally:
        rc, out, err = server.stop()
    assert rewards == [1.0] * 5
    assert during == ["built"], during  # the start-up check's env served all five sessions
    assert rc == 0 and events(log) == ["built", "closed"], (events(log), err[-2000:])
    assert "5 session(s), 1 env(s) built, 0 still open" in out


def test_an_env_kept_past_the_session_timeout_is_closed(tmp_path):
    server, log = counted_server(tmp_path, "--session-timeout", "0.5")
    try:
        one_episode(server.url)
        deadline = time.monotonic() + 15
        while events(log) != ["built", "closed"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert events(log) == ["built", "closed"]
        assert one_episode(server.url, "river") == 1.0  # the next session builds a new one
        # (under load the reaper may already have closed that one too, 0.5 s after its session)
        assert events(log)[:3] == ["built", "closed", "built"]
    finally:
        server.stop()


def test_a_reused_env_shows_nothing_of_its_last_session_before_reset(tmp_path):
    open_envs = _Open(capacity=2)
    first = AgentGymEnvironment(BFCL, {"split": "all"}, open_envs)
    first.reset(seed=0, options={"task_id": TASK})
    assert first.state.task and first.step(AgentAction(type="list_tools")).tools
    first.close()
    assert open_envs.idle() == 1 and len(open_envs) == 0
    second = AgentGymEnvironment(BFCL, {"split": "all"}, open_envs)
    assert second.env is first.env and open_envs.idle() == 0
    assert second.state.task == {} and second.step(AgentAction(type="list_tools")).tools == []
    with pytest.raises(RuntimeError, match="send reset first"):
        second.step(AgentAction(type="text", text="Done."))
    second.reset(seed=0, options={"task_id": TASK})
    assert second.state.task["id"] == TASK
    second.close()
    assert open_envs.close_all() == 0 and open_envs.idle() == 0


def test_an_env_whose_call_failed_is_not_reused():
    open_envs = _Open(capacity=2)
    session = AgentGymEnvironment(BFCL, {"split": "all"}, open_envs)
    with pytest.raises(Exception):
        session.reset(seed=0, options={"task_id": "no_such_task"})
    failed = session.env
    session.close()
    assert open_envs.idle() == 0
    assert AgentGymEnvironment(BFCL, {"split": "all"}, open_envs).env is not failed


def test_a_reused_env_plays_as_a_fresh_one_after_a_session_that_changed_its_state():
    """BFCL multi-turn keeps a file system per episode: a wrong session that creates and moves
    files, then the reference episode on the same (reused) env equals a fresh in-process env's."""
    from agentgym.envs.bfcl.data import get_entry

    server = Served(BFCL, "--env-kwargs", '{"split": "all"}', "--max-sessions", "1")
    try:
        reset = {"seed": 0, "options": {"task_id": TASK}}
        mess = [{"type": "text", "text": "[mkdir(dir_name='leak'), cd(folder='leak'), touch(file_name='x.txt')]"},
                {"type": "text", "text": "Done."}]
        play_both(server.url, BFCL, {"split": "all"}, reset, mess)
        turns = get_entry(TASK).ground_truth
        local, remote = play_both(server.url, BFCL, {"split": "all"}, reset, bfcl_actions(turns))
        assert_same_episode(local, remote)
        assert remote[-1].reward == 1.0
    finally:
        server.stop()
