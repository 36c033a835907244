"""FSDP2 through accelerate, 2 processes on CPU (gloo): every learner, LoRA and full fine-tuning,
gives the same losses and (gathered) weights and teacher as one process on the union of the two
ranks' batches; a sharded run restarted from its update-1 checkpoint gives the same update-2 loss
and weights as the run that went on, and so does one process resuming that checkpoint.

One torchrun launch trains every case (the FSDP_* settings are what ``accelerate launch`` derives
from ``configs/accelerate/fsdp2_lora.yaml``); a second, fresh one resumes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed import cases

WORKER = Path(__file__).with_name("fsdp_worker.py")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(out: Path, mode: str, names: list[str]) -> None:
    env = {**os.environ, **cases.fsdp2_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cases.REPO),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_port()), str(WORKER), str(out), mode, ",".join(names)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=cases.REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _launch(tmp_path_factory, slow: bool) -> Path:
    out = tmp_path_factory.mktemp("fsdp2-slow" if slow else "fsdp2")
    train = [c for c in cases.CASES + cases.RESUME_CASES if (c in cases.SLOW) == slow]
    torchrun(out, "train", train)
    torchrun(out, "resume", [c for c in cases.RESUME_CASES if c in train])
    return out


@pytest.fixture(scope="module")
def sharded_fast(tmp_path_factory) -> Path:
    return _launch(tmp_path_factory, slow=False)


@pytest.fixture(scope="module")
def sharded_slow(tmp_path_factory) -> Path:
    return _launch(tmp_path_factory, slow=True)


@pytest.fixture
def sharded(request, case) -> Path:
    return request.getfixturevalue("sharded_slow" if case in cases.SLOW else "sharded_fast")


def _params(names):
    return [pytest.param(c, marks=pytest.mark.slow) if c in cases.SLOW else c for c in names]


def single(case: str, tokenizer, updates: int = cases.UPDATES):
    learner = cases.make(case, tokenizer)
    data = cases.batch(cases.union(tokenizer))
    losses = [learner.update(data)["loss"] for _ in range(updates)]
    return learner, losses


def _close(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for n in a:
        assert torch.allclose(a[n], b[n], **tol), (n, float((a[n] - b[n]).abs().max()))


@pytest.mark.parametrize("case", _params(cases.CASES))
def test_sharded_update_equals_one_process(case, sharded, tiny_tokenizer):
    got = torch.load(sharded / f"{case}.train.pt")
    assert got["world"] == 2
    learner, losses = single(case, tiny_tokenizer)
    assert got["losses"] == pytest.approx(losses, rel=2e-5, abs=1e-8) and losses[0] > 0
    start = cases.trainable(cases.build_model(case))
    weights = cases.trainable(learner.unwrapped)
    assert max(float((weights[n] - start[n]).abs().max()) for n in start) > 1e-4  # it trained (100x the tolerance)
    _close(got["weights"], weights, rtol=1e-4, atol=2e-6)
    if learner.teacher_weights is not None:
        teacher = {n: t.detach() for n, t in learner.teacher_weights.params.items()}
        _close(got["teacher"], teacher, rtol=1e-4, atol=2e-6)
        moved = max(float((teacher[n] - start[n]).abs().max()) for n in start)
        assert moved > 1e-4 if learner.settings.teacher != "fixed" else moved == 0.0


@pytest.mark.parametrize("case", _params(cases.RESUME_CASES))
def test_sharded_run_resumes_to_the_same_next_update(case, sharded, tiny_tokenizer):
    went_on = torch.load(sharded / f"{case}.train.pt")
    resumed = torch.load(sharded / f"{case}.resume.pt")
    assert len(resumed["losses"]) == 1 and went_on["losses"][1] != pytest.approx(went_on["losses"][0], rel=1e-5)
    assert resumed["losses"][0] == pytest.approx(went_on["losses"][1], rel=1e-6, abs=1e-9)
    _close(resumed["weights"], went_on["weights"], rtol=1e-6, atol=1e-7)
    _close(resumed["teacher"], went_on["teacher"], rtol=1e-6, atol=1e-7)
    # The sharded run's checkpoint is a one-process checkpoint too: one process resumes it to the same loss.
    from agentgym.checkpoint import resume_checkpoint
    learner = cases.make(case, tiny_tokenizer)
    found = resume_checkpoint(sharded / f"{case}-run", learner.engine, config_hash="test")
    assert found is not None and learner.updates == 1
    loss = learner.update(cases.batch(cases.union(tiny_tokenizer)))["loss"]
    assert loss == pytest.approx(resumed["losses"][0], rel=1e-4)


TRAINER = {
    "model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},
    "env": {"id": "agentgym/Echo-v0", "kwargs": {}, "tasks_per_update": 1, "group_size": 2, "max_steps": 2,
            "eval_task_ids": ["a", "b"]},
    "rollout": {"temperature": 1.0, "max_new_tokens": 4},
    "feedback": {"source": "immediate", "selector": "first_error"},
    "learner": {"name": "hint_sd", "lr": 1e-2, "topk": 16, "teacher_rate": 0.5},
    "train": {"updates": 2, "checkpoint_every": 1, "progress": False, "tensorboard": False},
}


@pytest.mark.slow
def test_trainer_runs_sharded_and_resumes(tmp_path):
    """The Trainer under accelerate's FSDP2 (2 processes): rollouts from the unsharded mirror, which
    equals the gathered weights on both ranks after every update; a second launch resumes the
    sharded checkpoint and trains the third update; the adapter is exported whole."""
    import json

    def launch(updates: int) -> list[dict]:
        cfg = {**TRAINER, "train": {**TRAINER["train"], "updates": updates}}
        env = {**os.environ, **cases.fsdp2_env(), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cases.REPO),
               "HF_HUB_OFFLINE": "1"}
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_port()), str(Path(__file__).with_name("trainer_worker.py")),
               str(tmp_path / "run"), json.dumps(cfg)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=cases.REPO)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return [json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1)]

    first = launch(2)
    assert [r["world"] for r in first] == [2, 2] and all(r["sharded"] and r["mirror_is_gathered"] for r in first)
    assert first[0]["digest"] == first[1]["digest"] and first[0]["updates"] == 2
    second = launch(3)
    assert any("resumed from step-2" in n for n in second[0]["notes"])
    assert all(r["mirror_is_gathered"] for r in second) and second[0]["digest"] == second[1]["digest"]
    assert second[0]["updates"] == 3 and second[0]["digest"] != first[0]["digest"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records if r["phase"] == "train"] == [0, 1, 2]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
