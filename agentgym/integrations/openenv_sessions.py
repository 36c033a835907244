"""What ``agentgym serve`` holds and guards (see ``agentgym.integrations.openenv_server``): the
count of every env the server holds (``_Open``), the ASGI guard in front of openenv-core's WebSocket
loop and HTTP routes (``_SessionGuard``: malformed frames answered, reaped sockets closed, quiet
disconnects, capped bodies), and the session manager that reaps idle sessions by closing their
socket (``_Sessions``). The README's "Threat model: agentgym serve" says what a client can do."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
import time
from typing import Any

from openenv.core.env_server.exceptions import EnvironmentFactoryError, SessionCapacityError
from openenv.core.env_server.http_server import HTTPEnvServer
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.mcp_types import JsonRpcErrorCode, JsonRpcResponse
from openenv.core.env_server.types import WSErrorCode, WSErrorResponse
from pydantic import ValidationError

from agentgym.parsing import MAX_ARGUMENT_DEPTH, check_json_value

__all__ = ["parse_message", "MAX_MESSAGE_DEPTH", "DEFAULT_MAX_BODY_BYTES", "IDLE_CLOSE_CODE"]

log = logging.getLogger("agentgym.integrations.openenv_server")


class _Open:
    """The envs a server holds, so that every one counts against ``capacity`` (sessions and
    stateless requests alike) and shutdown closes the ones no session end closed.

    It also keeps the idle envs: an env whose session ended cleanly waits here (``keep_idle``) for
    the next session (``take_idle``), which resets it before its first step, as a rollout run reuses
    its envs between episodes. A new env is built only when none is idle, so the server holds at most
    ``capacity`` envs, busy or idle, and (while none fails or idles out) builds no more however many
    sessions open and close; an env idle for longer than the session timeout is closed by the reaper
    (``close_idle``), and shutdown closes them all."""

    def __init__(self, capacity: int | None = None, close_env: Any = None):
        self._lock = threading.Lock()
        self._envs: dict[int, Any] = {}
        self._idle: list[tuple[Any, float]] = []  # (env, monotonic time it went idle)
        self._close_env = close_env or (lambda env: env.close())
        self._building = 0
        self.capacity = capacity
        self.created = 0  # sessions (and stateless requests) that held an env
        self.built = 0  # envs built for them (the others reused an idle one)

    def take_idle(self) -> Any | None:
        """The env that went idle last (the warmest), or None."""
        with self._lock:
            return self._idle.pop()[0] if self._idle else None

    def keep_idle(self, env: Any, *, new: bool = False) -> bool:
        """Keep ``env`` (its session over, no call of it failed; ``new``: built outside any session,
        so counted as built here) for the next session; False when ``capacity`` envs are idle already
        (the caller closes it)."""
        with self._lock:
            if self.capacity is not None and len(self._idle) >= self.capacity:
                return False
            self._idle.append((env, time.monotonic()))
            self.built += new
            return True

    def idle(self) -> int:
        with self._lock:
            return len(self._idle)

    def close_idle(self, older_than_s: float = 0.0) -> int:
        """Close the idle envs kept for at least ``older_than_s`` seconds; how many."""
        now = time.monotonic()
        with self._lock:
            old = [env for env, since in self._idle if now - since >= older_than_s]
            self._idle = [(env, since) for env, since in self._idle if now - since < older_than_s]
        for env in old:
            try:
                self._close_env(env)
            except Exception:  # noqa: BLE001 - closing is best effort; the others still close
                log.warning("closing an idle env failed", exc_info=True)
        return len(old)

    def reserve(self) -> None:
        """Hold a slot for an env about to be built; ``SessionCapacityError`` when all are taken."""
        with self._lock:
            held = len(self._envs) + self._building
            if self.capacity is not None and held >= self.capacity:
                raise SessionCapacityError(held, self.capacity)
            self._building += 1

    def add(self, env: Any, *, reserved: bool = False, built: bool = True) -> None:
        with self._lock:
            if reserved:
                self._building -= 1
            self._envs[id(env)] = env
            self.created += 1
            self.built += built

    def unreserve(self) -> None:
        with self._lock:
            self._building -= 1

    def discard(self, env: Any) -> None:
        with self._lock:
            self._envs.pop(id(env), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._envs) + self._building

    def close_all(self) -> int:
        """Close every session's env and every idle one; how many sessions' envs were still open."""
        with self._lock:
            envs = list(self._envs.values())
        for env in envs:
            env.close()  # a healthy one goes idle, and is closed below
        self.close_idle()
        return len(envs)


MAX_MESSAGE_DEPTH = MAX_ARGUMENT_DEPTH + 8  # a message wraps tool arguments in a few levels of its own
DEFAULT_MAX_BODY_BYTES = 16 << 20  # one HTTP request body
IDLE_CLOSE_CODE = 4408  # the WebSocket close code of a session reaped for idling (4xxx: the application's)
_CONNECTION: contextvars.ContextVar["_Connection | None"] = contextvars.ContextVar("agentgym_ws", default=None)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_message(raw: str | bytes, what: str = "the message") -> Any:
    """A JSON object from a client, or ValueError saying why not: not JSON, nested more than
    ``MAX_MESSAGE_DEPTH`` levels, an integer over ``MAX_INT_BITS`` bits, NaN / Infinity, or not an
    object. Never a RecursionError, whatever the input."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"{what} nests too deeply to parse (the limit is {MAX_MESSAGE_DEPTH} levels)") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8: {exc.reason}") from None
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4300 digits
        raise ValueError(f"{what} is not JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got a JSON {type(value).__name__}")
    check_json_value(value, what, max_depth=MAX_MESSAGE_DEPTH)
    return value


