"""AppWorld worker processes, owned by the env: spawn, health-check, call, SIGKILL, respawn.

AppWorld pins pydantic 1 and freezes the clock of whatever process opens a world, so it never
runs in our process: each worker is ``<appworld venv>/bin/python worker/server.py``, spoken to
with the standard library only, over HTTP on a unix socket that only the env can reach:

- the env binds the socket itself in a fresh folder of mode 0700 (``private_folder``) and passes
  the listening descriptor to the worker, which opens no socket of its own (no TCP port at all);
- every request carries a secret token drawn per worker start and handed over on the worker's
  stdin; a request without it gets 401;
- run as root, agentgym starts the workers as the unprivileged system user ``WORKER_USER``
  (``setpriv``: no groups, no capabilities, no new privileges); its only writable place is the
  env's own output folder (``prepare_outputs``). Run as another user, they run as that user.

>>> from agentgym.envs.appworld.workers import AppWorldPaths
>>> AppWorldPaths.default().venv_python.name
'python'
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentgym.envs.appworld.worker.server import checked_name  # the rule the worker itself applies
from agentgym.paths import data_dir

WORKER_DIR = Path(__file__).resolve().parent / "worker"
SERVER_SCRIPT = WORKER_DIR / "server.py"
BUILD_SCRIPT = WORKER_DIR / "build.py"
WORKER_USER = "agentgym-appworld"  # created by scripts/setup_appworld.sh
def drop_root(uid: int, gid: int) -> list[str]:
    """The ``setpriv`` prefix that runs a command as ``uid``/``gid``, no groups, no capabilities."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--inh-caps=-all"]


def worker_identity() -> tuple[int, int] | None:
    """(uid, gid) the workers run as: ``WORKER_USER`` when we are root, else None (our own user)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(WORKER_USER)
    except KeyError:
        raise WorkerError(f"run as root, agentgym starts the AppWorld workers as the unprivileged user "
                          f"{WORKER_USER!r}, which does not exist: run scripts/setup_appworld.sh (or "
                          f"useradd --system --no-create-home --shell /usr/sbin/nologin {WORKER_USER})",
                          "start") from None
    if entry.pw_uid == 0 or entry.pw_gid == 0:
        raise WorkerError(f"the user {WORKER_USER!r} has uid/gid 0; it must be unprivileged", "start")
    return entry.pw_uid, entry.pw_gid


def unreadable_by_workers(venv_python: Path, paths: list[Path]) -> list[str]:
    """The paths (files, or folders to list) that the workers' user cannot read, asked of that user
    itself; [] when we are not root (the workers then run as us). The AppWorld interpreter is the
    probe, so an interpreter that user cannot run is reported too."""
    identity = worker_identity()
    if identity is None:
        return []
    probe = ("import os, sys\nfor p in sys.argv[1:]:\n"
             "    os.access(p, os.R_OK | (os.X_OK if os.path.isdir(p) else 0)) or print(p)")
    result = subprocess.run([*drop_root(*identity), "--no-new-privs", str(venv_python), "-I", "-S", "-c", probe,
                             *map(str, paths)], capture_output=True, text=True, timeout=60, cwd="/")
    if result.returncode != 0:
        return [os.path.realpath(venv_python)]
    return result.stdout.splitlines()


def private_folder(prefix: str) -> Path:
    """A fresh folder of mode 0700 owned by us, under a short temp path (unix socket names are
    limited to 107 bytes)."""
    base = tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base if len(base) < 60 else "/tmp"))


def prepare_outputs(root: Path, experiment_name: str) -> Path:
    """A new, empty ``<root>/experiments/outputs/<experiment_name>`` (mode 0700), owned by the
    workers' user: the one place the apps worker writes (end states) and the grader reads."""
    outputs = Path(root) / "experiments" / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    folder = outputs / checked_name("experiment_name", experiment_name)
    os.mkdir(folder, 0o700)  # a new name: fails rather than reuse anything already there
    identity = worker_identity()
    if identity is not None:
        os.chown(folder, *identity, follow_symlinks=False)
    return folder


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def unix_request(socket_path: str | Path, method: str, path: str, payload: dict | None, *,
                 token: str | None, timeout: float) -> tuple[int, dict]:
    """One HTTP request to a worker's unix socket: (status, JSON body). ``token=None`` sends no
    Authorization header (tests use it to show the refusal). Raises OSError / HTTPException when
    the connection fails or times out."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = None if payload is None else json.dumps(payload).encode()
    connection = _UnixHTTPConnection(str(socket_path), timeout)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = {"error": raw.decode(errors="replace")[:2000]}
    return response.status, parsed if isinstance(parsed, dict) else {"output": parsed}


def kill_session(proc: "subprocess.Popen") -> None:
    """SIGKILL a child started with ``start_new_session=True`` and everything in its session, and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        proc.wait(timeout=10)

