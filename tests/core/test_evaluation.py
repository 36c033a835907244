"""``agentgym eval``: its statistics against hand-computed values, its own output folder (a training
run's files stay byte-identical), --help, --compare, checkpoints, an OpenAI-compatible model, and
clear errors for settings that cannot give a meaningful number."""

import hashlib
import json
import math
from pathlib import Path

import pytest

from agentgym.evaluation import eval_main
from agentgym.stats import (Estimate, Outcome, aggregate, difference, estimate, pass_at_k, pass_hat_k, seed_record,
                            t_quantile)
from agentgym.tasks import reference_logprob_of
from agentgym.train import main as train_main


# ------------------------------------------------------------------------------------------ statistics
def test_mean_std_and_interval_match_hand_computed_values():
    e = estimate([0.25, 0.5, 0.75, 1.0], over="seeds")
    # mean 0.625; deviations -.375 -.125 .125 .375 -> sum of squares 0.3125 / 3 -> std 0.3227
    assert e.mean == pytest.approx(0.625) and e.std == pytest.approx(math.sqrt(0.3125 / 3))
    half = 3.182 * math.sqrt(0.3125 / 3) / 2  # t(0.975, 3) * std / sqrt(4)
    assert (e.low, e.high) == pytest.approx((0.625 - half, 0.625 + half))
    assert e.n == 4 and e.over == "seeds"
    single = estimate([0.4], over="seeds")
    assert single.mean == 0.4 and single.std is None and single.low is None
    with pytest.raises(ValueError, match="no values"):
        estimate([], over="seeds")
    assert t_quantile(1) == 12.706 and t_quantile(30) == 2.042 and t_quantile(120) == pytest.approx(1.98, abs=0.003)


def test_pass_at_k_and_pass_hat_k_match_hand_computed_values():
    # n=5 samples, c=2 correct. pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@4 = 1 - 0.
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == pytest.approx(1.0)
    # pass^2 = C(2,2)/C(5,2) = 1/10; pass^3 = 0 (only two correct); pass^1 = pass@1.
    assert pass_hat_k(5, 2, 2) == pytest.approx(0.1)
    assert pass_hat_k(5, 2, 3) == 0.0 and pass_hat_k(5, 2, 1) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_welch_difference_matches_hand_computed_values():
    a, b = estimate([0.1, 0.3, 0.2], over="seeds"), estimate([0.5, 0.9], over="seeds")
    d = difference(a, b)
    va, vb = 0.01 / 3, 0.08 / 2  # var_a = 0.01, var_b = 0.08
    se = math.sqrt(va + vb)
    df = se ** 4 / (va ** 2 / 2 + vb ** 2 / 1)  # ~1.17 -> t(1) = 12.706 (conservative)
    assert d.mean == pytest.approx(0.5) and d.std == pytest.approx(se)
    assert (d.low, d.high) == pytest.approx((0.5 - t_quantile(df) * se, 0.5 + t_quantile(df) * se))
    assert difference(estimate([1.0], over="seeds"), b).low is None  # one value: no interval


def _rows() -> list[Outcome]:
    # task a (cat x): 2 of 3 samples succeed; task b (cat x): 0 of 3; task c (cat y): 3 of 3.
    out = []
    for task, cat, wins in (("a", "x", 2), ("b", "x", 0), ("c", "y", 3)):
        out += [Outcome(task, cat, i < wins, 1.0 if i < wins else 0.25, member=i) for i in range(3)]
    return out


