"""The counter-based generator against an independent numpy uint32 implementation, and its
statistics (uniformity, independence across elements, tensors and steps)."""

import numpy as np
import pytest
import torch

from signify import rng
from signify.transforms.base import RANK, StepContext


def np_mix32(x):
    x = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = ((x >> np.uint32(16)) ^ x) * np.uint32(0x45D9F3B)
        x = ((x >> np.uint32(16)) ^ x) * np.uint32(0x45D9F3B)
    return (x >> np.uint32(16)) ^ x


def np_bits(key, n, stream):
    idx = np.arange(n, dtype=np.uint64).astype(np.uint32)
    k1 = np.uint32(key) ^ np.uint32(stream)
    x = np_mix32(idx ^ k1)
    with np.errstate(over="ignore"):
        k2 = np.uint32((int(k1) * 0x2C1B3C6D) & 0xFFFFFFFF)
    return np_mix32(x ^ k2 ^ np.uint32(0x297A2D39))


def test_mix32_matches_uint32_reference():
    x = torch.randint(0, 2**32, (10000,), dtype=torch.int64)
    got = rng.mix32(x).numpy().astype(np.uint64)
    ref = np_mix32(x.numpy().astype(np.uint32)).astype(np.uint64)
    np.testing.assert_array_equal(got, ref)
    assert all(rng.mix32_int(int(v)) == int(r) for v, r in zip(x[:50].tolist(), ref[:50]))


def test_random_bits_match_reference_and_are_32_bit():
    key = int(torch.randint(0, 2**32, ()).item())
    stream = rng.stream_constant("exp_avg")
    got = rng.random_bits(torch.tensor(key), 5000, torch.device("cpu"), stream)
    # int32 holding the 32 bits (the signed view): compare the unsigned values
    assert got.dtype == torch.int32
    got = got.to(torch.int64) & 0xFFFFFFFF
    np.testing.assert_array_equal(got.numpy().astype(np.uint64), np_bits(key, 5000, stream))
    # the int32 key the executor hands to transforms draws the same bits
    same = rng.random_bits(rng.to_i32(torch.tensor(key)), 5000, torch.device("cpu"), stream)
    assert torch.equal(same.to(torch.int64) & 0xFFFFFFFF, got)


def test_uniform_map_is_exact_and_symmetric_over_every_24_bit_value():
    """All 2**24 inputs: each maps to (2k + 1) / 2**24 - 1 exactly (float64 reference), inside
    the open interval, and k and 2**24 - 1 - k map to opposite values."""
    k = torch.arange(1 << 24, dtype=torch.int64)
    u = rng.uniform_pm1((k << 8) | int(torch.randint(0, 256, ()))).double()
    want = (2 * k.double() + 1) / 2.0**24 - 1
    assert torch.equal(u, want)
    assert u.min() > -1 and u.max() < 1
    assert torch.equal(u, -u.flip(0))


def test_uniform_is_symmetric_open_interval_with_right_moments():
    key = rng.step_key(torch.tensor(int(torch.randint(0, 2**62, ()).item())), torch.tensor(7))
    n = 1 << 20
    u = rng.uniform_pm1(rng.random_bits(key, n, torch.device("cpu"), rng.STREAM_SIGN)).double()
    assert u.min() > -1 and u.max() < 1
    se = (1 / 3) ** 0.5 / n**0.5
    assert abs(u.mean().item()) < 5 * se
    assert abs(u.var().item() - 1 / 3) < 0.003
    # neighbouring elements are uncorrelated
    r = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()
    assert abs(r) < 5 / n**0.5
    # histogram: chi-square over 64 bins
    counts = torch.histc(u, bins=64, min=-1, max=1)
    expected = n / 64
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 63 + 6 * (2 * 63) ** 0.5


def test_streams_steps_and_tensors_are_independent():
    seed = torch.tensor(int(torch.randint(0, 2**62, ()).item()))
    n = 1 << 18
    cpu = torch.device("cpu")

    def draw(counter, tkey, stream):
        key = rng.mix32(torch.tensor(tkey) ^ rng.step_key(seed, torch.tensor(counter)))
        return rng.uniform_pm1(rng.random_bits(key, n, cpu, stream)).double()

    base = draw(1, rng.tensor_key(0), rng.STREAM_SIGN)
    others = [
        draw(2, rng.tensor_key(0), rng.STREAM_SIGN),  # next step
        draw(1, rng.tensor_key(1), rng.STREAM_SIGN),  # next tensor
        draw(1, rng.tensor_key(0), rng.STREAM_PARAM),  # another stream
    ]
    for o in others:
        assert not torch.equal(o, base)
        r = torch.corrcoef(torch.stack([base, o]))[0, 1].item()
        assert abs(r) < 5 / n**0.5


