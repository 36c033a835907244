"""What a new user met with ``agentgym eval`` (issue 27's walk): ``RUN --model NAME`` evaluates NAME,
not the run's adapter; ``--split test --tasks all`` evaluates that split, not the demo's three task
ids; ``--seeds N`` with greedy decoding says that the seeds repeat; ``--compare`` pairs the reference
log-prob task by task as training does; the printed JSON carries ``reference_logprob``;
``agentgym data --help`` is help, not a usage error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import psutil

from agentgym.cli import main as cli_main
from agentgym.env import AgentEnv, EnvReply, EnvReset
from agentgym.evaluation import EvalSettings, _eval_config, compare_table, eval_main
from agentgym.presets import DEMO_EVAL_TASKS, cli_config
from agentgym.stats import estimate
from agentgym.tasks import task_lists
from agentgym.types import Message

# (env workers import this module to build StallEnv: its imports stay light, no torch)


class StallEnv(AgentEnv):
    """Two tasks: ``quick`` ends at its first step, ``stall``'s first step sleeps far past any deadline.
    Every reset records the process the env lives in."""

    def tasks(self) -> list[dict[str, Any]]:
        return [{"task_id": "quick"}, {"task_id": "stall"}]

    def _reset(self, options: dict[str, Any]) -> EnvReset:
        self._task = options.get("task_id", "quick")
        return EnvReset(messages=[Message(role="user", content="Say anything.")],
                        task={"id": self._task, "pid": os.getpid()})

    def _step(self, action: str) -> EnvReply:
        if self._task == "stall":
            time.sleep(30)
        return EnvReply(messages=[Message(role="user", content="Done.")], reward=1.0, terminated=True)


gym.register(id="agentgym-test/Stall-v0", entry_point=StallEnv)


def _run_folder(tmp_path: Path) -> Path:
    """A run folder of Echo with the tiny model whose adapter is unloadable: evaluating it would fail."""
    cfg, _, _ = cli_config(["--env.id", "agentgym/Echo-v0", "--model.name", "tiny"])
    run = tmp_path / "runs" / "echo-run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.resolved().model_dump(mode="json")))
    (run / "adapter" / "adapter_config.json").write_text("{not json")
    return run


def test_eval_of_a_run_with_model_evaluates_that_model_and_notes_greedy_seeds(tmp_path, capsys):
    run = _run_folder(tmp_path)
    before = sorted(p.name for p in run.rglob("*"))
    rc = eval_main([str(run), "--model", "tiny", "--seeds", "2", "--tasks", "1", "--out", str(tmp_path / "evals"),
                    "--name", "base", "--rollout.max_new_tokens", "4", "--train.progress", "false"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    printed = json.loads(out)
    assert printed["weights"] == "base model" and printed["model"] == "tiny-qwen2-chat"
    assert "reference_logprob" in printed and printed["reference_logprob"]["mean"] < 0  # Echo's references
    assert "--seeds 2 with greedy decoding" in err
    summary = json.loads((tmp_path / "evals" / "base" / "summary.json").read_text())
    assert any(n.startswith("--seeds 2 with greedy decoding") for n in summary["notes"])
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written into the run


def test_split_and_tasks_all_evaluate_that_split_not_the_demo_task_ids():
    cfg = _eval_config(EvalSettings(model="tiny", split="test", tasks="all"), [])
    _, evals, _ = task_lists(cfg)
    ids = {t["task_id"] for t in evals}
    assert len(ids) == 160 and not ids & set(DEMO_EVAL_TASKS)  # BFCL multi-turn's test split (HINT-SD's 160)
    cfg = _eval_config(EvalSettings(model="tiny"), [])  # no --split / --tasks: the preset's held-out tasks
    assert [t["task_id"] for t in task_lists(cfg)[1]] == DEMO_EVAL_TASKS


def test_compare_pairs_the_reference_logprob_by_task():
    """The same three tasks, each +0.1 (+-0.01) after: paired, the interval excludes 0; unpaired (Welch
    over tasks whose levels differ by 1.0) it would not."""
    before = {"t1": -3.0, "t2": -2.0, "t3": -1.0}
    after = {"t1": -2.89, "t2": -1.90, "t3": -0.91}

    def summary(ref):
        return {"env_id": "agentgym/Echo-v0", "reference_logprob": estimate(ref.values(), over="tasks").as_dict(),
                "reference_logprobs": ref}
    table = compare_table([("a", summary(before)), ("b", summary(after))])
    row = next(line for line in table.splitlines() if line.startswith("| reference log-prob"))
    diff = row.split("|")[-2].strip()
    assert diff.startswith("+0.100 ["), row
    low = float(diff.split("[")[1].split(",")[0])
    assert low > 0, row
    assert "paired by task" in table


def test_data_help_is_help(capsys):
    assert cli_main(["data", "--help"]) == 0
    assert "usage: agentgym data {webshop,alfworld,appworld}" in capsys.readouterr().out
    assert cli_main(["data"]) == 2  # no sub-command: still a usage error


def test_a_plugin_module_in_the_working_folder_imports_without_pythonpath(tmp_path):
    (tmp_path / "my_plugins.py").write_text("import gymnasium as gym\n"
                                            "gym.register(id='my/Env-v0', entry_point='agentgym.envs.echo.env:EchoEnv')\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "agentgym"), "train", "--help", "--env.id",
                           "my_plugins:my/Env-v0", "--model.name", "tiny"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "my_plugins:my/Env-v0" in proc.stdout


def test_eval_runs_its_episodes_in_env_workers_under_the_step_deadline(tmp_path, capsys):
    """``--env.workers 2 --env.step_timeout_s 1``: the episodes step in env worker processes (each
    reset records its process: a child of this one, not this one) and a step that stalls for 30 s is
    cut at the 1 s deadline, which truncates that episode with the cause (the other one succeeds)."""
    started = time.monotonic()
    rc = eval_main(["--model", "tiny", "--env.id", "agentgym-test/Stall-v0", "--task-ids", "quick,stall",
                    "--env.workers", "2", "--env.step_timeout_s", "1", "--rollout.max_new_tokens", "4",
                    "--train.progress", "false", "--out", str(tmp_path), "--name", "stall"])
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    trajs = {t["task_id"]: t for t in map(json.loads, (tmp_path / "stall" / "trajectories.jsonl").read_text().splitlines())}
    assert sorted(trajs) == ["quick", "stall"]
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    pids = {t["metadata"]["task"]["pid"] for t in trajs.values()}
    assert os.getpid() not in pids and pids <= children, (pids, children)
    assert trajs["quick"]["success"] and not trajs["quick"]["error"]
    stalled = [f for s in trajs["stall"]["steps"] for f in s["feedback"]]
    assert any(f["kind"] == "error" and f["payload"].get("type") == "step_timeout" for f in stalled), stalled
    assert trajs["stall"]["truncated"] and not trajs["stall"]["success"]
    assert seconds < 25, seconds  # the 30 s step never ran to its end
    summary = json.loads((tmp_path / "stall" / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["successes"] == 1
    assert summary["eval_kwargs"]["step_timeout_s"] == 1.0
