"""model.attn_implementation: validated with the choices, applied to a loaded model, and
flash-attention 2 refused with the reasons where it cannot run; bf16 weights on CUDA (gpu marker)."""

from __future__ import annotations

import pytest
import torch
from agentgym.config import ConfigError, load_config


def _cfg(*overrides: str):
    return load_config(["--model.name", "tiny", *overrides])


def test_unknown_attention_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"sdpa, flash_attention_2, eager.*did you mean 'flash_attention_2'"):
        _cfg("--model.attn_implementation", "flash_attention2")


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_attention_reaches_the_model(impl):
    from agentgym.train import load_model
    model, _, _ = load_model(_cfg("--model.attn_implementation", impl), torch.device("cpu"))
    assert model.config._attn_implementation == impl


def test_random_init_model_gets_the_attention_too():
    from agentgym.agents.models import ModelSource
    from agentgym.train import load_model

    def build():
        from transformers import Qwen2Config, Qwen2ForCausalLM
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1))
    from agentgym.agents.models import build_tiny_model
    model, _, _ = load_model(_cfg("--model.attn_implementation", "eager"), torch.device("cpu"),
                             ModelSource(str(build_tiny_model()), "small-random", build))
    assert model.config._attn_implementation == "eager"


def test_flash_attention_on_cpu_names_every_reason():
    from agentgym.train import load_model
    with pytest.raises(ValueError, match=r"flash_attention_2.*needs a CUDA GPU.*bfloat16 or float16.*use 'sdpa'"):
        load_model(_cfg("--model.attn_implementation", "flash_attention_2"), torch.device("cpu"))


@pytest.mark.gpu
def test_bf16_weights_on_cuda():
    from agentgym.train import load_model
    model, _, _ = load_model(_cfg("--model.attn_implementation", "sdpa"), torch.device("cuda"))
    assert next(model.parameters()).dtype == torch.bfloat16 and next(model.parameters()).is_cuda
