"""Counter-based random numbers written in plain tensor ops.

The stochastic sign and stochastic rounding need uniforms that are at once

* reproducible: the same seed gives the same run, eager or compiled, CPU or GPU;
* resumable: the whole generator state is two integers (seed and step counter), saved in
  ``state_dict``;
* per-rank independent when ranks must disagree (majority vote), identical when they must
  agree (data parallel with all-reduced gradients);
* compile-friendly: drawn inside the fused update kernel, with no ``generator=`` argument
  (which ``torch.compile(fullgraph=True)`` rejects).

A counter-based generator gives all four. Each element's bits are a hash of
``(step key, tensor key, element index)``, in the spirit of Philox (Salmon et al. 2011) but
with a simpler mixer: two rounds of the 32-bit integer finaliser popularised by Thomas
Mueller (``x ^= x >> 16; x *= 0x45d9f3b``). Keys (a few per step) are hashed in int64,
where every product stays below 2**63; the per-element bits in int32, where products wrap
modulo 2**32 (`mix32_i32`), giving the same 32 bits. The result is bit-identical under
eager CPU, inductor C++ and Triton (checked on an H100: compiled steps drew exactly the
noise of eager ones).
"""

from __future__ import annotations

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
_F32_MAX = torch.finfo(torch.float32).max
_MUL = 0x45D9F3B  # < 2**31: int64 products of a 32-bit value stay below 2**63
_GOLDEN = 0x9E3779B9

# Distinct constants per use of the random stream, so that the noise of the stochastic sign
# and the rounding bits of each written buffer are independent of one another.
STREAM_SIGN = 0x01
STREAM_PARAM = 0x02
STREAM_VOTE = 0x03


def mix32(x: Tensor) -> Tensor:
    """A bijective 32-bit integer hash of an int64 tensor holding values in [0, 2**32)."""
    x = (((x >> 16) ^ x) * _MUL) & MASK32
    x = (((x >> 16) ^ x) * _MUL) & MASK32
    return (x >> 16) ^ x


def mix32_int(x: int) -> int:
    """`mix32` on a Python integer (for keys known on the host)."""
    x &= MASK32
    x = (((x >> 16) ^ x) * _MUL) & MASK32
    x = (((x >> 16) ^ x) * _MUL) & MASK32
    return (x >> 16) ^ x


def stream_constant(name: str | int) -> int:
    """A 32-bit constant naming one random stream (a buffer key or a ``STREAM_*`` id)."""
    if isinstance(name, int):
        return mix32_int(name * _GOLDEN)
    h = 0
    for ch in name.encode():
        h = mix32_int(h ^ ch)
    return mix32_int(h ^ 0x5BD1E995)


def tensor_key(index: int, shard: int = 0) -> int:
    """Key of the tensor with global position ``index`` in the optimizer (stable on resume);
    ``shard`` (`signify.sharding.shard_index`, 0 for an unsharded tensor) gives each shard of
    a sharded parameter a stream of its own."""
    key = mix32_int(index * _GOLDEN + 0x7F4A7C15)
    if shard:
        key = mix32_int(key ^ mix32_int(shard * _GOLDEN + 0x3C6EF372))
    return key


def rank_key(rank: int) -> int:
    """The 32-bit constant a rank folds into the stream of its own draws (rank 0 folds
    nothing): the stochastic sign's noise under a majority vote."""
    return mix32_int(rank + 1)


def step_key(seed: Tensor, counter: Tensor) -> Tensor:
    """The key of one optimizer step, a 0-d int64 tensor in [0, 2**32), the same on every
    rank (``seed`` and ``counter`` are int64 tensors). Draws that must differ between ranks
    fold `rank_key` into their stream constant instead (`StepContext.uniform`)."""
    k = mix32(seed & MASK32)
    k = mix32(k ^ ((seed >> 32) & MASK32))
    k = mix32(k ^ (counter & MASK32))
    return mix32(k ^ ((counter >> 32) & MASK32))


