"""The statistics of evaluations and runs: means with their 95 % t-interval over seeds, tasks or
steps, Welch's difference, pass@k / pass^k, per-seed records of evaluation episodes (``Outcome``,
``seed_record``), their aggregate over seeds, and a run's paired before/after effect.

They are small and checked by hand in the tests:

>>> e = estimate([0.5, 0.7, 0.6], over="seeds")
>>> round(e.mean, 3), round(e.std, 3), round(e.low, 3), round(e.high, 3)
(0.6, 0.1, 0.352, 0.848)
>>> round(pass_at_k(n=4, c=1, k=2), 3), round(pass_hat_k(n=4, c=3, k=2), 3)
(0.5, 0.5)
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Sequence

__all__ = ["Estimate", "estimate", "difference", "pass_at_k", "pass_hat_k", "Outcome", "outcomes", "seed_record",
           "aggregate", "category_accuracy", "t_quantile", "paired_effect", "success_interval",
           "teacher_signal_summary"]

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


# ------------------------------------------------------------------------------------------ a run's before/after
def success_interval(record: dict[str, Any]) -> list[float] | None:
    """The 95 % interval (over tasks) of an evaluation record's success rate, when it has one."""
    low, high = record.get("success_low"), record.get("success_high")
    return [low, high] if isinstance(low, (int, float)) and isinstance(high, (int, float)) else None


def paired_effect(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any] | None:
    """The before/after change of the held-out reference log-prob, paired task by task: the mean
    difference with its 95 % interval over the held-out tasks (None without references)."""
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


def teacher_signal_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
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
