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

Data, never code. A checkpoint is often someone else's (a shared run folder), so nothing in it is
unpickled: each state file is a safetensors file whose tensors are the state's tensors and whose
metadata holds the rest of the nested structure as JSON (dicts, lists, tuples, numbers, strings; see
``encode_tree``). Checkpoints of older agentgym versions (``*.pt``, manifest version 1) are read with
``torch.load(weights_only=True)`` and only the numpy types of an RNG state allowed besides torch's own
safe types; anything else in them is refused with a message and never executed. ``manifest.json`` and
``state.json`` are validated against schemas (pydantic), every file name must resolve to a regular
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

Sharded runs (FSDP2, DeepSpeed ZeRO-3). ``gather_for_save`` (every process calls it: it gathers one
tensor at a time) collects the whole trainable weights (LoRA: the adapter; full fine-tuning: every
weight) and the learner state (optimizer moments, teacher, reference) on CPU; the main process
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
import math
import os
import re
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentgym.errors import CheckpointError
from agentgym.faults import crash_point

__all__ = ["save_checkpoint", "latest_checkpoint", "latest_intact_checkpoint", "load_checkpoint",
           "resume_checkpoint", "verify_checkpoint", "list_checkpoints", "clean_stray_temp",
           "assert_finite", "rng_state", "set_rng_state", "CheckpointError", "NonFiniteCheckpointError",
           "CheckpointWarning", "gather_for_save"]

MANIFEST_VERSION = 2  # 1: the state files were torch.save pickles (*.pt)
_TMP_PREFIX = ".step-"


class NonFiniteCheckpointError(CheckpointError):
    """A checkpoint (or the weights about to be saved) holds NaN or infinite values."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older intact one (or could not be verified)."""


# ------------------------------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ state files
# Markers of the JSON tree stored in a state file's safetensors metadata (a plain dict never uses them:
# a dict with a non-string key or a key starting with "__" is stored as a list of pairs instead).
_TENSOR, _TUPLE, _DICT, _FLOAT, _ARRAY = "__tensor__", "__tuple__", "__dict__", "__float__", "__ndarray__"
_ARRAY_DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                 "float16", "float32", "float64")
_TREE_KEY = "agentgym.tree"
STATE_PARTS = ("optimizer", "teacher", "schedule", "rng")  # the state files besides the model weights


