"""A JSON Lines trajectory store: one ``Trajectory`` per line, appended and flushed as episodes end.

A crash loses at most the episodes that were still running: every finished one is a complete line
on disk (``fsync=True`` also survives a power cut). Reading back tolerates a truncated LAST line
(the write that was cut off) and reports where; a damaged line anywhere else is an error, because
that is corruption rather than an interrupted append.

>>> import tempfile, os
>>> from agentgym.types import Trajectory
>>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
>>> with TrajectoryStore(path) as store:
...     store.append(Trajectory(task_id="t0"))
>>> [t.task_id for t in read_trajectories(path)]
['t0']
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import Iterator

from agentgym.safeio import open_append
from agentgym.types import Trajectory

__all__ = ["TrajectoryStore", "read_trajectories", "StoreCorruptError"]


class StoreCorruptError(ValueError):
    """A line other than the last one does not parse as a Trajectory."""


class TrajectoryStore:
    """Append-only JSON Lines writer (thread-safe; one line per trajectory)."""

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._lock = threading.Lock()
        raw = open_append(self.path)  # never through a symbolic link planted in the folder
        self._repair_tail(raw.fileno())
        self._file = io.TextIOWrapper(raw, encoding="utf-8")
        self.count = 0

    @staticmethod
    def _repair_tail(fd: int) -> None:
        # A previous run cut off mid-line would glue our first record onto its fragment: end the
        # fragment with a newline so it stays one (skippable) bad line and ours stays whole.
        end = os.lseek(fd, 0, os.SEEK_END)
        if end and os.pread(fd, 1, end - 1) != b"\n":
            os.write(fd, b"\n")

    def append(self, trajectory: Trajectory) -> None:
        line = trajectory.to_json() + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self.count += 1

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> "TrajectoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Trajectory]:
        return read_trajectories(self.path)


def read_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Yield the trajectories of a store; skip (with a warning) a truncated last line."""
    path = Path(path)
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    # The text ends with "\n" after each complete record, so the final element is b"" normally.
    last_content = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield Trajectory.from_json(line)
        except ValueError as exc:
            # A fragment is tolerated when it is the last content, or when a later run repaired it
            # by ending it with a newline (see TrajectoryStore._repair_tail) - it is then not JSON.
            if number == last_content or not line.rstrip().endswith(b"}"):
                warnings.warn(f"{path}:{number + 1}: skipped a truncated record ({len(line)} bytes): {exc}",
                              stacklevel=2)
                continue
            raise StoreCorruptError(f"{path}:{number + 1}: not a Trajectory record: {exc}") from exc
