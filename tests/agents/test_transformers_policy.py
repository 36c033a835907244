"""TransformersPolicy, ChatRenderer, teachers and the offline models (tiny; SmolLM2 is slow)."""

from __future__ import annotations

import json

import pytest

from agentgym.agents.base import SamplingParams

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def policy(tiny_model_path):
    from agentgym.agents import TransformersPolicy
    return TransformersPolicy(tiny_model_path, batch_size=3)


def test_tiny_model_build_is_idempotent_and_deterministic(tmp_path, tiny_model_path):
    from agentgym.agents.models import build_tiny_model
    again = build_tiny_model(tmp_path / "copy")
    for name in ("tokenizer.json", "config.json", "model.safetensors", "chat_template.jinja"):
        assert (again / name).read_bytes() == (tiny_model_path / name).read_bytes(), name
    stamp = (again / "BUILD.json").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "copy") == again and (again / "BUILD.json").stat().st_mtime_ns == stamp
    config = json.loads((again / "config.json").read_text())
    assert config["head_dim"] == 64 and config["model_type"] == "qwen2"


def test_template_renders_tools_and_tool_turns(tiny_tokenizer):
    tools = [{"type": "function", "function": {"name": "ls", "parameters": {"type": "object"}}}]
    text = tiny_tokenizer.apply_chat_template(
        HI + [{"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "ls", "arguments": {"a": 1}}}]},
              {"role": "tool", "content": "f.txt"}], tools=tools, tokenize=False, add_generation_prompt=True)
    assert '<tools>\n{"type": "function", "function": {"name": "ls"' in text
    assert '<tool_call>\n{"name": "ls", "arguments": {"a": 1}}\n</tool_call><|im_end|>' in text
    assert text.endswith("<tool_response>\nf.txt\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_batched_left_padded_generation_matches_scoring(policy):
    convs = [HI, [{"role": "user", "content": "a much longer question about folders and files " * 3}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ok"}], HI]
    outs = policy.generate(convs, sampling=SamplingParams(max_new_tokens=10, seed=1))
    assert len(outs) == 4
    for out in outs:
        assert len(out.token_ids) == len(out.logprobs) <= 10
        assert policy.score(out.prompt_ids, out.token_ids).logprobs == pytest.approx(out.logprobs, abs=1e-4)
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    assert policy.generate([HI], sampling=greedy)[0].token_ids == policy.generate(convs[:2] + [HI], sampling=greedy)[2].token_ids


def test_score_top_k_and_tail_form_a_distribution(policy):
    import math
    ctx = policy.renderer.prompt_ids(HI)
    res = policy.score(ctx, [5, 6, 7], top_k=20)
    for ids, lps, tail, lp, tok in zip(res.topk_ids, res.topk_logprobs, res.tail_logprobs, res.logprobs, [5, 6, 7]):
        assert len(ids) == 20 and lps == sorted(lps, reverse=True)
        assert sum(math.exp(x) for x in lps) + math.exp(tail) == pytest.approx(1.0, abs=1e-4)
        if tok in ids:
            assert lps[ids.index(tok)] == pytest.approx(lp, abs=1e-5)


def test_lora_adapter_and_teacher_weights(tiny_model_path):
    import torch
    from peft import LoraConfig

    from agentgym.agents import TransformersPolicy
    from agentgym.agents.teachers import Teacher, TeacherWeights

    student = TransformersPolicy(tiny_model_path, adapter=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
                                 trainable=True)
    ctx, act = student.renderer.prompt_ids(HI), [10, 11, 12]
    frozen = Teacher(student, TeacherWeights(student.model, "fixed"))
    ema = TeacherWeights(student.model, "ema", rate=0.5)
    assert len(ema.params) == 8  # only the LoRA matrices are copied (2 layers x q,v x A,B)
    before = student.score(ctx, act).logprobs
    with torch.no_grad():
        for n, p in student.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)
    after = student.score(ctx, act).logprobs
    assert after != pytest.approx(before, abs=1e-3)
    assert frozen.score(ctx, act).logprobs == pytest.approx(before, abs=1e-5)  # frozen copy unchanged
    assert student.score(ctx, act).logprobs == pytest.approx(after, abs=1e-6)  # swap is undone
    ema.after_update(student.model, 1)
    halfway = Teacher(student, ema).score(ctx, act).logprobs
    assert halfway != pytest.approx(before, abs=1e-4) and halfway != pytest.approx(after, abs=1e-4)
    with student.adapter(None):
        assert student.score(ctx, act).logprobs == pytest.approx(before, abs=1e-5)  # base = zero-init LoRA


def test_teacher_context_inserts_a_hint_turn(policy):
    from agentgym.agents.teachers import Teacher
    ctx = policy.renderer.prompt_ids(HI)
    hinted = Teacher(policy).teacher_context(ctx, "use ls first")
    assert policy.tokenizer.decode(hinted) == policy.renderer.prompt_text(HI + [{"role": "user", "content": "use ls first"}])
    assert hinted[:len(ctx) - 3] == ctx[:len(ctx) - 3]


def test_renderer_adds_tools_for_templates_that_ignore_them(tiny_tokenizer):
    from transformers import AutoTokenizer

    from agentgym.agents.chat import ChatRenderer
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    r = ChatRenderer(tok)
    assert not r.renders_tools
    text = tok.decode(r.prompt_ids(HI, [{"type": "function", "function": {"name": "cd"}}]))
    assert text.startswith("<|im_start|>system\nYou can call these functions") and '"name": "cd"' in text


@pytest.mark.slow
def test_smollm2_converts_and_runs_bfcl():
    from agentgym.agents import SamplingParams, TransformersPolicy
    from agentgym.agents.models import build_smollm2
    from agentgym.rollout import episode_tokens, rollout

    path = build_smollm2()
    # A plain float32 checkpoint: no leftover GGUF quantization entry (vLLM refuses those).
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    policy = TransformersPolicy(path)
    [out] = policy.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                            sampling=SamplingParams(temperature=0, max_new_tokens=12))
    assert "Paris" in out.text  # a real pretrained model, not random weights
    trajs = rollout(policy, "agentgym/BFCLMultiTurn-v0", [{"task_id": "multi_turn_base_0"}], group_size=2,
                    env_kwargs={"split": "all"}, sampling=SamplingParams(max_new_tokens=48, seed=0),
                    max_steps=3, progress=False)
    assert trajs[0].steps[0].prompt_ids == trajs[1].steps[0].prompt_ids
    for t in trajs:
        assert t.error is None and t.num_steps >= 1
        episode_tokens(t)
