"""Finding and verifying checkpoints: the ``checkpoints/step-K`` folders of a run, the schemas of
``manifest.json`` and ``state.json`` (pydantic), the checks that every file the manifest names is a
regular file inside the folder with the recorded size and sha256, and the newest checkpoint that
verifies (falling back past damaged ones with a ``CheckpointWarning``). The checksums only detect
accidental damage (a forger can recompute them): loading is safe on its own (``agentgym.checkpoint_files``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentgym.checkpoint_files import STATE_PARTS, NonFiniteCheckpointError
from agentgym.errors import CheckpointError
from agentgym.safeio import read_regular

__all__ = ["MANIFEST_VERSION", "CheckpointWarning", "list_checkpoints", "clean_stray_temp", "verify_checkpoint",
           "latest_intact_checkpoint", "latest_checkpoint"]

MANIFEST_VERSION = 2  # 1: the state files were torch.save pickles (*.pt)
_TMP_PREFIX = ".step-"


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older intact one (or could not be verified)."""


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
