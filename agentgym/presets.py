"""The paper presets and the CPU demo behind a bare ``agentgym train``, and how a command line
(``--preset``, ``--config FILE``, ``--section.key VALUE``) becomes a run config on top of one.

>>> cfg, preset, has_run_dir = cli_config(["--preset", "serl_paper", "--env.id", "agentgym/Echo-v0",
...                                         "--model.name", "tiny", "--train.run_dir", "runs/x"])
>>> preset, cfg.learner.name, cfg.learner.lr, cfg.env.id, cfg.env.group_size, has_run_dir
('serl_paper', 'serl', 1e-06, 'agentgym/Echo-v0', 8, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentgym.config import ConfigError, RunConfig, _merge, _read_file, parse_overrides, validate_config
from agentgym.plugins import suggest

__all__ = ["Preset", "PRESETS", "DEMO_TASKS", "DEMO_EVAL_TASKS", "cli_config"]


# ------------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Preset:
    """A base config. ``env_bound`` settings are specific to the preset's env and apply only while
    ``env.id`` is the preset's; ``learner_bound`` ones only while ``learner.name`` is the preset's."""

    description: str
    config: dict[str, Any]
    env_bound: dict[str, Any] = field(default_factory=dict)
    learner_bound: dict[str, Any] = field(default_factory=dict)
    # Settings for other envs, each only while env.id is that env's (what makes its tasks possible).
    per_env: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Settings for learners, each only while learner.name is that learner's (its own settings' fields).
    per_learner: dict[str, dict[str, Any]] = field(default_factory=dict)

    def base_for(self, env_id: str | None, learner: str | None) -> dict[str, Any]:
        base = dict(self.config)
        if env_id in self.per_env:
            base = _merge(base, self.per_env[env_id])
        chosen = learner or base.get("learner", {}).get("name")
        if chosen in self.per_learner:
            base = _merge(base, self.per_learner[chosen])
        if env_id in (None, base.get("env", {}).get("id")):
            base = _merge(base, self.env_bound)
        if learner in (None, base.get("learner", {}).get("name")):
            base = _merge(base, self.learner_bound)
        return base


# Task ids of the BFCL train / eval splits with the shortest prompts (~2.3-2.9k SmolLM2 tokens: 17-20
# tool schemas), so that the CPU demo finishes in minutes; they are ordinary entries of their splits.
# Three held-out tasks give the before/after difference of the reference log-prob an interval.
DEMO_TASKS = ["multi_turn_base_105", "multi_turn_base_146"]
DEMO_EVAL_TASKS = ["multi_turn_base_121", "multi_turn_long_context_117", "multi_turn_long_context_10"]

PRESETS: dict[str, Preset] = {
    "demo": Preset(
        "the CPU demo behind a bare `agentgym train`: HINT-SD on BFCL v3 multi-turn, SmolLM2-135M, LoRA r=8",
        config={
            # Checkpointing halves the peak memory (11.8 -> 5.5 GB) for ~1.2x the time per update.
            "model": {"name": "auto", "lora_r": 8, "lora_alpha": 16, "gradient_checkpointing": True},
            # CPU-sized episodes on any env: at most 4 steps of at most 48 tokens (the env's own limits
            # and action lengths are what the paper presets and your configs get). Four held-out tasks
            # give every env's evaluations an interval over tasks (BFCL multi-turn: its DEMO_EVAL_TASKS).
            "env": {"id": "agentgym/BFCLMultiTurn-v0", "tasks_per_update": 1, "group_size": 2, "eval_tasks": 4,
                    "max_steps": 4},
            "rollout": {"temperature": 1.0, "eval_temperature": 0.0, "max_new_tokens": 48},
            # The hint as the teacher's user turn, bare: measured on SmolLM2-135M (README, "Does the teacher
            # know better?"), HINT-SD's "Consider the following feedback to solve this step:" turn makes this
            # small teacher answer the message: on Echo "Correct reply:\nX" gains +0.56 under it and +1.10
            # bare (19 other corrections: -3.4 .. +0.07 under it). The paper presets keep the paper's turn.
            "feedback": {"prompts": {"teacher_hint": "{hint}"}},
            "learner": {"name": "hint_sd", "lr": 2e-4, "token_budget": 8192},
            "train": {"updates": 2, "checkpoint_every": 1},
        },
        env_bound={"env": {"kwargs": {"split": "train"}, "task_ids": DEMO_TASKS, "eval_task_ids": DEMO_EVAL_TASKS,
                           "max_steps": 1},
                   "rollout": {"max_new_tokens": 32}},
        # A 135M model rarely writes usable hindsight JSON: the env's reference writes the hindsight.
        learner_bound={"feedback": {"source": "reference_hindsight", "selector": "hindsight_multi"}},
        # ALFWorld's expert plans are 8-31 steps on the generated games (up to 50 in the official
        # split): the env's own 50-step limit. Echo gives references, so the demo's reference-based
        # hindsight has something to distil.
        # The distillation teacher is the CURRENT student with the hint (measured on Echo, 3 seeds: an
        # EMA(0.001) teacher's gain fell from +1.0..+1.9 at the first update to ~0 by the fifth, as the
        # student caught up with it, and held-out success eroded with it).
        per_learner={"hint_sd": {"learner": {"teacher": "current"}}, "dense_sd": {"learner": {"teacher": "current"}}},
        per_env={"agentgym/ALFWorld-v0": {"env": {"max_steps": None}},
                 "agentgym/Echo-v0": {"env": {"kwargs": {"reference": True}}}},
    ),
    # The method papers' reported settings (GPU scale). The env's own limits give the papers' episode
    # lengths: BFCL 20 / AppWorld 40 steps (HINT-SD), ALFWorld 50 / WebShop 15 (SERL).
    "hint_sd_paper": Preset(
        "HINT-SD's paper: Qwen3-4B-Instruct, LoRA r32 / alpha 64 / dropout 0.05 on q,v, lr 5e-6 with linear "
        "decay, 2 tasks x 4 rollouts per update, 1024 new tokens, temperature 0.6, LLM hindsight (multi)",
        config={
            "model": {"name": "Qwen/Qwen3-4B-Instruct-2507", "lora": True, "lora_r": 32, "lora_alpha": 64,
                      "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            "env": {"id": "agentgym/BFCLMultiTurn-v0", "tasks_per_update": 2, "group_size": 4},
            "rollout": {"temperature": 0.6, "max_new_tokens": 1024},
            "feedback": {"source": "llm_hindsight", "selector": "hindsight_multi"},
            "learner": {"name": "hint_sd", "lr": 5e-6},
            "train": {"lr_schedule": "linear"},
        }),
    "serl_paper": Preset(
        "SERL's paper: Qwen2.5-7B-Instruct, full fine-tuning, lr 1e-6, weight decay 0.01, 16 tasks x 8 "
        "rollouts per update, 512 new tokens, temperature 1.0",
        config={
            "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "lora": False},
            "env": {"id": "agentgym/ALFWorld-v0", "tasks_per_update": 16, "group_size": 8},
            "rollout": {"temperature": 1.0, "max_new_tokens": 512},
            "learner": {"name": "serl", "lr": 1e-6, "weight_decay": 0.01},
        }),
}


# ------------------------------------------------------------------------------------------ command line -> config
def _split_preset(argv: list[str]) -> tuple[str, list[str]]:
    preset, rest, i = "demo", [], 0
    while i < len(argv):
        if argv[i] == "--preset" and i + 1 < len(argv):
            preset, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--preset="):
            preset, i = argv[i].split("=", 1)[1], i + 1
            continue
        rest.append(argv[i])
        i += 1
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}{suggest(preset, PRESETS)}; choose from {sorted(PRESETS)}")
    return preset, rest


def cli_config(argv: list[str]) -> tuple[RunConfig, str, bool]:
    """(config, preset name, whether --train.run_dir was given) for ``agentgym train ARGV``: the
    preset's base with the settings bound to another env or learner dropped, then the file and
    the overrides."""
    preset, rest = _split_preset(argv)
    config_file, overrides = parse_overrides(rest)
    given = _read_file(config_file) if config_file is not None else {}
    given = _merge(given, overrides)
    base = PRESETS[preset].base_for((given.get("env") or {}).get("id"), (given.get("learner") or {}).get("name"))
    cfg = validate_config(_merge(base, given))
    return cfg, preset, "run_dir" in (given.get("train") or {})
