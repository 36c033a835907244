"""What a run rolls out: its training and held-out task lists, the seeds of every rollout batch, the
settings every rollout of a run config shares (env kwargs with the step deadline, step limit, env
worker processes), and the env's reference actions read from the episodes (what the reference
log-prob scores). Training (``agentgym.trainer``), evaluation (``agentgym.evaluation``) and the TRL
adapter (``agentgym.integrations.trl``) all build their rollouts here.

>>> sampling_seed(0, 1), sampling_seed(0, 1, phase="eval"), sampling_seed(0, 1, rank=1)
(7919, 7920, 112648)
>>> reset_seed(0, 2), reset_seed(0, 2, phase="eval")
(2000, 2500)
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

import gymnasium as gym

from agentgym.agents.base import SamplingParams
from agentgym.config import ConfigError
from agentgym.envspec import env_defaults, list_tasks
from agentgym.rollout import RolloutRunner
from agentgym.types import FeedbackKind

__all__ = ["task_lists", "sampling_seed", "reset_seed", "runner_settings", "rollout_settings", "sampling_for",
           "make_runner", "reference_ids", "step_references", "reference_actions", "reference_logprob_of"]


# ------------------------------------------------------------------------------------------ tasks
def _probe(env_id: str, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        env = gym.make(env_id, **kwargs)
    except Exception as exc:
        hint = env_defaults(env_id).data_hint
        raise ConfigError(f"env: cannot build {env_id} with kwargs {kwargs}: {type(exc).__name__}: {exc}"
                          + (f" ({hint})" if hint else "")) from None
    try:
        return list_tasks(env)
    finally:
        env.close()


def task_lists(cfg: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(training tasks, evaluation tasks, notes) of a resolved run config, as reset options; ``{}``
    entries draw a task by seed. Evaluation tasks come from ``env.eval_task_ids``, else the env's
    evaluation split, else a seeded sample held out of the one task list (so a run's evaluations
    and a later ``agentgym eval`` of it use the same held-out tasks)."""
    e, notes = cfg.env, []
    listed = _probe(e.id, e.kwargs)
    train = [{"task_id": t} for t in e.task_ids] if e.task_ids else listed
    if e.eval_task_ids:
        evals = [{"task_id": t} for t in e.eval_task_ids]
    elif not e.eval_tasks:
        evals = []
    elif e.eval_kwargs is not None and e.eval_kwargs != e.kwargs:
        evals = _probe(e.id, e.eval_kwargs)[:e.eval_tasks] or [{} for _ in range(e.eval_tasks)]
    elif listed:
        order = list(range(len(listed)))
        random.Random(f"eval/{cfg.train.seed}").shuffle(order)
        held = set(order[:e.eval_tasks])
        evals = [listed[i] for i in sorted(held)]
        if not e.task_ids:
            rest = [t for i, t in enumerate(listed) if i not in held]
            if rest:
                train = rest
            else:
                notes.append(f"{e.id} lists {len(listed)} task(s): evaluation uses training tasks (nothing to hold out)")
    else:
        evals = [{} for _ in range(e.eval_tasks)]  # drawn by seed (offset from training seeds)
    return train or [{}], evals, notes


# ------------------------------------------------------------------------------------------ seeds and rollout settings
def sampling_seed(seed: int, index: int, *, rank: int = 0, phase: str = "train") -> int:
    """The sampling seed of rollout batch ``index`` (an update, an evaluation seed, a TRL rollout
    call) of process ``rank``: evaluations sample from other seeds than training."""
    return (seed * 1_000_003 + index * 7919 + rank * 104_729 + (0 if phase == "train" else 1)) % 2**31


def reset_seed(seed: int, index: int, *, phase: str = "train") -> int:
    """The first env reset seed of rollout batch ``index``: evaluation draws seeded tasks from
    another seed range than training."""
    return seed + index * 1000 + (500 if phase == "eval" else 0)


def runner_settings(env_id: str, env_kwargs: dict[str, Any], *, max_steps: int | None,
                    step_timeout_s: float | None = None, workers: int = 0) -> dict[str, Any]:
    """``RolloutRunner`` keyword arguments: the env kwargs (with the step deadline, 0 turning it off:
    an agentgym env takes it as a constructor argument, any other env's wrapper from
    ``agentgym.wrappers.make``), the step limit and the env worker processes."""
    kwargs = dict(env_kwargs)
    if step_timeout_s is not None:
        kwargs.setdefault("step_timeout_s", step_timeout_s or None)
    return {"env_kwargs": kwargs, "max_steps": max_steps, "workers": workers}


