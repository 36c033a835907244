"""Evaluation that can be published from: repeated over seeds, K samples per task, intervals,
pass@k / pass^k, per-category breakdowns and each benchmark's official headline numbers.

``agentgym eval`` evaluates any policy (a base model, a run's final adapter or weights, a given
checkpoint, or an OpenAI-compatible model) on any env split or task list and writes its own folder
``evals/<name>/`` (``config.json``, ``trajectories.jsonl``, ``metrics.jsonl``: one record per seed,
``summary.json``); it never writes into a training run. The trainer's evaluations during training use
the same per-seed record (``seed_record``), so curves and eval folders read alike.

The statistics are small and checked by hand in the tests:

>>> e = estimate([0.5, 0.7, 0.6], over="seeds")
>>> round(e.mean, 3), round(e.std, 3), round(e.low, 3), round(e.high, 3)
(0.6, 0.1, 0.352, 0.848)
>>> round(pass_at_k(n=4, c=1, k=2), 3), round(pass_hat_k(n=4, c=3, k=2), 3)
(0.5, 0.5)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["Estimate", "estimate", "difference", "pass_at_k", "pass_hat_k", "Outcome", "outcomes", "seed_record",
           "aggregate", "EvalSettings", "task_lists", "run_evaluation", "compare_table", "eval_main",
           "reference_actions", "reference_logprob_of", "t_quantile"]

# Two-sided 95 % quantiles of Student's t by degrees of freedom (1..30); past 30, 1.96 + 2.4 / df is
# within 0.003 of the exact value (2.021 at 40, 2.000 at 60, 1.980 at 120).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: float) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (fractional df: the next lower
    whole one, which is conservative).

    >>> t_quantile(4), t_quantile(1e9)
    (2.776, 1.96)
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[int(df) - 1] if df < 31 else 1.96 + 2.4 / df if df < 1e8 else 1.96


# ------------------------------------------------------------------------------------------ statistics
@dataclass(frozen=True)
class Estimate:
    """A mean with its sample standard deviation and 95 % t-interval over ``n`` values of ``over``
    (seeds, tasks or steps); ``std``/``low``/``high`` are None for a single value."""

    mean: float
    std: float | None
    low: float | None
    high: float | None
    n: int
    over: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Estimate":
        return cls(**{k: data.get(k) for k in ("mean", "std", "low", "high", "n", "over")})

    def __str__(self) -> str:
        if self.std is None:
            return f"{self.mean:.3f}"
        return f"{self.mean:.3f} ± {self.std:.3f} [{self.low:.3f}, {self.high:.3f}]"


def estimate(values: Iterable[float], *, over: str) -> Estimate:
    """Mean, sample std (ddof 1) and the 95 % t-interval of the mean."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError(f"no values to estimate over {over}")
    n, mean = len(xs), sum(xs) / len(xs)
    if n == 1:
        return Estimate(mean, None, None, None, 1, over)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return Estimate(mean, std, mean - half, mean + half, n, over)


