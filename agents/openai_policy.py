"""A policy behind any OpenAI-compatible chat-completions API (OpenAI, vLLM serve, SGLang, ...).

One retry layer (tenacity; the ``openai`` client's own retries are switched off so that retries do
not multiply): 429, 5xx, timeouts, connection errors and unreadable responses are retried with
exponential back-off, honouring ``Retry-After``; after the last try ``APIRetryError`` says what
failed and how often. Other 4xx (401, 400, 404, ...) are not retried: they raise ``PolicyError``
at once with the server's message. Native tool calls come back as ``Generation.tool_calls`` and are
also rendered into the action text as ``<tool_call>{...}</tool_call>`` lines (what agentgym envs
parse). Log-probs are requested with ``logprobs=True`` and kept when the server returns them; a
vLLM server started with ``--return-tokens-as-token-ids`` also gives the token ids.

>>> from agentgym.testing.openai_server import ScriptedOpenAIServer, Reply
>>> with ScriptedOpenAIServer(responder=lambda body: Reply(content="hi!")) as server:
...     policy = OpenAIPolicy("m", base_url=server.base_url, api_key="k")
...     policy.generate([[{"role": "user", "content": "hello"}]])[0].text
'hi!'
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from agentgym.agents.base import Conversation, Generation, Policy, PolicyError, SamplingParams, as_chat, per_conversation
from agentgym.types import ToolCall

__all__ = ["OpenAIPolicy", "APIRetryError", "is_transient"]

_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


class APIRetryError(PolicyError):
    """Every try of a request failed with a transient error."""


def is_transient(exc: BaseException) -> bool:
    import openai
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError,
                        openai.InternalServerError, openai.APIResponseValidationError, json.JSONDecodeError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, _Unreadable)


class _Unreadable(Exception):
    """A 200 response whose body could not be used (malformed or cut off)."""


def _retry_after(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: fall back to back-off
        return None


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
    """``model`` at ``base_url``; ``max_concurrency`` requests in flight; ``max_attempts`` tries."""

    token_level = False

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 8, max_attempts: int = 6, timeout: float = 60.0,
                 backoff_initial: float = 0.05, backoff_max: float = 8.0, max_retry_after: float = 60.0,
                 logprobs: bool = True, native_tools: bool = True, extra_body: dict[str, Any] | None = None):
        import openai

        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.name = model
        self.model = model
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", max_retries=0, timeout=timeout)
        self.max_attempts, self.backoff_initial, self.backoff_max = max_attempts, backoff_initial, backoff_max
        self.max_retry_after = max_retry_after
        self.want_logprobs, self.native_tools = logprobs, native_tools
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
                    response = self.client.chat.completions.create(**request, extra_body=extra or None)
                    return self._parse(response)
        except RetryError as err:
            last = err.last_attempt.exception()
            raise APIRetryError(
                f"{self.model} at {self.client.base_url}: gave up after {self.max_attempts} tries; "
                f"last error: {type(last).__name__}: {last}") from last
        except openai.APIStatusError as exc:  # not transient: 401, 403, 400, 404, 422, ...
            raise PolicyError(f"{self.model} at {self.client.base_url}: HTTP {exc.status_code} "
                              f"(not retried): {exc.message}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _parse(self, response: Any) -> Generation:
        choices = getattr(response, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise _Unreadable(f"response has no choices/message: {str(response)[:200]}")
        choice = choices[0]
        msg = choice.message
        calls = []
        for call in msg.tool_calls or []:
            try:
                args = json.loads(call.function.arguments or "{}")
            except json.JSONDecodeError:
                args = {"__raw__": call.function.arguments}  # the env reports it; never guessed
            calls.append(ToolCall(name=call.function.name, arguments=args if isinstance(args, dict) else
                                  {"__raw__": args}, id=call.id))
        text = msg.content or ""
        if calls:  # the env parses text: render native calls the way the tool-call parser reads them
            rendered = "\n".join("<tool_call>" + json.dumps({"name": c.name, "arguments": c.arguments}) +
                                 "</tool_call>" for c in calls)
            text = f"{text}\n{rendered}" if text else rendered
        logprobs, tokens, ids = [], [], []
        content = getattr(getattr(choice, "logprobs", None), "content", None) or []
        for item in content:
            logprobs.append(float(item.logprob))
            tokens.append(item.token)
            m = _TOKEN_ID.match(item.token or "")
            ids.append(int(m.group(1)) if m else None)
        token_ids = ids if ids and all(i is not None for i in ids) else []
        return Generation(text=text, token_ids=token_ids, logprobs=logprobs, tool_calls=calls,
                          finish_reason=choice.finish_reason or "stop",
                          info={"tokens": tokens} if tokens else {})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