class _Connection:
    """One WebSocket as ``_SessionGuard`` sees it: whether the app is answering a message (``busy``),
    the last traffic, and the request to close it (``close_idle``, from the reaper)."""

    def __init__(self) -> None:
        self.busy = False
        self.gone = False  # the socket is closed (by the client, or by us)
        self.last_activity = time.time()
        self.closing: str | None = None
        self.wake = asyncio.Event()

    def close_idle(self, reason: str) -> None:
        self.closing = reason
        self.wake.set()


class _SessionGuard:
    """ASGI middleware in front of openenv-core's WebSocket loop (``/ws`` and ``/mcp``):

    - a frame that loop would end the session on (binary, too deep, a huge integer, NaN, not a JSON
      object) is answered with an error reply here and never reaches it: the session goes on;
    - a reaped session's socket is closed (``IDLE_CLOSE_CODE`` and the reason) and the loop is told
      the client left, so it closes the session's env and frees its slot;
    - a client gone mid-step (the reply cannot be sent) or a normal close ends the loop quietly,
      with no ASGI traceback."""

    def __init__(self, app: Any, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            return await self._http(scope, receive, send)
        if scope.get("type") != "websocket":
            return await self.app(scope, receive, send)
        from starlette.websockets import WebSocketDisconnect

        conn = _Connection()
        rpc = scope.get("path", "").rstrip("/").endswith("/mcp")
        pending: asyncio.Task | None = None

        async def real_send(message: dict[str, Any]) -> None:
            if conn.gone:
                return  # the client is gone: what the loop still sends has nowhere to go
            try:
                await send(message)
            except Exception as exc:  # noqa: BLE001 - a client that hung up mid-step: an ordinary end
                log.debug("websocket send failed (the client is gone): %s: %s", type(exc).__name__, exc)
                conn.gone = True
            if message.get("type") == "websocket.close":
                conn.gone = True

        async def guarded_send(message: dict[str, Any]) -> None:
            if message.get("type") == "websocket.send":
                conn.busy, conn.last_activity = False, time.time()
            await real_send(message)

        async def refuse(problem: str, code: str) -> None:
            if rpc:
                reply = JsonRpcResponse.error_response(JsonRpcErrorCode.PARSE_ERROR, problem).model_dump_json()
            else:
                reply = WSErrorResponse(data={"message": problem, "code": code}).model_dump_json()
            await real_send({"type": "websocket.send", "text": reply})

        async def guarded_receive() -> dict[str, Any]:
            nonlocal pending
            while True:
                if conn.closing is not None and not conn.gone:
                    await real_send({"type": "websocket.close", "code": IDLE_CLOSE_CODE, "reason": conn.closing[:120]})
                if conn.gone:
                    return {"type": "websocket.disconnect", "code": IDLE_CLOSE_CODE if conn.closing else 1006}
                if pending is None:
                    pending = asyncio.ensure_future(receive())
                waker = asyncio.ensure_future(conn.wake.wait())
                await asyncio.wait({pending, waker}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if not pending.done():
                    continue  # woken to close
                message, pending = pending.result(), None
                conn.last_activity = time.time()
                if message.get("type") != "websocket.receive":
                    if message.get("type") == "websocket.disconnect":
                        conn.gone = True
                    return message
                if message.get("text") is None:
                    await refuse("binary frames are not accepted: send each message as JSON text",
                                 WSErrorCode.INVALID_JSON)
                    continue
                try:
                    parse_message(message["text"])
                except ValueError as exc:
                    await refuse(str(exc), WSErrorCode.INVALID_JSON)
                    continue
                conn.busy = True
                return message

        token = _CONNECTION.set(conn)
        try:
            await self.app(scope, guarded_receive, guarded_send)
        except WebSocketDisconnect:
            pass
        finally:
            _CONNECTION.reset(token)
            if pending is not None:
                pending.cancel()


    async def _http(self, scope: Any, receive: Any, send: Any) -> None:
        """An HTTP request whose body is over ``max_body_bytes`` is a 413 (before the app reads it,
        or as soon as a chunked body passes the cap)."""
        cap, seen, started = self.max_body_bytes, 0, False
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")

        async def too_large() -> None:
            body = json.dumps({"detail": f"the request body is over the {cap}-byte limit", "code": "TOO_LARGE"})
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body.encode()})

        if declared.isdigit() and int(declared) > cap:
            return await too_large()

        async def capped_receive() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body") or b"")
                if seen > cap:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, capped_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await too_large()


