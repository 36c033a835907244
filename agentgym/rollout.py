"""The rollout loop: N tasks x G group members against any registered env, generation batched
across live episodes, token-exact steps, trajectories streamed to a JSON Lines store.

Token bookkeeping (token-level policies, see ``agentgym.agents.chat``): the first context of an
episode is the chat template's rendering of the env's first messages; every later context is the
previous context + the sampled action ids + the tokenization of ONLY the new environment messages
(``ChatRenderer.continue_ids``). A past action is never decoded and re-tokenized, so
``steps[t + 1].prompt_ids`` starts with ``steps[t].prompt_ids + steps[t].action_ids`` and
``episode_tokens`` can lay the whole episode out as one sequence with an exact policy-token mask.

Group members of a task get the same reset seed and options, hence identical start states.
Sampling, though, is seeded per request: the conversation of (task, member) at step ``t`` is
generated with ``request_seed(sampling.seed, seed, task, member, t)`` (a stable hash), passed to a
policy whose ``generate`` takes ``seeds=``. So the steps of an episode and the members of a group
draw independent samples, and a run's samples depend only on those numbers - not on which episodes
share a batch, ``max_concurrent``, a resumed run's skipped episodes or the process's RNG state.
Envs are built with ``agentgym.wrappers.make`` (a plain gymnasium env gets a step deadline, a step
limit and errors turned into truncation). An env that raises is closed and its episode recorded as
truncated with the error; the run goes on. With ``workers=N`` (``env.workers``) the envs live in N
worker processes (``agentgym.envpool``) and generation overlaps their steps; a worker that dies
truncates its episodes with the cause. In-process envs (``workers=0``) are kept for the next run
with the same id and kwargs (``agentgym.envshelf``; ``keep_envs=False`` closes them instead).
A policy that raises (a permanent API error, say) stops the run: finished episodes are already in
the store.

>>> import agentgym
>>> from agentgym.agents.scripted import ScriptedPolicy
>>> trajs = rollout(ScriptedPolicy(lambda conv: "apple"), "agentgym/Echo-v0",
...                 tasks=[{"word": "apple"}], group_size=2, progress=False)
>>> [t.success for t in trajs], trajs[0].group_id == trajs[1].group_id
([True, True], True)
"""

from __future__ import annotations

import inspect
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
from tqdm.auto import tqdm

from agentgym.agents.base import derive_seed  # a core import of a plugin folder: see issue #25 item 1 (one seed function)
from agentgym.envpool import EnvPool, shared_pool
from agentgym.envshelf import RunEnvs, close_idle_envs, idle_envs
from agentgym.store import TrajectoryStore, read_trajectories
from agentgym.types import EpisodeTokens, Feedback, Message, Step, Trajectory, episode_tokens, json_safe

RESET = "reset"  # the ``where`` of an episode whose env failed to reset (its error starts with it)


def failed_at_reset(trajectory: Trajectory) -> bool:
    """Whether the episode never started: its env (or the env's data) failed at reset."""
    return bool(trajectory.error) and trajectory.error.startswith(f"{RESET}:")


def request_seed(sampling_seed: int | None, seed: int, task_index: int, member: int, step: int) -> int | None:
    """The seed of one generation request of a rollout: the sampling seed (the trainer's is one per
    run seed, update, rank and phase), the runner's reset seed, the task's index, the group member
    and the step. ``None`` when sampling is unseeded."""
    if sampling_seed is None:
        return None
    return derive_seed("rollout", sampling_seed, seed, task_index, member, step)


def takes_seeds(policy: Any) -> bool:
    """Whether ``policy.generate`` has a ``seeds`` parameter (backends written before it have not;
    they get the call they always got)."""
    try:
        return "seeds" in inspect.signature(policy.generate).parameters
    except (TypeError, ValueError):
        return False


__all__ = ["failed_at_reset", "request_seed", "takes_seeds", "rollout", "RolloutRunner", "RolloutStats",
           "EpisodeTokens", "episode_tokens", "close_idle_envs", "idle_envs"]

