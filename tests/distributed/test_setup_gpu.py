"""./setup.sh --gpu: refused before installing anything where no NVIDIA GPU is visible (the default
path keeps the CPU-only tripwire); an unknown flag is a usage error. The GPU install itself is
never run here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _setup(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    # VENV points at an empty folder: were the script to go past its checks, nothing of .venv changes.
    env = {**os.environ, "VENV": str(tmp_path / "venv"), "AGENTGYM_GPU": "0"}
    return subprocess.run([str(REPO / "setup.sh"), *args], capture_output=True, text=True, timeout=60, env=env)


def test_unknown_flag_is_a_usage_error(tmp_path):
    proc = _setup("--gpus", tmp_path=tmp_path)
    assert proc.returncode == 2 and "usage: ./setup.sh [--gpu]" in proc.stderr
    assert not (tmp_path / "venv").exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a machine with nvidia-smi would really install")
def test_gpu_flag_without_a_gpu_stops_before_installing(tmp_path):
    proc = _setup("--gpu", tmp_path=tmp_path)
    assert proc.returncode == 1 and "no NVIDIA GPU visible" in proc.stderr
    assert not (tmp_path / "venv").exists()
