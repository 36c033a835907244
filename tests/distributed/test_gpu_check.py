"""scripts/gpu_check.sh: the CPU dry run (tiny model; setup, gpu tests, vLLM and the paper preset
skipped with the reason) prints one table with a row per check, records its phases, and finishes in
about a minute; on a GPU machine the real run (gpu marker) passes every check within its budget."""

from __future__ import annotations

import json
import os
import sys
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.sh"
LEARNERS = ["grpo", "dense_sd", "hint_sd", "serl", "gigpo"]


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VENV": str(Path(sys.executable).parents[1])}  # tiny only
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def test_gpu_check_dry_run_on_cpu_prints_the_table(tmp_path):
    out = tmp_path / "rows.json"
    proc = _run("--cpu", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    by = {(r["check"], r["model"]): r for r in rows}
    for name in LEARNERS:
        row = by[(f"learner step {name}", "tiny")]
        assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["seconds"] > 0, row
        assert row["value"].startswith("loss ")
    teacher_tokens = {n: int(by[(f"learner step {n}", "tiny")]["note"].split("teacher ")[1].rstrip(")")) for n in LEARNERS}
    assert teacher_tokens["grpo"] == teacher_tokens["gigpo"] == 0 and teacher_tokens["hint_sd"] > 0
    assert teacher_tokens["dense_sd"] > teacher_tokens["hint_sd"]  # dense SD scores every step
    assert by[("hint_sd vs dense_sd", "tiny")]["status"] == "ok" and "dense/hint" in by[("hint_sd vs dense_sd", "tiny")]["value"]
    vllm = by[("vllm rollout + LoRA push", "smollm2")]
    assert vllm["status"] == "skipped" and "needs a GPU" in vllm["note"]
    paper = by[("hint_sd_paper first update", "Qwen/Qwen3-4B-Instruct-2507")]
    assert paper["status"] == "skipped" and "needs a GPU" in paper["note"]
    bfcl = by[("bfcl 2-update run", "tiny")]
    assert bfcl["status"] == "ok" and bfcl["seconds"] > 0, bfcl
    table = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("| check"))
    assert len([line for line in table[header + 2:] if line.startswith("|")]) == len(rows) == 9
    assert "gpu_check on cpu (dry run)" in proc.stdout
    record = Path(proc.stderr.split("[gpu_check] record: ")[1].split(" (")[0])  # the phases, recorded
    phases = [line.split("\t") for line in (record / "phases.tsv").read_text().splitlines()[1:]]
    assert [p[:2] for p in phases] == [["setup", "skipped: --cpu"], ["gpu_tests", "skipped: --cpu"], ["figures", "ok"]]
    assert json.loads((record / "rows.json").read_text())["rows"] == rows and (record / "table.md").is_file()


@pytest.mark.gpu
def test_gpu_check_on_a_gpu_passes_every_check_in_8_minutes(tmp_path):
    """(The name is kept for the check's deselection; the budget is now 9.5 minutes, setup included.)"""
    out = tmp_path / "rows.json"
    proc = _run("--skip-setup", "--record", str(tmp_path / "record"), "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["seconds"] < 570
    assert all(r["status"] == "ok" for r in report["rows"]), [r for r in report["rows"] if r["status"] != "ok"]
