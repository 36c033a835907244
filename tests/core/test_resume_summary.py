"""A run killed (``kill -9``) after its first update and resumed reports what an uninterrupted run
reports: the trained task's reference log-prob *before training* (not recomputed from the
checkpoint's weights, which would shrink the gain) and seconds per update over every update, not
only the resumed process's."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from agentgym.config import load_config

CONFIG = {
    "model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},
    "env": {"id": "agentgym/Echo-v0", "kwargs": {"reference": True}, "group_size": 2, "eval_tasks": 1},
    "rollout": {"temperature": 1.0, "max_new_tokens": 4},
    "feedback": {"source": "reference_hindsight", "selector": "hindsight_multi"},
    "learner": {"name": "hint_sd", "lr": 5e-2, "topk": 20},
    "train": {"updates": 2, "checkpoint_every": 1, "progress": False, "deterministic": True, "tensorboard": False},
}
CHILD = r"""
import json, sys
from agentgym.config import load_config
from agentgym.trainer import Trainer
Trainer(load_config(["--train.run_dir", sys.argv[1]], base=json.loads(sys.argv[2]))).run()
"""


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_a_resumed_run_keeps_the_probe_before_training_and_every_update_time(tmp_path):
    from agentgym.trainer import Trainer
    whole = tmp_path / "whole"
    Trainer(load_config(["--train.run_dir", str(whole)], base=CONFIG)).run()
    expected = _summary(whole)
    assert expected["trained_reference_logprob_before"] is not None
    assert expected["trained_reference_logprob_after"] != expected["trained_reference_logprob_before"]

    run = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(run), json.dumps(CONFIG)],
                          env={**os.environ, "AGENTGYM_CRASH_AT": "rollout:1", "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    resumed = Trainer(load_config(["--train.run_dir", str(run)], base=CONFIG))
    resumed.run()
    assert resumed.start == 1
    got = _summary(run)
    assert got["trained_reference_logprob_before"] == expected["trained_reference_logprob_before"]
    assert got["trained_reference_logprob_after"] == expected["trained_reference_logprob_after"]
    train = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["phase"] == "train"]
    assert [r["update"] for r in train] == [0, 1]
    assert abs(got["seconds_per_update"] - sum(r["seconds"] for r in train) / 2) < 1e-9
