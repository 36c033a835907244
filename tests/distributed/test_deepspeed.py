"""DeepSpeed ZeRO-2 / ZeRO-3 through the shipped accelerate configs (GPU marker; skipped where
deepspeed is not installed: accelerate only selects DeepSpeed on accelerators, so nothing of it
runs on CPU). Each case's losses and weights equal a one-process run's on the same batch; under
ZeRO-3 a learner with a teacher is refused with the reason."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed import cases

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed "
                                 "(pip install deepspeed; it is not a dependency of agentgym)")]

ZERO2 = ["grpo-lora", "grpo-full", "hint_sd-lora", "serl-full"]
ZERO3 = ["grpo-lora", "gigpo-full", "hint_sd-lora"]


def _launch(config: str, out: Path, names: list[str]) -> None:
    n = max(1, min(2, torch.cuda.device_count()))
    env = {**os.environ, "PYTHONPATH": str(cases.REPO), "HF_HUB_OFFLINE": "1", "ACCELERATE_MIXED_PRECISION": "no"}
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           str(cases.CONFIGS / config), "--num_processes", str(n), "--mixed_precision", "no",
           str(Path(__file__).with_name("ds_worker.py")), str(out), ",".join(names)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=cases.REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize("config,names", [("deepspeed_zero2.yaml", ZERO2), ("deepspeed_zero3.yaml", ZERO3)])
def test_deepspeed_update_equals_one_process(config, names, tmp_path, tiny_tokenizer):
    _launch(config, tmp_path, names)
    for case in names:
        got = torch.load(tmp_path / f"{case}.pt")
        if "zero3" in config and case.startswith(("hint_sd", "dense_sd", "serl")):
            assert "not supported under DeepSpeed ZeRO-3" in got["refused"]
            continue
        learner = cases.make(case, tiny_tokenizer)
        data = cases.batch(cases.union(tiny_tokenizer))
        losses = [learner.update(data)["loss"] for _ in range(cases.UPDATES)]
        assert got["losses"] == pytest.approx(losses, rel=1e-3), case
        for n, p in learner.unwrapped.named_parameters():
            if p.requires_grad:
                assert torch.allclose(got["weights"][n], p.detach().cpu(), rtol=1e-3, atol=1e-5), (case, n)
