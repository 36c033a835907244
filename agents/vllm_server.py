"""Rollouts on remote vLLM servers (OpenAI-compatible ``vllm serve``), token in / token out, with
weight pushes that are verified on every server.

``VLLMServerPolicy`` sends the exact recorded prompt ids to ``/v1/completions`` (``prompt`` as a list
of ints, ``return_token_ids``) and takes back the sampled ids and their log-probs, so nothing is
re-tokenized and a trajectory is token-exact; the server's echo of the prompt ids is checked against
what was sent. Requests are spread round-robin over the servers (one request per conversation, each
with its own seed), and every ``Generation`` says which server and which policy version produced it
(``info["policy_version"]``, ``info["server"]``; the rollout copies both into the step's info).

Weight sync (``push_lora`` / ``push_full``, called by the ``vllm_server`` rollout backend after each
update):

- LoRA: the adapter is written to ``sync_dir/lora-v{N}`` (a folder every server can read: a shared
  filesystem when the servers are on other machines) and loaded on every server under the versioned
  name ``{adapter_prefix}-v{N}`` (the prefix is unique per policy object) with
  ``POST /v1/load_lora_adapter`` (servers started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` and
  ``--enable-lora``); generation then requests that
  name, and the previous version is unloaded once the new one is verified.
- Full weights: ``save_pretrained`` to ``sync_dir/full-v{N}``, then every server reloads in place
  from that path (``POST /collective_rpc`` ``reload_weights(weights_path=...)``, servers started with
  ``VLLM_SERVER_DEV_MODE=1``) and drops its prefix cache.

After every push, ``verify`` asks EVERY server for the log-probs of a fixed probe under the name it
must now serve and compares them with the trainer's (``tolerance``), and checks that the served
adapter list holds the new version. Any mismatch, missing adapter or failed request is a
``WeightSyncError`` naming the server: a stale server is never used silently.

``launch_vllm_server`` starts a server on this machine (tests, single-node runs) and waits until it
answers ``/health``.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from agentgym.agents.base import (Conversation, Generation, Policy, PolicyError, SamplingParams, ScoreResult,
                                  request_prompts, request_seeds)
from agentgym.agents.vllm_policy import WeightSyncError

__all__ = ["VLLMServerPolicy", "ServerError", "launch_vllm_server", "VLLMServerProcess", "free_port"]


class ServerError(PolicyError):
    """A vLLM server request failed (after the retries, for transient failures); ``status`` is the
    HTTP status when the server answered."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) < 10:
        raise ValueError(f"vLLM server URL must be an http(s) URL such as http://10.0.0.2:8000/v1, got {url!r}")
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class _Server:
    """One server: ``base`` is its ``.../v1`` URL; ``root`` the URL without ``/v1`` (dev endpoints)."""

    def __init__(self, url: str, *, timeout: float, api_key: str | None, attempts: int = 3):
        self.base = _check_url(url)
        self.root = self.base[:-len("/v1")]
        self.timeout, self.api_key, self.attempts = timeout, api_key, attempts

    def __repr__(self) -> str:
        return self.base

    def request(self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
                retry: bool = True) -> Any:
        url = self.root + path  # paths name their /v1 prefix where they have one
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.attempts if retry else 1):
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                    raw = resp.read()
                    if not raw:
                        return None
                    ctype = resp.headers.get("Content-Type", "")
                    return json.loads(raw) if "json" in ctype else raw.decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                text = exc.read().decode("utf-8", "replace")[:500]
                if exc.code < 500 and exc.code != 429:
                    raise ServerError(f"{method} {url}: HTTP {exc.code}: {text}", exc.code) from None
                last = ServerError(f"{method} {url}: HTTP {exc.code}: {text}", exc.code)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError, ValueError) as exc:
                last = ServerError(f"{method} {url}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}")
            time.sleep(min(0.2 * 2 ** attempt, 2.0))
        raise last  # type: ignore[misc]


