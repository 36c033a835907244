"""GiGPO (Feng et al. 2025, "Group-in-Group Policy Optimization for LLM Agent Training", verl-agent):
GRPO's episode-level advantage plus a step-level advantage over *anchor states*, the states that
several steps of the same task group acted from.

For the steps t of the trajectories i of one task group (every step is a training sample):

    A_E(i)    = (R_i - mean R) / (std R + eps)      "mean_std_norm"  (mean and unbiased std over the
              =  R_i - mean R                       "mean_norm"       group's step-samples, as GRPO here)
    G(i, t)   = r_t + gamma * G(i, t + 1)           discounted return from the step rewards
                                                    (rollouts make R = sum of step rewards, so the
                                                    final reward is the last step's reward)
    anchor    = the steps of the group whose pre-action state (``feedback.anchors.state_of``: the
                task for step 0, the previous observation after that) is identical, or with
                ``similarity_threshold`` set, similar (``feedback.anchors.cluster_states``)
    A_S(i, t) = (G - mean_anchor G) / (std_anchor G + eps)   or   G - mean_anchor G   (same mode)
    A(i, t)   = A_E(i) + omega * A_S(i, t)

A group of one (a singleton anchor group, a trajectory without a task group) has no baseline and
gets 0 at that level; |A| below 1e-6 counts as 0 (equal fractional returns leave residues; GRPO's
tolerance). The loss is GRPO's, unchanged: PPO clipped surrogate on the action tokens, token-mean
over all action tokens, samples whose combined advantage is 0 included in the denominator (as
verl counts them) with their forward skipped. Every recorded step counts in the
baselines, also a step without token ids (which is not trained on).

verl-agent's defaults (``core_gigpo.compute_gigpo_outcome_advantage`` and ``ppo_trainer.yaml``):
``mode = "mean_norm"`` (its ALFWorld and search example scripts pass ``mean_std_norm``), ``eps = 1e-6``,
``step_advantage_w = 1.0``, exact-match anchors (``enable_similarity = False``; 0.95 when enabled),
episode statistics across step-samples (``compute_mean_std_cross_steps = True``); ``gamma = 0.95``
is what its example scripts pass (``algorithm.gamma``). Where it differs: verl-agent gives a task
group holding ONE step-sample the advantage R (mean 0, std 1); here that is 0, as GRPO does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Hashable, Literal, NamedTuple, Sequence

from pydantic import BaseModel, ConfigDict, Field

from agentgym.feedback.anchors import cluster_states, state_of
from agentgym.learners.base import register
from agentgym.learners.samples import Batch, Sample
from agentgym.learners.grpo import GRPO, GRPOSettings
from agentgym.learners.losses import ZERO_ADVANTAGE_TOL, snap_zero
from agentgym.types import Trajectory

__all__ = ["GiGPO", "GiGPOSettings", "GiGPOAdvantages", "gigpo_advantages", "discounted_returns",
           "normalise_in_groups", "ZERO_TOL"]

ZERO_TOL = ZERO_ADVANTAGE_TOL  # |A| below this is exactly 0 (no gradient; its tokens still count)

Mode = Literal["mean_norm", "mean_std_norm"]


class GiGPOSettings(BaseModel):
    """GiGPO's own hyper-parameters (verl-agent's names in brackets)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    gamma: float = Field(0.95, ge=0.0, le=1.0, allow_inf_nan=False,
                         description="step discount of the returns that the step-level advantage compares "
                                     "[algorithm.gamma; 0.95 in verl-agent's GiGPO scripts]")
    omega: float = Field(1.0, ge=0.0, allow_inf_nan=False,
                         description="weight of the step-level advantage: A = A_E + omega * A_S "
                                     "[algorithm.gigpo.step_advantage_w]")
    mode: Mode = Field("mean_norm", description="normalisation of both levels: 'mean_norm' (x - mean) or "
                                                "'mean_std_norm' ((x - mean) / (std + eps)) "
                                                "[algorithm.gigpo.mode]")
    similarity_threshold: float | None = Field(
        None, gt=0.0, le=1.0, allow_inf_nan=False,
        description="None: anchor states match exactly; a ratio in (0, 1]: states at least this similar "
                    "(normalised Indel ratio, greedy against each cluster's first state) share an anchor "
                    "group [algorithm.gigpo.enable_similarity / similarity_thresh]")
    eps: float = Field(1e-6, gt=0.0, allow_inf_nan=False,
                       description="added to the std in 'mean_std_norm' [epsilon]")
    episode_stats: Literal["steps", "episodes"] = Field(
        "steps", description="episode-level mean/std over the group's step-samples (verl-agent's "
                             "compute_mean_std_cross_steps, GRPO here) or over one entry per episode")


