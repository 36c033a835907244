"""Any registered agentgym env as an OpenEnv server (``openenv-core``): ``agentgym serve ENV_ID``.

Every WebSocket session (``/ws``, what OpenEnv's ``EnvClient`` / ``GenericEnvClient`` /
``MCPToolClient`` speak) has an env instance of its own while it lasts. When a session ends cleanly
its env waits for the next session, which must reset it before its first step (as a rollout run
reuses its envs between episodes; until that reset the session sees no task or tools of the env's
last one); an env whose call raised is closed instead. A new env (``gymnasium.make``) is built only
when none is kept, so a server holds at most ``max_sessions`` envs, busy or kept, and while none fails
or idles out it builds no more than that however many sessions come and go: an AppWorld session does
not start a sandbox, an apps worker and a grader each time. At most ``max_sessions`` sessions run at once (one
more is refused with OpenEnv's ``CAPACITY_REACHED`` error), idle sessions and envs idle for longer
than ``session_timeout_s`` are closed, and shutting the server down closes every env still open.

The wire format (``reset`` / ``step`` / ``state`` messages of the OpenEnv protocol):

- ``reset`` data: ``{"seed": int, "options": {...}}`` (the env's reset options, e.g.
  ``{"task_id": "multi_turn_base_0"}``); an unknown key is an error response naming it.
- ``step`` data, one ``AgentAction``:
    - text style (every env; the native action of ALFWorld and WebShop, and how a BFCL turn ends):
      ``{"type": "text", "text": "click[Buy Now]"}``, the raw model text the env parses itself;
    - tool style (envs that declare tools: BFCL, AppWorld, WebShop), OpenEnv's MCP action types:
      ``{"type": "list_tools"}`` answers the env's current tools as MCP ``Tool`` records (name,
      description, ``input_schema`` = the env's JSON schema); ``{"type": "call_tool", "tool_name":
      ..., "arguments": {...}}`` (or several calls in ``"tool_calls": [{"name", "arguments"}]``) is
      one env step: the calls are written as ``<tool_call>`` JSON, which every agentgym env parses
      with its own parser (never evaluated), so a bad call is an observation with error feedback.
- the observation (``AgentObservation``): ``text``, the new ``messages``, the ``assistant``
  message as the env recorded the action, ``feedback`` (the step's typed ``Feedback`` records,
  ``Feedback.model_dump(mode="json")``), ``tool_schemas`` (OpenAI-style, as ``info["tools"]``),
  ``terminated`` / ``truncated``, ``task`` (reset), ``info`` (the env's other JSON-safe info), and
  OpenEnv's ``reward`` / ``done``. A ``call_tool`` answer also has ``tool_name`` and ``result`` (the
  observation text), which is what ``MCPToolClient.call_tool`` returns.

The feedback records are also in the observation's ``metadata["feedback"]``, for code that uses the
``Environment`` in-process; openenv-core 0.3.0's ``serialize_observation`` drops ``metadata`` from
the wire (huggingface/OpenEnv#616), which is why they travel as the ``feedback`` field as well.

MCP JSON-RPC on the session's WebSocket (``{"type": "mcp", "data": {"jsonrpc": "2.0", "method":
"tools/list" | "tools/call", ...}}``) lists the same tools and calls one as an env step; its result
is that step's observation (``text``, ``reward``, ``done``, ``feedback``, ...).

HTTP ``POST /reset`` and ``/mcp`` are stateless (a fresh env per request, closed when it answers,
so no episode state): use the WebSocket for episodes. ``POST /step`` validates the action and
answers 409 (a fresh env has no episode to step) without building an env; ``GET /state`` and
``/metadata`` build none either.

Every env the server holds counts against ``max_sessions``: WebSocket sessions, HTTP MCP sessions
and the fresh envs of stateless requests alike (one more is ``CAPACITY_REACHED``, HTTP 503). An idle
session is reaped by closing its WebSocket (close code 4408 with the reason) before its env is
closed, so its client cannot go on stepping outside the count. Every malformed message - not JSON,
nested more than ``MAX_MESSAGE_DEPTH`` levels, an integer over ``MAX_INT_BITS`` bits, NaN, not an
object, a binary frame - is an error reply and the session goes on; a client that disconnects, even
mid-step, ends its session without a traceback. The server has no authentication: see the README's
threat model for ``serve``.

Concurrency is the env's to declare: an env class whose instances share state that is not
thread-safe sets ``SUPPORTS_CONCURRENT_SESSIONS = False`` (OpenEnv's name; True where it says
nothing, since every session has its own instance), and the server then still holds up to
``max_sessions`` sessions but runs their env calls (build, reset, step, close) one at a time
(``sessions_may_overlap``, ``AgentGymEnvironment(call_lock=...)``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from openenv.core.env_server.exceptions import SessionCapacityError
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.mcp_types import ListToolsObservation, Tool
from openenv.core.env_server.serialization import deserialize_action, serialize_observation
from openenv.core.env_server.types import (Action, ConcurrencyConfig, EnvironmentMetadata, Observation, ResetRequest,
                                           ResetResponse, State, StepRequest)

from agentgym.envspec import check_env_id
from agentgym.integrations.openenv_sessions import (DEFAULT_MAX_BODY_BYTES, IDLE_CLOSE_CODE, MAX_MESSAGE_DEPTH, _error,
                                                    _one_line, _Open, _Sessions, _SessionGuard, parse_message)
from agentgym.types import Feedback, Message, json_safe
from agentgym.wrappers import make as make_env

__all__ = ["AgentAction", "AgentObservation", "AgentToolObservation", "AgentState", "AgentGymEnvironment",
           "make_app", "render_tool_calls", "parse_message", "sessions_may_overlap", "MAX_TOOL_CALLS", "MAX_MESSAGE_DEPTH",
           "DEFAULT_MAX_BODY_BYTES", "IDLE_CLOSE_CODE"]

log = logging.getLogger(__name__)

MAX_TOOL_CALLS = 64  # calls in one step; more is a validation error, not a long parse
_STANDARD_INFO = {"feedback", "messages", "new_messages", "tools", "step", "task"}


class ToolCallSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=256)
    arguments: dict[str, Any] = Field(default_factory=dict)


class AgentAction(Action):
    """One step of an agentgym env over OpenEnv (see the module docstring)."""

    type: Literal["text", "call_tool", "list_tools"] = Field("text", description="action kind")
    text: str | None = Field(None, description="raw model text (type 'text')")
    tool_name: str | None = Field(None, max_length=256, description="the tool (type 'call_tool')")
    arguments: dict[str, Any] = Field(default_factory=dict, description="its arguments (type 'call_tool')")
    tool_calls: list[ToolCallSpec] = Field(default_factory=list, max_length=MAX_TOOL_CALLS,
                                           description="several calls in one step (type 'call_tool')")

    @model_validator(mode="after")
    def _fields_match_type(self) -> "AgentAction":
        # PydanticCustomError, not ValueError: the error list must stay JSON (OpenEnv sends it back)
        if self.type == "text":
            if self.text is None or self.tool_name is not None or self.tool_calls:
                raise PydanticCustomError("agent_action", "a 'text' action needs 'text' and no tool_name / tool_calls")
        elif self.type == "call_tool":
            if self.text is not None or (self.tool_name is None) == (not self.tool_calls):
                raise PydanticCustomError("agent_action", "a 'call_tool' action needs exactly one of 'tool_name' "
                                                          "or 'tool_calls', and no 'text'")
        elif self.text is not None or self.tool_name is not None or self.tool_calls:
            raise PydanticCustomError("agent_action", "a 'list_tools' action takes no text or calls")
        return self


class AgentObservation(Observation):
    """What an agentgym env answered (see the module docstring)."""

    text: str = ""
    messages: list[dict[str, Any]] = Field(default_factory=list)
    assistant: dict[str, Any] | None = None
    feedback: list[dict[str, Any]] = Field(default_factory=list)
    tool_schemas: list[dict[str, Any]] = Field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    step: int | None = None
    task: dict[str, Any] = Field(default_factory=dict)
    info: dict[str, Any] = Field(default_factory=dict)


class AgentToolObservation(AgentObservation):
    """The answer to a ``call_tool`` action: also ``tool_name`` and ``result``, as OpenEnv's
    ``CallToolObservation`` has them (``MCPToolClient`` reads those two)."""

    tool_name: str
    result: Any = None
    error: dict[str, Any] | None = None


class AgentState(State):
    env_id: str = ""
    task: dict[str, Any] = Field(default_factory=dict)
    done: bool = True


def render_tool_calls(calls: list[ToolCallSpec]) -> str:
    """Tool calls as ``<tool_call>`` JSON blocks, the text every agentgym env's parser reads."""
    return "\n".join("<tool_call>" + json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False)
                     + "</tool_call>" for c in calls)