class WorkerError(RuntimeError):
    """A worker failed to answer; ``cause`` says why ('timeout', 'crashed', 'error', 'start')."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


@dataclass(frozen=True)
class AppWorldPaths:
    """Where the AppWorld venv and the built roots live (under ``agentgym.paths.data_dir``)."""

    base: Path

    @classmethod
    def default(cls) -> AppWorldPaths:
        return cls(data_dir("appworld", create=False))

    @property
    def venv_python(self) -> Path:
        return self.base / "venv" / "bin" / "python"

    @property
    def cache(self) -> Path:
        return self.base / "cache"

    @property
    def root(self) -> Path:  # full root, with ground truth: the grader's
        return self.base / "root"

    @property
    def play(self) -> Path:  # root without ground truth: the apps worker's
        return self.base / "play"

    def missing(self) -> str | None:
        """Why the AppWorld setup is unusable, or None when it is ready."""
        if not self.venv_python.exists():
            return f"AppWorld virtualenv not found at {self.venv_python} (run scripts/setup_appworld.sh)"
        if not (self.root / "data" / "tasks").is_dir() or not (self.play / "data" / "tasks").is_dir():
            return f"AppWorld tasks not built under {self.base} (run `agentgym data appworld`)"
        return None

    def link_experiments(self, root: Path, play: Path) -> None:
        """Let the apps worker write episode end states where the grader reads them.

        ``play/experiments`` becomes a symlink to ``root/experiments`` (created when missing), so
        ``evaluate_task`` in the grader finds the end state the apps worker saved.
        """
        root, play = Path(root), Path(play)
        if root.resolve() == play.resolve():
            return
        shared = root / "experiments"
        shared.mkdir(parents=True, exist_ok=True)
        link = play / "experiments"
        if link.is_symlink() and link.resolve() == shared.resolve():
            return
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            import shutil

            shutil.rmtree(link)
        link.symlink_to(shared.resolve(), target_is_directory=True)


class WorkerProcess:
    """One AppWorld server process (``mode`` 'apps' or 'grade') on a private unix socket (see the
    module docstring); trusted code only (model-written code runs in ``sandbox.Sandbox``, never here).

    ``call`` raises ``WorkerError`` on timeout (after SIGKILL), on a crash, or on a server-side
    error; ``ensure`` (re)starts a dead worker. ``restart_every`` recycles a worker after that
    many calls to ``/open`` or ``/evaluate``, which bounds slow leaks in a long run.
    ``ipython_dir``: a folder the worker may create for the IPython shell AppWorld opens per world
    (inside the env's output folder).
    """

    def __init__(self, mode: str, root: Path, paths: AppWorldPaths, *, max_output_chars: int = 1_000_000,
                 mem_mb: int = 3072, cpu_seconds: int = 3600, fsize_mb: int = 64,
                 start_timeout: float = 120.0, restart_every: int = 300, ipython_dir: Path | None = None):
        if mode not in ("apps", "grade"):
            raise ValueError(f"mode must be 'apps' or 'grade', got {mode!r}")
        self.mode, self.root, self.paths = mode, Path(root), paths
        self.max_output_chars, self.mem_mb, self.cpu_seconds, self.fsize_mb = (
            max_output_chars, mem_mb, cpu_seconds, fsize_mb)
        self.start_timeout, self.restart_every = start_timeout, restart_every
        self.ipython_dir = ipython_dir
        self.proc: subprocess.Popen | None = None
        self.folder: Path | None = None  # private (0700), holds the socket; removed by close()
        self.socket_path: Path | None = None
        self.token: str | None = None
        self.ready = False
        self.uses = 0
        self.starts = 0
        self.stderr_tail: list[str] = []

    # ------------------------------------------------------------------ lifecycle
    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Spawn the worker and wait until it answers its health check."""
        self.spawn()
        self.wait_ready()

    def spawn(self) -> None:
        """Start the process without waiting (``wait_ready`` finishes the start)."""
        self.kill()
        identity = worker_identity()
        if self.folder is None:
            self.folder = private_folder(f"agentgym-appworld-{self.mode}-")
        self.socket_path = self.folder / "worker.sock"
        self.socket_path.unlink(missing_ok=True)
        self.token = secrets.token_hex(32)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "APPWORLD_ROOT": str(self.root),
               "APPWORLD_CACHE": str(self.paths.cache), "HOME": str(self.paths.base / "home"),
               "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
        if self.ipython_dir is not None:  # else IPython makes a new temp folder per world (HOME is read-only)
            env["IPYTHONDIR"] = str(self.ipython_dir)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket_path))
            os.chmod(self.socket_path, 0o600)
            listener.listen(64)
            drop = [] if identity is None else [*drop_root(*identity), "--no-new-privs"]
            cmd = [*drop, str(self.paths.venv_python), str(SERVER_SCRIPT), "--mode", self.mode,
                   "--listen-fd", str(listener.fileno()), "--parent-pid", str(os.getpid()), "--max-output-chars", str(self.max_output_chars),
                   "--mem-mb", str(self.mem_mb), "--cpu-seconds", str(self.cpu_seconds),
                   "--fsize-mb", str(self.fsize_mb)]
            # cwd = the root, so AppWorld's relative paths and dotenv lookups stay inside it.
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         start_new_session=True, pass_fds=(listener.fileno(),))
        finally:
            listener.close()  # the worker holds its own copy
        try:  # the token travels on stdin, never on the command line
            self.proc.stdin.write(self.token.encode() + b"\n")
            self.proc.stdin.close()
        except OSError:  # it died at once: wait_ready reports its stderr
            pass
        self.starts += 1
        self.uses = 0
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()

    def wait_ready(self) -> None:
        if self.ready:
            return
        if self.proc is None:
            raise WorkerError(f"AppWorld {self.mode} worker was never spawned", "start")
        deadline = time.monotonic() + self.start_timeout
        line = b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                break
        if not line:
            tail = "\n".join(self.stderr_tail[-20:])
            self.kill()
            who = "" if worker_identity() is None else (
                f" (it runs as the user {WORKER_USER}, which must be able to read {self.paths.base}, "
                f"{self.root} and {os.path.realpath(self.paths.venv_python)})")
            raise WorkerError(f"AppWorld {self.mode} worker did not start within {self.start_timeout}s{who}: "
                              f"{tail}", "start")
        self.ready = True
        health = self.get("/health", timeout=10)
        if not health.get("ok"):
            raise WorkerError(f"AppWorld worker failed its health check: {health}", "start")

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for raw in iter(proc.stderr.readline, b""):
            self.stderr_tail.append(raw.decode(errors="replace").rstrip())
            del self.stderr_tail[:-200]

    def ensure(self) -> None:
        """Start the worker if it is dead, or recycle it when it has served ``restart_every`` uses."""
        if not self.alive or self.uses >= self.restart_every:
            self.start()
        else:
            self.wait_ready()

    def prestart(self) -> None:
        """Spawn a dead worker in the background (its start overlaps other work)."""
        if not self.alive:
            self.spawn()

    def kill(self) -> None:
        """SIGKILL the whole worker session (a hung worker may ignore SIGTERM)."""
        self.ready = False
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        if self.proc is None:
            return
        kill_session(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.proc = None

    def close(self) -> None:
        """Kill the worker and remove its private folder."""
        self.kill()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def rss_bytes(self) -> int:
        """Resident memory of the worker process (0 when it is not running)."""
        if not self.alive:
            return 0
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss

    # ------------------------------------------------------------------ requests
    def get(self, path: str, timeout: float) -> dict:
        return self._request("GET", path, None, timeout)

    def call(self, path: str, payload: dict[str, Any], timeout: float) -> Any:
        if path in ("/open", "/evaluate"):
            self.uses += 1
        return self._request("POST", path, payload, timeout)["output"]

    def _request(self, method: str, path: str, payload: dict | None, timeout: float) -> dict:
        if not self.alive:
            raise WorkerError(f"AppWorld {self.mode} worker is not running (exit code "
                              f"{self.proc.returncode if self.proc else None})", "crashed")
        try:
            status, body = unix_request(self.socket_path, method, path, payload, token=self.token,
                                        timeout=timeout)
        except (OSError, http.client.HTTPException) as exc:
            timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc)
            died = not self.alive
            self.kill()
            if timed_out and not died:
                raise WorkerError(f"AppWorld worker did not answer {path} within {timeout:.0f}s; killed it",
                                  "timeout") from None
            raise WorkerError(f"AppWorld worker died during {path}: {exc}", "crashed") from None
        if status >= 400:
            raise WorkerError(f"AppWorld worker error on {path}: {body.get('error', body)}", "error")
        return body


def mirror_without_ground_truth(root: Path, dest: Path) -> Path:
    """A play root for an AppWorld root (e.g. the official data): symlinks to every file under
    ``root/data`` except the ``ground_truth`` folders, which the apps worker never needs.

    Idempotent: a mirror already made for the same root is reused.
    """
    root, dest = Path(root).resolve(), Path(dest)
    marker = dest / ".mirror_of"
    if marker.is_file() and marker.read_text() == str(root):
        return dest
    if dest.exists():
        import shutil

        shutil.rmtree(dest)
    src = root / "data"
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "ground_truth"]
        target = dest / "data" / Path(dirpath).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            (target / name).symlink_to(Path(dirpath) / name)
    marker.write_text(str(root))
    return dest


def new_experiment_name() -> str:
    """A name unique to one worker (AppWorld wipes output folders per name and task)."""
    return f"agentgym-{os.getpid()}-{uuid.uuid4().hex[:10]}"
