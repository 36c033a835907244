"""The files of a checkpoint, data and never code: state files (a safetensors file whose tensors are
the state's tensors and whose metadata holds the rest of the nested structure as JSON, see
``encode_tree``), the read-only loader of older versions' ``*.pt`` files (``torch.load(weights_only=True)``
with only the numpy types of an RNG state allowed besides torch's own), the RNG states, and the
finiteness checks a checkpoint passes before it is written or loaded. The layout of a checkpoint
folder and how it is written and read: ``agentgym.checkpoint``.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from agentgym.errors import CheckpointError

__all__ = ["STATE_PARTS", "encode_tree", "decode_tree", "save_state_file", "load_state_file", "load_legacy_file",
           "rng_state", "set_rng_state", "assert_finite", "NonFiniteCheckpointError"]


class NonFiniteCheckpointError(CheckpointError):
    """A checkpoint (or the weights about to be saved) holds NaN or infinite values."""



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


# ------------------------------------------------------------------------------------------ finite
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

