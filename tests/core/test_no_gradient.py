"""No silent no-op training: every update in which no sample carried a gradient is warned about and
marked in metrics.jsonl; once such updates are more than half of the run, it stops with exit 1 and
the cause. Echo with the tiny model (no reference: HINT-SD's reference hindsight has nothing to
distil, and no episode succeeds) and ALFWorld with generated games under a step cap shorter than
their expert plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentgym.train import main


def _train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["phase"] == "train"]


def test_echo_without_any_target_warns_every_update_and_stops_with_the_cause(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["--env.id", "agentgym/Echo-v0", "--env.kwargs", "{}", "--model.name", "tiny", "--train.updates", "2",
               "--env.eval_tasks", "0", "--rollout.max_new_tokens", "4", "--train.run_dir", str(run),
               "--train.progress", "false"])
    err = capsys.readouterr().err
    cause = "no episode succeeded, so every advantage is zero, and the feedback gave no distillation target"
    assert rc == 1, err[-2000:]
    for update in (0, 1):
        assert f"warning: update {update}: no sample carried a gradient (loss 0, weights unchanged): {cause}" in err
    assert err.strip().splitlines()[-1] == (
        "agentgym train: 2 of 2 updates carried no gradient (more than train.max_no_gradient_fraction = 0.5): "
        + cause)
    records = _train_records(run)
    assert [r["no_gradient"] for r in records] == [1.0, 1.0] and all(r["loss"] == 0 for r in records)
    assert all(r["no_gradient_cause"] == cause for r in records)
    notes = json.loads((run / "summary.json").read_text())["notes"]
    assert any(n.startswith("2 update(s) carried no gradient") for n in notes), notes


def test_the_same_run_with_targets_carries_a_gradient_and_exits_zero(tmp_path, capsys):
    """The demo preset gives Echo its references: the README's Echo command trains on targets."""
    run = tmp_path / "run"
    rc = main(["--env.id", "agentgym/Echo-v0", "--model.name", "tiny", "--train.updates", "1", "--env.eval_tasks", "0",
               "--rollout.max_new_tokens", "4", "--train.run_dir", str(run), "--train.progress", "false"])
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    assert "no sample carried a gradient" not in err
    [record] = _train_records(run)
    assert record["no_gradient"] == 0.0 and record["num_targets"] > 0 and record["loss"] > 0


def test_the_demo_preset_fits_each_env_tasks():
    """The CPU demo's 4-step cap does not reach ALFWorld (expert plans of up to 31 steps on the
    generated games): it gets the env's own 50 steps; Echo gets its references."""
    from agentgym.train import cli_config
    alfworld, _, _ = cli_config(["--env.id", "agentgym/ALFWorld-v0"])
    assert alfworld.resolved().env.max_steps == 50
    echo, _, _ = cli_config(["--env.id", "agentgym/Echo-v0"])
    assert echo.env.kwargs == {"reference": True}
    bfcl, _, _ = cli_config([])
    assert bfcl.env.max_steps == 1  # the demo's own env keeps its one-step episodes


@pytest.fixture(scope="module")
def generated_games() -> Path:
    """Two generated ALFWorld-engine games (expert plans of 8 and 19 steps), cached in the data dir."""
    from agentgym.envs.alfworld.generate import generate_games
    from agentgym.paths import data_dir
    return generate_games(2, seed=7, out=data_dir("alfworld", "generated-noop")).out


@pytest.mark.slow
def test_alfworld_generated_games_under_a_too_short_step_cap_stop_with_the_cause(generated_games, tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["--env.id", "agentgym/ALFWorld-v0", "--env.kwargs", json.dumps({"games": [str(generated_games)]}),
               "--learner.name", "serl", "--env.max_steps", "4", "--model.name", "tiny", "--train.updates", "1",
               "--env.eval_tasks", "0", "--train.run_dir", str(run), "--train.progress", "false"])
    err = capsys.readouterr().err
    plans = [len(json.loads(p.read_text())["agentgym"]["expert_plan"]) for p in generated_games.rglob("game.tw-pddl")]
    cause = (f"no episode can succeed within env.max_steps = 4; the env's tasks need up to {max(plans)} steps "
             "(raise --env.max_steps)")
    assert rc == 1, err[-2000:]
    assert f"warning: update 0: no sample carried a gradient (loss 0, weights unchanged): {cause}" in err
    assert err.strip().splitlines()[-1].endswith(cause)
    [record] = _train_records(run)
    assert record["no_gradient"] == 1.0 and record["trained_samples"] == 0
