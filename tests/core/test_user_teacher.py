"""A teacher defined in THIS file and nowhere else, with its own settings section
(``[feedback.teacher.plugintest_scripted] hint``), writes the model feedback of a dense-SD run through
``Trainer(...)`` and through the CLI (``--import`` this file, ``--feedback.teacher plugintest_scripted
--feedback.teacher.plugintest_scripted.hint ...``). Its setting is what the feedback says, which the
recorded trajectories show. Nothing outside this file was edited to make it work."""

import json
from pathlib import Path

import pytest
from pydantic import Field

from agentgym.agents.scripted import ScriptedPolicy
from agentgym.plugins import TEACHERS, PluginSettings

# a random tiny model's teacher signal is noise: the warning about it is expected here
pytestmark = pytest.mark.filterwarnings("ignore:.*teacher_gain.*:RuntimeWarning")

NAME = "plugintest_scripted"
HINT = "Reply with the word alone."


class ScriptedTeacherSettings(PluginSettings):
    hint: str = Field("Say the word.", min_length=1, max_length=500, description="what the teacher answers to "
                                                                                 "every feedback request")


@TEACHERS.register(NAME)
def scripted_teacher(settings, student, learner):
    """A teacher that answers every feedback request with ``settings.hint``."""
    return ScriptedPolicy(lambda conversation: settings.hint, name=NAME)


scripted_teacher.Settings = ScriptedTeacherSettings

SMALL = {"model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},
         "env": {"id": "agentgym/Echo-v0", "group_size": 2, "tasks_per_update": 1, "eval_tasks": 1},
         "rollout": {"temperature": 1.0, "max_new_tokens": 4},
         "learner": {"name": "dense_sd", "lr": 1e-3},  # llm_step_hint + dense: one teacher call per step
         "train": {"updates": 1, "progress": False, "deterministic": True}}


def _check_run(run_dir: Path) -> None:
    from agentgym.store import read_trajectories
    train = [t for t in read_trajectories(run_dir / "trajectories.jsonl") if t.phase == "train"]
    feedback = [f for t in train for f in t.feedback if f.source == "llm_step_hint"]
    assert train and len(feedback) == sum(len(t.steps) for t in train)  # the teacher answered for every step
    assert {f.text for f in feedback} == {HINT}  # ... with its configured hint, not the policy's words
    targets = [x for t in train for x in t.targets]
    assert targets and {x.hint for x in targets} == {HINT}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["feedback"]["teacher"] == {"name": NAME, NAME: {"hint": HINT}}


def test_a_teacher_defined_here_writes_the_feedback_through_the_python_api(tmp_path):
    from agentgym.train import Trainer
    config = {**SMALL, "feedback": {"teacher": {"name": NAME, NAME: {"hint": HINT}}},
              "train": {**SMALL["train"], "run_dir": str(tmp_path / "api")}}
    trainer = Trainer(config=config)
    assert trainer.config.feedback.teacher.settings.hint == HINT
    trainer.fit()
    _check_run(tmp_path / "api")


def test_a_teacher_defined_here_writes_the_feedback_through_the_cli(tmp_path):
    from agentgym.train import main
    run = tmp_path / "cli"
    rc = main(["--import", __file__, "--feedback.teacher", NAME, f"--feedback.teacher.{NAME}.hint", HINT,
               "--env.id", "agentgym/Echo-v0", "--model.name", "tiny", "--model.lora_r", "4",
               "--learner.name", "dense_sd", "--learner.lr", "1e-3", "--rollout.temperature", "1.0",
               "--rollout.max_new_tokens", "4", "--env.group_size", "2", "--env.tasks_per_update", "1",
               "--env.eval_tasks", "1", "--train.updates", "1", "--train.run_dir", str(run),
               "--train.progress", "false"])
    assert rc == 0
    _check_run(run)


def test_its_settings_are_checked_listed_and_suggested_like_a_learners():
    from agentgym.config import ConfigError, help_text, load_config
    cfg = load_config(["--import", __file__, "--feedback.teacher.name", NAME])
    assert cfg.feedback.teacher.settings.model_dump() == {"hint": "Say the word."}  # defaults filled
    with pytest.raises(ConfigError, match=rf"feedback.teacher.{NAME}.hnt: unknown key in \[feedback.teacher.{NAME}\] "
                                          rf"for teacher '{NAME}'; did you mean 'hint'\?"):
        load_config(["--import", __file__, f"--feedback.teacher.{NAME}.hnt", "x"])
    with pytest.raises(ConfigError, match=rf"feedback.teacher.{NAME}.hint: String should have at least 1 character"):
        load_config(["--import", __file__, f"--feedback.teacher.{NAME}.hint", ""])
    with pytest.raises(ConfigError, match=rf"unknown teacher 'plugintest_scripte'; did you mean '{NAME}'\?"):
        load_config(["--import", __file__, "--feedback.teacher", "plugintest_scripte"])
    assert f"--feedback.teacher.{NAME}.hint = 'Say the word.': what the teacher answers" in help_text()
