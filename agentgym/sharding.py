"""Weights that may be sharded across processes: plain tensors (one process, DDP, DeepSpeed ZeRO-1/2),
FSDP2 ``DTensor`` parameters (``torch.distributed.fsdp.fully_shard``, what ``accelerate`` builds with
``fsdp_version: 2``) and DeepSpeed ZeRO-3 partitions (``param.ds_tensor``).

The learners keep second weight sets - the teacher (fixed / EMA / refresh) and the KL reference -
as copies of *this process's part* of the trainable parameters, so a sharded run holds 1/N of each
copy per process and never gathers the full state to score or to move the teacher:

- ``snapshot(model)``: this process's part of every trainable parameter, cloned (a ``DTensor``
  clone keeps its sharding);
- ``local_data(p)``: the tensor that holds this process's values of ``p`` (written in place, so the
  next forward's all-gather reads it);
- ``swapped(model, params)``: a context in which the parameters hold ``params`` (swapped in place,
  shard by shard; FSDP2 units are resharded on the way in and out so no unsharded copy of the
  other weights survives). No autograd graph may be alive across it: the learners run teacher and
  reference passes before the student's forward of a micro-batch.

Saving and resuming gather / scatter one tensor at a time (``full`` / ``shard_as``): checkpoints
of a sharded run are the same files as a one-process run's, loadable by either.

>>> import torch
>>> lin = torch.nn.Linear(2, 1, bias=False); _ = lin.weight.data.fill_(1.0)
>>> saved = snapshot(lin); _ = saved["weight"].fill_(5.0)
>>> with swapped(lin, saved):
...     float(lin(torch.ones(1, 2)))
10.0
>>> float(lin.weight.sum())
2.0
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["is_dtensor", "is_zero3", "is_sharded", "local_data", "snapshot", "swapped", "reshard", "full",
           "shard_as", "load_full", "full_state", "fsdp_modules", "kept_here"]


def is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return False
    return isinstance(t, DTensor)


def is_zero3(p: Any) -> bool:
    """A DeepSpeed ZeRO-3 parameter (its values live in ``p.ds_tensor``, ``p.data`` is a placeholder)."""
    return hasattr(p, "ds_id") and hasattr(p, "ds_tensor")


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether any parameter of ``model`` is an FSDP2 DTensor or a ZeRO-3 partition."""
    return any(is_dtensor(p) or is_zero3(p) for p in model.parameters())


def fsdp_modules(model: torch.nn.Module) -> list[Any]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def reshard(model: torch.nn.Module) -> None:
    """Free every FSDP2 unit's unsharded parameters (the root and the head stay unsharded after a
    forward by default), so that the next forward gathers from the shards as they are now."""
    for m in fsdp_modules(model):
        m.reshard()


def local_data(p: torch.Tensor) -> torch.Tensor:
    """The tensor holding this process's values of parameter ``p``, to read or write in place."""
    if is_zero3(p):
        return p.ds_tensor
    return p.detach()  # a DTensor's detach shares its local shard's storage


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of this process's part of each trainable parameter (the whole parameter unsharded)."""
    with torch.no_grad():
        return {n: local_data(p).clone() for n, p in trainable(model).items()}


def _swap(a: torch.Tensor, b: torch.Tensor) -> None:
    tmp = a.clone()
    a.copy_(b)
    b.copy_(tmp)


@contextlib.contextmanager
def swapped(model: torch.nn.Module, params: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """``model``'s parameters named in ``params`` hold ``params``' values inside the block.

    Plain parameters swap storage (``.data``, no copy); sharded ones swap their local shard in place
    (one parameter's worth of scratch memory at a time). ``params`` holds the model's values inside
    the block and gets its own back on exit.
    """
    if not params:
        yield
        return
    named = dict(model.named_parameters())
    sharded = is_sharded(model)
    with torch.no_grad():
        reshard(model)
        for n, t in params.items():
            p = named[n]
            if sharded:
                _swap(local_data(p), t)
            else:
                p.data, params[n] = t, p.data
    try:
        yield
    finally:
        with torch.no_grad():
            reshard(model)
            for n in params:
                p = named[n]
                if sharded:
                    _swap(local_data(p), params[n])
                else:
                    p.data, params[n] = params[n], p.data


# ------------------------------------------------------------------------------------------ gather / scatter
_KEEP = [True]


@contextlib.contextmanager
def kept_here(keep: bool) -> Iterator[None]:
    """Inside, ``full`` still takes part in every gather but returns an empty tensor where ``keep``
    is False: the processes that do not write a checkpoint hold no whole copy of it."""
    _KEEP.append(bool(keep))
    try:
        yield
    finally:
        _KEEP.pop()


def full(t: torch.Tensor, param: Any = None) -> torch.Tensor:
    """The whole tensor, on CPU (a collective for a DTensor: every process must call it, in the
    same order). ``param``: the ZeRO-3 parameter whose partition ``t`` is (gathered through
    DeepSpeed). Under ``kept_here(False)``: an empty tensor (after taking part)."""
    if is_dtensor(t):
        whole = t.full_tensor().detach()
        return whole.cpu() if _KEEP[-1] else torch.empty(0)
    if param is not None and is_zero3(param):
        import deepspeed  # optional (the deepspeed extra): only a ZeRO-3 parameter gets here
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            return param.data.detach().cpu().clone() if _KEEP[-1] else torch.empty(0)
    return t.detach().cpu()


def shard_as(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor) laid out as ``like``: this process's shard of it for a DTensor
    (cut locally, no communication), else ``value`` on ``like``'s device and dtype."""
    if is_dtensor(like):
        from torch.distributed.tensor import distribute_tensor  # a DTensor exists: torch has distributed
        value = value.to(device=like.device, dtype=like.dtype)
        return distribute_tensor(value, like.device_mesh, like.placements, src_data_rank=None)
    return value.to(device=like.device, dtype=like.dtype)


def load_full(dest: torch.Tensor, value: torch.Tensor, param: Any = None) -> None:
    """Write a whole tensor ``value`` into ``dest`` (a parameter's local data, a teacher shard, an
    optimizer state), cutting out this process's shard where ``dest`` is sharded."""
    with torch.no_grad():
        if param is not None and is_zero3(param):
            import deepspeed  # optional (the deepspeed extra): only a ZeRO-3 parameter gets here
            with deepspeed.zero.GatheredParameters([param], modifier_rank=0):
                param.data.copy_(value.to(param.data.device, param.data.dtype))
            return
        dest.copy_(shard_as(value, dest))


def full_state(obj: Any) -> Any:
    """``obj`` (nested dicts / lists of tensors: an optimizer state dict) with every DTensor
    gathered whole and every tensor on CPU (a collective where any is sharded)."""
    if isinstance(obj, torch.Tensor):
        return full(obj)
    if isinstance(obj, dict):
        return {k: full_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [full_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(full_state(v) for v in obj)
    return obj
