"""Read a run folder (or a bare trajectories file) into the compact JSON the report page renders.

The page gets one dict per run::

    {"name", "path", "summary", "config", "metrics": [...], "warnings": [...],
     "offsets": how target spans were mapped to text, "trajs": [compact trajectory, ...]}

A compact trajectory keeps what a reader looks at (texts, feedback, rewards, targets with their
character spans) and drops what only a learner needs (prompt ids, log-probs). Long texts are cut to
``max_chars`` with a note saying how much was cut; nothing is silently dropped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import ValidationError

from agentgym.report.offsets import char_span, load_tokenizer, token_char_offsets
from agentgym.safeio import open_read, read_regular
from agentgym.types import Feedback, Step, Target, Trajectory

__all__ = ["RunData", "Strings", "load_run", "load_trajectories_file", "compact_trajectory", "DEFAULT_MAX_CHARS",
           "PROMPT_TAIL_CHARS", "model_names"]

DEFAULT_MAX_CHARS = 20_000  # per text field: a 1 MB observation must not make a 10k-episode page unusable
PROMPT_TAIL_CHARS = 400
PAYLOAD_MAX_CHARS = 2_000
MAX_JSON_BYTES = 64 << 20  # config.json / summary.json: a few KB in a real run
MAX_METRICS_BYTES = 512 << 20
INTERN_MIN_CHARS = 24


class Strings:
    """A shared string table: long texts repeat across steps, group members and updates (the same
    request, reference and tool results), so each is stored once and referenced by its index.
    The page resolves a number in a text field to ``strings[number]``."""

    def __init__(self) -> None:
        self.table: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, text: str) -> str | int:
        if len(text) < INTERN_MIN_CHARS:
            return text
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.table)
            self.table.append(text)
        return index


@dataclass
class RunData:
    name: str
    path: str
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    trajs: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    offsets: str = ""
    strings: Strings = field(default_factory=Strings)

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "summary": self.summary, "config": self.config,
                "metrics": self.metrics, "trajs": self.trajs, "warnings": self.warnings,
                "offsets": self.offsets, "strings": self.strings.table}


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… [report: cut here; the full text has {len(text):,} characters, {limit:,} shown]"


def _utf16(text: str, pos: int) -> int:
    """Code-point offset -> UTF-16 offset (what JavaScript string indices count)."""
    head = text[:pos]
    return pos + sum(1 for c in head if ord(c) > 0xFFFF) if not head.isascii() else pos


_EXACT_INT = 2 ** 63  # larger integers (10**400 parses as JSON) become text: no float() can hold them


def _finite(value: Any) -> Any:
    """Every number from a run folder is untrusted: JSON has no NaN / Infinity, so non-finite floats
    become the text "nan" / "inf" / "-inf" and integers too large for a float become their
    scientific notation as text; the page shows both as they are, and no arithmetic on them can
    overflow."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _EXACT_INT:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def model_names(config: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The names a run gives its policy model, most specific first: summary ``model`` (the resolved
    display name), then the usual config keys, nested ones too (``model.name``, ``policy.model``)."""
    names = [summary["model"]] if isinstance(summary.get("model"), str) else []
    stack = [config]
    while stack:
        node = stack.pop(0)
        if not isinstance(node, dict):
            continue
        for key in ("model", "name", "model_name_or_path", "policy_model", "tokenizer"):
            if isinstance(node.get(key), str) and node[key]:
                names.append(node[key])
        for key in ("policy", "model", "agent"):
            if isinstance(node.get(key), dict):
                stack.append(node[key])
    return list(dict.fromkeys(names))


def _decode(tokenizer: Any, ids: list[int]) -> str:
    # The Rust tokenizer directly when there is one: transformers' decode() spends most of its time
    # checking the id list in Python, which adds up over 10^5 steps.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.decode(ids, skip_special_tokens=False)
    return tokenizer.decode(ids, skip_special_tokens=False)


def _prompt_tail(traj: Trajectory, index: int, step: Step, tokenizer: Any) -> str:
    if tokenizer is not None and step.prompt_ids:
        # The exact chat-template rendering the policy saw last (special tokens included): the
        # tokens added since its previous action, or the end of the first prompt.
        ids = step.prompt_ids[-128:]
        if index > 0:
            prev = traj.steps[index - 1]
            known = len(prev.prompt_ids) + len(prev.action_ids)
            if len(step.prompt_ids) >= known and step.prompt_ids[len(prev.prompt_ids):known] == prev.action_ids:
                ids = step.prompt_ids[max(known, len(step.prompt_ids) - 128):]
        try:
            return _decode(tokenizer, ids)[-PROMPT_TAIL_CHARS:]
        except Exception:
            pass
    # Without a tokenizer: the last message the policy saw before acting.
    if index == 0:
        last = traj.messages[-1] if traj.messages else None
        return f"[{last.role}] {last.content}"[-PROMPT_TAIL_CHARS:] if last else ""
    prev = traj.steps[index - 1]
    text = "\n".join(f"[{m.role}{' ' + m.name if m.name else ''}] {m.content}" for m in prev.reply) or prev.observation
    return text[-PROMPT_TAIL_CHARS:]


def _payload_text(payload: dict[str, Any]) -> str:
    if not payload:
        return ""
    # Compact (the C encoder; indent= would take the pure-Python one, 10x slower at 10k episodes);
    # the page pretty-prints it when it is opened.
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
    return _cut(text, PAYLOAD_MAX_CHARS)


def _feedback(f: Feedback, max_chars: int, S: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": f.kind.value, "text": S(_cut(f.text, max_chars)), "source": f.source}
    changes = f.payload.get("changes")
    if f.kind.value == "state_diff" and isinstance(changes, list):
        out["changes"] = [{k: _cut(json.dumps(v, ensure_ascii=False, default=str) if not isinstance(v, str) else v, 400)
                           for k, v in c.items()} for c in changes[:200] if isinstance(c, dict)]
    out["payload"] = S(_payload_text(f.payload))
    return out


def _targets(traj: Trajectory, index: int, problems: list[str]) -> list[Target]:
    """The trajectory's targets, then those kept in its metadata: legacy (or damaged) records that did
    not validate as typed fields; each one that still does not validate becomes a warning."""
    targets: list[Target] = list(traj.targets)
    raw_targets = traj.metadata.get("targets") or []
    if not isinstance(raw_targets, list):
        problems.append(f"trajectory {index} ({traj.task_id}): metadata.targets is not a list: {str(raw_targets)[:80]!r}")
        raw_targets = []
    for raw in raw_targets:
        try:
            targets.append(Target.model_validate(raw))
        except ValidationError as exc:
            problems.append(f"trajectory {index} ({traj.task_id}): invalid target {str(raw)[:120]!r}: "
                            f"{exc.errors()[0]['msg']}")
    return targets


def _source_feedback(traj: Trajectory, index: int, max_chars: int, S: Any,
                     problems: list[str]) -> dict[int, list[dict[str, Any]]]:
    """The feedback sources' records (typed, then legacy ones kept in metadata), by step."""
    source_feedback: dict[int, list[dict[str, Any]]] = {}
    for f in traj.feedback:
        source_feedback.setdefault(f.step, []).append(_feedback(f, max_chars, S))
    raw_feedback = traj.metadata.get("feedback")
    for raw in raw_feedback if isinstance(raw_feedback, list) else []:
        try:
            f = Feedback.model_validate(raw)
        except ValidationError as exc:
            problems.append(f"trajectory {index} ({traj.task_id}): invalid feedback record: {exc.errors()[0]['msg']}")
            continue
        source_feedback.setdefault(f.step, []).append(_feedback(f, max_chars, S))
    return source_feedback


