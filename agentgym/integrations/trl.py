"""Train on any agentgym env with TRL's ``GRPOTrainer`` (TRL 1.16) in three lines:

    from trl import GRPOConfig, GRPOTrainer
    from agentgym.integrations.trl import grpo_kwargs
    GRPOTrainer(model, args=GRPOConfig(...), **grpo_kwargs("agentgym/BFCLMultiTurn-v0", split="train")).train()

``grpo_kwargs`` returns TRL's ``train_dataset``, ``reward_funcs`` and ``rollout_func``:

- the dataset has one row per task of the env's split: ``prompt`` (the env's first conversation,
  chat messages), ``task_id`` and ``task_index``. The task travels in those columns, never inside the
  prompt text; ``rollout_func`` (which TRL hands only the prompts) finds each prompt's task through
  the dataset's own prompt index. Tasks whose first conversation is identical to an earlier task's
  would be indistinguishable to it and are left out (``dataset.info.description`` says how many).
- ``rollout_func`` runs every prompt of TRL's batch as a full multi-turn episode with agentgym's own
  rollout (``RolloutRunner``: later user turns, tools revealed mid-episode, the env's own parser and
  step limits) on the trainer's current model, TRL's ``num_generations`` copies of a prompt as one
  group from the same start state. Each episode becomes one TRL sample from ``episode_tokens()``:
  ``prompt_ids`` = the first context, ``completion_ids`` = every later token (actions and env
  replies, exactly as sampled and appended, never re-tokenized), ``logprobs`` = the sampled
  log-probs (0 on env tokens) and ``env_mask`` = 1 exactly on the policy's tokens, so TRL's loss
  covers the actions only.
- ``reward_funcs=[env_reward]``: the env's episode reward. The rollout also passes ``feedback``
  (each episode's typed ``Feedback`` records as JSON dicts), ``success``, ``steps`` and ``env_error``
  to every reward function (TRL forwards extra rollout fields), so extra reward functions can read
  them: ``def no_errors(feedback, **kw): return [-sum(f["kind"] == "error" for f in fb) for fb in feedback]``.

TRL's ``environment_factory`` is not offered: it cannot inject BFCL's later user turns or tools
revealed mid-episode, needs one generated class per tool set, and refuses chat templates without
tool support; ``rollout_func`` has none of those limits.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import gymnasium as gym

from agentgym.agents.base import SamplingParams
from agentgym.envspec import check_env_id, env_defaults, list_tasks, task_key
from agentgym.rollout import RolloutRunner, episode_tokens
from agentgym.tasks import runner_settings, sampling_seed

__all__ = ["grpo_kwargs", "env_reward", "episode_sample"]


def env_reward(prompts: Any = None, completions: Any = None, env_reward: Sequence[float | None] = (), **_: Any) -> list[float | None]:
    """The env's own episode reward, as the rollout returned it (None: the episode never started)."""
    return list(env_reward)


def _key(messages: Any) -> str:
    return json.dumps([{"role": m.get("role"), "content": m.get("content")} for m in messages], sort_keys=True)


def _env_kwargs(env_id: str, split: str, given: dict[str, Any] | None) -> dict[str, Any]:
    defaults = env_defaults(env_id)
    if split == "train":
        kwargs = dict(defaults.train_kwargs)
    elif split == "eval":
        kwargs = dict(defaults.eval_kwargs if defaults.eval_kwargs is not None else defaults.train_kwargs)
    elif "split" in defaults.train_kwargs:
        kwargs = {**defaults.train_kwargs, "split": split}
    else:
        raise ValueError(f"{env_id} has no splits beyond train/eval; got split={split!r}")
    kwargs.update(given or {})
    return kwargs


def episode_sample(trajectory: Any) -> dict[str, list]:
    """One trajectory as TRL's rollout sample: prompt_ids, completion_ids, logprobs, env_mask."""
    tokens = episode_tokens(trajectory)
    logprobs: list[float] = []
    for step in trajectory.steps:
        logprobs.extend([0.0] * (len(step.prompt_ids) - len(logprobs)))
        logprobs.extend(step.action_logprobs or [0.0] * len(step.action_ids))
    start = len(trajectory.steps[0].prompt_ids)
    return {"prompt_ids": tokens.ids[:start], "completion_ids": tokens.ids[start:],
            "logprobs": logprobs[start:], "env_mask": tokens.policy_mask[start:]}


def grpo_kwargs(env_id: str, *, split: str = "train", env_kwargs: dict[str, Any] | None = None,
                tasks: Sequence[dict[str, Any]] | None = None, max_tasks: int | None = None,
                max_steps: int | None = None, max_new_tokens: int | None = None, seed: int = 0,
                batch_size: int = 8) -> dict[str, Any]:
    """``train_dataset``, ``reward_funcs`` and ``rollout_func`` for ``GRPOTrainer`` (module docstring).

    Args:
        env_id: a registered gymnasium id (or ``module:Env-v0``).
        split: "train" / "eval" (the env's declared constructor kwargs), or another split name of an
            env that takes ``split`` (BFCL: "test", "all").
        env_kwargs: constructor kwargs on top of the split's.
        tasks: reset options of the tasks to train on (default: every task the env lists).
        max_tasks: only the first N tasks.
        max_steps / max_new_tokens: per-episode step limit and tokens per action (default: the env's).
        seed: reset seeds (``seed + task index``, as agentgym's rollout) and sampling seeds.
        batch_size: generation batch of the rollout's policy.
    """
    env_id = check_env_id(env_id)
    kwargs = _env_kwargs(env_id, split, env_kwargs)
    defaults = env_defaults(env_id)
    dataset, index, options = _dataset(env_id, split, kwargs, tasks, max_tasks, seed)
    settings = runner_settings(env_id, kwargs, max_steps=max_steps if max_steps is not None else defaults.max_steps)
    max_new_tokens = max_new_tokens if max_new_tokens is not None else defaults.max_new_tokens
    rollout_func = _rollout_func(env_id, index, options, settings, max_new_tokens=max_new_tokens, seed=seed,
                                 batch_size=batch_size)
    return {"train_dataset": dataset, "reward_funcs": [env_reward], "rollout_func": rollout_func}


