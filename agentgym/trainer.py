"""The training loop: rollout -> feedback -> selection -> update -> (periodic) evaluation -> checkpoint.

``Trainer`` takes objects or registered names for every part and never branches on their names:
what differs between plugins is what they declare (a learner's settings, teacher and default
feedback; a source's need for a policy; an env's splits, task list and limits; a rollout backend's
weight sync)::

    Trainer(env="agentgym/Echo-v0", model="tiny", learner=HintSD(lr=1e-3),
            source=make_source("immediate") + MySource(), selector=FirstError() | MySelector(),
            config=RunConfig(train={"updates": 2})).fit()

``agentgym train`` (``agentgym.train``) builds exactly the same objects from the config. Runs on CPU,
one GPU (bf16) or several processes (``accelerate launch`` / ``torchrun``: DDP). Every process rolls
out its own share of tasks; the gradient is the token mean over all processes' tokens. The run
folder follows the contract in the report docs: ``config.json``, ``trajectories.jsonl``,
``metrics.jsonl``, ``summary.json``, ``checkpoints/step-K/``, ``tensorboard/``.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from agentgym.agents.models import ModelSource
from agentgym.agents.transformers_policy import TransformersPolicy
from agentgym.checkpoint import assert_finite, clean_stray_temp, gather_for_save, resume_checkpoint, save_checkpoint
from agentgym.config import DISABLED, RunConfig, config_hash
from agentgym.envspec import env_defaults
from agentgym.failures import TrainingError, check_evaluation_ran
from agentgym.faults import crash_point
from agentgym.feedback.base import make_source
from agentgym.feedback.prompts import Prompts
from agentgym.integrations.trackers import RunTrackers
from agentgym.learners.base import Batch
from agentgym.learners.signal import signal_problem
from agentgym.model_loading import load_model, pick_device, prepare_model, resolve_model, score_action
from agentgym.noop import NoGradientWatch, load_probe, recorded_seconds, save_probe
from agentgym.plugins import LEARNERS, ROLLOUT_BACKENDS, SELECTORS, SOURCES, TEACHERS
from agentgym.rollout import failed_at_reset
from agentgym.run_objects import config_with
from agentgym.runlog import append_record, read_records, truncate_run, write_summary, written_before_checkpoint
from agentgym.safeio import write_atomic
from agentgym.stats import outcomes, paired_effect, seed_record, success_interval, teacher_signal_summary
from agentgym.store import TrajectoryStore
from agentgym.tasks import make_runner, reference_actions, step_references, task_lists

__all__ = ["Trainer", "TrainingError", "lr_factor"]


def lr_factor(update: int, total: int, warmup: int = 0, schedule: str = "constant") -> float:
    """The learning-rate multiplier of (0-based) ``update`` of ``total``: a linear warm-up over
    ``warmup`` updates, then constant / linear / cosine decay (to 0 at ``total``).

    >>> [round(lr_factor(k, 4, 0, "linear"), 2) for k in range(4)]
    [1.0, 0.75, 0.5, 0.25]
    >>> [round(lr_factor(k, 4, 2, "constant"), 2) for k in range(4)]
    [0.33, 0.67, 1.0, 1.0]
    """
    if update < warmup:
        return (update + 1) / (warmup + 1)
    span = max(1, total - warmup)
    progress = min(1.0, (update - warmup) / span)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


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
        cfg, given = config_with(config, env=env, model=model, learner=learner, source=source, selector=selector,
                                 rollout=rollout, prompts=prompts)
        self._given = {**given, "tokenizer": tokenizer, "teacher": teacher}
        self.config = cfg
        self.notes = list(notes)
        self.run_dir = Path(cfg.train.run_dir)
        self.hash = config_hash(cfg)
        # Everything that can be wrong about the env (its data, task ids) shows before a model loads.
        self.train_tasks, self.eval_tasks = self._tasks()
        self._build()

    # ---------------------------------------------------------------- tasks
    def _tasks(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(training tasks, evaluation tasks) as reset options (``agentgym.tasks.task_lists``)."""
        train, evals, notes = task_lists(self.config)
        self.notes.extend(notes)
        return train, evals

    # ---------------------------------------------------------------- building the parts
    def _build(self) -> None:
        cfg, given = self.config, self._given
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        self.accelerator = Accelerator(cpu=pick_device(cfg).type != "cuda")
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if given["model"] is not None:
            if given["tokenizer"] is None:
                raise TypeError("Trainer(model=<a model object>) needs tokenizer= as well")
            self.model_source = ModelSource(getattr(getattr(given["model"], "config", None), "_name_or_path", "") or
                                            "python-model", type(given["model"]).__name__)
            model = prepare_model(cfg, given["model"], given["tokenizer"], self.accelerator.device)
            tok, self.model_name = given["tokenizer"], self.model_source.name
        else:
            self.model_source = resolve_model(cfg.model.name)
            model, tok, self.model_name = load_model(cfg, self.accelerator.device, self.model_source)
        self.tokenizer = tok
        temperature = cfg.rollout.temperature if cfg.rollout.temperature > 0 else 1.0
        learner = given["learner"] or LEARNERS.get(cfg.learner.name)(settings=cfg.learner.settings)
        # FSDP2 / ZeRO-3 shard the weights in place: the rollouts get an unsharded copy (the mirror),
        # which the learner refreshes after each update (see Learner.attach_mirror).
        sharding = str(self.accelerator.distributed_type).rsplit(".", 1)[-1] in ("FSDP", "DEEPSPEED")
        mirror = copy.deepcopy(model) if sharding else None
        # One wording for the sources and the teacher turn (a learner built with its own prompts keeps them
        # where the config changes nothing).
        self.prompts = Prompts.from_overrides(cfg.feedback.prompts, base=learner.prompts)
        self.learner = learner.bind(model, tok, accelerator=self.accelerator, temperature=temperature,
                                    prompts=self.prompts)
        self.engine = self.learner.engine  # model, optimiser, mirror, checkpoint state (learners/engine.py)
        if self.engine.sharded:
            self.engine.attach_mirror(mirror.to(self.accelerator.device))
        del mirror
        served = self.engine.served
        self.policy = TransformersPolicy(served, tok, device=str(self.accelerator.device),
                                         dtype=next(served.parameters()).dtype,
                                         batch_size=cfg.rollout.batch_size, trainable=True)
        self.policy.name = self.model_name
        self.backend = given["rollout"] or ROLLOUT_BACKENDS.get(cfg.rollout.backend)(
            self.policy, model_path=self.model_source.path, lora=cfg.model.lora, lora_r=cfg.model.lora_r,
            settings=cfg.rollout.settings)
        self.source, self.selector = self._feedback()
        self.start = 0
        self._tb = None
        self.probe: tuple[list[int], list[int]] | None = None
        self.probe_before: float | None = None
        self._signal_warned = False
        self._train_records: list[dict[str, Any]] = []  # this run's train records (the summary's teacher signal)
        self._reference_reader = env_defaults(cfg.env.id).reference_action
        self.no_gradient = NoGradientWatch(cfg.train.updates, cfg.train.max_no_gradient_fraction, log=self.is_main)

    def _feedback(self) -> tuple[Any, Any]:
        cfg, given = self.config.feedback, self._given
        source, selector = given["source"], given["selector"]
        if source is None and cfg.source != DISABLED:
            names = cfg.source.split("+")
            needs_policy = any(SOURCES.get(n).needs_policy for n in names)
            teacher = given["teacher"] or (TEACHERS.get(cfg.teacher.name)(cfg.teacher.settings, self.policy, self.learner)
                                           if needs_policy else None)
            if not given["teacher"] and callable(getattr(teacher, "check_server", None)):
                teacher.check_server()  # an unreachable feedback.teacher.openai.base_url stops the run at its start
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
    def rollout(self, tasks, update: int, phase: str, group_size: int):
        """The episodes of ``tasks`` (``group_size`` each) with the served policy: rollout batch
        ``update`` of ``phase`` (``agentgym.tasks.make_runner``: its seeds and env settings)."""
        self.engine.model.eval()
        runner = make_runner(self.backend.policy, self.config, tasks, index=update, phase=phase, group_size=group_size,
                             progress=self.config.train.progress and self.is_main, run_id=f"{phase}-{update}-r{self.rank}",
                             rank=self.rank)
        trajs = runner.run()
        self._check_resets(trajs, update, phase)
        return trajs

    def _check_resets(self, trajs, update: int, phase: str) -> None:
        failed = [t for t in trajs if failed_at_reset(t)]
        limit = self.config.train.max_reset_failure_fraction
        if trajs and len(failed) > limit * len(trajs):
            raise TrainingError(f"{len(failed)}/{len(trajs)} {phase} episodes of update {update} failed at reset "
                                f"on {self.config.env.id}: {failed[0].error}")
        if phase == "eval":
            check_evaluation_ran(trajs, f"update {update}", self.config.env.id)

    def evaluate(self, update: int) -> dict[str, Any]:
        """Evaluate on the held-out tasks: success and reward with their interval over tasks, pass@k
        over ``env.eval_group_size`` samples, per-category numbers, the env's official headline, and
        the mean log-prob of each held-out task's reference first action (``reference_logprob``)."""
        if not self.eval_tasks:
            return {}
        e = self.config.env
        shard = self.eval_tasks[self.rank::self.world]
        started = time.perf_counter()
        trajs = self.rollout(shard, update, "eval", e.eval_group_size) if shard else []
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
        started = time.perf_counter()
        trajs = self.rollout(self.tasks_for(update), update, "train", self.config.env.group_size)
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
                save_probe(self.run_dir, self.probe, self.probe_before)
        lr = self.learner.settings.lr * lr_factor(update, self.config.train.updates, self.config.train.warmup_updates,
                                                  self.config.train.lr_schedule)
        self.engine.set_lr(lr)
        references = step_references(trajs, self._reference_reader, self.tokenizer) if self.learner.uses_teacher else None
        if self.config.train.progress and self.is_main:  # the learner step can take minutes on a CPU: say so
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
        problem = None if self._signal_warned else signal_problem(record, self.config.feedback.source,
                                                                   getattr(self.learner.settings, "teacher", None))
        if problem and self.is_main:
            self._signal_warned = True
            self.notes.append(f"update {record['update']}: {problem}")
            warnings.warn(f"{self.config.learner.name}: update {record['update']}: {problem}", RuntimeWarning,
                          stacklevel=2)

    def _reference_probe(self, trajs) -> tuple[list[int], list[int]] | None:
        """(context, reference action ids) of the first episode whose first step has a reference
        action (``agentgym.tasks.reference_actions``): the mean log-prob of that action is a learning
        signal that does not need a whole multi-turn episode to succeed."""
        return next(iter(reference_actions(trajs, self.config.env.id, self.tokenizer).values()), None)

    def probe_logprob(self) -> float | None:
        """Mean per-token log-prob of the probe's reference action under the current student."""
        return None if self.probe is None else self._score_action(*self.probe)

    def _score_action(self, ctx: list[int], act: list[int]) -> float:
        """Mean per-token log-prob of ``act`` after ``ctx`` under the current student (temperature 1)."""
        self.engine.model.eval()
        return score_action(self.engine.served, ctx, act, pad_id=self.engine.pad_id)

    # ---------------------------------------------------------------- output
    def _gather(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def _write_trajectories(self, trajs) -> None:
        name = "trajectories.jsonl" if self.rank == 0 else f"trajectories.rank{self.rank}.jsonl"
        with TrajectoryStore(self.run_dir / name) as store:
            for t in trajs:
                store.append(t)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main:
            return
        append_record(self.run_dir / "metrics.jsonl", json.dumps(record, default=float))
        if self._tb is not None:  # the run's trackers (train.log_with): same names and numbers
            self._tb.log(record)

    def _open_outputs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            recorded = self.config.model_dump(mode="json")
            recorded["feedback"]["prompts"] = self.prompts.as_dict()  # the full wording this run used
            # the folder may be someone else's: write_atomic never writes through a link
            write_atomic(self.run_dir / "config.json", json.dumps(recorded, indent=2))
            names = self.config.train.trackers
            if self.config.train.log_with is None and names == ["tensorboard"]:
                if importlib.util.find_spec("tensorboard") is None:  # the default, not asked for by name
                    self.notes.append("tensorboard is not installed: metrics are in metrics.jsonl only")
                    names = []
            if names:
                self._tb = RunTrackers(self.accelerator, names, self.run_dir, self.config.train.tracker_project,
                                       self.config.model_dump(mode="json"))

    def checkpoint(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        # Sharded weights are gathered whole (every process takes part), then the main process writes.
        weights, state = gather_for_save(self.engine, keep=self.is_main) if self.engine.sharded else (None, None)
        if self.is_main:
            save_checkpoint(self.run_dir, step, self.engine, config_hash=self.hash,
                            keep=self.config.train.keep_checkpoints, weights=weights, state=state)
        self.accelerator.wait_for_everyone()

    def _signal_summary(self) -> dict[str, Any] | None:
        return teacher_signal_summary(self._train_records)

    def _recorded(self, phase: str) -> list[dict[str, Any]]:
        """The ``phase`` records of the run's metrics.jsonl (unreadable lines skipped)."""
        return read_records(self.run_dir / "metrics.jsonl", phase)

    def _recorded_eval(self, update: int) -> dict[str, Any]:
        """The run's (last) evaluation record of ``update`` in metrics.jsonl, or {}."""
        return next((r for r in reversed(self._recorded("eval")) if r.get("update") == update), {})

    def maybe_resume(self, *, truncate: bool = True) -> int:
        """Load the newest intact checkpoint (falling back past damaged ones with a warning) and drop
        every record written after it, so that a resumed run writes each update exactly once (no
        checkpoint: the run starts over, and so do its records)."""
        if not self.config.train.resume:
            return 0
        if self.is_main:
            clean_stray_temp(self.run_dir)
        found = resume_checkpoint(self.run_dir, self.engine, config_hash=self.hash)
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
        cfg = self.config
        self._open_outputs()
        self.start = start = self.maybe_resume()
        if start and self.is_main:  # the updates before a resume: read once, then kept in memory
            self._train_records = self._recorded("train")
        self.backend.sync(self.policy)  # serve (and verify) the weights training starts from
        first = self.evaluate(0) if start == 0 else self._recorded_eval(0)
        before = first.get("success_rate")
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
            assert_finite(self.engine.served, "the trained weights")  # never write NaN as the run's adapter
            self.engine.served.save_pretrained(self.run_dir / ("adapter" if cfg.model.lora else "model"))
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
        effect = paired_effect(*evals)
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
                   "effect": effect, "success_interval_before": success_interval(evals[0]),
                   "success_interval_after": success_interval(evals[1]), "notes": notes}
        if self.is_main:
            write_summary(self.run_dir, summary)
        return summary
