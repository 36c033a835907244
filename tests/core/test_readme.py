"""The README is true as a new user meets it: its Python examples run as written (the plugin
example trains through ``agentgym.Trainer``; the env, feedback and property-test examples run; the
ones that need another virtualenv or a server at least compile), every ``agentgym train`` / ``eval``
command it shows resolves (names, ids, presets, flags), its run-folder globs match the folders
``agentgym train`` writes, the three commands hold, and the ``module:Env-v0`` form trains end to end
from a plugin file in the working folder, without PYTHONPATH."""

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    section = README.read_text().split("## Your own pieces: the Python API and plugins", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_api_example_trains(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(_example())
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "runs" / "readme-example"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["phase"] == "train"]
    assert len(train) == 2 and all(m["num_targets"] > 0 and m["loss"] > 0 for m in train)
    from agentgym.store import read_trajectories
    trajs = [t for t in read_trajectories(run / "trajectories.jsonl") if t.phase == "train"]
    sources = {f.source for t in trajs for f in t.feedback}
    assert sources == {"immediate", "say_the_word"}  # the combined source, the example's own part included
    assert any(x.source == "hinted_steps" for t in trajs for x in t.targets)
    config = json.loads((run / "config.json").read_text())
    assert config["learner"]["name"] == "hint_sd_everything"  # the example's learner, registered on the fly
    assert config["feedback"]["source"] == "immediate+say_the_word"  # rebuildable by name
    assert config["feedback"]["selector"].startswith("python:")  # a composition: built in Python


def test_a_run_built_from_python_objects_says_so_and_asks_for_them_again(tmp_path):
    """The example's selector is a composition (``FirstError() | HintedSteps()``): config.json records
    it as built in Python, and rebuilding the run from that file alone is a clear error, before any
    model loads."""
    import pytest
    from agentgym.config import ConfigError, validate_config
    from agentgym.train import Trainer
    data = {"env": {"id": "agentgym/Echo-v0"}, "model": {"name": "tiny"},
            "feedback": {"source": "immediate", "selector": "python:Union(FirstError(), HintedSteps())"}}
    cfg = validate_config(data)
    with pytest.raises(ConfigError, match="feedback.selector: 'python:Union.*pass the same object again"):
        Trainer(cfg)


# ------------------------------------------------------------------------------------------ every command
REPO = README.parent
AGENTGYM = Path(sys.executable).parent / "agentgym"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), re.S)


def _commands() -> list[tuple[dict[str, str], str, list[str]]]:
    """(environment assignments, sub-command, args) of every ``agentgym`` command in the README's bash
    blocks and indented command lines; launchers (torchrun, accelerate launch) count by their
    ``-m agentgym.cli`` part."""
    text = "\n".join(_blocks("bash")) + "\n" + "\n".join(
        line[4:] for line in README.read_text().splitlines() if line.startswith("    agentgym "))
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        env = {}
        while words and re.match(r"^[A-Z_]+=", words[0]):
            key, _, value = words.pop(0).partition("=")
            env[key] = value
        if "agentgym.cli" in words:
            words = words[words.index("agentgym.cli") + 1:]
        elif words and Path(words[0]).name == "agentgym":
            words = words[1:]
        else:
            continue
        out.append((env, words[0], words[1:]))
    return out


def test_the_readme_shows_the_commands_this_test_checks():
    subs = [c for _, c, _ in _commands()]
    assert subs.count("train") >= 12 and subs.count("eval") >= 6 and "report" in subs and "serve" in subs


def test_every_train_command_in_the_readme_resolves(tmp_path, monkeypatch):
    """Each ``agentgym train ...`` line resolves as written (hub ids are only named, not fetched)."""
    from agentgym.train import cli_config
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the paper presets name hub ids
    monkeypatch.chdir(REPO)
    (tmp_path / "run.toml").write_text("")
    checked = 0
    for env, sub, args in _commands():
        if sub != "train" or "--help" in args:
            continue
        args = [str(tmp_path / "run.toml") if a.endswith(".toml") else a for a in args]
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        cfg, _, _ = cli_config(args)
        assert cfg.resolved().train.run_dir, args
        checked += 1
    assert checked >= 12