def test_a_seed_record_gives_pass_at_k_and_categories_that_sum_to_the_totals():
    rec = seed_record(_rows(), headline=lambda rows: {"n": float(len(rows))})
    assert rec["episodes"] == 9 and rec["successes"] == 5 and rec["tasks"] == 3
    assert rec["success_rate"] == pytest.approx(5 / 9)
    assert rec["reward_mean"] == pytest.approx((5 * 1.0 + 4 * 0.25) / 9)
    # pass@1 = mean(2/3, 0, 1); pass@2 = mean(1 - C(1,2)/C(3,2)=1, 0, 1); pass^2 = mean(C(2,2)/3, 0, 1)
    assert rec["pass@1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert rec["pass@2"] == pytest.approx(2 / 3) and rec["pass@3"] == pytest.approx(2 / 3)
    assert rec["pass^2"] == pytest.approx((1 / 3 + 0 + 1) / 3) and rec["pass^3"] == pytest.approx(1 / 3)
    cats = rec["categories"]
    assert set(cats) == {"x", "y"}
    assert sum(c["episodes"] for c in cats.values()) == rec["episodes"]
    assert sum(c["successes"] for c in cats.values()) == rec["successes"]
    assert sum(c["tasks"] for c in cats.values()) == rec["tasks"]
    assert cats["x"]["success_rate"] == pytest.approx(2 / 6) and cats["y"]["reward_mean"] == 1.0
    assert rec["headline"] == {"n": 9.0}
    # The interval is over the per-task success rates (2/3, 0, 1).
    task_rates = estimate([2 / 3, 0.0, 1.0], over="tasks")
    assert (rec["success_low"], rec["success_high"]) == pytest.approx((task_rates.low, task_rates.high))


def test_aggregate_over_seeds_estimates_each_metric_over_the_seed_values():
    first = seed_record(_rows())
    second = seed_record([Outcome(r.task_id, r.category, True, 1.0, r.member) for r in _rows()])
    agg = aggregate([first, second])
    assert agg["seeds"] == 2 and agg["episodes"] == 18 and agg["successes"] == 14
    s = Estimate.from_dict(agg["success"])
    assert s.over == "seeds" and s.mean == pytest.approx((5 / 9 + 1) / 2)
    assert s.std == pytest.approx(estimate([5 / 9, 1.0], over="seeds").std)
    assert agg["pass_at_k"]["pass@2"]["mean"] == pytest.approx((2 / 3 + 1) / 2)
    assert sum(c["episodes"] for c in agg["categories"].values()) == agg["episodes"]
    one = aggregate([first])
    assert one["success"]["over"] == "tasks" and one["success"]["n"] == 3


def test_official_headlines_are_computed_the_benchmarks_way():
    from agentgym.envs.appworld.env import appworld_headline
    from agentgym.envs.bfcl.multi_turn import multi_turn_headline
    from agentgym.envs.webshop.env import webshop_headline
    rows = [Outcome("t1", "multi_turn_base", True, 1.0), Outcome("t2", "multi_turn_base", False, 0.0),
            Outcome("t3", "multi_turn_long_context", True, 1.0)]
    head = multi_turn_headline(rows)
    # Unweighted over categories (50 % and 100 %), not pooled over entries (66.7 %).
    assert head["accuracy/multi_turn_base"] == 50.0 and head["overall_accuracy"] == 75.0
    assert head["categories_evaluated"] == 2.0
    shop = webshop_headline([Outcome("a", "beauty", False, 0.5), Outcome("b", "food", True, 1.0)])
    assert shop == {"score": 75.0, "success_rate": 50.0}
    # Scenario "s1" has tasks s1_1 (pass) and s1_2 (fail); scenario "s2" has s2_1 (pass).
    world = appworld_headline([Outcome("s1_1", "1", True, 1.0), Outcome("s1_2", "1", False, 0.0),
                               Outcome("s2_1", "2", True, 1.0)])
    assert world["task_goal_completion"] == pytest.approx(200 / 3) and world["scenario_goal_completion"] == 50.0


# ------------------------------------------------------------------------------------------ the command
def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "echo"
    rc = train_main(["--env.id", "agentgym/Echo-v0", "--env.kwargs", '{"reference": true}', "--model.name", "tiny",
                     "--train.updates", "1", "--env.eval_tasks", "2", "--learner.lr", "1e-2",
                     "--train.run_dir", str(run), "--train.progress", "false"])
    assert rc == 0
    return run


def test_eval_of_a_finished_run_writes_only_its_own_folder(finished_run, tmp_path, capsys):
    before = _tree(finished_run)
    out = tmp_path / "evals"
    rc = eval_main([str(finished_run), "--seeds", "2", "--samples", "2", "--rollout.eval_temperature", "1.0",
                    "--out", str(out), "--name", "mine", "--train.progress", "false"])
    assert rc == 0, capsys.readouterr().err
    assert _tree(finished_run) == before  # byte-identical: nothing appended to the run's records
    folder = out / "mine"
    assert {p.name for p in folder.iterdir()} == {"config.json", "trajectories.jsonl", "metrics.jsonl", "summary.json"}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["weights"].startswith("final adapter of") and summary["seeds"] == 2 and summary["samples"] == 2
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [0, 1]
    assert summary["episodes"] == sum(r["episodes"] for r in records) == 2 * 2 * 2  # seeds x tasks x samples
    trajs = (folder / "trajectories.jsonl").read_text().splitlines()
    assert len(trajs) == summary["episodes"]
    # The same held-out tasks as the run's own evaluations.
    run_eval = {json.loads(t)["task_id"] for t in (finished_run / "trajectories.jsonl").read_text().splitlines()
                if json.loads(t)["phase"] == "eval"}
    assert {json.loads(t)["task_id"] for t in trajs} == run_eval
    assert summary["success"]["over"] == "seeds" and "pass@2" in summary["pass_at_k"]
    printed = json.loads(capsys.readouterr().out)
    assert printed["folder"] == str(folder)


def test_the_run_summary_reports_the_paired_held_out_change(finished_run):
    summary = json.loads((finished_run / "summary.json").read_text())
    evals = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["phase"] == "eval"]
    before, after = evals[0]["reference_logprobs"], evals[-1]["reference_logprobs"]
    assert sorted(before) == sorted(after) and len(before) == 2  # the two held-out words, paired
    diffs = [after[t] - before[t] for t in before]
    effect = summary["effect"]
    assert effect["metric"] == "reference_logprob" and effect["difference"]["n"] == 2
    assert effect["difference"]["mean"] == pytest.approx(sum(diffs) / 2) and diffs[0] != 0.0  # the update moved it
    assert effect["before"] == pytest.approx(sum(before.values()) / 2) == summary["reference_logprob_before"]
    assert any(note.startswith("measured: mean per-token log-prob") for note in summary["notes"])
    assert summary["learner_metrics"] and summary["success_interval_before"] is not None


