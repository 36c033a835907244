"""An AppWorld worker: one process, one world at a time, JSON over HTTP on a private unix socket.

Runs INSIDE the AppWorld virtualenv (pydantic 1); the agentgym process talks to it with the
standard library only. It is trusted code and never runs model-written code: that runs in the
OS sandbox (``../sandbox.py``), which reaches the apps only through ``/api`` as relayed by the env.

Who can talk to it: the env creates the listening unix socket itself, in a folder only its own
user can enter (mode 0700), and hands it over as ``--listen-fd``; the worker opens no other socket.
Every request must also carry the per-start secret token the env writes on the worker's stdin
(``Authorization: Bearer <token>``), else it gets 401 and nothing runs. Task ids and experiment
names are single path components (``NAME``), so no request reaches a file outside the root.
Two modes:

- ``apps``: APPWORLD_ROOT is the play root (no ground truth). ``/open`` loads a task world (its
  databases live in this process's memory), ``/api`` calls one app API through AppWorld's own
  ``ApiCollection`` (so validation, errors and limits are AppWorld's), ``/step_end`` reports which
  app tables changed and whether the task was completed, ``/save`` writes the end state where the
  grader reads it, ``/close`` closes the world.
- ``grade``: APPWORLD_ROOT is the full root. ``/evaluate`` runs the official
  ``appworld.evaluator.evaluate_task`` over the end state the apps worker saved on disk.

The server is single-threaded: AppWorld freezes the clock of the process that opens a world.

Memory over many worlds: AppWorld builds a new IPython ``InteractiveShellEmbed`` for every world,
and IPython never lets a shell go (each registers ``atexit_operations`` with ``atexit`` and hooks of
its own), so every world's shell - and through its namespace the world's ``apis``, requester and
model collections - stayed alive: the apps worker grew ~0.9 MB per episode (262 -> 450 MB over ~200
episodes). ``share_one_shell`` makes AppWorld use IPython's own process-wide instance
(``InteractiveShellEmbed.instance``), and ``Worker.close`` resets its namespace, so nothing of a
closed world stays: measured flat, 252.4 -> 253.1 MB over 50 worlds after warm-up (~0.015 MB per
episode). The worker never runs code in that shell (model code runs in the sandbox).
"""

from __future__ import annotations

import argparse
import errno
import hmac
import json
import os
import re
import resource
import socket
import socketserver
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A task id or experiment name: one path component (no "/", never "." or "..").
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def checked_name(kind: str, value) -> str:
    """``value`` when it is a safe single path component, else ValueError naming what was given
    (the env checks names with this same function before they reach a worker).

    >>> checked_name("experiment_name", "../../..")
    Traceback (most recent call last):
    ...
    ValueError: experiment_name must be letters, digits, '_', '-' or '.' (not starting with '.'), at most 128 characters; got '../../..'
    """
    if not isinstance(value, str) or not NAME.match(value):
        raise ValueError(f"{kind} must be letters, digits, '_', '-' or '.' (not starting with '.'), "
                         f"at most 128 characters; got {str(value)[:80]!r}")
    return value


def apply_limits(mem_mb: int, cpu_seconds: int, fsize_mb: int) -> None:
    """Cap address space, CPU seconds and file size (no core files)."""
    for name, value in (("RLIMIT_AS", mem_mb << 20), ("RLIMIT_CPU", cpu_seconds),
                        ("RLIMIT_FSIZE", fsize_mb << 20), ("RLIMIT_CORE", 0)):
        limit = getattr(resource, name)
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError) as exc:  # the platform may not allow it: report, go on
            print(f"worker: cannot set {name}: {exc}", file=sys.stderr)


CLONE_THREAD = 0x00010000
AF_INET, AF_INET6, AF_PACKET = 2, 10, 17


def confine_syscalls() -> None:
    """A seccomp filter: threads but no new processes or programs (AppWorld's test client needs a
    thread per world, so RLIMIT_NPROC cannot say this), no ptrace, no network sockets, and no
    bind/listen (the only socket it serves is the one the env handed over). Reported and skipped
    when libseccomp's Python binding (Debian's python3-seccomp, also the sandbox's) cannot load."""
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import seccomp
    except ImportError as exc:
        print(f"worker: no seccomp filter ({exc})", file=sys.stderr)
        return
    finally:
        sys.path.remove("/usr/lib/python3/dist-packages")
    filt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in ("execve", "execveat", "fork", "vfork", "ptrace", "process_vm_readv", "process_vm_writev",
                 "bind", "listen"):
        filt.add_rule(seccomp.ERRNO(errno.EPERM), name)
    for family in (AF_INET, AF_INET6, AF_PACKET):
        filt.add_rule(seccomp.ERRNO(errno.EPERM), "socket", seccomp.Arg(0, seccomp.EQ, family))
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # glibc then creates threads with clone
    filt.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))
    filt.load()  # libseccomp sets no_new_privs first (setpriv already did, run as root)


