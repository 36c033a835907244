"""``benchmarks/soak.py --smoke``: Echo in-process, with env workers, served with sessions kept and
served with sessions reopened every chunk, in seconds; every row
finishes its episodes without an env error, and the table and the per-chunk JSON say what was held."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_soak_smoke_runs_every_mode_and_reports_what_the_process_holds(tmp_path):
    pytest.importorskip("openenv.core", reason="the served row needs openenv-core (setup.sh installs it)")
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--smoke", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["env"], r["mode"]) for r in rows] == [("echo", m) for m in ("inproc", "workers", "served", "churn")]
    for row in rows:
        last = row["chunks"][-1]
        assert last["episodes"] == 30 and last["errors"] == 0 and len(row["chunks"]) == 3
        assert last["rss_mb"] > 20 and last["fds"] > 0 and last["threads"] >= 1 and row["slope"] is not None
        assert last["pss_mb"] > 20 and row["pss_slope"] is not None and row["theil_sen"] is not None
        assert last["held_mb"] < 1.0  # no deleted file of any size stays mapped (a 4 kB semaphore may)
    # served: the 4 sessions last the whole soak; churn: 4 new sessions in each of the 3 chunks, and
    # the server still builds at most 4 envs (a closed session's env serves the next session)
    served = {r["mode"]: (r["server_sessions"], r["server_envs_built"]) for r in rows if "server_sessions" in r}
    assert served["served"] == (4, 4) and served["churn"][0] == 12 and served["churn"][1] <= 4, served
    children = {r["mode"]: r["chunks"][-1]["children"] for r in rows}
    assert children["inproc"] == 0 and children["workers"] >= 2 and children["served"] >= 1 and children["churn"] >= 1
    table = proc.stdout[proc.stdout.index("# soak"):]
    assert all(f"echo        {mode}" in table for mode in ("inproc", "workers", "served", "churn")), table


def test_a_stopped_soak_row_takes_its_server_and_env_workers_with_it():
    """SIGTERM to a row's process (how a soak is stopped) still closes the served child and the pool."""
    pytest.importorskip("openenv.core", reason="the served row needs openenv-core (setup.sh installs it)")
    import psutil
    proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "soak.py"), "--one", "echo", "served",
                             "--episodes", "100000", "--chunk", "10", "--concurrent", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("{"), proc.stderr.read()[-2000:]  # one chunk done
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the agentgym serve child
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_slopes_tell_a_trend_from_one_noisy_sample():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import soak
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    line = [(x, 100 + 0.002 * x) for x in range(0, 2000, 100)]  # 2 MB per 1,000 episodes
    assert soak.slope_and_interval(line) == pytest.approx((2.0, 0.0), abs=1e-9)
    assert soak.theil_sen(line) == pytest.approx(2.0)
    flat_with_a_spike = [(x, 100.0) for x in range(0, 2000, 100)]
    flat_with_a_spike[-2] = (1800, 130.0)  # a worker restarting as the sample is taken
    slope, interval = soak.slope_and_interval(flat_with_a_spike)
    assert slope > 1 and interval > slope / 2  # least squares moves, and says it is noise
    assert soak.theil_sen(flat_with_a_spike) == pytest.approx(0.0)
