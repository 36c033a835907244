"""Anchor-level feedback (SERL): steps of one task group that start from the same state share it.

The state a step acted from is what the agent saw before it: the task for step 0, the previous
step's observation after that. States of a group are clustered greedily: identical text, or a
similarity ratio >= ``threshold`` (0.95) with a cluster's first state (``rapidfuzz.fuzz.ratio``
when installed, else ``difflib.SequenceMatcher.ratio``; both are the normalised Indel similarity).
For each step in a cluster with at least ``min_visits`` visits, the teacher text lists every
candidate action tried from that state: times tried, successes, mean / best / worst return
(return = the rewards from that step to the end of its episode).

>>> from agentgym.types import Step, Trajectory, Message
>>> def ep(action, ok):
...     return Trajectory(task_id="t", group_id="g", messages=[Message(role="user", content="Find the key")],
...                       steps=[Step(index=0, action_text=action, reward=float(ok), terminated=True)],
...                       final_reward=float(ok), success=ok)
>>> group = [ep("look", False), ep("open drawer", True), ep("open drawer", True)]
>>> fb = AnchorSource()(group[0], group)
>>> fb[0].payload["visits"], [c["action"] for c in fb[0].payload["candidates"]]
(3, ['open drawer', 'look'])
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Sequence

from agentgym.types import FeedbackKind, Trajectory

from agentgym.feedback.render import clip, task_text
from agentgym.feedback.base import FeedbackSource, groups_of

__all__ = ["AnchorSource", "similarity", "state_of", "cluster_states"]

try:  # the C++ implementation of the same ratio, much faster on long observations
    from rapidfuzz.fuzz import ratio as _rf_ratio
except ImportError:  # pragma: no cover - rapidfuzz comes with thefuzz
    _rf_ratio = None


def similarity(a: str, b: str) -> float:
    """Normalised Indel similarity in [0, 1] (1.0 for identical text)."""
    if a == b:
        return 1.0
    if _rf_ratio is not None:
        return _rf_ratio(a, b) / 100.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def state_of(trajectory: Trajectory, index: int) -> str:
    return task_text(trajectory, 20_000) if index == 0 else trajectory.steps[index - 1].observation


def cluster_states(states: Sequence[str], threshold: float = 0.95) -> list[int]:
    """Cluster id of each state (greedy, in order, against each cluster's first member)."""
    reps: list[str] = []
    exact: dict[str, int] = {}
    out = []
    for s in states:
        cid = exact.get(s)
        if cid is None:
            cid = next((i for i, r in enumerate(reps) if similarity(s, r) >= threshold), None)
            if cid is None:
                cid = len(reps)
                reps.append(s)
            exact[s] = cid
        out.append(cid)
    return out


@dataclass
class _Candidate:
    action: str
    returns: list[float] = field(default_factory=list)
    successes: int = 0


class AnchorSource(FeedbackSource):
    name = "anchor"

    def __init__(self, threshold: float = 0.95, min_visits: int = 2, action_chars: int = 300,
                 max_candidates: int = 20, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold, self.min_visits = threshold, min_visits
        self.action_chars, self.max_candidates = action_chars, max_candidates

    def _clusters(self, group: Sequence[Trajectory]):
        visits = [(ti, s.index) for ti, t in enumerate(group) for s in t.steps]
        ids = cluster_states([state_of(group[ti], si) for ti, si in visits], self.threshold)
        members: dict[int, list[tuple[int, int]]] = {}
        for v, cid in zip(visits, ids):
            members.setdefault(cid, []).append(v)
        return dict(zip(visits, ids)), members

    def __call__(self, trajectory, group=()):
        group = list(group)
        if not any(g is trajectory for g in group):
            group.append(trajectory)
        me = next(i for i, g in enumerate(group) if g is trajectory)
        where, members = self._clusters(group)
        out = []
        for step in trajectory.steps:
            cid = where[(me, step.index)]
            visits = members[cid]
            if len(visits) < self.min_visits:
                continue
            cands: dict[str, _Candidate] = {}
            for ti, si in visits:
                t = group[ti]
                action = " ".join(t.steps[si].action_text.split())
                c = cands.setdefault(action, _Candidate(action))
                c.returns.append(sum(s.reward for s in t.steps[si:]))
                c.successes += int(t.success)
            ranked = sorted(cands.values(), key=lambda c: (-c.successes / len(c.returns),
                                                           -sum(c.returns) / len(c.returns), c.action))
            rows = [{"action": clip(c.action, self.action_chars), "tried": len(c.returns), "successes": c.successes,
                     "mean": sum(c.returns) / len(c.returns), "best": max(c.returns), "worst": min(c.returns)}
                    for c in ranked[: self.max_candidates]]
            lines = "\n".join(self.prompts.anchor_candidate.format(**r) for r in rows)
            out.append(self._record(FeedbackKind.HINT, step.index, self.prompts.anchor.format(
                state=clip(state_of(trajectory, step.index), 1000), candidates=lines),
                {"anchor": cid, "visits": len(visits), "candidates": rows}))
        return out

    def annotate(self, trajectories):
        return [self(t, g) for t, g in zip(trajectories, groups_of(trajectories))]
