"""HTML reports of runs: ``agentgym report RUN_DIR`` and ``agentgym view TRAJECTORIES.jsonl``.

One self-contained HTML file (inline CSS, JS and SVG; no network; opens from ``file://``) with the
run summary, learning curves, a filterable trajectory browser that highlights the learner's
distilled token spans, and, with ``--compare RUN_B``, two runs side by side on the same tasks.

Target spans are token offsets into a step's ``action_ids``; the page maps them to characters of
the action text with the step's recorded ``info["action_token_offsets"]`` if present, else with the
run's tokenizer (named by summary.json / config.json, or ``--tokenizer``), else it highlights the
whole action and says so (see ``agentgym.report.offsets``).

>>> import tempfile, pathlib
>>> from agentgym.types import Step, Trajectory
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "t.jsonl").write_text(Trajectory(task_id="t0", steps=[Step(index=0, action_text="<b>hi</b>")]).to_json() + "\\n")
>>> out = build_view(d / "t.jsonl")       # what `agentgym view t.jsonl` does
>>> out.name, "<b>hi</b>" in out.read_text()   # markup from the data is never written as markup
('t.html', False)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from agentgym.report.data import DEFAULT_MAX_CHARS, RunData, load_run, load_trajectories_file
from agentgym.report.page import embed_json, render_page
from agentgym.safeio import write_atomic

__all__ = ["main", "view_main", "build_report", "build_view", "load_run", "load_trajectories_file",
           "render_page", "embed_json", "RunData"]


def build_report(run_dir: str | Path, out: str | Path | None = None, *, compare: str | Path | None = None,
                 tokenizer: str | None = None, max_chars: int = DEFAULT_MAX_CHARS, title: str | None = None) -> Path:
    """Write the report of ``run_dir`` (default ``RUN_DIR/report.html``) and return its path."""
    runs = [load_run(run_dir, tokenizer_name=tokenizer, max_chars=max_chars)]
    if compare is not None:
        runs.append(load_run(compare, tokenizer_name=tokenizer, max_chars=max_chars))
        if runs[0].name == runs[1].name:  # two runs of the same folder name: tell them apart
            runs[0].name, runs[1].name = f"A: {runs[0].name}", f"B: {runs[1].name}"
    out = Path(out) if out is not None else Path(run_dir) / "report.html"
    return _write(out, render_page(runs, title=title))


def build_view(path: str | Path, out: str | Path | None = None, *, tokenizer: str | None = None,
               max_chars: int = DEFAULT_MAX_CHARS, title: str | None = None) -> Path:
    """Write the view of one trajectories file (default: beside it, ``.html``) and return its path."""
    run = load_trajectories_file(path, tokenizer_name=tokenizer, max_chars=max_chars)
    out = Path(out) if out is not None else Path(path).with_suffix(".html")
    return _write(out, render_page([run], title=title or f"agentgym view: {run.name}"))


def _write(out: Path, html: str) -> Path:
    # The run folder may be someone else's: an exclusively created temporary file renamed over the
    # page, never a write through a link planted there; a reader never sees half a page.
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(out, html, fsync=False)  # stray surrogates in config text are replaced


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default=None, help="the HTML file to write")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer (folder, 'tiny', 'smollm2' or cached hub id) used to map target token "
                             "spans to text; default: the model the run names")
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                        help=f"cut each text field to this many characters (default {DEFAULT_MAX_CHARS:,})")
    parser.add_argument("--title", default=None)


def main(argv: Sequence[str] | None = None) -> int:
    """``agentgym report RUN_DIR [-o OUT.html] [--compare RUN_B]``."""
    parser = argparse.ArgumentParser(prog="agentgym report", description="Write a self-contained HTML report of a run folder.")
    parser.add_argument("run_dir", help="a run folder written by `agentgym train`")
    parser.add_argument("--compare", default=None, metavar="RUN_B", help="a second run to show side by side")
    _common(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.max_chars < 100:
        parser.error(f"--max-chars must be at least 100, got {args.max_chars}")
    try:
        out = build_report(args.run_dir, args.output, compare=args.compare, tokenizer=args.tokenizer,
                           max_chars=args.max_chars, title=args.title)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"agentgym report: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


def view_main(argv: Sequence[str] | None = None) -> int:
    """``agentgym view TRAJECTORIES.jsonl [-o OUT.html]``."""
    parser = argparse.ArgumentParser(prog="agentgym view", description="Write an HTML view of a trajectories .jsonl file.")
    parser.add_argument("path", help="a JSON Lines file of agentgym Trajectory records")
    _common(parser)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.max_chars < 100:
        parser.error(f"--max-chars must be at least 100, got {args.max_chars}")
    try:
        out = build_view(args.path, args.output, tokenizer=args.tokenizer, max_chars=args.max_chars, title=args.title)
    except (FileNotFoundError, ValueError, OSError) as exc:
        print(f"agentgym view: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0
