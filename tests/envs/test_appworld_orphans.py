"""An AppWorld worker never outlives the process that started it, even when that process dies
while the worker is still warming up (seconds of imports before it serves): the owner's pid travels
on the worker's command line, so a worker whose owner is already gone when it starts watching exits
at once instead of watching init forever."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from agentgym.envs.appworld.workers import AppWorldPaths

PROBLEM = AppWorldPaths.default().missing()

OWNER = r'''
import os, sys
from agentgym.envs.appworld.workers import AppWorldPaths, WorkerProcess
paths = AppWorldPaths.default()
worker = WorkerProcess("grade", paths.root, paths)
worker.spawn()              # no wait_ready: the worker is still importing AppWorld
holder = os.fork()          # a child that keeps the owner's pipe ends open (a forked helper or
if holder == 0:             # sandbox does), so the worker's stdout never breaks: only the watch
    import time             # of its owner can end it
    time.sleep(200)
    os._exit(0)
print(worker.pid, holder, flush=True)
os._exit(0)                 # the owner dies without closing anything (kill -9 does the same)
'''


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM))
def test_a_worker_whose_owner_died_during_its_start_exits():
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = owner.stdout.readline()  # not communicate(): the holder keeps the pipes open
    assert owner.wait(timeout=120) == 0 and line, owner.stderr.read()[-2000:]
    pid, holder = map(int, line.split()[:2])
    deadline = time.monotonic() + 180  # the warm-up (imports, every app's models) and one watch tick
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    alive = _alive(pid)
    for leftover in (pid, holder):
        if _alive(leftover):
            os.kill(leftover, 9)
    assert not alive, f"AppWorld worker {pid} outlived its owner by 180 s"
