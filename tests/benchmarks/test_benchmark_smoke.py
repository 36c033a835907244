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


def run_smoke(command: list[str], cwd: Path, timeout: float = 300) -> str:
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


SELECTOR_ROWS = [rf"^  {re.escape(name)} +{NUM} us$" for name in ("dense", "first_divergence", "hindsight_multi(3)")]
TEACHER_ROWS = [rf"^  teacher generation calls +\d+ +\d+ +{NUM}x$", rf"^  scored action tokens +\d+ +\d+ +{NUM}x$"]


@pytest.mark.parametrize("command", [script, bench], ids=["python", "agentgym-bench"])
def test_hindsight_selectors_smoke(tmp_path, command):
    out = run_smoke(command("hindsight_selectors"), tmp_path)
    assert_rows(out, [r"^batch: 3 BFCL rollouts \(1 tasks x 3\), \d+ steps, [12] failed", *SELECTOR_ROWS,
                      *TEACHER_ROWS])


def test_bfcl_env_smoke(tmp_path):
    out = run_smoke(script("bfcl_env"), tmp_path)
    assert_rows(out, [r"^ground truths solved +6/6 *$",
                      rf"^env-step overhead, median us \(with state_diff\) +{NUM} +1000$",
                      rf"^grading per episode, median ms \(official checker\) +{NUM} *$",
                      rf"^ratio ours / official +{NUM}x *$",
                      r"^identical result strings ours vs official +(\d+)/\1 *$",
                      rf"^RSS peak growth over 20 episodes \(MB\) +{NUM} +50$", r"^budgets met: (True|False)$"])


def test_learners_smoke_through_agentgym_bench(tmp_path):
    """The script `agentgym bench learners` failed at import once (TeacherPolicy had moved) and no
    test noticed: every learner's row of timings, and the dense / HINT-SD ratio."""
    out = run_smoke(bench("learners"), tmp_path)
    assert_rows(out, [r"^recorded batch: 2 episodes of multi_turn_base_146, 2 steps, mean context \d+ tokens",
                      *[rf"^{name} +{NUM}( +{NUM}){{7}}$" for name in ("dense_sd", "hint_sd", "grpo", "serl")],
                      rf"^time per training step, dense SD / HINT-SD: {NUM}x"])


def test_main_job_smoke(tmp_path):
    out = run_smoke(script("main_job"), tmp_path)
    pair = rf"{NUM} -> {NUM}"
    assert_rows(out, [rf"^\| 0 \| {pair} \| {pair} \| [+-]{NUM}( \[[+-]{NUM}, [+-]{NUM}\])? \| [+-]{NUM} \| "
                      rf"([+-]{NUM}|n/a) \| \d+ \|$", r"^\| mean ± std over 1 seeds \|"])


@pytest.mark.skipif(_webshop_problem() is not None, reason=str(_webshop_problem()))
def test_webshop_smoke(tmp_path):
    out = run_smoke(script("webshop"), tmp_path)
    assert_rows(out, [r"^catalogue: \d+ products, \d+ synthetic goals",
                      rf"^index build: {NUM} ms; cached load: {NUM} ms",
                      rf"^env steps/s: oracle \d+ \(\d+ steps, 5 episodes .*; random \d+ \(\d+ steps\)$",
                      rf"^ +1000 +{NUM} +{NUM} +{NUM} +{NUM}$"])


@pytest.mark.skipif(_alfworld_problem() is not None, reason=str(_alfworld_problem()))
def test_alfworld_env_smoke(tmp_path):
    out = run_smoke(script("alfworld_env"), tmp_path)
    assert_rows(out, [rf"^\S+ +official AlfredTWEnv +{NUM} +{NUM} *$",
                      rf"^\S+ +agentgym +{NUM} +{NUM}  identical$",
                      rf"^all games \(median\) +agentgym +{NUM} +{NUM}  reset x{NUM}, step x{NUM} faster",
                      r"^games in pool: \d+; episodes: 3; steps: \d+$",
                      rf"^step latency: median {NUM} ms, p95 {NUM} ms; reset latency: median {NUM} ms"])


@pytest.mark.skipif(_alfworld_problem() is not None, reason=str(_alfworld_problem()))
def test_rollout_smoke(tmp_path):
    out = run_smoke(script("rollout"), tmp_path)
    assert_rows(out, [*[rf"^alfworld +{n} +{NUM} +{NUM}x +{NUM} +{NUM} +0$" for n in (0, 1)],
                      *[rf"^BFCL scripted, +{c} concurrent: steps/s +{NUM}  steps/s" for c in (1, 8, 64)],
                      *[rf"^tiny transformers generate, batch {b} +{NUM}  tokens/s$" for b in (1, 8)]])


def test_report_smoke(tmp_path):
    out = run_smoke(script("report"), tmp_path)
    rows = [rf"^{key} +{NUM} +{NUM} +{NUM}$" for key in ("jsonl_MB", "render_s", "page_MB")]
    if "browser timings skipped" not in out:
        rows += [rf"^{key} +{NUM} +{NUM} +{NUM}$" for key in ("load_s", "filter_outcome")] + [r"^rows +50 +50 +1\.00$"]
    assert_rows(out, [r"^source: .* \(\d+ real trajectories\), replicated to 50$", *rows])


@pytest.mark.slow  # two AppWorld envs start their apps worker and grader (10-30 s each on 2 cores)
@pytest.mark.skipif(_appworld_problem() is not None, reason=str(_appworld_problem()))
def test_appworld_smoke(tmp_path):
    out = run_smoke(script("appworld"), tmp_path, timeout=600)
    assert_rows(out, [rf"^ +1 \| +{NUM} \| +{NUM} \| +1\.00x$",
                      rf"^per-episode start-up: reset p50 \d+ ms, p95 \d+ ms; sandboxed process fork p50 {NUM} ms",
                      r"^execute latency: p50 \d+ ms, p95 \d+ ms \(n=3\)$",
                      *[rf"^ +{i} \| +\d+ \| +\d+ \| +\d+$" for i in (1, 2, 3)]])
