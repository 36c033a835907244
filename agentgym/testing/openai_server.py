"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1 (standard library only).

It is a real HTTP server (threaded, one thread per connection) that the ``openai`` client talks to
unchanged. Replies come from a *responder* (a function of the request body, so concurrent and
retried requests get the same answer) or from a FIFO queue; faults come from a queue or a seeded
transient-fault rate, independent of the replies, so a faulty run and a fault-free run see the
same scripted answers.

>>> from openai import OpenAI
>>> with ScriptedOpenAIServer(responder=lambda body: Reply(content="hello")) as server:
...     client = OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
...     client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
'hello'

Faults (``Fault.kind``): ``"429"`` (with ``Retry-After``), ``"500"``, ``"503"``, ``"401"``,
``"timeout"`` (answers only after ``seconds``), ``"malformed"`` (200 with broken JSON),
``"truncated"`` (the body, or the SSE stream, is cut off and the connection closed).
``Fault.headers`` adds or overrides response headers (``Fault("429", headers={"Retry-After": "nan"})``).

Other routes (``routes={"/v1/completions": fn, "/v1/models": fn}``, GET or POST): ``fn(body)``
returns a ``Raw`` response, sent as scripted - any status, headers, JSON or raw bytes, a false or
missing ``Content-Length``, the body (or the whole response) dripped one byte at a time. This is how
the ``vllm_server`` backend's client is tested against every bad response a server can give.

Scripted misbehaviours (``MISBEHAVIOURS``), each a 200 that a careful client must refuse:
``"drip"`` / ``"drip_headers"`` (the body / the status line and headers sent one byte every
``interval`` seconds, for ever), ``"bad_content_length"``, ``"not_json"``, ``"json_not_object"``,
``"empty_body"``, ``"error_200"`` (an error object and no choices), ``"missing_choices"``,
``"empty_choices"``, ``"missing_message"``, ``"content_not_string"``, ``"missing_function"``,
``"null_name"``, ``"null_logprob"``, ``"nan_logprob"``, ``"inf_logprob"`` (``-Infinity``),
``"missing_token"``, ``"deep_arguments"`` (a tool call whose arguments string nests ``depth``
levels), ``"deep_body"`` (the same arguments inline, so the body itself nests that deep) and
``"huge_arguments"`` (an arguments string of about ``size`` characters).
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["ScriptedOpenAIServer", "Reply", "Fault", "Raw", "TRANSIENT_FAULTS", "MISBEHAVIOURS"]

TRANSIENT_FAULTS = ("429", "500", "503", "timeout", "malformed", "truncated")
MISBEHAVIOURS = ("drip", "drip_headers", "bad_content_length", "not_json", "json_not_object", "empty_body",
                 "error_200", "missing_choices", "empty_choices", "missing_message", "content_not_string",
                 "missing_function", "null_name", "null_logprob", "nan_logprob", "inf_logprob", "missing_token",
                 "deep_arguments", "deep_body", "huge_arguments")
_KINDS = TRANSIENT_FAULTS + ("401", "400") + MISBEHAVIOURS


@dataclass
class Reply:
    """One scripted completion. ``tool_calls``: [{"name": ..., "arguments": {...}}].
    ``logprobs``: per-token log-probs (with ``tokens``, else tokens are made up from the content)."""

    content: str | None = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[float] | None = None
    tokens: list[str] | None = None
    finish_reason: str | None = None
    delay: float = 0.0


@dataclass
class Fault:
    kind: str
    retry_after: float | None = 0.05  # seconds, for 429 (and 503 when set)
    seconds: float = 2.0  # how long a "timeout" stalls
    headers: dict[str, str] = field(default_factory=dict)  # extra / overriding response headers
    interval: float = 0.5  # "drip", "drip_headers": seconds between bytes
    depth: int = 5000  # "deep_arguments", "deep_body"
    size: int = 2_000_000  # "huge_arguments": characters

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {_KINDS}")


