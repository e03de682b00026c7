"""The sign conversion of every adapter against float64 re-implementations of the formulas.

* deterministic: ``x <- x - lr * step_scale * (sign(a) + decay * x)``, with ``a`` from the
  test's own moment arithmetic (`adapter_reference`);
* ``ExpectedSign``: ``x <- x - lr * step_scale * (clip(a / sigma, -1, 1) + decay * x)``;
* stochastic: with the same gradient history on every coordinate of a 2**16 tensor, the mean
  step is ``-lr * clip(a / sigma, -1, 1)`` within 5 standard errors
  (``SE = lr * sqrt(1 - r^2) / sqrt(N)``), at every one of 10 steps. (2**16, not 2**20: the
  eager counter-based noise costs about 1 s per step at 2**20 on the 2-core test box.)
* the presets (Signum, StoSignSGD, SignAdamax) against algorithms.md 5.1, 2.2/2.3 and 2.4.
"""

from __future__ import annotations

import math

import pytest
import torch
from adapter_reference import CONFIGS, F64, Reference, config_id, expected_sign

import signify
from signify.presets import SignAdamax, Signum, StoSignSGD
from signify.transforms import DecoupledWeightDecay, ExpectedSign, Sign

N_BIG = 2**16


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_reference_is_torch(cfg):
    """The float64 reference reproduces torch.optim run in float64 (checks the checker)."""
    name, kw = cfg
    x = torch.randn(64, dtype=F64, requires_grad=True)
    opt = getattr(torch.optim, name)([x], **kw)
    ref = Reference(name, kw, x.shape)
    for _ in range(25):
        g = torch.randn(64, dtype=F64)
        x.grad = g
        before = x.detach().clone()
        opt.step()
        r = ref.step(g, before)
        expected = before - kw["lr"] * r.step_scale * (r.base_dir + r.decay * before)
        # torch keeps NAdam's mu_product in float32 even for float64 params: its steps carry
        # a relative error near 1e-7, which a coordinate near zero cannot absorb with rtol
        # alone, so NAdam's tolerance is measured against the step. A wrong formula is off
        # by a fraction of the step itself, far above 1e-6 of it.
        step = (expected - before).abs().max().item()
        atol = 1e-10 + (1e-6 * step if name == "NAdam" else 0.0)
        torch.testing.assert_close(x.detach(), expected, rtol=1e-7, atol=atol)


