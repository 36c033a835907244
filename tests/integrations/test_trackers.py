"""``train.log_with``: a real 1-update training run on the tiny model logs to TensorBoard, wandb
(offline) and trackio (local) through accelerate, and each tracker holds exactly the scalars of
metrics.jsonl (``<phase>/<key>`` at step = update), read back from its own files."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from agentgym.config import ConfigError, load_config

pytest.importorskip("wandb", reason="needs the trackers extra (setup.sh installs it)")
pytest.importorskip("trackio", reason="needs trackio (setup.sh installs it)")

ECHO = {
    "model": {"name": "tiny", "lora_r": 4, "lora_alpha": 8},
    "env": {"id": "agentgym/Echo-v0", "kwargs": {}, "tasks_per_update": 1, "group_size": 2, "max_steps": 3,
            "eval_task_ids": ["a", "b"]},
    "rollout": {"temperature": 1.0, "max_new_tokens": 6},
    "learner": {"name": "grpo", "lr": 1e-2},
    # the trackers are tested, not learning: an update without gradient does not stop the run
    "train": {"updates": 1, "checkpoint_every": 1, "progress": False, "deterministic": True,
              "max_no_gradient_fraction": 1.0},
}


def expected_scalars(run_dir: Path) -> dict[tuple[str, int], float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if isinstance(value, (int, float)) and key not in ("update", "time"):
                out[(f"{record['phase']}/{key}", record["update"])] = float(value)
    return out


def wandb_history(path: Path) -> dict[tuple[str, int], float]:
    """Scalars of an offline wandb run, read from its .wandb file (LevelDB-style log of protobuf
    records: 7-byte file header, 32 KiB blocks, each chunk crc32 / length / type)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out, pos, block, pending = {}, 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        body, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (2, 3):  # FIRST / MIDDLE chunk of a record
            pending = body if kind == 2 else pending + body
            continue
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(pending + body if kind == 4 else body)
        pending = b""
        if record.WhichOneof("record_type") == "history":
            step = record.history.step.num
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    out[(key, step)] = float(json.loads(item.value_json))
    return out


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-6, abs_tol=1e-9) or
                                        (math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_tensorboard_wandb_offline_and_trackio_hold_the_metrics_jsonl_scalars(tmp_path, monkeypatch):
    from agentgym.train import Trainer

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    run_dir = tmp_path / "run"
    cfg = load_config(["--train.run_dir", str(run_dir), "--train.log_with", "tensorboard,wandb,trackio",
                       "--train.tracker_project", "agentgym-test"], base=ECHO)
    assert cfg.train.trackers == ["tensorboard", "wandb", "trackio"]
    Trainer(cfg).run()
    want = expected_scalars(run_dir)
    assert {"eval/success_rate", "train/loss", "train/reward_mean"} <= {k for k, _ in want}, sorted(want)
    assert {step for _, step in want} == {0, 1}

    [wandb_file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    assert same(wandb_history(wandb_file), want)

    from trackio.sqlite_storage import SQLiteStorage
    logs = SQLiteStorage.get_logs("agentgym-test", run_dir.name)
    got = {(k, row["step"]): float(v) for row in logs for k, v in row.items()
           if "/" in k and isinstance(v, (int, float))}
    assert same(got, want)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    got = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert same(got, want)


def test_log_with_defaults_from_tensorboard_and_rejects_unknown_names():
    assert load_config([]).train.trackers == ["tensorboard"]
    assert load_config(["--train.tensorboard", "false"]).train.trackers == []
    assert load_config(["--train.log_with", "[]"]).train.trackers == []
    assert load_config(["--train.log_with", "wandb,wandb"]).train.trackers == ["wandb"]
    with pytest.raises(ConfigError, match="unknown tracker 'wandbb'; did you mean 'wandb'"):
        load_config(["--train.log_with", "wandbb"])
    a = load_config(["--train.log_with", "wandb"])
    b = load_config(["--train.log_with", "trackio", "--train.tracker_project", "x"])
    from agentgym.config import config_hash
    assert config_hash(a) == config_hash(b)  # trackers do not change what a checkpoint resumes
