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

A server is not trusted. Every request goes through the shared transport
(``agentgym.agents.transport``: one deadline over the whole request, ``timeout``; retries of
transient failures honouring ``Retry-After``; responses capped at ``max_response_bytes``) and every
response is validated with a typed model before anything is recorded: the sampled ids are JSON
integers inside the vocabulary (``vocab_size``: the tokenizer's, or its model config's when larger),
1 to ``max_new_tokens`` of them, one finite log-prob <= 0 per id, and the server's echo of the
prompt ids present and equal to what was sent (``require_echo=False`` accepts a server that does not
echo; a wrong echo is always refused). The action text is decoded here from the ids, so a server's
``text`` never enters a trajectory. Prompt log-probs (``score``, ``verify``) need one finite
log-prob <= 0 for every action token, and ``verify`` compares every probe token. Any violation is a
``ServerError`` (``WeightSyncError`` in ``verify``) naming the server and the field.

``launch_vllm_server`` (``agentgym.agents.vllm_launch``, re-exported here) starts a server on this
machine (tests, single-node runs) and waits until it answers ``/health``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictInt, StrictStr

from agentgym.agents.base import Generation, SamplingParams, ScoreResult, TokenPolicy
from agentgym.agents.chat import ChatRenderer
from agentgym.agents.transport import DEFAULT_MAX_RESPONSE_BYTES, HTTPTransport, ServerError
from agentgym.agents.vllm_launch import VLLMServerProcess, free_port, launch_vllm_server  # noqa: F401 - re-exported
from agentgym.agents.vllm_policy import WeightSyncError

__all__ = ["VLLMServerPolicy", "ServerError", "launch_vllm_server", "VLLMServerProcess", "free_port"]


def _check_url(url: Any) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) < 10:
        raise ValueError(f"vLLM server URL must be an http(s) URL such as http://10.0.0.2:8000/v1, got {url!r}")
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


