"""Run folders are data, never code: a run folder or checkpoint from elsewhere is opened as safely as a
safetensors file.

Every attack of issue 24 on run folders, each asserting what a user would observe: a pickle payload
in a re-signed checkpoint never runs (no marker file) and the checkpoint is refused in one line with a
fallback to the older intact one; re-signed manifests of the wrong shape, absolute names, ``..`` and
links are one-line errors with the same fallback; ``eval`` never imports the plugins a run's
config.json names; nothing is written through a link planted in the folder (the victim files are
unchanged); the report shows +-1e308, 10**400, NaN and inf instead of crashing. The last test crafts
one folder with all of it and runs resume, eval, report and view on it."""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from agentgym.checkpoint import (CheckpointError, CheckpointWarning, decode_tree, encode_tree, latest_intact_checkpoint,
                                 load_checkpoint, load_state_file, resume_checkpoint, save_checkpoint,
                                 save_state_file, verify_checkpoint)
from agentgym.safeio import UnsafePathError


# ------------------------------------------------------------------------------------------ a small real model
class Net(torch.nn.Module):
    def __init__(self, n: int = 6, seed: int = 0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(n, generator=torch.Generator().manual_seed(seed)))

    def save_pretrained(self, folder):
        os.makedirs(folder, exist_ok=True)
        save_file({"w": self.w.detach().contiguous()}, os.path.join(folder, "model.safetensors"))


class Learner:
    """A real AdamW state, a teacher copy and an update counter on ``model`` (a ``Checkpointable``)."""

    def __init__(self, model: Net):
        self.unwrapped = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.99))
        model.w.grad = torch.ones_like(model.w)
        self.opt.step()
        self.updates, self.teacher = 1, {"mode": "ema", "params": {"w": model.w.detach().clone()}}

    def state_dict(self):
        return {"updates": self.updates, "optimizer": self.opt.state_dict(), "teacher": self.teacher, "reference": None}

    def load_state_dict(self, state):
        self.updates, self.teacher = int(state["updates"]), state["teacher"]
        self.opt.load_state_dict(state["optimizer"])


def _two_checkpoints(run: Path) -> tuple[Net, Learner]:
    model = Net()
    learner = Learner(model)
    save_checkpoint(run, 1, learner, config_hash="h")
    learner.updates = 2
    save_checkpoint(run, 2, learner, config_hash="h")
    return model, learner


def _resign(ckpt: Path, manifest: object, *, raw: bytes | None = None, **state_changes) -> None:
    """What a forger does: write any manifest, then recompute state.json's manifest hash and checksum."""
    from agentgym.checkpoint_verify import _state_checksum
    data = raw if raw is not None else json.dumps(manifest).encode()
    (ckpt / "manifest.json").write_bytes(data)
    state = json.loads((ckpt / "state.json").read_text())
    state.update(state_changes, manifest_sha256=hashlib.sha256(data).hexdigest())
    state["checksum"] = _state_checksum(state)
    (ckpt / "state.json").write_text(json.dumps(state))


def _entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