def _dataset(env_id: str, split: str, kwargs: dict[str, Any], tasks: Sequence[dict[str, Any]] | None,
             max_tasks: int | None, seed: int) -> tuple[Any, dict[str, int], list[dict[str, Any]]]:
    """(TRL's dataset: one row per task with a distinct first conversation, {prompt key: task index},
    every task's reset options)."""
    from datasets import Dataset  # TRL's dependency, not agentgym's: needed only when the adapter is used

    env = gym.make(env_id, **kwargs)
    try:
        options = [dict(t) for t in (tasks if tasks is not None else list_tasks(env))]
        if not options:
            raise ValueError(f"{env_id} lists no tasks; pass tasks=[reset options, ...]")
        if max_tasks is not None:
            options = options[:max_tasks]
        rows, index, skipped = [], {}, 0
        for i, opts in enumerate(options):
            _, info = env.reset(seed=seed + i, options=dict(opts))
            prompt = [m.to_chat() for m in info["messages"]]
            key = _key(prompt)
            if key in index:
                skipped += 1
                continue
            index[key] = i
            task = info.get("task") or {}
            rows.append({"prompt": prompt, "task_id": str(task.get("id") or task_key(opts) or f"task-{i}"),
                         "task_index": i})
    finally:
        env.close()
    dataset = Dataset.from_list(rows)
    dataset.info.description = (f"agentgym {env_id} split={split}: {len(rows)} tasks"
                                + (f" ({skipped} left out: same first conversation as an earlier task)" if skipped else ""))
    return dataset, index, options


def _rollout_func(env_id: str, index: dict[str, int], options: list[dict[str, Any]], settings: dict[str, Any], *,
                  max_new_tokens: int, seed: int, batch_size: int) -> Callable[[list[Any], Any], dict[str, list]]:
    calls = [0]

    def rollout_func(prompts: list[Any], trainer: Any) -> dict[str, list]:
        # torch: the dataset side (and agentgym.integrations.verifiers, which shares it) never needs it
        from agentgym.agents.transformers_policy import TransformersPolicy

        try:
            indices = [index[_key(p)] for p in prompts]
        except KeyError:
            raise ValueError("rollout_func got a prompt that is not in the dataset grpo_kwargs built "
                             "(was the dataset changed or a different one passed?)") from None
        groups = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        chunks = [indices[i:i + groups] for i in range(0, len(indices), groups)]
        if len(indices) % groups or any(len(set(c)) != 1 for c in chunks):
            groups, chunks = 1, [[i] for i in indices]  # not TRL's grouped layout: one episode per prompt
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = getattr(trainer.processing_class, "tokenizer", trainer.processing_class)
        policy = TransformersPolicy(model, tokenizer, device=str(trainer.accelerator.device),
                                    dtype=next(model.parameters()).dtype, batch_size=batch_size, trainable=True)
        args = trainer.args
        sampling = SamplingParams(temperature=float(getattr(args, "temperature", 1.0)),
                                  top_p=float(getattr(args, "top_p", 1.0) or 1.0), max_new_tokens=max_new_tokens,
                                  seed=sampling_seed(seed, calls[0], rank=trainer.accelerator.process_index))
        calls[0] += 1
        runner = RolloutRunner(policy, env_id, [dict(options[c[0]]) for c in chunks], group_size=groups,
                               sampling=sampling, seed=seed, progress=False, **settings)
        was_training = model.training
        model.eval()
        try:
            trajectories = runner.run()
        finally:
            model.train(was_training)
        # runner.run() sorts by (task position, member): chunk order, then member order, as TRL laid them out
        return _samples(trajectories, prompts, policy, tokenizer)

    return rollout_func


def _samples(trajectories: Sequence[Any], prompts: list[Any], policy: Any, tokenizer: Any) -> dict[str, list]:
    """TRL's rollout output: one sample per episode, with the env's reward and the extra fields."""
    out: dict[str, list] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask", "env_reward",
                                            "feedback", "success", "steps", "env_error")}
    for traj, prompt in zip(trajectories, prompts, strict=True):
        if traj.steps:
            sample = episode_sample(traj)
        else:  # failed at reset: an empty, unscorable sample (reward None -> no advantage)
            ids = policy.renderer.prompt_ids(prompt)
            sample = {"prompt_ids": ids, "completion_ids": [tokenizer.eos_token_id], "logprobs": [0.0], "env_mask": [0]}
        for k, v in sample.items():
            out[k].append(v)
        out["env_reward"].append(float(traj.final_reward) if traj.steps else None)
        out["feedback"].append([f.model_dump(mode="json") for s in traj.steps for f in s.feedback])
        out["success"].append(bool(traj.success))
        out["steps"].append(len(traj.steps))
        out["env_error"].append(traj.error)
    return out
