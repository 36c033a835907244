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
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentgym.config import ConfigError, help_text, load_config, run_folder_config
from agentgym.envspec import env_defaults
from agentgym.failures import check_evaluation_ran, run_command
from agentgym.plugins import Registry
from agentgym.presets import cli_config
from agentgym.runlog import append_record, write_summary
# The statistics and the task / reference helpers live in their own modules; they stay importable from here.
from agentgym.stats import (Estimate, Outcome, aggregate, category_accuracy, difference, estimate, outcomes, pass_at_k,
                            pass_hat_k, seed_record, t_quantile)
from agentgym.store import TrajectoryStore
from agentgym.tasks import make_runner, reference_actions, reference_logprob_of, rollout_settings, task_lists

__all__ = ["Estimate", "estimate", "difference", "pass_at_k", "pass_hat_k", "Outcome", "outcomes", "seed_record",
           "aggregate", "EvalSettings", "task_lists", "run_evaluation", "compare_table", "eval_main",
           "reference_actions", "reference_logprob_of", "t_quantile", "category_accuracy", "SERVED_POLICIES"]

# ``--model PREFIX:NAME``: a policy served elsewhere, built by ``factory(spec, base_url=..., api_key_env=...)``
# and checked with its ``check_server()`` before the evaluation starts.
SERVED_POLICIES: Registry[Any] = Registry("served policy", group="agentgym.served_policies", builtins={
    "openai": "agentgym.agents.openai_policy:openai_policy_from_spec",
})


def _is_served(model: str) -> bool:
    prefix, sep, _ = model.partition(":")
    return bool(sep) and prefix in SERVED_POLICIES


# ------------------------------------------------------------------------------------------ one evaluation
def _scorer(policy: Any, tokenizer: Any) -> Callable[[list[int], list[int]], float] | None:
    """The reference log-prob scorer of an in-process policy (None for a served one: nothing to score)."""
    if tokenizer is None or not hasattr(policy, "model"):
        return None
    from agentgym.model_loading import action_scorer  # torch: only for an in-process model
    return action_scorer(policy.model, tokenizer)


def _greedy_seeds_note(cfg: Any, settings: "EvalSettings") -> list[str]:
    if settings.seeds <= 1 or cfg.rollout.eval_temperature != 0:
        return []
    note = (f"--seeds {settings.seeds} with greedy decoding (rollout.eval_temperature 0): on tasks given by id the "
            "seeds repeat the same episodes (only env randomness differs); set --rollout.eval_temperature to sample")
    print(f"agentgym eval: note: {note}", file=sys.stderr, flush=True)
    return [note]


def run_evaluation(cfg: Any, settings: EvalSettings, *, out_dir: Path, policy: Any = None, tokenizer: Any = None,
                   model_name: str = "", weights: str = "base model", progress: bool = True) -> dict[str, Any]:
    """Evaluate ``policy`` on the config's evaluation tasks ``settings.seeds`` times with
    ``settings.samples`` samples per task, writing ``out_dir``; returns the summary. The rollouts use
    the run config's env settings as training does (``agentgym.tasks.rollout_settings``: env kwargs,
    ``env.step_timeout_s``, ``env.max_steps``, ``env.workers``)."""
    _, tasks, notes = task_lists(cfg)
    if not tasks:
        raise ConfigError(f"no evaluation tasks for {cfg.env.id} (env.eval_tasks is 0 and no --task-ids)")
    declared = env_defaults(cfg.env.id)
    notes = [*notes, *_greedy_seeds_note(cfg, settings)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps({"eval": settings.model_dump(mode="json"),
                                                     "run": cfg.model_dump(mode="json")}, indent=2))
    started = time.perf_counter()
    records, reference = [], {}
    score = _scorer(policy, tokenizer)
    for s in range(settings.seeds):
        t0 = time.perf_counter()
        runner = make_runner(policy, cfg, tasks, index=s, phase="eval", group_size=settings.samples,
                             progress=progress, run_id=f"eval-seed{s}")
        with TrajectoryStore(out_dir / "trajectories.jsonl") as store:
            trajs = [t.model_copy(update={"phase": "eval", "update": 0}) for t in runner.run()]
            for t in trajs:
                store.append(t)
        check_evaluation_ran(trajs, f"seed {s}", cfg.env.id)
        record = {"phase": "eval", "update": 0, "seed": s, "seconds": time.perf_counter() - t0,
                  **seed_record(outcomes(trajs, declared.category_field), declared.headline)}
        if s == 0 and score is not None:
            reference = reference_logprob_of(trajs, cfg.env.id, tokenizer, score)
            if reference:
                record["reference_logprob"] = sum(reference.values()) / len(reference)
        append_record(out_dir / "metrics.jsonl", json.dumps(record, default=float))
        records.append(record)
    summary = {"name": out_dir.name, "env_id": cfg.env.id, "model": model_name, "weights": weights,
               "eval_kwargs": rollout_settings(cfg, "eval")["env_kwargs"], "temperature": cfg.rollout.eval_temperature,
               "samples": settings.samples, "category_field": declared.category_field, **aggregate(records),
               "task_ids": sorted({str(t.get("task_id", "")) for t in tasks if t.get("task_id")}),
               "reference_logprob": (estimate(reference.values(), over="tasks").as_dict() if reference else None),
               "reference_logprobs": reference,
               "seconds": time.perf_counter() - started, "notes": notes}
    write_summary(out_dir, summary)
    return summary


