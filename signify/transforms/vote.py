"""Majority vote across data-parallel ranks: 1 bit per coordinate on the wire.

signSGD / Signum with majority vote (Bernstein et al. 2018, arXiv 1802.04434; 2019, arXiv
1810.05291) and ABSignSGD-MV (Zhou & Pu, ICLR 2026): each rank r turns its own update into a
direction ``d_r`` (its momentum stays local: Signum-MV), and every rank applies

    x <- x - lr * sign(sum_r sign(d_r))

so the parameters stay identical everywhere. A tie (possible with an even number of ranks)
gives ``sign(0) = 0``: no move. A rank abstains (votes 0) where its gradient or direction is
not finite, and everywhere when it skips its step (``nonfinite="skip"``); see
`signify.bitvote` for how a zero travels in one bit (``zeros="dither"``) or two
(``zeros="exact"``), and for the wire layouts and their bytes.

`MajorityVote` is a barrier transform: the elementwise pass ends with `pre` (pack the local
signs into a flat uint8 buffer, 8 per byte, each tensor a view of it), the collective runs
eagerly (`exchange`), and the next pass starts with `post` (unpack the voted signs). Only the
parameters stepped this step travel (with ``blocks=``, the active block).

Use: ``signify(torch.optim.SGD, vote="majority")`` (the default process group),
``vote=<ProcessGroup>``, or ``vote=MajorityVote(group, zeros=..., layout=...)``. Build the
optimizer after ``torch.distributed.init_process_group``; do not also all-reduce gradients
(no DDP, or DDP under ``no_sync()``). Bytes on the wire per step: ``opt.vote_stats``.
"""

from __future__ import annotations

import collections
import functools
import itertools
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from .. import bitvote, sharding, zero
from .base import State, StepContext, Transform, Update

if TYPE_CHECKING:
    from ..optimizer import SignifiedOptimizer

#: Wires (buffer sets) kept for distinct sets of stepped parameters (one per block).
_MAX_WIRES = 64