def mcp_tools(schemas: list[dict[str, Any]]) -> list[Tool]:
    """OpenAI-style function schemas as MCP ``Tool`` records."""
    out = []
    for schema in schemas:
        fn = schema.get("function", schema) if isinstance(schema, dict) else {}
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        params = fn.get("parameters")
        out.append(Tool(name=fn["name"], description=str(fn.get("description") or ""),
                        input_schema=params if isinstance(params, dict) else {"type": "object", "properties": {}}))
    return out


def _dump_messages(messages: list[Any]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json") if isinstance(m, Message) else json_safe(m) for m in messages]


def _dump_feedback(records: list[Any]) -> list[dict[str, Any]]:
    return [f.model_dump(mode="json") if isinstance(f, Feedback) else json_safe(f) for f in records]


class AgentGymEnvironment(Environment):
    """One session's env: ``gymnasium.make(env_id, **env_kwargs)`` behind OpenEnv's interface."""

    # One env instance per session; an env whose instances share unsafe state declares so and its
    # calls are serialised with ``call_lock`` (see ``sessions_may_overlap``), so sessions still overlap.
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None = None, open_envs: _Open | None = None,
                 call_lock: Any = None):
        super().__init__()
        self.env_id = env_id
        self._calls = call_lock if call_lock is not None else contextlib.nullcontext()
        if open_envs is not None:
            open_envs.reserve()  # counted before it is built: a slow build holds its slot
        try:
            env = open_envs.take_idle() if open_envs is not None else None
            self.reused = env is not None  # an earlier session's env: nothing of it shows before this reset
            if env is None:
                with self._calls:
                    env = make_env(env_id, **dict(env_kwargs or {}))  # a plain env gets a deadline too
            self.env = env
        except BaseException:
            if open_envs is not None:
                open_envs.unreserve()
            raise
        self._open = open_envs
        self._closed = False
        self._healthy = True  # no env call raised: the env may serve the next session
        self._busy = 0
        self._began = False  # this session has reset the env
        self._episode_id: str | None = None
        self._done = True
        self._steps = 0
        if open_envs is not None:
            open_envs.add(self, reserved=True, built=not self.reused)

    @property
    def _inner(self) -> Any:
        return self.env.unwrapped

    @contextlib.contextmanager
    def _env_call(self) -> Any:
        """One call into the env: serialised where the env says so; an exception marks the env as
        not to be reused."""
        with self._calls:
            self._busy += 1
            try:
                yield
            except BaseException:
                self._healthy = False
                raise
            finally:
                self._busy -= 1

    def session_tools(self) -> list[Any]:
        """The env's current tools; none from a reused env before this session's first reset."""
        if self.reused and not self._began:
            return []
        return mcp_tools(list(getattr(self._inner, "tools", []) or []))

    def reset(self, seed: int | None = None, episode_id: str | None = None, options: dict[str, Any] | None = None,
              **unknown: Any) -> AgentObservation:
        if unknown:
            raise ValueError(f"unknown reset parameters {sorted(unknown)}; reset takes seed, episode_id, options")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options must be an object, got {type(options).__name__}")
        self._done = True
        with self._env_call():
            text, info = self.env.reset(seed=seed, options=options)
        self._began = True
        self._episode_id = episode_id or uuid.uuid4().hex
        self._done, self._steps = False, 0
        messages = list(info.get("messages") or [])
        extra = {k: v for k, v in info.items() if k not in _STANDARD_INFO}
        return AgentObservation(
            text=text, messages=_dump_messages(messages), tool_schemas=json_safe(list(info.get("tools") or [])),
            task=json_safe(info.get("task") or {}), info=json_safe(extra), done=False, reward=None)

    def step(self, action: AgentAction, timeout_s: float | None = None, **kwargs: Any) -> Observation:
        if not isinstance(action, AgentAction):
            raise TypeError(f"expected an AgentAction, got {type(action).__name__}")
        if action.type == "list_tools":
            return ListToolsObservation(tools=self.session_tools())
        if self._done:
            raise RuntimeError("no episode in progress: send reset first (the last one ended, or none began)")
        calls: list[ToolCallSpec] = []
        if action.type == "call_tool":
            calls = list(action.tool_calls) or [ToolCallSpec(name=action.tool_name, arguments=action.arguments)]
            text = render_tool_calls(calls)
        else:
            text = action.text
        with self._env_call():
            obs, reward, terminated, truncated, info = self.env.step(text)
        self._steps += 1
        self._done = bool(terminated or truncated)
        new = list(info.get("new_messages") or [])
        history = list(info.get("messages") or [])
        assistant = history[-len(new) - 1] if len(history) > len(new) else None
        feedback = _dump_feedback(list(info.get("feedback") or []))
        extra = {k: v for k, v in info.items() if k not in _STANDARD_INFO}
        fields = dict(text=obs, messages=_dump_messages(new),
                      assistant=assistant.model_dump(mode="json") if isinstance(assistant, Message) else None,
                      feedback=feedback, tool_schemas=json_safe(list(info.get("tools") or [])),
                      terminated=bool(terminated), truncated=bool(truncated), step=info.get("step"),
                      info=json_safe(extra), reward=float(reward), done=self._done,
                      metadata={"feedback": feedback})
        if calls:
            return AgentToolObservation(tool_name=calls[0].name, result=obs, **fields)
        return AgentObservation(**fields)

    @property
    def mcp_server(self) -> "_ToolServer":
        """The env's current tools for OpenEnv's MCP JSON-RPC path (``{"type": "mcp"}`` messages on
        the session's WebSocket: ``tools/list``, ``tools/call``). A call is one env step; its result
        is the step's observation (text, reward, done, typed feedback)."""
        return _ToolServer(self)

    def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(arguments, dict):
            raise ValueError(f"arguments must be an object, got {type(arguments).__name__}")
        obs = self.step(AgentAction(type="call_tool", tool_name=name, arguments=arguments))
        return obs.model_dump(mode="json", exclude={"metadata"})

    @property
    def state(self) -> AgentState:
        return AgentState(episode_id=self._episode_id, step_count=self._steps, env_id=self.env_id,
                          task=json_safe(getattr(self._inner, "task", {}) or {}) if self._began else {},
                          done=self._done)

    def get_metadata(self) -> EnvironmentMetadata:
        doc = (type(self._inner).__doc__ or "").strip().splitlines()
        return EnvironmentMetadata(name=self.env_id, description=doc[0] if doc else self.env_id,
                                   version=_version())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._open is not None:
            self._open.discard(self)
            # a clean session's env serves the next one (reset first); never one a call failed in or
            # one still in a call (an MCP session reaped mid-call)
            if self._healthy and not self._busy and self._open.keep_idle(self.env):
                return
        try:
            with self._calls:
                self.env.close()
        except Exception:  # noqa: BLE001 - closing is best effort; the session is over either way
            log.warning("closing %s failed", self.env_id, exc_info=True)


