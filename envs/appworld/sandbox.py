"""The operating-system sandbox agent code runs in (host side).

Model-written code is hostile (an RL policy is optimised to find whatever raises its reward), so it
never runs in a process that holds the app databases, the ground truth or the grader:

- ``Sandbox`` starts ``jail/zygote.py`` under bubblewrap as the unprivileged user nobody, with new
  user, pid, mount, net, ipc and uts namespaces, no network, no /proc, no /tmp, and a read-only view
  of /usr (with /usr/bin and /usr/sbin emptied but for the interpreter) and of ``jail/``. No path of
  the agentgym data directory (AppWorld, tasks, ground truth, experiment outputs) exists in it.
  Nothing in it is writable: the root, ``/dev`` (with ``/dev/shm``) and every other mount are
  read-only, so an episode can leave no file for the next one and cannot hold host memory in a
  tmpfs (bubblewrap's ``/dev`` is a tmpfs that ``--remount-ro /`` alone leaves writable).
- ``Sandbox.spawn`` forks a fresh episode process from that pre-loaded template (a few ms): it gets
  namespaces of its own (pid 1 of its pid namespace), rlimits and a seccomp filter, and one socket.
- ``Episode.execute`` sends code and relays the process's ``apis.<app>.<api>(**kwargs)`` requests to
  a callback (the env forwards them to the apps process); it enforces the hard deadline from here.

>>> from agentgym.envs.appworld.sandbox import sandbox_problem
>>> sandbox_problem() is None or isinstance(sandbox_problem(), str)
True
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from agentgym.envs.appworld.workers import drop_root, kill_session

JAIL_DIR = Path(__file__).resolve().parent / "jail"
PYTHON = "/usr/bin/python3"  # Debian's interpreter: world-readable, stdlib only
NOBODY = 65534
MAX_MESSAGE = 32 << 20  # bytes of one JSON line from the sandbox (bounded read)

ApiRelay = Callable[[str, str, dict], dict]


class SandboxError(RuntimeError):
    """The sandbox failed; ``cause`` is 'timeout', 'crashed' or 'start'."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause


def sandbox_problem() -> str | None:
    """Why the sandbox cannot run on this machine, or None."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed: run scripts/setup_appworld.sh (apt-get install bubblewrap)"
    if not os.path.exists(PYTHON):
        return f"{PYTHON} is missing (Debian's python3 runs the sandbox)"
    if not os.path.exists("/usr/lib/python3/dist-packages/seccomp.cpython-311-x86_64-linux-gnu.so") and \
            not list(Path("/usr/lib/python3/dist-packages").glob("seccomp*.so")):
        return "python3-seccomp is not installed: run scripts/setup_appworld.sh (apt-get install python3-seccomp)"
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is needed to drop root before starting the sandbox"
    return None


def bwrap_command() -> list[str]:
    """The bubblewrap command line of the template process (as a list: nothing goes through a shell)."""
    drop = drop_root(NOBODY, NOBODY) if os.geteuid() == 0 else []
    interpreter = os.path.realpath(PYTHON)
    cmd = [*drop, "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--clearenv", "--setenv", "LANG", "C.UTF-8", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
           "--setenv", "PYTHONHASHSEED", "0", "--hostname", "appworld-sandbox",
           "--ro-bind", "/usr", "/usr",
           "--tmpfs", "/usr/bin", "--tmpfs", "/usr/sbin", "--tmpfs", "/usr/local",
           "--ro-bind", interpreter, interpreter, "--symlink", interpreter, PYTHON,
           "--remount-ro", "/usr/bin", "--remount-ro", "/usr/sbin", "--remount-ro", "/usr/local",
           "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
           "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
           "--dev", "/dev", "--remount-ro", "/dev", "--ro-bind", str(JAIL_DIR), "/jail", "--chdir", "/",
           "--remount-ro", "/",
           interpreter, "-I", "-S", "-B", "/jail/zygote.py"]
    return cmd


class Sandbox:
    """The template process (one per env); ``spawn`` gives a fresh episode process."""

    def __init__(self, *, mem_mb: int = 1024, cpu_seconds: int = 600, start_timeout: float = 30.0):
        self.mem_mb, self.cpu_seconds, self.start_timeout = mem_mb, cpu_seconds, start_timeout
        self.proc: subprocess.Popen | None = None
        self.ctl: socket.socket | None = None
        self.starts = 0
        self.stderr_tail: list[str] = []
        self._lock = threading.Lock()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        problem = sandbox_problem()
        if problem is not None:
            raise SandboxError(problem, "start")
        self.kill()
        host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(bwrap_command(), stdin=child, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        finally:
            child.close()
        self.ctl = host
        self.starts += 1
        threading.Thread(target=self._drain_stderr, args=(self.proc,), daemon=True).start()
        ready = self._receive(self.start_timeout)
        if not ready.get("ready"):
            tail = "\n".join(self.stderr_tail[-10:])
            self.kill()
            raise SandboxError(f"the AppWorld sandbox did not start: {ready} {tail}", "start")
        if not ready.get("seccomp"):
            self.kill()
            raise SandboxError("python3-seccomp is not importable inside the sandbox", "start")

    def ensure(self) -> None:
        if not self.alive:
            self.start()

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for raw in iter(lambda: proc.stderr.readline(4096), b""):
            self.stderr_tail.append(raw.decode(errors="replace").rstrip())
            del self.stderr_tail[:-50]

    def _receive(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.ctl], [], [], timeout)
        if not ready:
            return {"error": f"no answer within {timeout}s"}
        data = self.ctl.recv(65536)
        return json.loads(data) if data else {"error": "the template exited: " + " | ".join(self.stderr_tail[-5:])}

    def spawn(self) -> Episode:
        """A fresh episode process (its own namespaces, limits and seccomp filter)."""
        with self._lock:
            self.ensure()
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                request = {"op": "spawn", "limits": {"mem_mb": self.mem_mb, "cpu_seconds": self.cpu_seconds}}
                socket.send_fds(self.ctl, [json.dumps(request).encode()], [theirs.fileno()])
            finally:
                theirs.close()
            reply = self._receive(10)
        if "pid" not in reply:
            mine.close()
            self.kill()
            raise SandboxError(f"the sandbox could not spawn an episode: {reply}", "start")
        episode = Episode(self, mine, int(reply["pid"]))
        hello = episode._read(time.monotonic() + 10)
        if hello is None or not hello.get("ready"):
            episode.close()
            raise SandboxError("the episode process did not come up: " + " | ".join(self.stderr_tail[-5:]),
                               "start")
        return episode

    def kill_episode(self, pid: int) -> None:
        """SIGKILL one episode (and its namespace) through the template; kill the template if it
        does not answer."""
        with self._lock:
            if not self.alive:
                return
            try:
                self.ctl.send(json.dumps({"op": "kill", "pid": pid}).encode())
                reply = self._receive(5)
            except OSError as exc:
                reply = {"error": str(exc)}
        if "killed" not in reply:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the template's whole session (bwrap, the template, every episode)."""
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        if self.proc is None:
            return
        kill_session(self.proc)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    close = kill


