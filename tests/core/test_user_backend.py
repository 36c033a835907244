"""A rollout backend defined in THIS file and nowhere else, with its own settings section
(``[rollout.plugintest_capped] max_action_tokens``), trains through ``Trainer(...)`` and through the
CLI (``--import`` this file, ``--rollout.backend plugintest_capped
--rollout.plugintest_capped.max_action_tokens 2``). Its setting changes what is sampled: every action
is cut to that many tokens, which the recorded trajectories show. Nothing outside this file was
edited to make it work."""

import dataclasses
import json
from pathlib import Path

import pytest
from pydantic import Field

from agentgym.agents.backends import RolloutBackend
from agentgym.agents.base import SamplingParams
from agentgym.plugins import ROLLOUT_BACKENDS, PluginSettings

NAME = "plugintest_capped"
CAP = 2
ASKED = 8  # rollout.max_new_tokens: what the rollout asks the backend for


class CappedPolicy:
    """The student's own policy with every action cut to ``cap`` tokens."""

    def __init__(self, student, cap):
        self.student, self.cap, self.asked = student, cap, set()

    def __getattr__(self, name):  # renderer, token_level, name, ...: the student's
        return getattr(self.student, name)

    def generate(self, conversations, tools=None, sampling=None, *, prompt_ids=None, seeds=None):
        sampling = sampling or SamplingParams()
        self.asked.add(sampling.max_new_tokens)
        if self.cap is not None:
            sampling = dataclasses.replace(sampling, max_new_tokens=min(self.cap, sampling.max_new_tokens))
        return self.student.generate(conversations, tools, sampling, prompt_ids=prompt_ids, seeds=seeds)

    def close(self):
        pass  # the student belongs to the trainer


@ROLLOUT_BACKENDS.register(NAME)
class CappedBackend(RolloutBackend):
    """Generates with the trainer's live weights, each action at most ``max_action_tokens`` long."""

    name = NAME

    class Settings(PluginSettings):
        max_action_tokens: int | None = Field(None, ge=1, le=4096, description="cut every action to this many "
                                                                              "tokens (None: no cut)")

    def __init__(self, student, **kwargs):
        super().__init__(student, **kwargs)
        self.policy = CappedPolicy(student, self.settings.max_action_tokens)


SMALL = {"model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},
         "env": {"id": "agentgym/Echo-v0", "group_size": 2, "tasks_per_update": 2, "eval_tasks": 1},
         "rollout": {"temperature": 1.0, "max_new_tokens": ASKED},
         "learner": {"name": "grpo", "lr": 1e-3},
         # a random tiny model rarely succeeds (no gradient): the backend's plumbing is tested here
         "train": {"updates": 1, "progress": False, "deterministic": True, "max_no_gradient_fraction": 1.0}}


def _capped_run(run_dir: Path) -> list:
    from agentgym.store import read_trajectories
    trajs = list(read_trajectories(run_dir / "trajectories.jsonl"))
    steps = [s for t in trajs for s in t.steps]
    assert {t.phase for t in trajs} == {"train", "eval"} and steps and all(t.error is None for t in trajs)
    assert max(len(s.action_ids) for s in steps) == CAP  # asked for 8 tokens, cut to 2
    assert any(s.info["finish_reason"] == "length" for s in steps)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["rollout"]["backend"] == NAME and config["rollout"][NAME] == {"max_action_tokens": CAP}
    return steps


def test_a_backend_defined_here_trains_through_the_python_api_with_its_own_settings(tmp_path):
    from agentgym.train import Trainer
    config = {**SMALL, "rollout": {**SMALL["rollout"], NAME: {"max_action_tokens": CAP}},
              "train": {**SMALL["train"], "run_dir": str(tmp_path / "api")}}
    trainer = Trainer(rollout=NAME, config=config)
    # (the class registered under NAME: this one, or the same file imported again by the CLI test's --import)
    assert type(trainer.backend).__qualname__ == "CappedBackend" and trainer.backend.settings.max_action_tokens == CAP
    trainer.fit()
    assert trainer.backend.policy.asked == {ASKED}
    _capped_run(tmp_path / "api")


def test_a_backend_defined_here_trains_through_the_cli_with_its_own_section(tmp_path):
    from agentgym.train import main
    run = tmp_path / "cli"
    rc = main(["--import", __file__, "--rollout.backend", NAME, f"--rollout.{NAME}.max_action_tokens", str(CAP),
               "--env.id", "agentgym/Echo-v0", "--model.name", "tiny", "--model.lora_r", "4",
               "--learner.name", "grpo", "--learner.lr", "1e-3", "--rollout.temperature", "1.0",
               "--rollout.max_new_tokens", str(ASKED), "--env.group_size", "2", "--env.tasks_per_update", "2",
               "--env.eval_tasks", "1", "--train.updates", "1", "--train.run_dir", str(run),
               "--train.progress", "false", "--train.max_no_gradient_fraction", "1"])
    assert rc == 0
    _capped_run(run)


def test_its_settings_are_checked_listed_and_suggested_like_a_learners(capsys):
    from agentgym.config import ConfigError, help_text, load_config
    cfg = load_config(["--import", __file__, "--rollout.backend", NAME])
    assert cfg.rollout.settings.model_dump() == {"max_action_tokens": None}  # defaults filled
    with pytest.raises(ConfigError, match=rf"rollout.{NAME}.max_action_token: unknown key in \[rollout.{NAME}\] "
                                          rf"for rollout backend '{NAME}'; did you mean 'max_action_tokens'\?"):
        load_config(["--import", __file__, f"--rollout.{NAME}.max_action_token", "2"])
    with pytest.raises(ConfigError, match=rf"rollout.{NAME}.max_action_tokens: Input should be greater than or "
                                          r"equal to 1 \(got 0\)"):
        load_config(["--import", __file__, f"--rollout.{NAME}.max_action_tokens", "0"])
    with pytest.raises(ConfigError, match=rf"rollout.plugintest_caped: unknown key in \[rollout\]; did you mean "
                                          rf"'{NAME}'\?"):
        load_config(["--import", __file__, "--rollout.plugintest_caped.max_action_tokens", "2"])
    assert f"--rollout.{NAME}.max_action_tokens = None: cut every action" in help_text()
    from agentgym.train import main
    assert main(["--import", __file__, "--rollout.backend", NAME, f"--rollout.{NAME}.max_action_tokens", "-1"]) == 2
    assert f"rollout.{NAME}.max_action_tokens" in capsys.readouterr().err