@dataclass
class Raw:
    """One scripted response of a ``routes`` handler. ``body``: bytes / str as they are, anything else
    as JSON (``json.dumps``, so NaN and Infinity pass through); ``content_length``: ``"auto"`` (the
    true length), an int (announced whatever is sent) or None (no header: the body ends when the
    connection closes); ``drip``: seconds between the bytes of the body (``drip_all``: of the status
    line and headers too)."""

    body: Any = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    content_length: int | str | None = "auto"
    drip: float | None = None
    drip_all: bool = False


class ScriptedOpenAIServer:
    """Start with ``with ScriptedOpenAIServer(...) as s`` (or ``start()``/``stop()``); ``s.base_url``
    is the ``/v1`` URL to give a client. ``s.requests`` logs (body, fault kind or None)."""

    def __init__(self, responder: Callable[[dict[str, Any]], Reply] | None = None, *,
                 fault_rate: float = 0.0, fault_kinds: tuple[str, ...] = TRANSIENT_FAULTS,
                 seed: int = 0, api_key: str | None = None, timeout_seconds: float = 2.0,
                 routes: dict[str, Callable[[dict[str, Any]], Raw]] | None = None):
        self.responder = responder
        self.routes = dict(routes or {})
        self.route_requests: list[tuple[str, str, dict[str, Any]]] = []  # (method, path, body) per routed request
        self.replies: deque[Reply] = deque()
        self.faults: deque[Fault] = deque()
        self.fault_rate, self.fault_kinds = fault_rate, fault_kinds
        self.api_key, self.timeout_seconds = api_key, timeout_seconds
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.requests: list[tuple[dict[str, Any], str | None]] = []
        self.request_headers: list[dict[str, str]] = []  # per request, as received (lower-case names)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ scripting
    def enqueue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def fail_next(self, *faults: Fault | str) -> None:
        self.faults.extend(f if isinstance(f, Fault) else Fault(f) for f in faults)

    def _pick(self, body: dict[str, Any]) -> tuple[Fault | None, Reply | None]:
        with self._lock:
            fault = None
            if self.faults:
                fault = self.faults.popleft()
            elif self.fault_rate and self._rng.random() < self.fault_rate:
                fault = Fault(self._rng.choice(self.fault_kinds), seconds=self.timeout_seconds)
            self.requests.append((body, fault.kind if fault else None))
            if fault is not None:
                return fault, None
            if self.responder is not None:
                return None, None  # computed outside the lock
            if not self.replies:
                return Fault("400"), None
            return None, self.replies.popleft()

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "ScriptedOpenAIServer":
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="scripted-openai-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "ScriptedOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.get("id") or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))}}
            for c in reply.tool_calls]
    choice: dict[str, Any] = {"index": 0, "message": message,
                              "finish_reason": reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")}
    if body.get("logprobs") and reply.logprobs is not None:
        tokens = reply.tokens or [f"t{i}" for i in range(len(reply.logprobs))]
        choice["logprobs"] = {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []}
                                          for t, lp in zip(tokens, reply.logprobs)]}
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "scripted"), "choices": [choice],
            "usage": {"prompt_tokens": 0, "completion_tokens": len(reply.logprobs or []), "total_tokens": 0}}


