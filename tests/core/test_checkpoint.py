"""Crash-consistent run folders: checkpoints (manifest, verification, fallback, non-finite weights,
a full disk, stray temporary folders, a real SIGKILL in the middle of saves) and the JSON Lines logs
(durable appends, a torn last line, truncation to the records of the checkpoint a run resumes from).

Real files throughout: the tiny chat model with a LoRA adapter under a real HINT-SD learner (AdamW
state, EMA teacher), a real tmpfs for ENOSPC, a real child process killed with SIGKILL."""

import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from agentgym.checkpoint import (CheckpointError, CheckpointWarning, NonFiniteCheckpointError,
                                 latest_checkpoint, latest_intact_checkpoint, load_checkpoint,
                                 resume_checkpoint, save_checkpoint, verify_checkpoint)
from agentgym.runlog import append_record, truncate_records, truncate_run, written_before_checkpoint
from agentgym.store import StoreCorruptError, TrajectoryStore, read_trajectories
from agentgym.types import Trajectory

REPO = Path(__file__).resolve().parents[2]
ADAPTER = "model/adapter_model.safetensors"


# ------------------------------------------------------------------------------------------ fixtures
def _learner(tiny_model_path, tokenizer, seed=0):
    import peft
    from transformers import AutoModelForCausalLM
    from agentgym.learners import make_learner
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    return make_learner("hint_sd", model, tokenizer, {"lr": 1e-3, "teacher": "ema", "teacher_rate": 0.5})


def _fake_update(learner, seed):
    """One optimizer step with seeded gradients (fills AdamW's state) and a teacher update."""
    g = torch.Generator().manual_seed(seed)
    for p in learner.unwrapped.parameters():
        if p.requires_grad:
            p.grad = torch.randn(p.shape, generator=g) * 0.1
    learner.optimizer.step()
    learner.optimizer.zero_grad()
    learner.updates += 1
    learner.teacher_weights.after_update(learner.unwrapped, learner.updates)


def _trainable(learner):
    return {n: p.detach().clone() for n, p in learner.unwrapped.named_parameters() if p.requires_grad}


@pytest.fixture
def learner(tiny_model_path, tiny_tokenizer):
    return _learner(tiny_model_path, tiny_tokenizer)


@pytest.fixture
def other(tiny_model_path, tiny_tokenizer):
    """A second learner (different initial adapter) to load checkpoints into."""
    return _learner(tiny_model_path, tiny_tokenizer, seed=1)


def _save(run, step, learner, **kw):
    return save_checkpoint(run, step, learner.engine, config_hash="h", **kw)


def _two_checkpoints(run, learner):
    _fake_update(learner, 1)
    _save(run, 1, learner)
    w1 = _trainable(learner)
    _fake_update(learner, 2)
    _save(run, 2, learner)
    return w1


def _strays(run):
    return sorted(p.name for p in (Path(run) / "checkpoints").iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------ save / load
def test_save_writes_a_verified_manifest_and_load_restores_everything(tmp_path, learner, other):
    _fake_update(learner, 1)
    path = _save(tmp_path, 1, learner, extra={"note": "x"})
    names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert {ADAPTER, "optimizer.safetensors", "teacher.safetensors", "schedule.safetensors", "rng.safetensors", "manifest.json", "state.json"} <= names
    manifest = json.loads((path / "manifest.json").read_text())["files"]
    assert set(manifest) == names - {"manifest.json", "state.json"}
    state = verify_checkpoint(path)
    assert state["step"] == 1 and state["note"] == "x" and state["config_hash"] == "h"
    assert _strays(tmp_path) == [] and latest_checkpoint(tmp_path) == latest_intact_checkpoint(tmp_path) == path

    torch.manual_seed(7)
    expected_rand = torch.rand(3)
    torch.manual_seed(7)
    _save(tmp_path, 2, learner)  # the RNG state saved is the one right after manual_seed(7)
    torch.manual_seed(99)
    state = load_checkpoint(tmp_path / "checkpoints" / "step-2", other.engine, config_hash="h")
    assert state["step"] == 2 and torch.equal(torch.rand(3), expected_rand)
    a, b = _trainable(learner), _trainable(other)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert other.updates == learner.updates == 1
    ta, tb = learner.teacher_weights.params, other.teacher_weights.params
    assert all(torch.equal(ta[n], tb[n]) for n in ta)
    sa, sb = learner.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa)
    with pytest.raises(ValueError, match="different configuration"):
        load_checkpoint(tmp_path / "checkpoints" / "step-2", other.engine, config_hash="other")


