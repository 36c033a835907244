"""The reference log-prob in the report: its chart's y-axis labels tell the ticks apart on a narrow
range (they read "-3.21" three times), evaluations carry a 95 % band computed from their per-task
values, and the summary card shows the trained-task effect (summary.json's
``trained_reference_logprob_before`` / ``_after``) next to the held-out one."""

from __future__ import annotations

import json
import re

from agentgym.evaluation import estimate
from agentgym.report import build_report
from agentgym.report.svg import line_chart, metric_series


def _y_labels(svg: str) -> list[str]:
    """The y-axis tick labels (right-aligned text left of the plot)."""
    return re.findall(r'text-anchor="end" class="tk">([^<]*)<', svg)


def test_a_narrow_range_gets_distinct_tick_labels():
    rows = [{"phase": "eval", "update": 0, "reference_logprob": -3.2101},
            {"phase": "eval", "update": 2, "reference_logprob": -3.2107}]
    labels = _y_labels(line_chart("reference_logprob", metric_series([("r", rows)], "reference_logprob")))
    assert len(labels) >= 3 and len(set(labels)) == len(labels), labels
    assert all(-3.2108 <= float(v) <= -3.2100 for v in labels), labels
    # A wide range keeps the short labels.
    wide = _y_labels(line_chart("success_rate", metric_series(
        [("r", [{"phase": "eval", "update": 0, "success_rate": 0.0}, {"phase": "eval", "update": 1,
                                                                      "success_rate": 1.0}])], "success_rate")))
    assert "0.5" in wide and all(len(v) <= 4 for v in wide), wide


def test_evaluations_get_a_band_from_their_per_task_log_probs():
    before, after = {"t1": -3.0, "t2": -3.4, "t3": -3.23}, {"t1": -2.9, "t2": -3.3, "t3": -3.1}
    rows = [{"phase": "eval", "update": 0, "reference_logprob": -3.21, "reference_logprobs": before},
            {"phase": "eval", "update": 2, "reference_logprob": -3.1, "reference_logprobs": after},
            {"phase": "eval", "update": 3, "reference_logprob": -3.0, "reference_logprobs": {"t1": -3.0}},
            {"phase": "eval", "update": 4, "reference_logprob": -3.0, "reference_logprobs": {"t1": "x", "t2": None}},
            {"phase": "train", "update": 0, "reference_logprob": -3.3}]
    [train, evals] = metric_series([("r", rows)], "reference_logprob")
    expected = [(float(u), e.low, e.high) for u, v in ((0, before), (2, after))
                for e in [estimate(v.values(), over="tasks")]]
    assert train.band == [] and evals.band == expected  # one task, or none numeric: no interval
    svg = line_chart("reference_logprob", [train, evals])
    assert svg.count('class="band"') == 1 and "95 % interval" in svg
    # The band widens the axis to hold it.
    assert min(float(v) for v in _y_labels(svg)) <= expected[0][1] + 0.5


def _folder(tmp_path, summary):
    """A run folder as training writes it: two evaluations with per-task log-probs, no episodes."""
    folder = tmp_path / "run"
    folder.mkdir(exist_ok=True)
    (folder / "trajectories.jsonl").write_text("")
    (folder / "summary.json").write_text(json.dumps(summary))
    rows = [{"phase": "eval", "update": u, "success_rate": 0.0, "reference_logprob": sum(v) / 3,
             "reference_logprobs": dict(zip(("t1", "t2", "t3"), v))}
            for u, v in ((0, (-3.2102, -3.2104, -3.2109)), (2, (-3.2101, -3.2103, -3.2107)))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_summary_card_shows_the_trained_task_effect(tmp_path):
    html = build_report(_folder(tmp_path, {"env_id": "agentgym/Echo-v0", "trained_reference_logprob_before": -4.222,
                                           "trained_reference_logprob_after": -4.1}), tmp_path / "r.html").read_text()
    assert ("<td>trained-task reference log-prob</td><td>-4.22 → -4.1 (change +0.122; the first task trained "
            "on, in-sample)</td>") in html
    assert "<td>teacher signal</td>" in html  # the row beside it stays
    chart = re.search(r'<svg[^>]*aria-label="reference_logprob".*?</svg>', html).group()
    labels = _y_labels(chart)
    assert chart.count('class="band"') == 1 and len(set(labels)) == len(labels) >= 3, labels
    for value in (None, "nan", True):
        html = build_report(_folder(tmp_path, {"trained_reference_logprob_before": value,
                                               "trained_reference_logprob_after": -4.1}),
                            tmp_path / "r2.html").read_text()
        assert "<td>trained-task reference log-prob</td><td>n/a</td>" in html