def mix32_i32(x: Tensor) -> Tensor:
    """`mix32` on int32 tensors: the same 32 bits (as a signed int32), with products that
    wrap modulo 2**32 and right shifts masked to act as logical shifts. Half the integer work
    of the int64 form on a GPU, which matters where each element draws several streams
    (measured on an H100: bf16 parameters and moments written with stochastic rounding ran
    at 61% of copy bandwidth with int64 hashing, 84% with this)."""
    x = ((x >> 16) & 0xFFFF) ^ x
    x = x * _MUL
    x = ((x >> 16) & 0xFFFF) ^ x
    x = x * _MUL
    return ((x >> 16) & 0xFFFF) ^ x


def to_i32(x: Tensor) -> Tensor:
    """An int64 tensor in [0, 2**32) as int32 with the same 32 bits."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def _signed(c: int) -> int:
    """A 32-bit constant as the int32 value with the same bits."""
    c &= MASK32
    return c - 2**32 if c >= 2**31 else c


def random_bits(key: Tensor, n: int, device: torch.device, stream: int) -> Tensor:
    """32 random bits per element as an int32 tensor (the signed view of the bits).

    ``key`` is the 0-d key of (step, tensor): int32 as the executor hands it to transforms
    (the low 32 bits of the int64 key, ``signify.rng.to_i32``), or int64 in [0, 2**32).
    ``stream`` is a constant from `stream_constant`. Element ``i`` gets
    ``mix32(mix32(i ^ k1) ^ k2)`` with ``k1 = key ^ stream`` and ``k2`` derived from ``k1``;
    all of it int32, so that no per-element int64 work is left in a fused kernel.
    """
    if n >= 2**31:
        raise ValueError(f"random_bits draws at most 2**31 - 1 values per tensor, got {n}")
    if key.dtype != torch.int32:
        key = to_i32(key & MASK32)
    idx = torch.arange(n, device=device, dtype=torch.int32)
    k1 = key ^ _signed(stream)
    k2 = (k1 * 0x2C1B3C6D) ^ 0x297A2D39
    return mix32_i32(mix32_i32(idx ^ k1) ^ k2)


def uniform_pm1(bits: Tensor) -> Tensor:
    """Map 32 random bits (int32 or int64) to float32 uniforms on the open interval (-1, 1),
    symmetric about 0.

    The top 24 bits give ``(2k + 1) / 2**24 - 1`` for k in [0, 2**24), computed as
    ``(2 (k - 2**23) + 1) / 2**24`` so that every intermediate is an integer below 2**24 in
    magnitude: exact in float32 (the form ``(2k + 1) / 2**24 - 1`` rounds ``2k + 1`` for
    k >= 2**23 and maps the top k to exactly 1.0). The values are odd multiples of 2**-24,
    exactly symmetric, so ``E[sign(a + s * n)] = a / s`` holds to within 2**-24 for
    ``|a| <= s``.
    """
    k = ((bits >> 8) & 0xFFFFFF).to(torch.float32)
    return ((k - 8388608.0) * 2.0 + 1.0) * (2.0**-24)


def stochastic_round(value: Tensor, dtype: torch.dtype, bits: Tensor) -> Tensor:
    """Round float32 ``value`` to ``dtype`` without bias: E[result] = value.

    For bfloat16 the low 16 bits of the float32 pattern are dropped after adding 16 random
    bits, so the value rounds away from zero with probability equal to the dropped fraction
    (Gupta et al. 2015). The arithmetic is on the signed int32 view of the pattern: for a
    finite value ``pattern + r`` stays inside int32 (the magnitude bits of the largest finite
    float32 plus 0xFFFF is below 2**31), so it is exact under every backend. Other
    low-precision types use round-to-nearest.
    """
    if dtype == torch.bfloat16:
        v = value.to(torch.float32)
        noise = (bits & 0xFFFF).to(torch.int32)
        rounded = ((v.view(torch.int32) + noise) & -0x10000).view(torch.float32)
        # Non-finite values, and finite ones that would round past the largest finite
        # bfloat16, take the deterministic path (round-to-nearest keeps NaN and inf). One
        # test covers both: adding at most 0xFFFF to the pattern of an inf or NaN leaves an
        # inf or NaN (the exponent bits stay all ones), and a NaN fails the comparison.
        keep = rounded.abs() <= _F32_MAX
        return torch.where(keep, rounded, v).to(dtype)
    return value.to(dtype)
