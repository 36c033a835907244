"""Learners: GRPO, dense per-turn self-distillation, HINT-SD and SERL on one shared base.

``LEARNERS`` maps names to classes; ``make_learner(name, model, tokenizer, settings)`` builds one.
Each learner is one file whose body is its objective; what they share lives in ``base``.
"""

from agentgym.learners.base import (LEARNERS, Batch, Learner, LearnerSettings, Sample, TeacherContext,
                                    TeacherWeights, action_log_probs, plan_micro_batches)
from agentgym.learners.losses import DIRECTIONS, divergence, group_advantages, ppo_token_loss, topk_tail
from agentgym.learners.grpo import GRPO
from agentgym.learners.dense_sd import DenseSD
from agentgym.learners.hint_sd import HintSD
from agentgym.learners.serl import SERL, serl_lambda, serl_weights

# What each learner defaults to when the run config leaves it open.
DEFAULTS = {
    "grpo": {"teacher": "fixed", "source": None, "selector": None},
    "dense_sd": {"teacher": "ema", "teacher_rate": 0.001, "source": "llm_step_hint", "selector": "dense"},
    "hint_sd": {"teacher": "ema", "teacher_rate": 0.001, "source": "llm_hindsight", "selector": "hindsight_multi"},
    "serl": {"teacher": "refresh", "teacher_every": 10, "source": "immediate", "selector": "dense"},
}


def make_learner(name: str, model, tokenizer, settings: LearnerSettings | None = None, **kwargs) -> Learner:
    try:
        cls = LEARNERS[name]
    except KeyError:
        raise KeyError(f"unknown learner {name!r}; known: {sorted(LEARNERS)}") from None
    return cls(model, tokenizer, settings, **kwargs)


__all__ = ["LEARNERS", "DEFAULTS", "make_learner", "Batch", "Learner", "LearnerSettings", "Sample",
           "TeacherContext", "TeacherWeights", "action_log_probs", "plan_micro_batches", "DIRECTIONS",
           "divergence", "group_advantages", "ppo_token_loss", "topk_tail", "GRPO", "DenseSD", "HintSD",
           "SERL", "serl_lambda", "serl_weights"]
