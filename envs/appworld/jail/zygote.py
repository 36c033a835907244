"""The AppWorld agent sandbox: a pre-loaded template that forks one fresh process per episode.

Runs INSIDE bubblewrap (see ``../sandbox.py``) under Debian's ``/usr/bin/python3 -I -S``, as the
unprivileged user nobody, with no network, no /proc, no /tmp and a read-only view of /usr (shell
binaries hidden) plus this folder. Nothing of AppWorld, its databases, the tasks or the grader is
in the view: the agent's ``apis.<app>.<api>(...)`` calls travel as JSON over the episode's socket to
the agentgym process, which forwards them to the separate apps process.

Control protocol (fd 0, an AF_UNIX SOCK_SEQPACKET socket from the agentgym process), one JSON
message per packet:

- ``{"op": "spawn", "limits": {...}}`` with one file descriptor (the episode's stream socket): fork
  a child that enters new user, pid, mount, net, ipc and uts namespaces and forks the episode
  process (pid 1 of its own pid namespace, so it cannot name, signal or trace this template or any
  other episode); answers ``{"pid": <episode pid as seen here>}``.
- ``{"op": "kill", "pid": P}``: SIGKILL an episode this template spawned (its whole namespace dies)
  and answer once it has exited.

Episode protocol (newline-delimited JSON on the episode socket): ``{"exec": code, "timeout": s,
"max_output_chars": n}`` -> any number of ``{"api": [app, api, kwargs]}`` requests (answered with
``{"ok": value}`` or ``{"error": text, "type": name}``) -> ``{"done": {"output", "chars"}}``.

Inside the episode process, before any agent code: rlimits (address space, CPU seconds, no new
processes, no file writes, few fds) and a seccomp filter (no execve, fork, new sockets, ptrace,
kill, mount, namespaces, bpf, keyrings, io_uring, System V shared memory and message queues).
Nothing in the sandbox's filesystem is writable (``/dev`` and ``/dev/shm`` included), so an episode
holds no memory outside its own address-space limit and leaves nothing behind for the next one.
Agent code then runs with full Python power in this process: the boundary is the kernel, not the
Python level.
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import io
import json
import linecache
import os
import resource
import select
import signal
import socket
import sys
import traceback

# Modules agent code commonly imports, loaded once here so every forked episode has them warm.
import calendar, collections, copy, datetime, decimal, difflib, fractions, functools, heapq  # noqa: E401,F401
import itertools, math, operator, random, re, statistics, string, textwrap, time, uuid, zoneinfo  # noqa: E401,F401
import bisect, dataclasses, enum, typing  # noqa: E401,F401

sys.path.append("/usr/lib/python3/dist-packages")  # only to load libseccomp's binding
try:
    import seccomp
except ImportError:  # the host side refuses to start without it; keep the message precise
    seccomp = None
finally:
    sys.path.remove("/usr/lib/python3/dist-packages")

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
CLONE_THREAD = 0x00010000
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
MAX_MESSAGE = 16 << 20  # bytes of one JSON line from the host (code is far smaller)
_libc = ctypes.CDLL(None, use_errno=True)

# Syscalls an episode never needs; each fails with EPERM (clone3 with ENOSYS so libc falls back).
DENIED_SYSCALLS = (
    "execve", "execveat", "fork", "vfork", "socket", "socketpair", "connect", "bind", "listen",
    "accept", "accept4", "ptrace", "process_vm_readv", "process_vm_writev", "kill", "tkill",
    "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal",
    "pidfd_getfd", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "mount_setattr",
    "open_tree", "move_mount", "fsopen", "fsmount", "fsconfig", "fspick", "keyctl", "add_key",
    "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "open_by_handle_at", "name_to_handle_at", "init_module", "finit_module",
    "delete_module", "kexec_load", "reboot", "swapon", "swapoff", "setuid", "setgid", "setreuid",
    "setregid", "setresuid", "setresgid", "setgroups", "personality", "memfd_create",
    # System V IPC and POSIX message queues: memory outside the address-space limit
    "shmget", "shmat", "shmctl", "msgget", "msgsnd", "semget", "mq_open",
)

PREAMBLE = '''\
import calendar, datetime, itertools, json, math, random, re
from collections import Counter, defaultdict
from collections.abc import Iterator
from copy import deepcopy
from functools import reduce
import builtins as _builtins

def print(*args, **kwargs):
    if not kwargs and len(args) == 1 and isinstance(args[0], (list, tuple, dict)):
        indent = 1 if len(json.dumps(args[0])) >= 100 else None
        _builtins.print(json.dumps(args[0], indent=indent))
    else:
        _builtins.print(*args, **kwargs)

def input(*args, **kwargs):
    raise Exception("input(..) is not allowed. All decisions must be made autonomously.")
'''


# --------------------------------------------------------------------------- template side
def main() -> int:
    ctl = socket.socket(fileno=0)
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no ptrace or /proc/<pid>/mem access to the template
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    ctl.send(json.dumps({"ready": True, "seccomp": seccomp is not None, "pid": os.getpid()}).encode())
    spawned: set[int] = set()
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(ctl, 65536, 4)
        except (ConnectionError, OSError):
            return 0
        if not data:
            return 0  # the agentgym process went away
        try:
            request = json.loads(data)
            if request.get("op") == "spawn" and len(fds) == 1:
                pid = _spawn(ctl, fds[0], request.get("limits") or {})
                spawned.add(pid)
                reply = {"pid": pid}
            elif request.get("op") == "kill":
                pid = int(request["pid"])
                reply = {"killed": False}
                if pid in spawned:
                    spawned.discard(pid)
                    reply = {"killed": _kill_and_wait(pid)}
            else:
                reply = {"error": f"unknown request {str(request)[:200]}"}
        except Exception as exc:  # report, keep serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        ctl.send(json.dumps(reply).encode())


def _kill_and_wait(pid: int, timeout: float = 3.0) -> bool:
    """SIGKILL an episode and wait until it has exited (its files, ptys and memory released), so
    the next episode never starts beside what is left of the last one. (The host waits 5 s for the
    answer before it kills the whole template, so this waits less.)"""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        signal.pidfd_send_signal(handle, signal.SIGKILL)
        select.select([handle], [], [], timeout)  # readable once the process has exited
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(handle)


def _spawn(ctl: socket.socket, channel_fd: int, limits: dict) -> int:
    """Fork the namespace child; it forks the episode process and reports that pid."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the namespace child: never returns
        status = 1
        try:
            os.close(read_end)
            ctl.close()
            flags = CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
            if _libc.unshare(flags) != 0:
                raise OSError(ctypes.get_errno(), "unshare of the episode namespaces failed")
            episode = os.fork()
            if episode == 0:
                os.close(write_end)
                _episode_main(channel_fd, limits)  # never returns
            os.write(write_end, str(episode).encode())
            status = 0
        except BaseException as exc:
            os.write(write_end, f"error: {exc}".encode()[:500])
        finally:
            os._exit(status)
    os.close(write_end)
    report = b""
    while chunk := os.read(read_end, 512):
        report += chunk
    os.close(read_end)
    os.waitpid(child, 0)
    text = report.decode()
    if not text.isdigit():
        raise RuntimeError(text or "the namespace child died before reporting")
    return int(text)