def encode_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` (nested dicts / lists / tuples of tensors, numpy arrays, numbers, strings, None) as a
    JSON-able tree; its tensors are added to ``tensors`` (named by their order) and referenced by
    name. Any other type is a ``CheckpointError`` (it would need pickle).

    >>> tensors = {}
    >>> encode_tree({"step": 3, "betas": (0.9, 0.99), "m": torch.zeros(2)}, tensors), list(tensors)
    ({'step': 3, 'betas': {'__tuple__': [0.9, 0.99]}, 'm': {'__tensor__': '0'}}, ['0'])
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else {_FLOAT: repr(float(obj))}
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = obj.detach().cpu().contiguous()
        return {_TENSOR: name}
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in _ARRAY_DTYPES:
            raise CheckpointError(f"cannot store a numpy array of dtype {obj.dtype} in a checkpoint")
        return {_ARRAY: obj.tolist(), "dtype": obj.dtype.name}
    if isinstance(obj, tuple):
        return {_TUPLE: [encode_tree(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [encode_tree(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_tree(v, tensors) for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise CheckpointError(f"cannot store a dict key of type {type(k).__name__} ({k!r}) in a checkpoint")
        return {_DICT: [[k, encode_tree(v, tensors)] for k, v in obj.items()]}
    raise CheckpointError(f"cannot store a {type(obj).__module__}.{type(obj).__qualname__} in a checkpoint "
                          "(only tensors, numpy arrays, numbers, strings, None and dicts / lists / tuples of them)")


def decode_tree(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of ``encode_tree``; anything that is not such a tree is a ``ValueError``."""
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [decode_tree(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        raise ValueError(f"unexpected {type(tree).__name__} in a state tree")
    if len(tree) == 1 and _TENSOR in tree:
        name = tree[_TENSOR]
        if not isinstance(name, str) or name not in tensors:
            raise ValueError(f"reference to a tensor {name!r} the file does not hold")
        return tensors[name]
    if len(tree) == 1 and _TUPLE in tree and isinstance(tree[_TUPLE], list):
        return tuple(decode_tree(v, tensors) for v in tree[_TUPLE])
    if len(tree) == 1 and _FLOAT in tree:
        if tree[_FLOAT] not in ("nan", "inf", "-inf"):
            raise ValueError(f"bad non-finite float {tree[_FLOAT]!r}")
        return float(tree[_FLOAT])
    if set(tree) == {_ARRAY, "dtype"}:
        if tree["dtype"] not in _ARRAY_DTYPES or not isinstance(tree[_ARRAY], list):
            raise ValueError(f"bad numpy array (dtype {tree['dtype']!r})")
        return np.asarray(tree[_ARRAY], dtype=tree["dtype"])
    if len(tree) == 1 and _DICT in tree and isinstance(tree[_DICT], list):
        out = {}
        for pair in tree[_DICT]:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (str, int))):
                raise ValueError("bad dict entry in a state tree")
            out[pair[0]] = decode_tree(pair[1], tensors)
        return out
    if any(k.startswith("__") for k in tree):
        raise ValueError(f"unknown marker in a state tree: {sorted(tree)[:3]}")
    return {k: decode_tree(v, tensors) for k, v in tree.items()}


def save_state_file(obj: Any, path: str | Path) -> None:
    """Write ``obj`` (see ``encode_tree``) as one safetensors file: its tensors, and the rest of it as
    JSON in the file's metadata. No pickle is involved in writing or reading it."""
    from safetensors.torch import save_file
    tensors: dict[str, torch.Tensor] = {}
    tree = encode_tree(obj, tensors)
    seen: set[int] = set()
    for name, t in tensors.items():  # safetensors refuses tensors that share memory: copy the repeats
        ptr = t.untyped_storage().data_ptr()
        if t.numel() == 0 or ptr in seen:
            tensors[name] = t.clone()
        else:
            seen.add(ptr)
    save_file(tensors, str(path), metadata={_TREE_KEY: json.dumps(tree, allow_nan=False)})


def load_state_file(path: str | Path) -> Any:
    """Read a file written by ``save_state_file`` (``ValueError`` / safetensors errors when it is not one)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if _TREE_KEY not in metadata:
        raise ValueError(f"not an agentgym state file (no {_TREE_KEY!r} metadata)")
    return decode_tree(json.loads(metadata[_TREE_KEY]), tensors)


def _legacy_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` may build from an older checkpoint's ``*.pt`` files
    besides torch's own safe types: the numpy array of the numpy RNG state, nothing else."""
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import _reconstruct
    allowed: list[Any] = [_reconstruct, np.ndarray, np.dtype]
    allowed += [type(np.dtype(name)) for name in _ARRAY_DTYPES]
    return allowed


def load_legacy_file(path: str | Path) -> Any:
    """A ``*.pt`` state file of an older agentgym, read with ``torch.load(weights_only=True)`` (torch's
    restricted unpickler) and ``_legacy_globals``: a file that needs anything else is refused, unread."""
    with torch.serialization.safe_globals(_legacy_globals()):
        try:
            return torch.load(path, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch's message is many lines: keep what it refused
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
            found = re.search(r"Unsupported (global|operand)[^.\n]*", text)
            what = found.group(0) if found else (text.strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{path}: written by an older agentgym (pickle format) and not loadable safely "
                                  f"({what[:200]}); nothing in it was executed. Resume from a checkpoint written by "
                                  f"this version, or start the run over") from None


# ------------------------------------------------------------------------------------------ helpers
def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step-"):
        return None
    tail = name[len("step-"):]
    return int(tail) if tail.isdigit() else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``checkpoints/step-K`` folders of a run, newest first (complete or not, verified or not)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(s, p) for p in root.iterdir()
             if not p.is_symlink() and p.is_dir() and (s := _step_of(p)) is not None]
    return [p for _, p in sorted(found, key=lambda sp: sp[0], reverse=True)]


