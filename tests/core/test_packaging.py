"""The built wheel installs into a fresh virtualenv and works from outside the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(*args, cwd=None, env=None):
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist",
                REPO)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("agentgym-*.whl")
    target = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    python = target / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # The dependencies come from the development environment by path (no download, no editable
    # agentgym: a plain path entry does not process that environment's .pth files).
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    uv = Path(sys.executable).parent / "uv"
    installed = run(uv, "pip", "install", "--python", python, "--no-deps", wheel)
    assert installed.returncode == 0, installed.stderr[-2000:]
    return target


def test_wheel_imports_every_plugin_folder_from_outside_the_repo(fresh_venv, tmp_path):
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('agentgym/BFCLMultiTurn-v0')\n"  # no `import agentgym`: the hook registers
        "obs, info = env.reset(options={'task_id': 'multi_turn_base_0'})\n"
        "import agentgym, agentgym.envs, agentgym.agents, agentgym.feedback, agentgym.learners\n"
        "import agentgym.envs.bfcl.multi_turn\n"
        "print(agentgym.__file__); print(agentgym.envs.__file__); print(info['task']['id'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    result = run(fresh_venv / "bin" / "python", "-c", code, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    agentgym_file, envs_file, task_id = result.stdout.split()
    assert agentgym_file.startswith(str(fresh_venv)) and envs_file.startswith(str(fresh_venv))
    assert not agentgym_file.startswith(str(REPO))
    assert task_id == "multi_turn_base_0"


def test_the_entry_point_group_is_declared(fresh_venv, tmp_path):
    code = ("from importlib.metadata import entry_points\n"
            "print([e.value for e in entry_points(group='gymnasium.envs') if e.dist.name == 'agentgym'])")
    result = run(fresh_venv / "bin" / "python", "-c", code, cwd=tmp_path)
    assert "agentgym.registration:register_envs" in result.stdout, result.stderr[-2000:]


def test_the_cli_is_installed(fresh_venv, tmp_path):
    result = run(fresh_venv / "bin" / "agentgym", "envs", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "agentgym/BFCLMultiTurn-v0" in result.stdout.split()