def test_prune_keeps_the_newest_and_resaving_a_step_drops_the_abandoned_later_ones(tmp_path, learner):
    for k in (1, 2, 3, 4):
        _save(tmp_path, k, learner, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-3", "step-4"]
    # A run restarted from step-3 saves step-3 again (replacing it) and step-4 of the old timeline goes.
    _fake_update(learner, 5)
    _save(tmp_path, 3, learner, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-3"]
    w = _trainable(learner)
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "checkpoints" / "step-3" / ADAPTER))
    assert any(torch.equal(v, w[n]) for n in w for v in saved.values())


@pytest.mark.parametrize("rel", [ADAPTER, "optimizer.safetensors", "teacher.safetensors", "schedule.safetensors", "rng.safetensors", "manifest.json"])
@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_a_truncated_or_emptied_file_falls_back_to_the_previous_checkpoint(tmp_path, learner, other, rel, damage):
    w1 = _two_checkpoints(tmp_path, learner)
    f = tmp_path / "checkpoints" / "step-2" / rel
    data = f.read_bytes()
    f.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"")
    with pytest.warns(CheckpointWarning, match=rf"step-2.*{Path(rel).name}.*using step-1"):
        assert latest_intact_checkpoint(tmp_path).name == "step-1"
    # Loading the damaged one anyway is a CheckpointError, also without the manifest check.
    with pytest.raises(CheckpointError, match="step-2"):
        load_checkpoint(f.parent if rel != ADAPTER else f.parent.parent, other.engine)
    if rel != "manifest.json":
        with pytest.raises(CheckpointError, match=Path(rel).name.split(".")[0]):
            load_checkpoint(tmp_path / "checkpoints" / "step-2", other.engine, verify=False)
    with pytest.warns(CheckpointWarning, match="resumed from step-1"):
        path, state = resume_checkpoint(tmp_path, other.engine, config_hash="h")
    assert path.name == "step-1" and state["step"] == 1
    got = _trainable(other)
    assert all(torch.equal(got[n], w1[n]) for n in w1)


def test_a_damaged_state_json_falls_back_and_an_emptied_one_too(tmp_path, learner):
    _two_checkpoints(tmp_path, learner)
    f = tmp_path / "checkpoints" / "step-2" / "state.json"
    state = json.loads(f.read_text())
    f.write_text(json.dumps({**state, "config_hash": "forged"}))
    with pytest.warns(CheckpointWarning, match="state.json: checksum mismatch"):
        assert latest_intact_checkpoint(tmp_path).name == "step-1"
    f.write_bytes(b"")
    with pytest.warns(CheckpointWarning, match="state.json: unreadable"):
        assert latest_intact_checkpoint(tmp_path).name == "step-1"


def test_flipped_bytes_in_the_adapter_are_caught_by_the_manifest_and_never_loaded_as_nan(tmp_path, learner, other):
    w1 = _two_checkpoints(tmp_path, learner)
    f = tmp_path / "checkpoints" / "step-2" / ADAPTER
    data = bytearray(f.read_bytes())
    header = struct.unpack("<Q", data[:8])[0]
    start = 8 + header  # the first float32 of the tensor data becomes a NaN
    data[start:start + 4] = struct.pack("<f", float("nan"))
    f.write_bytes(bytes(data))  # same size: only the sha256 tells
    with pytest.warns(CheckpointWarning, match=r"step-2.*adapter_model.safetensors sha256 mismatch.*using step-1"):
        assert latest_intact_checkpoint(tmp_path).name == "step-1"
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(f.parent.parent, other.engine)
    # Without the manifest, the finiteness check still refuses it, before touching the model.
    before = _trainable(other)
    with pytest.raises(NonFiniteCheckpointError, match="refusing to resume.*NaN"):
        load_checkpoint(f.parent.parent, other.engine, verify=False)
    after = _trainable(other)
    assert all(torch.equal(before[n], after[n]) for n in before)
    with pytest.warns(CheckpointWarning):
        path, _ = resume_checkpoint(tmp_path, other.engine)
    assert path.name == "step-1" and all(torch.equal(_trainable(other)[n], w1[n]) for n in w1)


