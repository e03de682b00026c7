"""Low-precision parameters and state: stochastic rounding, bf16 training, state_dtype."""

from __future__ import annotations

import io

import torch

import signify
from signify import rng


def _off_grid(n: int) -> torch.Tensor:
    """float32 values that bfloat16 cannot represent, of both signs and many magnitudes."""
    x = torch.randn(n) * torch.logspace(-6, 3, n)
    x = torch.where(x.to(torch.bfloat16).float() == x, x * (1 + 2**-12), x)
    return x


def test_stochastic_round_is_unbiased_and_reproducible():
    n, draws = 256, 2048
    x = _off_grid(n)
    rep = x.repeat(draws, 1)  # [draws, n]: independent bits for every draw and value
    bits = rng.random_bits(torch.tensor(rng.tensor_key(7)), rep.numel(), rep.device, 11)
    r = rng.stochastic_round(rep.reshape(-1), torch.bfloat16, bits).reshape(draws, n)
    # The two bf16 neighbours of x: truncated toward zero, and one step further out.
    pattern = x.view(torch.int32) & -0x10000
    down = pattern.view(torch.float32).double()
    up = (pattern + 0x10000).view(torch.float32).double()
    assert ((r.double() == down) | (r.double() == up)).all()
    p = (x.double() - down) / (up - down)  # P(round away from zero)
    se = (up - down).abs() * torch.sqrt(p * (1 - p) / draws)
    assert ((r.double().mean(0) - x.double()).abs() <= 5 * se).all()
    # Same bits, same result; values already on the bf16 grid are left alone.
    again = rng.stochastic_round(rep.reshape(-1), torch.bfloat16, bits).reshape(draws, n)
    assert torch.equal(r.view(torch.int16), again.view(torch.int16))
    grid = torch.randn(1000).to(torch.bfloat16).float()
    bits2 = rng.random_bits(torch.tensor(5), 1000, grid.device, 3)
    assert torch.equal(rng.stochastic_round(grid, torch.bfloat16, bits2).float(), grid)


def test_stochastic_round_keeps_nonfinite():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.39e38, -3.39e38])
    x = torch.cat([x, -x.abs().neg()])  # NaN with the sign bit set as well
    bits = torch.full((x.numel(),), 0xFFFF, dtype=torch.int64)
    r = rng.stochastic_round(x, torch.bfloat16, bits).float()
    assert r[0].isnan() and r[5].isnan()
    assert torch.equal(r[1:3], x[1:3])
    assert torch.isfinite(r[3:5]).all() or torch.equal(r[3:5], x[3:5].to(torch.bfloat16).float())


def _train(dtype, seed, steps=200, lr=1e-4, n=4096, **kw):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(n, generator=gen)
    g = torch.randn(n, generator=gen)
    w = torch.nn.Parameter(w0.to(dtype).clone())
    opt = signify.signify(torch.optim.SGD)([w], lr=lr, seed=seed, **kw)
    for _ in range(steps):
        w.grad = g.to(dtype)
        opt.step()
    return w.detach(), w0.to(dtype).double(), g


def test_bf16_sign_steps_below_resolution_move_like_fp32():
    """lr = 1e-4 is ~1/80 of a bf16 ulp at |w| ~ 1: round-to-nearest would never move, the
    stochastic rounding moves the weights by lr per step on average, as fp32 does."""
    w16, start16, g = _train(torch.bfloat16, seed=1)
    w32, start32, _ = _train(torch.float32, seed=1)
    move16 = ((w16.double() - start16) * torch.sign(g).double()).mean()
    move32 = ((w32.double() - start32) * torch.sign(g).double()).mean()
    assert abs(move32 + 200 * 1e-4) < 1e-6
    assert abs(move16 - move32) < 0.05 * abs(move32)
    assert (w16.double() != start16).float().mean() > 0.5
    # Reproducible from the seed, different for another seed.
    again, _, _ = _train(torch.bfloat16, seed=1)
    other, _, _ = _train(torch.bfloat16, seed=2)
    assert torch.equal(w16.view(torch.int16), again.view(torch.int16))
    assert not torch.equal(w16, other)