def compact_trajectory(traj: Trajectory, index: int, *, tokenizer: Any = None, max_chars: int = DEFAULT_MAX_CHARS,
                       strings: Strings | None = None) -> tuple[dict[str, Any], list[str], dict[str, int]]:
    """``(compact dict, warnings, counters)`` for one trajectory (see the module docstring); long
    texts become indices into ``strings`` when one is given."""
    S = strings if strings is not None else (lambda text: text)
    meta = traj.metadata
    problems: list[str] = []
    counts = {"targets": 0, "exact": 0, "whole": 0}
    targets = _targets(traj, index, problems)
    source_feedback = _source_feedback(traj, index, max_chars, S, problems)

    steps_out = []
    for step in traj.steps:
        action = step.action_text
        shown = _cut(action, max_chars)
        marks = []
        offsets: list[tuple[int, int]] | None | bool = False  # computed once, for steps with targets
        for t_index, target in ((i, t) for i, t in enumerate(targets) if t.step == step.index):
            counts["targets"] += 1
            span = list(target.span)
            if step.action_ids and span[1] > len(step.action_ids):
                problems.append(f"trajectory {index} ({traj.task_id}) step {step.index}: target span {tuple(span)} "
                                f"ends past the {len(step.action_ids)} action tokens; clamped")
            if offsets is False:
                offsets = token_char_offsets(action, step.action_ids, info=step.info, tokenizer=tokenizer)
            if offsets is not None:
                start, end = char_span(offsets, target.span)
                whole = False
                counts["exact"] += 1
            else:
                start, end, whole = 0, len(action), True
                counts["whole"] += 1
            start, end = min(start, max_chars), min(end, max_chars)  # inside the shown part
            marks.append({"t": t_index, "s": _utf16(shown, start), "e": _utf16(shown, end), "whole": whole})
        reply = [{"role": m.role, "name": m.name, "content": S(_cut(m.content, max_chars))} for m in step.reply]
        info = {k: v for k, v in step.info.items() if k not in ("action_token_offsets", "logprobs", "tokens")}
        steps_out.append({
            "prompt": S(_prompt_tail(traj, step.index, step, tokenizer)),
            "action": S(shown), "ntok": len(step.action_ids), "marks": marks,
            "obs": "" if reply else S(_cut(step.observation, max_chars)), "reply": reply,
            "fb": [_feedback(f, max_chars, S) for f in step.feedback] + source_feedback.pop(step.index, []),
            "r": _finite(step.reward), "term": step.terminated, "trunc": step.truncated,
            "info": S(_cut(json.dumps(_finite(info), ensure_ascii=False, default=str), PAYLOAD_MAX_CHARS)),
        })
    for orphan_step, records in source_feedback.items():
        problems.append(f"trajectory {index} ({traj.task_id}): {len(records)} feedback record(s) for step "
                        f"{orphan_step}, which the trajectory does not have")
    for t in targets:
        if t.step >= len(traj.steps):
            problems.append(f"trajectory {index} ({traj.task_id}): target on step {t.step}, which the "
                            f"trajectory (of {len(traj.steps)} steps) does not have")
    first_user = next((m.content for m in traj.messages if m.role == "user"), "")
    update = traj.update if traj.update is not None else meta.get("update")
    phase = traj.phase or meta.get("phase")
    learner = traj.learner or meta.get("learner")
    out = {
        "i": index, "task": traj.task_id, "group": traj.group_id, "env": traj.env_id,
        "ok": traj.success, "r": _finite(traj.final_reward), "n": len(traj.steps),
        "update": update if isinstance(update, int) else None,
        "phase": phase if isinstance(phase, str) else None,
        "learner": learner if isinstance(learner, str) else None,
        "err": traj.error, "request": S(_cut(first_user, 2000)),
        "tgt": [{"step": t.step, "span": list(t.span), "hint": t.hint, "source": t.source} for t in targets],
        "steps": steps_out,
    }
    return out, problems, counts


