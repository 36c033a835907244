"""agentgym: train LLM agents on long-horizon, multi-turn benchmarks behind one Gymnasium interface."""

from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.registration import register_envs
from agentgym.types import Feedback, FeedbackKind, Message, Step, Target, ToolCall, Trajectory

__version__ = "0.1.0"
__all__ = ["AgentEnv", "EnvReply", "EnvReset", "Feedback", "FeedbackKind", "Message", "Step",
           "Target", "ToolCall", "Trajectory", "register_envs", "__version__"]

register_envs()