def test_non_finite_weights_are_neither_saved_nor_resumed_from(tmp_path, learner, other):
    _fake_update(learner, 1)
    _save(tmp_path, 1, learner)
    name, p = next((n, p) for n, p in learner.unwrapped.named_parameters() if p.requires_grad)
    with torch.no_grad():
        p[0, 0] = float("nan")
    with pytest.raises(NonFiniteCheckpointError, match=r"refusing to save checkpoint step-2.*1 NaN"):
        _save(tmp_path, 2, learner)
    assert latest_intact_checkpoint(tmp_path).name == "step-1" and _strays(tmp_path) == []
    # A checkpoint that does hold NaN (written without the check) verifies - its bytes are as written -
    # but resuming from it is refused, with no fallback to an older one.
    _save(tmp_path, 2, learner, check_finite=False)
    assert latest_intact_checkpoint(tmp_path).name == "step-2"
    with pytest.raises(NonFiniteCheckpointError, match="step-2: the model weights: non-finite values"):
        resume_checkpoint(tmp_path, other.engine)
    # Non-finite optimizer state is refused too.
    with torch.no_grad():
        p[0, 0] = 0.0
    next(iter(learner.optimizer.state.values()))["exp_avg"].fill_(float("inf"))
    with pytest.raises(NonFiniteCheckpointError, match="learner state.*infinite"):
        _save(tmp_path, 3, learner)


def test_no_intact_checkpoint_at_all_is_an_error_not_a_silent_restart(tmp_path, learner):
    _two_checkpoints(tmp_path, learner)
    for k in (1, 2):
        (tmp_path / "checkpoints" / f"step-{k}" / "optimizer.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint.*step-2.*optimizer.safetensors.*emptied.*step-1"):
        latest_intact_checkpoint(tmp_path)
    assert latest_intact_checkpoint(tmp_path / "fresh") is None


def test_a_stray_temporary_folder_is_ignored_and_cleaned_by_the_next_save(tmp_path, learner):
    _two_checkpoints(tmp_path, learner)
    stray = tmp_path / "checkpoints" / ".step-3-abcd"
    (stray / "model").mkdir(parents=True)
    (stray / "optimizer.safetensors").write_bytes(b"half")
    (tmp_path / "checkpoints" / "step-3").mkdir()  # an incomplete folder under a final name: no state.json
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_intact_checkpoint(tmp_path).name == "step-2"
    assert stray.is_dir()  # a reader does not remove it (a save might be running)
    _save(tmp_path, 3, learner)
    assert _strays(tmp_path) == [] and latest_intact_checkpoint(tmp_path).name == "step-3"