def rollout_settings(cfg: Any, phase: str) -> dict[str, Any]:
    """``runner_settings`` of a run config's ``phase`` (``"train"`` / ``"eval"``) env."""
    e = cfg.env
    kwargs = e.eval_kwargs if phase == "eval" and e.eval_kwargs is not None else e.kwargs
    return runner_settings(e.id, kwargs, max_steps=e.max_steps, step_timeout_s=e.step_timeout_s, workers=e.workers)


def sampling_for(cfg: Any, index: int, phase: str, rank: int = 0) -> SamplingParams:
    """The sampling of a run config's rollout batch ``index`` in ``phase``."""
    r = cfg.rollout
    return SamplingParams(temperature=r.temperature if phase == "train" else r.eval_temperature, top_p=r.top_p,
                          max_new_tokens=r.max_new_tokens,
                          seed=sampling_seed(cfg.train.seed, index, rank=rank, phase=phase))


def make_runner(policy: Any, cfg: Any, tasks: Sequence[dict[str, Any]], *, index: int, phase: str, group_size: int,
                progress: bool, run_id: str, rank: int = 0) -> RolloutRunner:
    """The ``RolloutRunner`` of a run config's rollout batch ``index`` in ``phase``."""
    return RolloutRunner(policy, cfg.env.id, tasks, group_size=group_size, sampling=sampling_for(cfg, index, phase, rank),
                         seed=reset_seed(cfg.train.seed, index, phase=phase), progress=progress, run_id=run_id,
                         **rollout_settings(cfg, phase))


# ------------------------------------------------------------------------------------------ reference actions
def reference_ids(step: Any, read: Callable[[dict[str, Any]], str | None] | None, tokenizer: Any) -> list[int] | None:
    """The ids (+ EOS) of the reference action that the env's ``read`` (``EnvDefaults.reference_action``)
    finds in ``step``'s ``reference`` feedback, or None."""
    for f in step.feedback if read is not None else ():
        action = read(f.payload) if f.kind is FeedbackKind.REFERENCE else None
        if action:
            return list(tokenizer.encode(action, add_special_tokens=False)) + [tokenizer.eos_token_id]
    return None


def step_references(trajs: Sequence[Any], read: Callable[[dict[str, Any]], str | None] | None,
                    tokenizer: Any) -> dict[tuple[int, int], list[int]]:
    """{(trajectory index, step index): reference action ids + EOS} for every step that has one (what
    the teacher-signal diagnostic scores)."""
    out = {}
    for i, t in enumerate(trajs if read is not None else ()):
        for step in t.steps:
            ids = reference_ids(step, read, tokenizer)
            if ids is not None:
                out[(i, step.index)] = ids
    return out


def reference_actions(trajs: Sequence[Any], env_id: str, tokenizer: Any) -> dict[str, tuple[list[int], list[int]]]:
    """{task id: (first prompt ids, reference first action ids + EOS)} for the first episode of each
    task whose first step carries a reference (the env declares how to read it). The context is the
    task's first prompt, which does not depend on the policy, so scores before and after training
    pair up task by task."""
    read = env_defaults(env_id).reference_action
    out: dict[str, tuple[list[int], list[int]]] = {}
    for t in trajs if read is not None else ():
        if t.task_id in out or not t.steps or not t.steps[0].prompt_ids:
            continue
        ids = reference_ids(t.steps[0], read, tokenizer)
        if ids is not None:
            out[t.task_id] = (list(t.steps[0].prompt_ids), ids)
    return out


def reference_logprob_of(trajs: Sequence[Any], env_id: str, tokenizer: Any, score: Callable[[list[int], list[int]], float]
                         ) -> dict[str, float]:
    """{task id: ``score(context, reference action)``}: the mean per-token log-prob of each task's
    reference first action (``reference_actions``)."""
    return {task: score(ctx, act) for task, (ctx, act) in reference_actions(trajs, env_id, tokenizer).items()}