def test_state_dtype_bf16_survives_state_dict_round_trip():
    torch.manual_seed(0)
    cls = signify.signify(torch.optim.Adam, stochastic=True)

    def make():
        w = torch.nn.Parameter(torch.randn(8, 16))
        return w, cls([w], lr=1e-2, seed=4, state_dtype=torch.bfloat16)

    w, opt = make()
    for _ in range(3):
        w.grad = torch.randn_like(w)
        opt.step()
    for k in ("exp_avg", "exp_avg_sq"):
        assert opt.state[w][k].dtype == torch.bfloat16
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # as a checkpoint does (an in-memory dict aliases)
    buf.seek(0)
    sd = torch.load(buf)
    w2, opt2 = make()
    with torch.no_grad():
        w2.copy_(w)
    opt2.load_state_dict(sd)  # torch casts state to the param dtype; signify re-casts
    for k in ("exp_avg", "exp_avg_sq"):
        assert opt2.state[w2][k].dtype == torch.bfloat16
        assert torch.equal(opt2.state[w2][k], opt.state[w][k])
    g = torch.randn_like(w)
    w.grad, w2.grad = g.clone(), g.clone()
    opt.step()
    opt2.step()
    assert torch.equal(w, w2)
    assert torch.equal(opt.state[w]["exp_avg"], opt2.state[w2]["exp_avg"])


def test_bf16_params_with_fp32_state():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 16).to(torch.bfloat16))
    opt = signify.signify(torch.optim.Adam, stochastic=True)(
        [w], lr=1e-2, seed=0, state_dtype=torch.float32
    )
    start = w.detach().clone()
    ref = torch.zeros(8, 16)
    for _ in range(3):
        w.grad = torch.randn_like(w)
        ref = torch.lerp(ref, w.grad.float(), 1 - torch.tensor(0.9))
        opt.step()
    assert opt.state[w]["exp_avg"].dtype == torch.float32
    assert w.dtype == torch.bfloat16 and not torch.equal(w, start)
    torch.testing.assert_close(opt.state[w]["exp_avg"], ref, rtol=0, atol=0)


def test_two_bf16_writes_share_one_hash_with_independent_halves(monkeypatch):
    """A pass writing two bf16 buffers of one tensor (parameter and moment) hashes once per
    element: the second write rounds with the high 16 bits of the first draw. The two
    roundings stay unbiased and uncorrelated."""
    from signify.transforms.base import StepContext

    calls = []
    real = rng.random_bits
    monkeypatch.setattr(rng, "random_bits", lambda *a: calls.append(a) or real(*a))
    n = 40000
    key = torch.randint(0, 2**31 - 1, (3,), dtype=torch.int32)
    ctx = StepContext({}, {}, key, None, {})
    a = torch.ones(n, dtype=torch.bfloat16)
    b = torch.ones(n, dtype=torch.bfloat16)
    v = torch.full((n,), 1.0 + 2.0**-8)  # half a bf16 ulp above 1: rounds up with p = 1/2
    ctx.write(1, a, v, rng.stream_constant("param"))
    ctx.write(1, b, v, rng.stream_constant("exp_avg"))
    assert len(calls) == 1
    up_a, up_b = (a.float() > 1).double(), (b.float() > 1).double()
    assert abs(up_a.mean() - 0.5) < 0.01 and abs(up_b.mean() - 0.5) < 0.01
    corr = torch.corrcoef(torch.stack([up_a, up_b]))[0, 1]
    assert abs(corr) < 0.03, corr
    c = torch.ones(n, dtype=torch.bfloat16)  # a third write draws afresh
    ctx.write(1, c, v, rng.stream_constant("exp_avg_sq"))
    assert len(calls) == 2
