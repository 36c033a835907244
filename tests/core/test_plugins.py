"""A learner, a feedback source, a selector and an environment, each defined in THIS file and nowhere
else, train through ``Trainer(...)`` (as objects) and through the CLI (``--import`` this file, by
their registered names). Nothing outside this file was edited to make them work."""

import json
from pathlib import Path

import gymnasium as gym
import pytest

from agentgym import AgentEnv, EnvReply, EnvReset, Feedback, FeedbackKind, Message
from agentgym.envspec import EnvDefaults
from agentgym.feedback import FeedbackSource, Selector, register_selector, register_source
from agentgym.learners import GRPO, register

ENV_ID = "plugintest/Count-v0"


class CountEnv(AgentEnv):
    """Say the number after the one shown; a wrong answer gets an error naming the right one."""

    default_max_steps = 2
    defaults = EnvDefaults(max_new_tokens=4)

    def tasks(self):
        return [{"start": n} for n in range(6)]

    def _reset(self, options):
        self.n = int(options.get("start", 0))
        return EnvReset(messages=[Message(role="user", content=f"What comes after {self.n}?")],
                        task={"id": f"count-{self.n}"})

    def _step(self, action):
        if action.strip() == str(self.n + 1):
            return EnvReply(messages=[Message(role="user", content="Yes.")], reward=1.0, terminated=True)
        text = f"No: after {self.n} comes {self.n + 1}."
        return EnvReply(messages=[Message(role="user", content=text)],
                        feedback=[Feedback(kind=FeedbackKind.ERROR, step=0, text=text,
                                           payload={"expected": str(self.n + 1)})])


gym.register(id=ENV_ID, entry_point=CountEnv, disable_env_checker=True)


@register
class FirstHalfGRPO(GRPO):
    """GRPO whose loss covers only the first half of each action's tokens."""

    name = "plugintest_first_half_grpo"
    metrics = {**GRPO.metrics, "half_masked_samples": "samples whose loss covers half of the action"}

    def prepare(self, batch, samples):
        kept = super().prepare(batch, samples)
        for s in kept:
            half = max(1, len(s.action) // 2)
            s.token_mask = [1.0] * half + [0.0] * (len(s.action) - half)
        self.half_masked = len(kept)
        return kept

    def extra_metrics(self):
        return {"half_masked_samples": float(getattr(self, "half_masked", 0))}


@register_source
class ExpectedAnswer(FeedbackSource):
    """The right answer, read from the env's error feedback."""

    name = "plugintest_expected_answer"

    def __call__(self, trajectory, group=()):
        return [self._record(FeedbackKind.HINT, s.index, f"The answer is {f.payload['expected']}.")
                for s in trajectory.steps for f in s.errors if "expected" in f.payload]


@register_selector
class HintedSteps(Selector):
    """Every step that got a hint from ExpectedAnswer."""

    name = "plugintest_hinted_steps"

    def choose(self, trajectory, feedback):
        return {f.step: f.text for f in feedback if f.source == ExpectedAnswer.name}


def _check_run(run_dir: Path, learner: str) -> None:
    from agentgym.store import read_trajectories
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["phase"] == "train"]
    assert [m["phase"] for m in metrics] == ["eval", "train", "train", "eval"]
    assert all("half_masked_samples" in m and m["reset_errors"] == 0 for m in train)
    trajs = list(read_trajectories(run_dir / "trajectories.jsonl"))
    train_trajs = [t for t in trajs if t.phase == "train"]
    assert trajs and all(t.task_id.startswith("count-") and t.error is None for t in trajs)
    assert all(t.learner == learner for t in trajs)
    failed = [t for t in train_trajs if not t.success]
    assert failed, "the tiny model should fail some counts"
    for t in failed:  # the plugin source wrote the hints, the plugin selector chose the steps
        assert t.feedback and all(f.source == ExpectedAnswer.name for f in t.feedback)
        assert t.targets and all(x.source == HintedSteps.name and x.hint.startswith("The answer is") for x in t.targets)
    evals = [t.task_id for t in trajs if t.phase == "eval"]
    assert evals and not set(evals) & {t.task_id for t in train_trajs}  # held out of training
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["learner"] == learner and summary["success_before"] is not None and summary["success_after"] is not None


