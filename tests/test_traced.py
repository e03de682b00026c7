"""The traced adapter: torch.optim classes without a hand-written adapter, converted from a
make_fx trace of their own step, against torch.optim itself and the hand-written adapters."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import signify
from signify import rng
from signify.adapters import adapter_for
from signify.adapters.generic import GenericAdapter
from signify.adapters.traced import TracedAdapter

SHAPES = [(6, 5), (7,), (2, 3, 4)]


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def _steps(opt, ps, steps, seed=1, schedule=None):
    gen = torch.Generator().manual_seed(seed)
    for s in range(steps):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        if schedule is not None:
            for g in opt.param_groups:
                g["lr"] = schedule(s)
        opt.step()
    return [p.detach().clone() for p in ps]


_OWN: dict[type, type] = {}


def _own(base):
    """``base`` with its own ``step()`` (calling the base's): no hand-written adapter applies
    to it (Adamax, RMSprop, Adagrad and NAdam have one), so signify traces it."""
    if base not in _OWN:
        _OWN[base] = type(
            f"Own{base.__name__}",
            (base,),
            {"step": lambda self, closure=None: base.step(self, closure)},
        )
    return _OWN[base]


CASES = [
    (torch.optim.Adamax, {"lr": 0.02, "weight_decay": 0.1}),
    (torch.optim.RMSprop, {"lr": 0.01}),
    (torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.1}),
    (torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.01, "initial_accumulator_value": 0.1}),
    (torch.optim.NAdam, {"lr": 0.01, "weight_decay": 0.05}),
    (torch.optim.Adadelta, {"lr": 1.0}),
    (torch.optim.Rprop, {"lr": 0.01}),
]


def _own(base):
    """``base`` with its step overridden: no hand-written adapter applies, it is traced."""
    return type(f"Own{base.__name__}", (base,), {"step": lambda self, c=None: base.step(self, c)})


@pytest.mark.parametrize("base,kw", CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_traced_sign_false_is_the_base(base, kw):
    """signify(base, sign=False) through the traced graph steps exactly like torch.optim,
    under an lr schedule, with two param groups of different settings."""

    def groups(ps):
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": kw["lr"] * 0.5}]

    sched = [kw["lr"] * f for f in (1.0, 0.7, 0.5, 0.3, 0.2, 0.1)]
    ref_ps = _params()
    ref_opt = base(groups(ref_ps), **kw)
    ref = _steps(ref_opt, ref_ps, 6, schedule=lambda s: sched[s])
    ps = _params()
    opt = signify.signify(_own(base), sign=False)(groups(ps), **kw)
    assert isinstance(opt.chain[0], TracedAdapter)
    got = _steps(opt, ps, 6, schedule=lambda s: sched[s])
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert set(opt.state[ps[0]]) == set(ref_opt.state[ref_ps[0]])  # the base's own keys


class SubAdam(torch.optim.Adam):
    """A subclass with its own step(): no hand-written adapter applies, so it is traced."""

    def step(self, closure=None):  # type: ignore[override]
        return super().step(closure)


class SubAdamW(torch.optim.AdamW):
    def step(self, closure=None):  # type: ignore[override]
        return super().step(closure)


def test_traced_matches_hand_written_adapters():
    assert isinstance(adapter_for(SubAdam), TracedAdapter)
    # Deterministic AdamW (decoupled decay found as the parameter's decay factor).
    ref = _steps(
        signify.signify(torch.optim.AdamW)(ps := _params(), lr=0.01, weight_decay=0.1), ps, 5
    )
    got = _steps(signify.signify(SubAdamW)(ps := _params(), lr=0.01, weight_decay=0.1), ps, 5)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    # Stochastic Adam: the same noise, and a / sigma equal up to a positive factor, so the
    # signs agree except where the noisy argument is within rounding of zero.
    kw = {"lr": 0.01, "seed": 3}
    ref = _steps(signify.signify(torch.optim.Adam, stochastic=True)(ps := _params(), **kw), ps, 8)
    got = _steps(signify.signify(SubAdam, stochastic=True)(ps := _params(), **kw), ps, 8)
    diff = torch.cat([(a - b).abs().reshape(-1) for a, b in zip(ref, got)])
    assert (diff > 1e-6).float().mean() < 0.01
    assert diff.max() <= 2 * 8 * 0.01 + 1e-6


def test_traced_adamax_stochastic_sign_against_float64():
    """Sign-converted Adamax: sign(m_hat + u n) with signify's noise, recomputed in float64."""
    torch.manual_seed(0)
    p0 = torch.randn(40)
    lr, b1, b2, eps, seed = 0.01, 0.9, 0.999, 1e-8, 11
    p = torch.nn.Parameter(p0.clone())
    opt = signify.signify(_own(torch.optim.Adamax), stochastic=True)([p], lr=lr, seed=seed)
    assert isinstance(opt.chain[0], TracedAdapter)
    x, m, u = p0.double().clone(), torch.zeros(40, dtype=torch.float64), torch.zeros(40).double()
    seed_t = torch.tensor(seed, dtype=torch.int64)
    for t in range(1, 6):
        g = torch.randn(40)
        p.grad = g.clone()
        opt.step()
        m = b1 * m + (1 - b1) * g.double()
        u = torch.maximum(b2 * u, g.double().abs() + eps)
        key = rng.step_key(seed_t, torch.tensor(t, dtype=torch.int64))
        k = rng.to_i32(rng.mix32(torch.tensor(rng.tensor_key(0)) ^ key))
        n = rng.uniform_pm1(rng.random_bits(k, 40, p.device, rng.STREAM_SIGN)).double()
        x = x - lr * torch.sign(m / (1 - b1**t) + u * n)
        assert (p.detach().double() - x).abs().max() < 1e-6


class PlainMomentumNorm(torch.optim.Optimizer):
    """A user's optimizer: m <- beta m + g; x <- x - lr m / (|m| + eps), written plainly."""

    def __init__(self, params, lr=1e-2, beta=0.9, eps=1e-3):
        super().__init__(params, {"lr": lr, "beta": beta, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["m"] = torch.zeros_like(p)
                m = st["m"]
                m.mul_(group["beta"]).add_(p.grad)
                p.addcdiv_(m, m.abs() + group["eps"], value=-group["lr"])


class ItemReader(PlainMomentumNorm):
    """Reads a value on the host in its step: not traceable."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.abs().max().item() > 0:
                    p.add_(p.grad, alpha=-group["lr"])


def test_custom_optimizer_is_traced_and_untraceable_falls_back():
    ps = _params()
    ref = _steps(PlainMomentumNorm(ps, lr=0.05), ps, 5)
    ps = _params()
    opt = signify.signify(PlainMomentumNorm, sign=False)(ps, lr=0.05)
    assert isinstance(opt.chain[0], TracedAdapter) and opt.chain[0].has_scale
    for a, b in zip(ref, _steps(opt, ps, 5)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = signify.signify(ItemReader, sign=False)(ps := _params(), lr=0.05)
    assert isinstance(opt.chain[0], GenericAdapter)
    ref = _steps(ItemReader(ref_ps := _params(), lr=0.05), ref_ps, 3)
    for a, b in zip(ref, _steps(opt, ps, 3)):  # run-and-read steps (its state exists first)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert isinstance(adapter_for(torch.optim.SGD), signify.adapters.SGDAdapter)


class AdamThenShrink(torch.optim.Adam):
    """Adam, then a shrink that does not scale with lr (so not lr * decay)."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.mul_(0.99)


def test_fixed_shrink_is_kept_exactly():
    kw = {"lr": 0.01}
    ref = _steps(AdamThenShrink(ps := _params(), **kw), ps, 4)
    opt = signify.signify(AdamThenShrink, sign=False)(ps := _params(), **kw)
    assert isinstance(opt.chain[0], TracedAdapter)
    for a, b in zip(ref, _steps(opt, ps, 4)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_tracing_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SIGNIFY_TRACED", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(adapter_for(_own(torch.optim.Adadelta)), GenericAdapter)


def test_baked_hyperparameter_change_and_torch_checkpoint():
    """weight_decay is baked into RMSprop's graph (it branches on it): a new value traces a
    new graph. A torch.optim checkpoint loads into the traced adapter's state."""
    kw = {"lr": 0.01, "weight_decay": 0.1}
    ref_ps = _params()
    ref_opt = torch.optim.RMSprop(ref_ps, **kw)
    _steps(ref_opt, ref_ps, 3)
    ps = _params()
    opt = signify.signify(_own(torch.optim.RMSprop), sign=False)(ps, **kw)
    with torch.no_grad():
        for p, q in zip(ps, ref_ps):
            p.copy_(q)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))  # as from a file: no aliasing
    for g in (ref_opt.param_groups[0], opt.param_groups[0]):
        g["weight_decay"] = 0.3
    ref = _steps(ref_opt, ref_ps, 3, seed=5)
    got = _steps(opt, ps, 3, seed=5)
    for a, b in zip(ref, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert len(opt.chain[0]._specs) == 2


# ------------------------------------------------------------ bases the rewrite must refuse
class _LrInState(torch.optim.Optimizer):
    """Caffe-style momentum: lr enters the state the parameter write reads."""

    def __init__(self, params, lr=0.1, momentum=0.9):  # type: ignore[no-untyped-def]
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        for g in self.param_groups:
            for p in g["params"]:
                st = self.state[p]
                if not st:
                    st["buf"] = torch.zeros_like(p)
                st["buf"].mul_(g["momentum"]).add_(p.grad, alpha=g["lr"])
                p.sub_(st["buf"])


class _DecayMatrices(torch.optim.Optimizer):
    """Decays 2-D parameters only (a branch on the shape)."""

    def __init__(self, params, lr=0.1, weight_decay=0.5):  # type: ignore[no-untyped-def]
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        for g in self.param_groups:
            for p in g["params"]:
                if p.ndim >= 2:
                    p.mul_(1 - g["lr"] * g["weight_decay"])
                p.add_(p.grad, alpha=-g["lr"])


class _Adanish(torch.optim.Optimizer):
    """Decays by 1 / (1 + lr wd): not linear in lr."""

    def __init__(self, params, lr=0.1, weight_decay=1.0):  # type: ignore[no-untyped-def]
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        for g in self.param_groups:
            for p in g["params"]:
                p.mul_(1 / (1 + g["lr"] * g["weight_decay"]))
                p.add_(p.grad, alpha=-g["lr"])


class _GroupMult(torch.optim.Optimizer):
    """Reads a group key its constructor does not take."""

    def __init__(self, params, lr=0.1):  # type: ignore[no-untyped-def]
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        for g in self.param_groups:
            for p in g["params"]:
                p.add_(p.grad, alpha=-g["lr"] * g.get("lr_mult", 1.0))


@pytest.mark.parametrize("base", [_LrInState, _DecayMatrices, _Adanish, _GroupMult])
def test_sign_false_equals_bases_the_rewrite_cannot_express(base):
    """Each breaks an assumption of the rewrite (lr only scales the write; one rule for
    every shape; decay linear in lr; settings from the constructor): the trace is checked
    against the base's own step and such a base is run and read, or traced with the key."""
    torch.manual_seed(0)
    shapes = [(3, 4), (5,)]
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    groups = lambda xs: [{"params": [xs[0]], "lr_mult": 3.0}, {"params": [xs[1]], "lr": 0.05}]  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = signify.signify(base, sign=False)(groups(ps))
    ref = base(groups(qs))
    for _ in range(4):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape)
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_tensor_lr_on_a_traced_base_steps():
    p = torch.randn(4, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt = signify.signify(torch.optim.Adadelta, sign=False)([p], lr=torch.tensor(0.5))
    ref = torch.optim.Adadelta([q], lr=torch.tensor(0.5))
    for _ in range(3):
        g = torch.randn(4)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_run_and_read_checkpoints_load_both_ways_with_torch():
    """The base's state sits in the optimizer's own entries: a torch checkpoint of the base
    loads into the signified one, and the signified one's loads into torch."""
    torch.manual_seed(0)
    x = torch.zeros(3, requires_grad=True)
    base = _LrInState([x])
    for _ in range(3):
        x.grad = torch.randn(3)
        base.step()
    y = x.detach().clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = signify.signify(_LrInState, sign=False)([y])
    assert isinstance(opt.chain[0], GenericAdapter)
    opt.load_state_dict(copy.deepcopy(base.state_dict()))
    g = torch.randn(3)
    x.grad, y.grad = g.clone(), g.clone()
    base.step()
    opt.step()
    torch.testing.assert_close(y.detach(), x.detach())
    back = _LrInState([z := y.detach().clone().requires_grad_()])
    back.load_state_dict(copy.deepcopy(opt.state_dict()))
    z.grad, y.grad = g.clone(), g.clone()
    back.step()
    opt.step()
    torch.testing.assert_close(z.detach(), y.detach())


def test_a_base_without_lr_is_refused_clearly():
    class StepSize(torch.optim.Optimizer):
        def __init__(self, params, step_size=0.1):  # type: ignore[no-untyped-def]
            super().__init__(params, dict(step_size=step_size))

        def step(self, closure=None):  # type: ignore[no-untyped-def]
            pass

    with pytest.raises(TypeError, match="no lr"):
        signify.signify(StepSize)([torch.zeros(2, requires_grad=True)])