class Episode:
    """One episode process: ``execute`` runs code there; ``close`` kills it."""

    def __init__(self, sandbox: Sandbox, sock: socket.socket, pid: int):
        self.sandbox, self.sock, self.pid = sandbox, sock, pid
        self.buffer = b""
        self.closed = False

    def _read(self, deadline: float) -> dict | None:
        """The next message, None at EOF; raises SandboxError('timeout') past ``deadline``."""
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxError("the sandboxed code did not finish in time", "timeout")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return None
            self.buffer += chunk
            if len(self.buffer) > MAX_MESSAGE and b"\n" not in self.buffer:
                raise SandboxError(f"the sandbox sent a message over {MAX_MESSAGE} bytes", "crashed")
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            raise SandboxError("the sandbox sent a message that is not JSON", "crashed") from None
        return message if isinstance(message, dict) else {}

    def _send(self, message: dict) -> None:
        self.sock.sendall(json.dumps(message, default=str).encode() + b"\n")

    def execute(self, code: str, *, relay: ApiRelay, timeout: float, hard_timeout: float,
                max_output_chars: int, max_api_calls: int = 1000) -> dict[str, Any]:
        """Run ``code``; returns {"output", "chars", "api_calls"}. Raises SandboxError on a crash
        or when the hard deadline passes (the episode process is then killed)."""
        if self.closed:
            raise SandboxError("the episode process is closed", "crashed")
        deadline = time.monotonic() + hard_timeout
        calls = 0
        try:
            self._send({"exec": code, "timeout": timeout, "max_output_chars": max_output_chars})
            while True:
                message = self._read(deadline)
                if message is None:
                    raise SandboxError("the sandboxed process died" +
                                       (": " + self.sandbox.stderr_tail[-1] if self.sandbox.stderr_tail else ""),
                                       "crashed")
                if "done" in message:
                    done = message["done"] if isinstance(message["done"], dict) else {}
                    return {"output": str(done.get("output", ""))[:max_output_chars],
                            "chars": int(done.get("chars") or 0), "api_calls": calls}
                request = message.get("api")
                if not (isinstance(request, list) and len(request) == 3 and isinstance(request[0], str)
                        and isinstance(request[1], str) and isinstance(request[2], dict)):
                    self._send({"error": "malformed API request", "type": "ValueError"})
                    continue
                calls += 1
                if calls > max_api_calls:
                    self._send({"error": f"Maximum number of API calls ({max_api_calls}) per execution "
                                         "reached.", "type": "Exception"})
                    continue
                self._send(relay(*request))
        except SandboxError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise SandboxError(f"the sandboxed process died: {exc}", "crashed") from None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.close()
        finally:
            self.sandbox.kill_episode(self.pid)