def clean_stray_temp(run_dir: str | Path) -> list[Path]:
    """Remove ``checkpoints/.step-*`` folders left by saves that were killed; returns what was removed.

    Only call it where no other process may be saving into the same run (``save_checkpoint`` does,
    before it writes); a reader such as ``agentgym eval RUN_DIR`` must not.
    """
    root = Path(run_dir) / "checkpoints"
    removed = []
    if root.is_dir() and not root.is_symlink():  # never remove anything in a folder a link points to
        for p in root.iterdir():
            if p.name.startswith(_TMP_PREFIX):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _state_checksum(state: dict[str, Any]) -> str:
    body = {k: v for k, v in state.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


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


def _tensors(obj: Any, prefix: str = "") -> Iterable[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts / lists / tuples, with a dotted path naming it."""
    if isinstance(obj, torch.Tensor):
        yield prefix or "<tensor>", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def _first_non_finite(obj: Any) -> tuple[str, str] | None:
    for name, t in _tensors(obj):
        if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all()):
            bad = t.detach()
            nan, inf = int(torch.isnan(bad).sum()), int(torch.isinf(bad).sum())
            return name, f"{nan} NaN and {inf} infinite of {t.numel()} values"
    return None  # non-tensor floats (the optimizer's hyper-parameters) are left alone on purpose


def assert_finite(obj: Any, what: str) -> None:
    """Raise ``NonFiniteCheckpointError`` if ``obj`` (a module, a state dict, nested containers of
    tensors) holds a NaN or an infinity; ``what`` names it in the message."""
    if isinstance(obj, torch.nn.Module):
        # The trainable parameters (what a LoRA checkpoint holds; all of them for a full fine-tune).
        trainable = {n: p for n, p in obj.named_parameters() if p.requires_grad}
        obj = trainable or dict(obj.state_dict())
    bad = _first_non_finite(obj)
    if bad is not None:
        raise NonFiniteCheckpointError(f"{what}: non-finite values in {bad[0]} ({bad[1]})")


# ------------------------------------------------------------------------------------------ save
def gather_for_save(model: Any, learner: Any, *, keep: bool = True) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(whole weights to save, or None when ``model`` is not sharded and saves itself; the learner's
    state with every tensor whole). A collective under sharding: every process calls it, one tensor
    at a time; ``keep=False`` on the processes that do not write (they hold no whole copy: their
    tensors come back empty)."""
    from agentgym.sharding import full, is_sharded, kept_here
    weights = None
    with kept_here(keep):
        if is_sharded(model):
            adapter = hasattr(model, "peft_config")
            keys = set(model.state_dict().keys())
            weights = {n: full(p, p) for n, p in model.named_parameters() if p.requires_grad or not adapter}
            if not adapter:
                weights.update({n: b.detach().cpu() for n, b in model.named_buffers() if n in keys})
        return weights, learner.state_dict()


def save_checkpoint(run_dir: str | Path, step: int, model: Any, learner: Any, *, config_hash: str,
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
    calls this, with the gathered tensors); by default the model saves itself and the learner's
    ``state_dict()`` is taken here.
    """
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
    clean_stray_temp(run_dir)
    final = root / f"step-{step}"
    state = dict(state) if state is not None else learner.state_dict()
    if check_finite:
        assert_finite(weights if weights is not None else model, f"refusing to save checkpoint step-{step}: the model weights")
        assert_finite(state, f"refusing to save checkpoint step-{step}: the learner state")
    previous = next((p for p in list_checkpoints(run_dir) if (p / "state.json").is_file()), None)
    tmp = root / f"{_TMP_PREFIX}{step}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        try:
            tmp.mkdir()
            if weights is not None:
                model.save_pretrained(tmp / "model", state_dict=weights)
            else:
                model.save_pretrained(tmp / "model")
            save_state_file(state.pop("optimizer"), tmp / "optimizer.safetensors")
            save_state_file(state.pop("teacher"), tmp / "teacher.safetensors")
            save_state_file(state, tmp / "schedule.safetensors")
            save_state_file(rng_state(), tmp / "rng.safetensors")
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
            record = {"step": step, "config_hash": config_hash, "time": time.time(), **(extra or {}),
                      "manifest_sha256": hashlib.sha256(manifest.encode()).hexdigest()}
            record["checksum"] = _state_checksum(record)
            _write_synced(tmp / "state.json", json.dumps(record, indent=2, default=str))
            for d in reversed(dirs):
                _fsync_path(d)
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
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(run_dir, final, keep)
    return final


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


# ------------------------------------------------------------------------------------------ verify / find
class _FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class _Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: Literal[1, 2]
    files: dict[str, _FileEntry] = Field(min_length=1)


class _State(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    step: int = Field(ge=0)
    config_hash: str | None = None
    manifest_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    checksum: str


_MAX_JSON_BYTES = 16 << 20  # state.json / manifest.json of any real checkpoint are a few KB
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def _schema_error(path: Path, name: str, exc: ValidationError) -> CheckpointError:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return CheckpointError(f"{path}/{name} does not match its schema: {where}: {err['msg']} "
                           f"(got {str(err.get('input'))[:80]!r}){more}")


def _read_json_file(path: Path, name: str) -> tuple[bytes, Any]:
    from agentgym.safeio import read_regular
    try:
        raw = read_regular(path / name, _MAX_JSON_BYTES, name)
        return raw, json.loads(raw)
    except OSError as exc:
        raise CheckpointError(f"{path}: {name} is missing or unreadable ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}/{name}: unreadable ({type(exc).__name__}: {str(exc)[:200]})") from None


def _inside(path: Path, rel: Any) -> Path:
    """``path / rel`` for a manifest name that stays inside the checkpoint folder and is a regular file
    (not a link); ``CheckpointError`` otherwise."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not _NAME.match(rel if isinstance(rel, str) else "") or any(p in (".", "..") for p in parts):
        raise CheckpointError(f"{path}/manifest.json names {str(rel)[:120]!r}, which is not a file name inside "
                              "the checkpoint folder")
    f = path
    for part in parts:
        f = f / part
        if f.is_symlink():
            raise CheckpointError(f"{path}: {rel} is (inside) a symbolic link; a checkpoint's files are never "
                                  "read through links")
    if not f.is_file():
        raise CheckpointError(f"{path}: {rel} is missing")
    return f


def verify_checkpoint(path: str | Path, *, deep: bool = True) -> dict[str, Any]:
    """Check a checkpoint folder; return its ``state.json`` or raise ``CheckpointError`` saying what
    is wrong (one line). ``deep`` (default) hashes every file; ``deep=False`` only checks presence and
    sizes. ``state.json`` and ``manifest.json`` must match their schemas, every name in the manifest
    must be a regular file inside the folder (no absolute names, ``..`` or links), and the manifest
    must list the files ``load_checkpoint`` reads.

    A checkpoint written before manifests existed (no ``manifest_sha256`` in ``state.json``) passes
    with a ``CheckpointWarning`` that it could not be verified.
    """
    path = Path(path)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path}: incomplete (no state.json)")
    _, state = _read_json_file(path, "state.json")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}/state.json: unreadable (not a JSON object)")
    if _step_of(path) is not None and state.get("step") != _step_of(path):
        raise CheckpointError(f"{path}/state.json: step {str(state.get('step'))[:40]!r} does not match the folder name")
    if "manifest_sha256" not in state:
        warnings.warn(f"{path}: written without a manifest (an older agentgym): its files cannot be verified",
                      CheckpointWarning, stacklevel=2)
        return state
    try:
        _State.model_validate(state)
    except ValidationError as exc:
        raise _schema_error(path, "state.json", exc) from None
    if state.get("checksum") != _state_checksum(state):
        raise CheckpointError(f"{path}/state.json: checksum mismatch (the file was altered)")
    raw, manifest_data = _read_json_file(path, "manifest.json")
    if hashlib.sha256(raw).hexdigest() != state["manifest_sha256"]:
        raise CheckpointError(f"{path}/manifest.json: sha256 mismatch (the manifest was altered or truncated)")
    try:
        manifest = _Manifest.model_validate(manifest_data)
    except ValidationError as exc:
        raise _schema_error(path, "manifest.json", exc) from None
    ext = ".pt" if manifest.version == 1 else ".safetensors"
    needed = [f"{part}{ext}" for part in STATE_PARTS]
    missing = [n for n in needed if n not in manifest.files]
    if not any(n.startswith("model/") and n.endswith(".safetensors") for n in manifest.files):
        missing.append("model/*.safetensors")
    if missing:
        raise CheckpointError(f"{path}/manifest.json does not list {', '.join(missing)}")
    for rel, meta in manifest.files.items():
        f = _inside(path, rel)
        size = f.stat().st_size
        if size != meta.size:
            raise CheckpointError(f"{path}: {rel} has {size} bytes, the manifest says {meta.size} "
                                  f"({'emptied' if size == 0 else 'truncated' if size < meta.size else 'grown'})")
        if deep:
            digest, _ = _sha256(f)
            if digest != meta.sha256:
                raise CheckpointError(f"{path}: {rel} sha256 mismatch (its bytes were altered)")
    return state


