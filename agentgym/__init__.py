"""agentgym: train LLM agents on long-horizon, multi-turn benchmarks behind one Gymnasium interface."""

import importlib

from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.registration import register_envs
from agentgym.types import Feedback, FeedbackKind, Message, Step, Target, ToolCall, Trajectory

__version__ = "0.1.0"
# The training API loads on first use: `import agentgym` stays light (gymnasium's start-up hook).
_LAZY = {"Trainer": "agentgym.trainer", "RunConfig": "agentgym.config", "TrainingError": "agentgym.failures"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentgym' has no attribute {name!r}")


__all__ = ["Trainer", "RunConfig", "TrainingError", "AgentEnv", "EnvReply", "EnvReset", "Feedback", "FeedbackKind", "Message", "Step",
           "Target", "ToolCall", "Trajectory", "register_envs", "__version__"]

register_envs()