# ------------------------------------------------------------------------------------------ responses
# What the client needs of vLLM's answers, typed: anything else in a response is ignored; a field
# of the wrong type (an id given as 1.9, true or "7", a log-prob given as a string) is refused.
LogProb = Annotated[float, Strict(), Field(allow_inf_nan=False, le=0.0)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _SampledLogProbs(_Lenient):
    token_logprobs: list[LogProb]


class _PromptLogProb(_Lenient):
    logprob: LogProb


class _Choice(_Lenient):
    token_ids: list[StrictInt] | None = None
    prompt_token_ids: list[StrictInt] | None = None
    logprobs: _SampledLogProbs | None = None
    prompt_logprobs: list[dict[str, _PromptLogProb] | None] | None = None
    finish_reason: StrictStr | None = None


class _Completion(_Lenient):
    choices: list[_Choice] = Field(min_length=1)


class _ModelCard(_Lenient):
    id: StrictStr
    parent: StrictStr | None = None


class _ModelList(_Lenient):
    data: list[_ModelCard]


class _Server(HTTPTransport):
    """One server: ``base`` is its ``.../v1`` URL; ``root`` the URL without ``/v1`` (dev endpoints)."""

    def __init__(self, url: str, *, timeout: float, api_key: str | None, attempts: int = 3,
                 max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES):
        self.base = _check_url(url)
        super().__init__(self.base[:-len("/v1")], timeout=timeout, api_key=api_key, attempts=attempts,
                         max_bytes=max_bytes)

    def __repr__(self) -> str:
        return self.base


def _vocab_size(tokenizer: Any) -> int:
    """The number of token ids the model can emit: the tokenizer's, or its model config's
    ``vocab_size`` when larger (embedding rows padded past the tokenizer's last id)."""
    try:
        size = len(tokenizer)
    except TypeError:
        size = int(getattr(tokenizer, "vocab_size", 0) or 0)
    path = getattr(tokenizer, "name_or_path", None)
    if path:
        try:
            from transformers import AutoConfig  # heavy: only when the vocabulary size is not given
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            text = config.get_text_config() if hasattr(config, "get_text_config") else config
            size = max(size, int(getattr(text, "vocab_size", 0) or 0))
        except Exception:  # noqa: BLE001 - no config next to the tokenizer: its own size it is
            pass
    if size < 1:
        raise ValueError("cannot tell the tokenizer's vocabulary size: pass vocab_size=")
    return size


class VLLMServerPolicy(TokenPolicy):
    """Generation on one or more vLLM servers (see the module docstring).

    ``urls``: the servers' base URLs; ``model``: the name they serve the base model under (their
    ``--served-model-name``, or the model path they were started with); ``tokenizer``: the trainer's
    (the prompt ids are rendered here and never re-tokenized). ``timeout``: the deadline of one
    request try (connect, send and the whole response); ``attempts``: tries of a transient failure;
    ``max_response_bytes``: the largest response read; ``vocab_size``: ids at or above it are
    refused (default: the tokenizer's, or its model config's); ``require_echo``: refuse a completion
    without the server's echo of the prompt ids (vLLM's ``return_token_ids`` gives it)."""

    token_level = True

    def __init__(self, urls: Sequence[str], *, model: str | None, tokenizer: Any, timeout: float = 600.0,
                 max_concurrency: int = 32, tolerance: float = 0.05, probe_ids: Sequence[int] | None = None,
                 sync_dir: str | os.PathLike | None = None, adapter_prefix: str | None = None,
                 api_key: str | None = None, api_key_env: str | None = None, attempts: int = 3,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, vocab_size: int | None = None,
                 require_echo: bool = True):
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ValueError("VLLMServerPolicy needs at least one server URL (rollout.servers)")
        if not (isinstance(timeout, (int, float)) and 0 < timeout < float("inf")):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        key = api_key or (os.environ.get(api_key_env) if api_key_env else None)
        self.servers = [_Server(u, timeout=float(timeout), api_key=key, attempts=attempts,
                                max_bytes=max_response_bytes) for u in urls]
        self.vocab_size = vocab_size if vocab_size is not None else _vocab_size(tokenizer)
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 1:
            raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
        self.require_echo = bool(require_echo)
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
                listed = srv.request("GET", "/v1/models", model=_ModelList)
            except ServerError as exc:
                raise ServerError(f"cannot list the models of vLLM server {srv}: {exc}", exc.status) from None
            base = [m.id for m in listed.data if not m.parent]
            if len(base) != 1:
                raise ServerError(f"{srv} serves {len(base)} base models ({base}); pass model= explicitly")
            names.append(base[0])
        if len(set(names)) != 1:
            raise ServerError(f"the servers serve different base models: {dict(zip(map(str, self.servers), names))}")
        return names[0]

    # ------------------------------------------------------------------ generation
    def generate_ids(self, prompts: list[list[int]], sampling: SamplingParams,
                     row_seeds: list[int | None]) -> list[Generation]:
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
        # serve the same verified version); an HTTP 4xx or a response that fails validation is raised.
        first = self.servers.index(server)
        failures = []
        for k in range(len(self.servers)):
            server = self.servers[(first + k) % len(self.servers)]
            try:
                out = server.request("POST", "/v1/completions", body, model=_Completion)
                break
            except ServerError as exc:
                if not exc.transient:  # a 4xx, or a response that cannot be used: not the next server's to fix
                    raise
                failures.append(str(exc))
        else:
            raise ServerError(f"no vLLM server answered: {'; '.join(failures)}")
        with self._lock:
            self.requests_per_server[self.servers.index(server)] += 1
        choice = out.choices[0]
        ids, lps = self._checked_sample(server, choice, prompt, sampling.max_new_tokens)
        if self.exchanges is not None:
            with self._lock:
                self.exchanges.append({"server": server.base, "model": served, "version": version,
                                       "seen": choice.prompt_token_ids, "sampled": ids})
        text = self.tokenizer.decode(ids, skip_special_tokens=True)  # from the ids: never the server's text
        return Generation(text=text, token_ids=ids, logprobs=lps, prompt_ids=prompt,
                          finish_reason=choice.finish_reason or "stop",
                          info={"policy_version": version, "server": server.base, "served_model": served})

    def _checked_sample(self, server: _Server, choice: _Choice, prompt: list[int],
                        max_tokens: int) -> tuple[list[int], list[float]]:
        """The sampled ids and log-probs of a typed completion, or ``ServerError`` naming the field."""
        def bad(what: str) -> ServerError:
            return ServerError(f"{server}: unusable completion: {what}")

        echoed = choice.prompt_token_ids
        if echoed is None:
            if self.require_echo:
                raise bad("choices[0].prompt_token_ids is missing: the server must echo the prompt ids "
                          "(vLLM >= 0.10.2 with return_token_ids; require_echo=False accepts a server that "
                          "does not, without the check)")
        elif echoed != prompt:
            first = next((i for i, (a, b) in enumerate(zip(echoed, prompt)) if a != b), min(len(echoed), len(prompt)))
            raise bad(f"choices[0].prompt_token_ids differs from the ids sent at position {first} ({len(echoed)} "
                      f"vs {len(prompt)} tokens): token-exact rollouts are impossible with it")
        ids = choice.token_ids
        if ids is None:
            raise bad("choices[0].token_ids is missing (the request asked for return_token_ids)")
        if not 1 <= len(ids) <= max_tokens:
            raise bad(f"choices[0].token_ids has {len(ids)} ids; between 1 and max_tokens={max_tokens} were asked for")
        for i, t in enumerate(ids):
            if not 0 <= t < self.vocab_size:
                raise bad(f"choices[0].token_ids[{i}] = {t} is outside the vocabulary [0, {self.vocab_size})")
        if choice.logprobs is None:
            raise bad("choices[0].logprobs is missing (the request asked for logprobs=0)")
        lps = choice.logprobs.token_logprobs
        if len(lps) != len(ids):
            raise bad(f"choices[0].logprobs.token_logprobs has {len(lps)} log-probs for {len(ids)} sampled ids")
        return list(ids), [float(x) for x in lps]

    def score(self, context_ids: Sequence[int], action_ids: Sequence[int], top_k: int = 0, *,
              temperature: float = 1.0, server: int = 0, model: str | None = None) -> ScoreResult:
        """Prompt log-probs of ``action_ids`` after ``context_ids`` on server ``server`` (temperature 1)."""
        if temperature != 1.0 or top_k:
            raise ValueError("VLLMServerPolicy.score: temperature 1 and top_k 0 only; score with the trainer")
        srv = self.servers[server]
        ids = list(context_ids) + list(action_ids)
        out = srv.request("POST", "/v1/completions", {
            "model": model or self.served, "prompt": ids, "max_tokens": 1, "temperature": 1.0,
            "prompt_logprobs": 0, "return_token_ids": True}, model=_Completion)
        rows = out.choices[0].prompt_logprobs
        if rows is None or len(rows) != len(ids):
            got = "missing" if rows is None else f"{len(rows)} rows"
            raise ServerError(f"{srv}: unusable prompt log-probs: choices[0].prompt_logprobs is {got}; one row "
                              f"per prompt token ({len(ids)}) was asked for")
        logprobs = []
        for i, token in enumerate(action_ids, start=len(context_ids)):
            row = rows[i]
            if row is None or str(token) not in row:
                raise ServerError(f"{srv}: unusable prompt log-probs: choices[0].prompt_logprobs[{i}] has no "
                                  f"entry for the prompt's token {token}")
            logprobs.append(float(row[str(token)].logprob))
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
                names = {m.id for m in srv.request("GET", "/v1/models", model=_ModelList).data}
                if self.served not in names:
                    raise WeightSyncError(f"{srv} does not serve {self.served!r} (policy version {self.version}); "
                                          f"it serves {sorted(names)}: the push did not reach it")
                mine = self.score(probe[:split], probe[split:], server=i).logprobs
            except ServerError as exc:
                raise WeightSyncError(f"verifying policy version {self.version} on {srv} failed: {exc}") from None
            if len(mine) != len(theirs) or not mine:  # every probe token is compared, or none is trusted
                raise WeightSyncError(f"verifying policy version {self.version} on {srv} failed: {len(mine)} probe "
                                      f"log-probs for {len(theirs)} probe tokens")
            diff = max(abs(a - b) for a, b in zip(mine, theirs, strict=True))
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
        for srv in self.servers:
            srv.close()
        if self._own_sync_dir:
            shutil.rmtree(self.sync_dir, ignore_errors=True)
