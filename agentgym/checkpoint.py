"""Checkpoints of a training run: everything needed to resume exactly where a run stopped.

``RUN_DIR/checkpoints/step-K/`` holds (see the run-folder contract):

- ``model/``: the peft adapter (``save_pretrained``) or the full model;
- ``optimizer.safetensors``: the optimizer state;
- ``teacher.safetensors``: the teacher's weights (the EMA / refreshed copy of the trainable
  parameters, i.e. the second adapter under LoRA) with its mode, or None for learners without one;
- ``schedule.safetensors``: the update counter (schedules such as SERL's lambda derive from it) and
  the reference weights of the KL term when it is on;
- ``rng.safetensors``: python / numpy / torch (and CUDA) RNG states;
- ``manifest.json``: ``{"version": 2, "files": {relative path: {"sha256": ..., "size": ...}}}`` for
  every file above;
- ``state.json``: ``{"step": K, "config_hash": ..., "time": ..., "manifest_sha256": ..., "checksum": ...}``,
  written last, so a checkpoint without it is incomplete and ignored.

Data, never code (``agentgym.checkpoint_files``). A checkpoint is often someone else's (a shared run
folder), so nothing in it is unpickled: each state file is a safetensors file whose tensors are the state's tensors and whose
metadata holds the rest of the nested structure as JSON (dicts, lists, tuples, numbers, strings; see
``encode_tree``). Checkpoints of older agentgym versions (``*.pt``, manifest version 1) are read with
``torch.load(weights_only=True)`` and only the numpy types of an RNG state allowed besides torch's own
safe types; anything else in them is refused with a message and never executed. ``manifest.json`` and
``state.json`` are validated against schemas (pydantic, ``agentgym.checkpoint_verify``), every file name must resolve to a regular
file inside the checkpoint folder (no absolute names, ``..`` or symbolic links), and any damage is a
one-line ``CheckpointError`` that makes ``latest_intact_checkpoint`` fall back to an older one. The
checksums only detect accidental damage: a forger can recompute them, which is why loading must be
safe on its own. A ``checkpoints`` folder that is a symbolic link is refused for writing (saving
prunes old checkpoints in it), and step folders that are links are not checkpoints.

Crash consistency. A checkpoint is written to a temporary folder ``checkpoints/.step-K-XXXX``, every
file and folder is fsynced, the manifest and then ``state.json`` are written (and fsynced), and the
folder is renamed into place (and the parent fsynced): a run killed at any point leaves the previous
checkpoint as the latest complete one, and at worst a stray ``.step-*`` folder that the next save
removes. A failed write (a full disk: ENOSPC) raises ``CheckpointError`` after removing the temporary
folder. ``latest_intact_checkpoint`` verifies ``state.json``'s checksum, the manifest's sha256 and
every file's sha256 and size, and falls back (with a warning naming what is wrong) to the newest
checkpoint that verifies. ``load_checkpoint`` reads everything into memory first, turns any
torch / safetensors / pickle failure into ``CheckpointError``, refuses non-finite tensors
(``NonFiniteCheckpointError``), and only then touches the model and the learner.

What is saved comes from one object (``Checkpointable``: a learner's ``Engine``, or the learner):
its ``unwrapped`` model's weights and its ``state_dict()`` (updates, optimizer, teacher, reference).

Sharded runs (FSDP2, DeepSpeed ZeRO-3). ``gather_for_save`` (every process calls it: it gathers one
tensor at a time) collects the whole trainable weights (LoRA: the adapter; full fine-tuning: every
weight) and the engine's state (optimizer moments, teacher, reference) on CPU; the main process
passes them to ``save_checkpoint(weights=..., state=...)``. The files are the same as a one-process
run's, and ``load_checkpoint`` cuts each process's shard back out of them, so a checkpoint moves
between one process and N, or between N and M processes. Memory: the main process holds one whole
copy of what is saved in CPU RAM while it writes (the others none): for a 7B full fine-tune under
FSDP2 with bf16 mixed precision, fp32 weights and AdamW moments are ~90 GB, ~120 GB with SERL's
teacher copy. A per-process sharded format (torch.distributed.checkpoint) is not implemented.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file

from agentgym.checkpoint_files import (STATE_PARTS, NonFiniteCheckpointError, assert_finite, decode_tree, encode_tree,
                                       load_legacy_file, load_state_file, rng_state, save_state_file, set_rng_state)
from agentgym.checkpoint_verify import (_TMP_PREFIX, MANIFEST_VERSION, CheckpointWarning, _inside, _newest_usable,
                                        _sha256, _state_checksum, _step_of, clean_stray_temp, latest_checkpoint,
                                        latest_intact_checkpoint, list_checkpoints, verify_checkpoint)
from agentgym.errors import CheckpointError
from agentgym.faults import crash_point
from agentgym.sharding import full, is_sharded, kept_here, load_full, local_data, reshard

__all__ = ["Checkpointable", "save_checkpoint", "latest_checkpoint", "latest_intact_checkpoint", "load_checkpoint",
           "resume_checkpoint", "verify_checkpoint", "list_checkpoints", "clean_stray_temp",
           "assert_finite", "rng_state", "set_rng_state", "CheckpointError", "NonFiniteCheckpointError",
           "CheckpointWarning", "gather_for_save", "STATE_PARTS", "MANIFEST_VERSION", "encode_tree", "decode_tree",
           "save_state_file", "load_state_file", "load_legacy_file"]


class Checkpointable(Protocol):
    """What a checkpoint saves and restores: a learner's ``Engine`` (or the learner, which forwards to it)."""

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The model whose weights are saved (``save_pretrained``) and loaded."""

    def state_dict(self) -> dict[str, Any]:
        """``{"updates", "optimizer", "teacher", "reference"}``, every tensor whole and on CPU."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


