"""TRL 1.16 ``GRPOTrainer`` trains 2 steps on agentgym envs through ``grpo_kwargs`` (tiny model, CPU):
full multi-turn episodes from agentgym's rollout become TRL samples with an exact policy mask, the
env's reward is TRL's reward, and the typed feedback and the dataset row's task id reach TRL's
reward functions. Runs in the optional ``.ci/trl`` job (its own ``.venv-trl``)."""

from __future__ import annotations

import math
import os

import pytest

if os.environ.get("AGENTGYM_REQUIRE_TRL") != "1":
    pytest.importorskip("trl", reason="optional job .ci/trl (scripts/setup_trl.sh builds .venv-trl)")

import trl  # noqa: E402

from agentgym.integrations.trl import grpo_kwargs  # noqa: E402
from agentgym.types import Feedback  # noqa: E402


def run_grpo(env_id, tiny_model_path, tmp_path, batch=4, **adapter_kwargs):
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    assert trl.__version__ == "1.16.0"
    kwargs = grpo_kwargs(env_id, **adapter_kwargs)
    captured, seen = [], []
    rollout = kwargs["rollout_func"]

    def recording_rollout(prompts, trainer):
        out = rollout(prompts, trainer)
        captured.append((prompts, out))
        return out

    def feedback_seen(prompts, completions, feedback, task_id, **_):
        seen.append((prompts, feedback, task_id))
        return [0.0] * len(prompts)

    args = GRPOConfig(output_dir=str(tmp_path / "trl"), max_steps=2, per_device_train_batch_size=batch, num_generations=2,
                      learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True, bf16=False, save_strategy="no",
                      max_completion_length=256, beta=0.0, temperature=1.0, seed=0, dataloader_num_workers=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    trainer = GRPOTrainer(str(tiny_model_path), args=args, processing_class=tokenizer,
                          train_dataset=kwargs["train_dataset"], rollout_func=recording_rollout,
                          reward_funcs=[*kwargs["reward_funcs"], feedback_seen])
    trainer.train()
    return trainer, kwargs["train_dataset"], captured, seen


def check_samples(captured, batch=4):
    for _, out in captured:
        assert len(out["prompt_ids"]) == batch
        for c, lp, mask in zip(out["completion_ids"], out["logprobs"], out["env_mask"], strict=True):
            assert len(c) == len(lp) == len(mask) and sum(mask) > 0
            assert all(v == 0.0 for v, m in zip(lp, mask) if m == 0)  # env tokens carry no sampled log-prob
            assert all(v <= 0.0 and math.isfinite(v) for v in lp)


def test_grpo_trainer_two_steps_on_echo_multi_turn(tiny_model_path, tmp_path):
    trainer, dataset, captured, seen = run_grpo("agentgym/Echo-v0", tiny_model_path, tmp_path, max_new_tokens=6)
    assert trainer.state.global_step == 2 and len(captured) == 2
    assert set(dataset.column_names) == {"prompt", "task_id", "task_index"}
    assert all(row["task_id"] not in str(row["prompt"]) or row["task_id"].startswith("echo-") for row in dataset)
    check_samples(captured)
    # wrong answers go on for up to 3 steps: completions hold env replies (mask 0) between actions
    assert any(0 in mask[:max(i for i, m in enumerate(mask) if m)] for _, out in captured for mask in out["env_mask"])
    # TRL's logged reward is the env's reward
    logged = [h["rewards/env_reward/mean"] for h in trainer.state.log_history if "rewards/env_reward/mean" in h]
    assert logged == pytest.approx([sum(out["env_reward"]) / 4 for _, out in captured])
    # typed feedback records and the row's task id reach the reward functions
    by_prompt = {str(row["prompt"]): row["task_id"] for row in dataset}
    for prompts, feedback, task_ids in seen:
        assert [by_prompt[str(p)] for p in prompts] == list(task_ids)
        assert all(fb and all(Feedback.model_validate(f) for f in fb) for fb in feedback)


def test_grpo_trainer_two_steps_on_bfcl_multi_turn(tiny_model_path, tmp_path):
    # one task, one prompt x 2 generations per step: BFCL's first context is ~6.5k tokens on a CPU
    tasks = [{"task_id": "multi_turn_base_0"}]
    trainer, dataset, captured, seen = run_grpo("agentgym/BFCLMultiTurn-v0", tiny_model_path, tmp_path, batch=2,
                                                split="all", tasks=tasks, max_steps=2, max_new_tokens=12)
    assert trainer.state.global_step == 2 and dataset["task_id"] == ["multi_turn_base_0"]
    check_samples(captured, batch=2)
    for _, out in captured:  # 2 steps each: the 2nd conditioned on the 1st action and the env's reply
        assert out["steps"] == [2, 2] and out["env_error"] == [None, None]
        assert all(0 in mask and mask[0] == 1 and mask[-1] == 1 for mask in out["env_mask"])
    for _, feedback, task_ids in seen:
        assert list(task_ids) == ["multi_turn_base_0"] * 2 and len(feedback) == 2
