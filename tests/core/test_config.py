"""The run config: files, command-line overrides, clear errors, learner defaults, help text."""

import re

import pytest

from agentgym.config import ConfigError, RunConfig, config_hash, help_text, load_config


def test_overrides_parse_types_and_nest():
    cfg = load_config(["--learner.name", "grpo", "--learner.lr", "1e-5", "--env.group_size=8", "--learner.dual_clip", "null",
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
    (["--learner.lrr", "1"], "learner.lrr: unknown key in [learner] for learner 'hint_sd'; did you mean 'lr'?"),
    (["--learner.name", "grpo", "--learner.topk", "3"], "learner.topk: unknown key in [learner] for learner 'grpo'"),
    (["--trainer.updates", "1"], "trainer: unknown key"),
    (["--learner.lr", "-1"], "learner.lr: Input should be greater than 0 (got -1)"),
    (["--env.group_size", "0"], "env.group_size: Input should be greater than or equal to 1 (got 0)"),
    (["--learner.name", "ppo"], "learner.name: unknown learner 'ppo'; did you mean 'grpo'"),
    (["--learner.lr", "inf"], "learner.lr: Input should be a finite number"),
    (["--learner.lr", "nan"], "learner.lr: Input should be a finite number"),
    (["--rollout.temperature", "Infinity"], "rollout.temperature: Input should be a finite number"),
    (["--env.group_size", "1000000000"], "env.group_size: Input should be less than or equal to 1024"),
    (["--env.id", "agentgym/Ech-v0"], "unknown environment 'agentgym/Ech-v0'; did you mean 'agentgym/Echo-v0'"),
    (["--env.id", "nosuchmodule:X-v0"], "cannot import 'nosuchmodule'"),
    (["--feedback.source", "immediate+referenc"], "unknown feedback source 'referenc'; did you mean 'reference'"),
    (["--feedback.selector", "first_eror"], "unknown selector 'first_eror'; did you mean 'first_error'"),
    (["--feedback.hindsight_multi.kk", "2"], "feedback.hindsight_multi: unknown option 'kk'; did you mean 'k'?"),
    (["--feedback.nosuch.k", "2"], "feedback: unknown key 'nosuch'"),
    (["--model.name", "tinyy"], "did you mean 'tiny'"),
    (["--rollout.backend", "vlm"], "unknown rollout backend 'vlm'; did you mean 'vllm'"),
    (["--feedback.teacher", "opena"], "unknown teacher 'opena'; did you mean 'openai'"),
    (["--feedback.teacher.name", "opena"], "unknown teacher 'opena'; did you mean 'openai'"),
    (["--rollout.vlm.kwargs", "{}"], "rollout.vlm: unknown key in [rollout]; did you mean 'vllm'?"),
    (["--rollout.vllm.gpu_memory", "0.5"], "rollout.vllm.gpu_memory: unknown key in [rollout.vllm] for rollout "
                                           "backend 'vllm'; did you mean 'gpu_memory_utilization'?"),
    (["--rollout.vllm.gpu_memory_utilization", "2"], "rollout.vllm.gpu_memory_utilization: Input should be less "
                                                     "than or equal to 1 (got 2)"),
    (["--rollout.vllm", "0.5"], "rollout.vllm: the settings of rollout backend 'vllm' must be a table"),
    (["--rollout.vllm_server.servers", '["localhost:8000"]'], "rollout.vllm_server.servers: each server is an http(s) URL"),
    (["--feedback.teacher.openai.modl", "m"], "feedback.teacher.openai.modl: unknown key in [feedback.teacher.openai] "
                                              "for teacher 'openai'; did you mean 'model'?"),
    (["--feedback.teacher.opena.model", "m"], "feedback.teacher.opena: unknown key in [feedback.teacher]; did you mean "
                                              "'openai'?"),
    (["--feedback.teacher.openai.timeout_s", "0"], "feedback.teacher.openai.timeout_s: Input should be greater than 0"),
    (["--feedback.openai.model", "m"], "a teacher's settings go in [feedback.teacher.openai]"),
    (["--import", "no_such_plugin_module"], "plugins: --import 'no_such_plugin_module'"),
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


def test_backend_and_teacher_settings_come_from_their_own_sections(tmp_path):
    """``[rollout.<backend>]`` and ``[feedback.teacher.<name>]`` from a file and the command line, the
    chosen plugin's concrete values in the dump (config.json), which validates back to the same."""
    toml = tmp_path / "run.toml"
    toml.write_text('[rollout]\nbackend = "vllm_server"\n[rollout.vllm_server]\nservers = ["http://gen1:8000/v1"]\n'
                    '[feedback.teacher]\nname = "openai"\n[feedback.teacher.openai]\nmodel = "judge"\n')
    cfg = load_config(["--config", str(toml), "--rollout.vllm_server.timeout_s", "30",
                       "--feedback.teacher.openai.max_attempts", "2"])
    backend, teacher = cfg.rollout.settings, cfg.feedback.teacher.settings
    assert (backend.servers, backend.sync_dir, backend.timeout_s) == (["http://gen1:8000/v1"], None, 30.0)
    assert (cfg.feedback.teacher.name, teacher.model, teacher.max_attempts, teacher.timeout_s) == ("openai", "judge", 2, 60.0)
    dumped = cfg.model_dump(mode="json")
    assert dumped["rollout"]["vllm_server"] == {"servers": ["http://gen1:8000/v1"], "sync_dir": None, "timeout_s": 30.0}
    assert dumped["feedback"]["teacher"]["openai"]["max_attempts"] == 2
    assert RunConfig.model_validate(dumped).model_dump(mode="json") == dumped
    # the plain string is the name, before or after the teacher's own keys
    for argv in (["--feedback.teacher", "openai", "--feedback.teacher.openai.model", "m"],
                 ["--feedback.teacher.openai.model", "m", "--feedback.teacher", "openai"]):
        got = load_config(argv).feedback.teacher
        assert (got.name, got.settings.model) == ("openai", "m")
    default = load_config([])
    assert (default.rollout.backend, default.feedback.teacher.name) == ("transformers", "policy")
    assert default.model_dump()["rollout"].keys() == {"backend", "temperature", "top_p", "max_new_tokens",
                                                      "eval_temperature", "batch_size"}  # no empty tables


@pytest.mark.parametrize("old, value, new, attribute", [
    ("rollout.vllm_gpu_memory_utilization", "0.5", "[rollout.vllm] gpu_memory_utilization", ("rollout", "vllm", 0.5)),
    ("rollout.vllm_kwargs", '{"max_model_len": 64}', "[rollout.vllm] kwargs", ("rollout", "vllm", {"max_model_len": 64})),
    ("rollout.servers", '["http://a:1/v1"]', "[rollout.vllm_server] servers", ("rollout", "vllm_server", ["http://a:1/v1"])),
    ("rollout.sync_dir", "/shared", "[rollout.vllm_server] sync_dir", ("rollout", "vllm_server", "/shared")),
    ("rollout.server_timeout_s", "5", "[rollout.vllm_server] timeout_s", ("rollout", "vllm_server", 5.0)),
    ("feedback.api_model", "judge", "[feedback.teacher.openai] model", ("teacher", "openai", "judge")),
    ("feedback.api_base_url", "http://h/v1", "[feedback.teacher.openai] base_url", ("teacher", "openai", "http://h/v1")),
    ("feedback.api_key_env", "K", "[feedback.teacher.openai] api_key_env", ("teacher", "openai", "K")),
    ("feedback.api_timeout_s", "7.5", "[feedback.teacher.openai] timeout_s", ("teacher", "openai", 7.5)),
    ("feedback.api_max_concurrency", "3", "[feedback.teacher.openai] max_concurrency", ("teacher", "openai", 3)),
    ("feedback.api_max_attempts", "2", "[feedback.teacher.openai] max_attempts", ("teacher", "openai", 2)),
])
def test_a_moved_key_is_read_at_its_new_place_with_a_warning_naming_it(old, value, new, attribute):
    section, plugin, expected = attribute
    chosen = (["--rollout.backend", plugin] if section == "rollout" else ["--feedback.teacher", plugin])
    with pytest.warns(FutureWarning, match=rf"{old} moved to {re.escape(new)}"):
        cfg = load_config([f"--{old}", value, *chosen])
    settings = cfg.rollout.settings if section == "rollout" else cfg.feedback.teacher.settings
    assert getattr(settings, new.split()[-1]) == expected


def test_an_old_run_folders_config_with_the_old_defaults_loads_silently():
    """Every config.json written before the move holds the old keys at their defaults."""
    import warnings
    old = {"rollout": {"backend": "transformers", "vllm_gpu_memory_utilization": 0.4, "vllm_kwargs": {}, "servers": [],
                       "sync_dir": None, "server_timeout_s": 600.0},
           "feedback": {"teacher": "policy", "api_base_url": None, "api_model": None, "api_key_env": "OPENAI_API_KEY",
                        "api_timeout_s": 60.0, "api_max_concurrency": 8, "api_max_attempts": 6}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = RunConfig.model_validate(old)
    assert cfg.model_dump() == RunConfig().model_dump()


def test_bad_toml_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[learner\nlr = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(["--config", str(bad)])


@pytest.mark.parametrize("name, teacher, source, selector", [
    ("hint_sd", "ema", "llm_hindsight", "hindsight_multi"),
    ("dense_sd", "ema", "llm_step_hint", "dense"),
    ("serl", "refresh", "immediate", "dense"),
    ("grpo", None, "none", "none"),
    ("gigpo", None, "none", "none"),
])
def test_learner_defaults_resolve(name, teacher, source, selector):
    """Each learner class declares its defaults; the config resolves them (and SERL built from
    Python gets the same hard-refresh teacher as from the CLI)."""
    from agentgym.plugins import LEARNERS
    cfg = load_config(["--learner.name", name]).resolved()
    assert (getattr(cfg.learner, "teacher", None), cfg.feedback.source, cfg.feedback.selector) == (teacher, source, selector)
    assert getattr(LEARNERS.get(name)().settings, "teacher", None) == teacher
    if name == "hint_sd":
        assert cfg.learner.teacher_rate == 0.001
    if name == "serl":
        assert cfg.learner.teacher_every == 10 and cfg.learner.serl_lambda0 == 0.5 and cfg.learner.serl_lambda_updates == 50
    assert cfg.learner.grad_clip == 1.0 and cfg.learner.kl_coef == 0.0
    if name in ("grpo", "serl", "gigpo"):
        assert cfg.learner.clip_eps == 0.2


def test_every_field_has_help_text():
    from agentgym.plugins import LEARNERS
    for section, field in RunConfig.model_fields.items():
        assert field.description, section
        for name, f in getattr(field.annotation, "model_fields", {}).items():
            assert f.description, f"{section}.{name}"
    for name in LEARNERS.names():
        for key, f in LEARNERS.get(name).Settings.model_fields.items():
            assert f.description, f"{name}.{key}"
    from agentgym.plugins import ROLLOUT_BACKENDS, TEACHERS, settings_class
    for registry in (ROLLOUT_BACKENDS, TEACHERS):
        for name in registry.names():
            for key, f in settings_class(registry.get(name)).model_fields.items():
                assert f.description, f"{name}.{key}"
    text = help_text()
    assert "--learner.lr" in text and "--learner.serl_lambda0" in text and "--learner.omega" in text
    assert "--rollout.vllm.gpu_memory_utilization = 0.4" in text and "--rollout.vllm_server.servers = []" in text
    assert "--feedback.teacher.name = 'policy'" in text and "--feedback.teacher.openai.max_attempts = 6" in text


def test_unknown_names_fail_fast_without_loading_a_model():
    """Unknown learner, env, source, selector and model names fail in a fresh process in well
    under 2 s, with a suggestion, and no torch import."""
    import subprocess, sys
    for args, hint in [(["--learner.name", "hint_sdd"], "did you mean 'hint_sd'"),
                       (["--env.id", "agentgym/WebShopp-v0"], "did you mean 'agentgym/WebShop-v0'"),
                       (["--feedback.source", "llm_hindsigt"], "did you mean 'llm_hindsight'"),
                       (["--feedback.selector", "hindsight_mult"], "did you mean 'hindsight_multi'"),
                       (["--model.name", "smolm2"], "did you mean 'smollm2'")]:
        # CPU seconds of the import and the check (wall time on a loaded 2-core machine is noise)
        code = ("import sys, time; t = time.process_time(); from agentgym.train import main; rc = main(sys.argv[1:]); "
                "print(rc, round(time.process_time() - t, 2), 'torch' in sys.modules)")
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
        rc, seconds, torch_loaded = proc.stdout.split()
        assert rc == "2" and hint in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert float(seconds) < 2.0 and torch_loaded == "False", (args, seconds, torch_loaded)


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
    # --help shows what the bare command would run: the demo preset's values
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--env.id = 'agentgym/BFCLMultiTurn-v0'" in out and "--env.task_ids = ['multi_turn_base_105'" in out
    assert main(["--env.id", "agentgym/Echo-v0", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--env.task_ids = None" in out and "--env.max_steps = 4" in out and "--rollout.max_new_tokens = 48" in out


def test_the_main_job_default_is_hint_sd_on_bfcl_train_with_reference_hindsight():
    from agentgym.train import PRESETS
    cfg = load_config([], base=PRESETS["demo"].base_for(None, None)).resolved()
    assert cfg.learner.name == "hint_sd" and cfg.env.id == "agentgym/BFCLMultiTurn-v0"
    assert cfg.env.kwargs == {"split": "train"} and cfg.model.name == "auto" and cfg.model.lora
    assert (cfg.feedback.source, cfg.feedback.selector) == ("reference_hindsight", "hindsight_multi")
    # The CPU demo distils from the current student with the hint as a bare user turn (README, "Does the
    # teacher know better?"); the learner's own defaults stay the paper's.
    assert (cfg.learner.teacher, cfg.learner.kl_direction) == ("current", "reverse")
    assert cfg.feedback.prompts == {"teacher_hint": "{hint}"}
    assert load_config(["--learner.name", "grpo"], base=PRESETS["demo"].base_for(None, "grpo")).resolved().learner.name == "grpo"
    from agentgym.learners import HintSD
    assert (HintSD().settings.teacher, HintSD().settings.teacher_rate) == ("ema", 0.001)
    from agentgym.envs.bfcl.data import split_ids
    train = set(split_ids(("base", "long_context"), "train"))
    assert set(cfg.env.task_ids) <= train  # the demo's tasks are train-split entries


@pytest.mark.parametrize("argv, env_kwargs, task_ids, source", [
    ([], {"split": "train"}, ["multi_turn_base_105", "multi_turn_base_146"], "reference_hindsight"),
    (["--env.id", "agentgym/Echo-v0"], {"reference": True}, None, "reference_hindsight"),  # Echo's references
    (["--learner.name", "serl"], {"split": "train"}, ["multi_turn_base_105", "multi_turn_base_146"], "immediate"),
    (["--env.id", "agentgym/ALFWorld-v0", "--learner.name", "serl"], {}, None, "immediate"),
])
def test_the_demo_preset_keeps_its_env_and_learner_specific_settings_to_its_env_and_learner(
        argv, env_kwargs, task_ids, source):
    from agentgym.train import cli_config
    cfg = cli_config(argv)[0].resolved()
    assert (cfg.env.kwargs, cfg.env.task_ids, cfg.feedback.source) == (env_kwargs, task_ids, source)
    if "agentgym/ALFWorld-v0" in argv:  # the env's own 50 steps: the demo's 4-step cap would make its tasks impossible
        assert cfg.env.max_steps == 50 and cfg.feedback.selector == "dense"


def test_paper_presets_reproduce_the_papers_settings_field_by_field():
    """HINT-SD: LoRA r32 / alpha 64 / dropout 0.05 on q,v, lr 5e-6 with linear decay, 2 tasks x 4
    rollouts, 1024 new tokens, 20 BFCL / 40 AppWorld steps, temperature 0.6. SERL: full fine-tuning,
    lr 1e-6, weight decay 0.01, group 8, 16 tasks per batch, 512 new tokens, temperature 1.0, 50 / 15
    env steps for ALFWorld / WebShop. (The models are hub ids: loading them needs the HF cache, so the
    check swaps in the tiny model.)"""
    from agentgym.train import PRESETS, cli_config
    assert PRESETS["hint_sd_paper"].config["model"]["name"] == "Qwen/Qwen3-4B-Instruct-2507"
    assert PRESETS["serl_paper"].config["model"]["name"] == "Qwen/Qwen2.5-7B-Instruct"
    for env_id, steps in [("agentgym/BFCLMultiTurn-v0", 20), ("agentgym/AppWorld-v0", 40)]:
        cfg = cli_config(["--preset", "hint_sd_paper", "--model.name", "tiny", "--env.id", env_id])[0].resolved()
        m, e, r, l, t = cfg.model, cfg.env, cfg.rollout, cfg.learner, cfg.train
        assert (m.lora, m.lora_r, m.lora_alpha, m.lora_dropout, m.target_modules) == (True, 32, 64, 0.05, ["q_proj", "v_proj"])
        assert (l.name, l.lr, t.lr_schedule, l.teacher, l.teacher_rate) == ("hint_sd", 5e-6, "linear", "ema", 0.001)
        assert (e.tasks_per_update, e.group_size, r.max_new_tokens, r.temperature, e.max_steps) == (2, 4, 1024, 0.6, steps)
        assert (cfg.feedback.source, cfg.feedback.selector) == ("llm_hindsight", "hindsight_multi")
    for env_id, steps in [("agentgym/ALFWorld-v0", 50), ("agentgym/WebShop-v0", 15)]:
        cfg = cli_config(["--preset", "serl_paper", "--model.name", "tiny", "--env.id", env_id])[0].resolved()
        m, e, r, l = cfg.model, cfg.env, cfg.rollout, cfg.learner
        assert (m.lora, l.name, l.lr, l.weight_decay, l.teacher, l.teacher_every) == (False, "serl", 1e-6, 0.01, "refresh", 10)
        assert (e.group_size, e.tasks_per_update, r.max_new_tokens, r.temperature, e.max_steps) == (8, 16, 512, 1.0, steps)
        assert (l.serl_lambda0, l.serl_lambda_updates, l.serl_clip) == (0.5, 50, 0.2)


def test_learning_rate_schedules_with_warmup():
    import math
    from agentgym.train import lr_factor
    assert [lr_factor(k, 5) for k in range(5)] == [1.0] * 5
    assert [round(lr_factor(k, 5, 0, "linear"), 12) for k in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    assert [round(lr_factor(k, 6, 2, "linear"), 6) for k in range(6)] == [round(x, 6) for x in (1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25)]
    cos = [lr_factor(k, 4, 0, "cosine") for k in range(4)]
    assert cos == [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)] and cos[0] == 1.0
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        load_config(["--train.lr_schedule", "exponential"])


def test_the_trainer_applies_the_schedule_to_the_optimizer(tmp_path):
    """The lr of each update's record is the schedule's (and what the optimiser stepped with)."""
    import json
    from agentgym.train import Trainer
    cfg = load_config(["--env.id", "agentgym/Echo-v0", "--model.name", "tiny", "--learner.name", "grpo",
                       "--learner.lr", "0.01", "--train.updates", "3", "--train.lr_schedule", "linear",
                       "--train.warmup_updates", "1", "--env.eval_tasks", "0", "--env.group_size", "2",
                       "--rollout.max_new_tokens", "3", "--train.progress", "false",
                       "--train.max_no_gradient_fraction", "1",  # the schedule is tested, not learning
                       "--train.run_dir", str(tmp_path)])
    trainer = Trainer(cfg)
    trainer.run()
    lrs = [json.loads(l)["lr"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert [round(x, 8) for x in lrs] == [0.005, 0.01, 0.005]
    assert trainer.learner.optimizer.param_groups[0]["lr"] == lrs[-1]
