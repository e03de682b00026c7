"""The stochastic sign of every base is unbiased for torch.optim's own step.

test_sign_math.py checks the adapters against float64 re-implementations of the formulas;
here the reference is torch.optim itself. A torch optimizer runs on a shadow copy of the
parameters: before each step the shadow takes signify's current values, both take the same
gradient, and torch's displacement ``d`` gives, per coordinate, the base's own direction
``r = d / (lr * step_scale) - decay * x`` (``step_scale``: Adagrad's ``lr_decay`` where the
adapter hands it to the write; ``decay``: the base's decoupled weight decay). The shadow's
state follows signify's iterates, so weight decay, ``maximize``, amsgrad... all stay exact.

Expected direction (docs/conversion.md): ``E = clip(r, -1, 1)`` for bases with a
denominator; ``E = r / G``, ``G = max(beta G, |r|)`` (the running max, tracked here from
torch's steps) for bases without one; ``sign(r)`` in RAdam's un-rectified phase [R].

Each parameter is one small state (16 or 9 coordinates) replicated on 1024 rows, so every
coordinate has 1024 samples per step: for each coordinate and step with ``|E| < 1`` the sum
of ``sign - E`` over the rows is tested at 5 standard errors (``var = 1 - E^2``), and so are
two pooled sums (plain, and weighted by ``sign(E)``, which a wrong noise scale cannot
cancel); where ``|E| > 1`` the sign is torch's exactly. Seeds are fixed: the checks are
deterministic. The deterministic sign is checked against ``sign(r)`` exactly.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import signify
from signify.adapters.generic import GenericAdapter
from signify.adapters.traced import TracedAdapter

F64 = torch.float64
ROWS, COLS = 1024, (16, 9)  # two tensors, in two param groups (the second at lr / 2)
Z = 5.0


@dataclasses.dataclass
class Expect:
    denom: bool = True  # the base has a denominator (else: the running max)
    decay: float = 0.0  # decoupled weight decay, x <- x - lr * decay * x
    step_scale: Callable[[int], float] | None = None  # schedule outside a / sigma
    radam_beta2: float | None = None  # RAdam: sign(r) while rho_t <= 5
    scale_beta: float = 1.0
    adapter: type | None = None  # the adapter class the base must get
    steps: int = 8
    min_random: float = 0.2  # share of (row, coordinate, step) with |E| < 1


class Lion(torch.optim.Optimizer):
    """A user's optimizer (Chen et al. 2023), traced: the direction is already a sign."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["exp_avg"] = torch.zeros_like(p)
                m = st["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m.lerp(p.grad, 1 - b1)), alpha=-group["lr"])
                m.lerp_(p.grad, 1 - b2)


def _own(base):
    """``base`` with its own ``step``: no hand-written adapter applies, it is traced."""
    return type(f"Own{base.__name__}", (base,), {"step": lambda self, c=None: base.step(self, c)})


O = torch.optim
NO_DENOM = Expect(denom=False)
CASES: list[tuple[str, type, dict[str, Any], Expect]] = [
    ("SGD", O.SGD, dict(lr=0.01), NO_DENOM),
    ("SGD-ema", O.SGD, dict(lr=0.01, momentum=0.9, dampening=0.9), NO_DENOM),
    (
        "SGD-nesterov-l2-maximize",
        O.SGD,
        dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True),
        NO_DENOM,
    ),
    (
        "SGD-dampening-scale_beta",
        O.SGD,
        dict(lr=0.01, momentum=0.8, dampening=0.3),
        Expect(denom=False, scale_beta=0.9),
    ),
    ("Adam", O.Adam, dict(lr=0.01), Expect()),
    (
        "Adam-amsgrad-l2",
        O.Adam,
        dict(lr=0.01, amsgrad=True, weight_decay=0.1, betas=(0.5, 0.9)),
        Expect(),
    ),
    (
        "Adam-decoupled-maximize-eps",
        O.Adam,
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True, eps=0.3),
        Expect(decay=0.1),
    ),
    (
        "AdamW-amsgrad",
        O.AdamW,
        dict(lr=0.01, weight_decay=0.5, amsgrad=True, betas=(0.8, 0.99)),
        Expect(decay=0.5),
    ),
    ("Adamax", O.Adamax, dict(lr=0.01), Expect()),
    (
        "Adamax-l2-maximize-eps",
        O.Adamax,
        dict(lr=0.01, weight_decay=0.1, maximize=True, betas=(0.5, 0.9), eps=0.1),
        Expect(),
    ),
    ("RMSprop", O.RMSprop, dict(lr=0.01, alpha=0.9), Expect()),
    (
        "RMSprop-centered-l2-eps",
        O.RMSprop,
        dict(lr=0.01, alpha=0.9, centered=True, weight_decay=0.1, eps=0.1),
        Expect(),
    ),
    ("RMSprop-momentum", O.RMSprop, dict(lr=0.01, momentum=0.9), NO_DENOM),
    (
        "RMSprop-momentum-centered-maximize",
        O.RMSprop,
        dict(lr=0.01, momentum=0.5, centered=True, maximize=True, alpha=0.9),
        NO_DENOM,
    ),
    ("Adagrad", O.Adagrad, dict(lr=0.05), Expect()),
    (
        "Adagrad-lr_decay-initial-l2-maximize",
        O.Adagrad,
        dict(
            lr=0.05,
            lr_decay=0.2,
            initial_accumulator_value=0.5,
            eps=1e-3,
            weight_decay=0.1,
            maximize=True,
        ),
        Expect(step_scale=lambda t: 1 / (1 + (t - 1) * 0.2)),
    ),
    ("NAdam", O.NAdam, dict(lr=0.01), Expect()),
    (
        "NAdam-momentum_decay-l2",
        O.NAdam,
        dict(lr=0.01, momentum_decay=0.02, weight_decay=0.1, betas=(0.9, 0.9)),
        Expect(),
    ),
    (
        "NAdam-decoupled-maximize",
        O.NAdam,
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True),
        Expect(decay=0.1),
    ),
    # rho_t > 5 from step 6 on at beta2 = 0.99: both phases
    (
        "RAdam-l2",
        O.RAdam,
        dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1),
        Expect(radam_beta2=0.99, steps=10),
    ),
    (
        "RAdam-decoupled-maximize",
        O.RAdam,
        dict(
            lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, decoupled_weight_decay=True, maximize=True
        ),
        Expect(decay=0.1, radam_beta2=0.99, steps=10, min_random=0.1),
    ),
    # traced (fxtrace): no hand-written adapter
    (
        "traced-Adadelta-l2",
        O.Adadelta,
        dict(lr=0.5, weight_decay=0.1),
        Expect(denom=False, adapter=TracedAdapter),
    ),
    ("traced-Rprop", O.Rprop, dict(lr=0.01), Expect(denom=False, adapter=TracedAdapter)),
    (
        "traced-AdamW",
        _own(O.AdamW),
        dict(lr=0.01, weight_decay=0.3),
        Expect(decay=0.3, adapter=TracedAdapter),
    ),
    # traced Adagrad keeps lr_decay inside a / sigma: the step is lr
    (
        "traced-Adagrad-lr_decay",
        _own(O.Adagrad),
        dict(lr=0.05, lr_decay=0.2),
        Expect(adapter=TracedAdapter),
    ),
    (
        "traced-RMSprop-centered-l2",
        _own(O.RMSprop),
        dict(lr=0.01, centered=True, weight_decay=0.1),
        Expect(adapter=TracedAdapter, min_random=0.1),
    ),
    # two addcdiv terms over one denominator: sigma is NAdam's, as with its adapter
    ("traced-NAdam", _own(O.NAdam), dict(lr=0.01), Expect(adapter=TracedAdapter)),
    (
        "traced-Lion",
        Lion,
        dict(lr=0.01, weight_decay=0.1),
        Expect(denom=False, decay=0.1, adapter=TracedAdapter, min_random=0.0),
    ),
    # run and read
    (
        "generic-ASGD",
        O.ASGD,
        dict(lr=0.01, weight_decay=0.1, lambd=0.01),
        Expect(denom=False, adapter=GenericAdapter),
    ),
]


