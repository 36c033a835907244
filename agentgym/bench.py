"""``agentgym bench NAME [ARGS...]``: run ``benchmarks/NAME.py`` (a checkout's benchmarks folder)
with ARGS as its command line; without NAME, list the benchmarks."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

__all__ = ["main", "benchmarks_dir"]


def benchmarks_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "benchmarks"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    folder = benchmarks_dir()
    available = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("_")) if folder.is_dir() else []
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: agentgym bench NAME [ARGS...]\n\nbenchmarks: " + (", ".join(available) or
              f"none (no benchmarks folder at {folder}; benchmarks ship with a checkout, not the wheel)"))
        return 0 if argv else 2
    name = argv[0]
    if name not in available:
        print(f"agentgym bench: unknown benchmark {name!r}; available: {available}", file=sys.stderr)
        return 2
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(folder / f"{name}.py"), *argv[1:]]
    sys.path.insert(0, str(folder))  # as `python benchmarks/NAME.py`: its helpers (_*.py) import by name
    try:
        runpy.run_path(str(folder / f"{name}.py"), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return 0