def test_eval_of_a_checkpoint_and_compare_prints_one_table(finished_run, tmp_path, capsys):
    out = tmp_path / "evals"
    ckpt = next((finished_run / "checkpoints").glob("step-*"))
    assert eval_main([str(finished_run), "--checkpoint", str(ckpt), "--out", str(out), "--name", "ckpt",
                      "--train.progress", "false"]) == 0
    assert eval_main(["--model", "tiny", "--env.id", "agentgym/Echo-v0", "--env.eval_tasks", "2", "--out", str(out),
                      "--name", "base", "--train.progress", "false"]) == 0
    assert json.loads((out / "ckpt" / "summary.json").read_text())["weights"] == f"checkpoint {ckpt}"
    capsys.readouterr()
    assert eval_main(["--compare", "base", "ckpt", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| metric | base | ckpt | ckpt − base |")
    assert "| success |" in table and "| reward |" in table


def test_eval_help_prints_the_settings(capsys):
    assert eval_main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--seeds", "--samples", "--checkpoint", "--compare", "--split", "--env.id", "--model.name"):
        assert flag in out


@pytest.mark.parametrize("args, message", [
    (["--samples", "4"], "eval_temperature"),
    (["--seeds", "0"], "--seeds"),
    (["--tasks", "some"], "positive number or 'all'"),
    (["--model", "openai:gpt"], "--base-url"),
    (["/no/such/run"], "not a run folder"),
    (["--compare", "only-one"], "not an eval folder"),
])
def test_settings_that_cannot_give_a_number_are_one_line_errors(args, message, tmp_path, capsys):
    rc = eval_main(args + ["--model.name", "tiny", "--env.id", "agentgym/Echo-v0", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_eval_of_an_openai_compatible_model_reads_the_key_from_the_environment(tmp_path, monkeypatch, capsys):
    from agentgym.testing.openai_server import Reply, ScriptedOpenAIServer

    def echo(body):  # the Echo env asks "Say the word: X"
        return Reply(content=body["messages"][-1]["content"].rsplit(":", 1)[-1].strip())

    monkeypatch.setenv("MY_KEY", "sk-test-123")
    with ScriptedOpenAIServer(responder=echo, api_key="sk-test-123") as server:
        rc = eval_main(["--model", "openai:served", "--base-url", server.base_url, "--api-key-env", "MY_KEY",
                        "--env.id", "agentgym/Echo-v0", "--env.eval_tasks", "3", "--out", str(tmp_path),
                        "--name", "api", "--train.progress", "false"])
        assert rc == 0, capsys.readouterr().err
        assert server.request_headers and all(h["authorization"] == "Bearer sk-test-123"
                                              for h in server.request_headers)
    summary = json.loads((tmp_path / "api" / "summary.json").read_text())
    assert summary["model"] == "openai:served" and summary["success"]["mean"] == 1.0 and summary["episodes"] == 3


def test_echo_with_references_gives_reference_hindsight_and_the_held_out_log_prob(tiny_tokenizer):
    from agentgym.agents.scripted import ScriptedPolicy
    from agentgym.feedback import make_source
    from agentgym.rollout import rollout
    policy = ScriptedPolicy(lambda conv: "banana", tiny_tokenizer)
    trajs = rollout(policy, "agentgym/Echo-v0", [{"word": "apple"}, {"word": "river"}], env_kwargs={"reference": True},
                    max_steps=1, progress=False)
    assert not any(t.success for t in trajs)
    [hint] = make_source("reference_hindsight")(trajs[0])
    assert hint.payload["expected"] == "apple" and hint.payload["actual"] == "banana" and hint.step == 0
    scored = []
    values = reference_logprob_of(trajs, "agentgym/Echo-v0", tiny_tokenizer,
                                  lambda ctx, act: scored.append((ctx, act)) or -1.5)
    assert values == {"echo-apple": -1.5, "echo-river": -1.5}
    assert scored[0][1] == tiny_tokenizer.encode("apple", add_special_tokens=False) + [tiny_tokenizer.eos_token_id]
    assert scored[0][0] == trajs[0].steps[0].prompt_ids
    # Without references the env emits none, and there is nothing to score.
    plain = rollout(policy, "agentgym/Echo-v0", [{"word": "apple"}], max_steps=1, progress=False)
    assert reference_logprob_of(plain, "agentgym/Echo-v0", tiny_tokenizer, lambda c, a: 0.0) == {}
