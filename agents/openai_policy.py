"""A policy behind any OpenAI-compatible chat-completions API (OpenAI, vLLM serve, SGLang, ...).

One retry layer (tenacity; the ``openai`` client's own retries are switched off so that retries do
not multiply): 429, 5xx, timeouts, connection errors and unreadable responses are retried with
exponential back-off, honouring ``Retry-After`` (a header that is not a finite, non-negative number
of seconds or an HTTP date is ignored); after the last try ``APIRetryError`` says what failed and
how often. Other 4xx (401, 400, 404, ...) are not retried: they raise ``PolicyError`` at once with
the server's message.

Every request has one deadline, ``timeout`` seconds, covering connect, send and the whole body (each
socket read and write is bounded by what is left of it, so a server that drips one byte at a time
cannot hold a request open): past it the try fails with ``DeadlineExceeded`` and is retried. The
bytes a response may put on the wire are capped (``max_response_bytes``, default 32 MiB): past it the
request fails at once with ``PolicyError`` (not retried). Both come from the shared transport
(``agentgym.agents.transport``), which the ``vllm_server`` backend uses too.

A 200 response is checked before it is used; anything malformed (not JSON, cut off, missing or null
fields, a tool call without a name, a non-finite or missing log-prob, tool arguments nested deeper
than ``max_argument_depth`` or longer than ``max_argument_chars``) is a ``MalformedResponseError``
that says what was wrong, and is retried like any unreadable response. No other exception leaves
``generate``: whatever fails is a ``PolicyError``.

Native tool calls come back as ``Generation.tool_calls`` and are also rendered into the action text
as ``<tool_call>{...}</tool_call>`` lines (what agentgym envs parse); arguments that are not a JSON
object come back as ``{"__raw__": ...}`` for the env to report. Log-probs are requested with
``logprobs=True`` and kept when the server returns them; a vLLM server started with
``--return-tokens-as-token-ids`` also gives the token ids.

The API key is ``api_key``, else the environment variable ``api_key_env`` (``OPENAI_API_KEY``), else
``"EMPTY"`` (what local vLLM / SGLang servers accept).

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
from typing import Any, Sequence

from agentgym.agents.base import Conversation, Generation, Policy, PolicyError, SamplingParams, as_chat, per_conversation
from agentgym.agents.transport import (DEFAULT_MAX_RESPONSE_BYTES, deadline_client, header_seconds, request_deadline,
                                       retry_after_seconds, too_large, ServerError)
from agentgym.types import ToolCall

__all__ = ["OpenAIPolicy", "APIRetryError", "DeadlineExceeded", "TransportError", "MalformedResponseError",
           "is_transient", "OPENAI_PREFIX", "is_openai_spec", "openai_policy_from_spec"]

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class APIRetryError(PolicyError):
    """Every try of a request failed with a transient error."""


class DeadlineExceeded(PolicyError):
    """No complete response within the request deadline (retried)."""


class TransportError(PolicyError):
    """The connection failed or the response was cut off (retried)."""


class MalformedResponseError(PolicyError):
    """A 200 response whose body could not be used: not JSON, cut off, or missing / invalid fields
    (retried)."""


_Unreadable = MalformedResponseError  # the old private name


def is_transient(exc: BaseException) -> bool:
    import openai
    if isinstance(exc, (DeadlineExceeded, TransportError, MalformedResponseError)):
        return True
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                        openai.InternalServerError, openai.APIResponseValidationError, json.JSONDecodeError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return False


# ---------------------------------------------------------------------------------------- transport
# The deadline-bounded HTTP client and the Retry-After parsing are the shared transport's
# (agentgym.agents.transport), which VLLMServerPolicy uses too.
_header_seconds = header_seconds


def _retry_after(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    return retry_after_seconds(getattr(response, "headers", None))


# ---------------------------------------------------------------------------------------- parsing
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
        import openai

        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if max_argument_depth < 1 or max_argument_chars < 1:
            raise ValueError(f"max_argument_depth and max_argument_chars must be >= 1, got "
                             f"{max_argument_depth} and {max_argument_chars}")
        self.name = model
        self.model = model
        self.timeout = float(timeout)
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1024:
            raise ValueError(f"max_response_bytes must be an int >= 1024, got {max_response_bytes!r}")
        self.max_response_bytes = max_response_bytes
        key = api_key or (os.environ.get(api_key_env) if api_key_env else None) or "EMPTY"
        self.client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=self.timeout,
                                    http_client=deadline_client(self.timeout))
        self.max_attempts, self.backoff_initial, self.backoff_max = max_attempts, backoff_initial, backoff_max
        self.max_retry_after = max_retry_after
        self.want_logprobs, self.native_tools = logprobs, native_tools
        self.max_argument_depth, self.max_argument_chars = max_argument_depth, max_argument_chars
        self.extra_body = dict(extra_body or {})
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="openai-policy")
        self.attempts = 0  # requests sent, retries included (for metrics and tests)

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
        return f"{self.model} at {self.client.base_url}"

    def _wait(self, state: Any) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = _retry_after(exc)
        if hinted is not None:
            return min(max(hinted, 0.0), self.max_retry_after)
        from tenacity import wait_random_exponential
        return wait_random_exponential(multiplier=self.backoff_initial, max=self.backoff_max)(state)

    def _complete(self, conv: Conversation, tools: Any, sampling: SamplingParams) -> Generation:
        import openai
        from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt

        request: dict[str, Any] = {"model": self.model, "messages": [_to_openai_message(as_chat(m)) for m in conv],
                                   "temperature": sampling.temperature, "top_p": sampling.top_p,
                                   "max_tokens": sampling.max_new_tokens}
        if sampling.seed is not None:
            request["seed"] = sampling.seed
        if self.want_logprobs:
            request["logprobs"] = True
        if tools and self.native_tools:
            request["tools"] = list(tools)
        extra = dict(self.extra_body)
        if sampling.top_k:
            extra["top_k"] = sampling.top_k
        retrying = Retrying(retry=retry_if_exception(is_transient), stop=stop_after_attempt(self.max_attempts),
                            wait=self._wait, reraise=False)
        try:
            for attempt in retrying:
                with attempt:
                    self.attempts += 1
                    return self._parse(self._send(request, extra))
        except RetryError as err:
            last = err.last_attempt.exception()
            raise APIRetryError(
                f"{self._where()}: gave up after {self.max_attempts} tries; "
                f"last error: {type(last).__name__}: {last}") from last
        except openai.APIStatusError as exc:  # not transient: 401, 403, 400, 404, 422, ...
            raise PolicyError(f"{self._where()}: HTTP {exc.status_code} (not retried): {exc.message}") from exc
        except PolicyError:
            raise
        except Exception as exc:  # never a raw exception out of a rollout
            raise PolicyError(f"{self._where()}: unexpected {type(exc).__name__} (not retried): {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(self, request: dict[str, Any], extra: dict[str, Any]) -> bytes:
        """One try: the raw 200 body, read within the deadline."""
        import openai

        with request_deadline(self.timeout, self.max_response_bytes) as deadline:
            try:
                raw = self.client.chat.completions.with_raw_response.create(**request, extra_body=extra or None)
                return raw.content
            except openai.APITimeoutError as exc:
                raise DeadlineExceeded(
                    f"no complete response within the {self.timeout:g} s request deadline (connect, send and the "
                    f"whole body; gave up after {deadline.elapsed:.2f} s)") from exc
            except openai.APIConnectionError as exc:  # refused, reset, cut off, unparseable HTTP
                if too_large(exc) is not None:  # not transient: the same request would get the same answer
                    raise PolicyError(f"{self._where()}: the response is over the {self.max_response_bytes:,}-byte "
                                      "limit (max_response_bytes); not retried") from None
                cause = exc.__cause__ or exc.__context__
                detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
                raise TransportError(f"connection failed or the response was cut off: {detail}") from exc

    def _parse(self, body: bytes) -> Generation:
        def bad(what: str) -> MalformedResponseError:
            return MalformedResponseError(f"malformed response: {what}")

        if not body:
            raise bad("empty body")
        try:
            data = json.loads(body)
        except RecursionError:
            raise bad("the body nests too deeply to parse") from None
        except ValueError as exc:
            raise bad(f"the body is not JSON ({exc}): {_snippet(body)}") from None
        if not isinstance(data, dict):
            raise bad(f"the body is a JSON {type(data).__name__}, not an object: {_snippet(body)}")
        if data.get("error") is not None and not data.get("choices"):
            raise bad(f"a 200 carrying an error: {_snippet(data['error'])}")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad(f"'choices' is {_snippet(choices, 60) if 'choices' in data else 'missing'}, "
                      f"not a non-empty list")
        choice = choices[0]
        if not isinstance(choice, dict):
            raise bad(f"choices[0] is a {type(choice).__name__}, not an object")
        msg = choice.get("message")
        if not isinstance(msg, dict):
            raise bad(f"choices[0].message is {'missing' if 'message' not in choice else _snippet(msg, 60)}, "
                      f"not an object")
        content = msg.get("content")
        if content is not None and not isinstance(content, str):
            raise bad(f"message.content is a {type(content).__name__}, not a string or null")
        finish = choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            raise bad(f"finish_reason is a {type(finish).__name__}, not a string or null")

        raw_calls = msg.get("tool_calls")
        if raw_calls is not None and not isinstance(raw_calls, list):
            raise bad(f"message.tool_calls is a {type(raw_calls).__name__}, not a list or null")
        calls = [self._tool_call(i, c, bad) for i, c in enumerate(raw_calls or [])]

        text = content or ""
        if calls:  # the env parses text: render native calls the way the tool-call parser reads them
            rendered = "\n".join("<tool_call>" + json.dumps({"name": c.name, "arguments": c.arguments}) +
                                 "</tool_call>" for c in calls)
            text = f"{text}\n{rendered}" if text else rendered

        logprobs, tokens, ids = [], [], []
        lp_block = choice.get("logprobs")
        if lp_block is not None and not isinstance(lp_block, dict):
            raise bad(f"choices[0].logprobs is a {type(lp_block).__name__}, not an object or null")
        items = (lp_block or {}).get("content")
        if items is not None and not isinstance(items, list):
            raise bad(f"logprobs.content is a {type(items).__name__}, not a list or null")
        for i, item in enumerate(items or []):
            if not isinstance(item, dict):
                raise bad(f"logprobs.content[{i}] is a {type(item).__name__}, not an object")
            lp, token = item.get("logprob"), item.get("token")
            if not _is_number(lp):
                raise bad(f"logprobs.content[{i}].logprob is {'missing' if 'logprob' not in item else repr(lp)}, "
                          f"not a number")
            if not math.isfinite(lp):
                raise bad(f"logprobs.content[{i}].logprob is {lp!r}, not a finite number")
            if not isinstance(token, str):
                raise bad(f"logprobs.content[{i}].token is {'missing' if 'token' not in item else repr(token)}, "
                          f"not a string")
            logprobs.append(float(lp))
            tokens.append(token)
            m = _TOKEN_ID.match(token)
            ids.append(int(m.group(1)) if m else None)
        token_ids = ids if ids and all(i is not None for i in ids) else []
        return Generation(text=text, token_ids=token_ids, logprobs=logprobs, tool_calls=calls,
                          finish_reason=finish or "stop", info={"tokens": tokens} if tokens else {})

    def _tool_call(self, i: int, call: Any, bad: Any) -> ToolCall:
        where = f"tool_calls[{i}]"
        if not isinstance(call, dict):
            raise bad(f"{where} is a {type(call).__name__}, not an object")
        function = call.get("function")
        if not isinstance(function, dict):
            raise bad(f"{where}.function is {'missing' if 'function' not in call else _snippet(function, 60)}, "
                      f"not an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise bad(f"{where}.function.name is {'missing' if 'name' not in function else repr(name)}, "
                      f"not a non-empty string")
        call_id = call.get("id")
        if call_id is not None and not isinstance(call_id, str):
            raise bad(f"{where}.id is a {type(call_id).__name__}, not a string or null")
        where = f"{where} ({name!r})"
        raw = function.get("arguments")
        if raw is None or raw == "":  # no arguments: a call of a function without parameters
            args: Any = {}
        elif isinstance(raw, str):
            if len(raw) > self.max_argument_chars:
                raise bad(f"{where}: arguments are {len(raw):,} characters (> max_argument_chars="
                          f"{self.max_argument_chars:,})")
            depth = _text_depth(raw)
            if depth > self.max_argument_depth:
                raise bad(f"{where}: arguments nest {depth} levels deep (> max_argument_depth="
                          f"{self.max_argument_depth})")
            try:
                args = json.loads(raw, parse_constant=_reject_constant)
            except (ValueError, RecursionError):
                args = {"__raw__": raw}  # not JSON: the env reports it; never guessed
        else:  # a server that sends the arguments already parsed
            depth = _value_depth(raw)
            if depth > self.max_argument_depth:
                raise bad(f"{where}: arguments nest {depth} levels deep (> max_argument_depth="
                          f"{self.max_argument_depth})")
            try:
                size = len(json.dumps(raw, allow_nan=False))
            except ValueError:
                raise bad(f"{where}: arguments hold a non-finite number (NaN / Infinity is not JSON)") from None
            if size > self.max_argument_chars:
                raise bad(f"{where}: arguments are {size:,} characters as JSON (> max_argument_chars="
                          f"{self.max_argument_chars:,})")
            args = raw
        if not isinstance(args, dict):
            args = {"__raw__": args}
        try:
            return ToolCall(name=name, arguments=args, id=call_id)
        except Exception as exc:  # pydantic: arguments that are not JSON values
            raise bad(f"{where}: not a valid tool call: {exc}") from None

    def check_server(self, timeout: float = 10.0) -> None:
        """Raise a one-line ``ServerError`` when nothing answers at the base URL: the connection is
        refused, the host is unknown or no connection opens within ``timeout`` seconds (at most the
        request deadline). Any HTTP answer passes, an error status included (a server that does not
        serve ``/models`` or wants another key is there: the requests themselves say what is wrong).
        ``agentgym eval --model openai:NAME`` and the ``openai`` teacher call it before the first
        episode, so a wrong ``--base-url`` stops the run at once instead of after every retry."""
        import httpx2
        import openai

        with request_deadline(min(self.timeout, timeout), self.max_response_bytes):
            try:
                self.client.models.list()
            except openai.APIConnectionError as exc:
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, (httpx2.ConnectError, httpx2.ConnectTimeout)):
                    detail = f"{type(cause).__name__}: {cause}"
                    raise ServerError(f"cannot reach the OpenAI-compatible server at {self.client.base_url} "
                                      f"({detail}); is it running, and is the base URL right?",
                                      transient=True) from None
            except openai.APIError:  # it answered: an error status or a body that is not a model list
                pass

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


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
