"""The run config: files, command-line overrides, clear errors, learner defaults, help text."""

import pytest

from agentgym.config import ConfigError, RunConfig, config_hash, help_text, load_config


def test_overrides_parse_types_and_nest():
    cfg = load_config(["--learner.lr", "1e-5", "--env.group_size=8", "--learner.dual_clip", "null",
                       "--model.lora", "false", "--env.task_ids", '["a", "b"]', "--env.kwargs", '{"split": "eval"}'])
    assert cfg.learner.lr == 1e-5 and cfg.env.group_size == 8 and cfg.learner.dual_clip is None
    assert cfg.model.lora is False and cfg.env.task_ids == ["a", "b"] and cfg.env.kwargs == {"split": "eval"}


def test_toml_and_yaml_files_with_overrides_on_top(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[learner]\nname = "serl"\nlr = 2e-6\n[env]\ngroup_size = 8\n')
    cfg = load_config(["--config", str(toml), "--learner.lr", "3e-6"])
    assert (cfg.learner.name, cfg.learner.lr, cfg.env.group_size) == ("serl", 3e-6, 8)
    import yaml  # a dependency of accelerate
    y = tmp_path / "run.yaml"
    y.write_text(yaml.safe_dump({"learner": {"name": "grpo"}, "train": {"updates": 7}}))
    cfg = load_config(["--config", str(y)])
    assert cfg.learner.name == "grpo" and cfg.train.updates == 7


@pytest.mark.parametrize("argv, message", [
    (["--learner.lrr", "1"], "learner.lrr: unknown key in [learner]; known keys: ['beta1'"),
    (["--trainer.updates", "1"], "trainer: unknown key"),
    (["--learner.lr", "-1"], "learner.lr: Input should be greater than 0 (got -1)"),
    (["--env.group_size", "0"], "env.group_size: Input should be greater than or equal to 1 (got 0)"),
    (["--learner.name", "ppo"], "learner.name: Input should be 'grpo', 'dense_sd', 'hint_sd' or 'serl' (got 'ppo')"),
    (["--learner.kl_direction", "sideways"], "must be one of ['forward', 'jsd', 'reverse']"),
    (["--learner.kl_direction", "1.5"], "alpha must be in [0, 1]"),
    (["--learner.lr"], "--learner.lr needs a value"),
    (["lr", "1"], "expected --section.key VALUE, got 'lr'"),
    (["--lr", "1"], "overrides are --section.key"),
    (["--config", "/nonexistent.toml"], "does not exist"),
])
def test_bad_input_is_a_clear_error(argv, message):
    with pytest.raises(ConfigError) as exc:
        load_config(argv)
    assert message in str(exc.value)


def test_bad_toml_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[learner\nlr = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(["--config", str(bad)])


@pytest.mark.parametrize("name, teacher, source, selector", [
    ("hint_sd", "ema", "llm_hindsight", "hindsight_multi"),
    ("dense_sd", "ema", "llm_step_hint", "dense"),
    ("serl", "refresh", "immediate", "dense"),
    ("grpo", "fixed", "none", "none"),
])
def test_learner_defaults_resolve(name, teacher, source, selector):
    cfg = load_config(["--learner.name", name]).resolved()
    assert (cfg.learner.teacher, cfg.feedback.source, cfg.feedback.selector) == (teacher, source, selector)
    if name == "hint_sd":
        assert cfg.learner.teacher_rate == 0.001
    if name == "serl":
        assert cfg.learner.teacher_every == 10 and cfg.learner.serl_lambda0 == 0.5 and cfg.learner.serl_lambda_updates == 50
    assert cfg.learner.grad_clip == 1.0 and cfg.learner.clip_eps == 0.2 and cfg.learner.kl_coef == 0.0


def test_every_field_has_help_text():
    for section, field in RunConfig.model_fields.items():
        assert field.description, section
        for name, f in field.annotation.model_fields.items():
            assert f.description, f"{section}.{name}"
    assert "--learner.lr" in help_text()


def test_config_hash_ignores_run_bookkeeping_only():
    a = load_config([])
    assert config_hash(a) == config_hash(load_config(["--train.run_dir", "elsewhere", "--train.updates", "9"]))
    assert config_hash(a) != config_hash(load_config(["--learner.lr", "1e-3"]))


def test_cli_reports_config_errors_with_exit_code_2(capsys):
    from agentgym.train import main
    assert main(["--learner.lr", "-1"]) == 2
    assert "learner.lr" in capsys.readouterr().err
    assert main(["--preset", "huge"]) == 2
    assert main(["--help"]) == 0 and "--learner.kl_direction" in capsys.readouterr().out


def test_the_main_job_default_is_hint_sd_on_bfcl_train_with_reference_hindsight():
    from agentgym.train import PRESETS
    cfg = load_config([], base=PRESETS["demo"]).resolved()
    assert cfg.learner.name == "hint_sd" and cfg.env.id == "agentgym/BFCLMultiTurn-v0"
    assert cfg.env.kwargs == {"split": "train"} and cfg.model.name == "auto" and cfg.model.lora
    assert (cfg.feedback.source, cfg.feedback.selector) == ("reference_hindsight", "hindsight_multi")
    assert (cfg.learner.teacher, cfg.learner.teacher_rate, cfg.learner.kl_direction) == ("ema", 0.001, "reverse")
    from agentgym.envs.bfcl.data import split_ids
    train = set(split_ids(("base", "long_context"), "train"))
    assert set(cfg.env.task_ids) <= train  # the demo's tasks are train-split entries
