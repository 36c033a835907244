"""Every benchmark script runs end to end in its seconds-long ``--smoke`` mode (real envs, real data,
the tiny model) and prints its table with real figures, so an import or API move that breaks a
benchmark fails here rather than when someone measures. Only the rows' shape is checked: the figures
themselves are the benchmark's to report, not a test's to time. (learning.py, learning_real.py and
soak.py have their own smoke tests beside this file.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
NUM = r"-?\d+(?:\.\d+)?"  # a printed figure


def _alfworld_problem() -> str | None:
    try:
        import alfworld  # noqa: F401
    except ImportError:
        return "needs the alfworld package (setup.sh installs it)"
    if not (SHARED / "alfworld" / "debug-trial").is_dir():
        return f"needs ALFWorld's shared trial at {SHARED / 'alfworld' / 'debug-trial'}"
    return None


def _appworld_problem() -> str | None:
    from agentgym.envs.appworld.sandbox import sandbox_problem
    from agentgym.envs.appworld.workers import AppWorldPaths
    problem = AppWorldPaths.default().missing() or sandbox_problem()
    return None if problem is None else str(problem)


def _webshop_problem() -> str | None:
    return None if (SHARED / "webshop").is_dir() else f"needs the WebShop catalogue at {SHARED / 'webshop'}"


def run_smoke(command: list[str], cwd: Path, timeout: float = 600) -> str:
    """The smoke run's stdout; fails with its output's tail when it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*command, "--smoke"], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return proc.stdout


def script(name: str) -> list[str]:
    return [sys.executable, str(REPO / "benchmarks" / f"{name}.py")]


def bench(name: str) -> list[str]:
    return [str(Path(sys.executable).with_name("agentgym")), "bench", name]


def assert_rows(out: str, patterns: list[str]) -> None:
    for pattern in patterns:
        assert re.search(pattern, out, re.MULTILINE), f"no line matches {pattern!r} in:\n{out[-3000:]}"


needs_alfworld = pytest.mark.skipif(_alfworld_problem() is not None, reason=str(_alfworld_problem()))
needs_appworld = pytest.mark.skipif(_appworld_problem() is not None, reason=str(_appworld_problem()))
needs_webshop = pytest.mark.skipif(_webshop_problem() is not None, reason=str(_webshop_problem()))
PAIR = rf"{NUM} -> {NUM}"
HINDSIGHT_ROWS = [r"^batch: 3 BFCL rollouts \(1 tasks x 3\), \d+ steps, [12] failed",
                  *[rf"^  {re.escape(name)} +{NUM} us$" for name in ("dense", "first_error", "hindsight_multi(3)")],
                  rf"^  teacher generation calls +\d+ +\d+ +{NUM}x$", rf"^  scored action tokens +\d+ +\d+ +{NUM}x$"]

CASES = [
    pytest.param(script, "hindsight_selectors", HINDSIGHT_ROWS, id="hindsight_selectors"),
    pytest.param(bench, "hindsight_selectors", HINDSIGHT_ROWS, id="agentgym-bench-hindsight_selectors"),
    pytest.param(script, "bfcl_env", [
        r"^ground truths solved +6/6 *$", rf"^env-step overhead, median us \(with state_diff\) +{NUM} +1000$",
        rf"^grading per episode, median ms \(official checker\) +{NUM} *$", rf"^ratio ours / official +{NUM}x *$",
        r"^identical result strings ours vs official +(\d+)/\1 *$",
        rf"^RSS peak growth over 20 episodes \(MB\) +{NUM} +50$", r"^budgets met: (True|False)$"], id="bfcl_env"),
    # `agentgym bench learners` once failed at import (TeacherPolicy had moved) and no test noticed
    pytest.param(bench, "learners", [
        r"^recorded batch: 2 episodes of multi_turn_base_146, 2 steps, mean context \d+ tokens",
        *[rf"^{name} +{NUM}( +{NUM}){{7}}$" for name in ("dense_sd", "hint_sd", "grpo", "serl")],
        rf"^time per training step, dense SD / HINT-SD: {NUM}x"], id="agentgym-bench-learners"),
    pytest.param(script, "main_job", [
        rf"^\| 0 \| {PAIR} \| {PAIR} \| [+-]{NUM}( \[[+-]{NUM}, [+-]{NUM}\])? \| [+-]{NUM} \| "
        rf"([+-]{NUM}|n/a) \| \d+ \|$",
        r"^\| mean ± std over 1 seeds \|"], id="main_job"),
    pytest.param(script, "webshop", [
        r"^catalogue: \d+ products, \d+ synthetic goals", rf"^index build: {NUM} ms; cached load: {NUM} ms",
        rf"^env steps/s: oracle \d+ \(\d+ steps, 5 episodes .*; random \d+ \(\d+ steps\)$",
        rf"^ +1000 +{NUM} +{NUM} +{NUM} +{NUM}$"], marks=needs_webshop, id="webshop"),
    pytest.param(script, "alfworld_env", [
        rf"^\S+ +official AlfredTWEnv +{NUM} +{NUM} *$", rf"^\S+ +agentgym +{NUM} +{NUM}  identical$",
        rf"^all games \(median\) +agentgym +{NUM} +{NUM}  reset x{NUM}, step x{NUM} faster",
        r"^games in pool: \d+; episodes: 3; steps: \d+$",
        rf"^step latency: median {NUM} ms, p95 {NUM} ms; reset latency: median {NUM} ms"],
        marks=needs_alfworld, id="alfworld_env"),
    pytest.param(script, "rollout", [
        *[rf"^alfworld +{n} +{NUM} +{NUM}x +{NUM} +{NUM} +0$" for n in (0, 1)],
        *[rf"^BFCL scripted, +{c} concurrent: steps/s +{NUM}  steps/s" for c in (1, 8, 64)],
        *[rf"^tiny transformers generate, batch {b} +{NUM}  tokens/s$" for b in (1, 8)]],
        marks=needs_alfworld, id="rollout"),
    # the longest smoke (~20 s): two AppWorld envs start their apps worker and grader
    pytest.param(script, "appworld", [
        rf"^ +1 \| +{NUM} \| +{NUM} \| +1\.00x$",
        rf"^per-episode start-up: reset p50 \d+ ms, p95 \d+ ms; sandboxed process fork p50 {NUM} ms",
        r"^execute latency: p50 \d+ ms, p95 \d+ ms \(n=3\)$",
        *[rf"^ +{i} \| +\d+ \| +\d+ \| +\d+$" for i in (1, 2, 3)]],
        marks=needs_appworld, id="appworld"),
]


@pytest.mark.parametrize("command, name, rows", CASES)
def test_benchmark_smoke_prints_real_rows(tmp_path, command, name, rows):
    assert_rows(run_smoke(command(name), tmp_path), rows)


def test_report_smoke(tmp_path):
    out = run_smoke(script("report"), tmp_path)
    rows = [rf"^{key} +{NUM} +{NUM} +{NUM}$" for key in ("jsonl_MB", "render_s", "page_MB")]
    if "browser timings skipped" not in out:
        rows += [rf"^{key} +{NUM} +{NUM} +{NUM}$" for key in ("load_s", "filter_outcome")] + [r"^rows +50 +50 +1\.00$"]
    assert_rows(out, [r"^source: .* \(\d+ real trajectories\), replicated to 50$", *rows])

