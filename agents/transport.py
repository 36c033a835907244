"""The one HTTP transport of the OpenAI-compatible clients (``OpenAIPolicy``: chat completions;
``VLLMServerPolicy``: completions, model lists, weight pushes; ``launch_vllm_server``: ``/health``):

- one deadline for the whole request: connect, send, the status line, the headers and the whole
  body. Every socket connect / read / write is bounded by what is left of it (``deadline_client``),
  so a server that drips one byte at a time cannot hold a request past it;
- retries of transient failures (connection errors, the deadline, HTTP 429 and 5xx, and with
  ``retry_unusable`` a response that cannot be used) with exponential back-off, honouring
  ``Retry-After`` / ``retry-after-ms`` (a value that is not a finite, non-negative number of seconds
  or an HTTP date is ignored; capped by ``max_retry_after``); other 4xx are not retried;
- a cap on the response size (``max_bytes``; the declared ``Content-Length`` is checked before
  the body is read, and the body is counted as it arrives, decompressed);
- a typed response: the JSON body validated with a pydantic model (then ``convert``), a failure
  being one line that names the server, the endpoint and the field (``choices[0].token_ids[3]: ...``).

Every failure is a ``ServerError`` (a ``PolicyError``), typed by what failed (``DeadlineExceeded``,
``TransportError``, ``MalformedResponseError``, ``RateLimitError``, ``InternalServerError``):
``status`` is the HTTP status when the server answered, ``transient`` whether it was retried,
``tries`` how many tries were made.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import threading
import time
import warnings
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import httpcore2
import httpx2
from pydantic import BaseModel, ValidationError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random_exponential

from agentgym.agents.base import PolicyError

__all__ = ["HTTPTransport", "ServerError", "DeadlineExceeded", "TransportError", "MalformedResponseError",
           "RateLimitError", "InternalServerError", "deadline_client", "header_seconds", "retry_after_seconds",
           "request_deadline", "too_large", "ResponseTooLarge", "field_path", "DEFAULT_MAX_RESPONSE_BYTES"]

DEFAULT_MAX_RESPONSE_BYTES = 32 << 20
_DELTA_SECONDS = re.compile(r"^\d+(?:\.\d+)?$")


class ServerError(PolicyError):
    """A server request failed (after the retries, for transient failures) or its response could not
    be used. ``status``: the HTTP status when the server answered; ``transient``: whether it was
    retried; ``tries``: how many tries were made; ``where``: ``METHOD URL`` and ``detail`` the rest of
    the message; ``reply``: the start of an error response's body; ``cause``: the HTTP library's
    exception, if any."""

    def __init__(self, message: str, status: int | None = None, *, transient: bool = False,
                 retry_after: float | None = None, where: str = "", tries: int = 1, reply: str = "",
                 cause: BaseException | None = None):
        gave_up = f" (gave up after {tries} tries)" if tries > 1 else ""
        super().__init__(f"{where}: {message}{gave_up}" if where else f"{message}{gave_up}")
        self.status, self.transient, self.retry_after = status, transient, retry_after
        self.where, self.detail, self.tries, self.reply, self.cause = where, message, tries, reply, cause

    def after(self, tries: int) -> "ServerError":
        """The same failure, saying how many tries were made."""
        return type(self)(self.detail, self.status, transient=self.transient, retry_after=self.retry_after,
                          where=self.where, tries=tries, reply=self.reply, cause=self.cause)


class DeadlineExceeded(ServerError):
    """No complete response within the request deadline (transient)."""


class TransportError(ServerError):
    """The connection failed or the response was cut off (transient)."""


class MalformedResponseError(ServerError):
    """A response whose body could not be used: not JSON, or missing / invalid fields (transient where
    the request said ``retry_unusable``)."""


class RateLimitError(ServerError):
    """HTTP 429 (transient; named as the ``openai`` client names it)."""


class InternalServerError(ServerError):
    """HTTP 5xx (transient; named as the ``openai`` client names it)."""


# ---------------------------------------------------------------------------------------- Retry-After
def header_seconds(value: str, scale: float) -> float | None:
    """A delay header as seconds: a finite non-negative number (times ``scale``), or for
    ``Retry-After`` an HTTP date; anything else (``nan``, ``inf``, ``-5``, ``soon``) is None."""
    value = value.strip()
    if _DELTA_SECONDS.match(value):
        seconds = float(value) * scale
        return seconds if math.isfinite(seconds) else None
    if scale != 1.0:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """The delay a response asks for (``retry-after-ms``, else ``retry-after``), or None."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            value = headers.get(name)
        except Exception:  # noqa: BLE001 - undecodable header bytes
            value = None
        if isinstance(value, str):
            seconds = header_seconds(value, scale)
            if seconds is not None:
                return seconds
    return None


# ---------------------------------------------------------------------------------------- deadline
_DEADLINE = threading.local()  # .at: time.monotonic() by which the current request must be done