class GiGPOAdvantages(NamedTuple):
    """Per trajectory, per step: the combined advantage and its parts."""

    total: list[list[float]]  # A = A_E + omega * A_S
    episode: list[list[float]]  # A_E (the same for every step of a trajectory)
    step: list[list[float]]  # A_S
    returns: list[list[float]]  # discounted returns G
    anchor: list[list[tuple[str, int]]]  # (task group, anchor cluster) of each step


def discounted_returns(rewards: Sequence[float], gamma: float) -> list[float]:
    """G_t = r_t + gamma * G_{t+1}, G_T = 0.

    >>> discounted_returns([0.0, 0.0, 1.0], 0.5)
    [0.25, 0.5, 1.0]
    """
    out = [0.0] * len(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def normalise_in_groups(values: Sequence[float], groups: Sequence[Hashable], mode: Mode = "mean_norm",
                        eps: float = 1e-6) -> list[float]:
    """``x - mean`` ('mean_norm') or ``(x - mean) / (std + eps)`` ('mean_std_norm', unbiased std)
    within each group; a group of one entry gets 0.

    >>> normalise_in_groups([1.0, 0.0, 3.0, 5.0], ["a", "a", "b", "c"])
    [0.5, -0.5, 0.0, 0.0]
    """
    if len(values) != len(groups):
        raise ValueError(f"{len(values)} values for {len(groups)} group labels")
    if mode not in ("mean_norm", "mean_std_norm"):
        raise ValueError(f"mode must be 'mean_norm' or 'mean_std_norm', got {mode!r}")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    out = [0.0] * len(values)
    for idx in members.values():
        if len(idx) < 2:
            continue
        xs = [float(values[i]) for i in idx]
        mean = math.fsum(xs) / len(xs)
        scale = 1.0
        if mode == "mean_std_norm":
            scale = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) + eps
        for i, x in zip(idx, xs):
            out[i] = snap_zero((x - mean) / scale)
    return out


def _anchor_clusters(states: Sequence[str], threshold: float | None) -> list[int]:
    if threshold is None or threshold >= 1.0:  # exact match (verl-agent's default): a dict, no ratios
        ids: dict[str, int] = {}
        return [ids.setdefault(s, len(ids)) for s in states]
    return cluster_states(states, threshold)