def _run(base, kw, ex: Expect, *, stochastic: bool, seed: int = 0, warm: int = 0):
    """Steps signify and torch (on a shadow copy) side by side; yields, per step and tensor,
    (E, or torch's direction r for the deterministic sign; signify's direction; where E is
    0 / 0)."""
    gen = torch.Generator().manual_seed(seed)
    x0 = [torch.randn(c, dtype=F64, generator=gen) for c in COLS]
    xs = [x.repeat(ROWS, 1).requires_grad_() for x in x0]
    shadow = [x.repeat(ROWS, 1).requires_grad_() for x in x0]

    def groups(ps):
        return [{"params": ps[:1]}, {"params": ps[1:], "lr": kw["lr"] / 2}]

    ref = base(groups(shadow), **kw)
    options = dict(stochastic=stochastic, seed=1000 + seed, scale_beta=ex.scale_beta)

    def grads():
        for x, s, c in zip(xs, shadow, COLS):
            g = torch.randn(c, dtype=F64, generator=gen)
            g = g * torch.exp(0.5 * torch.randn(c, dtype=F64, generator=gen))
            x.grad, s.grad = g.expand(ROWS, c).clone(), g.expand(ROWS, c).clone()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if warm:  # signify(instance) of a torch optimizer k steps in: its state carries over
            warmed = base(groups(xs), **kw)
            for _ in range(warm):
                grads()
                warmed.step()
                ref.step()
            opt = signify.signify(warmed, **options)
        else:
            opt = signify.signify(base, **options)(groups(xs), **kw)
    if ex.adapter is not None:
        assert type(opt.chain[0]) is ex.adapter
    G = [torch.zeros(ROWS, c, dtype=F64) for c in COLS]
    for t in range(warm + 1, warm + ex.steps + 1):
        grads()
        before = [x.detach().clone() for x in xs]
        with torch.no_grad():
            for s, b in zip(shadow, before):
                s.copy_(b)
        ref.step()
        opt.step()
        for k, (x, s, b) in enumerate(zip(xs, shadow, before)):
            unit = opt.param_groups[min(k, 1)]["lr"] * (ex.step_scale(t) if ex.step_scale else 1)
            r = (b - s.detach()) / unit - ex.decay * b  # torch's own direction
            d = (b - x.detach()) / unit - ex.decay * b  # signify's
            undefined = torch.zeros_like(r, dtype=torch.bool)
            if not stochastic:
                yield r, d, undefined
                continue
            if not ex.denom:
                G[k] = torch.maximum(ex.scale_beta * G[k], r.abs())
                undefined = G[k] == 0  # a = 0 with no scale yet (Rprop's reset): no move
                r = torch.where(undefined, 0.0, r / torch.where(undefined, 1.0, G[k]))
            if ex.radam_beta2 is not None:
                b2 = ex.radam_beta2
                rho_inf = 2 / (1 - b2) - 1
                if rho_inf - 2 * t * b2**t / (1 - b2**t) <= 5:
                    r = torch.sign(r)
            yield r, d, undefined


