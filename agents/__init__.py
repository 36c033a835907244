"""Policies and teachers: transformers, vLLM and OpenAI-compatible backends behind one interface.

Imports are lazy so that ``import agentgym.agents`` pulls in neither torch nor vllm nor openai.
"""

from __future__ import annotations

import importlib
from typing import Any

from agentgym.agents.base import Generation, Policy, PolicyError, SamplingParams, ScoreResult

_LAZY = {
    "ChatRenderer": "agentgym.agents.chat",
    "TemplateError": "agentgym.agents.chat",
    "TransformersPolicy": "agentgym.agents.transformers_policy",
    "OpenAIPolicy": "agentgym.agents.openai_policy",
    "APIRetryError": "agentgym.agents.openai_policy",
    "VLLMPolicy": "agentgym.agents.vllm_policy",
    "WeightSyncError": "agentgym.agents.vllm_policy",
    "ScriptedPolicy": "agentgym.agents.scripted",
    "Teacher": "agentgym.agents.teachers",
    "TeacherWeights": "agentgym.agents.teachers",
    "build_tiny_model": "agentgym.agents.models",
    "build_smollm2": "agentgym.agents.models",
}

__all__ = ["Generation", "Policy", "PolicyError", "SamplingParams", "ScoreResult", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'agentgym.agents' has no attribute {name!r}")
