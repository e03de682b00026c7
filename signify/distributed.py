"""Majority vote as a DDP communication hook, for training loops that keep DDP.

    from signify.distributed import MajorityVoteHookState, majority_vote_hook
    ddp = DistributedDataParallel(model)
    ddp.register_comm_hook(MajorityVoteHookState(), majority_vote_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-4)       # signSGD with majority vote

The hook replaces DDP's all-reduce of each gradient bucket by the 1-bit majority vote of
`signify.bitvote`: every rank's gradient becomes ``sign(sum_r sign(g_r))`` in {-1, 0, +1},
identical on all ranks (DDP does not divide a hooked bucket by the world size). A plain
``torch.optim.SGD`` (no momentum) then performs signSGD-MV (Bernstein et al. 2018).

Hook or in-optimizer vote (``signify(..., vote="majority")``)?

* The hook sees gradients only. Momentum applied after it (SGD momentum, Adam, a signify
  optimizer) is momentum of the *voted* signs, every rank computing the same. Signum with
  majority vote (Bernstein et al. 2019) votes on each worker's *own momentum*: that needs the
  in-optimizer vote, which also follows ``blocks=`` (only the active block's signs travel)
  and overlaps nothing with the backward pass.
* The hook overlaps the vote with the backward pass, bucket by bucket, and keeps DDP's
  bookkeeping (unused parameters, ``no_sync`` accumulation).
* Never both: with ``vote=`` in the optimizer, do not let DDP all-reduce the gradients
  (train without DDP after broadcasting the initial parameters, or run every backward under
  ``ddp.no_sync()``); the all-reduced gradients would be voted on a second time, and the
  all-reduce would cost 32 times the vote's bytes.

Zeros: a zero or non-finite gradient coordinate is an abstention, sent as a dither bit
(``zeros="dither"``, 1 bit) or exactly (``zeros="exact"``, 2 bits), as in the optimizer.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations at run time.
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from . import bitvote

__all__ = ["MajorityVoteHookState", "majority_vote_hook"]


class MajorityVoteHookState:
    """State of `majority_vote_hook`: the process group, buffers per bucket, byte counts.

    Args:
        process_group: the group that votes (``None``: the default group; it should be the
            group DDP was built with).
        zeros: ``"dither"`` (1 bit per coordinate) or ``"exact"`` (2 bits).
        layout: ``"auto"``, ``"alltoall"`` or ``"allgather"`` (see `signify.bitvote`).
    """

    def __init__(
        self, process_group: Any = None, *, zeros: str = "dither", layout: str = "auto"
    ) -> None:
        if zeros not in bitvote.ZEROS:
            raise ValueError(f"zeros must be one of {bitvote.ZEROS}, got {zeros!r}")
        if layout not in bitvote.LAYOUTS:
            raise ValueError(f"layout must be one of {bitvote.LAYOUTS}, got {layout!r}")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("MajorityVoteHookState needs an initialised torch.distributed")
        self.process_group = process_group
        self.zeros = zeros
        self.layout = layout
        self.world = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        self.bits_in = bitvote.send_bits(zeros, self.world)
        self.bits_out = bitvote.result_bits(self.bits_in, self.world)
        self._wires: dict[tuple[int, int], bitvote.Wire] = {}
        self._votes: dict[int, int] = {}
        #: ``calls``, ``total_bytes_sent`` and the last call's ``bytes_sent`` per bucket index.
        self.stats: dict[str, Any] = {"calls": 0, "total_bytes_sent": 0, "bytes_sent": {}}

    def wire(self, index: int, numel: int, device: torch.device) -> bitvote.Wire:
        # Keyed by size too: DDP rebuilds its buckets after the first iteration.
        key = (index, numel)
        w = self._wires.get(key)
        if w is None:
            stale = [k for k in self._wires if k[0] == index]
            for k in stale:
                del self._wires[k]
            w = bitvote.make_wire([numel], self.world, self.zeros, self.layout, device)
            self._wires[key] = w
        return w

    def count(self, index: int) -> int:
        """Votes taken so far on bucket ``index`` (the dither's phase), then one more."""
        c = self._votes.get(index, 0)
        self._votes[index] = c + 1
        return c


def majority_vote_hook(
    state: MajorityVoteHookState, bucket: dist.GradBucket
) -> torch.futures.Future[Tensor]:
    """DDP communication hook: the bucket's gradients become their 1-bit majority vote."""
    buf = bucket.buffer()
    n = buf.numel()
    index = bucket.index()
    wire = state.wire(index, n, buf.device)
    parity = state.count(index) + state.rank
    wire.send[: wire.send_bytes].copy_(bitvote.vote_bytes(buf, buf, None, state.bits_in, parity))
    sent = wire.bytes_sent
    state.stats["calls"] += 1
    state.stats["total_bytes_sent"] += sent
    state.stats["bytes_sent"][index] = sent
    group, w = state.process_group, state.world

    def tally(rows: Tensor) -> Tensor:
        return bitvote.tally(rows, state.bits_in, state.bits_out)

    def finish(fut: torch.futures.Future[Any]) -> Tensor:
        if wire.layout == "allgather":
            wire.result.copy_(tally(wire.scratch.view(w, -1)))
        buf.copy_(bitvote.decode(wire.result, state.bits_out, n).to(buf.dtype))
        return buf

    if wire.layout == "local":
        wire.result.copy_(tally(wire.send.view(1, -1)))
        done: torch.futures.Future[Tensor] = torch.futures.Future()
        done.set_result(finish(done))
        return done
    if wire.layout == "allgather":
        work = bitvote._all_gather(wire.scratch, wire.send, group, async_op=True)
    else:
        dist.all_to_all_single(wire.scratch, wire.send, group=group)
        work = bitvote._all_gather(wire.result, tally(wire.scratch.view(w, -1)), group, True)
    return work.get_future().then(finish)
