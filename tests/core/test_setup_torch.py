"""Setup on a machine without this machine's local torch wheel folder: ``./setup.sh`` picks torch the
ecosystem's way (uv's ``--torch-backend auto``, no ``+cpu`` pin) or stops in one line that says what
to do; with the folder it keeps the local CPU wheel and its pin. And the built wheel installs into a
virtualenv that already has a torch without touching it. Nothing here downloads anything."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
LOCAL_TORCH = sorted(Path("/opt/wheels").glob("torch-*.whl"))


def _setup(*args: str, wheels: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "VENV": str(tmp_path / "venv"), "AGENTGYM_WHEELS": str(wheels), "AGENTGYM_GPU": "0",
            "UV": str(UV), "UV_CACHE_DIR": str(tmp_path / "uv-cache"), **env}
    return subprocess.run([str(REPO / "setup.sh"), *args], capture_output=True, text=True, timeout=60, env=full)


def test_without_the_wheel_folder_uv_picks_the_torch_build(tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    proc = _setup("--print-torch", wheels=empty, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "torch: auto: uv pip install --torch-backend auto torch>=2.4"
    assert "+cpu" not in proc.stdout and "constraints" not in proc.stdout
    assert not (tmp_path / "venv").exists()  # printing installs nothing


def test_with_a_torch_wheel_in_the_folder_the_local_cpu_pin_stays(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    proc = _setup("--print-torch", wheels=wheels, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"torch: local: uv pip install --find-links {wheels} -c constraints.txt torch"
    assert "torch==2.13.0+cpu" in (REPO / "constraints.txt").read_text()


def test_no_reachable_torch_stops_in_one_line_that_says_what_to_do(tmp_path):
    """No wheel folder and no index reachable (uv offline, empty cache): one line, exit 1, in seconds."""
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    started = time.monotonic()
    proc = _setup(wheels=empty, tmp_path=tmp_path, UV_OFFLINE="1")
    assert time.monotonic() - started < 20
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == "setup: torch: auto (uv pip install --torch-backend auto torch>=2.4)"
    assert len(lines) == 2 and "Traceback" not in proc.stderr
    assert lines[1].startswith("setup: no torch could be installed for this machine (")
    assert "install one into" in lines[1] and "run ./setup.sh again" in lines[1] and "AGENTGYM_WHEELS" in lines[1]
    venv = tmp_path / "venv"
    assert not list(venv.glob("lib/python*/site-packages/torch"))  # nothing half-installed
    assert not list(venv.glob("lib/python*/site-packages/agentgym*"))  # stopped before the project


@pytest.mark.skipif(not LOCAL_TORCH, reason="needs a local torch wheel to put a torch into a fresh virtualenv offline")
def test_the_built_wheel_keeps_the_torch_a_virtualenv_already_has(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path / "dist"), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("agentgym-*.whl")
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"

    def uv(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(UV), *args], capture_output=True, text=True, timeout=120)

    assert uv("venv", "-q", "--python", sys.executable, str(venv)).returncode == 0
    put = uv("pip", "install", "-q", "--offline", "--no-deps", "--python", str(python), str(LOCAL_TORCH[0]))
    assert put.returncode == 0, put.stderr
    plan = uv("pip", "install", "--dry-run", "--offline", "--python", str(python), str(wheel))
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "Would install" in plan.stderr
    assert "torch" not in plan.stderr.replace("agentgym", "")  # neither installed, upgraded nor replaced
