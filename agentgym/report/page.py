"""Assemble the self-contained report page: summary and curves rendered here (escaped), the
trajectory browser and the run comparison rendered by the inline script from embedded JSON.

The data sits in ``<script type="application/json">``, which the browser never executes; the JSON is
additionally written so that it cannot end that element early: ``<``, ``>`` and ``&`` are escaped as
``\\u003c`` etc., U+2028/U+2029 (line breaks inside JavaScript sources of old engines) are escaped,
and lone surrogates (undecodable bytes kept by ``Trajectory.to_json``) are shown as U+FFFD, the
replacement character, because UTF-8 cannot carry them and browsers (and WebDriver) choke on lone
surrogates in DOM text; one code point for one keeps every highlight offset valid.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import math
import re
from html import escape
from typing import Any, Sequence

from agentgym.report.assets import CSS, JS
from agentgym.report.data import RunData
from agentgym.report.svg import CURVE_METRICS, line_chart, metric_series

__all__ = ["render_page", "embed_json"]

_SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
_UNSAFE = re.compile("[<>&\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def embed_json(value: Any) -> str:
    """JSON text that is safe inside ``<script type="application/json">`` and encodable as UTF-8."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = _SURROGATE.sub("\ufffd", text)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _num(v: Any, digits: int = 3) -> str:
    if isinstance(v, bool) or v is None:
        return "n/a" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _success_of(run: RunData, which: str) -> Any:
    """success_before / success_after from summary.json, else from the eval (or train) metrics."""
    key = f"success_{which}"
    if run.summary.get(key) is not None:
        return run.summary[key]
    rows = [r for r in run.metrics if isinstance(r.get("success_rate"), (int, float))]
    evals = [r for r in rows if r.get("phase") == "eval"] or rows
    if not evals:
        return None
    evals.sort(key=lambda r: r.get("update", 0) if isinstance(r.get("update"), (int, float)) else 0)
    return evals[0 if which == "before" else -1]["success_rate"]


def _seconds_per_step(run: RunData) -> str:
    steps = sum(t["n"] for t in run.trajs)
    secs = [r["seconds"] for r in run.metrics if isinstance(r.get("seconds"), (int, float))]
    parts = []
    if run.summary.get("seconds_per_update") is not None:
        parts.append(f"{_num(run.summary['seconds_per_update'])} s per update")
    elif secs:
        parts.append(f"{_num(sum(secs) / len(secs))} s per update")
    if secs and steps:
        parts.append(f"{_num(sum(secs) / steps)} s per env step ({steps} steps)")
    return "; ".join(parts) or "n/a"


def _effect_text(effect: Any) -> str:
    """'before -> after (difference [95 % interval])' of a summary's ``effect``."""
    if not isinstance(effect, dict) or not isinstance(effect.get("difference"), dict):
        return "n/a"
    d = effect["difference"]
    interval = (f" [{_num(d.get('low'))}, {_num(d.get('high'))}]" if isinstance(d.get("low"), (int, float)) else "")
    return (f"{_num(effect.get('before'))} → {_num(effect.get('after'))} (difference {_num(d.get('mean'))}{interval}, "
            f"{_num(d.get('n'))} tasks)")


def _trained_text(summary: dict[str, Any]) -> str:
    """'before -> after (change)' of the reference log-prob of the first task trained on (in-sample:
    summary ``trained_reference_logprob_before`` / ``_after``), the trained-task effect."""
    before, after = summary.get("trained_reference_logprob_before"), summary.get("trained_reference_logprob_after")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (before, after)):
        return "n/a"
    return f"{_num(before)} → {_num(after)} (change {after - before:+.3g}; the first task trained on, in-sample)"


def _signal_text(signal: Any) -> str:
    """'teacher_gain +0.6 (prefers the reference on 87 % of N targeted steps)' of a summary's
    ``teacher_signal`` (a negative gain: the teacher moves the model away from the reference)."""
    if not isinstance(signal, dict) or not isinstance(signal.get("teacher_gain"), (int, float)):
        return "n/a (no targeted step with a reference action)"
    prefers = signal.get("teacher_prefers_reference")
    share = f"{prefers:.0%}" if isinstance(prefers, (int, float)) and math.isfinite(prefers) else "n/a"
    verdict = "" if signal["teacher_gain"] > 0 else " — the teacher does NOT prefer the reference"
    return (f"teacher_gain {_num(signal['teacher_gain'])} (prefers the reference on {share} of "
            f"{_num(signal.get('targets'))} targeted steps){verdict}")


