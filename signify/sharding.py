"""Sharded parameters (FSDP2's ``fully_shard``): DTensors whose step runs on the local shard.

Under ``torch.distributed.fsdp.fully_shard`` every parameter is a ``DTensor`` sharded along
dim 0 of a device mesh; its gradient is a DTensor with the same placement (the reduce-scatter
of the data-parallel gradients has already averaged it). An elementwise step needs nothing
from other shards, so the executor steps each rank's local shard (`local`) in place, as
torch.optim does. Four things are not elementwise, and this module supplies them:

* the noise: a shard's random stream is keyed by (tensor, shard index) (`shard_index`), so
  that shards draw independent noise while replicas of one shard (HSDP) draw the same;
* the skip decision: a non-finite gradient may sit in one rank's shard only, so the executor
  sums the non-finite flags over the shard group (`shard_group`) before deciding, and every
  rank skips or steps together;
* reductions over a whole tensor or model (ALIAS's norms): summed over the shard group (the
  stepsize transform's ``reduce="sum"``, chosen automatically for sharded parameters).
* the gradient norm of ``max_grad_norm``: the squares summed over the shard group
  (`norm_everywhere`), as FSDP2 users clip with ``clip_grad_norm_``.

Optimizer state keeps torch's layout: buffers shaped like a parameter are DTensors with its
placement (``torch.zeros_like`` of the parameter), per-tensor scalars plain tensors, so
``state_dict`` is what torch.optim would save under FSDP2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - torch built without distributed
    DTensor = None  # type: ignore[misc, assignment]


def is_dtensor(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The tensor a step reads and writes: a DTensor's local shard, else ``t`` itself."""
    return t._local_tensor if is_dtensor(t) else t  # type: ignore[attr-defined, no-any-return]


def _shard_dims(t: Any) -> list[int]:
    return [d for d, pl in enumerate(t.placements) if pl.is_shard()]


def shard_index(t: Tensor) -> int:
    """0 for a plain or replicated tensor; for a sharded DTensor, 1 + the linear index of
    this rank's shard over the mesh dims it is sharded along (replicas share the index)."""
    if not is_dtensor(t):
        return 0
    dims = _shard_dims(t)
    if not dims:
        return 0
    mesh = t.device_mesh  # type: ignore[attr-defined]
    coord = mesh.get_coordinate()
    if coord is None:
        raise ValueError("a sharded parameter's mesh does not include this rank")
    index = 0
    for d in dims:
        index = index * mesh.size(d) + coord[d]
    return index + 1


def any_sharded(params: Sequence[Tensor]) -> bool:
    return any(is_dtensor(p) and _shard_dims(p) for p in params)


def shard_group(params: Sequence[Tensor]) -> Any:
    """The process group over which the shards of ``params`` are spread (None when no
    parameter is sharded). Raises for layouts whose reductions are not one sum over one
    group: parameters sharded along several mesh dims or over different meshes, or sharded
    and unsharded parameters in one optimizer."""
    sharded = [p for p in params if is_dtensor(p) and _shard_dims(p)]
    if not sharded:
        return None
    if len(sharded) != len(params):
        raise ValueError(
            "signify: this optimizer holds both sharded (FSDP) and unsharded parameters; their "
            "global reductions (the non-finite check, a stepsize's norms) differ (a sum over "
            "shards vs one replica): give each kind its own optimizer"
        )
    layouts = {(id(p.device_mesh), tuple(_shard_dims(p))) for p in sharded}  # type: ignore[attr-defined]
    if len(layouts) != 1:
        raise ValueError(
            "signify: the parameters are sharded over different meshes or mesh dims; one "
            "optimizer supports one layout (FSDP2's fully_shard over one mesh)"
        )
    ((_, dims),) = layouts
    if len(dims) != 1:
        raise ValueError(
            "signify: parameters sharded along several mesh dims are not supported (FSDP2 "
            "shards along one; HSDP replicates along the other)"
        )
    return sharded[0].device_mesh.get_group(dims[0])  # type: ignore[attr-defined]


def refuse(opt: Any, who: str, why: str) -> None:
    """Raise when ``opt`` holds sharded parameters: ``who`` cannot run on shards."""
    if any_sharded(opt.all_params()):
        raise ValueError(f"{who} does not support sharded (FSDP2 / DTensor) parameters: {why}")


def nonfinite_anywhere(bad: Tensor, mode: str | None, group: Any) -> Tensor:
    """The executor's non-finite evidence of this rank (``mode`` "foreach": per-tensor norms;
    "graph": a count), summed over ``group`` as a count: non-zero on every rank when any
    shard's gradient is non-finite. One all-reduce of one float per step."""
    import torch
    import torch.distributed as dist

    flag = (~torch.isfinite(bad)).any() if mode == "foreach" else (bad != 0).any()
    count = flag.to(torch.float32).reshape(1)
    dist.all_reduce(count, group=group)
    return count


def norm_everywhere(local_norm: Tensor, group: Any) -> Tensor:
    """The 2-norm over every rank's shard from this rank's: the squares summed over
    ``group`` (one all-reduce of one float per step; NaN or Inf on any rank reaches all)."""
    import torch.distributed as dist

    sq = local_norm.float().square().reshape(1)
    dist.all_reduce(sq, group=group)
    return sq.sqrt().reshape(())
