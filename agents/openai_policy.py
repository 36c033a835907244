"""A policy behind any OpenAI-compatible chat-completions API (OpenAI, vLLM serve, SGLang, ...).

Requests go through the shared HTTP transport (``agentgym.agents.transport``), which the
``vllm_server`` backend uses too: one retry layer, where 429, 5xx, the request deadline, connection
errors and unusable responses are retried with exponential back-off (random, up to
``backoff_max``), honouring ``Retry-After`` (a header that is not a finite, non-negative number of
seconds or an HTTP date is ignored); after the last try ``APIRetryError`` says what failed and how
often. Other 4xx (401, 400, 404, ...) are not retried: they raise ``PolicyError`` at once with the
server's message.

Every request has one deadline, ``timeout`` seconds, covering connect, send and the whole body (each
socket read and write is bounded by what is left of it, so a server that drips one byte at a time
cannot hold a request open): past it the try fails with ``DeadlineExceeded`` and is retried. The
bytes a response may put on the wire are capped (``max_response_bytes``, default 32 MiB): past it the
request fails at once with ``PolicyError`` (not retried).

A 200 response is validated with a typed model (``ChatCompletion``) before it is used; anything
malformed (not JSON, cut off, missing or null fields, a tool call without a name, a non-finite or
missing log-prob, tool arguments nested deeper than ``max_argument_depth`` or longer than
``max_argument_chars``) is a ``MalformedResponseError`` that names the field and the value, and is
retried like any unreadable response. No other exception leaves ``generate``: whatever fails is a
``PolicyError``.

Native tool calls come back as ``Generation.tool_calls`` and are also rendered into the action text
as ``<tool_call>{...}</tool_call>`` lines (what agentgym envs parse); arguments that are not a JSON
object come back as ``{"__raw__": ...}`` for the env to report. Log-probs are requested with
``logprobs=True`` and kept when the server returns them; a vLLM server started with
``--return-tokens-as-token-ids`` also gives the token ids.

The API key is ``api_key``, else the environment variable ``api_key_env`` (``OPENAI_API_KEY``), else
``"EMPTY"`` (what local vLLM / SGLang servers accept). The base URL is ``base_url``, else
``$OPENAI_BASE_URL``, else ``https://api.openai.com/v1``.

A model spec ``openai:NAME`` (what ``agentgym eval --model openai:NAME --base-url URL`` takes) builds
the policy with ``openai_policy_from_spec``.

>>> from agentgym.testing.openai_server import ScriptedOpenAIServer, Reply
>>> with ScriptedOpenAIServer(responder=lambda body: Reply(content="hi!")) as server:
...     policy = OpenAIPolicy("m", base_url=server.base_url, api_key="k")
...     policy.generate([[{"role": "user", "content": "hello"}]])[0].text
'hi!'
"""

from __future__ import annotations

import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Sequence

import httpx2
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictStr, model_validator

from agentgym.agents.base import Conversation, Generation, Policy, PolicyError, SamplingParams, as_chat, per_conversation
from agentgym.agents.transport import (DEFAULT_MAX_RESPONSE_BYTES, DeadlineExceeded, HTTPTransport,
                                       MalformedResponseError, ServerError, TransportError, header_seconds)
from agentgym.types import ToolCall