class Payload:
    """A pickle that writes ``MARKER`` when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


# ------------------------------------------------------------------------------------------ state files
def test_state_files_round_trip_every_shape_without_pickle(tmp_path):
    a = torch.arange(6.0)
    state = {"updates": 3, 0: {"step": torch.tensor(2.0), "exp_avg": a, "same": a, "view": a[2:4]},
             "betas": (0.9, 0.99), "nan": float("nan"), "inf": -float("inf"), "__tensor__": "not a marker",
             "rng": ("MT19937", np.arange(5, dtype=np.uint32), 3, 0, 0.0), "empty": torch.zeros(0), "none": None,
             "py": random.getstate()}
    save_state_file(state, tmp_path / "s.safetensors")
    raw = (tmp_path / "s.safetensors").read_bytes()
    assert b"\x80\x04" not in raw[:16] and b"pickle" not in raw  # a safetensors header, not a pickle stream
    back = load_state_file(tmp_path / "s.safetensors")
    assert back["updates"] == 3 and back["betas"] == (0.9, 0.99) and back["__tensor__"] == "not a marker"
    assert torch.equal(back[0]["exp_avg"], a) and torch.equal(back[0]["same"], a) and torch.equal(back[0]["view"], a[2:4])
    assert np.isnan(back["nan"]) and back["inf"] == -float("inf") and back["none"] is None
    assert back["rng"][1].dtype == np.uint32 and back["rng"][1].tolist() == list(range(5))
    random.setstate(back["py"])  # a real python RNG state survives as-is
    with pytest.raises(CheckpointError, match="cannot store a .*Payload"):
        save_state_file({"x": Payload(tmp_path / "m")}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="not hold"):
        decode_tree({"__tensor__": "7"}, {})
    with pytest.raises(ValueError, match="dtype"):
        decode_tree({"__ndarray__": [1], "dtype": "object"}, {})
    assert encode_tree({"k": (1, 2)}, {}) == {"k": {"__tuple__": [1, 2]}}


def test_a_pickle_payload_in_a_resigned_checkpoint_never_runs_and_falls_back(tmp_path):
    """Resume used torch.load(weights_only=False) on schedule.pt: a forger re-signs the manifest."""
    marker = tmp_path / "marker"
    _, learner = _two_checkpoints(tmp_path / "run")
    step2 = tmp_path / "run" / "checkpoints" / "step-2"
    # (a) an old-format checkpoint (manifest version 1, *.pt) whose schedule.pt is a pickle payload
    (step2 / "schedule.safetensors").unlink()
    torch.save({"updates": 2, "x": Payload(marker)}, step2 / "schedule.pt")
    files = json.loads((step2 / "manifest.json").read_text())["files"]
    files = {k.replace("schedule.safetensors", "schedule.pt"): v for k, v in files.items()}
    for part in ("optimizer", "teacher", "rng"):  # the rest legitimately old-format too
        torch.save(load_state_file(step2 / f"{part}.safetensors"), step2 / f"{part}.pt")
        (step2 / f"{part}.safetensors").unlink()
        files.pop(f"{part}.safetensors")
        files[f"{part}.pt"] = _entry(step2 / f"{part}.pt")
    files["schedule.pt"] = _entry(step2 / "schedule.pt")
    _resign(step2, {"version": 1, "files": files})
    verify_checkpoint(step2)  # the forgery is self-consistent: only a safe load can stop it
    other = Learner(Net(seed=5))
    with pytest.warns(CheckpointWarning) as caught:
        path, state = resume_checkpoint(tmp_path / "run", other, config_hash="h")
    assert path.name == "step-1" and state["step"] == 1 and not marker.exists()
    [w] = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert "schedule.pt" in w and "not loadable safely" in w and "nothing in it was executed" in w
    assert "\n" not in w and "resumed from step-1" in w
    # (b) a pickle under a .safetensors name is not a safetensors file: refused the same way
    torch.save({"updates": 2, "x": Payload(marker)}, step2 / "schedule.safetensors")
    with pytest.raises(CheckpointError, match="cannot read the schedule state"):
        load_checkpoint(step2, other, verify=False)
    assert not marker.exists()


def test_an_old_checkpoint_without_payload_migrates_safely(tmp_path):
    model, learner = _two_checkpoints(tmp_path / "run")
    step2 = tmp_path / "run" / "checkpoints" / "step-2"
    files = json.loads((step2 / "manifest.json").read_text())["files"]
    for part in ("optimizer", "teacher", "schedule", "rng"):  # exactly what the old torch.save wrote
        torch.save(load_state_file(step2 / f"{part}.safetensors"), step2 / f"{part}.pt")
        (step2 / f"{part}.safetensors").unlink()
        files.pop(f"{part}.safetensors")
        files[f"{part}.pt"] = _entry(step2 / f"{part}.pt")
    _resign(step2, {"version": 1, "files": files})
    torch.manual_seed(3)
    other = Learner(Net(seed=9))
    other_model = other.unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = load_checkpoint(step2, other, config_hash="h")
    assert state["step"] == 2 and other.updates == 2 and torch.equal(other_model.w, model.w)
    assert torch.equal(other.opt.state_dict()["state"][0]["exp_avg"], learner.opt.state_dict()["state"][0]["exp_avg"])


@pytest.mark.parametrize("forge, expect", [
    (lambda f: {"version": 2}, "manifest.json does not match its schema: files: Field required"),
    (lambda f: {"version": 2, "files": list(f)}, "manifest.json does not match its schema: files"),
    (lambda f: {"version": 2, "files": {**f, "rng.safetensors": "x"}}, "files.rng.safetensors"),
    (lambda f: {"version": 2, "files": {k: {**v, "size": str(v["size"])} for k, v in f.items()}}, r"size: Input should be a valid integer"),
    (lambda f: {"version": 2, "files": {**f, "/etc/hostname": {"sha256": "0" * 64, "size": 1}}}, "'/etc/hostname', which is not a file name inside"),
    (lambda f: {"version": 2, "files": {**f, "../../victim": {"sha256": "0" * 64, "size": 1}}}, "not a file name inside"),
    (lambda f: {"version": 2, "files": {k: v for k, v in f.items() if k != "rng.safetensors"}}, "does not list rng.safetensors"),
    (lambda f: {"version": 99, "files": f}, "version: Input should be 1 or 2"),
    (lambda f: [1, 2], "does not match its schema"),
])
def test_resigned_manifests_of_the_wrong_shape_are_one_line_errors_with_fallback(tmp_path, forge, expect):
    _two_checkpoints(tmp_path / "run")
    step2 = tmp_path / "run" / "checkpoints" / "step-2"
    files = json.loads((step2 / "manifest.json").read_text())["files"]
    _resign(step2, forge(files))
    with pytest.raises(CheckpointError, match=expect) as info:
        verify_checkpoint(step2)
    assert "\n" not in str(info.value)
    with pytest.warns(CheckpointWarning, match=rf"step-2.*using step-1"):
        assert latest_intact_checkpoint(tmp_path / "run").name == "step-1"


def test_resigned_state_json_of_the_wrong_shape_and_links_fall_back(tmp_path):
    _two_checkpoints(tmp_path / "run")
    step2 = tmp_path / "run" / "checkpoints" / "step-2"
    files = json.loads((step2 / "manifest.json").read_text())["files"]
    _resign(step2, {"version": 2, "files": files}, config_hash=["x"])
    with pytest.raises(CheckpointError, match="state.json does not match its schema: config_hash"):
        verify_checkpoint(step2)
    # A manifest entry that is a link (to a file outside, with the right hash) is never read.
    outside = tmp_path / "outside.bin"
    outside.write_bytes((step2 / "rng.safetensors").read_bytes())
    (step2 / "rng.safetensors").unlink()
    (step2 / "rng.safetensors").symlink_to(outside)
    _resign(step2, {"version": 2, "files": files}, config_hash="h")
    with pytest.raises(CheckpointError, match="rng.safetensors is .*symbolic link"):
        verify_checkpoint(step2)
    with pytest.raises(CheckpointError, match="symbolic link"):
        load_checkpoint(step2, Learner(Net()), verify=False)
    with pytest.warns(CheckpointWarning, match="using step-1"):
        assert latest_intact_checkpoint(tmp_path / "run").name == "step-1"


def test_a_checkpoints_link_is_never_written_or_cleaned_through(tmp_path):
    victim = tmp_path / "victim"
    (victim / ".step-keep").mkdir(parents=True)
    (victim / "step-1").mkdir()
    (victim / "step-1" / "precious").write_text("data")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(victim)
    with pytest.raises(CheckpointError, match="is a symbolic link.*refusing"):
        save_checkpoint(run, 3, Learner(Net()), config_hash="h")
    from agentgym.checkpoint import clean_stray_temp
    assert clean_stray_temp(run) == []
    assert (victim / ".step-keep").is_dir() and (victim / "step-1" / "precious").read_text() == "data"
    assert sorted(p.name for p in victim.iterdir()) == [".step-keep", "step-1"]


# ------------------------------------------------------------------------------------------ links in the logs
def test_logs_are_never_appended_or_rewritten_through_planted_links(tmp_path):
    from agentgym.runlog import append_record, truncate_run
    from agentgym.store import TrajectoryStore
    from agentgym.types import Trajectory
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "trajectories.jsonl"):
        (run / name).symlink_to(victim)
    with pytest.raises(UnsafePathError, match="metrics.jsonl is a symbolic link"):
        append_record(run / "metrics.jsonl", {"update": 1})
    with pytest.raises(UnsafePathError, match="symbolic link"):
        TrajectoryStore(run / "trajectories.jsonl").append(Trajectory(task_id="t"))
    with pytest.raises(UnsafePathError, match="symbolic link"):
        truncate_run(run, 0)
    os.mkfifo(run / "fifo.jsonl")  # a FIFO would block an append forever
    with pytest.raises(UnsafePathError, match="not a regular file"):
        append_record(run / "fifo.jsonl", {"update": 1})
    assert victim.read_text() == "keep me\n"


# ------------------------------------------------------------------------------------------ the report
def _tiny_run(run: Path, metrics: list[str]) -> Path:
    from agentgym.types import Step, Trajectory
    run.mkdir(parents=True, exist_ok=True)
    (run / "trajectories.jsonl").write_text(
        Trajectory(task_id="t0", steps=[Step(index=0, action_text="hi", reward=1.0)]).to_json() + "\n")
    (run / "metrics.jsonl").write_text("\n".join(metrics) + "\n")
    (run / "config.json").write_text(json.dumps({"learner": {"name": "grpo"}}))
    (run / "summary.json").write_text('{"updates": 1e999, "seconds_per_update": -Infinity, "success_after": NaN}')
    return run


def test_the_report_shows_huge_and_non_finite_numbers_and_never_crashes(tmp_path, capsys):
    from agentgym.report import main
    metrics = ['{"phase": "train", "update": 0, "loss": 1.0, "seconds": 2}',
               '{"phase": "train", "update": 1, "loss": 1e308, "seconds": 1e308}',
               '{"phase": "train", "update": 2, "loss": -1e308, "success_rate": NaN}',
               '{"phase": "train", "update": 1e308, "loss": 0.5}',
               '{"phase": "train", "update": -1e308, "loss": 0.25}',
               '{"phase": "eval", "update": 3, "loss": ' + "1" + "0" * 400 + ', "success_rate": Infinity, '
               '"success_low": -1e308, "success_high": 1e308, "seconds": ' + "9" * 400 + '}',
               '{"phase": "eval", "update": ' + "1" + "0" * 400 + ', "reward_mean": 0.5}']
    run = _tiny_run(tmp_path / "run", metrics)
    assert main([str(run)]) == 0, capsys.readouterr().err
    html = (run / "report.html").read_text()
    charts = html.split("<section id=\"curves\">")[1].split("</section>")[0]
    assert "update 1: 1e+308" in charts and "update 3: 1.000e+400" in charts and "update 1e+308: 0.5" in charts
    assert "update 2: nan" in charts and "update 3: inf" in charts
    assert "<td>updates</td><td>inf</td>" in html and "-inf s per update" in html


# ------------------------------------------------------------------------------------------ all of it at once
PLUGIN = "open({marker!r}, 'a').write('plugin ran\\n')\n"


@pytest.fixture
def crafted(tmp_path, tiny_model_path):
    """A real finished run of the tiny model, then crafted as a hostile sender would: a pickle payload
    in a re-signed checkpoint, a plugin list and a module:Env id in config.json, links planted where
    the commands write, hostile numbers in metrics.jsonl."""
    from agentgym.config import load_config
    from agentgym.train import Trainer
    config = {"model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},  # as tests/core/test_kill_resume.py
              "env": {"id": "agentgym/Echo-v0", "group_size": 2, "eval_tasks": 0},
              "rollout": {"temperature": 1.0, "max_new_tokens": 4},
              "feedback": {"source": "immediate", "selector": "first_error"},
              "learner": {"name": "hint_sd", "lr": 1e-2, "topk": 20},
              "train": {"updates": 1, "checkpoint_every": 1, "keep_checkpoints": 1, "progress": False,
                        "deterministic": True, "tensorboard": False}}
    run = tmp_path / "run"
    Trainer(load_config(["--train.run_dir", str(run)], base=config)).run()
    marker = tmp_path / "marker"
    victims = {}
    for name in ("report.html", "report.html.tmp", "trajectories.html", "summary.json.tmp", "metrics.jsonl"):
        victims[name] = tmp_path / f"victim-{name}.pth"
        victims[name].write_text("import sys\n")  # a .pth line that imports runs at every Python start
    step = next(p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-"))
    (step / "schedule.safetensors").unlink()
    torch.save({"updates": 1, "x": Payload(marker)}, step / "schedule.pt")
    manifest = json.loads((step / "manifest.json").read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.endswith("safetensors") or "/" in k}
    for part in ("optimizer", "teacher", "rng"):
        torch.save(load_state_file(step / f"{part}.safetensors"), step / f"{part}.pt")
        (step / f"{part}.safetensors").unlink()
        manifest["files"][f"{part}.pt"] = _entry(step / f"{part}.pt")
    manifest["files"]["schedule.pt"] = _entry(step / "schedule.pt")
    _resign(step, {"version": 1, "files": manifest["files"]})
    (run / "evil_plugin.py").write_text(PLUGIN.format(marker=str(marker)))
    cfg = json.loads((run / "config.json").read_text())
    cfg["plugins"] = [str(run / "evil_plugin.py"), "evil_module_xyz"]
    (run / "config.json").write_text(json.dumps(cfg))
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"phase": "train", "update": 1e308, "loss": ' + "1" + "0" * 400 + '}\n')
    saved_metrics = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").rename(run / "metrics.real.jsonl")
    for name, victim in victims.items():
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(victim)
    return {"run": run, "marker": marker, "victims": victims, "config": config, "metrics": saved_metrics}


def test_a_crafted_run_folder_is_refused_or_defused_by_resume_eval_report_and_view(crafted, capsys):
    from agentgym.config import load_config
    from agentgym.evaluation import eval_main
    from agentgym.report import main as report_main, view_main
    from agentgym.train import Trainer
    run, marker, victims = crafted["run"], crafted["marker"], crafted["victims"]

    # eval: the plugins named in config.json are never imported; the error says which to pass
    assert eval_main([str(run), "--out", str(run.parent / "evals")]) == 2
    err = capsys.readouterr().err
    assert "evil_plugin.py" in err and "evil_module_xyz" in err and "--import" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

    # resume: the only checkpoint holds a pickle payload -> refused, nothing runs, nothing written
    with pytest.raises(CheckpointError, match="no intact checkpoint.*not loadable safely.*nothing in it was executed"):
        Trainer(load_config(["--train.run_dir", str(run), "--train.updates", "2"], base=crafted["config"])).run()

    # report: written beside the links, never through them; the metrics link is not followed
    assert report_main([str(run)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert not (run / "report.html").is_symlink() and "agentgym report" in (run / "report.html").read_text()
    html = (run / "report.html").read_text()
    assert "metrics.jsonl: not read" in html and "symbolic link" in html

    # view: the same for the page beside the trajectories file
    assert view_main([str(run / "trajectories.jsonl")]) == 0
    assert not (run / "trajectories.html").is_symlink()

    # the same folder's metrics, now a real file with hostile numbers: the report shows them
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").write_text(crafted["metrics"])
    assert report_main([str(run)]) == 0
    assert "1.000e+400" in (run / "report.html").read_text()

    assert not marker.exists()
    for victim in victims.values():
        assert victim.read_text() == "import sys\n"