_BUILTIN_ERRORS = {"Exception", "ValueError", "TypeError", "KeyError", "IndexError", "AttributeError"}
_TABLE = re.compile(r'^\s*(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)"?', re.IGNORECASE)


def share_one_shell() -> None:
    """Make every AppWorld world of this process use one IPython shell (see the module docstring)."""
    import appworld.environment as environment
    from IPython.terminal.embed import InteractiveShellEmbed

    if getattr(environment.InteractiveShellEmbed, "agentgym_shared", False):
        return

    def one_shell(config=None, **kwargs):
        # instance() builds the shell once (with the first world's config: history off) and returns
        # it to every later world
        return InteractiveShellEmbed.instance(config=config, **kwargs)

    one_shell.agentgym_shared = True
    environment.InteractiveShellEmbed = one_shell


class Worker:
    def __init__(self, mode: str, max_output_chars: int):
        self.mode = mode
        self.max_output_chars = max_output_chars
        self.world = None
        self.episodes = 0
        self.task_id = None
        self.marks: dict[str, int] = {}

    # ----------------------------------------------------------- apps mode
    def _trackers(self) -> dict:
        from appworld.common.utils import import_models_module

        return {app: import_models_module(app).SQLModel.db.tracker for app in self.world.task.allowed_apps}

    def open(self, task_id: str, experiment_name: str, max_api_calls: int = 1000) -> dict:
        from appworld import AppWorld

        checked_name("task_id", task_id)
        checked_name("experiment_name", experiment_name)
        self.close()
        self.world = AppWorld(task_id=task_id, experiment_name=experiment_name, load_ground_truth=False,
                              timeout_seconds=None, max_api_calls_per_interaction=max_api_calls,
                              random_seed=100)
        self.task_id = task_id
        self.episodes += 1
        self.marks = {app: len(t.changes) for app, t in self._trackers().items()}
        task = self.world.task
        return {"task_id": task_id, "instruction": task.instruction, "supervisor": dict(task.supervisor),
                "datetime": task.datetime.isoformat(), "app_descriptions": task.app_descriptions}

    def api(self, app: str, api: str, args: dict) -> dict:
        """One ``apis.<app>.<api>(**args)`` call from the sandbox: ``{"ok": result}`` or
        ``{"error": message, "type": exception class name}`` (never an HTTP error: an API failing
        is an ordinary observation for the agent)."""
        if self.world is None:
            raise RuntimeError("no task is open; call /open first")
        if not (isinstance(app, str) and _NAME.match(app) and isinstance(api, str) and _NAME.match(api)):
            return {"error": f"no API named {str(api)[:60]!r} in app {str(app)[:60]!r}", "type": "Exception"}
        if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
            return {"error": "API arguments must be keyword arguments", "type": "TypeError"}
        apps = self.world.apis
        if app not in apps:
            return {"error": f"No app named {app!r} is available in this task. Available apps: "
                             f"{', '.join(sorted(apps.keys()))}.", "type": "Exception"}
        if api not in apps[app]:
            return {"error": f"No API named {api!r} found in the {app} app.", "type": "Exception"}
        try:
            result = apps[app][api](**args)
        except Exception as exc:
            name = type(exc).__name__
            return {"error": str(exc)[:20_000], "type": name if name in _BUILTIN_ERRORS else "Exception"}
        return {"ok": json.loads(json.dumps(result, default=str))}

    def step_end(self) -> dict:
        """Tables changed since the last call, whether the task was completed; resets the
        per-action API call budget (as ``AppWorld.execute`` does)."""
        if self.world is None:
            raise RuntimeError("no task is open; call /open first")
        changes: dict[str, dict[str, dict[str, int]]] = {}
        for app, tracker in self._trackers().items():
            for statement, _params, _many in tracker.changes[self.marks.get(app, 0):]:
                match = _TABLE.match(statement)
                if match is None or "_fts" in match.group(2):  # skip full-text-search shadow tables
                    continue
                op = match.group(1).split()[0].lower()
                tables = changes.setdefault(app, {})
                tables.setdefault(match.group(2), {}).setdefault(op, 0)
                tables[match.group(2)][op] += 1
            self.marks[app] = len(tracker.changes)
        self.world.requester.reset_request_count()
        return {"changes": changes, "completed": bool(self.world.task_completed())}

    def save(self) -> dict:
        """Write the world's current state where the grader reads it."""
        if self.world is None:
            raise RuntimeError("no task is open; call /open first")
        self.world._save_state(self.world.output_db_home_path_on_disk)
        return {"saved": True}

    def close(self) -> dict:
        if self.world is not None:
            shell = getattr(self.world, "shell", None)
            try:
                self.world.close()
            finally:
                self.world = None
                from appworld.apps.api_lib import clear_local_dbs_cache

                clear_local_dbs_cache()
                if shell is not None:  # the shared shell keeps nothing of the closed world
                    shell.reset(new_session=False)
        return {"closed": True}

    # ----------------------------------------------------------- grade mode
    def evaluate(self, task_id: str, experiment_name: str) -> dict:
        from appworld.apps.api_lib import clear_local_dbs_cache
        from appworld.evaluator import evaluate_task

        checked_name("task_id", task_id)
        checked_name("experiment_name", experiment_name)
        try:
            tracker = evaluate_task(task_id=task_id, experiment_name=experiment_name,
                                    suppress_errors=True, save_report=False)
            result = tracker.to_dict()
            result["failures"] = [{"requirement": f["requirement"], "trace": f["trace"][-2000:]}
                                  for f in result["failures"]]
            return result
        finally:
            clear_local_dbs_cache()
            self.episodes += 1


