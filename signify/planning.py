"""The executor's plan: which tensors a step touches, grouped into chunks, and how they are
handed to the compiled graphs.

A *bucket* holds the stepped parameters of one param group, dtype and device; it is cut into
*chunks* of at most ``compile_chunk`` tensors. Every tensor reaches a graph as a 1-D alias of
its memory (`alias`), in its parameter's memory order (channels_last weights included). An
alias made with ``set_`` is not a view: dynamo then neither guards on the base tensor's rank
and sizes (which recompiled a graph for every new mix of 1-D and 2-D parameters in a chunk)
nor reads the base's sizes on every call.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .sharding import local
from .transforms.base import State

_NOT_PARAMS = ("params", "param_names")
_FROM_TENSOR = object()  # the cached value came from a tensor: compare no number equal to it


def _is_scalar_tensor(v: Any) -> bool:
    return isinstance(v, Tensor) and v.numel() == 1 and not v.is_complex()


def _is_entry(x: Any) -> bool:
    """A number or a 1-element tensor: an entry of a tuple hyperparameter such as betas."""
    return _is_scalar_tensor(x) or (isinstance(x, numbers.Real) and not isinstance(x, bool))


class HyperCache:
    """Device copies of a group's numeric hyperparameters, refreshed only when they change.

    Tensors are updated in place (a captured CUDA graph reads them by address); ``version``
    counts the times a tensor object was created or replaced."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, torch.device], dict[str, Any]] = {}
        self._tensors: dict[tuple[int, torch.device], dict[str, Tensor]] = {}
        self.version = 0

    def _slot(self, tensors: dict[str, Tensor], name: str, n: int, device: torch.device) -> Tensor:
        t = tensors.get(name)
        shape = () if n == 0 else (n,)
        if t is None or tuple(t.shape) != shape:
            tensors[name] = t = torch.empty(shape, dtype=torch.float32, device=device)
            self.version += 1
        return t

    def get(self, gi: int, group: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        key = (gi, device)
        values = self._values.setdefault(key, {})
        tensors = self._tensors.setdefault(key, {})
        for name, v in group.items():
            kind = type(v)
            if kind is float or kind is int:  # the common case, first (host cost per step)
                if values.get(name) != v or name not in tensors:
                    self._slot(tensors, name, 0, device).fill_(float(v))  # no sync
                    values[name] = v
                continue
            if (
                name in _NOT_PARAMS
                or isinstance(v, (bool, np.bool_))
                or v is None
                or isinstance(v, str)
            ):
                continue
            if _is_scalar_tensor(v):
                t = self._slot(tensors, name, 0, device)
                t.copy_(v.detach().reshape(()), non_blocking=True)
                values[name] = _FROM_TENSOR  # a later number must be written again
            elif isinstance(v, numbers.Real):  # numpy scalars too (np.float32 is no float)
                if values.get(name) != v or name not in tensors:
                    self._slot(tensors, name, 0, device).fill_(float(v))  # no sync
                    values[name] = v
            elif isinstance(v, (tuple, list)) and v and all(_is_entry(x) for x in v):
                if any(isinstance(x, Tensor) for x in v):  # betas=(tensor(.9), tensor(.999))
                    t = self._slot(tensors, name, len(v), device)
                    for i, x in enumerate(v):
                        if isinstance(x, Tensor):
                            t[i].copy_(x.detach().reshape(()), non_blocking=True)
                        else:
                            t[i].fill_(float(x))
                    values[name] = _FROM_TENSOR
                    continue
                tv = tuple(float(x) for x in v)
                if values.get(name) != tv or name not in tensors:
                    t = self._slot(tensors, name, len(tv), device)
                    for i, x in enumerate(tv):
                        t[i].fill_(x)  # launches with host scalars: no pageable copy
                    values[name] = tv
        return tensors

    def clear(self) -> None:
        self._values.clear()
        self._tensors.clear()
        self.version += 1


@dataclasses.dataclass
class Chunk:
    group_index: int
    params: list[Tensor]  # the real parameters (their .grad is read every step)
    orders: list[list[int] | None]  # dims in memory order per parameter (None: contiguous)
    views: list[Tensor]  # 1-D aliases of the parameters, then of padding tensors
    pad_grads: list[Tensor]  # gradients of the padding tensors (zeros)
    pad_counters: list[Tensor]  # the padding tensors' step counters
    states: list[State]  # per transform, 1-D aliases of its state buffers
    keys: Tensor  # the chunk's slice of its bucket's per-step random keys (an alias)
    static: tuple[tuple[str, Any], ...]
    device: torch.device
    rows: bool  # every size is a multiple of ROW (the graph may tell the compiler so)
    flat: Any = None  # the `signify.flat.FlatBucket` whose buffer is this chunk's one tensor


@dataclasses.dataclass
class Bucket:
    device: torch.device
    tensor_keys: Tensor  # int64 [n], one per tensor (global position; padding after)
    step_keys: Tensor  # int32 [n] (the low 32 bits of the keys), refreshed each step
    chunks: list[Chunk]


@dataclasses.dataclass
class Plan:
    buckets: list[Bucket]
    counters: list[Tensor]  # per-parameter counters (e.g. "step"), padding's included
    devices: list[torch.device]
    grad_params: list[Tensor]  # every real parameter, in chunk order
    flats: list[Any] = dataclasses.field(default_factory=list)  # flat buckets (`signify.flat`)

    def chunks(self) -> list[Chunk]:
        return [c for b in self.buckets for c in b.chunks]


def powers_of_two(n: int, cap: int) -> list[int]:
    out = []
    while n > 0:
        k = min(cap, 1 << (n.bit_length() - 1))
        out.append(k)
        n -= k
    return out


def dim_order(t: Tensor) -> list[int] | None:
    """The permutation of dims that lists ``t``'s elements in memory order (None when ``t``
    is contiguous); raises for tensors that do not cover a dense block of memory."""
    if t.is_contiguous():
        return None
    strides, sizes = t.stride(), t.shape
    order = sorted(range(t.dim()), key=lambda d: (-strides[d], -sizes[d]))
    if not t.permute(order).is_contiguous():
        raise ValueError(
            "signify steps dense parameters only (contiguous, or a permutation of a "
            f"contiguous block such as channels_last); got sizes {tuple(t.shape)} and "
            f"strides {t.stride()}"
        )
    return order


def check_stepped(opt: Any, active: Sequence[Sequence[Tensor]]) -> None:
    """Refuse, naming the parameter and before any state is made, what a step cannot write:
    a parameter whose ``.data`` was swapped for a complex or integer tensor after
    construction (its imaginary part would be dropped), one that is not a dense block of
    memory, and parameters whose memory overlaps (``Parameter(w.data)`` beside ``w``,
    overlapping slices): a compiled graph cannot take two written inputs that alias (inductor
    fails), ``flatten=True`` would re-home each into its own slot and silently untie them,
    and torch's own result then depends on its foreach flag. Tie weights by passing the one
    ``Parameter`` once. Runs when the plan is rebuilt, not every step."""
    spans = []
    for gi, ps in enumerate(active):
        names = opt.param_groups[gi].get("param_names")
        index = {id(p): i for i, p in enumerate(opt.param_groups[gi]["params"])}
        for p in ps:
            i = index.get(id(p), -1)
            what = f"param group {gi}, params[{i}]" + (f" ({names[i]!r})" if names else "")
            t = local(p)
            if t.is_complex() or not t.is_floating_point():
                raise ValueError(
                    f"{what} is now of dtype {t.dtype} (its .data was replaced): signify "
                    "steps real floating-point parameters only"
                )
            try:
                dim_order(t)
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None
            if t.numel():
                start = t.storage_offset() * t.element_size()
                where = (t.device, t.untyped_storage().data_ptr())
                spans.append((where, start, start + t.numel() * t.element_size(), what))
    spans.sort(key=lambda s: (str(s[0][0]), s[0][1], s[1]))
    for prev, cur in itertools.pairwise(spans):
        if prev[0] == cur[0] and cur[1] < prev[2]:
            raise ValueError(
                f"{prev[3]} and {cur[3]} overlap in memory: signify cannot step parameters "
                "that share elements (tie weights by passing the one Parameter once)"
            )


def alias(t: Tensor, order: Sequence[int] | None = None) -> Tensor:
    """``t``'s elements in memory order (of ``order``) as a 1-D tensor sharing its memory and
    not a view of it. A tensor laid out otherwise (a gradient with other strides than its
    parameter) comes back as a contiguous copy: only read-only inputs may need one."""
    if order is not None:
        t = t.permute(list(order))
    if not t.is_contiguous():
        return t.reshape(-1)
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), (t.numel(),), (1,))


def aliases_of_state(
    opt: Any, ps: Sequence[Tensor], orders: Sequence[list[int] | None], full: str
) -> list[Tensor]:
    """1-D aliases of the state buffer ``full`` of each parameter (per-tensor scalars, such as
    step counters, as 1-element aliases). A buffer laid out unlike its parameter is re-laid
    (once, here) so that its memory order is the parameter's. Sharded parameters and their
    buffers (DTensors) are aliased through their local shards."""
    out = []
    for p, order in zip(ps, orders):
        buf = opt.state[p][full]
        if order is not None and buf.shape == p.shape and not buf.permute(order).is_contiguous():
            buf = torch.empty_like(p, dtype=buf.dtype).copy_(buf)
            opt.state[p][full] = buf
        buf, p = local(buf), local(p)
        same = buf.numel() == p.numel() and buf.dim() > 0
        out.append(alias(buf, order if same else None))
    return out