def _read_text(path: Path, limit: int, problems: list[str]) -> str | None:
    """A run-folder file's text, or None with a warning: missing, a symbolic link (never followed:
    the folder may be someone else's), not a regular file, or larger than ``limit`` bytes."""
    if not (path.is_file() or path.is_symlink()):
        return None
    try:
        return read_regular(path, limit, path.name).decode("utf-8", errors="surrogateescape")
    except OSError as exc:
        problems.append(f"{path.name}: not read: {exc}")
        return ""


def _read_json(path: Path, problems: list[str]) -> dict[str, Any]:
    text = _read_text(path, MAX_JSON_BYTES, problems)
    if text is None:
        problems.append(f"{path.name} is missing")
        return {}
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        problems.append(f"{path.name} is not valid JSON: {str(exc)[:200]}")
        return {}
    if not isinstance(value, dict):
        problems.append(f"{path.name} holds a {type(value).__name__}, expected an object")
        return {}
    try:
        return _finite(value)
    except RecursionError:
        problems.append(f"{path.name} is nested too deeply to show")
        return {}


def _read_metrics(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    text = _read_text(path, MAX_METRICS_BYTES, problems)
    if text is None:
        problems.append("metrics.jsonl is missing: no learning curves")
        return []
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            problems.append(f"metrics.jsonl:{number}: skipped a line that is not JSON ({str(exc)[:200]})")
            continue
        if isinstance(row, dict):
            try:
                rows.append(_finite(row))
            except RecursionError:
                problems.append(f"metrics.jsonl:{number}: skipped a record nested too deeply to show")
        else:
            problems.append(f"metrics.jsonl:{number}: skipped a {type(row).__name__}, expected an object")
    return rows


def _compact_all(trajs: Iterable[Trajectory], run: RunData, tokenizer: Any, why: str, max_chars: int) -> None:
    totals = {"targets": 0, "exact": 0, "whole": 0}
    for i, traj in enumerate(trajs):
        out, problems, counts = compact_trajectory(traj, i, tokenizer=tokenizer, max_chars=max_chars,
                                                   strings=run.strings)
        run.trajs.append(out)
        run.warnings.extend(problems[:5])
        for k in totals:
            totals[k] += counts[k]
    if not totals["targets"]:
        run.offsets = "no learner targets in this run"
    elif not totals["whole"]:
        run.offsets = f"all {totals['targets']} target spans mapped to exact characters ({why})"
    else:
        run.offsets = (f"{totals['whole']} of {totals['targets']} target spans highlight the WHOLE action: "
                       f"token offsets unavailable ({why}; no action_token_offsets recorded)")


def _read_trajs(path: Path, run: RunData, *, follow_links: bool = False) -> Iterator[Trajectory]:
    """Stream the records one line at a time: a 10k-episode store holds every step's prompt ids
    (gigabytes), and the page needs only a compact view of each, so no more than one full
    trajectory is in memory at once. A line that does not parse is skipped and reported on the
    page (a cut-off last line is the normal trace of an interrupted run). A run folder's file is
    never read through a symbolic link; a file named on the command line (``follow_links``) may be
    one, but must be a regular file (not a FIFO or a device)."""
    with open_read(path, path.name, follow_links=follow_links) as f:
        pending: tuple[int, bytes] | None = None  # the previous line, parsed once we know it is not last
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if pending is not None:
                yield from _parse_line(path, *pending, last=False, run=run)
            pending = (number, line)
        if pending is not None:
            yield from _parse_line(path, *pending, last=True, run=run)


def _parse_line(path: Path, number: int, line: bytes, *, last: bool, run: RunData) -> Iterator[Trajectory]:
    try:
        yield Trajectory.from_json(line)
    except (ValueError, RecursionError) as exc:
        what = "a truncated last record" if last else "a line that is not a Trajectory record"
        run.warnings.append(f"{path.name}:{number}: skipped {what} ({len(line)} bytes): {str(exc)[:200]}")


def load_run(run_dir: str | Path, *, tokenizer: Any = None, tokenizer_name: str | None = None,
             max_chars: int = DEFAULT_MAX_CHARS) -> RunData:
    """Read ``RUN_DIR`` (see /work/notes/run_folder.md for the layout)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {str(root)!r} does not exist or is not a folder")
    traj_path = root / "trajectories.jsonl"
    if not (traj_path.is_file() or traj_path.is_symlink()):
        raise FileNotFoundError(f"{traj_path} is missing: not a run folder (expected config.json, "
                                f"trajectories.jsonl, metrics.jsonl, summary.json)")
    run = RunData(name=root.resolve().name, path=str(root.resolve()))
    run.config = _read_json(root / "config.json", run.warnings)
    run.summary = _read_json(root / "summary.json", run.warnings)
    run.metrics = _read_metrics(root / "metrics.jsonl", run.warnings)
    why = "tokenizer given"
    if tokenizer is None:
        for name in [tokenizer_name] if tokenizer_name else model_names(run.config, run.summary) or [None]:
            tokenizer, why = load_tokenizer(name)
            if tokenizer is not None:
                break
    _compact_all(_read_trajs(traj_path, run), run, tokenizer, why, max_chars)
    return run


def load_trajectories_file(path: str | Path, *, tokenizer: Any = None, tokenizer_name: str | None = None,
                           max_chars: int = DEFAULT_MAX_CHARS) -> RunData:
    """A bare trajectories .jsonl as a run without config, summary or metrics."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file {str(path)!r} does not exist")
    run = RunData(name=path.name, path=str(path.resolve()))
    why = "tokenizer given"
    if tokenizer is None:
        tokenizer, why = load_tokenizer(tokenizer_name) if tokenizer_name else (None, "no --tokenizer given")
    _compact_all(_read_trajs(path, run, follow_links=True), run, tokenizer, why, max_chars)
    return run