SMALL = {"model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},
         "env": {"group_size": 2, "tasks_per_update": 2, "eval_tasks": 2},
         "rollout": {"temperature": 1.0},
         # A GRPO on a random tiny model rarely sees a success (no gradient): the plumbing is tested here
         # (tests/core/test_no_gradient.py: such runs stop by default).
         "train": {"updates": 2, "progress": False, "deterministic": True, "max_no_gradient_fraction": 1.0}}


def test_plugins_defined_here_train_through_the_python_api(tmp_path):
    from agentgym.train import Trainer
    trainer = Trainer(env=CountEnv, model="tiny", learner=FirstHalfGRPO(lr=1e-3), source=ExpectedAnswer(),
                      selector=HintedSteps(include_successful=True),
                      config={**SMALL, "train": {**SMALL["train"], "run_dir": str(tmp_path / "api")}})
    summary = trainer.fit()
    assert summary["env_id"] == "agentgym-python/CountEnv-v0" and summary["train_tasks"] == 4
    _check_run(tmp_path / "api", FirstHalfGRPO.name)


def test_plugins_defined_here_train_through_the_cli_by_name(tmp_path):
    from agentgym.train import main
    run = tmp_path / "cli"
    rc = main(["--import", __file__, "--env.id", ENV_ID, "--learner.name", FirstHalfGRPO.name,
               "--learner.lr", "1e-3", "--feedback.source", ExpectedAnswer.name,
               "--feedback.selector", HintedSteps.name, "--model.name", "tiny", "--model.lora_r", "4",
               "--env.group_size", "2", "--env.tasks_per_update", "2", "--env.eval_tasks", "2",
               "--train.updates", "2", "--train.run_dir", str(run), "--train.progress", "false",
               "--train.max_no_gradient_fraction", "1"])
    assert rc == 0
    _check_run(run, FirstHalfGRPO.name)
    config = json.loads((run / "config.json").read_text())
    assert config["plugins"] == [__file__] and config["learner"]["name"] == FirstHalfGRPO.name


def test_an_env_id_in_gymnasium_module_form_imports_its_module(tmp_path):
    """``--env.id module:Env-v0`` imports the module first (gymnasium's convention)."""
    module = tmp_path / "my_plugin_env.py"
    module.write_text("import gymnasium as gym\n"
                      "gym.register(id='myplugin/Echo-v0', entry_point='agentgym.envs.echo.env:EchoEnv', disable_env_checker=True)\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        from agentgym.config import load_config
        cfg = load_config(["--env.id", "my_plugin_env:myplugin/Echo-v0"])
        assert cfg.env.id == "my_plugin_env:myplugin/Echo-v0" and "myplugin/Echo-v0" in gym.registry
    finally:
        sys.path.remove(str(tmp_path))


def test_a_plugin_name_that_clashes_with_another_class_is_refused():
    from agentgym.run_objects import register_if_new as _register_if_new
    from agentgym.plugins import LEARNERS

    class Impostor(GRPO):
        name = "hint_sd"

    with pytest.raises(ValueError, match="taken by HintSD"):
        _register_if_new(LEARNERS, Impostor)


def test_the_trainer_never_compares_a_plugin_name_with_a_string_literal():
    """Plugins are recognised by what they declare, not by name: no ``x.name == "..."``,
    ``source.startswith("llm_")``, ``backend == "vllm"`` and the like in the trainer."""
    import ast
    import agentgym.train
    import agentgym.trainer
    tree = ast.Module(body=[node for module in (agentgym.train, agentgym.trainer)  # the CLI and the Trainer
                            for node in ast.parse(Path(module.__file__).read_text()).body], type_ignores=[])
    plugin_words = ("name", "learner", "source", "selector", "backend", "teacher", "env", "id")
    offending = []
    for node in ast.walk(tree):
        sides = []
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("startswith", "endswith"):
            sides = [node.func.value, *node.args]
        literals = [s for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)
                    or isinstance(s, (ast.Tuple, ast.List, ast.Set))
                    and any(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in s.elts)]
        others = [ast.unparse(s) for s in sides if s not in literals]
        if literals and any(word in part for part in others for word in plugin_words if "." in part or part == word):
            offending.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not offending, offending