def make_handler(worker: Worker, token: str):
    routes = {"apps": {"/open": worker.open, "/api": worker.api, "/step_end": worker.step_end,
                       "/save": worker.save, "/close": worker.close},
              "grade": {"/evaluate": worker.evaluate}}[worker.mode]
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: the parent process logs what matters
            pass

        def address_string(self) -> str:  # a unix socket peer has no address
            return "local"

        def _authorized(self) -> bool:
            """The env's token, compared in constant time; anything else gets 401 and no work."""
            given = self.headers.get("Authorization", "").encode(errors="replace")
            if hmac.compare_digest(given, expected):
                return True
            self._drain()
            self._send(401, {"error": "missing or wrong token: this worker answers only the env that started it"})
            return False

        def _drain(self) -> None:
            """Read (and drop) a small body before refusing a request, so the client, still sending
            it, reads the answer instead of a broken pipe; the connection closes after."""
            try:
                self.rfile.read(min(max(int(self.headers.get("Content-Length", "0")), 0), 1 << 20))
            except (ValueError, OSError):
                pass
            self.close_connection = True

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if not self._authorized():
                return
            if self.path == "/health":
                self._send(200, {"ok": True, "pid": os.getpid(), "mode": worker.mode,
                                 "episodes": worker.episodes, "task_id": worker.task_id})
            else:
                self._send(404, {"error": f"no route GET {self.path}"})

        def do_POST(self):
            if not self._authorized():
                return
            handler = routes.get(self.path)
            if handler is None:
                self._drain()
                self._send(404, {"error": f"no route POST {self.path} in {worker.mode} mode"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                args = json.loads(self.rfile.read(length) or b"{}")
                self._send(200, {"output": handler(**args)})
            except Exception as exc:  # report to the client; the worker stays up
                self._send(500, {"error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc()[-4000:]})

    return Handler


def _exit_with_parent(parent: int) -> None:
    """Exit when the agentgym process that started us (pid ``parent``) is gone (no orphaned workers).

    The pid comes from the command line, not from ``os.getppid()`` here: the warm-up before this
    runs takes seconds, and an owner that died during it would already have been replaced by init."""
    import threading

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["apps", "grade"], required=True)
    parser.add_argument("--listen-fd", type=int, required=True,
                        help="a listening unix stream socket the env created (and alone can reach)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process (the env that started the worker) is gone")
    parser.add_argument("--max-output-chars", type=int, default=1_000_000)
    parser.add_argument("--mem-mb", type=int, default=3072)
    parser.add_argument("--cpu-seconds", type=int, default=3600)
    parser.add_argument("--fsize-mb", type=int, default=64)
    args = parser.parse_args(argv)
    token = sys.stdin.readline().strip()  # never on the command line (other users can read argv)
    if len(token) < 32:
        print("worker: no token on stdin; refusing to serve", file=sys.stderr)
        return 2
    worker = Worker(args.mode, args.max_output_chars)
    # Import AppWorld (and warm it up) before limits and the guard are in force.
    import appworld.environment  # noqa: F401
    import appworld.evaluator  # noqa: F401

    share_one_shell()
    from appworld.apps import get_all_apps
    from appworld.common.utils import import_apis_module, import_models_module

    for app in get_all_apps():  # a cold first API call must not eat an action's time budget
        import_models_module(app)
        if args.mode == "apps":
            import_apis_module(app)

    server = socketserver.UnixStreamServer("", make_handler(worker, token), bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=args.listen_fd)
    if server.socket.family != socket.AF_UNIX:
        print("worker: --listen-fd is not a unix socket; refusing to serve", file=sys.stderr)
        return 2
    _exit_with_parent(os.getppid() if args.parent_pid is None else args.parent_pid)
    apply_limits(args.mem_mb, args.cpu_seconds, args.fsize_mb)
    confine_syscalls()
    # The parent waits for this line: the worker is warm and about to serve.
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    started = time.time()
    try:
        server.serve_forever()
    finally:
        print(f"worker: exiting after {time.time() - started:.0f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
