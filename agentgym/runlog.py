"""The run folder's JSON Lines logs (``metrics.jsonl``, ``trajectories*.jsonl``): durable appends and
the truncation a resume needs.

A run resumed from ``checkpoints/step-K`` must not keep records written after that checkpoint (they
are written again by the resumed run, or belong to a timeline that was abandoned). Every record
carries its update: ``record["update"]`` (metrics; the typed ``Trajectory.update`` field) or, for
older trajectory lines, ``record["metadata"]["update"]``. ``truncate_run(run_dir, keep)`` rewrites
each log atomically (a temporary file beside it, fsynced, renamed over it, the folder fsynced) with
only the records ``keep`` accepts, and also drops a torn line (a write cut off by a kill).

``append_record`` writes one line, flushes and fsyncs it, after ending a torn last line left by an
earlier kill (so that the new record stays a whole line of its own). Neither writes through a
symbolic link planted in the folder (``agentgym.safeio.UnsafePathError``).

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> for k in range(3):
...     append_record(os.path.join(d, "metrics.jsonl"), {"update": k, "phase": "train"})
>>> truncate_records(os.path.join(d, "metrics.jsonl"), 1).kept
2
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from agentgym.safeio import check_not_symlink, open_append, write_atomic
from agentgym.store import StoreCorruptError

__all__ = ["append_record", "record_update", "record_phase", "truncate_records", "truncate_run",
           "written_before_checkpoint", "TruncateReport", "RUN_LOGS", "write_summary", "read_records"]

# The logs of a run folder that carry per-update records (rank files included).
RUN_LOGS = ("metrics.jsonl", "trajectories.jsonl", "trajectories.rank*.jsonl")

Keep = int | Callable[[dict[str, Any]], bool]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_record(path: str | Path, record: dict[str, Any] | str, *, fsync: bool = True) -> None:
    """Append one record as one line (``json.dumps(record, default=float)``, or a ready JSON string
    without line breaks), flushed and (by default) fsynced before returning."""
    path = Path(path)
    line = record if isinstance(record, str) else json.dumps(record, default=float)
    if "\n" in line or "\r" in line:
        raise ValueError("a JSON Lines record must not contain a line break")
    data = (line + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_append(path) as f:  # never through a symbolic link planted in the folder
        end = os.lseek(f.fileno(), 0, os.SEEK_END)
        if end and os.pread(f.fileno(), 1, end - 1) != b"\n":
            data = b"\n" + data  # end a fragment a killed writer left behind
        f.write(data)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def _field(record: Any, key: str) -> Any:
    """``record[key]``, else ``record["metadata"][key]`` (older trajectory lines kept it there)."""
    if not isinstance(record, dict):
        return None
    value = record.get(key)
    if value is None and isinstance(record.get("metadata"), dict):
        value = record["metadata"].get(key)
    return value


def record_update(record: Any) -> int | None:
    """The update a record belongs to: ``record["update"]``, else ``record["metadata"]["update"]``."""
    value = _field(record, "update")
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def record_phase(record: Any) -> str | None:
    """``record["phase"]`` (metrics; a typed trajectory field), else ``record["metadata"]["phase"]``."""
    value = _field(record, "phase")
    return value if isinstance(value, str) else None


def written_before_checkpoint(step: int) -> Callable[[dict[str, Any]], bool]:
    """The ``keep`` rule for the loop order of ``Trainer.run`` as of this writing: ``train`` records
    carry the 0-based index of their update (update k is done after checkpoint step-k), evaluation
    records the number of updates done (the in-loop eval at K is written before checkpoint step-K).
    So resuming from step-K keeps ``train`` records with update < K and other records with update <= K.
    Records without an update are kept."""
    def keep(record: dict[str, Any]) -> bool:
        update = record_update(record)
        if update is None:
            return True
        return update < step if record_phase(record) == "train" else update <= step
    return keep


@dataclass
class TruncateReport:
    path: Path
    kept: int = 0
    dropped: int = 0  # whole records ``keep`` rejected
    torn: int = 0  # cut-off lines dropped (a kill mid-write)
    unattributed: int = 0  # kept records without an update
    rewritten: bool = False


def _keep_fn(keep: Keep) -> Callable[[dict[str, Any]], bool]:
    if callable(keep):
        return keep
    if isinstance(keep, bool) or not isinstance(keep, int):
        raise TypeError(f"keep: an int (the last update kept) or a predicate, not {keep!r}")
    return lambda record: (u := record_update(record)) is None or u <= keep


def _lines(f) -> Iterable[bytes]:
    # Binary iteration splits on b"\n" only (unlike text mode's universal newlines).
    yield from f


def truncate_records(path: str | Path, keep: Keep) -> TruncateReport:
    """Rewrite a JSON Lines log keeping the records ``keep`` accepts: an int ``k`` keeps records with
    update <= k (and records without an update), a callable gets each parsed record (a dict).

    A torn line is dropped with a warning: an unparsable last line, or an unparsable line that does
    not end with ``}`` (a fragment a later writer ended with a newline). An unparsable line
    elsewhere is corruption, not an interrupted append: ``StoreCorruptError`` (nothing is changed).
    Kept lines are copied byte for byte. The file is only rewritten when something is dropped,
    atomically (temporary file + fsync + rename + fsync of the folder). A missing file is an
    empty log.
    """
    path = Path(path)
    report = TruncateReport(path)
    check_not_symlink(path)  # rewriting it would copy a link's target into the run folder
    if not path.is_file():
        return report
    accept = _keep_fn(keep)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
            pending: tuple[int, bytes, Exception] | None = None  # an unparsable line not known to be last
            ends_with_newline = True
            for number, raw in enumerate(_lines(src), start=1):
                ends_with_newline = raw.endswith(b"\n")
                line = raw.rstrip(b"\r\n")
                if not line.strip():
                    continue
                if pending is not None:
                    _torn_or_corrupt(path, pending, report, last=False)
                    pending = None
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    pending = (number, line, exc)
                    continue
                if accept(record):
                    out.write(line + b"\n")
                    report.kept += 1
                    report.unattributed += record_update(record) is None
                else:
                    report.dropped += 1
            if pending is not None:
                _torn_or_corrupt(path, pending, report, last=True)
            if not (report.dropped or report.torn or not ends_with_newline):
                return report
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        report.rewritten = True
        return report
    finally:
        tmp.unlink(missing_ok=True)


def _torn_or_corrupt(path: Path, pending: tuple[int, bytes, Exception], report: TruncateReport, *, last: bool) -> None:
    number, line, exc = pending
    text = line.rstrip()
    # A cut-off object fails at the end of its text (or, ended by a later writer's newline, does not
    # end with "}"); a byte altered inside a whole record fails earlier and still ends with "}".
    ran_out = isinstance(exc, json.JSONDecodeError) and exc.pos >= len(text.decode("utf-8", "replace"))
    if last or ran_out or not text.endswith(b"}"):
        warnings.warn(f"{path}:{number}: dropped a truncated record ({len(line)} bytes): {exc}", stacklevel=3)
        report.torn += 1
        return
    raise StoreCorruptError(f"{path}:{number}: not a JSON record: {exc}")


def truncate_run(run_dir: str | Path, keep: Keep, *, logs: Iterable[str] = RUN_LOGS) -> list[TruncateReport]:
    """``truncate_records`` on every log of a run folder (``RUN_LOGS``: metrics and the trajectory
    files of every rank; glob patterns). Returns one report per file that exists."""
    run_dir = Path(run_dir)
    seen: set[Path] = set()
    reports = []
    for pattern in logs:
        for p in sorted(run_dir.glob(pattern)):
            if (p.is_file() or p.is_symlink()) and p not in seen:
                seen.add(p)
                reports.append(truncate_records(p, keep))
    return reports


# ------------------------------------------------------------------------------------------ run and eval folders
def write_summary(folder: str | Path, summary: dict[str, Any]) -> None:
    """``folder/summary.json``, written atomically (an exclusive temporary file renamed over it,
    never through a link: the folder may be someone else's)."""
    write_atomic(Path(folder) / "summary.json", json.dumps(summary, indent=2, default=float))


def read_records(path: str | Path, phase: str) -> list[dict[str, Any]]:
    """The ``phase`` records of a ``metrics.jsonl`` (unreadable lines skipped; none when it is absent)."""
    path = Path(path)
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("phase") == phase:
            records.append(rec)
    return records