# ------------------------------------------------------------------------------------------ a full disk
@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to simulate ENOSPC (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(folder, leave):
    """Fill the filesystem of ``folder`` up, then free ``leave`` bytes."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    with open(filler, "rb+") as f:
        f.truncate(max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.parametrize("leave", [0, 64 * 1024, 300 * 1024])
def test_a_full_disk_is_a_clear_error_and_leaves_the_previous_checkpoint_latest(small_fs, learner, other, leave):
    run = small_fs / "run"
    _fake_update(learner, 1)
    _save(run, 1, learner)
    w1 = _trainable(learner)
    _fake_update(learner, 2)
    filler = _fill(small_fs, leave)
    with pytest.raises(CheckpointError, match=r"step-2 failed: no space left on the device.*bytes free.*step-1 is still the latest"):
        _save(run, 2, learner)
    assert _strays(run) == [] and sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_intact_checkpoint(run).name == "step-1"
    load_checkpoint(run / "checkpoints" / "step-1", other.engine)
    assert all(torch.equal(_trainable(other)[n], w1[n]) for n in w1)
    filler.unlink()
    assert _save(run, 2, learner).name == "step-2" and latest_intact_checkpoint(run).name == "step-2"


# ------------------------------------------------------------------------------------------ kill -9
CHILD = r'''
import importlib.util, os, sys, torch
spec = importlib.util.spec_from_file_location("ckpt", sys.argv[1])
ckpt = importlib.util.module_from_spec(spec); spec.loader.exec_module(ckpt)
run, n = sys.argv[2], int(sys.argv[3])
exec(sys.argv[4])
torch.set_num_threads(1)
Learner().set(Net(8), 0)  # warm up (AdamW's first step imports a lot) before forking the savers
for line in sys.stdin:  # one forked saver per round: torch is imported once, each saver is SIGKILLed
    start = int(line)
    pid = os.fork()
    if pid == 0:
        model, learner = Net(n), Learner()
        step = start
        while True:
            learner.set(model, step)
            ckpt.save_checkpoint(run, step, learner, config_hash="h", keep=2)
            print("saved", step, flush=True)
            step += 1
    print("pid", pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
'''

DEFS = r'''
import torch
from safetensors.torch import save_file

class Net(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(n))
    def set(self, step):
        with torch.no_grad():
            self.w.copy_(torch.randn(self.w.shape, generator=torch.Generator().manual_seed(step)))
    def save_pretrained(self, folder):
        import os
        os.makedirs(folder, exist_ok=True)
        save_file({"w": self.w.detach().contiguous()}, os.path.join(folder, "model.safetensors"))

class Learner:
    def __init__(self, model=None):
        self.unwrapped = model  # the model whose weights a checkpoint saves
    def set(self, model, step):
        self.unwrapped = model
        self.opt = torch.optim.AdamW(model.parameters())
        model.w.grad = torch.ones_like(model.w)
        self.opt.step()  # real AdamW state; the weights are then reset to their per-step values
        model.set(step)
        self.updates, self.teacher = step, {"w": model.w.detach() * 2}
    def state_dict(self):
        return {"updates": self.updates, "optimizer": self.opt.state_dict(), "teacher": self.teacher, "reference": None}
    def load_state_dict(self, state):
        self.updates, self.teacher, self.optimizer = state["updates"], state["teacher"], state["optimizer"]
'''


def test_sigkill_in_the_middle_of_saves_always_leaves_an_intact_latest_checkpoint(tmp_path):
    namespace: dict = {}
    exec(DEFS, namespace)
    n = 1_000_000  # 4 MB of weights, 8 MB of AdamW state, 4 MB of teacher per checkpoint
    run = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(REPO / "agentgym" / "checkpoint.py"), str(run), str(n), DEFS],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    rng = random.Random(0)
    mid_write, steps_seen, start = 0, [], 1
    try:
        for round_ in range(8):
            child.stdin.write(f"{start}\n")
            child.stdin.flush()
            line = child.stdout.readline().split()
            assert line[0] == "pid", line
            pid = int(line[1])
            line = child.stdout.readline().split()
            assert line[0] == "saved"  # at least one save per round
            last_saved = int(line[1])
            time.sleep(rng.uniform(0.0, 0.4))
            os.kill(pid, signal.SIGKILL)
            while (line := child.stdout.readline().split()) and line[0] != "reaped":
                assert line[0] == "saved"
                last_saved = int(line[1])
            mid_write += bool(_strays(run))
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a killed save never leaves a damaged step-K: only strays
                path = latest_intact_checkpoint(run)
            model = namespace["Net"](n)
            learner = namespace["Learner"](model)
            state = load_checkpoint(path, learner, config_hash="h")
            step = state["step"]
            # Every save that returned is durable; one killed after its rename but before it printed counts too.
            assert last_saved <= step <= last_saved + 1
            expect = torch.randn(n, generator=torch.Generator().manual_seed(step))
            assert torch.equal(model.w.detach(), expect) and learner.updates == step
            assert torch.equal(learner.teacher["w"], expect * 2)
            steps_seen.append(step)
            start = step + 1
    finally:
        child.kill()
        child.wait()
    assert steps_seen == sorted(steps_seen) and len(set(steps_seen)) == len(steps_seen)
    assert mid_write >= 1, "no SIGKILL landed in the middle of a save (the test did not test anything)"


# ------------------------------------------------------------------------------------------ JSON Lines logs
def _lines(path):
    return [json.loads(l) for l in Path(path).read_text().splitlines()]


def test_append_record_is_durable_and_ends_a_torn_line_first(tmp_path):
    f = tmp_path / "metrics.jsonl"
    append_record(f, {"update": 0, "phase": "train", "loss": float("nan")})
    with open(f, "ab") as h:
        h.write(b'{"update": 1, "phase": "tr')  # a write cut off by a kill
    append_record(f, {"update": 1, "phase": "train"})
    assert f.read_bytes().count(b"\n") == 3
    with pytest.warns(UserWarning, match=r"metrics.jsonl:2: dropped a truncated record"):
        report = truncate_records(f, 10)
    assert (report.kept, report.torn, report.rewritten) == (2, 1, True)
    assert [r["update"] for r in _lines(f)] == [0, 1]
    with pytest.raises(ValueError, match="line break"):
        append_record(f, '{"a": 1}\n{"b": 2}')


def test_truncation_by_update_is_atomic_and_keeps_lines_byte_for_byte(tmp_path):
    f = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"update": k, "phase": "train", "x": 0.1 * k}) for k in range(5)]
    f.write_text("".join(l + "\n" for l in lines) + '{"update": 5, "pha')  # torn last line
    with pytest.warns(UserWarning, match="metrics.jsonl:6: dropped a truncated record"):
        report = truncate_records(f, 2)
    assert (report.kept, report.dropped, report.torn) == (3, 2, 1)
    assert f.read_text() == "".join(l + "\n" for l in lines[:3])
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left
    # Nothing to drop: the file is not rewritten.
    inode = f.stat().st_ino
    assert not truncate_records(f, 2).rewritten and f.stat().st_ino == inode


def test_a_corrupt_line_in_the_middle_is_an_error_and_changes_nothing(tmp_path):
    f = tmp_path / "metrics.jsonl"
    f.write_text('{"update": 0}\n{"update": 1, "x": 1]}\n{"update": 2}\n')
    before = f.read_bytes()
    with pytest.raises(StoreCorruptError, match="metrics.jsonl:2"):
        truncate_records(f, 0)
    assert f.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    # A fragment a later writer ended with a newline (TrajectoryStore._repair_tail) is a torn line.
    f.write_text('{"update": 0}\n{"update": 1, "x": {"y": 1}\n{"update": 2}\n')
    with pytest.warns(UserWarning, match="metrics.jsonl:2: dropped"):
        assert truncate_records(f, 5).kept == 2


def test_resume_truncation_of_a_run_folder_with_metrics_and_trajectories(tmp_path):
    """A run killed during checkpoint step-2 (after update 1 and the eval at 2 were logged) resumes from
    step-1: update 1's train records and the eval at 2 go, in every log, in both trajectory formats."""
    run = tmp_path
    for rec in [{"update": 0, "phase": "eval"}, {"update": 0, "phase": "train"}, {"update": 1, "phase": "eval"},
                {"update": 1, "phase": "train"}, {"update": 2, "phase": "eval"}]:
        append_record(run / "metrics.jsonl", rec)
    with TrajectoryStore(run / "trajectories.jsonl") as store:
        for update, phase in [(0, "eval"), (0, "train"), (0, "train"), (1, "eval"), (1, "train"), (2, "eval")]:
            store.append(Trajectory(task_id=f"{phase}{update}", metadata={"update": update, "phase": phase}))
    rank1 = run / "trajectories.rank1.jsonl"
    for update, phase in [(0, "train"), (1, "train")]:  # the typed fields the Trainer is moving to
        append_record(rank1, {**json.loads(Trajectory(task_id=f"r{update}").to_json()), "update": update, "phase": phase})
    with open(run / "trajectories.jsonl", "ab") as h:
        h.write(b'{"task_id": "eval2", "metad')  # torn
    with pytest.warns(UserWarning, match="dropped a truncated record"):
        reports = truncate_run(run, written_before_checkpoint(1))
    assert {r.path.name: (r.kept, r.dropped, r.torn) for r in reports} == {
        "metrics.jsonl": (3, 2, 0), "trajectories.jsonl": (4, 2, 1), "trajectories.rank1.jsonl": (1, 1, 0)}
    assert [(m["phase"], m["update"]) for m in _lines(run / "metrics.jsonl")] == [("eval", 0), ("train", 0), ("eval", 1)]
    assert [t.task_id for t in read_trajectories(run / "trajectories.jsonl")] == ["eval0", "train0", "train0", "eval1"]
    assert [r["update"] for r in _lines(rank1)] == [0]
    # The plain int rule keeps update <= k in every phase.
    truncate_run(run, 0)
    assert [(m["phase"], m["update"]) for m in _lines(run / "metrics.jsonl")] == [("eval", 0), ("train", 0)]
