"""The training loop end to end on the Echo env with the tiny model: run folder contract, resume
after a stop gives the same next update, and a 2-process (gloo DDP) run keeps ranks identical."""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentgym.config import load_config

REPO = Path(__file__).resolve().parents[2]

ECHO = {
    "model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},
    "env": {"id": "agentgym/Echo-v0", "kwargs": {}, "tasks_per_update": 1, "group_size": 2, "max_steps": 3,
            "eval_task_ids": ["a", "b"]},
    "rollout": {"temperature": 1.0, "max_new_tokens": 6},
    "feedback": {"source": "immediate", "selector": "first_error"},
    "learner": {"name": "hint_sd", "lr": 1e-2, "topk": 20},
    "train": {"updates": 2, "checkpoint_every": 1, "progress": False, "deterministic": True},
}


def _trainer(run_dir, *overrides):
    from agentgym.trainer import Trainer
    cfg = load_config(["--train.run_dir", str(run_dir), *overrides], base=ECHO)
    return Trainer(cfg)


def _weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.learner.unwrapped.named_parameters() if p.requires_grad}


def _metrics(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _check_run_folder(tmp_path, summary, updates):
    from agentgym.store import read_trajectories
    assert set(summary) >= {"env_id", "learner", "model", "success_before", "success_after", "updates",
                            "seconds_per_update", "hindsight_source", "notes"}
    assert json.loads((tmp_path / "summary.json").read_text())["updates"] == updates
    assert json.loads((tmp_path / "config.json").read_text())["learner"]["teacher"] == "ema"  # resolved
    metrics = _metrics(tmp_path)
    assert [(m["phase"], m["update"]) for m in metrics] == (
        [("eval", 0)] + [("train", k) for k in range(updates)] + [("eval", updates)])
    for m in metrics:
        if m["phase"] == "train":
            assert {"time", "seconds", "success_rate", "reward_mean", "loss", "distilled_token_fraction",
                    "teacher_calls", "teacher_tokens", "num_targets", "empty_batches",
                    "unparsable_hindsight"} <= set(m)
            assert m["num_targets"] > 0 and m["loss"] > 0  # failing echoes get first-error targets
    trajs = list(read_trajectories(tmp_path / "trajectories.jsonl"))
    assert {t.phase for t in trajs} == {"train", "eval"}
    train = [t for t in trajs if t.phase == "train"]
    assert all(t.learner == "hint_sd" and t.update is not None for t in train)
    assert any(t.targets and t.targets[0].hint for t in train)
    ckpt = tmp_path / "checkpoints" / f"step-{updates}"
    assert {"model", "optimizer.safetensors", "teacher.safetensors", "schedule.safetensors", "rng.safetensors", "state.json"} <= {p.name for p in ckpt.iterdir()}
    assert json.loads((ckpt / "state.json").read_text())["step"] == updates
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_run_folder_contract_and_resume_gives_the_same_next_update(tmp_path):
    full = _trainer(tmp_path / "full", "--train.updates", "3")
    _check_run_folder(tmp_path / "full", full.run(), 3)
    # The interrupted run stops after update 2 (checkpoint step-2) ...
    _trainer(tmp_path / "cut", "--train.updates", "2").run()
    torch.manual_seed(12345)  # ... the process state is disturbed ...
    random.seed(12345)
    resumed = _trainer(tmp_path / "cut", "--train.updates", "3")
    resumed.run()  # ... and a fresh trainer resumes from the checkpoint.
    assert resumed.start == 2 and any("resumed from step-2" in n for n in resumed.notes)
    loss_full = [m["loss"] for m in _metrics(tmp_path / "full") if m["phase"] == "train" and m["update"] == 2]
    loss_cut = [m["loss"] for m in _metrics(tmp_path / "cut") if m["phase"] == "train" and m["update"] == 2]
    assert loss_full == loss_cut and loss_full[0] > 0
    wf, wr = _weights(full), _weights(resumed)
    assert all(torch.equal(wf[n], wr[n]) for n in wf)
    tf, tr = full.learner.teacher_weights.params, resumed.learner.teacher_weights.params
    assert all(torch.equal(tf[n], tr[n]) for n in tf)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    _trainer(tmp_path, "--train.updates", "1").run()
    with pytest.raises(ValueError, match="different configuration"):
        _trainer(tmp_path, "--train.updates", "2", "--learner.lr", "0.5").run()


WORKER = r'''
import json, sys, torch, torch.distributed as dist
from agentgym.config import load_config
from agentgym.trainer import Trainer
base = json.loads(sys.argv[2])
cfg = load_config(["--train.run_dir", sys.argv[1]], base=base)
t = Trainer(cfg)
init = {n: p.detach().clone() for n, p in t.learner.unwrapped.named_parameters() if p.requires_grad}
summary = t.run()
w = {n: p.detach() for n, p in t.learner.unwrapped.named_parameters() if p.requires_grad}
flat = torch.cat([v.flatten() for v in w.values()])
changed = max(float((w[n] - init[n]).abs().max()) for n in w)
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, {"rank": dist.get_rank(), "sum": float(flat.double().sum()),
                                  "bytes": flat.numpy().tobytes().hex(), "changed": changed,
                                  "world": t.world, "episodes": sum(1 for _ in open(sys.argv[1] + "/trajectories.jsonl"))})
if dist.get_rank() == 0:
    with open(sys.argv[1] + "/ranks.json", "w") as f:
        json.dump(gathered, f)
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    base = json.loads(json.dumps(ECHO))
    # Every rank rolls out different episodes (its own tasks and sampling seeds), so the local
    # gradients differ; only the all-reduce keeps the weights equal.
    base["train"]["deterministic"] = False
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path / "run"), json.dumps(base)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = json.loads((tmp_path / "run" / "ranks.json").read_text())
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["bytes"] == ranks[1]["bytes"]  # bitwise identical weights on both ranks
    assert all(r["changed"] > 0 for r in ranks)  # and they did train
    assert (tmp_path / "run" / "trajectories.rank1.jsonl").is_file()


def test_bench_command_lists_and_rejects_unknown_names(capsys):
    from agentgym.bench import main
    assert main([]) == 2 and "learners" in capsys.readouterr().out
    assert main(["no-such-benchmark"]) == 2 and "unknown benchmark" in capsys.readouterr().err


@pytest.mark.slow
def test_main_job_cli_on_bfcl_with_the_tiny_model(tmp_path):
    """`agentgym train` (the demo preset) end to end on BFCL, with the tiny model for speed."""
    run = tmp_path / "demo"
    proc = subprocess.run([str(Path(sys.executable).with_name("agentgym")), "train", "--model.name", "tiny",
                           "--train.run_dir", str(run), "--train.progress", "false"],
                          capture_output=True, text=True, timeout=1200, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["learner"] == "hint_sd" and summary["hindsight_source"] == "reference_hindsight"
    assert summary["success_before"] is not None and summary["success_after"] is not None
    assert any("reference_hindsight" in n for n in summary["notes"])
    train = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert len(train) == 2 and all(m["num_targets"] > 0 and m["loss"] > 0 for m in train)
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.vllm
def test_training_with_vllm_rollouts_keeps_the_engine_in_sync(tmp_path):
    """backend=vllm: after every update the LoRA adapter is pushed into the engine and verified
    (a stale engine raises); a resumed run pushes the checkpoint's weights before its first rollout."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    engine = ["--rollout.backend", "vllm", "--rollout.vllm.kwargs",
              json.dumps({"dtype": "float32", "max_model_len": 4096, "kv_cache_memory_bytes": 1 << 29})]
    first = _trainer(tmp_path, "--train.updates", "2", *engine)
    first.run()  # every push is verified inside run() (a stale engine raises WeightSyncError); run() closes it
    assert first.backend.policy._lora.lora_int_id == 3  # the start + one push per update
    train = [m for m in _metrics(tmp_path) if m["phase"] == "train"]
    assert len(train) == 2 and all(m["loss"] > 0 for m in train)
    resumed = _trainer(tmp_path, "--train.updates", "3", *engine)
    resumed.run()
    assert resumed.start == 2 and resumed.backend.policy._lora.lora_int_id == 2
    trained = {n: p for n, p in resumed.learner.unwrapped.named_parameters() if "lora_B" in n}
    assert any(float(p.abs().max()) > 0 for p in trained.values())  # the engine serves trained LoRA weights


@pytest.mark.parametrize("name", ["agentgym.trainer", "agentgym.stats", "agentgym.tasks", "agentgym.presets"])
def test_docstring_examples_of_the_training_core(name):
    """The runnable examples of the modules the training and evaluation core was split into."""
    import doctest
    import importlib
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