# ------------------------------------------------------------------------------------------ save
def gather_for_save(engine: Checkpointable, *, keep: bool = True) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(whole weights to save, or None when ``engine.unwrapped`` is not sharded and saves itself; the
    engine's state with every tensor whole). A collective under sharding: every process calls it, one
    tensor at a time; ``keep=False`` on the processes that do not write (they hold no whole copy:
    their tensors come back empty)."""
    model = engine.unwrapped
    weights = None
    with kept_here(keep):
        if is_sharded(model):
            adapter = hasattr(model, "peft_config")
            keys = set(model.state_dict().keys())
            weights = {n: full(p, p) for n, p in model.named_parameters() if p.requires_grad or not adapter}
            if not adapter:
                weights.update({n: b.detach().cpu() for n, b in model.named_buffers() if n in keys})
        return weights, engine.state_dict()


def save_checkpoint(run_dir: str | Path, step: int, engine: Checkpointable, *, config_hash: str,
                    extra: dict[str, Any] | None = None, keep: int = 2, check_finite: bool = True,
                    weights: dict[str, torch.Tensor] | None = None, state: dict[str, Any] | None = None) -> Path:
    """Write ``checkpoints/step-{step}`` crash-consistently and prune; returns the new folder.

    Removes stray ``.step-*`` temporary folders first. With ``check_finite`` (the default) weights or
    learner state holding NaN / inf are refused (``NonFiniteCheckpointError``) before anything is
    written, so the previous checkpoint stays the latest. Any failure while writing (``ENOSPC``, an
    I/O error, a serialisation error) removes the temporary folder and raises ``CheckpointError``;
    the previous checkpoint stays the latest. After the rename, the ``keep`` newest complete
    checkpoints are kept, older ones are removed, and so are checkpoints of a *later* step than
    ``step`` (left by an abandoned timeline: a run restarted from an earlier checkpoint).

    ``weights`` / ``state``: what ``gather_for_save`` returned (a sharded model: only the main process
    calls this, with the gathered tensors); by default the model saves itself and the engine's
    ``state_dict()`` is taken here.
    """
    root = _checkpoints_folder(run_dir, step)
    clean_stray_temp(run_dir)
    final = root / f"step-{step}"
    model = engine.unwrapped
    state = dict(state) if state is not None else engine.state_dict()
    if check_finite:
        assert_finite(weights if weights is not None else model, f"refusing to save checkpoint step-{step}: the model weights")
        assert_finite(state, f"refusing to save checkpoint step-{step}: the learner state")
    previous = next((p for p in list_checkpoints(run_dir) if (p / "state.json").is_file()), None)
    tmp = root / f"{_TMP_PREFIX}{step}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        try:
            tmp.mkdir()
            _write_files(tmp, model, weights, state)
            _write_manifest_and_state(tmp, {"step": step, "config_hash": config_hash, "time": time.time(), **(extra or {})})
            crash_point("checkpoint", step)  # every file written, not yet renamed into place
        except Exception as exc:
            # torch.save reports a full disk as "unexpected pos ..." / "file write failed" without an
            # errno: the free space at the moment of the failure tells (before the folder is removed).
            full = _is_disk_full(exc) or _free_bytes(root) < _NEARLY_FULL
            shutil.rmtree(tmp, ignore_errors=True)
            still = f"; {previous.name} is still the latest checkpoint" if previous else "; there is no earlier checkpoint"
            if full:
                free = _free_bytes(root)
                raise CheckpointError(f"saving checkpoint step-{step} failed: no space left on the device of {root} "
                                      f"({free} bytes free; {type(exc).__name__}: {exc}); nothing was left half-written{still}") from exc
            raise CheckpointError(f"saving checkpoint step-{step} to {root} failed: {type(exc).__name__}: {exc}; "
                                  f"nothing was left half-written{still}") from exc
        _rename_into_place(root, tmp, final, step)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(run_dir, final, keep)
    return final


def _checkpoints_folder(run_dir: str | Path, step: int) -> Path:
    """``RUN_DIR/checkpoints``, created (and its parent fsynced) if missing; never through a link."""
    root = Path(run_dir) / "checkpoints"
    if root.is_symlink():
        raise CheckpointError(f"saving checkpoint step-{step}: {root} is a symbolic link (to {os.readlink(root)!r}); "
                              "refusing to write (and prune old checkpoints) through it")
    created = not root.is_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if created:
            _fsync_path(root.parent)
    except OSError as exc:
        raise CheckpointError(f"saving checkpoint step-{step}: cannot create {root} ({exc})") from exc
    return root


def _write_files(tmp: Path, model: Any, weights: dict[str, torch.Tensor] | None, state: dict[str, Any]) -> None:
    """The model (or the gathered ``weights``) and the state files; ``state`` loses its optimizer and teacher."""
    if weights is not None:
        model.save_pretrained(tmp / "model", state_dict=weights)
    else:
        model.save_pretrained(tmp / "model")
    save_state_file(state.pop("optimizer"), tmp / "optimizer.safetensors")
    save_state_file(state.pop("teacher"), tmp / "teacher.safetensors")
    save_state_file(state, tmp / "schedule.safetensors")
    save_state_file(rng_state(), tmp / "rng.safetensors")


def _write_manifest_and_state(tmp: Path, record: dict[str, Any]) -> None:
    """Fsync every file, then write the manifest of their sha256 / sizes and ``state.json`` (``record``
    + the manifest's sha256 + a checksum), and fsync every folder."""
    files: dict[str, dict[str, Any]] = {}
    dirs = [tmp]
    for p in sorted(tmp.rglob("*")):
        if p.is_dir():
            dirs.append(p)
            continue
        _fsync_path(p)
        digest, size = _sha256(p)
        files[p.relative_to(tmp).as_posix()] = {"sha256": digest, "size": size}
    manifest = json.dumps({"version": MANIFEST_VERSION, "files": files}, indent=1, sort_keys=True)
    _write_synced(tmp / "manifest.json", manifest)
    record = {**record, "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest()}
    record["checksum"] = _state_checksum(record)
    _write_synced(tmp / "state.json", json.dumps(record, indent=2, default=str))
    for d in reversed(dirs):
        _fsync_path(d)


def _rename_into_place(root: Path, tmp: Path, final: Path, step: int) -> None:
    if final.exists():
        # Re-saving a step (a resume from an earlier checkpoint): move the old folder out of the way
        # under a temporary name (removed below, or by the next save if we are killed in between).
        aside = root / f"{_TMP_PREFIX}{step}-replaced-{os.getpid()}-{time.monotonic_ns()}"
        os.rename(final, aside)
        os.rename(tmp, final)
        _fsync_path(root)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, final)
        _fsync_path(root)


def _prune(run_dir: str | Path, final: Path, keep: int) -> None:
    step = _step_of(final)
    root = Path(run_dir) / "checkpoints"
    kept, doomed = 0, []
    for p in list_checkpoints(run_dir):
        if _step_of(p) > step:  # an abandoned timeline's checkpoint: it must never become "latest" again
            doomed.append(p)
        elif kept < max(keep, 1) and (p / "state.json").is_file():
            kept += 1
        else:
            doomed.append(p)
    # Renamed away first, so that a kill during the removal leaves a stray temporary folder (removed
    # by the next save), never a half-deleted step-K.
    for p in doomed:
        aside = root / f"{_TMP_PREFIX}{_step_of(p)}-pruned-{os.getpid()}-{time.monotonic_ns()}"
        try:
            os.rename(p, aside)
        except OSError:
            continue
        shutil.rmtree(aside, ignore_errors=True)
    if doomed:
        _fsync_path(root)



def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _is_disk_full(exc: BaseException) -> bool:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if any(m in text for m in ("No space left", "StorageFull", "Disk quota", "file write failed")):
            return True
        e = e.__cause__ or e.__context__
    return False


_NEARLY_FULL = 1 << 20  # bytes free under which a failed write is taken for a full disk


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


# ------------------------------------------------------------------------------------------ load
def _read(path: Path, what: str, reader) -> Any:
    try:
        return reader(path)
    except CheckpointError:
        raise
    except (Exception, RecursionError) as exc:  # torch / safetensors / JSON errors all differ: report one kind
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: cannot read {what} ({type(exc).__name__}: {text})") from None


def _read_part(path: Path, part: str, what: str) -> Any:
    """A state file: ``part.safetensors`` (this version), else an older version's ``part.pt`` read
    with ``load_legacy_file``; never through a symbolic link."""
    new, old = path / f"{part}.safetensors", path / f"{part}.pt"
    if new.exists() or new.is_symlink() or not (old.exists() or old.is_symlink()):
        return _read(_inside(path, new.name), what, load_state_file)
    return _read(_inside(path, old.name), what, load_legacy_file)


def load_checkpoint(path: str | Path, engine: Checkpointable, *, config_hash: str | None = None,
                    verify: bool = True) -> dict[str, Any]:
    """Restore ``engine``'s model weights and state and the RNG states from ``path``; returns ``state.json``.

    Raises ``ValueError`` (as before) when ``config_hash`` differs from the checkpoint's,
    ``CheckpointError`` when the checkpoint is damaged (manifest mismatch, unreadable file, weights
    that do not fit the model) and ``NonFiniteCheckpointError`` when any weight, teacher weight or
    optimizer tensor is NaN / infinite. Everything is read and checked before the model, the learner
    or the RNGs are touched, so a refused checkpoint leaves them as they were (except for a weight
    mismatch found by peft / torch while loading).
    """
    path = Path(path)
    state = verify_checkpoint(path) if verify else _read(path / "state.json", "state.json",
                                                       lambda p: json.loads(p.read_text()))
    if config_hash is not None and state.get("config_hash") != config_hash:
        raise ValueError(f"checkpoint {path} was written by a different configuration "
                         f"(hash {state.get('config_hash')} != {config_hash}); use a new run_dir or --train.resume false")
    weights = _load_weights(path / "model")
    learner_state = _read_part(path, "schedule", "the schedule state")
    if not isinstance(learner_state, dict):
        raise CheckpointError(f"{path}: the schedule state is a {type(learner_state).__name__}, not a dict")
    learner_state["optimizer"] = _read_part(path, "optimizer", "the optimizer state")
    learner_state["teacher"] = _read_part(path, "teacher", "the teacher weights")
    rng = _read_part(path, "rng", "the RNG states")
    assert_finite(weights, f"refusing to resume from {path}: the model weights")
    assert_finite(learner_state, f"refusing to resume from {path}: the learner state")
    before = rng_state()
    try:  # a malformed RNG state is found before the model and the learner are touched
        set_rng_state(rng)
    except Exception as exc:  # noqa: BLE001 - random / numpy / torch each raise their own kind
        set_rng_state(before)
        raise CheckpointError(f"{path}: the RNG states are malformed ({type(exc).__name__}: {str(exc)[:200]})") from None
    set_rng_state(before)
    model = engine.unwrapped
    try:
        if is_sharded(model):
            _load_sharded(model, weights, path)
        elif hasattr(model, "peft_config"):
            from peft import set_peft_model_state_dict  # peft only for an adapter (a plain model's resume never imports it)
            result = set_peft_model_state_dict(model, weights)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise CheckpointError(f"adapter checkpoint {path} does not fit the model: unexpected {unexpected[:5]}")
        else:
            missing, unexpected = model.load_state_dict(weights, strict=False)
            if unexpected:
                raise CheckpointError(f"model checkpoint {path} does not fit the model: unexpected {unexpected[:5]}")
        engine.load_state_dict(learner_state)
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model / learner: {type(exc).__name__}: "
                              f"{str(exc)[:300]}") from exc
    set_rng_state(rng)
    return state


def resume_checkpoint(run_dir: str | Path, engine: Checkpointable, *,
                      config_hash: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that verifies *and* loads; None when the run has no checkpoint.

    Falls back to older checkpoints (with a ``CheckpointWarning``) past damaged ones. Does not fall
    back past a configuration mismatch (``ValueError``) or non-finite weights
    (``NonFiniteCheckpointError``): both are refused, since an older checkpoint of the same run
    would not be a fix for either.
    """
    return _newest_usable(run_dir, lambda p: load_checkpoint(p, engine, config_hash=config_hash),
                          "resumed from")


def _load_sharded(model: Any, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Whole saved weights into a sharded model: each process keeps its shard of each tensor. Keys
    are the saved names (peft's adapter names drop the adapter, as ``save_pretrained`` writes them)."""
    if hasattr(model, "peft_config"):
        adapters = list(model.peft_config)
        targets = {}
        for n, p in model.named_parameters():
            if p.requires_grad:
                key = n
                for a in adapters:
                    key = key.replace(f".{a}", "")
                targets[key] = p
    else:
        targets = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
    unexpected = [k for k in weights if k not in targets and (hasattr(model, "peft_config") or k not in buffers)]
    if unexpected:
        raise CheckpointError(f"checkpoint {path} does not fit the model: unexpected {unexpected[:5]}")
    for k, v in weights.items():
        if k in targets:
            if tuple(v.shape) != tuple(targets[k].shape):
                raise CheckpointError(f"checkpoint {path}: {k} has shape {tuple(v.shape)}, the model {tuple(targets[k].shape)}")
            load_full(local_data(targets[k]), v, targets[k])
        else:
            with torch.no_grad():
                buffers[k].copy_(v)
    reshard(model)


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    files = sorted(f for f in folder.glob("*.safetensors") if not f.is_symlink())
    if folder.is_symlink():
        raise CheckpointError(f"{folder} is a symbolic link; a checkpoint's files are never read through links")
    if not files:
        raise CheckpointError(f"no .safetensors weights in {folder}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(_read(f, "the weights", lambda p: load_file(str(p))))
    return out