def _summary_card(run: RunData) -> str:
    s, trajs = run.summary, run.trajs
    env = s.get("env_id") or next((t["env"] for t in trajs if t["env"]), "n/a")
    learner = s.get("learner") or next((t["learner"] for t in trajs if t["learner"]), "n/a")
    n_ok = sum(1 for t in trajs if t["ok"])
    rows = [
        ("env", env), ("learner", learner), ("model", s.get("model") or "n/a"),
        ("updates", _num(s.get("updates", len([m for m in run.metrics if m.get("phase", "train") == "train"])))),
        ("time", _seconds_per_step(run)),
        ("trajectories", f"{len(trajs)} ({n_ok} successful, {sum(1 for t in trajs if t['tgt'])} with learner targets)"),
        ("hindsight source", s.get("hindsight_source") or "n/a"),
        ("held-out reference log-prob", _effect_text(s.get("effect"))),
        ("trained-task reference log-prob", _trained_text(s)),
        ("teacher signal", _signal_text(s.get("teacher_signal"))),
        ("target spans", run.offsets),
        ("folder", run.path),
    ]
    before, after = _success_of(run, "before"), _success_of(run, "after")
    body = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in rows)
    notes = s.get("notes") if isinstance(s.get("notes"), list) else []
    notes_html = "".join(f"<li>{escape(str(n))}</li>" for n in notes)
    config = json.dumps(run.config, indent=2, ensure_ascii=False, default=str) if run.config else "(no config.json)"
    return (f'<div class="card run-summary"><h3>{escape(run.name)}</h3>'
            f'<div>success <span class="big" id="success-before">{escape(_num(before))}</span> before → '
            f'<span class="big" id="success-after">{escape(_num(after))}</span> after</div>'
            f'<table class="kv">{body}</table>'
            + (f"<div class='lbl'>notes</div><ul>{notes_html}</ul>" if notes_html else "")
            + f"<details><summary>config</summary><pre>{escape(config)}</pre></details></div>")


def _warnings(runs: Sequence[RunData]) -> str:
    items = [(r.name, w) for r in runs for w in r.warnings]
    if not items:
        return ""
    shown = "".join(f"<li>{escape(n)}: {escape(w)}</li>" for n, w in items[:50])
    more = f"<li>… and {len(items) - 50} more</li>" if len(items) > 50 else ""
    return f'<div class="warn" id="warnings"><b>Read with warnings</b><ul>{shown}{more}</ul></div>'


def render_page(runs: Sequence[RunData], *, title: str | None = None) -> str:
    """The whole HTML document for one run, or two (the first is compared with the second)."""
    if not runs:
        raise ValueError("render_page needs at least one run, got none")
    title = title or ("agentgym report: " + " vs ".join(r.name for r in runs))
    declared = [m for r in runs for m in (r.summary.get("learner_metrics") or []) if isinstance(m, str)]
    shown = list(dict.fromkeys([*CURVE_METRICS, *declared]))  # the learners' declared metrics too
    charts = "".join(line_chart(m, metric_series([(r.name, r.metrics) for r in runs], m)) for m in shown)
    has_metrics = any(r.metrics for r in runs)
    curves = (f'<section id="curves"><h2>Learning curves</h2><div class="charts">{charts}</div>'
              '<p class="note">solid: training batches, dashed: evaluations on held-out tasks (shaded: their 95 % '
              'interval over tasks); reference_logprob: mean log-prob of each held-out task\'s reference first '
              'action; hover a point for its value.</p></section>'
              if has_metrics else "")
    compare = ('<section><h2>Side by side on the same tasks</h2><div id="compare"></div></section>'
               if len(runs) > 1 else "")
    payload = {"runs": [r.as_json() for r in runs],
               "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    generated = payload["generated"]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        # Defence in depth: only OUR script (by hash) may run and nothing may be fetched, so even
        # markup that escaped escaping could neither execute nor phone home.
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        f"style-src 'unsafe-inline'; script-src '{_SCRIPT_HASH}'; img-src data:\">"
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header class='top'><h1>{escape(title)}</h1><div class='sub'>generated {escape(generated)} by "
        "agentgym report · self-contained, works offline</div></header><main>"
        f"{_warnings(runs)}"
        f"<section id='summary'><h2>Run summary</h2><div class='cards'>{''.join(_summary_card(r) for r in runs)}</div></section>"
        f"{curves}"
        "<section><h2>Trajectories</h2><p class='note'>Click a row to open its steps: the prompt tail, the "
        "action with the learner's distilled token span highlighted, the environment's reply, every "
        "feedback record by kind, and the step reward.</p><div class='tabs' id='browser-tabs'></div>"
        "<div id='browser'></div></section>"
        f"{compare}</main>"
        f"<script type='application/json' id='agentgym-data'>{embed_json(payload)}</script>"
        f"<script>{JS}</script></body></html>\n"
    )