def difference(a: Estimate, b: Estimate) -> Estimate:
    """``b - a`` with Welch's 95 % interval (unequal variances; Welch-Satterthwaite df).

    >>> d = difference(estimate([0.2, 0.4], over="seeds"), estimate([0.6, 0.8], over="seeds"))
    >>> round(d.mean, 3), round(d.low, 3), round(d.high, 3)
    (0.4, -0.209, 1.009)
    """
    diff = b.mean - a.mean
    if a.std is None or b.std is None:
        return Estimate(diff, None, None, None, min(a.n, b.n), f"{a.over}/{b.over}")
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(diff, 0.0, diff, diff, min(a.n, b.n), a.over)
    df = se ** 4 / ((va ** 2 / (a.n - 1)) + (vb ** 2 / (b.n - 1)))
    half = t_quantile(df) * se
    return Estimate(diff, se, diff - half, diff + half, min(a.n, b.n), a.over)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn without replacement from ``n`` (``c``
    correct) is correct: the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Probability that all of ``k`` samples drawn from ``n`` (``c`` correct) are correct:
    C(c, k) / C(n, k) (tau-bench's pass^k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass^k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return math.comb(c, k) / math.comb(n, k)


def _ks(samples: int) -> list[int]:
    ks = [1]
    while ks[-1] * 2 <= samples:
        ks.append(ks[-1] * 2)
    return ks if ks[-1] == samples else ks + [samples]


# ------------------------------------------------------------------------------------------ episodes -> records
@dataclass(frozen=True)
class Outcome:
    """One evaluation episode as the statistics see it."""

    task_id: str
    category: str
    success: bool
    reward: float
    member: int = 0
    error: bool = False


def outcomes(trajs: Sequence[Any], category_field: str | None) -> list[Outcome]:
    """``Outcome`` rows of trajectories; the category is the recorded task's ``category_field``
    (``"all"`` without one)."""
    rows = []
    for t in trajs:
        task = t.metadata.get("task") if isinstance(t.metadata.get("task"), dict) else {}
        cat = task.get(category_field) if category_field else None
        rows.append(Outcome(t.task_id, str(cat) if cat not in (None, "") else "all", bool(t.success),
                            float(t.final_reward), int(t.member or 0), bool(t.error)))
    return rows


def _per_task(rows: Sequence[Outcome]) -> dict[str, list[Outcome]]:
    by_task: dict[str, list[Outcome]] = defaultdict(list)
    for r in rows:
        by_task[r.task_id].append(r)
    return by_task


def seed_record(rows: Sequence[Outcome], headline: Callable[[Sequence[Outcome]], dict[str, float]] | None = None
                ) -> dict[str, Any]:
    """The numbers of one evaluation pass (one seed): success and reward over its episodes with the
    interval over tasks, pass@k / pass^k from each task's samples, per-category counts that sum to
    the totals, and the env's official headline numbers."""
    if not rows:
        return {"episodes": 0}
    by_task = _per_task(rows)
    task_success = estimate((sum(r.success for r in g) / len(g) for g in by_task.values()), over="tasks")
    task_reward = estimate((sum(r.reward for r in g) / len(g) for g in by_task.values()), over="tasks")
    record: dict[str, Any] = {
        "success_rate": sum(r.success for r in rows) / len(rows), "reward_mean": sum(r.reward for r in rows) / len(rows),
        "episodes": len(rows), "successes": sum(r.success for r in rows), "episode_errors": sum(r.error for r in rows),
        "tasks": len(by_task),
        "success_std": task_success.std, "success_low": task_success.low, "success_high": task_success.high,
        "reward_std": task_reward.std, "reward_low": task_reward.low, "reward_high": task_reward.high,
    }
    samples = min(len(g) for g in by_task.values())
    for k in _ks(samples):
        record[f"pass@{k}"] = sum(pass_at_k(len(g), sum(r.success for r in g), k) for g in by_task.values()) / len(by_task)
        record[f"pass^{k}"] = sum(pass_hat_k(len(g), sum(r.success for r in g), k) for g in by_task.values()) / len(by_task)
    cats: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = cats.setdefault(r.category, {"episodes": 0, "successes": 0, "reward_sum": 0.0, "tasks": set()})
        c["episodes"] += 1
        c["successes"] += int(r.success)
        c["reward_sum"] += r.reward
        c["tasks"].add(r.task_id)
    record["categories"] = {name: {"episodes": c["episodes"], "successes": c["successes"], "tasks": len(c["tasks"]),
                                   "success_rate": c["successes"] / c["episodes"],
                                   "reward_mean": c["reward_sum"] / c["episodes"]}
                            for name, c in sorted(cats.items())}
    record["headline"] = dict(headline(rows)) if headline is not None else {}
    return record


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Seed records -> estimates over seeds (over tasks when there is one seed), pooled categories."""
    records = [r for r in records if r.get("episodes")]
    if not records:
        return {"episodes": 0}
    single = len(records) == 1

    def over_seeds(key: str, source: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        vals = [r[key] for r in source if isinstance(r.get(key), (int, float))]
        return estimate(vals, over="seeds").as_dict() if vals else None

    out: dict[str, Any] = {"seeds": len(records), "episodes": sum(r["episodes"] for r in records),
                           "successes": sum(r["successes"] for r in records),
                           "episode_errors": sum(r["episode_errors"] for r in records), "tasks": records[0]["tasks"]}
    for metric, key in (("success", "success_rate"), ("reward", "reward_mean")):
        if single:  # one seed: the interval is over tasks
            r = records[0]
            out[metric] = Estimate(r[key], r[f"{metric}_std"], r[f"{metric}_low"], r[f"{metric}_high"],
                                   r["tasks"], "tasks").as_dict()
        else:
            out[metric] = over_seeds(key, records)
    keys = sorted({k for r in records for k in r if k.startswith(("pass@", "pass^"))}, key=lambda k: (k[4], int(k[5:])))
    out["pass_at_k"] = {k: over_seeds(k, records) for k in keys}
    heads = sorted({k for r in records for k in r.get("headline", {})})
    out["headline"] = {k: estimate([r["headline"][k] for r in records if k in r.get("headline", {})],
                                   over="seeds").as_dict() for k in heads}
    cats: dict[str, dict[str, Any]] = {}
    for r in records:
        for name, c in r.get("categories", {}).items():
            acc = cats.setdefault(name, {"episodes": 0, "successes": 0, "reward_sum": 0.0, "tasks": c["tasks"]})
            acc["episodes"] += c["episodes"]
            acc["successes"] += c["successes"]
            acc["reward_sum"] += c["reward_mean"] * c["episodes"]
    out["categories"] = {name: {"episodes": c["episodes"], "successes": c["successes"], "tasks": c["tasks"],
                                "success_rate": c["successes"] / c["episodes"],
                                "reward_mean": c["reward_sum"] / c["episodes"]} for name, c in sorted(cats.items())}
    return out


# ------------------------------------------------------------------------------------------ tasks
def _probe(env_id: str, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    import gymnasium as gym

    from agentgym.config import ConfigError
    from agentgym.envspec import env_defaults, list_tasks
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
    import random
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


# ------------------------------------------------------------------------------------------ reference log-prob
def reference_ids(step: Any, read: Callable[[dict[str, Any]], str | None] | None, tokenizer: Any) -> list[int] | None:
    """The ids (+ EOS) of the reference action that the env's ``read`` (``EnvDefaults.reference_action``)
    finds in ``step``'s ``reference`` feedback, or None."""
    from agentgym.types import FeedbackKind
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
    from agentgym.envspec import env_defaults
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


# ------------------------------------------------------------------------------------------ the command
class EvalSettings(BaseModel):
    """What ``agentgym eval`` evaluates and how often; the run config (model, env, rollout) comes
    from the run folder, ``--config`` or ``--section.key`` overrides."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    run: str | None = Field(None, description="a training run folder: its config, and its final adapter / weights "
                                              "(else its newest intact checkpoint)")
    checkpoint: str | None = Field(None, description="evaluate this checkpoint folder (runs/X/checkpoints/step-K) "
                                                     "or adapter / model folder instead")
    model: str | None = Field(None, description="the model: a registered name, folder or hub id (= --model.name), "
                                                "or openai:NAME for an OpenAI-compatible server (with --base-url)")
    base_url: str | None = Field(None, description="base URL of the OpenAI-compatible server of an openai:NAME model")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding that server's API key")
    seeds: int = Field(1, ge=1, le=1000, description="independent evaluation passes (sampling and env seeds); "
                                                     "means come with their std and 95 % interval over seeds")
    samples: int = Field(1, ge=1, le=1024, description="samples per task per seed (K): pass@k and pass^k for k <= K")
    tasks: str | None = Field(None, description="number of evaluation tasks, or 'all' (default: env.eval_tasks)")
    task_ids: list[str] | None = Field(None, description="evaluate exactly these task ids (comma-separated)")
    split: str | None = Field(None, description="the env split to evaluate on (sets env.eval_kwargs.split)")
    name: str | None = Field(None, description="the eval's folder name under --out (default: env-model-time)")
    out: str = Field("evals", description="folder that holds eval folders")
    overwrite: bool = Field(False, description="replace an existing eval folder of the same name")

    @field_validator("tasks")
    @classmethod
    def _count_or_all(cls, v: str | None) -> str | None:
        if v is None or v == "all" or (v.isdigit() and int(v) >= 1):
            return v
        raise ValueError(f"--tasks must be a positive number or 'all', got {v!r}")


_FLAGS = {name.replace("_", "-"): name for name in EvalSettings.model_fields if name != "run"}
_BOOL_FLAGS = {"overwrite"}


def _split_eval_args(argv: list[str]) -> tuple[dict[str, Any], list[str], list[str] | None]:
    """(eval settings, the rest for the config parser, --compare operands or None)."""
    settings: dict[str, Any] = {}
    rest, compare, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key == "compare":
            compare, i = ([value] if eq else []), i + 1
            while i < len(argv) and not argv[i].startswith("--"):  # the operands up to the next flag
                compare.append(argv[i])
                i += 1
            continue
        name = _FLAGS.get(key) or (key[5:].replace("-", "_") if key.startswith("eval.") else None)
        if name is None:
            rest.append(arg)
            i += 1
            continue
        if name in _BOOL_FLAGS and not eq and (i + 1 >= len(argv) or argv[i + 1].startswith("--")):
            settings[name], i = True, i + 1
            continue
        if not eq:
            from agentgym.config import ConfigError
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            value, i = argv[i + 1], i + 1
        i += 1
        settings[name] = [v for v in value.split(",") if v] if name == "task_ids" else value
    if rest and not rest[0].startswith("--"):
        settings["run"] = rest.pop(0)
    return settings, rest, compare


def _eval_config(settings: EvalSettings, rest: list[str]) -> Any:
    from agentgym.config import ConfigError, load_config, run_folder_config
    from agentgym.train import cli_config
    if settings.run is not None:
        # Read as data: modules the folder names are imported only when passed with --import.
        cfg = load_config(rest, base=run_folder_config(settings.run, rest))
    else:
        cfg, _, _ = cli_config(rest)
    if settings.model is not None and not settings.model.startswith("openai:"):
        cfg.model.name = settings.model
    cfg = cfg.resolved()
    if settings.split is not None:
        base = cfg.env.eval_kwargs if cfg.env.eval_kwargs is not None else cfg.env.kwargs
        cfg.env.eval_kwargs = {**base, "split": settings.split}
    if (settings.split is not None or settings.tasks is not None) and not settings.task_ids:
        cfg.env.eval_task_ids = None  # --split / --tasks pick from the split, not the config's task ids
    if settings.tasks is not None:
        cfg.env.eval_tasks = 100_000 if settings.tasks == "all" else int(settings.tasks)
    if settings.task_ids:
        cfg.env.eval_task_ids = settings.task_ids
    if settings.samples > 1 and cfg.rollout.eval_temperature == 0:
        raise ConfigError(f"--samples {settings.samples} with rollout.eval_temperature 0 (greedy) gives identical "
                          "samples; set --rollout.eval_temperature (e.g. 1.0) for pass@k")
    if settings.model is not None and settings.model.startswith("openai:") and not settings.base_url:
        raise ConfigError(f"--model {settings.model}: give the server with --base-url URL")
    return cfg


def _weights_folder(settings: EvalSettings, lora: bool) -> tuple[Path | None, str]:
    """(folder of the adapter / model to load, how it was chosen) for a run or checkpoint."""
    from agentgym.config import ConfigError
    if settings.checkpoint is not None:
        path = Path(settings.checkpoint)
        if (path / "state.json").is_file():
            from agentgym.checkpoint import verify_checkpoint
            verify_checkpoint(path)  # raises CheckpointError saying what is damaged
            return path / "model", f"checkpoint {path}"
        if path.is_dir():
            return path, f"folder {path}"
        raise ConfigError(f"--checkpoint {str(path)!r} is not a folder")
    if settings.run is None or settings.model is not None:
        return None, "base model"  # --model NAME with a run folder: the run's env and tasks, NAME's weights
    run = Path(settings.run)
    final = run / ("adapter" if lora else "model")
    if final.is_dir():
        return final, f"final {'adapter' if lora else 'weights'} of {run}"
    from agentgym.checkpoint import latest_intact_checkpoint
    found = latest_intact_checkpoint(run)
    if found is None:
        raise ConfigError(f"{run} has no final {'adapter' if lora else 'model'} folder and no intact checkpoint")
    return found / "model", f"newest intact checkpoint {found.name} of {run} (the run has not finished)"


def _policy(cfg: Any, settings: EvalSettings) -> tuple[Any, Any, str, str]:
    """(policy, tokenizer or None, model display name, what weights)."""
    if settings.model is not None and settings.model.startswith("openai:"):
        from agentgym.agents.openai_policy import openai_policy_from_spec
        policy = openai_policy_from_spec(settings.model, base_url=settings.base_url, api_key_env=settings.api_key_env)
        policy.check_server()  # a wrong --base-url stops here in one line, not after every retry
        return policy, None, settings.model, f"served by {settings.base_url}"
    import torch

    from agentgym.agents import TransformersPolicy
    from agentgym.train import load_model
    folder, what = _weights_folder(settings, cfg.model.lora)
    device = torch.device("cuda" if cfg.model.device == "cuda" or (cfg.model.device == "auto" and
                                                                   torch.cuda.is_available()) else "cpu")
    base_cfg = cfg.model_copy(deep=True)
    base_cfg.model.lora = False
    base_cfg.model.gradient_checkpointing = False
    if folder is not None and not (folder / "adapter_config.json").is_file():
        base_cfg.model.name = str(folder)  # full weights
        model, tok, name = load_model(base_cfg, device)
    else:
        model, tok, name = load_model(base_cfg, device)
        if folder is not None:
            import peft
            model = peft.PeftModel.from_pretrained(model, str(folder)).to(device)
    model.eval()
    policy = TransformersPolicy(model, tok, device=str(device), dtype=next(model.parameters()).dtype,
                                batch_size=cfg.rollout.batch_size)
    policy.name = name
    return policy, tok, name, what


def _scorer(policy: Any, tokenizer: Any) -> Callable[[list[int], list[int]], float] | None:
    if tokenizer is None or not hasattr(policy, "model"):
        return None
    import torch

    from agentgym.learners import action_log_probs

    def score(ctx: list[int], act: list[int]) -> float:
        with torch.no_grad():
            [lp] = action_log_probs(policy.model, [ctx], [act], pad_id=tokenizer.pad_token_id or 0, temperature=1.0)
        return float(lp.gather(-1, torch.tensor(act, device=lp.device).unsqueeze(-1)).mean())
    return score


def run_evaluation(cfg: Any, settings: EvalSettings, *, out_dir: Path, policy: Any = None, tokenizer: Any = None,
                   model_name: str = "", weights: str = "base model", progress: bool = True) -> dict[str, Any]:
    """Evaluate ``policy`` on the config's evaluation tasks ``settings.seeds`` times with
    ``settings.samples`` samples per task, writing ``out_dir``; returns the summary."""
    from agentgym.agents import SamplingParams
    from agentgym.envspec import env_defaults
    from agentgym.rollout import RolloutRunner
    from agentgym.runlog import append_record
    from agentgym.store import TrajectoryStore
    _, tasks, notes = task_lists(cfg)
    if not tasks:
        from agentgym.config import ConfigError
        raise ConfigError(f"no evaluation tasks for {cfg.env.id} (env.eval_tasks is 0 and no --task-ids)")
    declared = env_defaults(cfg.env.id)
    env_kwargs = dict(cfg.env.eval_kwargs if cfg.env.eval_kwargs is not None else cfg.env.kwargs)
    if settings.seeds > 1 and cfg.rollout.eval_temperature == 0:
        notes = [*notes, f"--seeds {settings.seeds} with greedy decoding (rollout.eval_temperature 0): on tasks "
                 "given by id the seeds repeat the same episodes (only env randomness differs); set "
                 "--rollout.eval_temperature to sample"]
        print(f"agentgym eval: note: {notes[-1]}", file=sys.stderr, flush=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps({"eval": settings.model_dump(mode="json"),
                                                     "run": cfg.model_dump(mode="json")}, indent=2))
    started = time.perf_counter()
    records, reference = [], {}
    score = _scorer(policy, tokenizer)
    for s in range(settings.seeds):
        sampling = SamplingParams(temperature=cfg.rollout.eval_temperature, top_p=cfg.rollout.top_p,
                                  max_new_tokens=cfg.rollout.max_new_tokens,
                                  seed=(cfg.train.seed * 1_000_003 + s * 7919 + 1) % 2**31)
        t0 = time.perf_counter()
        with TrajectoryStore(out_dir / "trajectories.jsonl") as store:
            runner = RolloutRunner(policy, cfg.env.id, tasks, group_size=settings.samples, sampling=sampling,
                                   env_kwargs=env_kwargs, seed=cfg.train.seed + 500 + 1000 * s,
                                   max_steps=cfg.env.max_steps, progress=progress, run_id=f"eval-seed{s}")
            trajs = [t.model_copy(update={"phase": "eval", "update": 0}) for t in runner.run()]
            for t in trajs:
                store.append(t)
        if trajs and all(t.error for t in trajs):
            from agentgym.train import TrainingError
            raise TrainingError(f"every evaluation episode ({len(trajs)}) of seed {s} errored on {cfg.env.id}: "
                                f"{trajs[0].error}")
        record = {"phase": "eval", "update": 0, "seed": s, "seconds": time.perf_counter() - t0,
                  **seed_record(outcomes(trajs, declared.category_field), declared.headline)}
        if s == 0 and score is not None:
            reference = reference_logprob_of(trajs, cfg.env.id, tokenizer, score)
            if reference:
                record["reference_logprob"] = sum(reference.values()) / len(reference)
        append_record(out_dir / "metrics.jsonl", json.dumps(record, default=float))
        records.append(record)
    summary = {"name": out_dir.name, "env_id": cfg.env.id, "model": model_name, "weights": weights,
               "eval_kwargs": env_kwargs, "temperature": cfg.rollout.eval_temperature,
               "samples": settings.samples, "category_field": declared.category_field, **aggregate(records),
               "task_ids": sorted({str(t.get("task_id", "")) for t in tasks if t.get("task_id")}),
               "reference_logprob": (estimate(reference.values(), over="tasks").as_dict() if reference else None),
               "reference_logprobs": reference,
               "seconds": time.perf_counter() - started, "notes": notes}
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=float))
    os.replace(tmp, out_dir / "summary.json")
    return summary


# ------------------------------------------------------------------------------------------ comparison
def _load_summary(ref: str, out: str) -> tuple[str, dict[str, Any]]:
    from agentgym.config import ConfigError
    for path in (Path(ref), Path(out) / ref):
        if (path / "summary.json").is_file():
            return path.name, json.loads((path / "summary.json").read_text())
    raise ConfigError(f"--compare: {ref!r} is not an eval folder (no summary.json there or under {out}/)")


def _rows_of(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    rows = {"success": summary.get("success"), "reward": summary.get("reward")}
    rows.update(summary.get("pass_at_k") or {})
    rows.update({f"{k} (official)": v for k, v in (summary.get("headline") or {}).items()})
    if summary.get("reference_logprob"):
        rows["reference log-prob"] = summary["reference_logprob"]
    return {k: v for k, v in rows.items() if isinstance(v, dict)}


def compare_table(summaries: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A markdown table: each eval's estimates, and each later eval's difference from the first
    with Welch's 95 % interval."""
    if len(summaries) < 2:
        raise ValueError(f"--compare needs at least two evals, got {len(summaries)}")
    (first_name, first), rest = summaries[0], summaries[1:]
    rows = {name: _rows_of(s) for name, s in summaries}
    metrics = list(dict.fromkeys(m for name, _ in summaries for m in rows[name]))
    head = ["metric", first_name] + [c for name, _ in rest for c in (name, f"{name} − {first_name}")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in metrics:
        base = rows[first_name].get(m)
        cells = [m, str(Estimate.from_dict(base)) if base else "n/a"]
        for name, _ in rest:
            val = rows[name].get(m)
            cells.append(str(Estimate.from_dict(val)) if val else "n/a")
            if val and base:
                d = _paired(summaries[0][1], dict(summaries)[name], m) or \
                    difference(Estimate.from_dict(base), Estimate.from_dict(val))
                cells.append(f"{d.mean:+.3f}" + (f" [{d.low:+.3f}, {d.high:+.3f}]" if d.low is not None else ""))
            else:
                cells.append("n/a")
        lines.append("| " + " | ".join(cells) + " |")
    envs = sorted({str(s.get("env_id")) for _, s in summaries})
    lines.append("")
    lines.append(f"env: {', '.join(envs)}; intervals: 95 % (t over seeds, or over tasks for one seed); "
                 "differences: Welch, except reference log-prob: paired by task where both evals scored the same "
                 "tasks" + ("" if len(envs) == 1 else "; WARNING: the evals are on different envs"))
    return "\n".join(lines)


def _paired(a: dict[str, Any], b: dict[str, Any], metric: str) -> Estimate | None:
    """The reference log-prob difference ``b - a`` paired task by task (as training reports it), when
    both evals scored the same held-out tasks; None otherwise (then the unpaired Welch difference)."""
    ra, rb = a.get("reference_logprobs") or {}, b.get("reference_logprobs") or {}
    common = sorted(set(ra) & set(rb))
    if metric != "reference log-prob" or not common or len(common) != len(ra) or len(common) != len(rb):
        return None
    return estimate([rb[t] - ra[t] for t in common], over="tasks")


def _help() -> str:
    from agentgym.config import help_text
    from agentgym.train import cli_config
    lines = [eval_main.__doc__ or "", "", "eval settings:"]
    for name, f in EvalSettings.model_fields.items():
        flag = "RUN_DIR (positional)" if name == "run" else f"--{name.replace('_', '-')}"
        lines.append(f"  {flag} = {f.default!r}: {f.description}")
    lines.append("  --compare EVAL EVAL ...: print a markdown table of eval folders and their differences")
    cfg, _, _ = cli_config([])
    lines += ["", "run settings (from RUN_DIR's config.json, else the demo preset; override with --section.key):",
              help_text(cfg.resolved())]
    return "\n".join(lines)


def eval_main(argv: list[str] | None = None) -> int:
    """``agentgym eval [RUN_DIR] [--checkpoint DIR] [--model NAME|openai:NAME --base-url URL] [--seeds N]
    [--samples K] [--tasks N|all] [--task-ids a,b] [--split NAME] [--name NAME] [--section.key VALUE ...]``
    evaluates a policy on an env's evaluation tasks and writes ``evals/<name>/``;
    ``agentgym eval --compare EVAL EVAL ...`` prints their table."""
    from agentgym.agents.base import PolicyError
    from agentgym.config import ConfigError
    from agentgym.errors import CheckpointError
    from agentgym.plugins import UnknownPluginError
    from agentgym.train import TrainingError
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    try:
        raw, rest, compare = _split_eval_args(argv)
        if compare is not None:
            out = raw.get("out", EvalSettings.model_fields["out"].default)
            print(compare_table([_load_summary(ref, out) for ref in compare]))
            return 0
        from pydantic import ValidationError
        try:
            settings = EvalSettings(**raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ConfigError(f"--{'.'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']} "
                              f"(got {err.get('input')!r})") from None
        cfg = _eval_config(settings, rest)
        model_label = Path(settings.model or cfg.model.name).name.replace(":", "-")
        # A run folder's name already says its learner and env: <run>-<time>; else <env>-<model>-<time>.
        label = f"{Path(settings.run).name}{'-' + model_label if settings.model else ''}" if settings.run else \
            f"{cfg.env.id.split('/')[-1].split(':')[-1]}-{model_label}"
        name = settings.name or f"{label}-{time.strftime('%m%d-%H%M%S')}"
        out_dir = Path(settings.out) / name
        if (out_dir / "summary.json").exists() and not settings.overwrite:
            raise ConfigError(f"{out_dir} already holds an eval; choose another --name or pass --overwrite")
        if settings.run is not None and out_dir.resolve().is_relative_to(Path(settings.run).resolve()):
            raise ConfigError(f"--out {settings.out}: an eval never writes inside the run folder {settings.run}")
        if out_dir.exists() and settings.overwrite:
            import shutil
            shutil.rmtree(out_dir)
        task_lists(cfg)  # the env and its tasks are checked before a model loads
        policy, tok, model_name, weights = _policy(cfg, settings)
        summary = run_evaluation(cfg, settings, out_dir=out_dir, policy=policy, tokenizer=tok,
                                 model_name=model_name, weights=weights, progress=cfg.train.progress)
        if hasattr(policy, "close"):
            policy.close()
    except (ConfigError, UnknownPluginError, ValueError) as exc:
        print(f"agentgym eval: {exc}", file=sys.stderr)
        return 2
    except (TrainingError, CheckpointError, PolicyError) as exc:  # PolicyError: e.g. an unreachable server
        print(f"agentgym eval: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**{k: summary[k] for k in ("name", "env_id", "model", "weights", "seeds", "samples",
                                                   "episodes", "success", "reward", "headline",
                                                   "reference_logprob")},
                      "folder": str(out_dir)}, indent=2, default=float))
    return 0


# ------------------------------------------------------------------------------------------ official headlines
def category_accuracy(rows: Sequence[Outcome], key: str) -> dict[str, float]:
    """``{key/<category>: percent of its episodes that succeeded}``: the per-category accuracy the
    benchmarks publish.

    >>> category_accuracy([Outcome("a", "x", True, 1.0), Outcome("b", "x", False, 0.0)], "accuracy")
    {'accuracy/x': 50.0}
    """
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        by_cat[r.category].append(r.success)
    return {f"{key}/{c}": 100.0 * sum(v) / len(v) for c, v in sorted(by_cat.items())}