# --------------------------------------------------------------------------- episode side
def _confine(limits: dict) -> None:
    """Rlimits and the seccomp filter; after this, the process can only compute and talk on its
    already-open socket."""
    mem = int(limits.get("mem_mb", 1024)) << 20
    cpu = int(limits.get("cpu_seconds", 600))
    for name, value in (("RLIMIT_AS", mem), ("RLIMIT_CPU", cpu), ("RLIMIT_NPROC", 0),
                        ("RLIMIT_FSIZE", 0), ("RLIMIT_CORE", 0), ("RLIMIT_NOFILE", 32),
                        ("RLIMIT_MEMLOCK", 0), ("RLIMIT_MSGQUEUE", 0)):
        resource.setrlimit(getattr(resource, name), (value, value))
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if seccomp is None:
        raise RuntimeError("python3-seccomp is not installed; refusing to run agent code unfiltered")
    filt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            filt.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (RuntimeError, ValueError):  # a syscall this kernel/arch does not have
            pass
    filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    # clone is allowed only for threads (CLONE_THREAD set): no new processes
    filt.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))
    filt.load()


class _Channel:
    """Newline-delimited JSON over the episode socket, bounded per message."""

    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)
        self.reader = self.sock.makefile("rb")

    def send(self, message: dict) -> None:
        self.sock.sendall(json.dumps(message, default=str).encode() + b"\n")

    def receive(self) -> dict | None:
        line = self.reader.readline(MAX_MESSAGE)
        if not line:
            return None
        return json.loads(line)