@dataclass
class _ServedTool:
    """One env tool as openenv-core's MCP handler reads it (``name``, ``description``,
    ``parameters``, ``fn``)."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Any


class _ToolServer:
    """The tool registry openenv-core's MCP handler asks for (``get_tools``): the session env's
    current tools, each calling ``AgentGymEnvironment.call_tool`` off the event loop."""

    def __init__(self, environment: AgentGymEnvironment):
        self._environment = environment

    async def get_tools(self) -> dict[str, _ServedTool]:
        import asyncio

        env = self._environment

        def caller(name: str) -> Any:
            async def call(**arguments: Any) -> dict[str, Any]:
                return await asyncio.to_thread(env.call_tool, name, arguments)
            return call

        return {tool.name: _ServedTool(tool.name, tool.description, tool.input_schema, caller(tool.name))
                for tool in env.session_tools()}


def _close_serialised(call_lock: Any, env: Any) -> None:
    with call_lock if call_lock is not None else contextlib.nullcontext():
        env.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("agentgym")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without an install
        return "0"


def make_app(env_id: str, *, env_kwargs: dict[str, Any] | None = None, max_sessions: int = 8,
             session_timeout_s: float | None = 600.0, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Any:
    """The FastAPI app serving ``env_id`` (OpenEnv's routes: ``/ws``, ``/reset``, ``/step``,
    ``/state``, ``/schema``, ``/metadata``, ``/health``, ``/mcp``). ``app.state.agentgym_open``
    counts and closes the envs still open (at most ``max_sessions``, whatever holds them); the
    app's shutdown closes them all."""
    env_id = check_env_id(env_id)
    if not isinstance(max_sessions, int) or isinstance(max_sessions, bool) or max_sessions < 1:
        raise ValueError(f"max_sessions must be a positive int, got {max_sessions!r}")
    call_lock = None if sessions_may_overlap(env_id) else threading.RLock()
    open_envs = _Open(capacity=max_sessions, close_env=functools.partial(_close_serialised, call_lock))
    factory = functools.partial(AgentGymEnvironment, env_id, dict(env_kwargs or {}), open_envs, call_lock)
    app = FastAPI(title=f"agentgym {env_id}", version=_version(),
                  description=f"agentgym env {env_id} as an OpenEnv server (see agentgym.integrations.openenv_server)")
    server = _Sessions(factory, AgentAction, AgentObservation, open_envs=open_envs,
                       concurrency_config=ConcurrencyConfig(max_concurrent_envs=max_sessions,
                                                            session_timeout=session_timeout_s))
    # "production" leaves out openenv-core's /reset, /step and /state (each builds an env outside
    # any count, and an env error is a 500 with a traceback); the ones below replace them.
    server.register_routes(app, mode="production")
    _stateless_routes(app, env_id, factory)

    async def _close_open_envs() -> None:
        closed = open_envs.close_all()
        if closed:
            log.info("closed %d env(s) still open at shutdown", closed)

    app.router.on_shutdown.append(_close_open_envs)
    app.add_middleware(_SessionGuard, max_body_bytes=max_body_bytes)

    _error_handlers(app)
    app.state.agentgym_open = open_envs
    app.state.agentgym_server = server
    app.state.agentgym_serial = call_lock is not None
    return app