# ------------------------------------------------------------------------------------------ comparison
def _load_summary(ref: str, out: str) -> tuple[str, dict[str, Any]]:
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
            if i + 1 >= len(argv):
                raise ConfigError(f"--{key} needs a value")
            value, i = argv[i + 1], i + 1
        i += 1
        settings[name] = [v for v in value.split(",") if v] if name == "task_ids" else value
    if rest and not rest[0].startswith("--"):
        settings["run"] = rest.pop(0)
    return settings, rest, compare


def _eval_config(settings: EvalSettings, rest: list[str]) -> Any:
    if settings.run is not None:
        # Read as data: modules the folder names are imported only when passed with --import.
        cfg = load_config(rest, base=run_folder_config(settings.run, rest))
    else:
        cfg, _, _ = cli_config(rest)
    if settings.model is not None and not _is_served(settings.model):
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
    if settings.model is not None and _is_served(settings.model) and not settings.base_url:
        raise ConfigError(f"--model {settings.model}: give the server with --base-url URL")
    return cfg


def _policy(cfg: Any, settings: EvalSettings) -> tuple[Any, Any, str, str]:
    """(policy, tokenizer or None, model display name, what weights)."""
    if settings.model is not None and _is_served(settings.model):
        factory = SERVED_POLICIES.get(settings.model.partition(":")[0])
        policy = factory(settings.model, base_url=settings.base_url, api_key_env=settings.api_key_env)
        policy.check_server()  # a wrong --base-url stops here in one line, not after every retry
        return policy, None, settings.model, f"served by {settings.base_url}"
    from agentgym.model_loading import load_policy  # torch and transformers: only for an in-process model
    return load_policy(cfg, settings)


def _help() -> str:
    lines = [eval_main.__doc__ or "", "", "eval settings:"]
    for name, f in EvalSettings.model_fields.items():
        flag = "RUN_DIR (positional)" if name == "run" else f"--{name.replace('_', '-')}"
        lines.append(f"  {flag} = {f.default!r}: {f.description}")
    lines.append("  --compare EVAL EVAL ...: print a markdown table of eval folders and their differences")
    cfg, _, _ = cli_config([])
    lines += ["", "run settings (from RUN_DIR's config.json, else the demo preset; override with --section.key):",
              help_text(cfg.resolved())]
    return "\n".join(lines)


def _out_dir(settings: EvalSettings, cfg: Any) -> Path:
    """The eval's own folder, checked: never an existing eval unless --overwrite (then emptied), never
    inside the run folder."""
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
        shutil.rmtree(out_dir)
    return out_dir


def _evaluate(argv: list[str]) -> int:
    raw, rest, compare = _split_eval_args(argv)
    if compare is not None:
        out = raw.get("out", EvalSettings.model_fields["out"].default)
        print(compare_table([_load_summary(ref, out) for ref in compare]))
        return 0
    try:
        settings = EvalSettings(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--{'.'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']} "
                          f"(got {err.get('input')!r})") from None
    cfg = _eval_config(settings, rest)
    out_dir = _out_dir(settings, cfg)
    task_lists(cfg)  # the env and its tasks are checked before a model loads
    policy, tok, model_name, weights = _policy(cfg, settings)
    summary = run_evaluation(cfg, settings, out_dir=out_dir, policy=policy, tokenizer=tok,
                             model_name=model_name, weights=weights, progress=cfg.train.progress)
    if hasattr(policy, "close"):
        policy.close()
    print(json.dumps({**{k: summary[k] for k in ("name", "env_id", "model", "weights", "seeds", "samples",
                                                   "episodes", "success", "reward", "headline",
                                                   "reference_logprob")},
                      "folder": str(out_dir)}, indent=2, default=float))
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    """``agentgym eval [RUN_DIR] [--checkpoint DIR] [--model NAME|openai:NAME --base-url URL] [--seeds N]
    [--samples K] [--tasks N|all] [--task-ids a,b] [--split NAME] [--name NAME] [--section.key VALUE ...]``
    evaluates a policy on an env's evaluation tasks and writes ``evals/<name>/``;
    ``agentgym eval --compare EVAL EVAL ...`` prints their table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(_help())
        return 0
    return run_command("eval", lambda: _evaluate(argv))