class _App:
    """``apis.<app>``: attribute access names an API; calling it asks the host."""

    def __init__(self, channel: _Channel, name: str):
        self._channel, self._name = channel, name

    def __getattr__(self, api: str):
        if api.startswith("__"):
            raise AttributeError(api)

        def call(*args, **kwargs):
            if args:
                raise TypeError(f"apis.{self._name}.{api} takes keyword arguments only")
            # SIGALRM waits while a call is in flight, so a timeout never splits a request from its reply
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            try:
                self._channel.send({"api": [self._name, api, kwargs]})
                reply = self._channel.receive()
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
            if reply is None:
                raise ConnectionError("the AppWorld host closed the episode")
            if "error" in reply:
                kind = getattr(builtins, str(reply.get("type")), Exception)
                if not (isinstance(kind, type) and issubclass(kind, Exception)):
                    kind = Exception
                raise kind(reply["error"])
            return reply.get("ok")

        call.__name__ = api
        return call


class _Apis:
    def __init__(self, channel: _Channel):
        self._channel = channel

    def __getattr__(self, app: str) -> _App:
        if app.startswith("__"):
            raise AttributeError(app)
        return _App(self._channel, app)


class _Capped(io.TextIOBase):
    """stdout/stderr of agent code: keeps the first ``cap`` characters, counts the rest."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.kept, self.total = cap, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        text = str(text)
        self.total += len(text)
        if self.kept < self.cap:
            piece = text[: self.cap - self.kept]
            self.parts.append(piece)
            self.kept += len(piece)
        return len(text)

    def value(self) -> str:
        return "".join(self.parts)


class _Timeout(BaseException):
    """Raised by SIGALRM in agent code (a BaseException, so ``except Exception`` does not eat it)."""


def _on_alarm(signum, frame):
    raise _Timeout()


def _failure(exc: BaseException, cap: int) -> str:
    """AppWorld-style traceback text: the agent's own frames only, bounded."""
    try:
        te = traceback.TracebackException(type(exc), exc, exc.__traceback__, max_group_width=5,
                                          compact=True)
        te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename == "<python-input>"])
        text = "".join(te.format())
        text = text.replace("Traceback (most recent call last):\n", "", 1)
        text = textwrap.dedent(text[: cap + 1000])
    except BaseException as inner:  # e.g. MemoryError while rendering a huge message
        text = f"{type(exc).__name__} (its message could not be shown: {type(inner).__name__})"
    return "Execution failed. Traceback:\n" + text


def _run(code: str, namespace: dict, timeout: float, cap: int) -> tuple[str, int]:
    if not code.strip():
        return "No code available to execute.", 0
    try:
        compiled = compile(code, "<python-input>", "exec")
    except SyntaxError as exc:
        text = ("Execution failed. Traceback:\nSyntax error in line:\n" + (exc.text or "").rstrip()
                + "\nMessage: " + str(exc.msg))
        return text[:cap], len(text)
    except (ValueError, MemoryError, RecursionError) as exc:
        return f"Execution failed. Traceback:\n{type(exc).__name__}: the code could not be compiled", 0
    linecache.cache["<python-input>"] = (len(code), None, code.splitlines(True), "<python-input>")
    out = _Capped(cap)
    sys.stdout = sys.stderr = out
    signal.signal(signal.SIGALRM, _on_alarm)
    error = None
    try:
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            exec(compiled, namespace)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Timeout:
        error = f"Execution failed. Traceback:\nExecution timed out after {timeout:g} seconds."
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the episode goes on
        error = _failure(exc, cap)
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    if error is not None:  # as in AppWorld, a failed action shows the traceback only
        return error[:cap], len(error)
    text = out.value()
    return (text if text.strip() else "Execution successful."), max(out.total, 1)


def _episode_main(channel_fd: int, limits: dict) -> None:
    status = 0
    try:
        channel = _Channel(channel_fd)
        _confine(limits)
        namespace = {"__name__": "__main__", "__builtins__": builtins, "apis": _Apis(channel)}
        exec(compile(PREAMBLE, "<preamble>", "exec"), namespace)
        channel.send({"ready": True})
        while (message := channel.receive()) is not None:
            cap = int(message.get("max_output_chars", 100_000))
            output, chars = _run(str(message.get("exec", "")), namespace, float(message.get("timeout", 20)), cap)
            channel.send({"done": {"output": output, "chars": chars}})
    except BaseException as exc:
        try:
            os.write(2, f"episode: {type(exc).__name__}: {exc}\n".encode()[:2000])
        except OSError:
            pass
        status = 1
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
