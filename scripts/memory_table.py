"""The README's memory table: GPU memory of one learner process on ONE GPU, computed (not measured)
from the model shapes and what the learner holds. Assumptions, each a line below:

- weights in bf16 (2 bytes / parameter); LoRA adapters in fp32 (peft's default), r = 32 on q and v
  (HINT-SD's preset); full fine-tuning: bf16 weights, bf16 gradients, AdamW's two moments in bf16
  (torch keeps them in the parameter dtype): 8 bytes / parameter;
- a teacher (dense_sd, hint_sd, serl): a copy of the trainable weights (LoRA: the adapter; full: a
  bf16 copy of every weight) and its log-probs at the scored action tokens, [tokens, vocab] fp32;
- activations of one micro-batch of 8192 tokens (token_budget) under SDPA / flash attention (no
  sequence^2 term): ~34 x hidden bytes per token per layer kept for the backward (Korthikanti et
  al. 2022), with gradient checkpointing 2 x hidden per token per layer plus one layer's 34 x hidden;
- the vocabulary projection at 1024 action tokens only (logits_to_keep): three fp32 [1024, vocab]
  tensors with grad (logits, log-softmax, its gradient) for the student;
- + 1.5 GB for the CUDA context, allocator slack and kernels' workspaces.

Sharded over N GPUs with FSDP2 (configs/accelerate/fsdp2_*.yaml, mixed_precision bf16): the
weights / gradients / optimizer (fp32 master copies under accelerate's FSDP2: 16 bytes / trainable
parameter) and the teacher copy divide by N; activations and logits do not.

    python scripts/memory_table.py        # prints the markdown table
"""

GB = 1e9
# name: (layers, hidden, q_dim, kv_dim, vocab, parameters)
MODELS = {
    "Qwen2.5-0.5B": (24, 896, 896, 128, 151936, 0.494e9),
    "Qwen2.5-1.5B": (28, 1536, 1536, 256, 151936, 1.54e9),
    "Qwen3-4B": (36, 2560, 4096, 1024, 151936, 4.02e9),
    "Qwen2.5-7B": (28, 3584, 3584, 512, 152064, 7.62e9),
}
TOKENS, ACTION_TOKENS, RANK, OVERHEAD = 8192, 1024, 32, 1.5e9


def row(name: str, lora: bool, teacher: bool, checkpointing: bool) -> float:
    layers, h, q, kv, vocab, params = MODELS[name]
    adapter = layers * RANK * ((h + q) + (h + kv))
    if lora:
        state = 2 * params + 16 * adapter + (4 * adapter if teacher else 0)
    else:
        state = 8 * params + (2 * params if teacher else 0)
    per_token_layer = (2 * h) if checkpointing else (34 * h)
    acts = TOKENS * layers * per_token_layer + (TOKENS * 34 * h if checkpointing else 0)
    logits = 3 * 4 * ACTION_TOKENS * vocab + (4 * ACTION_TOKENS * vocab if teacher else 0)
    return (state + acts + logits + OVERHEAD) / GB


def table() -> str:
    out = ["| model | weights | learners | GB, no checkpointing | GB, gradient checkpointing |",
           "|---|---|---|---|---|"]
    for name in MODELS:
        for lora in (True, False):
            for teacher, learners in ((False, "grpo, gigpo"), (True, "dense_sd, hint_sd, serl (teacher)")):
                out.append(f"| {name} | {'LoRA r32 q,v' if lora else 'full'} | {learners} | "
                           f"{row(name, lora, teacher, False):.0f} | {row(name, lora, teacher, True):.0f} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table())