def latest_intact_checkpoint(run_dir: str | Path, *, deep: bool = True) -> Path | None:
    """The newest checkpoint that verifies (``verify_checkpoint``), or None when the run has none.

    A newer damaged checkpoint is skipped with a ``CheckpointWarning`` naming it and what is wrong
    (an incomplete folder without ``state.json`` is skipped silently: it is not a checkpoint yet).
    When checkpoints exist but none verifies, raises ``CheckpointError`` listing each one's damage
    rather than letting a run silently start over. Stray ``.step-*`` temporary folders are ignored
    (not removed: see ``clean_stray_temp``).
    """
    found = _newest_usable(run_dir, lambda p: verify_checkpoint(p, deep=deep), "using")
    return found[0] if found is not None else None


def _newest_usable(run_dir: str | Path, use: Any, verb: str) -> tuple[Path, Any] | None:
    """``(checkpoint, use(checkpoint))`` for the newest complete checkpoint ``use`` accepts, past
    damaged ones (``CheckpointError``: warned about); None when the run has no checkpoint. Any other
    error of ``use`` (non-finite weights, another configuration) is raised: an older checkpoint of
    the same run would not be a fix for it."""
    problems = []
    for p in list_checkpoints(run_dir):
        if not (p / "state.json").exists():
            continue  # incomplete: not a checkpoint yet
        try:
            result = use(p)
        except NonFiniteCheckpointError:
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if problems:
            warnings.warn(f"skipped damaged checkpoint(s): {'; '.join(problems)}; {verb} {p.name}",
                          CheckpointWarning, stacklevel=3)
        return p, result
    if problems:
        raise CheckpointError(f"no intact checkpoint in {Path(run_dir) / 'checkpoints'}: {'; '.join(problems)}")
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Backwards-compatible name of ``latest_intact_checkpoint`` (verifies; falls back with a warning)."""
    return latest_intact_checkpoint(run_dir)


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


def load_checkpoint(path: str | Path, model: Any, learner: Any, *, config_hash: str | None = None,
                    verify: bool = True) -> dict[str, Any]:
    """Restore model weights, learner state and RNG states from ``path``; returns ``state.json``.

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
    try:
        from agentgym.sharding import is_sharded
        if is_sharded(model):
            _load_sharded(model, weights, path)
        elif hasattr(model, "peft_config"):
            from peft import set_peft_model_state_dict
            result = set_peft_model_state_dict(model, weights)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise CheckpointError(f"adapter checkpoint {path} does not fit the model: unexpected {unexpected[:5]}")
        else:
            missing, unexpected = model.load_state_dict(weights, strict=False)
            if unexpected:
                raise CheckpointError(f"model checkpoint {path} does not fit the model: unexpected {unexpected[:5]}")
        learner.load_state_dict(learner_state)
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the model / learner: {type(exc).__name__}: "
                              f"{str(exc)[:300]}") from exc
    set_rng_state(rng)
    return state


