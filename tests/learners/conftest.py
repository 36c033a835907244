"""Shared fixtures: the tiny chat model (tests/conftest.py) with a LoRA adapter, and real Echo-env rollouts of
scripted actions (token-exact, through the normal rollout path)."""

import pytest


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizer):
    """The tiny model's tokenizer (tests/conftest.py), under the name the learner tests use."""
    return tiny_tokenizer


@pytest.fixture
def lora_model(tiny_model_path):
    import peft
    import torch
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    return peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))


def echo_group(tokenizer, answers_per_episode, word="apple", group="g"):
    """One Echo-env group: each episode answers with the given sequence of words."""
    from agentgym.agents.scripted import ScriptedPolicy, by_turn
    from agentgym.rollout import rollout
    out = []
    for answers in answers_per_episode:
        [t] = rollout(ScriptedPolicy(by_turn(answers, default=answers[-1]), tokenizer), "agentgym/Echo-v0",
                      [{"word": word}], progress=False)
        out.append(t.model_copy(update={"group_id": group}))
    return out


@pytest.fixture
def echo_batch(tokenizer):
    """Two successes ("apple") and two 3-step failures on the word "apple"."""
    return echo_group(tokenizer, [["apple"], ["apple"], ["pear", "plum", "kiwi"], ["plum", "pear", "fig"]])