__all__ = ["OpenAIPolicy", "APIRetryError", "DeadlineExceeded", "TransportError", "MalformedResponseError",
           "ChatCompletion", "is_transient", "OPENAI_PREFIX", "is_openai_spec", "openai_policy_from_spec"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_TOKEN_ID = re.compile(r"^token_id:(\d+)$")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_header_seconds = header_seconds  # the shared transport's (tests import it from here)


class APIRetryError(PolicyError):
    """Every try of a request failed with a transient error."""


def is_transient(exc: BaseException) -> bool:
    """Whether a request that failed with ``exc`` is retried (429, 5xx, the deadline, a cut-off or
    unusable response)."""
    return isinstance(exc, ServerError) and exc.transient


# ---------------------------------------------------------------------------------------- responses
# What the policy needs of a chat completion, typed; anything else in it is ignored.
class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Function(_Lenient):
    name: StrictStr = Field(min_length=1)
    arguments: Any = None  # a JSON string (OpenAI), or already parsed; bounded in _arguments


class _ToolCall(_Lenient):
    id: StrictStr | None = None
    function: _Function


class _Message(_Lenient):
    content: StrictStr | None = None
    tool_calls: list[_ToolCall] | None = None


class _TokenLogProb(_Lenient):
    token: StrictStr
    logprob: Annotated[float, Strict(), Field(allow_inf_nan=False)]


class _LogProbs(_Lenient):
    content: list[_TokenLogProb] | None = None


class _Choice(_Lenient):
    message: _Message
    finish_reason: StrictStr | None = None
    logprobs: _LogProbs | None = None


class ChatCompletion(_Lenient):
    """A chat-completions response as the policy reads it (``choices[0]``)."""

    choices: list[_Choice] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _not_an_error(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("error") is not None and not data.get("choices"):
            raise ValueError(f"a 200 carrying an error: {_snippet(data['error'])}")
        return data


def _snippet(value: Any, n: int = 200) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)
    return repr(text[:n] + ("..." if len(text) > n else ""))


def _text_depth(text: str) -> int:
    """How deep the brackets of a JSON text nest (strings skipped; no recursion, linear time; an
    over-estimate only for text that is not JSON)."""
    depth = peak = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            peak = max(peak, depth)
        else:
            depth = max(depth - 1, 0)
    return peak


def _value_depth(value: Any) -> int:
    """How deep a parsed JSON value nests (iterative)."""
    peak, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            peak = max(peak, depth)
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            peak = max(peak, depth)
            stack.extend((v, depth + 1) for v in item)
    return peak


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _to_openai_message(message: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in message.items() if v is not None}
    if out.get("tool_calls"):
        out["tool_calls"] = [
            {**c, "id": c.get("id") or f"call_{i}",
             "function": {"name": c["function"]["name"],
                          "arguments": c["function"]["arguments"] if isinstance(c["function"]["arguments"], str)
                          else json.dumps(c["function"]["arguments"])}}
            for i, c in enumerate(out["tool_calls"])]
    elif "tool_calls" in out:
        del out["tool_calls"]
    return out


class OpenAIPolicy(Policy):
    """``model`` at ``base_url``; ``max_concurrency`` requests in flight; ``max_attempts`` tries, each
    with a ``timeout``-second deadline for the whole request. The key is ``api_key``, else
    ``$api_key_env``, else ``"EMPTY"``."""

    token_level = False

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY",
                 max_concurrency: int = 8, max_attempts: int = 6, timeout: float = 60.0,
                 backoff_initial: float = 0.05, backoff_max: float = 8.0, max_retry_after: float = 60.0,
                 logprobs: bool = True, native_tools: bool = True, extra_body: dict[str, Any] | None = None,
                 max_argument_depth: int = 64, max_argument_chars: int = 1_000_000,
                 max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if max_argument_depth < 1 or max_argument_chars < 1:
            raise ValueError(f"max_argument_depth and max_argument_chars must be >= 1, got "
                             f"{max_argument_depth} and {max_argument_chars}")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1024:
            raise ValueError(f"max_response_bytes must be an int >= 1024, got {max_response_bytes!r}")
        self.name = self.model = model
        self.timeout, self.max_response_bytes = float(timeout), max_response_bytes
        key = api_key or (os.environ.get(api_key_env) if api_key_env else None) or "EMPTY"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/") + "/"
        self.transport = HTTPTransport(self.base_url, timeout=self.timeout, api_key=key, attempts=max_attempts,
                                       max_bytes=max_response_bytes, max_retry_after=max_retry_after,
                                       backoff_initial=backoff_initial, backoff_max=backoff_max, jitter=True)
        self.max_attempts = max_attempts
        self.want_logprobs, self.native_tools = logprobs, native_tools
        self.max_argument_depth, self.max_argument_chars = max_argument_depth, max_argument_chars
        self.extra_body = dict(extra_body or {})
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="openai-policy")

    @property
    def attempts(self) -> int:
        """Requests sent, retries included (for metrics and tests)."""
        return self.transport.tries

    def generate(self, conversations: Sequence[Conversation], tools: Any = None,
                 sampling: SamplingParams | None = None, *,
                 prompt_ids: Sequence[Sequence[int] | None] | None = None) -> list[Generation]:
        sampling = sampling or SamplingParams()
        tools_per = per_conversation(tools, len(conversations), "tools")
        futures = [self._pool.submit(self._complete, conv, tools_per[i], sampling)
                   for i, conv in enumerate(conversations)]
        return [f.result() for f in futures]

    # ------------------------------------------------------------------ one request, retried
    def _where(self) -> str:
        return f"{self.model} at {self.base_url}"

    def _request(self, conv: Conversation, tools: Any, sampling: SamplingParams) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "messages": [_to_openai_message(as_chat(m)) for m in conv],
                                   "temperature": sampling.temperature, "top_p": sampling.top_p,
                                   "max_tokens": sampling.max_new_tokens}
        if sampling.seed is not None:
            request["seed"] = sampling.seed
        if self.want_logprobs:
            request["logprobs"] = True
        if tools and self.native_tools:
            request["tools"] = list(tools)
        return {**request, **self.extra_body, **({"top_k": sampling.top_k} if sampling.top_k else {})}

    def _complete(self, conv: Conversation, tools: Any, sampling: SamplingParams) -> Generation:
        request = self._request(conv, tools, sampling)
        try:
            return self.transport.request("POST", "/chat/completions", request, model=ChatCompletion,
                                          convert=self._generation, retry_unusable=True)
        except ServerError as exc:
            if exc.transient:
                raise APIRetryError(f"{self._where()}: gave up after {exc.tries} tries; last error: "
                                    f"{type(exc).__name__}: {exc.detail}") from exc
            if exc.status is not None and exc.status >= 400:  # 401, 403, 400, 404, 422, ...
                raise PolicyError(f"{self._where()}: HTTP {exc.status} (not retried): {exc.reply}") from exc
            raise PolicyError(f"{self._where()}: {exc.detail}; not retried") from exc
        except Exception as exc:  # never a raw exception out of a rollout
            raise PolicyError(f"{self._where()}: unexpected {type(exc).__name__} (not retried): {exc}") from exc

    def _generation(self, out: ChatCompletion) -> Generation:
        choice = out.choices[0]
        msg = choice.message
        calls = [self._tool_call(i, c) for i, c in enumerate(msg.tool_calls or [])]
        text = msg.content or ""
        if calls:  # the env parses text: render native calls the way the tool-call parser reads them
            rendered = "\n".join("<tool_call>" + json.dumps({"name": c.name, "arguments": c.arguments}) +
                                 "</tool_call>" for c in calls)
            text = f"{text}\n{rendered}" if text else rendered
        items = choice.logprobs.content if choice.logprobs is not None else None
        logprobs = [float(item.logprob) for item in items or []]
        tokens = [item.token for item in items or []]
        ids = [int(m.group(1)) if m else None for m in map(_TOKEN_ID.match, tokens)]
        token_ids = ids if ids and all(i is not None for i in ids) else []
        return Generation(text=text, token_ids=token_ids, logprobs=logprobs, tool_calls=calls,
                          finish_reason=choice.finish_reason or "stop", info={"tokens": tokens} if tokens else {})

    def _tool_call(self, i: int, call: _ToolCall) -> ToolCall:
        name = call.function.name
        where = f"choices[0].message.tool_calls[{i}] ({name!r})"
        args = self._arguments(where, call.function.arguments)
        if not isinstance(args, dict):
            args = {"__raw__": args}
        try:
            return ToolCall(name=name, arguments=args, id=call.id)
        except Exception as exc:  # pydantic: arguments that are not JSON values
            raise ValueError(f"{where}: not a valid tool call: {exc}") from None

    def _arguments(self, where: str, raw: Any) -> Any:
        """A tool call's arguments, parsed (a JSON string) and bounded in depth and size."""
        if raw is None or raw == "":  # no arguments: a call of a function without parameters
            return {}
        if isinstance(raw, str):
            if len(raw) > self.max_argument_chars:
                raise ValueError(f"{where}: arguments are {len(raw):,} characters (> max_argument_chars="
                                 f"{self.max_argument_chars:,})")
            depth = _text_depth(raw)
        else:  # a server that sends the arguments already parsed
            depth = _value_depth(raw)
        if depth > self.max_argument_depth:
            raise ValueError(f"{where}: arguments nest {depth} levels deep (> max_argument_depth="
                             f"{self.max_argument_depth})")
        if isinstance(raw, str):
            try:
                return json.loads(raw, parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                return {"__raw__": raw}  # not JSON: the env reports it; never guessed
        try:
            size = len(json.dumps(raw, allow_nan=False))
        except ValueError:
            raise ValueError(f"{where}: arguments hold a non-finite number (NaN / Infinity is not JSON)") from None
        if size > self.max_argument_chars:
            raise ValueError(f"{where}: arguments are {size:,} characters as JSON (> max_argument_chars="
                             f"{self.max_argument_chars:,})")
        return raw

    def check_server(self, timeout: float = 10.0) -> None:
        """Raise a one-line ``ServerError`` when nothing answers at the base URL: the connection is
        refused, the host is unknown or no connection opens within ``timeout`` seconds (at most the
        request deadline). Any HTTP answer passes, an error status included (a server that does not
        serve ``/models`` or wants another key is there: the requests themselves say what is wrong).
        ``agentgym eval --model openai:NAME`` and the ``openai`` teacher call it before the first
        episode, so a wrong ``--base-url`` stops the run at once instead of after every retry."""
        try:
            self.transport.request("GET", "/models", timeout=min(self.timeout, timeout), retry=False)
        except ServerError as exc:
            if isinstance(exc.cause, (httpx2.ConnectError, httpx2.ConnectTimeout)):
                raise ServerError(f"cannot reach the OpenAI-compatible server at {self.base_url} "
                                  f"({type(exc.cause).__name__}: {exc.cause}); is it running, and is the base URL "
                                  "right?", transient=True) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.transport.close()


# ---------------------------------------------------------------------------------------- model specs
OPENAI_PREFIX = "openai:"


def is_openai_spec(spec: Any) -> bool:
    """Whether ``spec`` names a model behind an OpenAI-compatible API (``openai:NAME``)."""
    return isinstance(spec, str) and spec.startswith(OPENAI_PREFIX)


def openai_policy_from_spec(spec: str, *, base_url: str | None = None, api_key: str | None = None,
                            api_key_env: str | None = "OPENAI_API_KEY", timeout: float = 60.0,
                            max_concurrency: int = 8, max_attempts: int = 6, **kwargs: Any) -> OpenAIPolicy:
    """The ``OpenAIPolicy`` of a model spec ``openai:NAME`` (NAME is the model name the endpoint
    serves; it may contain ``/`` and ``:``): ``base_url`` (None: the ``openai`` client's default, i.e.
    ``$OPENAI_BASE_URL`` or api.openai.com), the key from ``api_key``, else ``$api_key_env``, else
    ``"EMPTY"``; ``timeout`` seconds per request (whole-request deadline), ``max_concurrency``
    requests in flight, ``max_attempts`` tries of a transient failure. Further keyword arguments go to
    ``OpenAIPolicy``.

    >>> openai_policy_from_spec("gpt-4o")
    Traceback (most recent call last):
    ...
    ValueError: model spec 'gpt-4o' does not name an OpenAI-compatible model: write openai:NAME (e.g. openai:gpt-4o-mini)
    """
    if not is_openai_spec(spec):
        raise ValueError(f"model spec {spec!r} does not name an OpenAI-compatible model: write "
                         f"{OPENAI_PREFIX}NAME (e.g. {OPENAI_PREFIX}gpt-4o-mini)")
    name = spec[len(OPENAI_PREFIX):].strip()
    if not name:
        raise ValueError(f"model spec {spec!r}: the model name after {OPENAI_PREFIX!r} is empty")
    if base_url is not None:
        if not isinstance(base_url, str) or not re.match(r"^https?://[^\s/]+", base_url):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    return OpenAIPolicy(name, base_url=base_url, api_key=api_key, api_key_env=api_key_env, timeout=timeout,
                        max_concurrency=max_concurrency, max_attempts=max_attempts, **kwargs)