class request_deadline:
    """``with request_deadline(seconds, max_bytes):`` bounds every socket operation of this thread's
    requests made through a ``deadline_client`` by one deadline, and the bytes they may read (status
    line, headers and body as they come off the wire) by ``max_bytes`` (``ResponseTooLarge``)."""

    def __init__(self, seconds: float, max_bytes: int | None = None):
        self.seconds, self.max_bytes = seconds, max_bytes

    def __enter__(self) -> "request_deadline":
        self.started = time.monotonic()
        _DEADLINE.at = self.started + self.seconds
        _DEADLINE.cap, _DEADLINE.read = self.max_bytes, 0
        return self

    def __exit__(self, *exc: Any) -> None:
        _DEADLINE.at = _DEADLINE.cap = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` for one socket operation, cut to what is left of this thread's request deadline."""
    at = getattr(_DEADLINE, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise error("request deadline exceeded")
    return left if timeout is None else min(timeout, left)


class ResponseTooLarge(httpcore2.ReadError):  # an httpcore read error, so httpx and openai map it as one
    """More bytes than ``request_deadline``'s ``max_bytes`` came off the wire."""


def _counted(data: bytes) -> bytes:
    cap = getattr(_DEADLINE, "cap", None)
    if cap is not None:
        _DEADLINE.read += len(data)
        if _DEADLINE.read > cap:
            raise ResponseTooLarge(f"the response is over the {cap:,}-byte limit")
    return data


def _deadline_backend(inner: Any) -> Any:
    """An httpcore network backend whose streams bound every connect / read / write by the deadline,
    and the bytes read by the size cap."""

    class Stream(httpcore2.NetworkStream):
        def __init__(self, stream: Any):
            self._stream = stream

        def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
            return _counted(self._stream.read(max_bytes, _bounded(timeout, httpcore2.ReadTimeout)))

        def write(self, buffer: bytes, timeout: float | None = None) -> None:
            self._stream.write(buffer, _bounded(timeout, httpcore2.WriteTimeout))

        def close(self) -> None:
            self._stream.close()

        def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None):
            return Stream(self._stream.start_tls(ssl_context, server_hostname,
                                                 _bounded(timeout, httpcore2.ConnectTimeout)))

        def get_extra_info(self, info: str) -> Any:
            return self._stream.get_extra_info(info)

    class Backend(httpcore2.NetworkBackend):
        def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
            return Stream(inner.connect_tcp(host, port, _bounded(timeout, httpcore2.ConnectTimeout),
                                            local_address, socket_options))

        def connect_unix_socket(self, path, timeout=None, socket_options=None):
            return Stream(inner.connect_unix_socket(path, _bounded(timeout, httpcore2.ConnectTimeout),
                                                    socket_options))

        def sleep(self, seconds: float) -> None:
            inner.sleep(seconds)

    return Backend()


def deadline_client(timeout: float) -> Any:
    """The ``openai`` client's default HTTP client (proxies from the environment included), its
    connection pools given the deadline-bounded network backend (see ``request_deadline``)."""
    import openai  # heavy (~1 s): only once a transport sends its first request

    client = openai.DefaultHttpxClient(timeout=timeout)
    pools = [getattr(t, "_pool", None) for t in [client._transport, *client._mounts.values()] if t is not None]
    wrapped = 0
    for pool in pools:
        if pool is not None and hasattr(pool, "_network_backend"):
            pool._network_backend = _deadline_backend(pool._network_backend)
            wrapped += 1
    if wrapped == 0:  # an httpx2 / httpcore2 whose internals moved: fall back to per-operation timeouts
        warnings.warn("cannot install the whole-request deadline on this httpx2 version; each connect / "
                      "read / write is bounded by `timeout`, the request as a whole is not",
                      RuntimeWarning, stacklevel=3)
    return client


def too_large(exc: BaseException | None) -> BaseException | None:
    """The ``ResponseTooLarge`` in ``exc``'s chain of causes (how httpx and openai wrap it), or None."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ResponseTooLarge):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


# ---------------------------------------------------------------------------------------- validation
def field_path(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a path: ``("choices", 0, "token_ids", 3)`` -> ``choices[0].token_ids[3]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the body"


def describe(exc: ValidationError) -> str:
    """The first error of a response validation in one line (the field, what is wrong, the value)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    value = first.get("input")
    if isinstance(value, (dict, list)):
        shown = " (got an object)" if isinstance(value, dict) else f" (got a list of {len(value)})"
    else:
        shown = f" (got {json.dumps(value) if _jsonable(value) else repr(value)[:60]})"
    more = f"; and {len(errors) - 1} more" if len(errors) > 1 else ""
    return f"{field_path(tuple(first.get('loc', ())))}: {first.get('msg')}{shown[:80]}{more}"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------------------------- transport
class HTTPTransport:
    """Requests to one server at ``root`` (``http://host:port``, or a base such as ``.../v1``): see the
    module docstring. ``attempts``: tries of a transient failure; back-off ``backoff_initial`` *
    2**(try - 1) seconds up to ``backoff_max`` (``jitter``: a random wait up to that), or what the
    server's ``Retry-After`` asks, up to ``max_retry_after``. ``tries`` counts every try sent."""

    def __init__(self, root: str, *, timeout: float, api_key: str | None = None, attempts: int = 3,
                 max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES, max_retry_after: float = 30.0,
                 backoff_initial: float = 0.2, backoff_max: float = 2.0, jitter: bool = False):
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1024:
            raise ValueError(f"max_bytes must be an int >= 1024, got {max_bytes!r}")
        self.root = root.rstrip("/")
        self.timeout, self.api_key, self.attempts = float(timeout), api_key, attempts
        self.max_bytes, self.max_retry_after = max_bytes, max_retry_after
        backoff = wait_random_exponential if jitter else wait_exponential
        self._backoff = backoff(multiplier=backoff_initial, max=backoff_max)
        self.tries = 0
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = deadline_client(self.timeout)
            return self._client

    def request(self, method: str, path: str, body: Any = None, *, model: type[BaseModel] | None = None,
                convert: Callable[[Any], Any] | None = None, timeout: float | None = None, retry: bool = True,
                retry_unusable: bool = False) -> Any:
        """``method path`` with a JSON ``body``; the response validated by ``model`` (JSON required) and
        passed through ``convert`` (a ``ValueError`` there: the response is unusable), else the parsed
        JSON (or the text of a non-JSON response, None when empty). Transient failures are retried
        (``retry``), and so is a response that cannot be used if ``retry_unusable``."""
        where = f"{method} {self.root}{path}"
        retrying = Retrying(retry=retry_if_exception(lambda e: isinstance(e, ServerError) and e.transient),
                            stop=stop_after_attempt(self.attempts if retry else 1), wait=self._wait, reraise=True)
        tries = 0
        try:
            for attempt in retrying:
                with attempt:
                    tries += 1
                    with self._lock:
                        self.tries += 1
                    status, ctype, raw = self._send(method, path, body, timeout or self.timeout, where)
                    return self._decode(raw, ctype, model, convert, where, retry_unusable)
        except ServerError as exc:
            raise (exc.after(tries) if exc.transient and tries > 1 else exc) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: Any) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = getattr(exc, "retry_after", None)
        if hinted is not None:
            return min(max(hinted, 0.0), self.max_retry_after)
        return self._backoff(state)

    def _send(self, method: str, path: str, body: Any, timeout: float, where: str) -> tuple[int, str, bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        over = f"the response is over the {self.max_bytes:,}-byte limit (max_response_bytes)"
        with request_deadline(timeout, self.max_bytes + 65_536) as deadline:  # the body's cap plus headers
            try:
                with self.client.stream(method, self.root + path, content=data, headers=headers,
                                        timeout=timeout) as resp:
                    declared = resp.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > self.max_bytes:
                        raise ServerError(f"the response declares {int(declared):,} bytes, over the "
                                          f"{self.max_bytes:,}-byte limit (max_response_bytes)", resp.status_code,
                                          where=where)
                    chunks, size = [], 0
                    for chunk in resp.iter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise ServerError(over, resp.status_code, where=where)
                        chunks.append(chunk)
                    raw = b"".join(chunks)
                    status, ctype = resp.status_code, resp.headers.get("content-type", "")
                    retry_after = retry_after_seconds(resp.headers)
            except httpx2.TimeoutException as exc:
                raise DeadlineExceeded(f"no complete response within the {timeout:g} s request deadline (connect, "
                                       f"send and the whole body; gave up after {deadline.elapsed:.2f} s)",
                                       transient=True, where=where, cause=exc) from None
            except httpx2.HTTPError as exc:  # refused, reset, cut off, unparseable HTTP
                if too_large(exc) is not None:  # a compressed body can only be capped as it arrives
                    raise ServerError(over, where=where) from None
                raise TransportError(f"connection failed or the response was cut off: {type(exc).__name__}: {exc}",
                                     transient=True, where=where, cause=exc) from None
        if status >= 400:
            text = raw[:500].decode("utf-8", "replace")
            error = RateLimitError if status == 429 else InternalServerError if status >= 500 else ServerError
            raise error(f"HTTP {status}: {text}", status, transient=status == 429 or status >= 500,
                        retry_after=retry_after, where=where, reply=text)
        return status, ctype, raw

    def _decode(self, raw: bytes, ctype: str, model: type[BaseModel] | None, convert: Callable[[Any], Any] | None,
                where: str, retry: bool) -> Any:
        def unusable(what: str) -> MalformedResponseError:
            return MalformedResponseError(what, transient=retry, where=where)

        if model is None and "json" not in ctype:
            return raw.decode("utf-8", "replace") if raw else None
        if not raw:
            if model is None:
                return None
            raise unusable("the response body is empty")
        try:
            data = json.loads(raw)
        except RecursionError:
            raise unusable("the response nests too deeply to parse") from None
        except ValueError as exc:
            raise unusable(f"the response is not JSON ({exc}): {raw[:120]!r}") from None
        if model is None:
            return data
        try:
            value = model.model_validate(data)
            return value if convert is None else convert(value)
        except ValidationError as exc:
            raise unusable(f"unusable response: {describe(exc)}") from None
        except RecursionError:
            raise unusable("the response nests too deeply to validate") from None
        except ValueError as exc:  # convert's
            raise unusable(f"unusable response: {exc}") from None

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