_STANDARD_INFO = {"feedback", "messages", "new_messages", "tools", "step", "task"}


@dataclass
class RolloutStats:
    """Wall-clock accounting of a run (seconds), for benchmarks and logs."""

    episodes: int = 0
    steps: int = 0
    generate_calls: int = 0
    policy_seconds: float = 0.0
    env_seconds: float = 0.0
    total_seconds: float = 0.0
    env_errors: int = 0
    workers: int = 0  # env worker processes (0: envs stepped in this process)
    env_wait_seconds: float = 0.0  # with workers: time the loop waited for env replies, nothing to generate
    worker_respawns: int = 0

    @property
    def overhead_seconds(self) -> float:
        """Time spent in the framework itself: neither generating nor stepping envs (with workers:
        nor waiting for them; ``env_seconds`` then sums the workers' own env time, which overlaps
        generation)."""
        env = self.env_wait_seconds if self.workers else self.env_seconds
        return max(0.0, self.total_seconds - self.policy_seconds - env)


@dataclass
class _Episode:
    task_index: int
    member: int
    seed: int
    options: dict[str, Any]
    group_id: str
    env: Any = None
    started: float = 0.0
    messages: list[Message] = field(default_factory=list)
    history: list[Message] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    task: dict[str, Any] = field(default_factory=dict)
    prompt_ids: list[int] | None = None
    steps: list[Step] = field(default_factory=list)
    worker: int | None = None  # the env worker holding this episode's env (pool runs)
    pool_key: str = ""  # its name in the pool: unique per run, so a late reply of an aborted run never matches
    gen: Any = None  # the generation whose env step is in flight (pool runs)

    @property
    def key(self) -> str:
        return f"{self.task_index}:{self.member}"


