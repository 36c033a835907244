"""The report without a browser: what the HTML holds, how spans map to text, the CLI, bad input."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from agentgym.report import build_report, build_view, load_run, main, view_main
from agentgym.report.offsets import char_span, token_char_offsets
from agentgym.report.page import embed_json
from agentgym.report.svg import Series, line_chart
from agentgym.store import read_trajectories
from agentgym.types import Step, Trajectory
from tests.report.conftest import BIG, HOSTILE_CLOSE, HOSTILE_IMG, HOSTILE_SCRIPT, data_of


def _marked(step: dict, mark: dict) -> str:
    """The characters a mark covers, counting in UTF-16 units as the page's script does."""
    units = step["action"].encode("utf-16-le", "surrogatepass")
    return units[2 * mark["s"]:2 * mark["e"]].decode("utf-16-le", "surrogatepass")


def test_report_of_a_real_run_is_self_contained_and_complete(run_a, tiny_tokenizer, tmp_path):
    out = build_report(run_a, tmp_path / "r.html")
    html = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing fetched from anywhere
    assert "default-src 'none'" in html
    for metric in ("success_rate", "reward_mean", "loss", "distilled_token_fraction", "teacher_calls"):
        assert f'aria-label="{metric}"' in html
    summary = json.loads((run_a / "summary.json").read_text())
    assert f'id="success-before">{summary["success_before"]:.3g}<' in html
    assert f'id="success-after">{summary["success_after"]:.3g}<' in html

    data = data_of(html)
    run = data["runs"][0]
    trajs = list(read_trajectories(run_a / "trajectories.jsonl"))
    assert len(run["trajs"]) == len(trajs)
    assert run["offsets"].startswith("all ") and "exact characters" in run["offsets"]
    n = 0
    for compact, traj in zip(run["trajs"], trajs):
        assert compact["task"] == traj.task_id and compact["ok"] == traj.success
        for mark in (m for s in compact["steps"] for m in s["marks"]):
            target = traj.targets[mark["t"]]
            step = compact["steps"][target.step]
            action = run["strings"][step["action"]] if isinstance(step["action"], int) else step["action"]
            ids = traj.steps[target.step].action_ids[target.span[0]:target.span[1]]
            assert _marked({"action": action}, mark) == tiny_tokenizer.decode(ids, skip_special_tokens=True)
            assert not mark["whole"]
            n += 1
        kinds = {f["kind"] for s in compact["steps"] for f in s["fb"]}
        assert {"reference", "outcome"} <= kinds
    assert n == sum(len(t.targets) for t in trajs) > 0


def test_hostile_content_is_escaped_in_the_html(hostile_file, tmp_path):
    html = build_view(hostile_file, tmp_path / "h.html").read_text(encoding="utf-8")
    assert html.count("<script") == 2  # the data block and the page's own script, nothing else
    for needle in (HOSTILE_SCRIPT, HOSTILE_IMG, HOSTILE_CLOSE, "\u2028", "\u2029"):
        assert needle not in html
    assert len(html) < 2 * BIG // 10  # two 1 MB texts were cut to 20,000 characters each
    data = data_of(html)["runs"][0]
    first = data["trajs"][0]
    assert first["task"] == "evil-" + HOSTILE_IMG  # the JSON round trip gives the text back exactly
    texts = "".join(s for s in data["strings"])
    assert HOSTILE_SCRIPT in texts and HOSTILE_CLOSE in texts and "\ufffd\ufffd" in texts
    assert "the full text has 1,000," in texts
    assert any("WHOLE" in w or "whole" in w for w in [data["offsets"]])  # no tokenizer given to view


def test_embed_json_cannot_close_its_script_element():
    value = {"a": "</script><!-- <script> & \u2028\u2029 \udcff"}
    text = embed_json(value)
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><!-- <script> & \u2028\u2029 \ufffd"}
    text.encode("utf-8")  # writable


def test_offsets_from_the_tokenizer_handle_sampled_non_canonical_ids(tiny_tokenizer):
    text = "[cd(folder='dоcument'), ls()] 日本"  # a Cyrillic о and CJK: multi-byte tokens
    canonical = tiny_tokenizer.encode(text, add_special_tokens=False) + [tiny_tokenizer.eos_token_id]
    offsets = token_char_offsets(text, canonical, tokenizer=tiny_tokenizer)
    assert offsets[-1] == (len(text), len(text))
    # A sampled sequence need not be the canonical tokenization: one token per byte-level piece.
    pieces = [tiny_tokenizer.convert_tokens_to_ids(t) for t in tiny_tokenizer.tokenize(text)]
    split = [i for p in pieces for i in ([p] if len(tiny_tokenizer.convert_ids_to_tokens([p])[0]) == 1 else
                                         tiny_tokenizer.convert_tokens_to_ids(list(tiny_tokenizer.convert_ids_to_tokens([p])[0])))]
    assert tiny_tokenizer.decode(split) == text and split != pieces
    offsets = token_char_offsets(text, split, tokenizer=tiny_tokenizer)
    for start in range(len(split)):
        for end in range(start + 1, min(len(split), start + 6) + 1):
            a, b = char_span(offsets, (start, end))
            decoded = tiny_tokenizer.decode(split[start:end])
            if "\ufffd" not in decoded:  # spans cutting a character in half cannot be shown exactly
                assert text[a:b] == decoded