def _stateless_routes(app: Any, env_id: str, factory: Any) -> None:
    """``/metadata``, ``/state``, ``/reset`` and ``/step`` outside a session, in place of openenv-core's."""
    metadata = _metadata(env_id)
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) != "/metadata"]

    @app.get("/metadata", response_model=EnvironmentMetadata, tags=["Environment Info"])
    async def _metadata_route() -> EnvironmentMetadata:
        return metadata

    @app.get("/state", tags=["State Management"])
    async def _state() -> Any:
        return AgentState(env_id=env_id).model_dump(mode="json")

    @app.post("/reset", tags=["Environment Control"])
    async def _reset(request: Request) -> Any:
        """A fresh env, reset, answered and closed; it counts against max_sessions while it lives."""
        try:
            body = await request.body()
            data = parse_message(body, "the request body") if body.strip() else {}
            ResetRequest.model_validate(data)
        except (ValueError, ValidationError) as exc:
            return _error(422, _one_line(exc), "VALIDATION_ERROR")
        env = await run_in_threadpool(factory)
        try:
            observation = await run_in_threadpool(env.reset, **data)
        except (ValueError, TypeError, KeyError) as exc:
            return _error(422, f"{type(exc).__name__}: {_one_line(exc)}", "EXECUTION_ERROR")
        except Exception as exc:  # noqa: BLE001 - the env's fault, said in one line (no ASGI traceback)
            log.warning("POST /reset failed: %s: %s", type(exc).__name__, exc)
            return _error(500, f"{type(exc).__name__}: {_one_line(exc)}", "EXECUTION_ERROR")
        finally:
            await run_in_threadpool(env.close)
        return ResetResponse(**serialize_observation(observation)).model_dump(mode="json")

    @app.post("/step", tags=["Environment Control"])
    async def _step(request: Request) -> Any:
        """Validates the action; a stateless env has no episode to step (use the WebSocket)."""
        try:
            data = parse_message(await request.body(), "the request body")
            StepRequest.model_validate(data)
            if not isinstance(data.get("action"), dict):
                raise ValueError("'action' must be an object")
            deserialize_action(data["action"], AgentAction)
        except (ValueError, ValidationError) as exc:
            return _error(422, _one_line(exc), "VALIDATION_ERROR")
        return _error(409, "no episode in progress: a stateless /step has no episode to step; open a WebSocket "
                           "session (/ws) and send reset, then step", "NO_EPISODE")


