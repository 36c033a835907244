"""What the sharded-vs-single-process tests run: per learner, LoRA and full fine-tuning cases with
their settings, each rank's share of the batch (whole task groups per rank, as a data-parallel run
rolls them out), the union one process trains on, and the FSDP2 accelerator the shipped accelerate
config describes (built on CPU with gloo, which accelerate itself only enables on accelerators).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "accelerate"
HINT = "The word is apple."

# Teacher modes and micro-batching are chosen so every path runs: an EMA teacher (rate 0.5, so the
# second update's teacher differs from the student), a fixed one, SERL's refresh every 2 updates (its
# second update scores with the initial weights, then the teacher becomes the student), the
# KL reference (GRPO), and a token budget that gives each rank several micro-batches.
SETTINGS: dict[str, dict[str, Any]] = {
    "grpo": {"kl_coef": 0.1, "old_logprobs": "recompute"},
    "dense_sd": {"teacher": "fixed", "topk": 16},
    "hint_sd": {"teacher": "ema", "teacher_rate": 0.5, "topk": 16},
    "serl": {"teacher": "refresh", "teacher_every": 2, "serl_span": "target"},
    "gigpo": {},
}
COMMON = {"lr": 1e-2, "token_budget": 160, "grad_clip": 1.0}
LEARNERS = list(SETTINGS)
# Weight comparisons use SGD (lr 10 for LoRA, 1 for full fine-tuning, after clipping to norm 1: the
# second update's teacher and reference differ from the student): AdamW divides by
# sqrt(v), which turns summation-order noise of near-zero gradients into visible weight noise. The
# resume cases ('-adam') use the learners' own AdamW: their moments are sharded and restored.
CASES = [f"{name}-{kind}" for name in LEARNERS for kind in ("lora", "full")] + ["hint_sd-lora-gc"]
RESUME_CASES = ["hint_sd-lora-adam", "serl-full-adam"]
# The default suite: every learner with LoRA, full fine-tuning of the two teacher learners, one
# resume; the rest is marked slow (same code paths, more minutes on a 2-core machine).
SLOW = {"grpo-full", "dense_sd-full", "gigpo-full", "hint_sd-lora-gc", "serl-full-adam"}
UPDATES = 2
SGD_LR = {"lora": 10.0, "full": 1.0}


def settings(case: str) -> dict[str, Any]:
    name = case.split("-")[0]
    return {**COMMON, **SETTINGS[name]}


def optimizer(case: str, model: torch.nn.Module) -> torch.optim.Optimizer | None:
    """SGD for the comparison cases; None (the learner's AdamW) for the '-adam' ones."""
    if case.endswith("-adam"):
        return None
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=SGD_LR[case.split("-")[1]])


def make(case: str, tokenizer, accelerator=None):
    """The case's learner bound to a fresh model (prepared by ``accelerator`` when given)."""
    from agentgym.learners import make_learner
    model = build_model(case)
    return make_learner(case.split("-")[0], model, tokenizer, settings(case), accelerator=accelerator,
                        optimizer=optimizer(case, model))


def build_model(case: str) -> torch.nn.Module:
    """The tiny model (seed 0), with a LoRA adapter for '-lora' cases, gradient checkpointing for '-gc'."""
    import peft
    from transformers import AutoModelForCausalLM

    from agentgym.agents.models import build_tiny_model
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(), dtype=torch.float32)
    if case.endswith("-gc"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if "-lora" in case:
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    return model


def rank_trajectories(tokenizer, rank: int) -> list:
    """Rank 0: a mixed group; rank 1: an all-fail group (zero advantage) and a mixed one, so the
    ranks hold different numbers of samples, micro-batches and teacher passes."""
    from tests.learners.conftest import echo_group
    if rank == 0:
        return echo_group(tokenizer, [["apple"], ["pear", "plum"]])
    return echo_group(tokenizer, [["fig", "plum"], ["kiwi", "fig"]], group="h") + \
        echo_group(tokenizer, [["apple"], ["fig"]], group="k")


def union(tokenizer) -> list:
    return rank_trajectories(tokenizer, 0) + rank_trajectories(tokenizer, 1)


def batch(trajectories):
    """A Batch with a hinted target on every step's whole action."""
    from agentgym.learners import Batch
    from agentgym.types import Target
    targets = [[Target(step=s.index, span=(0, len(s.action_ids)), hint=HINT) for s in t.steps] for t in trajectories]
    return Batch(trajectories, targets)


def trainable(model) -> dict[str, torch.Tensor]:
    from agentgym.sharding import full
    return {n: full(p) for n, p in model.named_parameters() if p.requires_grad}


def fsdp2_env(config: str = "fsdp2_lora.yaml") -> dict[str, str]:
    """The FSDP_* variables ``accelerate launch --config_file configs/accelerate/CONFIG`` sets (its
    own translation), in float32 (the tests compare with a float32 single-process run)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / config), "--num_processes", "2", "x.py"])
    args = _validate_launch_command(args)[0]
    env = prepare_multi_gpu_env(args)
    out = {k: v for k, v in env.items() if k.startswith("FSDP_") or k == "ACCELERATE_USE_FSDP"}
    out["ACCELERATE_MIXED_PRECISION"] = "no"
    return out


def fsdp2_accelerator(acc=None):
    """An ``Accelerator`` on CPU (gloo) whose ``prepare`` runs accelerate's FSDP2 path with the plugin
    the FSDP_* environment describes. accelerate selects FSDP only on accelerator devices; on CPU
    its state is set to FSDP after construction, so ``prepare`` / ``backward`` / ``clip_grad_norm_``
    are accelerate's own FSDP2 code (``fully_shard`` per decoder layer, embeddings / head, root).
    ``acc``: reuse that accelerator with a fresh plugin (its plugin keeps the first model's wrap policy)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    acc = acc or Accelerator(cpu=True)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2, plugin.fsdp_version
    from accelerate.state import PartialState
    # Every later AcceleratorState() copies PartialState's fields in: both say FSDP.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin
    return acc