def test_recorded_offsets_win_and_bad_ones_are_ignored():
    assert token_char_offsets("abc", [7, 8], info={"action_token_offsets": [[0, 1], [1, 3]]}) == [(0, 1), (1, 3)]
    assert token_char_offsets("abc", [7, 8], info={"action_token_offsets": [[0, 1]]}) is None
    assert token_char_offsets("abc", [7, 8], info={"action_token_offsets": [[0, 1], [1, 9]]}) is None
    assert token_char_offsets("abc", [], info={}) is None


def test_whole_action_fallback_is_flagged(tmp_path):
    traj = Trajectory(task_id="t", steps=[Step(index=0, action_text="ls()", action_ids=[5, 6, 7])],
                      metadata={"targets": [{"step": 0, "span": [1, 2]}, {"step": 3, "span": [0, 1]}, {"bad": 1}]})
    (tmp_path / "t.jsonl").write_text(traj.to_json() + "\n")
    html = build_view(tmp_path / "t.jsonl").read_text()
    run = data_of(html)["runs"][0]
    assert run["trajs"][0]["steps"][0]["marks"] == [{"t": 0, "s": 0, "e": 4, "whole": True}]
    assert "1 of 1 target spans highlight the WHOLE action" in run["offsets"]
    assert any("step 3" in w for w in run["warnings"]) and any("invalid target" in w for w in run["warnings"])
    assert "Read with warnings" in html


def test_cli_report_view_and_errors(run_a, run_b, tmp_path, capsys):
    assert main([str(run_a), "-o", str(tmp_path / "a.html"), "--compare", str(run_b)]) == 0
    runs = data_of((tmp_path / "a.html").read_text())["runs"]
    assert [r["name"] for r in runs] == ["hint_sd", "grpo"]
    assert view_main([str(run_a / "trajectories.jsonl"), "-o", str(tmp_path / "v.html"), "--tokenizer", "tiny"]) == 0
    assert data_of((tmp_path / "v.html").read_text())["runs"][0]["offsets"].startswith("all ")
    from agentgym.cli import main as agentgym
    assert agentgym(["view", str(run_a / "trajectories.jsonl"), "-o", str(tmp_path / "c.html")]) == 0
    assert (tmp_path / "c.html").stat().st_size > 0
    assert main([str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert view_main([str(tmp_path / "nope.jsonl")]) == 1
    with pytest.raises(SystemExit):
        main([str(run_a), "--max-chars", "5"])


def test_broken_metrics_and_config_are_reported_not_fatal(run_a, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(run_a, broken)
    (broken / "config.json").write_text("{not json")
    with open(broken / "metrics.jsonl", "a") as f:
        f.write("{cut off\n[1, 2]\n")
    (broken / "summary.json").unlink()
    run = load_run(broken)
    assert any("config.json is not valid JSON" in w for w in run.warnings)
    assert any("summary.json is missing" in w for w in run.warnings)
    assert sum("metrics.jsonl:" in w for w in run.warnings) == 2
    assert len(run.metrics) == len((run_a / "metrics.jsonl").read_text().splitlines())


def test_chart_escapes_labels_and_shows_missing_metrics():
    svg = line_chart("<loss>", [Series("<b>run</b>", [(0, 1.0), (1, float(2))])])
    assert "<b>" not in svg and "&lt;b&gt;run" in svg and "&lt;loss&gt;" in svg
    assert "not logged" in line_chart("kl", [])


def test_eval_curves_have_their_interval_band_and_declared_metrics_get_charts(run_a, tmp_path):
    from agentgym.report.svg import metric_series
    rows = [{"phase": "eval", "update": 0, "success_rate": 0.25, "success_low": 0.0, "success_high": 0.6,
             "reference_logprob": -4.2},
            {"phase": "eval", "update": 2, "success_rate": 0.5, "success_low": 0.2, "success_high": 0.8,
             "reference_logprob": -3.9},
            {"phase": "train", "update": 0, "success_rate": 0.1, "my_metric": 3.0}]
    [train, evals] = metric_series([("r", rows)], "success_rate")
    assert train.band == [] and evals.band == [(0.0, 0.0, 0.6), (2.0, 0.2, 0.8)]
    svg = line_chart("success_rate", [train, evals])
    assert svg.count('class="band"') == 1 and "95 % interval" in svg
    # A run whose summary declares a learner metric gets its chart, and the held-out log-prob one.
    folder = tmp_path / "run"
    shutil.copytree(run_a, folder)
    summary = json.loads((folder / "summary.json").read_text())
    summary.update(learner_metrics=["my_metric"], effect={
        "metric": "reference_logprob", "before": -4.2, "after": -3.9,
        "difference": {"mean": 0.3, "std": 0.1, "low": 0.1, "high": 0.5, "n": 3, "over": "held-out tasks"}})
    (folder / "summary.json").write_text(json.dumps(summary))
    with open(folder / "metrics.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    html = build_report(folder, tmp_path / "r.html").read_text()
    assert 'aria-label="my_metric"' in html and 'aria-label="reference_logprob"' in html
    assert "-4.2 → -3.9 (difference 0.3 [0.1, 0.5], 3 tasks)" in html
