"""Majority vote over packed signs: the wire format, the local vote and the collective.

Shared by the in-optimizer vote (`signify.transforms.vote.MajorityVote`) and the DDP
communication hook (`signify.distributed`).

Wire format. A vote ``v`` in {-1, 0, +1} per coordinate travels as a *code* of ``bits`` bits:

* ``bits = 1``: ``1`` for +1, ``0`` for -1, 8 coordinates per byte (coordinate ``8j + k`` is
  bit ``k`` of byte ``j``). A zero cannot be sent; the sender replaces it by a *dither* bit
  (see `vote_bytes`).
* ``bits = 2``: bit 0 set for +1, bit 1 set for -1, neither for 0; 4 coordinates per byte.

Each tensor is padded to a multiple of 8 coordinates, so it owns ``ceil(n / 8) * bits``
whole bytes of a flat ``uint8`` buffer. The vote of a coordinate is ``sign(sum_r v_r)``
(Bernstein et al. 2018/2019; ties, possible with an even number of votes, give 0).

Layouts (W ranks, L bytes of local codes per rank, S = ceil(L / W)):

* ``alltoall``: ``all_to_all_single`` sends shard j of every rank's codes to rank j, which
  counts the votes of its S bytes and encodes the result; ``all_gather_into_tensor`` then
  gives everyone every shard's result. Bytes sent per rank: ``(W - 1) * S * (1 + r)``, where
  ``r = result bits / send bits``: about ``2 (W - 1) / W * N / 8`` for 1-bit codes and an
  odd W, independent of W (a ring all-reduce of fp32 sends ``2 (W - 1) / W * 4 N``).
* ``allgather``: ``all_gather_into_tensor`` of the L bytes and a local count of all W rows:
  ``(W - 1) * L`` bytes, one collective.

``auto`` on a GPU takes the layout that sends fewer bytes, and all-gather on a tie (one
collective instead of two): all-gather for W <= 2, all-to-all from W = 3 on. On a CPU
(gloo) it always takes all-to-all: there the local count dominates, and all-to-all counts
1/W of the coordinates per rank instead of all of them (2 ranks, 0.83M coordinates: the
exchange took 1.7x to 2.8x less time than the all-gather path). See `choose_layout`.
Both layouts give bit-identical results.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

LAYOUTS = ("auto", "alltoall", "allgather")
ZEROS = ("dither", "exact")


# --------------------------------------------------------------------------- codes
def send_bits(zeros: str, world: int) -> int:
    """Bits per coordinate of the local codes: 1 with dithered zeros, 2 when exact (and
    always 2 on a single rank, where the exchange costs nothing)."""
    return 2 if zeros == "exact" or world == 1 else 1


def result_bits(bits_in: int, world: int) -> int:
    """Bits per coordinate of the voted result: 1 only when no sum can be zero (1-bit votes,
    which are never 0, and an odd number of them); otherwise 2, to carry the ties."""
    return 1 if bits_in == 1 and world % 2 == 1 else 2


def coded_bytes(n: int, bits: int) -> int:
    """Bytes of the codes of a tensor of ``n`` coordinates (padded to a multiple of 8)."""
    return (n + 7) // 8 * bits


def vote_bytes(
    direction: Tensor, grad: Tensor, ok: Tensor | None, bits: int, parity: Tensor | int
) -> Tensor:
    """The packed votes ``sign(direction)`` of one rank for one tensor.

    The rank abstains where the direction is zero or not finite, where the gradient is not
    finite, and everywhere when ``ok`` is False (its own step is skipped). With 2 bits an
    abstention is an exact 0. With 1 bit it is the *dither* bit ``(c + parity) mod 2`` of
    coordinate ``c``, where ``parity = rank + votes taken so far``: it alternates along
    coordinates, between ranks and from one vote to the next. When every rank abstains on a
    coordinate (a parameter without gradient, say), the dither bits of an even number of
    ranks cancel exactly (a tie: no move), and those of an odd number sum to +-1 with a sign
    that alternates every step, so the parameter oscillates by one step instead of
    drifting. [R] (the papers send sign bits and do not say how a zero travels.)
    """
    # (Not the cheaper `x * 0 == 0` test of finiteness: the compiler folds x * 0 to 0.)
    votes = (direction != 0) & torch.isfinite(direction) & torch.isfinite(grad)
    if ok is not None:
        votes = votes & ok
    pos = (direction > 0) & votes
    if bits == 2:
        return pack(pos.to(torch.uint8) | (((direction < 0) & votes).to(torch.uint8) << 1), 2)
    # Packed dither pattern: odd coordinates (0b10101010) for an even parity, else even ones.
    dither = 170 >> (parity & 1)
    return pack(pos, 1) | (pack(~votes, 1) & dither)


_MAGIC = sum(1 << (7 * j) for j in range(8))  # gathers the low bits of 8 bytes into one byte


def _bits(bits: int) -> int:
    """``bits`` as a literal 1 or 2. Compiled with ``dynamic=True``, torch 2.11 may hand these
    functions a symbolic int, and its fake-tensor ``1 << s`` fails; comparing guards it to a
    constant instead."""
    if bits == 1:
        return 1
    if bits == 2:
        return 2
    raise ValueError(f"bits must be 1 or 2, got {bits}")


def pack(codes: Tensor, bits: int) -> Tensor:
    """Integer codes (< 2**bits) of n coordinates -> ``coded_bytes(n, bits)`` uint8 bytes."""
    c = codes.to(torch.uint8)
    n = c.numel()
    if torch.compiler.is_compiling():
        # A gather rather than a pad: the padded length stays provably a multiple of 8
        # under dynamic shapes, so one compiled graph serves every tensor size.
        idx = torch.arange((n + 7) // 8 * 8, device=c.device, dtype=torch.int64)
        c = torch.where(idx < n, c[idx.clamp(max=n - 1)], 0)
    elif n % 8:
        c = torch.nn.functional.pad(c, (0, 8 - n % 8))
    return pack_lanes(c, bits)


def pack_lanes(codes: Tensor, bits: int) -> Tensor:
    """`pack` of uint8 codes whose number is a multiple of 8."""
    bits = _bits(bits)
    if bits == 1 and not torch.compiler.is_compiling() and codes.is_contiguous():
        # Eager: one int64 multiply packs 8 bytes (bit k of the top byte = byte k's bit).
        words = codes.view(-1, 8).view(torch.int64).view(-1)
        return ((words * _MAGIC >> 49) & 0xFF).to(torch.uint8)
    shifts = torch.arange(0, 8, bits, device=codes.device, dtype=torch.uint8)
    return (codes.view(-1, 8 // bits) << shifts).sum(-1, dtype=torch.uint8)


def unpack_codes(data: Tensor, bits: int) -> Tensor:
    """uint8 bytes -> uint8 codes, ``8 / bits`` per byte."""
    bits = _bits(bits)
    shifts = torch.arange(0, 8, bits, device=data.device, dtype=torch.uint8)
    return ((data.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)).reshape(-1)


def decode(data: Tensor, bits: int, n: int) -> Tensor:
    """The first ``n`` votes held by ``data``, as float32 in {-1, 0, +1}."""
    bits = _bits(bits)
    codes = unpack_codes(data, bits)[:n]
    if bits == 1:
        return codes.to(torch.float32) * 2 - 1
    return (codes & 1).to(torch.float32) - (codes >> 1).to(torch.float32)


def tally(rows: Tensor, bits_in: int, bits_out: int) -> Tensor:
    """Majority vote of a [W, S] uint8 tensor of codes -> the encoded result, S * bits_out /
    bits_in bytes: ``sign(sum over rows)`` per coordinate."""
    bits_in, bits_out = _bits(bits_in), _bits(bits_out)
    world = rows.shape[0]
    shifts = torch.arange(0, 8, bits_in, device=rows.device, dtype=torch.uint8)
    fields = rows.unsqueeze(-1) >> shifts  # [W, S, 8 / bits_in]
    total = (fields & 1).sum(0, dtype=torch.int16)
    if bits_in == 1:
        total = total * 2 - world
    else:
        total = total - ((fields >> 1) & 1).sum(0, dtype=torch.int16)
    total = total.reshape(-1)
    out = (total > 0).to(torch.uint8)
    if bits_out == 2:
        out = out | ((total < 0).to(torch.uint8) << 1)
    return pack_lanes(out, bits_out)


# --------------------------------------------------------------------------- layouts
def choose_layout(layout: str, world: int, bits_in: int, device_type: str = "cuda") -> str:
    """The layout ``auto`` stands for (see the module docstring)."""
    if world == 1:
        return "local"
    if layout != "auto":
        return layout
    if device_type != "cuda":
        return "alltoall"
    probe = 8 * world * 1024  # any size divisible by W: the comparison does not depend on it
    a2a = bytes_sent(probe, world, "alltoall", bits_in)
    ag = bytes_sent(probe, world, "allgather", bits_in)
    return "alltoall" if a2a < ag else "allgather"


def bytes_sent(send_bytes: int, world: int, layout: str, bits_in: int) -> int:
    """Bytes each rank sends per vote for ``send_bytes`` bytes of local codes (ring
    collectives: an all-gather of c bytes per rank sends (W - 1) c bytes from each)."""
    if world == 1 or layout == "local":
        return 0
    ratio = result_bits(bits_in, world) // bits_in
    if layout == "allgather":
        return (world - 1) * send_bytes
    shard = -(-send_bytes // world)
    return (world - 1) * shard * (1 + ratio)


@dataclasses.dataclass
class Wire:
    """The flat buffers of one set of voted tensors (one layout of the active parameters)."""

    layout: str
    world: int
    bits_in: int
    bits_out: int
    numel: int  # coordinates voted (unpadded)
    send_bytes: int  # L
    send: Tensor  # local codes, L bytes (padded to W * S for all-to-all)
    result: Tensor  # voted codes, L * bits_out / bits_in bytes (padded likewise)
    scratch: Tensor  # receive buffer of the first collective
    checked: bool = False

    @property
    def bytes_sent(self) -> int:
        return bytes_sent(self.send_bytes, self.world, self.layout, self.bits_in)


def make_wire(
    sizes: Sequence[int], world: int, zeros: str, layout: str, device: torch.device
) -> Wire:
    bits_in = send_bits(zeros, world)
    bits_out = result_bits(bits_in, world)
    lay = choose_layout(layout, world, bits_in, device.type)
    length = sum(coded_bytes(n, bits_in) for n in sizes)
    ratio = bits_out // bits_in
    if lay == "alltoall":
        shard = -(-length // world)
        send = torch.zeros(world * shard, dtype=torch.uint8, device=device)
        scratch = torch.empty(world * shard, dtype=torch.uint8, device=device)
        result = torch.empty(world * shard * ratio, dtype=torch.uint8, device=device)
    else:
        send = torch.zeros(length, dtype=torch.uint8, device=device)
        scratch = torch.empty(world * length, dtype=torch.uint8, device=device)
        result = torch.empty(length * ratio, dtype=torch.uint8, device=device)
    return Wire(lay, world, bits_in, bits_out, sum(sizes), length, send, result, scratch)


def _all_gather(out: Tensor, inp: Tensor, group: Any, async_op: bool = False) -> Any:
    # all_gather_into_tensor exists in torch 2.11 and 2.13 (2.13 deprecates it in favour of
    # all_gather_single, which 2.11 lacks).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return dist.all_gather_into_tensor(out, inp, group=group, async_op=async_op)


def exchange(wire: Wire, group: Any, tally_fn: Callable[[Tensor], Tensor] | None = None) -> None:
    """Run the vote: ``wire.result`` <- encoded ``sign(sum over ranks of wire.send)``.

    Collectives run on ``group`` and honour its timeout (gloo raises; NCCL's watchdog aborts).
    """
    w = wire.world
    if tally_fn is None:
        tally_fn = functools.partial(tally, bits_in=wire.bits_in, bits_out=wire.bits_out)
    if wire.layout == "local":
        wire.result.copy_(tally_fn(wire.send.view(1, -1)))
    elif wire.layout == "allgather":
        _all_gather(wire.scratch, wire.send, group)
        wire.result.copy_(tally_fn(wire.scratch.view(w, -1)))
    else:
        dist.all_to_all_single(wire.scratch, wire.send, group=group)
        _all_gather(wire.result, tally_fn(wire.scratch.view(w, -1)), group)


# --------------------------------------------------------------------------- faults
def fingerprint(shapes: Sequence[Sequence[int]], extra: Sequence[int]) -> list[int]:
    """A few int64 numbers that differ when two ranks would vote on different tensors."""
    text = ";".join(",".join(map(str, s)) for s in shapes).encode()
    numel = sum(int(torch.Size(s).numel()) for s in shapes)
    return [len(shapes), numel, zlib.crc32(text), *extra]


def check_same(
    values: list[int], group: Any, device: torch.device, what: str, describe: Callable[[], str]
) -> None:
    """All-gather ``values`` and raise ValueError on every rank if any rank differs.

    Same-sized on every rank, so it cannot hang on a mismatch; reading the result syncs
    the host once (it runs only when the voted set of tensors changes)."""
    world = dist.get_world_size(group)
    mine = torch.tensor(values, dtype=torch.int64, device=device)
    everyone = torch.empty(world * len(values), dtype=torch.int64, device=device)
    _all_gather(everyone, mine, group)
    rows = everyone.view(world, -1).tolist()
    if any(r != rows[0] for r in rows):
        lines = "; ".join(f"rank {i}: {r}" for i, r in enumerate(rows))
        raise ValueError(
            f"majority vote: the ranks disagree on {what} ({describe()}). Every rank must "
            f"step the same parameters, with the same shapes, in the same order, and build "
            f"its optimizer with the same seed= (a random block schedule follows it). "
            f"Per rank [tensors, coordinates, shape checksum, ...]: {lines}"
        )
