"""Real ``agentgym serve`` processes on 127.0.0.1 for the integration tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"on (http://127\.0\.0\.1:\d+) ")


class Served:
    """One ``agentgym serve`` subprocess; ``url`` once it listens."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentgym.cli", "serve", *args, "--port", "0"], cwd=REPO,
            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        self.lines: list[str] = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"agentgym serve exited {self.proc.wait()}: {self.proc.stderr.read()[-3000:]}")
            self.lines.append(line)
            match = READY.search(line)
            if match:
                self.url = match.group(1)
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"agentgym serve did not start in {timeout} s: {self.lines}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> tuple[int, str, str]:
        """Signal the server; its exit code, the rest of its stdout and its stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"agentgym serve ignored {sig} for {timeout} s: {err[-2000:]}")
        return self.proc.returncode, "".join(self.lines) + out, err


@pytest.fixture()
def serve():
    """``serve(ENV_ID, *options, env={...})`` starts a server; all are stopped after the test."""
    started: list[Served] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Served:
        server = Served(*args, env=env)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()
