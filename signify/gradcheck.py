"""Reading a step's gradients once, before it: the non-finite check and the clipping norm.

The non-finite check reads max |g| per tensor, which is non-finite exactly when an entry is.
(An L1 norm would overflow for finite gradients: a 200k-entry fp16 gradient of 0.5s sums
past 65504.) With ``max_grad_norm`` the 2-norm of the gradients is read instead, and serves
as the check too: it is finite exactly when every gradient is.

Under FSDP2 each rank holds a shard of every gradient: the check and the norm then span the
shard group (`signify.sharding`), so that every rank skips, raises or clips alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import sharding

_MAX_ABS = float("inf")


def max_abs(grads: list[Tensor], device: torch.device | None = None) -> Tensor:
    """Max |g| of each non-empty gradient, stacked in the widest dtype (no cast overflows
    to inf). Empty gradients hold no non-finite value and have no infinity norm (torch
    raises on them): they are left out; with none left, a single 0."""
    if device is None and grads:
        device = grads[0].device
    grads = [g for g in grads if g.numel() > 0]
    if not grads:
        return torch.zeros(1, dtype=torch.float32, device=device)
    return torch.stack(torch._foreach_norm(grads, _MAX_ABS))  # type: ignore[arg-type, misc]


def all_finite(grads: list[Tensor], shard_group: Any = None) -> bool:
    """Whether every gradient is finite (on every rank of ``shard_group``): a host sync."""
    bad, mode = max_abs(grads), "foreach"
    if shard_group is not None:  # every rank of a sharded step raises together
        bad, mode = sharding.nonfinite_anywhere(bad, mode, shard_group), "graph"
    flag = ~torch.isfinite(bad).all() if mode == "foreach" else (bad != 0).any()
    return not bool(flag)


def grad_norm(grads: list[Tensor], device: torch.device, shard_group: Any = None) -> Tensor:
    """The 2-norm of ``grads``, as ``clip_grad_norm_`` computes it (per-tensor norms, then
    their norm), on ``device``; over the shards of every rank when sharded."""
    norms = []
    for d in dict.fromkeys(g.device for g in grads):
        norms += [n.to(device) for n in torch._foreach_norm([g for g in grads if g.device == d], 2)]
    total = (
        torch.linalg.vector_norm(torch.stack(norms))
        if norms
        else torch.zeros((), dtype=torch.float32, device=device)
    )
    if shard_group is not None:
        total = sharding.norm_everywhere(total, shard_group)
    return total