def resume_checkpoint(run_dir: str | Path, model: Any, learner: Any, *,
                      config_hash: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that verifies *and* loads; None when the run has no checkpoint.

    Falls back to older checkpoints (with a ``CheckpointWarning``) past damaged ones. Does not fall
    back past a configuration mismatch (``ValueError``) or non-finite weights
    (``NonFiniteCheckpointError``): both are refused, since an older checkpoint of the same run
    would not be a fix for either.
    """
    return _newest_usable(run_dir, lambda p: load_checkpoint(p, model, learner, config_hash=config_hash),
                          "resumed from")


def _load_sharded(model: Any, weights: dict[str, torch.Tensor], path: Path) -> None:
    """Whole saved weights into a sharded model: each process keeps its shard of each tensor. Keys
    are the saved names (peft's adapter names drop the adapter, as ``save_pretrained`` writes them)."""
    from agentgym.sharding import load_full, local_data
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
    from agentgym.sharding import reshard
    reshard(model)


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    files = sorted(f for f in folder.glob("*.safetensors") if not f.is_symlink())
    if folder.is_symlink():
        raise CheckpointError(f"{folder} is a symbolic link; a checkpoint's files are never read through links")
    if not files:
        raise CheckpointError(f"no .safetensors weights in {folder}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(_read(f, "the weights", lambda p: load_file(str(p))))
    return out