class MajorityVote(Transform):
    """``direction <- sign(sum over ranks of sign(direction))``.

    Args:
        group: the ``ProcessGroup`` that votes (``None``: the default group).
        zeros: how an abstention travels: ``"dither"`` (1 bit, default) or ``"exact"``
            (2 bits per coordinate, twice the bytes).
        layout: ``"auto"``, ``"alltoall"`` or ``"allgather"`` (see `signify.bitvote`).
    """

    name = "vote"
    reads = frozenset({"direction"})
    writes = frozenset({"direction"})
    direction_values = "sign"
    is_barrier = True

    def __init__(self, group: Any = None, *, zeros: str = "dither", layout: str = "auto") -> None:
        if group is not None and not _is_process_group(group):
            raise TypeError(
                f"group must be a torch.distributed ProcessGroup or None, got {group!r}"
            )
        if zeros not in bitvote.ZEROS:
            raise ValueError(f"zeros must be one of {bitvote.ZEROS}, got {zeros!r}")
        if layout not in bitvote.LAYOUTS:
            raise ValueError(f"layout must be one of {bitvote.LAYOUTS}, got {layout!r}")
        self.group = group
        self.zeros_mode = zeros
        self.layout = layout
        self.world = 1
        self.group_rank = 0
        self.global_rank = 0
        self.bits_in = bitvote.send_bits(zeros, 1)
        self.bits_out = bitvote.result_bits(self.bits_in, 1)
        self.stats: dict[str, Any] = {"steps": 0, "total_bytes_sent": 0}
        self._wires: collections.OrderedDict[tuple[int, ...], tuple[bitvote.Wire, dict]] = (
            collections.OrderedDict()
        )
        self._wire: bitvote.Wire | None = None
        self._spans: dict[int, tuple[int, int, int, int]] = {}  # send at, len, result at, len
        self._eager = True
        self._tally: Any = None

    def clone(self) -> MajorityVote:
        """A fresh transform with the same settings (and the same group)."""
        return MajorityVote(self.group, zeros=self.zeros_mode, layout=self.layout)

    def __deepcopy__(self, memo: dict[int, Any]) -> MajorityVote:
        # Process groups cannot be copied; an explicit transforms list is deep-copied per
        # optimizer, and each optimizer gets its own buffers.
        return self.clone()

    # ------------------------------------------------------------------ host side
    def bind(self, opt: SignifiedOptimizer) -> None:
        sharding.refuse(
            opt,
            "vote=",
            "the majority vote replaces the all-reduce of replicated gradients, while FSDP "
            "has already reduce-scattered them into shards (nothing is left to vote on); "
            "use vote= on unsharded parameters (no DDP, or DDP under no_sync())",
        )
        zero.refuse(
            opt,
            "vote=",
            "the ranks would vote on different tensors. Use vote= with every rank stepping "
            "every parameter (a plain optimizer, no DDP all-reduce)",
        )
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "vote= needs torch.distributed: call init_process_group before building the "
                "optimizer"
            )
        self.world = dist.get_world_size(self.group)
        self.group_rank = dist.get_rank(self.group)
        if self.group_rank < 0:
            raise ValueError("vote group: this rank is not a member of the process group")
        self.global_rank = dist.get_rank()
        self.bits_in = bitvote.send_bits(self.zeros_mode, self.world)
        self.bits_out = bitvote.result_bits(self.bits_in, self.world)
        self.stats.update(
            world_size=self.world,
            send_bits=self.bits_in,
            result_bits=self.bits_out,
        )
        opt.vote_stats = self.stats  # type: ignore[attr-defined]
        if self.world > 1:
            self._agree_on_seed(opt)

    def _agree_on_seed(self, opt: SignifiedOptimizer) -> None:
        """What ranks draw together (a random block schedule, the rounding of bf16
        parameters) must agree: the group takes its first rank's seed. Ranks often seed torch
        apart (each then draws another default seed), and a per-rank ``seed=`` buys nothing
        (the sign noise is per rank anyway)."""
        params = opt.all_params()
        device = params[0].device if params else torch.device("cpu")
        mine = torch.tensor([opt._seed or 0], dtype=torch.int64, device=device)
        seeds = torch.empty(self.world, dtype=torch.int64, device=device)
        bitvote._all_gather(seeds, mine, self.group)
        got = seeds.tolist()  # once, at construction
        if opt.options.seed is not None and len(set(got)) > 1 and self.group_rank == 0:
            warnings.warn(
                f"vote: the ranks were given different seed= values ({got}); every rank "
                f"uses the first rank's, {got[0]} (the stochastic sign's noise differs "
                "between ranks without it)",
                stacklevel=6,
            )
        opt._seed = int(got[0])

    def after_load(self, opt: SignifiedOptimizer) -> None:
        # A load may bring another seed (ranks loading their own checkpoints): check the
        # fingerprint, seed included, again at the next step.
        self._wires.clear()

    def shared_state(self, device: torch.device) -> dict[str, Any]:
        # Votes taken so far: the dither's phase (identical on every rank).
        return {"count": torch.zeros((), dtype=torch.int64, device=device)}

    def before_step(self, opt: SignifiedOptimizer, active: list[list[Tensor]]) -> None:
        # The stochastic sign's noise must differ between ranks that vote.
        opt._executor.rank = self.global_rank
        params = [p for ps in active for p in ps]
        key = tuple(map(id, params))
        entry = self._wires.get(key)
        if entry is None:
            entry = self._new_wire(opt, params)
            self._wires[key] = entry
            while len(self._wires) > _MAX_WIRES:
                self._wires.popitem(last=False)
        else:
            self._wires.move_to_end(key)
        self._wire, self._spans = entry

    def _new_wire(
        self, opt: SignifiedOptimizer, params: list[Tensor]
    ) -> tuple[bitvote.Wire, dict[int, tuple[int, int, int, int]]]:
        devices = {p.device for p in params}
        if len(devices) != 1:
            raise ValueError(
                f"majority vote: the voted parameters must be on one device, got {devices}"
            )
        (device,) = devices
        shapes = [tuple(p.shape) for p in params]
        if self.world > 1:
            layout_code = bitvote.LAYOUTS.index(self.layout)
            # the seed too: ranks that draw random block picks from different seeds would
            # miss each other's checks (a wire cached on one rank, new on another) and hang
            seed = int(opt._seed or 0)
            values = bitvote.fingerprint(shapes, [self.world, self.bits_in, layout_code, seed])
            bitvote.check_same(
                values,
                self.group,
                device,
                "the parameters to vote on",
                lambda: (
                    f"this rank, {dist.get_rank()}, steps {len(shapes)} tensors of shapes "
                    f"{shapes[:8]}{'...' if len(shapes) > 8 else ''}, with seed {seed}"
                ),
            )
        wire = bitvote.make_wire(
            [p.numel() for p in params], self.world, self.zeros_mode, self.layout, device
        )
        spans: dict[int, tuple[int, int, int, int]] = {}
        send_at = res_at = 0
        for p in params:
            ns = bitvote.coded_bytes(p.numel(), self.bits_in)
            nr = bitvote.coded_bytes(p.numel(), self.bits_out)
            spans[id(p)] = (send_at, ns, res_at, nr)
            send_at, res_at = send_at + ns, res_at + nr
        if self._tally is None:
            fn: Any = functools.partial(bitvote.tally, bits_in=self.bits_in, bits_out=self.bits_out)
            if device.type == "cuda" and opt.compiled:
                fn = torch.compile(fn, dynamic=True, fullgraph=True)
            self._tally = fn
        self._eager = not opt.compiled
        return wire, spans

    def plan(self, params: Sequence[Tensor], group_index: int) -> State:
        """Views of this chunk's tensors into the flat buffers; in eager mode also the whole
        region when the tensors sit back to back, so that one pack serves the chunk."""
        wire = self._wire
        assert wire is not None
        spans = [self._spans[id(p)] for p in params]
        st: State = {
            "send": [wire.send[a : a + n] for a, n, _, _ in spans],
            "result": [wire.result[a : a + n] for _, _, a, n in spans],
        }
        back_to_back = all(s[0] + s[1] == t[0] for s, t in itertools.pairwise(spans))
        if self._eager and spans and back_to_back:
            (a, _, b, _), (c, m, d, k) = spans[0], spans[-1]
            st["send_all"] = [wire.send[a : c + m]]
            st["result_all"] = [wire.result[b : d + k]]
        return st

    def exchange(self, opt: SignifiedOptimizer) -> None:
        wire = self._wire
        assert wire is not None, "exchange() before before_step()"
        bitvote.exchange(wire, self.group, self._tally)
        opt.shared_state(wire.send.device)[self.name]["count"].add_(1)
        sent = wire.bytes_sent
        self.stats.update(
            layout=wire.layout,
            coords=wire.numel,
            bytes_sent=sent,
            bytes_received=sent,
            fp32_allreduce_bytes=2 * (self.world - 1) * 4 * wire.numel // self.world,
            steps=self.stats["steps"] + 1,
            total_bytes_sent=self.stats["total_bytes_sent"] + sent,
        )

    # ------------------------------------------------------------------ in the graph
    def pre(self, u: Update, state: State, ctx: StepContext) -> None:
        """End of the first pass: pack this rank's votes into its send buffer."""
        if u.direction is None:
            raise ValueError("MajorityVote needs `direction`: put a sign transform before it")
        parity = ctx.shared[self.name]["count"] + self.group_rank
        if "send_all" in state:
            # Eager: one pack over the chunk, each tensor padded to a multiple of 8 (as in
            # the buffer), instead of a dozen small kernels per tensor.
            d, g = _padded_cat(u.direction), _padded_cat(u.grads)
            state["send_all"][0].copy_(bitvote.vote_bytes(d, g, ctx.ok, self.bits_in, parity))
            return
        for d, g, send in zip(u.direction, u.grads, state["send"]):
            send.copy_(bitvote.vote_bytes(d, g, ctx.ok, self.bits_in, parity))

    def post(self, u: Update, state: State, ctx: StepContext) -> Update:
        """Start of the second pass: the voted direction, identical on every rank."""
        # The write is the group's step, not this rank's: it happens even where this rank
        # skipped its own (non-finite) step, so that parameters stay identical.
        ctx.ok = None
        if "result_all" in state:
            region = state["result_all"][0]
            flat = bitvote.decode(region, self.bits_out, region.numel() * 8 // self.bits_out)
            out, at = [], 0
            for p in u.params:
                out.append(flat[at : at + p.numel()])
                at += (p.numel() + 7) // 8 * 8
            u.direction = out
            return u
        u.direction = [
            bitvote.decode(r, self.bits_out, p.numel()) for p, r in zip(u.params, state["result"])
        ]
        return u

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        raise RuntimeError("MajorityVote runs as a barrier (pre / exchange / post)")

    def extra_repr(self) -> str:
        group = "default" if self.group is None else "custom"
        return (
            f"group={group}, world={self.world}, zeros={self.zeros_mode!r}, layout={self.layout!r}"
        )


def _padded_cat(ts: list[Tensor]) -> Tensor:
    pads = [torch.nn.functional.pad(t, (0, -t.numel() % 8)) if t.numel() % 8 else t for t in ts]
    return torch.cat(pads) if len(pads) > 1 else pads[0]


def _is_process_group(x: Any) -> bool:
    return dist.is_available() and isinstance(x, dist.ProcessGroup)


def make_vote(spec: Any) -> MajorityVote:
    """``vote=`` of `signify`: ``"majority"``, a ``ProcessGroup`` or a `MajorityVote`."""
    if isinstance(spec, MajorityVote):
        return spec.clone()
    if isinstance(spec, str):
        if spec != "majority":
            raise ValueError(
                f"vote must be 'majority', a ProcessGroup or a MajorityVote, got {spec!r}"
            )
        return MajorityVote()
    if _is_process_group(spec):
        return MajorityVote(spec)
    raise TypeError(
        f"vote must be 'majority', a ProcessGroup or a MajorityVote, got {type(spec).__name__}"
    )