def test_step_key_depends_on_seed_and_counter():
    s, c = torch.tensor(123), torch.tensor(4)
    k = rng.step_key(s, c).item()
    assert k != rng.step_key(torch.tensor(124), c).item()
    assert k != rng.step_key(s, torch.tensor(5)).item()
    assert k == rng.step_key(s.clone(), c.clone()).item()


def test_per_rank_draws_differ_and_shared_ones_agree():
    """A rank's salt changes the draws asked for per rank (the stochastic sign's noise under
    a vote) and nothing else (a bf16 parameter's rounding must agree on every rank)."""
    keys = rng.to_i32(torch.randint(0, 2**32, (2,), dtype=torch.int64))
    like = torch.empty(4096)
    salts = [rng.to_i32(torch.tensor(rng.rank_key(r), dtype=torch.int64)) for r in range(3)]
    ctxs = [
        StepContext({}, {}, keys, None, {} if r == 0 else {RANK: {"key": salts[r]}})
        for r in range(3)
    ]
    per_rank = [c.uniform(1, like, per_rank=True) for c in ctxs]
    shared = [c.uniform(1, like) for c in ctxs]
    bits = [c.bits(1, like, rng.STREAM_PARAM) for c in ctxs]
    assert not torch.equal(per_rank[0], per_rank[1]) and not torch.equal(per_rank[1], per_rank[2])
    assert abs(torch.corrcoef(torch.stack(per_rank[:2]))[0, 1].item()) < 5 / 4096**0.5
    assert torch.equal(shared[0], shared[1]) and torch.equal(shared[0], shared[2])
    assert torch.equal(bits[0], bits[2])


@pytest.mark.parametrize("scale", [1e-3, 1.0, 300.0])
def test_stochastic_round_bf16_is_unbiased_and_reproducible(scale):
    n = 1 << 16
    v = (torch.rand(()) + 0.5) * scale  # one value, rounded n times with fresh bits
    values = torch.full((n,), v.item(), dtype=torch.float32)
    bits = rng.random_bits(torch.tensor(99), n, torch.device("cpu"), rng.STREAM_PARAM)
    rounded = rng.stochastic_round(values, torch.bfloat16, bits)
    assert rounded.dtype == torch.bfloat16
    lo = values[0].to(torch.bfloat16)  # nearest; the two neighbours bracket v
    ulp = torch.finfo(torch.bfloat16).eps * 2.0 ** torch.floor(torch.log2(v)).item()
    mean = rounded.double().mean().item()
    se = ulp / 2 / n**0.5
    assert abs(mean - v.item()) < 5 * se + 1e-12
    assert set(rounded.double().unique().tolist()) <= {
        lo.double().item(),
        lo.double().item() + ulp,
        lo.double().item() - ulp,
    }
    again = rng.stochastic_round(values, torch.bfloat16, bits)
    assert torch.equal(again, rounded)


def test_stochastic_round_keeps_representable_and_signed_values():
    x = torch.randn(1000).to(torch.bfloat16).float()  # exactly representable
    bits = rng.random_bits(torch.tensor(5), 1000, torch.device("cpu"), 1)
    assert torch.equal(rng.stochastic_round(x, torch.bfloat16, bits).float(), x)
    y = -torch.rand(1000) - 0.1
    r = rng.stochastic_round(y, torch.bfloat16, bits).float()
    assert (r < 0).all() and ((r - y).abs() <= y.abs() * 2**-7).all()


def test_stochastic_round_non_finite_and_overflow_take_round_to_nearest():
    """inf and NaN (a quiet one, and ones with only low mantissa bits, whose pattern plus
    noise truncates to inf) round to nearest for every draw of the noise; a finite value
    whose stochastic rounding lands past the largest bfloat16 rounds to nearest too. The
    reference is the rule in plain words: keep the rounded value iff the input and it are
    finite. Compiled code agrees."""
    big = torch.finfo(torch.float32).max
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), big, -big, 3.3961e38])
    low_nan = torch.tensor([0x7F800001, -0x007FFFFF], dtype=torch.int32).view(torch.float32)
    values = torch.cat([special, low_nan, torch.randn(6) * 1e38]).repeat(4096)
    bits = rng.random_bits(torch.tensor(11), values.numel(), torch.device("cpu"), 3)
    noise = (bits & 0xFFFF).to(torch.int32)
    rounded = ((values.view(torch.int32) + noise) & -0x10000).view(torch.float32)
    keep = torch.isfinite(values) & torch.isfinite(rounded)
    expect = torch.where(keep, rounded, values).to(torch.bfloat16)
    assert keep.any() and (~keep & torch.isfinite(values)).any()  # both paths taken
    for fn in (rng.stochastic_round, torch.compile(rng.stochastic_round, fullgraph=True)):
        got = fn(values, torch.bfloat16, bits)
        assert torch.equal(got.isnan(), expect.isnan())
        assert torch.equal(got[~got.isnan()], expect[~expect.isnan()])
