"""Every authored AppWorld task, through the env: the solution scores 1.0, a no-op fails, and the
plausible wrong solution fails with the test it targets named (slow: ~3 episodes per task)."""

from __future__ import annotations

import json

import pytest

from agentgym.envs.appworld.env import AppWorldEnv
from agentgym.envs.appworld.workers import AppWorldPaths

PATHS = AppWorldPaths.default()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(PATHS.missing() is not None, reason=str(PATHS.missing()))]
TASK_IDS = sorted(p.name for p in (PATHS.root / "data" / "tasks").iterdir()) if PATHS.missing() is None else []


@pytest.fixture(scope="module")
def env():
    environment = AppWorldEnv(split="train", execution_timeout=20)
    yield environment
    environment.close()


def run(env: AppWorldEnv, task_id: str, code: str):
    env.reset(options={"task_id": task_id})
    _, reward, terminated, truncated, info = env.step(f"```python\n{code}\n```")
    return reward, terminated, info


@pytest.mark.parametrize("task_id", TASK_IDS)
def test_authored_task(env, task_id):
    gt = PATHS.root / "data" / "tasks" / task_id / "ground_truth"
    reward, terminated, info = run(env, task_id, (gt / "solution.py").read_text())
    assert (reward, terminated, info["success"]) == (1.0, True, True), info.get("failures")
    reward, terminated, info = run(env, task_id, "apis.supervisor.complete_task()")
    assert terminated and reward < 1.0 and not info["success"]
    wrong = json.loads((gt / "wrong.json").read_text())
    reward, terminated, info = run(env, task_id, wrong["code"])
    assert terminated and reward < 1.0 and wrong["fails"] in info["failures"], info["failures"]
