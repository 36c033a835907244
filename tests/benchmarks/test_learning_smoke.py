"""The learning benchmarks run end to end in their seconds-long smoke mode (tiny model, one update), so
an import or config change that breaks them fails here rather than when someone measures."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("script, learners, env", [
    ("learning.py", "grpo,hint_sd,serl", "agentgym/Echo-v0"),
    ("learning_real.py", "grpo,hint_sd", "agentgym/BFCLSingleTurn-v0"),
])
def test_learning_benchmark_smoke(tmp_path, script, learners, env):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--smoke", "--learners", learners,
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert env in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and not line.startswith("| learner")]
    assert [r.split("|")[1].strip() for r in rows] == learners.split(",")
    assert all((tmp_path / f"{name}-s0" / "summary.json").is_file() for name in learners.split(","))
