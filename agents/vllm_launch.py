"""Starting a ``vllm serve`` process on this machine (tests, single-node runs) for the
``vllm_server`` rollout backend (``agentgym.agents.vllm_server``), and waiting until it answers
``/health``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from agentgym.agents.transport import HTTPTransport, ServerError

__all__ = ["launch_vllm_server", "VLLMServerProcess", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServerProcess:
    """A ``vllm serve`` process on this machine (``url``: its ``/v1`` base); ``stop()`` ends it."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def __enter__(self) -> "VLLMServerProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def launch_vllm_server(model: str | os.PathLike, *, port: int | None = None, lora: bool = True,
                       max_lora_rank: int = 8, dev_mode: bool = True, python: str | None = None,
                       max_model_len: int = 4096, dtype: str = "float32", kv_cache_bytes: int = 1 << 29,
                       extra_args: Sequence[str] = (), env: dict[str, str] | None = None,
                       log_dir: str | os.PathLike | None = None, startup_timeout: float = 600.0) -> VLLMServerProcess:
    """Start ``vllm serve MODEL`` on 127.0.0.1 (a free port by default) with what the
    ``vllm_server`` backend needs: runtime LoRA loading (``--enable-lora``,
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), the dev endpoints for full-weight reloads
    (``VLLM_SERVER_DEV_MODE=1``), log-probs of the processed (temperature-scaled) distribution, and
    whole-prompt prefill steps (vLLM's CPU backend cannot split a seeded prefill). Waits for
    ``/health``; a server that exits or does not come up in ``startup_timeout`` is a ``ServerError``
    with the end of its log."""
    port = port or free_port()
    cmd = [python or sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype, "--max-model-len", str(max_model_len),
           "--max-num-batched-tokens", str(max_model_len), "--logprobs-mode", "processed_logprobs",
           "--kv-cache-memory-bytes", str(kv_cache_bytes), "--disable-log-stats", "--uvicorn-log-level", "warning"]
    if lora:
        cmd += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", "2"]
    cmd += list(extra_args)
    child_env = {**os.environ, **(env or {})}
    child_env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # a server runs its engine in its own process
    if lora:
        child_env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if dev_mode:
        child_env["VLLM_SERVER_DEV_MODE"] = "1"
    log_path = Path(log_dir or tempfile.mkdtemp(prefix="vllm-server-")) / f"vllm-{port}.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
    log.close()
    server = VLLMServerProcess(process, f"http://127.0.0.1:{port}/v1", log_path)
    deadline = time.monotonic() + startup_timeout
    health = HTTPTransport(f"http://127.0.0.1:{port}", timeout=2.0, attempts=1)
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise ServerError(f"vLLM server on port {port} exited with code {process.returncode}:\n{tail}")
            try:
                health.request("GET", "/health", retry=False)
                return server
            except ServerError:
                time.sleep(1.0)  # not up yet
    finally:
        health.close()
    server.stop()
    raise ServerError(f"vLLM server on port {port} did not answer /health within {startup_timeout:.0f} s "
                      f"(log: {log_path}):\n{log_path.read_text(errors='replace')[-3000:]}")