class RolloutRunner:
    """Runs episodes; ``run()`` returns the trajectories sorted by (task, member).

    ``workers``: 0 (default) steps the envs in this process, one generation batch then one env step
    per live episode; N > 0 runs them in N spawned env worker processes (``agentgym.envpool``; the
    process-wide pool for this env id, kwargs and N, kept for the next run; or an ``EnvPool`` given
    here), generation overlapping the env steps of other episodes. The trajectories are the same
    either way for a seeded policy (request seeds never depend on batching); a dead worker's
    episodes are truncated with the cause. ``keep_envs`` (default True): in-process envs outlive the
    run (``agentgym.envshelf``), so a later run with the same env id and kwargs resets them.
    """

    def __init__(self, policy: Any, env_id: str, tasks: Sequence[dict[str, Any] | None] | int, *,
                 group_size: int = 1, sampling: Any = None, env_kwargs: dict[str, Any] | None = None,
                 seed: int = 0, max_steps: int | None = None, max_episode_seconds: float | None = None,
                 max_concurrent: int = 64, store: str | Path | TrajectoryStore | None = None,
                 resume: bool = False, progress: bool = True, run_id: str | None = None,
                 workers: "int | Any" = 0, keep_envs: bool = True):
        if isinstance(tasks, int):
            tasks = [None] * tasks
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if env_id.rpartition(":")[2] not in gym.registry:  # gymnasium's module:Env-v0 form names its module
            raise gym.error.NameNotFound(f"environment {env_id!r} is not registered; known agentgym ids: "
                                         f"{sorted(k for k in gym.registry if k.startswith('agentgym/'))}")
        self.policy, self.env_id, self.tasks = policy, env_id, [dict(t or {}) for t in tasks]
        self.group_size, self.seed = group_size, seed
        self.sampling = sampling
        self.env_kwargs = dict(env_kwargs or {})
        self.max_steps, self.max_episode_seconds = max_steps, max_episode_seconds
        self.max_concurrent, self.progress = max_concurrent, progress
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self._own_store = store is not None and not isinstance(store, TrajectoryStore)
        self._done_keys: set[str] = set()
        if resume and store is not None:
            path = store.path if isinstance(store, TrajectoryStore) else Path(store)
            if path.is_file():
                self._done_keys = {t.episode for t in read_trajectories(path) if t.run_id == self.run_id}
        self.store = TrajectoryStore(store) if self._own_store else store
        self.stats = RolloutStats()
        self._envs = RunEnvs(env_id, self.env_kwargs, keep=keep_envs)
        self._token_level = bool(getattr(policy, "token_level", False))
        self._takes_seeds = takes_seeds(policy)
        if not isinstance(workers, EnvPool) and (isinstance(workers, bool) or not isinstance(workers, int)
                                                 or workers < 0):
            raise ValueError(f"workers must be an int >= 0 or an EnvPool, got {workers!r}")
        if isinstance(workers, EnvPool) and workers.env_id != env_id:
            raise ValueError(f"the env pool runs {workers.env_id!r}, not {env_id!r}")
        self.workers = workers  # 0: envs step in this process; N: an EnvPool of N processes
        self.pool: EnvPool | None = None
        self.stats.workers = len(workers) if isinstance(workers, EnvPool) else workers

    # ------------------------------------------------------------------ episode lifecycle
    def _start(self, ep: _Episode) -> Trajectory | None:
        ep.started = time.perf_counter()
        t0 = time.perf_counter()
        try:
            ep.env = self._envs.take()
            _, info = ep.env.reset(seed=ep.seed, options=dict(ep.options))
        except Exception as exc:  # an env (or its data) failed: record it, go on
            self.stats.env_seconds += time.perf_counter() - t0
            return self._fail(ep, exc, RESET)
        self.stats.env_seconds += time.perf_counter() - t0
        return self._begin(ep, info)

    def _begin(self, ep: _Episode, info: dict[str, Any]) -> Trajectory | None:
        """The episode's first context from its env's reset info."""
        try:
            ep.messages = [m if isinstance(m, Message) else Message(**m) for m in info["messages"]]
            ep.history = list(ep.messages)
            ep.tools = list(info.get("tools") or [])
            ep.task = dict(info.get("task") or {})
            if self._token_level:
                ep.prompt_ids = self.policy.renderer.prompt_ids(ep.messages, ep.tools or None)
        except Exception as exc:  # an env whose reset info cannot be used, or a template that fails
            return self._fail(ep, exc, RESET)
        return None

    def _fail(self, ep: _Episode, exc: BaseException, where: str) -> Trajectory:
        self.stats.env_errors += 1
        if self.pool is not None:
            self.pool.close_env(ep.pool_key)  # a no-op when the worker already dropped it (or died)
            ep.env = None
        if ep.env is not None:
            try:
                ep.env.close()
            except Exception:  # closing a broken env must not stop the run either
                pass
            ep.env = None
        # An env that failed inside a worker comes back by name, message and traceback.
        error = f"{where}: {getattr(exc, 'type_name', type(exc).__name__)}: {exc}"
        detail = getattr(exc, "remote_traceback", None) or "".join(traceback.format_exception(exc, limit=-3))
        return self._finish(ep, terminated=False, truncated=True, error=error, detail=detail)

    def _finish(self, ep: _Episode, *, terminated: bool, truncated: bool, error: str | None = None,
                detail: str | None = None) -> Trajectory:
        if self.pool is not None:
            self.pool.release(ep.pool_key)  # the worker keeps the env for its next episode
        elif ep.env is not None:
            self._envs.give_back(ep.env)  # healthy envs are reused
        ep.env = None
        final = sum(s.reward for s in ep.steps)
        last_info = ep.steps[-1].info if ep.steps else {}
        success = bool(last_info["success"]) if isinstance(last_info.get("success"), bool) else final >= 1.0
        meta = {"options": json_safe(ep.options), "task": json_safe(ep.task),
                "tools": json_safe(ep.tools), "policy": getattr(self.policy, "name", type(self.policy).__name__),
                "seconds": round(time.perf_counter() - ep.started, 6)}
        if detail:
            meta["traceback"] = detail
        if self.pool is not None and ep.worker is not None:
            meta["env_worker"] = ep.worker
        traj = Trajectory(task_id=str(ep.task.get("id") or ep.options.get("task_id") or f"task-{ep.task_index}"),
                          group_id=ep.group_id, env_id=self.env_id, messages=ep.messages, steps=ep.steps,
                          final_reward=final, success=success and error is None, terminated=terminated,
                          truncated=truncated, error=error, run_id=self.run_id, episode=ep.key,
                          task_index=ep.task_index, member=ep.member, seed=ep.seed, metadata=meta)
        if self.store is not None:
            self.store.append(traj)
        self.stats.episodes += 1
        return traj

    def _step(self, ep: _Episode, gen: Any) -> Trajectory | None:
        t0 = time.perf_counter()
        try:
            result = ep.env.step(gen.text)
        except Exception as exc:
            self.stats.env_seconds += time.perf_counter() - t0
            return self._step_failed(ep, gen, exc)
        self.stats.env_seconds += time.perf_counter() - t0
        return self._after_step(ep, gen, result)

    def _step_failed(self, ep: _Episode, gen: Any, exc: BaseException) -> Trajectory:
        index = len(ep.steps)
        name = getattr(exc, "type_name", type(exc).__name__)
        ep.steps.append(self._record(ep, index, gen, "", [], [], 0.0, False, True, {"error": f"{name}: {exc}"}))
        return self._fail(ep, exc, f"step {index}")

    def _after_step(self, ep: _Episode, gen: Any, result: tuple) -> Trajectory | None:
        index = len(ep.steps)
        obs, reward, terminated, truncated, info = result
        self.stats.steps += 1
        new = [m if isinstance(m, Message) else Message(**m) for m in info.get("new_messages", [])]
        feedback = [f if isinstance(f, Feedback) else Feedback(**f) for f in info.get("feedback", [])]
        extra = {k: v for k, v in info.items() if k not in _STANDARD_INFO}
        if not (terminated or truncated) and self.max_steps is not None and index + 1 >= self.max_steps:
            truncated = True
            extra["truncated_by"] = f"rollout max_steps={self.max_steps}"
        ep.steps.append(self._record(ep, index, gen, obs, new, feedback, reward, terminated, truncated, extra))
        if terminated or truncated:
            # An env that aborted the step (exception or deadline, see AgentEnv) names the cause.
            cause = info.get("step_error") if truncated else None
            return self._finish(ep, terminated=bool(terminated), truncated=bool(truncated),
                                error=f"step {index}: {cause}" if isinstance(cause, str) else None)
        ep.history = [m if isinstance(m, Message) else Message(**m) for m in info.get("messages", ep.history)]
        if self._token_level:
            try:
                ep.prompt_ids = self.policy.renderer.continue_ids(
                    ep.prompt_ids + gen.token_ids, gen.token_ids, new, ep.tools or None)
            except Exception as exc:  # e.g. a template that cannot render this env's messages
                return self._fail(ep, exc, f"render after step {index}")
        return None

    def _record(self, ep, index, gen, obs, new, feedback, reward, terminated, truncated, extra) -> Step:
        info = dict(json_safe(extra))
        info["finish_reason"] = gen.finish_reason
        for key in ("policy_version", "server"):  # which weights (and which server) sampled it
            if key in gen.info:
                info[key] = gen.info[key]
        if gen.tool_calls:
            info["tool_calls"] = [json_safe(c) for c in gen.tool_calls]
        token_level = self._token_level and gen.token_ids
        if not token_level and gen.logprobs:  # API log-probs without ids stay with their token strings
            info["logprobs"] = list(gen.logprobs)
            if "tokens" in gen.info:
                info["tokens"] = list(gen.info["tokens"])
        return Step(index=index, prompt_ids=list(ep.prompt_ids or []), action_ids=list(gen.token_ids),
                    action_logprobs=list(gen.logprobs) if token_level else [], action_text=gen.text,
                    observation=obs, reply=new, feedback=feedback, reward=float(reward),
                    terminated=bool(terminated), truncated=bool(truncated), info=info)

    def _request_seed(self, ep: _Episode) -> int | None:
        return request_seed(getattr(self.sampling, "seed", None), self.seed, ep.task_index, ep.member,
                            len(ep.steps))

    def env_worker(self, episode: str) -> int | None:
        """The env worker holding episode ``"task:member"``'s env now (pool runs; None otherwise)."""
        pool = self.pool
        if pool is None:
            return None
        return next((pool.worker_of(k) for k in list(pool._where) if k.endswith(f"/{episode}")), None)

    # ------------------------------------------------------------------ the loop
    def run(self) -> list[Trajectory]:
        started = time.perf_counter()
        pending = deque(
            _Episode(task_index=i, member=g, seed=self.seed + i, options=opts,
                     group_id=f"{self.run_id}/{i}")
            for i, opts in enumerate(self.tasks) for g in range(self.group_size)
            if f"{i}:{g}" not in self._done_keys)
        done: list[Trajectory] = []
        live: list[_Episode] = []
        self._steps_at_start = self.stats.steps
        bar = tqdm(total=len(pending), disable=not self.progress, desc=self.env_id, unit="ep")
        try:
            if self.workers:
                self._run_pool(pending, done, live, bar)
            else:
                self._run_local(pending, done, live, bar)
            self._postfix(bar, done, len(live))  # the last replies of a pool run come after its last batch
        finally:
            bar.close()
            for ep in live:  # the run is being aborted: release envs of in-flight episodes
                if self.pool is not None:
                    self.pool.close_env(ep.pool_key)
                elif ep.env is not None:
                    ep.env.close()
            self._envs.end_run()
            self.pool = None  # a shared or given pool stays open for the next run
            if self._own_store:
                self.store.close()
            self.stats.total_seconds += time.perf_counter() - started
        return sorted(done, key=lambda t: (t.task_index, t.member))

    def _generate(self, eps: list[_Episode]) -> list[Any]:
        t0 = time.perf_counter()
        extra = {"seeds": [self._request_seed(ep) for ep in eps]} if self._takes_seeds else {}
        gens = self.policy.generate(
            [ep.history for ep in eps], [ep.tools or None for ep in eps], self.sampling,
            prompt_ids=[ep.prompt_ids for ep in eps] if self._token_level else None, **extra)
        self.stats.policy_seconds += time.perf_counter() - t0
        self.stats.generate_calls += 1
        if len(gens) != len(eps):
            raise ValueError(f"policy {getattr(self.policy, 'name', self.policy)!r} returned {len(gens)} "
                             f"generations for {len(eps)} conversations")
        return gens

    def _timed_out(self, eps: list[_Episode]) -> list[tuple[_Episode, Trajectory]]:
        """The episodes of ``eps`` past ``max_episode_seconds``, each finished (truncated, with the cause)."""
        if self.max_episode_seconds is None:
            return []
        now = time.perf_counter()
        return [(ep, self._finish(ep, terminated=False, truncated=True,
                                  error=f"time limit: episode ran {now - ep.started:.1f}s "
                                        f"> max_episode_seconds={self.max_episode_seconds}"))
                for ep in [e for e in eps if now - e.started > self.max_episode_seconds]]

    def _postfix(self, bar: Any, done: list[Trajectory], live: int) -> None:
        """Shown after every batch of env steps, so the bar moves while episodes run: its count is
        finished episodes, ``steps`` the env steps taken so far in this run."""
        shown: dict[str, Any] = {"steps": self.stats.steps - self._steps_at_start, "live": live}
        if done:
            shown["reward"] = f"{sum(t.final_reward for t in done) / len(done):.3f}"
        bar.set_postfix(shown)  # refreshes the line now (set_postfix's refresh=True)

    def _run_local(self, pending: deque, done: list[Trajectory], live: list[_Episode], bar: Any) -> None:
        """Envs in this process: generate for every live episode, then step each."""
        while pending or live:
            while pending and len(live) < self.max_concurrent:
                ep = pending.popleft()
                failed = self._start(ep)
                if failed is not None:
                    done.append(failed)
                    bar.update(1)
                else:
                    live.append(ep)
            if not live:
                continue
            for ep, traj in self._timed_out(live):
                live.remove(ep)
                done.append(traj)
                bar.update(1)
            if not live:
                continue
            gens = self._generate(live)
            still = []
            for ep, gen in zip(live, gens, strict=True):
                finished = self._step(ep, gen)
                if finished is None:
                    still.append(ep)
                else:
                    done.append(finished)
                    bar.update(1)
            live[:] = still
            self._postfix(bar, done, len(live))

    def _run_pool(self, pending: deque, done: list[Trajectory], live: list[_Episode], bar: Any) -> None:
        """Envs in worker processes. Resets and steps are sent without waiting; the loop generates
        for every episode whose env has replied while the others step, so generation and env steps
        overlap (a slow policy gets large batches: replies pile up while it generates)."""
        self.pool = self.workers if isinstance(self.workers, EnvPool) else shared_pool(
            self.env_id, self.env_kwargs, self.workers)
        respawns_before = self.pool.respawns
        try:
            self._pool_loop(pending, done, live, bar)
        finally:
            self.stats.worker_respawns += self.pool.respawns - respawns_before

    def _pool_reply(self, ep: _Episode, event: Any) -> Trajectory | None:
        """Take in the env worker's reply for ``ep``: the episode's trajectory when it ended, else None."""
        self.stats.env_seconds += event.seconds
        gen, ep.gen = ep.gen, None
        if event.op == "reset":
            return self._begin(ep, event.value[1]) if event.ok else self._fail(ep, event.value, RESET)
        if event.ok:
            return self._after_step(ep, gen, event.value)
        if gen is not None:
            return self._step_failed(ep, gen, event.value)
        return self._fail(ep, event.value, f"step {len(ep.steps)}")  # its worker died while it waited for the policy

    def _pool_loop(self, pending: deque, done: list[Trajectory], live: list[_Episode], bar: Any) -> None:
        by_key: dict[str, _Episode] = {}  # pool key -> episode
        ready: list[_Episode] = []  # env replied: waiting for the policy
        tag = uuid.uuid4().hex[:8]

        def end(ep: _Episode, traj: Trajectory) -> None:
            by_key.pop(ep.pool_key, None)
            live.remove(ep)
            if ep in ready:
                ready.remove(ep)
            done.append(traj)
            bar.update(1)

        while pending or live:
            while pending and len(live) < self.max_concurrent:
                ep = pending.popleft()
                ep.started = time.perf_counter()
                ep.pool_key = f"{tag}/{ep.key}"
                by_key[ep.pool_key] = ep
                live.append(ep)
                self.pool.reset(ep.pool_key, ep.seed, dict(ep.options))
                ep.worker = self.pool.worker_of(ep.pool_key)
            t0 = time.perf_counter()
            events = self.pool.poll(timeout=0 if ready else None)
            if not ready:
                self.stats.env_wait_seconds += time.perf_counter() - t0
            for event in events:
                ep = by_key.get(event.key)
                if ep is None:  # its episode already ended (in this batch, or in an aborted run)
                    continue
                failed = self._pool_reply(ep, event)
                if failed is not None:
                    end(ep, failed)
                elif ep not in ready:
                    ready.append(ep)
            for ep, traj in self._timed_out(ready):
                end(ep, traj)
            if not ready:
                continue
            batch, ready[:] = list(ready), []
            gens = self._generate(batch)
            for ep, gen in zip(batch, gens, strict=True):
                if ep.pool_key not in by_key:
                    continue
                ep.gen = gen
                self.pool.step(ep.pool_key, gen.text)
            self._postfix(bar, done, len(live))


def rollout(policy: Any, env_id: str, tasks: Sequence[dict[str, Any] | None] | int, **kwargs: Any) -> list[Trajectory]:
    """Run N tasks x ``group_size`` episodes (see ``RolloutRunner`` for the options)."""
    return RolloutRunner(policy, env_id, tasks, **kwargs).run()
