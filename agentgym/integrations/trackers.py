"""Experiment trackers of a training run (``train.log_with``), through accelerate's tracker API.

The trainer's main process opens accelerate's own ``TensorBoardTracker`` / ``WandBTracker`` /
``TrackioTracker`` on its ``Accelerator`` (``accelerator.log_with`` + ``init_trackers``, the run's
flattened config as the trackers' hyperparameters) and sends every record it appends to
``metrics.jsonl`` through ``accelerator.log``: each numeric field ``key`` of a record becomes the
scalar ``"<phase>/<key>"`` at ``step = record["update"]`` (``update`` and ``time`` excepted), so
the trackers hold exactly the numbers of metrics.jsonl under the same names.

- tensorboard: event files in ``<run_dir>/tensorboard`` (where agentgym always wrote them);
- wandb: ``wandb.init(project=train.tracker_project, name=<run folder name>, dir=<run_dir>)``;
  ``WANDB_MODE=offline`` writes ``<run_dir>/wandb/offline-run-*`` without network (``wandb sync``
  uploads it later);
- trackio: ``trackio.init(project=train.tracker_project, name=<run folder name>)``, local by
  default: a SQLite file per project under ``TRACKIO_DIR`` (default
  ``~/.cache/huggingface/trackio``); ``trackio show`` opens its dashboard. Its automatic CPU/GPU
  system metrics are off, so the project holds the run's metrics only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["RunTrackers", "scalars", "flat_config"]


def scalars(record: dict[str, Any]) -> dict[str, float | int]:
    """The tracker scalars of one metrics.jsonl record: ``"<phase>/<key>"`` -> value."""
    phase = record.get("phase", "train")
    return {f"{phase}/{k}": v for k, v in record.items()
            if isinstance(v, (int, float)) and k not in ("update", "time")}


def flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``section.key`` -> bool / int / float / str (what trackers store)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, f"{name}."))
        elif value is None or isinstance(value, (bool, int, str)) or (isinstance(value, float) and math.isfinite(value)):
            out[name] = "None" if value is None else value
        else:
            out[name] = str(value)
    return out


class RunTrackers:
    """The trackers of one run on its accelerator (main process only)."""

    def __init__(self, accelerator: Any, names: list[str], run_dir: Path, project: str, config: dict[str, Any]):
        from accelerate.tracking import TensorBoardTracker, TrackioTracker, WandBTracker

        run_dir = Path(run_dir)
        made = {
            "tensorboard": lambda: TensorBoardTracker("tensorboard", str(run_dir)),
            "wandb": lambda: WandBTracker(project, name=run_dir.name, dir=str(run_dir)),
            "trackio": lambda: TrackioTracker(project, name=run_dir.name, auto_log_cpu=False, auto_log_gpu=False),
        }
        self.accelerator = accelerator
        self.names = list(names)
        accelerator.log_with = [made[name]() for name in self.names]
        accelerator.init_trackers(project, config=flat_config(config))

    def log(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.accelerator.log(values, step=int(record.get("update", 0)))

    def close(self) -> None:
        """Finish every tracker (flushes wandb's offline run and trackio's store)."""
        trackers, self.accelerator.trackers = list(self.accelerator.trackers), []
        for tracker in trackers:
            tracker.finish()
