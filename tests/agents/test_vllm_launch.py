"""launch_vllm_server without vLLM: a stand-in interpreter that serves /health (or dies) on the port it is
given, so the start-up wait, the exit report and stop() are tested against a real process and real HTTP."""

from __future__ import annotations

import sys
import time

import pytest

from agentgym.agents.transport import HTTPTransport, ServerError
from agentgym.agents.vllm_launch import launch_vllm_server

FAKE = '''#!/bin/sh
exec {python} - "$@" <<'PY'
import http.server, sys, time
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
if "{mode}" == "die":
    print("fake vllm: bad model"); sys.exit(3)
time.sleep(1.5)  # not up at once: the launcher must wait
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
PY
'''


def _fake(tmp_path, mode):
    path = tmp_path / f"fake-{mode}"
    path.write_text(FAKE.replace("{python}", sys.executable).replace("{mode}", mode))
    path.chmod(0o755)
    return str(path)


def test_waits_for_health_then_stops_the_process(tmp_path):
    server = launch_vllm_server("m", python=_fake(tmp_path, "serve"), log_dir=tmp_path, startup_timeout=30)
    try:
        probe = HTTPTransport(server.url[:-len("/v1")], timeout=5, attempts=1)
        assert probe.request("GET", "/health") is None  # an empty 200
        probe.close()
    finally:
        server.stop()
    assert server.process.poll() is not None


def test_a_server_that_exits_is_a_one_line_cause_with_its_log(tmp_path):
    started = time.perf_counter()
    with pytest.raises(ServerError, match=r"vLLM server on port \d+ exited with code 3:\nfake vllm: bad model"):
        launch_vllm_server("m", python=_fake(tmp_path, "die"), log_dir=tmp_path, startup_timeout=30)
    assert time.perf_counter() - started < 10
