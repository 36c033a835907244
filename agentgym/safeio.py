"""Files written into folders agentgym did not create (a run folder from elsewhere, a shared checkpoint),
and files read from them, without following symbolic links planted there.

A run folder is data from whoever made it: a ``report.html.tmp`` or ``metrics.jsonl`` that is a
symlink to ``~/.bashrc`` (or to a ``.pth`` file, which Python runs at its next start) must never be
written through. So:

- ``write_atomic(path, data)`` writes a fresh temporary file beside ``path``, created exclusively
  (``O_CREAT | O_EXCL | O_NOFOLLOW``: never an existing file, never through a link), fsyncs it and
  renames it over ``path`` (a rename replaces a planted link itself, never its target);
- ``open_append(path)`` opens a log for appending with ``O_NOFOLLOW`` and refuses anything that is
  not a regular file (a link, a FIFO that would block, a device), as ``UnsafePathError``;
- ``read_regular(path, limit)`` reads a file that is a regular file, not a link, up to ``limit``
  bytes (a link to ``/dev/zero`` or a FIFO is refused rather than read forever).

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> os.symlink(os.path.join(d, "victim"), os.path.join(d, "out.txt"))
>>> _ = write_atomic(os.path.join(d, "out.txt"), "hello")
>>> os.path.exists(os.path.join(d, "victim")), open(os.path.join(d, "out.txt")).read()
(False, 'hello')
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO

__all__ = ["UnsafePathError", "write_atomic", "open_append", "open_read", "read_regular", "check_not_symlink"]


class UnsafePathError(OSError, ValueError):
    """A path agentgym would write or read through is a symbolic link or not a regular file (an
    ``OSError`` and a ``ValueError``: the commands report it in one line as bad input)."""

    def __str__(self) -> str:
        return str(self.strerror)


def check_not_symlink(path: str | Path, what: str = "") -> None:
    """Raise ``UnsafePathError`` when ``path`` exists as a symbolic link."""
    if os.path.islink(path):
        target = os.readlink(path)
        raise UnsafePathError(errno.ELOOP, f"{what or path} is a symbolic link (to {target!r}); agentgym neither "
                                           f"writes nor reads run-folder files through links", str(path))


def write_atomic(path: str | Path, data: str | bytes, *, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` (str: UTF-8, lone surrogates replaced) atomically, never writing
    through a symbolic link: an exclusively created temporary file beside it, renamed over it."""
    path = Path(path)
    raw = data.encode("utf-8", errors="replace") if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _open_regular(path: Path, flags: int, what: str) -> int:
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            check_not_symlink(path, what)
        if exc.errno == errno.ENXIO:  # a FIFO without a reader
            raise UnsafePathError(errno.ENXIO, f"{what or path} is not a regular file", str(path)) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafePathError(errno.EINVAL, f"{what or path} is not a regular file", str(path))
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def open_append(path: str | Path, what: str = "") -> BinaryIO:
    """``open(path, "ab")`` that refuses a symbolic link or anything but a regular file."""
    fd = _open_regular(Path(path), os.O_RDWR | os.O_APPEND | os.O_CREAT, what)  # readable: to check its last byte
    return os.fdopen(fd, "ab")


def open_read(path: str | Path, what: str = "", *, follow_links: bool = False) -> BinaryIO:
    """``open(path, "rb")`` of a regular file; a symbolic link is refused unless ``follow_links`` (a
    file the user named on the command line), and a FIFO or device always."""
    path = Path(path)
    if follow_links:
        path = path.resolve()
    return os.fdopen(_open_regular(path, os.O_RDONLY, what), "rb")


def read_regular(path: str | Path, limit: int, what: str = "") -> bytes:
    """The bytes of ``path``, a regular file and not a link, refused (``UnsafePathError``) when it is
    larger than ``limit`` bytes."""
    fd = _open_regular(Path(path), os.O_RDONLY, what)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafePathError(errno.EFBIG, f"{what or path} is larger than {limit:,} bytes", str(path))
    return data
