"""vLLM: lazy import and a clear error by default; the real engine under the ``vllm`` marker."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.agents.fixtures import tiny_model_path  # noqa: F401

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_importing_agents_does_not_import_vllm():
    code = ("import sys, agentgym.agents, agentgym.agents.vllm_policy, agentgym.rollout; "
            "print('vllm' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.skipif(HAS_VLLM, reason="checks the message shown when vllm is absent")
def test_vllm_policy_without_vllm_fails_clearly():
    from agentgym.agents import VLLMPolicy
    with pytest.raises(ImportError, match=r"VLLMPolicy needs vLLM, which is not installed: .*agentgym\[vllm\]"):
        VLLMPolicy("any-model")


@pytest.mark.vllm
def test_vllm_generates_token_exact_and_verifies_weight_sync(tiny_model_path):
    from agentgym.agents import SamplingParams, TransformersPolicy, VLLMPolicy, WeightSyncError
    import torch

    trainer = TransformersPolicy(tiny_model_path)
    engine = VLLMPolicy(str(tiny_model_path), dtype="float32", max_model_len=4096)
    [out] = engine.generate([[{"role": "user", "content": "hi"}]], sampling=SamplingParams(max_new_tokens=8, seed=0))
    assert trainer.score(out.prompt_ids, out.token_ids).logprobs == pytest.approx(out.logprobs, abs=0.05)
    assert engine.verify(trainer) <= 0.05
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    with pytest.raises(WeightSyncError, match="differ by"):
        engine.verify(trainer)  # stale engine weights are detected
    assert engine.push_weights(trainer) <= 0.05