@pytest.mark.parametrize("mode", ["sign", "expected"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_direction_matches_reference(cfg, mode):
    name, kw = cfg
    lr, n = kw["lr"], 512
    p = torch.randn(n, requires_grad=True)
    chain = [Sign()] if mode == "sign" else [ExpectedSign()]
    opt = signify.signify(getattr(torch.optim, name), chain)([p], **kw)
    ref = Reference(name, kw, p.shape)
    checked = 0
    for _ in range(30):
        g = torch.randn(n) * torch.exp(torch.randn(n))  # heavy-ish tails, never zero
        p.grad = g
        before = p.detach().double().clone()
        opt.step()
        r = ref.step(g, before)
        d = torch.sign(r.a) if mode == "sign" else expected_sign(r.a, r.sigma)
        expected = before - lr * r.step_scale * (d + r.decay * before)
        got = p.detach().double()
        keep = torch.ones(n, dtype=torch.bool)
        if mode == "sign":  # float32 vs float64 may disagree on the sign of a ~ 0 only
            keep = r.a.abs() > 1e-4 * r.a.abs().max()
        checked += int(keep.sum())
        torch.testing.assert_close(got[keep], expected[keep], rtol=0, atol=3e-7 + 1e-5 * lr)
    assert checked > 0.98 * 30 * n


# Bases whose stochastic sign is checked for unbiasedness (weight decay 0: the state is then
# the same on every coordinate).
UNBIASED = [
    ("SGD", dict(lr=0.01)),
    ("SGD", dict(lr=0.01, momentum=0.9, dampening=0.9)),
    ("SGD", dict(lr=0.01, momentum=0.9, nesterov=True)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, betas=(0.5, 0.9))),
    ("Adamax", dict(lr=0.01)),
    ("Adamax", dict(lr=0.01, betas=(0.5, 0.9))),
    ("RMSprop", dict(lr=0.01, alpha=0.9)),
    ("RMSprop", dict(lr=0.01, centered=True, alpha=0.9)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("Adagrad", dict(lr=0.01, lr_decay=0.1)),
    ("NAdam", dict(lr=0.01, betas=(0.9, 0.9))),
    ("RAdam", dict(lr=0.01, betas=(0.9, 0.99))),  # rho_t > 5 from step 6 on
]


def _check_mean(step, expected_r, lr, what):
    se = lr * math.sqrt(max(1.0 - expected_r**2, 0.0)) / math.sqrt(N_BIG)
    want = -lr * expected_r
    assert abs(step - want) <= 5 * se + 1e-4 * lr, (
        f"{what}: mean step {step:.6g}, expected {want:.6g} +- {se:.3g} (r = {expected_r:.4f})"
    )


@pytest.mark.parametrize("cfg", UNBIASED, ids=config_id)
def test_stochastic_sign_is_unbiased(cfg):
    name, kw = cfg
    lr = kw["lr"]
    p = (0.01 * torch.randn(N_BIG)).requires_grad_()
    seed = int(torch.randint(0, 2**31, ()).item())
    opt = signify.signify(getattr(torch.optim, name), stochastic=True, seed=seed)([p], **kw)
    ref = Reference(name, kw, (1,))
    ratios: list[float] = []
    # at least 10 steps, and on until two were genuinely random (|a / sigma| < 0.9): with
    # momentum, 10 fresh draws were all clipped about once in a few hundred runs
    for t in range(40):
        if t >= 10 and sum(r < 0.9 for r in ratios) >= 2:
            break
        c = float(torch.randn(()) * torch.exp(0.5 * torch.randn(())))
        p.grad = torch.full((N_BIG,), c)
        before = p.detach().double().clone()
        opt.step()
        r = ref.step(torch.tensor([c]), torch.zeros(1))
        e = float(expected_sign(r.a, r.sigma)) * r.step_scale
        mean_step = float((p.detach().double() - before).mean()) / r.step_scale
        _check_mean(mean_step, e / r.step_scale, lr, f"{name} step {t + 1}")
        ratios.append(abs(e / r.step_scale))
    # the test only means something if some steps are genuinely random
    assert sum(r < 0.9 for r in ratios) >= 2, ratios


@pytest.mark.parametrize("name", ["Adam", "RMSprop", "NAdam"])
def test_stochastic_sign_moves_every_coordinate_by_lr(name):
    p = torch.randn(1000, requires_grad=True)
    opt = signify.signify(getattr(torch.optim, name), stochastic=True, seed=3)([p], lr=0.01)
    for _ in range(5):
        p.grad = torch.randn(1000)
        before = p.detach().double().clone()
        opt.step()
        moved = (p.detach().double() - before).abs()
        exact = (moved - 0.01).abs() < 3e-7
        assert bool((exact | (moved < 3e-7)).all()) and float(exact.double().mean()) > 0.999


def test_radam_unrectified_phase_is_the_deterministic_sign():
    """[R] rho_t <= 5 (steps 1..5 at beta2 = 0.999): the stochastic sign is sign(m_hat)."""
    p = torch.randn(4096, requires_grad=True)
    opt = signify.signify(torch.optim.RAdam, stochastic=True, seed=5)([p], lr=0.01)
    ref = Reference("RAdam", {}, p.shape)
    for t in range(8):
        p.grad = torch.randn(4096)
        before = p.detach().double().clone()
        opt.step()
        r = ref.step(p.grad, before)
        step = (p.detach().double() - before) / 0.01
        if t < 5:
            torch.testing.assert_close(step, -torch.sign(r.a), rtol=0, atol=1e-4)
        else:  # rectified: random wherever |a| < sigma
            assert (step != -torch.sign(r.a)).float().mean() > 0.1


# --------------------------------------------------------------------------- presets
class _Alg3:
    """StoSignSGD Alg. 3 / IE-StoSignSGD Alg. 10 (algorithms.md 2.2, 2.3) in float64:
    ``m_1 = g_1``, ``m_t = b1 m + (1 - b1) g``, ``G = max(b2 G, |m|)``; a = m, sigma = G.
    With ``b2 = 0`` the scale is |m| and the step is Signum's (5.1)."""

    def __init__(self, b1, b2, shape):
        self.b1, self.b2, self.t = b1, b2, 0
        self.m = torch.zeros(shape, dtype=F64)
        self.G = torch.zeros(shape, dtype=F64)

    def step(self, g):
        self.t += 1
        g = g.to(F64)
        self.m = g.clone() if self.t == 1 else self.b1 * self.m + (1 - self.b1) * g
        self.G = torch.maximum(self.b2 * self.G, self.m.abs())
        return self.m, self.G


class _Alg9:
    """Sign-converted AdaMax (algorithms.md 2.4, Alg. 9) with torch's Adamax moments:
    ``m = b1 m + (1 - b1) g``, ``u = max(b2 u, |g| + eps)``; a = m / (1 - b1^t), sigma = u."""

    def __init__(self, b1, b2, eps, shape):
        self.b1, self.b2, self.eps, self.t = b1, b2, eps, 0
        self.m = torch.zeros(shape, dtype=F64)
        self.u = torch.zeros(shape, dtype=F64)

    def step(self, g):
        self.t += 1
        g = g.to(F64)
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.u = torch.maximum(self.b2 * self.u, g.abs() + self.eps)
        return self.m / (1 - self.b1**self.t), self.u


def _run_exact(opt, p, ref, lr, wd, mode, steps=30):
    n = p.numel()
    for _ in range(steps):
        g = torch.randn(n) * torch.exp(torch.randn(n))
        p.grad = g
        before = p.detach().double().clone()
        opt.step()
        a, sigma = ref.step(g)
        d = torch.sign(a) if mode == "sign" else expected_sign(a, sigma)
        expected = before - lr * (d + wd * before)
        keep = a.abs() > 1e-4 * a.abs().max() if mode == "sign" else slice(None)
        torch.testing.assert_close(
            p.detach().double()[keep], expected[keep], rtol=0, atol=3e-7 + 1e-5 * lr
        )


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_signum_preset(momentum):
    p = torch.randn(512, requires_grad=True)
    opt = Signum([p], lr=0.01, momentum=momentum, weight_decay=0.1)
    _run_exact(opt, p, _Alg3(momentum, 0.0, p.shape), 0.01, 0.1, "sign")


@pytest.mark.parametrize("betas", [(0.9, 1.0), (0.8, 0.99)])
def test_ie_stosignsgd_pieces_exact(betas):
    """The pieces of the StoSignSGD preset, with ExpectedSign for its noise: Alg. 10."""
    p = torch.randn(512, requires_grad=True)
    cls = signify.signify(torch.optim.SGD, [ExpectedSign(), DecoupledWeightDecay()])
    b1, b2 = betas
    opt = cls([p], lr=0.01, momentum=b1, dampening=b1, scale_beta=b2, decoupled_wd=0.1)
    _run_exact(opt, p, _Alg3(b1, b2, p.shape), 0.01, 0.1, "expected")


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
def test_ie_signadamax_pieces_exact(betas):
    p = torch.randn(512, requires_grad=True)
    cls = signify.signify(torch.optim.Adamax, [ExpectedSign(), DecoupledWeightDecay()])
    opt = cls([p], lr=0.01, betas=betas, decoupled_wd=0.1)
    _run_exact(opt, p, _Alg9(*betas, 1e-8, p.shape), 0.01, 0.1, "expected")


def _preset_mean(opt, p, ref, lr, wd, steps=10):
    """Identical gradients on every coordinate: the mean of the sign part of the step is
    clip(a / sigma); coordinates where |a| >= sigma take the deterministic sign."""
    ratios = []
    first = 0.0
    for t in range(steps):
        c = float(torch.randn(()) * torch.exp(0.5 * torch.randn(())))
        if t == 1:  # a reversal: the momentum shrinks below its scale, |a / sigma| < 0.9
            c = -3.0 * first
        first = c if t == 0 else first
        p.grad = torch.full((N_BIG,), c)
        before = p.detach().double().clone()
        opt.step()
        a, sigma = ref.step(torch.tensor([c]))
        d = (before - p.detach().double()) / lr - wd * before  # the sign part, per coordinate
        # every coordinate moves by lr; a + sigma n is exactly 0 (a zero step) with
        # probability ~2**-24, where float32 noise lands on -a / sigma
        moved = (d.abs() - 1).abs() < 1e-4
        assert bool(((d.abs() < 1e-4) | moved).all()) and float(moved.double().mean()) > 0.999
        r = float(expected_sign(a, sigma))
        _check_mean(-float(d.mean()) * lr, r, lr, f"step {t + 1}")
        ratios.append(abs(r))
    assert min(ratios) < 0.9 and max(ratios) > 0.999  # the first step is deterministic


@pytest.mark.parametrize("betas", [(0.9, 1.0), (0.9, 0.9)])
def test_stosignsgd_preset_unbiased(betas):
    p = (0.01 * torch.randn(N_BIG)).requires_grad_()
    opt = StoSignSGD([p], lr=0.01, betas=betas, weight_decay=0.1, seed=11)
    _preset_mean(opt, p, _Alg3(*betas, (1,)), 0.01, 0.1)


def test_signadamax_preset_unbiased():
    p = (0.01 * torch.randn(N_BIG)).requires_grad_()
    opt = SignAdamax([p], lr=0.01, betas=(0.5, 0.9), weight_decay=0.1, seed=12)
    _preset_mean(opt, p, _Alg9(0.5, 0.9, 1e-8, (1,)), 0.01, 0.1)


def test_stochastic_sign_of_infinite_inputs_is_finite():
    """Infinite numerator or scale (a finite gradient whose square overflows) clamp to the
    largest float: the direction stays in {-1, 1}, never NaN (inf - inf)."""
    from signify.transforms.base import StepContext, Update
    from signify.transforms.sign import StochasticSign

    inf = float("inf")
    n = 4096
    num = torch.tensor([inf, -inf, 1.0, inf]).repeat(n)
    scale = torch.tensor([inf, inf, inf, 1.0]).repeat(n)
    ctx = StepContext({}, {}, torch.tensor([7], dtype=torch.int32), None, {})
    u = Update(params=[num.clone()], grads=[num.clone()], lr=torch.tensor(1.0))
    u.num, u.scale = [num], [scale]
    d = StochasticSign().update(u, {}, ctx)[0].direction[0].view(n, 4)
    assert torch.isfinite(d).all()
    assert (d[:, 0] == 1).all() and (d[:, 1] == -1).all() and (d[:, 3] == 1).all()
    assert set(d[:, 2].unique().tolist()) == {-1.0, 1.0}  # sign(1 + max * u): sign(u)
