"""Learning curves as small hand-written inline SVG charts (no fonts, scripts or network needed).

Hand-written rather than matplotlib: a chart is ~2 KB instead of ~40 KB and renders in microseconds,
which matters when a report overlays two runs; every text that comes from a run is escaped.

>>> svg = line_chart("success_rate", [Series("run (train)", [(0, 0.2), (1, 0.5)])])
>>> svg.startswith("<svg") and "success_rate" in svg
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Any, Sequence

from agentgym.stats import estimate

__all__ = ["Series", "line_chart", "metric_series", "plottable", "CURVE_METRICS", "BANDS", "PALETTE", "PLOT_LIMIT"]

CURVE_METRICS = ("success_rate", "reward_mean", "reference_logprob", "loss", "distilled_token_fraction", "teacher_calls")
# Evaluation records carry a 95 % interval (over tasks) for these: drawn as a band around the curve.
BANDS = {"success_rate": ("success_low", "success_high"), "reward_mean": ("reward_low", "reward_high")}
# ... and the per-task values of these, from which the report computes the interval (over tasks).
PER_TASK = {"reference_logprob": "reference_logprobs"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str = PALETTE[0]
    dashed: bool = False
    band: list[tuple[float, float, float]] = field(default_factory=list)  # (x, low, high)
    unplotted: list[str] = field(default_factory=list)  # values logged but not drawn (non-finite, huge)


PLOT_LIMIT = 1e15  # |value| or |update| beyond this is shown as text, never scaled into a chart


def plottable(v: Any) -> float | None:
    """``v`` as a float when it is a number a chart can place (finite, |v| <= PLOT_LIMIT), else None.

    >>> plottable(2), plottable(float("nan")), plottable(10 ** 400), plottable(True), plottable("1")
    (2.0, None, None, None, None)
    """
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, int) and abs(v) > PLOT_LIMIT:
        return None  # float() of 10**400 would overflow
    f = float(v)
    return f if math.isfinite(f) and abs(f) <= PLOT_LIMIT else None


def _shown(v: Any) -> str:
    """A logged value that cannot be plotted, as short text (a 400-digit integer included)."""
    if isinstance(v, int) and not isinstance(v, bool):
        digits = str(abs(v))
        return f"{'-' if v < 0 else ''}{digits[0]}.{digits[1:3]}e+{len(digits) - 1}" if len(digits) > 6 else str(v)
    if isinstance(v, float):
        return _fmt(v)
    return str(v)[:24]


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if not hi > lo or not math.isfinite(hi - lo):
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _tick_labels(ticks: Sequence[float]) -> list[str]:
    """Labels of the ticks, with as many significant digits as it takes to tell them apart (a narrow
    range such as -3.214..-3.206 needs four: -3.212, -3.21, -3.208, not -3.21 three times).

    >>> _tick_labels([-3.212, -3.21, -3.208]), _tick_labels([0.0, 0.5, 1.0])
    (['-3.212', '-3.21', '-3.208'], ['0', '0.5', '1'])
    """
    labels = [_fmt(t) for t in ticks]
    for digits in range(3, 16):
        if len(set(labels)) == len(labels):
            break
        labels = [_fmt(t) if t == 0 else f"{t:.{digits}g}" for t in ticks]
    return labels


def _band_of(values: Any) -> tuple[float, float] | None:
    """The 95 % interval (Student's t, over tasks) of the mean of a record's per-task values
    ``{task: value}``, when at least two of them are plottable numbers; None otherwise."""
    if not isinstance(values, dict):
        return None
    xs = [y for y in map(plottable, list(values.values())[:100_000]) if y is not None]
    if len(xs) < 2:
        return None
    e = estimate(xs, over="tasks")
    return (e.low, e.high) if plottable(e.low) is not None and plottable(e.high) is not None else None


def line_chart(title: str, series: Sequence[Series], *, width: int = 340, height: int = 190) -> str:
    """One chart: x = policy update, y = the metric; a point per logged value with a tooltip."""
    left, right, top, bottom = 46, 10, 24, 30
    pts = [p for s in series for p in s.points] + [(x, y) for s in series for x, lo, hi in s.band for y in (lo, hi)]
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
            f'<text x="{left}" y="15" class="ct">{escape(title)}</text>')
    unplotted = [v for s in series for v in s.unplotted]
    note = (f'<text x="{left + 4}" y="{height - bottom - 4}" class="na">{len(unplotted)} not plotted: '
            f'{escape(", ".join(unplotted[:3]))}{"…" if len(unplotted) > 3 else ""}'
            f'<title>not plotted (non-finite or beyond ±{PLOT_LIMIT:g}): {escape(", ".join(unplotted[:50]))}</title></text>'
            if unplotted else "")
    if not pts:
        return head + note + (f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="na">'
                              f'{"no plottable values" if unplotted else "not logged"}</text></svg>')
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y0 == y1:
        y0, y1 = y0 - 0.5 if y0 else 0.0, y1 + 0.5 if y1 else 1.0
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    parts = [head, f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="pa"/>']
    yticks = _ticks(y0, y1)
    for t, label in zip(yticks, _tick_labels(yticks)):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="gr"/>'
                     f'<text x="{left - 4}" y="{sy(t) + 3:.1f}" text-anchor="end" class="tk">{label}</text>')
    for t in _ticks(x0, x1, 5):
        if abs(t - round(t)) < 1e-9:
            parts.append(f'<text x="{sx(t):.1f}" y="{top + ph + 13}" text-anchor="middle" class="tk">{int(round(t))}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 3}" text-anchor="middle" class="tk">update</text>')
    for s in series:  # bands first, under every line
        if s.band:
            ring = [(x, hi) for x, _, hi in s.band] + [(x, lo) for x, lo, _ in reversed(s.band)]
            parts.append('<polygon points="' + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in ring) +
                         f'" fill="{s.color}" fill-opacity="0.15" stroke="none" class="band">'
                         f'<title>{escape(s.label)}: 95 % interval</title></polygon>')
    for s in series:
        if not s.points:
            continue
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        parts.append(f'<polyline points="{line}" fill="none" stroke="{s.color}" stroke-width="1.8"{dash}/>')
        for x, y in s.points:
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.6" fill="{s.color}">'
                         f'<title>{escape(s.label)}: update {_fmt(x)}, {escape(title)} = {_fmt(y)}</title></circle>')
    # Legend, top right, one line per series.
    for i, s in enumerate(series):
        y = top + 12 + 12 * i
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        parts.append(f'<line x1="{left + pw - 92}" x2="{left + pw - 78}" y1="{y - 3}" y2="{y - 3}" '
                     f'stroke="{s.color}" stroke-width="2"{dash}/>'
                     f'<text x="{left + pw - 74}" y="{y}" class="lg">{escape(s.label[:18])}</text>')
    parts.append(note + "</svg>")
    return "".join(parts)


def _numeric_text(value: Any) -> bool:
    """A number the report's data keeps as text: "nan", "inf", "-inf" (JSON has none) or a huge
    integer in scientific notation ("1.000e+400")."""
    if not isinstance(value, str) or len(value) > 32:
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def metric_series(runs: Sequence[tuple[str, list[dict[str, Any]]]], metric: str) -> list[Series]:
    """One series per (run, phase) that logged ``metric`` as a number, ordered by update. Every
    number is untrusted: a non-finite or huge value (or update) is not scaled into the chart but
    listed in the series' ``unplotted`` (the chart shows it as text)."""
    out = []
    for r, (name, rows) in enumerate(runs):
        for phase in ("train", "eval"):
            pts, unplotted = [], []
            for row in rows:
                value = row.get(metric)
                if row.get("phase", "train") != phase or value is None:
                    continue
                x, y = plottable(row.get("update")), plottable(value)
                if x is not None and y is not None:
                    pts.append((x, y))
                elif (isinstance(value, (int, float)) and not isinstance(value, bool)) or _numeric_text(value):
                    unplotted.append(f"update {_shown(row.get('update'))}: {_shown(value)}")
            if pts or unplotted:
                label = f"{name} {phase}" if len(runs) > 1 else phase
                low, high = BANDS.get(metric, ("", ""))
                band = sorted((x, lo, hi) for row in rows if phase == "eval" and row.get("phase") == phase
                              for x, (lo, hi) in [(plottable(row.get("update")),
                                                   (_band_of(row.get(PER_TASK[metric])) or (None, None))
                                                   if metric in PER_TASK
                                                   else (plottable(row.get(low)), plottable(row.get(high))))]
                              if x is not None and lo is not None and hi is not None)
                out.append(Series(label, sorted(pts), PALETTE[r % len(PALETTE)], dashed=phase == "eval", band=band,
                                  unplotted=unplotted))
    return out
