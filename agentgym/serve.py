"""``agentgym serve ENV_ID``: a registered env (agentgym's or a user's ``module:Env-v0``) as an
OpenEnv server, for TRL, verifiers / prime-rl, SkyRL or any ``openenv-core`` client, and for
agentgym's own rollout on another machine (``agentgym/Remote-v0`` with ``url=``).

    agentgym serve agentgym/BFCLMultiTurn-v0 --port 8000 --max-sessions 16
    agentgym serve agentgym/WebShop-v0 --env-kwargs '{"data_dir": "/data/webshop"}'

Each WebSocket session gets its own env (see ``agentgym.integrations.openenv_server``); an env
class that declares ``SUPPORTS_CONCURRENT_SESSIONS = False`` has its sessions' env calls run one at a
time (the start-up line says so). The env is
built once before the server listens, so missing data or bad constructor arguments are an error
(exit 2) instead of a server that fails every session. SIGTERM / SIGINT stop it: open sessions are
told to close, every env still open is closed, and the process exits 0.

There is no authentication: whoever reaches the port can open sessions (up to ``--max-sessions``
envs in all, stateless HTTP requests included) and step them with any action. The default bind
address is 127.0.0.1; binding elsewhere prints a warning (README: "Threat model: agentgym serve").

Needs the ``serve`` extra and ``openenv-core`` (installed with ``--no-deps``: its full dependency
set pulls gradio, ~250 MB, which the server never imports; see the README).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from typing import Any

__all__ = ["main", "build_parser"]

DEFAULT_WS_MAX_BYTES = 16 << 20  # one WebSocket message (an action or an observation)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentgym serve", description=(
        "Serve a registered env as an OpenEnv server (WebSocket /ws: reset/step/state; "
        "tool-style call_tool/list_tools actions for envs with tools, text actions for all)."))
    p.add_argument("env_id", help="a registered gymnasium id, or module:Env-v0 for a user's env")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port; the chosen one is printed)")
    p.add_argument("--max-sessions", type=int, default=8,
                   help="envs held at once: WebSocket sessions, each with its own env, and the env of each "
                        "stateless HTTP request (one more is refused); a session's env is kept for the next "
                        "session when it ends, and a new env is built only when none is kept; default 8")
    p.add_argument("--session-timeout", type=float, default=600.0,
                   help="close a session idle this many seconds - its WebSocket, then its env - and an env "
                        "kept this long with no session (0: never); default 600")
    p.add_argument("--env-kwargs", default=None, help="JSON object of constructor kwargs for every session's env")
    p.add_argument("--phase", choices=("train", "eval"), default="train",
                   help="start from the env's declared train or eval constructor kwargs (EnvDefaults)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module (or path.py) that registers envs first; repeatable")
    p.add_argument("--ws-max-bytes", type=int, default=DEFAULT_WS_MAX_BYTES,
                   help=f"largest WebSocket message or HTTP request body accepted (default {DEFAULT_WS_MAX_BYTES})")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    return p


def _env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from agentgym.envspec import env_defaults
    defaults = env_defaults(args.env_id)
    base = dict(defaults.train_kwargs)
    if args.phase == "eval" and defaults.eval_kwargs is not None:
        base = dict(defaults.eval_kwargs)
    if args.env_kwargs is not None:
        try:
            given = json.loads(args.env_kwargs)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--env-kwargs is not JSON: {exc}") from None
        if not isinstance(given, dict):
            raise ValueError(f"--env-kwargs must be a JSON object, got {type(given).__name__}")
        base.update(given)
    return base


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import uvicorn

        from agentgym.integrations.openenv_server import AgentGymEnvironment, make_app
    except ModuleNotFoundError as exc:
        print(f"agentgym serve: {exc.name} is not installed; install the serve extra and openenv-core: "
              "pip install 'agentgym[serve]' && pip install --no-deps openenv-core==0.3.0", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    for name, value, low in (("--port", args.port, 0), ("--max-sessions", args.max_sessions, 1),
                             ("--ws-max-bytes", args.ws_max_bytes, 1024)):
        if value < low or (name == "--port" and value > 65535):
            print(f"agentgym serve: {name} {value} is out of range", file=sys.stderr)
            return 2
    if args.session_timeout < 0:
        print(f"agentgym serve: --session-timeout {args.session_timeout} is negative", file=sys.stderr)
        return 2
    try:
        if args.imports:
            from agentgym.plugins import import_plugins
            import_plugins(args.imports)
        from agentgym.envspec import check_env_id
        env_id = args.env_id = check_env_id(args.env_id)
        kwargs = _env_kwargs(args)
        first = AgentGymEnvironment(env_id, kwargs)  # fails here, not in every session
    except Exception as exc:  # noqa: BLE001 - any construction failure is the user's to fix
        print(f"agentgym serve: cannot build {args.env_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    app = make_app(env_id, env_kwargs=kwargs, max_sessions=args.max_sessions,
                   session_timeout_s=args.session_timeout or None, max_body_bytes=args.ws_max_bytes)
    if not app.state.agentgym_open.keep_idle(first.env, new=True):  # the first session's env, already built
        first.close()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"agentgym serve: warning: listening on {args.host} without authentication: anyone who reaches "
              f"this port can open up to {args.max_sessions} {env_id} envs and step them with any action "
              "(see the README's threat model)", file=sys.stderr, flush=True)

    # the env's declaration (SUPPORTS_CONCURRENT_SESSIONS): sessions overlap, or their env calls take turns
    serial = ", env calls one session at a time" if app.state.agentgym_serial else ""

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                port = self.servers[0].sockets[0].getsockname()[1] if self.servers else args.port
                print(f"agentgym serve: {env_id} on http://{args.host}:{port} "
                      f"(ws://{args.host}:{port}/ws, max {args.max_sessions} sessions{serial})", flush=True)

    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            ws_max_size=args.ws_max_bytes, timeout_graceful_shutdown=10, lifespan="on")
    server = _Server(config)
    # uvicorn turns SIGINT / SIGTERM into a graceful shutdown (the app's shutdown closes the envs),
    # then restores the handlers it found and raises the signal again: these record it, so the
    # process ends here with its summary and exit code 0 instead of dying of the signal.
    stopped_by: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    opened = app.state.agentgym_open
    left = app.state.agentgym_open.close_all()  # normally 0: the app's shutdown closed them
    why = f" by {signal.Signals(stopped_by[0]).name}" if stopped_by else ""
    print(f"agentgym serve: stopped{why}; {opened.created} session(s), {opened.built} env(s) built, "
          f"{len(opened)} still open"
          f"{f' ({left} closed after the server stopped)' if left else ''}", flush=True)
    return 0 if server.started else 1
