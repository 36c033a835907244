"""`agentgym train --env.id ID --model.name tiny --train.updates 1` works on every benchmark id with
that env's own defaults (splits, task list, limits), evaluates before and after on held-out tasks,
and a run whose episodes fail at reset stops with a non-zero exit and the cause."""

import json

import pytest

from agentgym.train import main

IDS = ["agentgym/Echo-v0", "agentgym/BFCLMultiTurn-v0", "agentgym/BFCLSingleTurn-v0", "agentgym/WebShop-v0",
       "agentgym/ALFWorld-v0", "agentgym/AppWorld-v0"]


@pytest.mark.parametrize("env_id", IDS)
def test_every_env_trains_from_the_cli_with_its_own_defaults(env_id, tmp_path, monkeypatch, shared_data, capsys):
    monkeypatch.setenv("WEBSHOP_DATA", str(shared_data / "webshop"))  # the one thing an env's data needs
    run = tmp_path / "run"
    # A random tiny model earns no reward on most envs: the update may carry no gradient, which is said
    # (tests/core/test_no_gradient.py); this test is about the plumbing, so such a run does not stop.
    rc = main(["--env.id", env_id, "--model.name", "tiny", "--train.updates", "1", "--train.run_dir", str(run),
               "--train.progress", "false", "--train.max_no_gradient_fraction", "1"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["phase"], m["update"]) for m in metrics] == [("eval", 0), ("train", 0), ("eval", 1)]
    train, evals = metrics[1], [metrics[0], metrics[2]]
    assert train["reset_errors"] == 0 and train["episodes"] == 2
    from agentgym.train import DEMO_EVAL_TASKS
    # Four held-out tasks per evaluation (the demo preset's config: an interval over tasks), three on the
    # demo's own env; the offline ALFWorld pool lists fewer.
    held_out = len(DEMO_EVAL_TASKS) if env_id == "agentgym/BFCLMultiTurn-v0" else 4
    assert all(m["episode_errors"] == 0 for m in evals)
    assert all(m["episodes"] == held_out for m in evals) or env_id == "agentgym/ALFWorld-v0", evals
    assert all(m["success_low"] is not None for m in evals if m["tasks"] > 1), evals  # an interval over tasks
    from agentgym.envspec import env_defaults
    declared = env_defaults(env_id)
    for m in evals:  # the per-category counts add up, and the env's official numbers are there
        assert sum(c["episodes"] for c in m["categories"].values()) == m["episodes"]
        assert sum(c["successes"] for c in m["categories"].values()) == m["successes"]
        assert (declared.category_field is None) == (set(m["categories"]) == {"all"}), m["categories"]
        assert bool(m["headline"]) == (declared.headline is not None)
        assert "pass@1" in m and m["pass@1"] == m["success_rate"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["success_before"] is not None and summary["success_after"] is not None
    config = json.loads((run / "config.json").read_text())
    from agentgym.store import read_trajectories
    trajs = list(read_trajectories(run / "trajectories.jsonl"))
    assert all(t.error is None and t.env_id == env_id for t in trajs)
    eval_tasks = {t.task_id for t in trajs if t.phase == "eval"}
    train_tasks = {t.task_id for t in trajs if t.phase == "train"}
    if env_id == "agentgym/BFCLMultiTurn-v0":  # the demo preset's own env keeps its CPU task ids
        assert config["env"]["task_ids"] == ["multi_turn_base_105", "multi_turn_base_146"]
    elif env_id != "agentgym/ALFWorld-v0":  # (the offline ALFWorld pool is one rebuilt trial)
        assert not eval_tasks & train_tasks, (eval_tasks, train_tasks)  # held out, or the env's eval split
        assert config["env"]["task_ids"] is None  # BFCL's demo task ids do not leak into other envs


def test_a_run_whose_episodes_fail_at_reset_exits_non_zero_with_the_cause(tmp_path, capsys):
    rc = main(["--env.id", "agentgym/BFCLSingleTurn-v0", "--env.task_ids", '["no_such_task_7"]',
               "--model.name", "tiny", "--train.updates", "1", "--env.eval_tasks", "0",
               "--train.run_dir", str(tmp_path / "run"), "--train.progress", "false"])
    err = capsys.readouterr().err
    assert rc == 1 and "failed at reset" in err and "no_such_task_7" in err


def test_an_env_whose_data_is_missing_fails_before_a_model_loads(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WEBSHOP_DATA", str(tmp_path / "nowhere"))
    rc = main(["--env.id", "agentgym/WebShop-v0", "--model.name", "tiny", "--train.run_dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot build agentgym/WebShop-v0" in err and "WEBSHOP_DATA" in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()  # one line; no run folder was started