class _Handler(BaseHTTPRequestHandler):
    owner: ScriptedOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet: tests read server.requests instead
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle + delayed ACK add ~40 ms
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout fault): fine
            pass

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._raw(status, json.dumps(payload).encode(), headers=headers)

    def _raw(self, status: int, data: bytes, content_type: str = "application/json",
             headers: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": content_type, "Content-Length": str(len(data)), **(headers or {})}
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _drip(self, data: bytes, interval: float) -> None:
        """``data`` one byte at a time until it is sent, the client hangs up or the server stops."""
        for i in range(len(data)):
            if self.owner._stop.is_set():
                break
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
            time.sleep(interval)
        self.close_connection = True

    def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

    def _route(self, method: str, body: dict[str, Any]) -> bool:
        """Answer from ``owner.routes`` when the path has a handler; whether it had one."""
        path = self.path.split("?")[0].rstrip("/")
        handler = self.owner.routes.get(path)
        if handler is None:
            return False
        with self.owner._lock:
            self.owner.route_requests.append((method, path, body))
        try:
            raw = handler(body)
        except Exception as exc:  # a broken script is a 500 the test will see, not a dead server
            self._error(500, f"route handler failed: {type(exc).__name__}: {exc}", "server_error")
            return True
        self._send_raw(raw)
        return True

    def _send_raw(self, raw: Raw) -> None:
        data = raw.body if isinstance(raw.body, bytes) else (
            raw.body.encode() if isinstance(raw.body, str) else json.dumps(raw.body).encode())
        head = [f"HTTP/1.1 {raw.status} Scripted", f"Content-Type: {raw.content_type}"]
        if raw.content_length is not None:
            head.append(f"Content-Length: {len(data) if raw.content_length == 'auto' else raw.content_length}")
        head += [f"{k}: {v}" for k, v in raw.headers.items()]
        if raw.content_length != "auto":
            head.append("Connection: close")
            self.close_connection = True
        header = ("\r\n".join(head) + "\r\n\r\n").encode()
        try:
            if raw.drip is not None and raw.drip_all:
                return self._drip(header + data, raw.drip)
            self.wfile.write(header)
            self.wfile.flush()
            if raw.drip is not None:
                return self._drip(data, raw.drip)
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a deadline, a size cap)
            self.close_connection = True

    def do_GET(self) -> None:
        if self._route("GET", {}):
            return
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        else:
            self._error(404, f"no route {self.path}", "not_found")

    def do_POST(self) -> None:
        owner = self.owner
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as exc:
            return self._error(400, f"request body is not JSON: {exc}", "invalid_request_error")
        if self._route("POST", body):
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._error(404, f"no route {self.path}", "not_found")
        owner.request_headers.append({k.lower(): v for k, v in self.headers.items()})
        if owner.api_key is not None and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            owner.requests.append((body, "401"))
            return self._error(401, "Incorrect API key provided.", "invalid_api_key")
        fault, reply = owner._pick(body)
        if fault is not None and not (fault.kind == "truncated" and body.get("stream")):
            return self._fault(fault, body)
        if reply is None and owner.responder is None:  # a truncated stream with nothing queued
            reply = Reply(content="this stream is cut off before its end")
        if reply is None:
            try:
                reply = owner.responder(body)
            except Exception as exc:  # a broken script is a 500 the test will see, not a dead server
                return self._error(500, f"responder failed: {type(exc).__name__}: {exc}", "server_error")
        if reply.delay:
            time.sleep(reply.delay)
        payload = _completion(body, reply)
        if body.get("stream"):
            return self._stream(payload, truncate=fault is not None)
        self._json(200, payload)

    def _fault(self, fault: Fault, body: dict[str, Any] | None = None) -> None:
        kind = fault.kind
        if kind in MISBEHAVIOURS:
            return self._misbehave(fault, body or {})
        if kind == "429":
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            return self._error(429, "Rate limit reached; retry later.", "rate_limit_exceeded",
                               {**headers, **fault.headers})
        if kind in ("500", "503", "401", "400"):
            headers = {"Retry-After": f"{fault.retry_after:g}"} if kind == "503" and fault.retry_after else {}
            return self._error(int(kind), f"scripted fault {kind}", "server_error" if kind[0] == "5" else
                               "invalid_request_error", {**headers, **fault.headers})
        if kind == "timeout":
            deadline = time.monotonic() + fault.seconds
            while time.monotonic() < deadline and not self.owner._stop.is_set():
                time.sleep(0.02)
            return self._error(504, "scripted timeout elapsed", "timeout")
        if kind == "malformed":
            data = b'{"id": "chatcmpl-broken", "choices": [{"message": {"content": "unterminated'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if kind == "truncated":
            data = b'{"id": "chatcmpl-cut", "object": "chat.completion", "choices": ['
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data) + 500))  # promise more than we send
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            self.close_connection = True
            return

    def _misbehave(self, fault: Fault, body: dict[str, Any]) -> None:
        kind, extra = fault.kind, fault.headers
        payload = _completion({**body, "logprobs": True}, Reply(
            content="scripted", tool_calls=[{"name": "f", "arguments": {"a": 1}}], logprobs=[-0.5, -0.25]))
        choice = payload["choices"][0]
        message, lps = choice["message"], choice["logprobs"]["content"]
        function = message["tool_calls"][0]["function"]
        if kind == "drip":
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.flush()
            return self._drip(data, fault.interval)
        if kind == "drip_headers":
            return self._drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"x" * 4096 +
                              b"\r\n\r\n", fault.interval)
        if kind == "bad_content_length":
            return self._raw(200, json.dumps(payload).encode(), headers={"Content-Length": "lots", **extra})
        if kind == "not_json":
            return self._raw(200, b"<html><body>502 Bad Gateway</body></html>", "text/html", extra)
        if kind == "json_not_object":
            return self._raw(200, b"[1, 2, 3]", headers=extra)
        if kind == "empty_body":
            return self._raw(200, b"", headers=extra)
        if kind == "error_200":
            return self._json(200, {"error": {"message": "the engine is overloaded", "code": 503}}, extra)
        if kind == "missing_choices":
            del payload["choices"]
        elif kind == "empty_choices":
            payload["choices"] = []
        elif kind == "missing_message":
            del choice["message"]
        elif kind == "content_not_string":
            message["content"] = {"text": "scripted"}
        elif kind == "missing_function":
            del message["tool_calls"][0]["function"]
        elif kind == "null_name":
            function["name"] = None
        elif kind == "null_logprob":
            lps[1]["logprob"] = None
        elif kind == "nan_logprob":
            lps[1]["logprob"] = float("nan")  # json.dumps writes NaN, which Python's json.loads accepts
        elif kind == "inf_logprob":
            lps[1]["logprob"] = float("-inf")  # -Infinity
        elif kind == "missing_token":
            del lps[0]["token"]
        elif kind == "huge_arguments":
            function["arguments"] = json.dumps({"text": "x" * fault.size})
        elif kind in ("deep_arguments", "deep_body"):
            deep = "[" * fault.depth + "]" * fault.depth
            if kind == "deep_arguments":
                function["arguments"] = deep
            else:  # inline (json.dumps cannot write it: it recurses too)
                function["arguments"] = "@DEEP@"
                text = json.dumps(payload).replace('"@DEEP@"', deep)
                return self._raw(200, text.encode(), headers=extra)
        return self._raw(200, json.dumps(payload).encode(), headers=extra)

    def _stream(self, payload: dict[str, Any], truncate: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        message = payload["choices"][0]["message"]
        text = message.get("content") or ""
        pieces = [text[i:i + 8] for i in range(0, len(text), 8)] or [""]
        for i, piece in enumerate(pieces):
            chunk = {"id": payload["id"], "object": "chat.completion.chunk", "created": payload["created"],
                     "model": payload["model"], "choices": [{"index": 0, "delta": {"content": piece},
                                                             "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if truncate and i >= len(pieces) // 2:
                self.close_connection = True
                return
        end = {"id": payload["id"], "object": "chat.completion.chunk", "created": payload["created"],
               "model": payload["model"], "choices": [{"index": 0, "delta": {},
                                                       "finish_reason": payload["choices"][0]["finish_reason"]}]}
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        self.close_connection = True