class _BodyTooLarge(Exception):
    pass


class _Sessions(HTTPEnvServer):
    """openenv-core's server, with every env counted (``_Open``) and idle sessions reaped by
    closing their socket (``_SessionGuard``) rather than their env under a live loop."""

    def __init__(self, *args: Any, open_envs: _Open, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._open = open_envs
        self._connections: dict[str, _Connection] = {}

    async def _create_session(self) -> tuple[str, Environment]:
        if len(self._open) >= self._max_concurrent_envs:  # stateless requests hold slots too
            raise SessionCapacityError(len(self._open), self._max_concurrent_envs)
        try:
            session_id, env = await super()._create_session()
        except EnvironmentFactoryError as exc:
            if isinstance(exc.__cause__, SessionCapacityError):
                raise exc.__cause__ from None
            raise
        conn = _CONNECTION.get()
        if conn is not None:
            self._connections[session_id] = conn
        return session_id, env

    async def _destroy_session(self, session_id: str) -> None:
        self._connections.pop(session_id, None)
        await super()._destroy_session(session_id)

    async def _reap_idle_sessions(self) -> None:
        timeout = self._session_idle_timeout_s
        if timeout is None:
            return
        while True:
            await asyncio.sleep(min(max(timeout / 4, 0.05), 5.0))
            try:
                await self._reap_once(timeout)
            except Exception as exc:  # noqa: BLE001 - the reaper keeps going
                log.warning("idle-session reaper: %s: %s", type(exc).__name__, exc)

    async def _reap_once(self, timeout: float) -> None:
        if self._open.idle():
            await asyncio.to_thread(self._open.close_idle, timeout)  # an AppWorld env's close takes seconds
        now = time.time()
        async with self._session_lock:
            idle = {sid: info.last_activity_at for sid, info in self._session_info.items()}
        for sid, last in idle.items():
            conn = self._connections.get(sid)
            if conn is not None:
                if not conn.busy and not conn.gone and now - max(last, conn.last_activity) > timeout:
                    log.info("closing session %s: idle for more than %g s", sid, timeout)
                    conn.close_idle(f"session idle for more than {timeout:g} s: closed by the server")
            elif now - last > timeout:  # an HTTP MCP session: no socket to close
                await self._destroy_session(sid)


def _error(status: int, message: str, code: str) -> Any:
    from fastapi.responses import JSONResponse
    return JSONResponse(status_code=status, content={"detail": message, "code": code})


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        text = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        more = len(exc.errors()) - 1
        return text + (f" (and {more} more)" if more else "")
    return " ".join(str(exc).split())[:500]
