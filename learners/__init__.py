"""Learners: GRPO, dense per-turn self-distillation, HINT-SD, SERL and GiGPO on one shared base.

Each learner is one file whose body is its objective; what they share lives in ``base``. A learner
class declares its ``Settings`` (pydantic), its default feedback source and selector, whether it
holds a teacher and whether successful trajectories are fed to it. A learner is an objective on an
``Engine`` (``engine``: model, optimiser, accelerator, sharding, clipping, all-reduces, checkpoint
state); ``samples`` holds the training samples and micro-batching, ``settings`` the shared settings.
``agentgym.plugins.LEARNERS`` (re-exported here) maps names to classes, and ``make_learner(name, model, tokenizer, **settings)``
builds one. Your own learner: subclass ``Learner`` (or ``GRPO``) in your own file, decorate it with
``@register``, and it trains from Python and from the CLI (``--import your_module``).
"""

from agentgym.agents.teachers import TeacherContext, TeacherWeights
from agentgym.plugins import LEARNERS
from agentgym.learners.samples import Batch, Sample, action_log_probs, plan_micro_batches
from agentgym.learners.settings import DistillSettings, LearnerSettings, PPOSettings, TeacherSettings
from agentgym.learners.engine import Engine
from agentgym.learners.base import Forward, Learner, register
from agentgym.learners.losses import DIRECTIONS, divergence, group_advantages, ppo_token_loss, topk_tail
from agentgym.learners.grpo import GRPO, GRPOSettings
from agentgym.learners.dense_sd import DenseSD, DenseSDSettings
from agentgym.learners.hint_sd import HintSD, HintSDSettings
from agentgym.learners.serl import SERL, SERLSettings, serl_lambda, serl_weights
from agentgym.learners.gigpo import GiGPO, GiGPOSettings, gigpo_advantages


def make_learner(name: str, model=None, tokenizer=None, settings=None, **kwargs) -> Learner:
    """``LEARNERS[name](model, tokenizer, settings, **kwargs)``; unknown names get a suggestion."""
    return LEARNERS.get(name)(model, tokenizer, settings, **kwargs)


__all__ = ["LEARNERS", "make_learner", "register", "Batch", "Learner", "Engine", "Forward", "LearnerSettings", "PPOSettings",
           "TeacherSettings", "DistillSettings", "Sample", "TeacherContext", "TeacherWeights", "action_log_probs",
           "plan_micro_batches", "DIRECTIONS", "divergence", "group_advantages", "ppo_token_loss", "topk_tail",
           "GRPO", "GRPOSettings", "DenseSD", "DenseSDSettings", "HintSD", "HintSDSettings", "SERL", "SERLSettings",
           "serl_lambda", "serl_weights", "GiGPO", "GiGPOSettings", "gigpo_advantages"]