def _error_handlers(app: Any) -> None:
    """One-line JSON errors for a malformed request and for a server at capacity."""
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Any, exc: RequestValidationError) -> Any:
        # FastAPI's own handler fails (500) on a body that is not UTF-8: the errors hold its bytes
        return JSONResponse(status_code=422, content={"detail": json_safe(exc.errors())})

    @app.exception_handler(SessionCapacityError)
    async def _at_capacity(request: Any, exc: SessionCapacityError) -> Any:
        return _error(503, str(exc), "CAPACITY_REACHED")


def _env_class(env_id: str) -> Any:
    """The registered class (or creator) of ``env_id``, without building an env; None if unresolvable."""
    entry = gym.spec(env_id).entry_point
    try:
        return entry if callable(entry) else gym.envs.registration.load_env_creator(entry)
    except Exception:  # noqa: BLE001 - a name the registry resolves only when building
        return None


def sessions_may_overlap(env_id: str) -> bool:
    """Whether ``env_id``'s sessions may run env calls at the same time in one process: its class's
    ``SUPPORTS_CONCURRENT_SESSIONS`` (True where the class says nothing)."""
    return bool(getattr(_env_class(env_id), "SUPPORTS_CONCURRENT_SESSIONS", True))


def _metadata(env_id: str) -> EnvironmentMetadata:
    """The env's metadata from its registered class, without building one."""
    cls = _env_class(env_id)
    doc = ((getattr(cls, "__doc__", None) or "").strip().splitlines() or [env_id])[0]
    return EnvironmentMetadata(name=env_id, description=doc, version=_version())
