"""The rollout progress bar moves while episodes run (it used to count only finished episodes, so an
evaluation sat at 0/3 for minutes): every batch of env steps redraws it with the steps taken."""

from __future__ import annotations

import re

import gymnasium as gym

from agentgym.agents.scripted import ScriptedPolicy
from agentgym.envs.echo.env import EchoEnv
from agentgym.rollout import rollout


class LongEchoEnv(EchoEnv):
    defaults = EchoEnv.defaults.replace(max_steps=100)  # a wrong word never ends the episode before rollout's max_steps


if "agentgym-test/LongEcho-v0" not in gym.registry:
    gym.register(id="agentgym-test/LongEcho-v0", entry_point=LongEchoEnv, disable_env_checker=True)


def _frames(err: str) -> list[tuple[int, int]]:
    """(finished episodes, steps) of every redraw of the bar that shows steps."""
    return [(int(m.group(1)), int(m.group(2)))
            for m in re.finditer(r"(\d+)/2 \[[^\]]*?steps=(\d+)", err)]


def test_the_bar_shows_env_steps_before_any_episode_finishes(capsys):
    never = ScriptedPolicy(lambda conv: "wrong")  # both episodes run to max_steps=5
    trajs = rollout(never, "agentgym-test/LongEcho-v0", [{"word": "apple"}, {"word": "river"}], max_steps=5,
                    progress=True, keep_envs=False)
    assert [t.num_steps for t in trajs] == [5, 5]
    frames = _frames(capsys.readouterr().err)
    # 2 episodes x one step per batch: 2, 4, 6, 8 steps shown while 0 of 2 have finished, then 10 at 2/2
    assert [s for n, s in frames if n == 0] == [2, 4, 6, 8], frames
    assert frames[-1] == (2, 10), frames


def test_steps_count_from_the_start_of_each_run(capsys):
    never = ScriptedPolicy(lambda conv: "wrong")
    for _ in range(2):  # the second run's bar starts again from 0 steps
        rollout(never, "agentgym-test/LongEcho-v0", [{"word": "apple"}, {"word": "river"}], max_steps=2,
                progress=True, keep_envs=False)
        frames = _frames(capsys.readouterr().err)
        assert [s for n, s in frames if n == 0] == [2] and frames[-1] == (2, 4), frames


def test_env_workers_show_steps_as_their_replies_arrive(capsys):
    never = ScriptedPolicy(lambda conv: "wrong")  # Echo ends a wrong episode at its 3-step limit
    trajs = rollout(never, "agentgym/Echo-v0", [{"word": "apple"}, {"word": "river"}], workers=1, progress=True)
    assert [t.num_steps for t in trajs] == [3, 3]
    frames = _frames(capsys.readouterr().err)
    assert any(s > 0 for n, s in frames if n == 0) and frames[-1] == (2, 6), frames
