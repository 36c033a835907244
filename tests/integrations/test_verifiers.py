"""verifiers 0.4 runs an evaluation episode of BFCL multi-turn through ``agentgym.integrations.verifiers``:
its own machinery end to end (taskset loaded by id, ``load_environment``, ``serving()``, the null
harness's chat program in the subprocess runtime, its interception proxy) against a real
OpenAI-compatible server on 127.0.0.1 that answers each turn with the task's ground truth. The
env's reward and typed feedback reach the trace and equal the in-process env's on the same replies.
Runs in the optional ``.ci/trl`` job (its own ``.venv-trl``)."""

from __future__ import annotations

import asyncio
import os

import pytest

if os.environ.get("AGENTGYM_REQUIRE_TRL") != "1":
    pytest.importorskip("verifiers.v1", reason="optional job .ci/trl (scripts/setup_trl.sh builds .venv-trl)")

import gymnasium as gym  # noqa: E402

import agentgym  # noqa: E402,F401
from agentgym.envs.bfcl.data import get_entry  # noqa: E402
from agentgym.testing.openai_server import Reply, ScriptedOpenAIServer  # noqa: E402
from agentgym.types import Feedback  # noqa: E402

TASK = "multi_turn_base_0"


def test_verifiers_evaluation_episode_on_bfcl_multi_turn(monkeypatch):
    import verifiers
    from verifiers.v1.clients import ModelContext
    from verifiers.v1.configs.client import EvalClientConfig
    from verifiers.v1.harnesses.null import NullHarnessConfig
    from verifiers.v1.runtimes import SubprocessConfig
    from verifiers.v1.utils.loaders import load_environment

    import agentgym.integrations.verifiers as agv

    assert verifiers.__version__ == "0.4.0"
    replies = []
    for calls in get_entry(TASK).ground_truth:
        replies += ["[" + ", ".join(calls) + "]", "Done."]

    def responder(body):  # the k-th assistant turn of the conversation gets the k-th scripted reply
        k = sum(1 for m in body["messages"] if m.get("role") == "assistant")
        return Reply(content=replies[k] if k < len(replies) else "Done.")

    monkeypatch.setenv("AGENTGYM_TEST_KEY", "unused")
    config = agv.env_config("agentgym/BFCLMultiTurn-v0", split="all", tasks=[{"task_id": TASK}])
    player = config.player  # the adapter's default agent: a plain chat loop, local subprocess runtime
    assert isinstance(player.harness, NullHarnessConfig) and isinstance(player.runtime, SubprocessConfig)
    env = load_environment(config)
    [task] = list(env.taskset)
    assert task.data.name == TASK and task.data.system_prompt and task.data.info["options"] == {"task_id": TASK}

    async def evaluate():
        with ScriptedOpenAIServer(responder=responder) as server:
            ctx = ModelContext(model="scripted", client=EvalClientConfig(base_url=server.base_url,
                                                                          api_key_var="AGENTGYM_TEST_KEY"))
            async with env.serving():
                [slot] = env.slots(task, 1)

                async def on_complete(episode):
                    pass

                return await env.run_slot(slot, ctx, None, on_complete)

    episode = asyncio.run(evaluate())
    assert episode.ok, episode.errors
    [trace] = episode.traces
    assert trace.rewards["env_reward"].score == 1.0
    assert trace.info["agentgym_task_id"] == TASK and trace.info["agentgym_success"] is True
    assert trace.info["agentgym_steps"] == len(replies) and trace.info["agentgym_truncated"] is False

    local = gym.make("agentgym/BFCLMultiTurn-v0", split="all")
    local.reset(seed=0, options={"task_id": TASK})
    expected, reward = [], 0.0
    for text in replies:
        _, r, terminated, truncated, info = local.step(text)
        reward += r
        expected += info["feedback"]
    local.close()
    assert reward == 1.0 and terminated
    assert [Feedback.model_validate(f) for f in trace.info["agentgym_feedback"]] == expected