def gigpo_advantages(trajectories: Sequence[Trajectory], settings: GiGPOSettings | None = None,
                     **kwargs: Any) -> GiGPOAdvantages:
    """GiGPO advantages of every step of ``trajectories`` (task groups by ``group_id``; an empty
    ``group_id`` is a group of its own). Settings as a ``GiGPOSettings`` or as its fields.

    Two episodes of one task: both first steps act from the task text, both second steps from
    "box is locked", so each step has a baseline.

    >>> from agentgym.types import Message, Step, Trajectory
    >>> def episode(observations, rewards):
    ...     steps = [Step(index=i, observation=o, reward=r) for i, (o, r) in enumerate(zip(observations, rewards))]
    ...     return Trajectory(task_id="t", group_id="g", messages=[Message(role="user", content="Open the box")],
    ...                       steps=steps, final_reward=sum(rewards))
    >>> group = [episode(["box is locked", "box is open"], [0.0, 1.0]),
    ...          episode(["box is locked", "nothing happens"], [0.0, 0.0])]
    >>> adv = gigpo_advantages(group, gamma=0.5)
    >>> adv.returns
    [[0.5, 1.0], [0.0, 0.0]]
    >>> adv.episode  # R - mean R over the group's step-samples (mean_norm)
    [[0.5, 0.5], [-0.5, -0.5]]
    >>> adv.step  # G - mean G over each anchor group: {0.5, 0.0} at the task, {1.0, 0.0} at "box is locked"
    [[0.25, 0.5], [-0.25, -0.5]]
    >>> adv.total  # A_E + 1.0 * A_S
    [[0.75, 1.0], [-0.75, -1.0]]
    """
    if settings is not None and kwargs:
        raise TypeError("pass either a GiGPOSettings or its fields, not both")
    s = settings if settings is not None else GiGPOSettings(**kwargs)
    groups = [t.group_id or f"#{i}" for i, t in enumerate(trajectories)]
    returns = [discounted_returns([st.reward for st in t.steps], s.gamma) for t in trajectories]

    # Episode level: one entry per step-sample (verl-agent, GRPO here) or one per episode.
    if s.episode_stats == "steps":
        rows = [(i, t.final_reward, groups[i]) for i, t in enumerate(trajectories) for _ in t.steps]
    else:
        rows = [(i, t.final_reward, groups[i]) for i, t in enumerate(trajectories) if t.steps]
    ep_norm = normalise_in_groups([r for _, r, _ in rows], [g for _, _, g in rows], s.mode, s.eps)
    a_episode = [0.0] * len(trajectories)
    for (i, _, _), a in zip(rows, ep_norm):
        a_episode[i] = a

    # Step level: anchor states clustered within each task group.
    visits: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, t in enumerate(trajectories):
        for st in t.steps:
            visits[groups[i]].append((i, st.index))
    anchor: list[list[tuple[str, int]]] = [[("", 0)] * len(t.steps) for t in trajectories]
    for g, members in visits.items():
        ids = _anchor_clusters([state_of(trajectories[i], k) for i, k in members], s.similarity_threshold)
        for (i, k), cid in zip(members, ids):
            anchor[i][k] = (g, cid)
    flat = [(i, k) for i, t in enumerate(trajectories) for k in range(len(t.steps))]
    st_norm = normalise_in_groups([returns[i][k] for i, k in flat], [anchor[i][k] for i, k in flat],
                                  s.mode, s.eps)
    a_step: list[list[float]] = [[0.0] * len(t.steps) for t in trajectories]
    for (i, k), a in zip(flat, st_norm):
        a_step[i][k] = a

    episode = [[a_episode[i]] * len(t.steps) for i, t in enumerate(trajectories)]
    total = [[snap_zero(e + s.omega * a) for e, a in zip(es, as_)] for es, as_ in zip(episode, a_step)]
    return GiGPOAdvantages(total=total, episode=episode, step=a_step, returns=returns, anchor=anchor)


class GiGPOLearnerSettings(GRPOSettings, GiGPOSettings):
    """GiGPO's settings: GRPO's (the PPO surrogate) and the advantage's (gamma, omega, normalisation)."""


@register
class GiGPO(GRPO):
    """GRPO's PPO loss on GiGPO's per-step advantages (``self.settings`` holds both sets of fields)."""

    name = "gigpo"
    Settings = GiGPOLearnerSettings
    uses_teacher = False
    metrics = {**GRPO.metrics,
               "gigpo_anchor_groups": "anchor-state groups (clusters of identical pre-action states per task group)",
               "gigpo_anchor_size_mean": "steps per anchor group (verl-agent's avg size of step-level group)",
               "gigpo_anchored_step_fraction": "steps whose anchor group holds another step (a step baseline)",
               "gigpo_step_adv_abs_mean": "mean |A_step| over the batch's steps"}
    _gigpo_metrics: dict[str, float] = {}

    @property
    def gigpo(self) -> GiGPOSettings:
        return GiGPOSettings(**{k: getattr(self.settings, k) for k in GiGPOSettings.model_fields})

    def prepare(self, batch: Batch, samples: list[Sample]) -> list[Sample]:
        adv = gigpo_advantages(batch.trajectories, self.gigpo)
        for s in samples:
            s.advantage = adv.total[s.traj][s.step]
            s.token_mask = [1.0] * len(s.action)
        sizes: dict[tuple[str, int], int] = defaultdict(int)
        for row in adv.anchor:
            for a in row:
                sizes[a] += 1
        n_steps = sum(sizes.values())
        self._gigpo_metrics = {
            "gigpo_anchor_groups": float(len(sizes)),
            "gigpo_anchor_size_mean": n_steps / len(sizes) if sizes else 0.0,
            "gigpo_anchored_step_fraction": sum(n for n in sizes.values() if n > 1) / n_steps if n_steps else 0.0,
            "gigpo_step_adv_abs_mean": (sum(abs(a) for row in adv.step for a in row) / n_steps) if n_steps else 0.0,
        }
        # Zero-advantage samples carry no gradient; their tokens count in the denominator, as GRPO's.
        return self.mark_zero_advantage(samples)

    def extra_metrics(self) -> dict[str, float]:
        return dict(self._gigpo_metrics)