def _check_stochastic(base, kw, ex: Expect, **run_kw):
    z_max, pooled, signed, var_sum, n_random, n_all = 0.0, 0.0, 0.0, 0.0, 0, 0
    for r, d, undefined in _run(base, kw, ex, stochastic=True, **run_kw):
        # every coordinate moves by exactly the step (0 where a = sigma = 0)
        assert (d[undefined] == 0).all()
        assert ((d[~undefined].abs() - 1).abs() < 1e-6).all(), "a coordinate moved by != lr"
        o = torch.sign(d)
        fixed = r.abs() > 1 + 1e-6
        assert (o[fixed] == torch.sign(r[fixed])).all(), "|E| > 1: the sign is not torch's"
        random = (r.abs() < 1 - 1e-6) & ~undefined
        e = r.clamp(-1, 1)
        var = (1 - e * e) * random
        dev = (o - e) * random
        col_var = var.sum(0)
        ok = col_var > 0
        if ok.any():
            z_max = max(z_max, float((dev.sum(0)[ok] / col_var[ok].sqrt()).abs().max()))
        pooled += float(dev.sum())
        signed += float((dev * torch.sign(e)).sum())
        var_sum += float(var.sum())
        n_random += int(random.sum())
        n_all += random.numel()
    assert n_random >= ex.min_random * n_all, f"only {n_random / n_all:.2f} of the steps random"
    if n_random:
        sd = math.sqrt(var_sum)
        assert z_max < Z, f"a coordinate's mean sign is {z_max:.1f} standard errors off"
        assert abs(pooled) / sd < Z and abs(signed) / sd < Z, (pooled / sd, signed / sd)


@pytest.mark.parametrize("name,base,kw,ex", CASES, ids=[c[0] for c in CASES])
def test_stochastic_sign_is_unbiased_for_the_torch_step(name, base, kw, ex):
    _check_stochastic(base, kw, ex)


@pytest.mark.parametrize("name,base,kw,ex", CASES, ids=[c[0] for c in CASES])
def test_deterministic_sign_is_the_sign_of_the_torch_step(name, base, kw, ex):
    for r, d, _ in _run(base, kw, ex, stochastic=False):
        # where torch's step is within rounding of 0 the signs may differ: compare elsewhere
        # (an exact 0, Rprop's step after a sign change, is sign(0) = 0 for both)
        keep = (r == 0) | (r.abs() > 1e-6 * r.abs().max())
        assert keep.float().mean() > 0.99
        torch.testing.assert_close(d[keep], torch.sign(r[keep]), rtol=0, atol=1e-6)


WARM = ["Adam-amsgrad-l2", "NAdam-decoupled-maximize", "RAdam-l2", "SGD-ema", "traced-NAdam"]


@pytest.mark.parametrize("name", WARM)
def test_stochastic_sign_unbiased_after_converting_a_torch_instance(name):
    """signify(torch_instance, stochastic=True) three steps in: the loaded state (RAdam then
    crosses into its rectified phase, SGD's running max starts from the loaded buffer)."""
    _, base, kw, ex = next(c for c in CASES if c[0] == name)
    _check_stochastic(base, kw, dataclasses.replace(ex, min_random=0.1), warm=3, seed=1)