def test_every_eval_command_in_the_readme_resolves(tmp_path):
    from agentgym.evaluation import EvalSettings, _eval_config, _split_eval_args
    checked = 0
    for _, sub, args in _commands():
        if sub != "eval" or "--help" in args:
            continue
        raw, rest, compare = _split_eval_args(args)
        if compare is not None:
            assert len(compare) >= 2
            continue
        if raw.get("run") or raw.get("checkpoint"):
            continue  # a run folder: see the glob test and tests/core/test_evaluation.py
        cfg = _eval_config(EvalSettings(**raw), rest)
        assert cfg.env.id, args
        checked += 1
    assert checked >= 3


def test_the_readme_run_folder_globs_match_what_train_writes():
    """``runs/hint_sd-bfclmultiturn-v0-*/`` (report, eval) matches the folder a bare ``agentgym train``
    names: its run_dir plus ``-<time>``."""
    from agentgym.train import cli_config
    cfg, _, _ = cli_config([])
    folder = f"{cfg.resolved().train.run_dir}-20261206-054500/"
    globs = [a for _, _, args in _commands() for a in args if a.startswith("runs/") and "*" in a]
    assert globs
    for pattern in globs:
        assert fnmatch.fnmatch(folder, pattern), (pattern, folder)
    assert f"`{cfg.resolved().train.run_dir}-<time>/`" in README.read_text()


def test_the_readme_env_and_feedback_examples_run(tmp_path):
    blocks = [b for b in _blocks("python") if "gym.make(\"agentgym/BFCLMultiTurn-v0\"" in b
              or "make_source(\"reference_hindsight+immediate\")" in b or "class LastErrorSelector" in b]
    assert len(blocks) == 3
    script = tmp_path / "examples.py"
    tests = "\n".join(f"{name}()" for name in ("test_my_selector", "test_nothing_on_success"))
    # The machine may be shared and slow: hypothesis's generation-time health check is not what is tested.
    profile = ("from hypothesis import HealthCheck, settings\n"
               "settings.register_profile('readme', suppress_health_check=[HealthCheck.too_slow], deadline=None)\n"
               "settings.load_profile('readme')\n")
    script.write_text(profile + "\n\n".join(blocks) + "\n" + tests + "\nprint('examples ok')\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("examples ok")


def test_every_python_block_at_least_compiles():
    for block in _blocks("python"):
        compile(block, "README.md", "exec")


def test_the_three_commands():
    """``./setup.sh`` picks a torch for this machine (CI runs it whole), a bare ``agentgym train``
    resolves to the documented demo, ``pytest`` is configured to run the fast set."""
    proc = subprocess.run([str(REPO / "setup.sh"), "--print-torch"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("torch: ")
    from agentgym.train import cli_config
    cfg, preset, _ = cli_config([])
    assert preset == "demo" and cfg.env.id == "agentgym/BFCLMultiTurn-v0" and cfg.learner.name == "hint_sd"
    assert "-m 'not slow and not gpu and not vllm'" in (REPO / "pyproject.toml").read_text()


def test_the_module_env_form_trains_end_to_end_without_pythonpath(tmp_path):
    """``agentgym train --env.id my_plugins:my/Env-v0`` from the folder that holds my_plugins.py."""
    (tmp_path / "my_plugins.py").write_text(
        "import gymnasium as gym\n"
        "gym.register(id='my/Env-v0', entry_point='agentgym.envs.echo.env:EchoEnv', kwargs={'reference': True})\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(AGENTGYM), "train", "--env.id", "my_plugins:my/Env-v0", "--model.name", "tiny",
                           "--train.updates", "1", "--rollout.max_new_tokens", "4", "--train.progress", "false"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = (tmp_path / "runs").iterdir()
    assert run.name.startswith("hint_sd-env-v0-")
    assert f"agentgym train: run folder {Path('runs') / run.name}" in proc.stderr  # named at the start
    summary = json.loads((run / "summary.json").read_text())
    assert summary["env_id"] == "my_plugins:my/Env-v0" and summary["updates"] == 1
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["no_gradient"] for m in metrics if m["phase"] == "train"] == [0.0]