class VLLMServerPolicy(Policy):
    """Generation on one or more vLLM servers (see the module docstring).

    ``urls``: the servers' base URLs; ``model``: the name they serve the base model under (their
    ``--served-model-name``, or the model path they were started with); ``tokenizer``: the trainer's
    (the prompt ids are rendered here and never re-tokenized)."""

    token_level = True

    def __init__(self, urls: Sequence[str], *, model: str | None, tokenizer: Any, timeout: float = 600.0,
                 max_concurrency: int = 32, tolerance: float = 0.05, probe_ids: Sequence[int] | None = None,
                 sync_dir: str | os.PathLike | None = None, adapter_prefix: str | None = None,
                 api_key: str | None = None, api_key_env: str | None = None):
        from agentgym.agents.chat import ChatRenderer
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ValueError("VLLMServerPolicy needs at least one server URL (rollout.servers)")
        if not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
        self.servers = [_Server(u, timeout=float(timeout), api_key=key) for u in urls]
        if len({s.base for s in self.servers}) != len(self.servers):
            raise ValueError(f"the same server is listed twice: {[s.base for s in self.servers]}")
        self.model = self.name = model or self._base_model()
        self.tokenizer = tokenizer
        self.renderer = ChatRenderer(tokenizer)
        self.tolerance = tolerance
        self.probe_ids = list(probe_ids) if probe_ids is not None else self.renderer.prompt_ids(
            [{"role": "user", "content": "Probe: list the files, then say done."}])
        # Unique per policy: a resumed run (or a second trainer) on the same servers never collides
        # with adapter names an earlier one left loaded there.
        self.adapter_prefix = adapter_prefix or f"agentgym-{uuid.uuid4().hex[:8]}"
        self._own_sync_dir = sync_dir is None
        self.sync_dir = Path(sync_dir) if sync_dir is not None else Path(tempfile.mkdtemp(prefix="agentgym-sync-"))
        self.sync_dir.mkdir(parents=True, exist_ok=True)
        self.version = 0  # pushes done; 0: the weights the servers were started with
        self.served: str = self.model  # the model name requests ask for (the adapter's, with LoRA)
        self._previous_adapter: str | None = None
        self._rr = itertools.count()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, max_concurrency), thread_name_prefix="vllm-server")
        self.requests_per_server = [0] * len(self.servers)
        # Set to a list to record every exchange: what each server saw (its echo of the prompt ids)
        # and sampled, with the policy version asked for (tests and audits of token-exactness).
        self.exchanges: list[dict[str, Any]] | None = None

    def _base_model(self) -> str:
        """The base model every server serves (``/v1/models``: the entry without a parent)."""
        names = []
        for srv in self.servers:
            try:
                listed = srv.request("GET", "/v1/models")
                base = [m["id"] for m in listed["data"] if not m.get("parent")]
            except (ServerError, KeyError, TypeError) as exc:
                raise ServerError(f"cannot list the models of vLLM server {srv}: {exc}") from None
            if len(base) != 1:
                raise ServerError(f"{srv} serves {len(base)} base models ({base}); pass model= explicitly")
            names.append(base[0])
        if len(set(names)) != 1:
            raise ServerError(f"the servers serve different base models: {dict(zip(map(str, self.servers), names))}")
        return names[0]

    # ------------------------------------------------------------------ generation
    def generate(self, conversations: Sequence[Conversation], tools: Any = None,
                 sampling: SamplingParams | None = None, *,
                 prompt_ids: Sequence[Sequence[int] | None] | None = None,
                 seeds: Sequence[int | None] | None = None) -> list[Generation]:
        sampling = sampling or SamplingParams()
        row_seeds = request_seeds(sampling, len(conversations), seeds)
        prompts = request_prompts(self, conversations, tools, prompt_ids)
        with self._lock:
            start = next(self._rr)
            served, version = self.served, self.version
        futures = [self._pool.submit(self._complete, self.servers[(start + i) % len(self.servers)], prompt,
                                     sampling, seed, served, version)
                   for i, (prompt, seed) in enumerate(zip(prompts, row_seeds))]
        return [f.result() for f in futures]

    def _complete(self, server: _Server, prompt: list[int], sampling: SamplingParams, seed: int | None,
                  served: str, version: int) -> Generation:
        body = {"model": served, "prompt": prompt, "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "logprobs": 0,
                "return_token_ids": True, "skip_special_tokens": True}
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if seed is not None:
            body["seed"] = int(seed)
        # A server that stays unreachable after its retries hands the request to the next one (all
        # serve the same verified version); an HTTP 4xx is the request's fault and is not retried.
        first = self.servers.index(server)
        failures = []
        for k in range(len(self.servers)):
            server = self.servers[(first + k) % len(self.servers)]
            try:
                out = server.request("POST", "/v1/completions", body)
                break
            except ServerError as exc:
                if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                    raise
                failures.append(str(exc))
        else:
            raise ServerError(f"no vLLM server answered: {'; '.join(failures)}")
        with self._lock:
            self.requests_per_server[self.servers.index(server)] += 1
        try:
            choice = out["choices"][0]
            ids = [int(t) for t in choice["token_ids"]]
            echoed = choice.get("prompt_token_ids")
            lps = choice["logprobs"]["token_logprobs"]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ServerError(f"{server}: unusable completion response ({type(exc).__name__}: {exc}): "
                              f"{json.dumps(out)[:300]}") from None
        if echoed is not None and list(echoed) != prompt:
            raise ServerError(f"{server}: the server saw other prompt ids than were sent ({len(echoed)} vs "
                              f"{len(prompt)} tokens): token-exact rollouts are impossible with it")
        if len(lps) != len(ids) or any(lp is None for lp in lps):
            raise ServerError(f"{server}: {len(lps)} log-probs for {len(ids)} sampled tokens")
        if self.exchanges is not None:
            with self._lock:
                self.exchanges.append({"server": server.base, "model": served, "version": version,
                                       "seen": list(echoed) if echoed is not None else None, "sampled": ids})
        return Generation(text=choice.get("text") or "", token_ids=ids, logprobs=[float(x) for x in lps],
                          prompt_ids=prompt, finish_reason=choice.get("finish_reason") or "stop",
                          info={"policy_version": version, "server": server.base, "served_model": served})

    def score(self, context_ids: Sequence[int], action_ids: Sequence[int], top_k: int = 0, *,
              temperature: float = 1.0, server: int = 0, model: str | None = None) -> ScoreResult:
        """Prompt log-probs of ``action_ids`` after ``context_ids`` on server ``server`` (temperature 1)."""
        if temperature != 1.0 or top_k:
            raise ValueError("VLLMServerPolicy.score: temperature 1 and top_k 0 only; score with the trainer")
        srv = self.servers[server]
        ids = list(context_ids) + list(action_ids)
        out = srv.request("POST", "/v1/completions", {
            "model": model or self.served, "prompt": ids, "max_tokens": 1, "temperature": 1.0,
            "prompt_logprobs": 0, "return_token_ids": True})
        try:
            rows = out["choices"][0]["prompt_logprobs"][len(context_ids):]
            logprobs = [float(row[str(t)]["logprob"]) for row, t in zip(rows, action_ids)]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ServerError(f"{srv}: unusable prompt log-probs ({type(exc).__name__}: {exc})") from None
        return ScoreResult(logprobs=logprobs)

    # ------------------------------------------------------------------ weight sync
    def push_lora(self, model: Any, *, servers: Sequence[int] | None = None) -> str:
        """Write the adapter of ``model`` (peft) as version N+1 and load it on ``servers`` (all by
        default); requests use it from now on. Returns the adapter's served name. Verify after."""
        version = self.version + 1
        path = self.sync_dir / f"lora-v{version}"
        model.save_pretrained(str(path))
        name = f"{self.adapter_prefix}-v{version}"
        for i in range(len(self.servers)) if servers is None else servers:
            try:
                self.servers[i].request("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)},
                                        retry=False)
            except ServerError as exc:
                raise WeightSyncError(f"LoRA push of {name} to {self.servers[i]} failed: {exc} (is the server "
                                      "started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, "
                                      f"and can it read {path}?)") from None
        with self._lock:
            self._previous_adapter = self.served if self.served != self.model else None
            self.version, self.served = version, name
        return name

    def push_full(self, model: Any, *, servers: Sequence[int] | None = None) -> None:
        """Write ``model``'s full weights as version N+1 and have ``servers`` reload them in place."""
        version = self.version + 1
        path = self.sync_dir / f"full-v{version}"
        model.save_pretrained(str(path), safe_serialization=True)
        for i in range(len(self.servers)) if servers is None else servers:
            srv = self.servers[i]
            try:
                srv.request("POST", "/collective_rpc", {"method": "reload_weights",
                                                        "kwargs": {"weights_path": str(path)}}, retry=False)
                srv.request("POST", "/reset_prefix_cache", None, retry=False)
            except ServerError as exc:
                raise WeightSyncError(f"full-weight push v{version} to {srv} failed: {exc} (is the server "
                                      f"started with VLLM_SERVER_DEV_MODE=1, and can it read {path}?)") from None
        with self._lock:
            self.version = version
        previous = self.sync_dir / f"full-v{version - 1}"
        if previous.is_dir():
            shutil.rmtree(previous, ignore_errors=True)  # the servers loaded the new one already

    def verify(self, trainer: Any) -> list[float]:
        """On every server: the served model list has the current adapter, and the probe's log-probs
        under it equal ``trainer.score``'s within ``tolerance``. Returns the max |difference| per
        server; raises ``WeightSyncError`` naming the first server that fails."""
        probe = self.probe_ids
        split = max(1, len(probe) // 2)
        theirs = trainer.score(probe[:split], probe[split:]).logprobs
        diffs = []
        for i, srv in enumerate(self.servers):
            try:
                listed = srv.request("GET", "/v1/models")
                names = {m.get("id") for m in (listed or {}).get("data", [])}
                if self.served not in names:
                    raise WeightSyncError(f"{srv} does not serve {self.served!r} (policy version {self.version}); "
                                          f"it serves {sorted(n for n in names if n)}: the push did not reach it")
                mine = self.score(probe[:split], probe[split:], server=i).logprobs
            except ServerError as exc:
                raise WeightSyncError(f"verifying policy version {self.version} on {srv} failed: {exc}") from None
            diff = max(abs(a - b) for a, b in zip(mine, theirs))
            if not diff <= self.tolerance:
                raise WeightSyncError(f"{srv} serves stale or wrong weights for policy version {self.version} "
                                      f"({self.served!r}): probe log-probs differ from the trainer's by "
                                      f"{diff:.4f} (> tolerance {self.tolerance})")
            diffs.append(diff)
        self._drop_previous()
        return diffs

    def _drop_previous(self) -> None:
        old, self._previous_adapter = self._previous_adapter, None
        if old is None:
            return
        for srv in self.servers:
            try:
                srv.request("POST", "/v1/unload_lora_adapter", {"lora_name": old}, retry=False)
            except ServerError:
                pass  # an adapter that is not there any more costs nothing
        version = old.rsplit("-v", 1)[-1]
        shutil.rmtree(self.sync_dir / f"lora-v{version}", ignore_errors=True)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._own_sync_dir:
            shutil.rmtree(self.sync_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------ launching
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
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise ServerError(f"vLLM server on port {port} exited with code {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1.0)
    server.stop()
    raise ServerError(f"vLLM server on port {port} did not answer /health within {startup_timeout:.0f} s "
                      f"(log: {log_path}):\n{log_path.read_text(errors='replace')[-3000:]}")
