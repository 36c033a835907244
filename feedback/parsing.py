"""Robust reading of a hindsight model's answer (model output is hostile input: nothing here raises).

The hindsight model is asked for ``{"failures": [{"step": <1-based>, "feedback": "..."}]}``
(variant ``multi``) or ``{"failure_step": n, "feedback": "..."}`` (variant ``single``). Real answers
wrap the JSON in prose or code fences, leave trailing commas, number steps as strings, repeat or
invent steps, or return more entries than asked. ``parse_hindsight`` extracts what is usable and
says what was wrong in ``problems``; an answer with nothing usable has ``status != "ok"`` and no items.

>>> a = parse_hindsight('Sure!\\n```json\\n{"failures": [{"step": "2", "feedback": "Use cd first.",},]}\\n```',
...                     num_steps=3)
>>> a.status, a.items
('ok', [(1, 'Use cd first.')])
>>> parse_hindsight("I think step 9 was wrong", num_steps=3).status
'unparsable'

Only ``json`` and ``ast.literal_eval`` (literals only, size-capped) ever look at the text.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HindsightAnswer", "parse_hindsight", "extract_json_objects", "MAX_ANSWER_CHARS"]

MAX_ANSWER_CHARS = 50_000  # longer answers are cut before parsing (the model was asked for <= 512 tokens)
_MAX_OBJECT_STARTS = 64  # bounded work on adversarial text full of braces
_MAX_LITERAL_CHARS = 8_000  # ast.literal_eval is only tried on small candidates
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")
_INT_TEXT = re.compile(r"^\s*(?:step\s*)?#?\s*([+-]?\d+)\s*$", re.IGNORECASE)


@dataclass
class HindsightAnswer:
    """What was usable in one answer.

    ``items``: (0-based step, feedback) pairs, earliest first, unique steps, at most ``k``.
    ``status``: "ok" (some items), "empty" (valid JSON naming no step), "no_valid_steps" (steps were
    named but none was usable), "unparsable" (no JSON of the expected shape), "not_text".
    """

    items: list[tuple[int, str]] = field(default_factory=list)
    status: str = "unparsable"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _loads(candidate: str) -> Any:
    """JSON, then JSON without trailing commas, then (small) Python literals; None if all fail."""
    for text in (candidate, _TRAILING_COMMA.sub(r"\1", candidate)):
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            pass
    if len(candidate) <= _MAX_LITERAL_CHARS:
        try:  # single-quoted dicts, True/False/None: literals only, never evaluated code
            return ast.literal_eval(_TRAILING_COMMA.sub(r"\1", candidate))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return None


def _balanced_end(text: str, start: int) -> int | None:
    """Index after the bracket that closes ``text[start]`` (string-aware), or None."""
    opener = text[start]
    closer = "}" if opener == "{" else "]"
    depth, in_str, quote, escaped = 0, False, "", False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                in_str = False
        elif ch in "\"'":
            in_str, quote = True, ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1 if ch == closer else None
    return None


def extract_json_objects(text: str) -> list[Any]:
    """Every JSON object or array found in ``text``: fenced blocks first, then balanced spans."""
    found: list[Any] = []
    regions = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for region in regions:
        starts = 0
        i = 0
        while i < len(region) and starts < _MAX_OBJECT_STARTS:
            i = min((p for p in (region.find("{", i), region.find("[", i)) if p >= 0), default=-1)
            if i < 0:
                break
            starts += 1
            end = _balanced_end(region, i)
            if end is None:
                i += 1
                continue
            value = _loads(region[i:end])
            if isinstance(value, (dict, list)):
                found.append(value)
                i = end
            else:
                i += 1
    return found


def _as_step(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str):
        m = _INT_TEXT.match(value)
        if m and len(m.group(1)) < 12:
            return int(m.group(1))
    return None


def _as_text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _entries(obj: Any, variant: str) -> list[Any] | None:
    """The raw (step, feedback) entries of an object of either expected shape, or None."""
    if isinstance(obj, list):
        # a bare list counts only when it holds entries (a stray "[]" in prose is not an answer)
        return obj if obj and all(isinstance(e, dict) for e in obj) else None
    if not isinstance(obj, dict):
        return None
    for key in ("failures", "failure", "mistakes", "steps"):
        if isinstance(obj.get(key), list):
            return obj[key]
    if "failure_step" in obj or "step" in obj:
        return [{"step": obj.get("failure_step", obj.get("step")), "feedback": obj.get("feedback")}]
    return None


def parse_hindsight(answer: Any, *, num_steps: int, k: int = 3, variant: str = "multi") -> HindsightAnswer:
    """Usable (0-based step, correction) pairs from a hindsight answer. Never raises.

    ``variant="single"`` keeps only the earliest usable step. Steps are 1-based in the answer;
    zero, negative and > ``num_steps`` steps are dropped, duplicates keep their first correction,
    and entries beyond the ``k`` earliest are dropped (each counted in ``problems``).
    """
    out = HindsightAnswer()
    try:
        if not isinstance(answer, str):
            out.status = "not_text"
            out.problems.append(f"answer is {type(answer).__name__}, not text")
            return out
        if len(answer) > MAX_ANSWER_CHARS:
            out.problems.append(f"answer cut from {len(answer)} to {MAX_ANSWER_CHARS} characters")
            answer = answer[:MAX_ANSWER_CHARS]
        entries = None
        for obj in extract_json_objects(answer):
            entries = _entries(obj, variant)
            if entries is not None:
                break
        if entries is None:
            out.problems.append("no JSON object of the expected shape")
            return out
        if not entries:
            out.status = "empty"
            out.problems.append("the answer names no step")
            return out
        chosen: dict[int, str] = {}
        for entry in entries:
            if not isinstance(entry, dict):
                out.problems.append(f"entry is not an object: {str(entry)[:60]!r}")
                continue
            raw_step = entry.get("step", entry.get("failure_step"))
            step = _as_step(raw_step)
            text = _as_text(entry.get("feedback", entry.get("correction")))
            if step is None:
                out.problems.append(f"step is not a number: {str(raw_step)[:40]!r}")
            elif not 1 <= step <= num_steps:
                out.problems.append(f"step {step} outside 1..{num_steps}")
            elif text is None:
                out.problems.append(f"step {step} has no feedback text")
            elif step - 1 in chosen:
                out.problems.append(f"step {step} named twice")
            else:
                chosen[step - 1] = text
        items = sorted(chosen.items())
        limit = 1 if variant == "single" else max(0, k)
        if len(items) > limit:
            out.problems.append(f"{len(items)} steps named, kept the {limit} earliest")
            items = items[:limit]
        out.items = items
        out.status = "ok" if items else "no_valid_steps"
    except Exception as exc:  # last line of defence: a parser bug must not stop training
        out.items, out.status = [], "unparsable"
        out.problems.append(f"parser error {type(exc).__name__}: {exc}")
    return out
