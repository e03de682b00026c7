"""Adapters against torch.optim itself (``sign=False``), their state, and the generic path."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from adapter_reference import CONFIGS, Reference, config_id

import signify
from signify.adapters import (
    AdagradAdapter,
    AdamAdapter,
    AdamaxAdapter,
    NAdamAdapter,
    RAdamAdapter,
    RMSpropAdapter,
    SGDAdapter,
)
from signify.adapters.generic import GenericAdapter
from signify.adapters.traced import TracedAdapter
from signify.transforms import ExpectedSign

SHAPES = [(4, 5), (7,), (3, 2, 2)]
STEPS = 55


def _params(seed_shapes=SHAPES):
    return [torch.randn(s) for s in seed_shapes]


def _clone(xs):
    return [x.clone().requires_grad_() for x in xs]


def _groups(ps, name, kw):
    """Two groups; the second overrides lr and weight decay (and toggles RMSprop's momentum)."""
    second = {"params": ps[2:], "lr": kw["lr"] * 0.5, "weight_decay": 0.03}
    if name == "RMSprop":  # mixed: a group with momentum where the constructor has none
        second["momentum"] = 0.0 if kw.get("momentum") else 0.3
    return [{"params": ps[:2]}, second]


def _close(a, b, what):
    # rtol 1e-5 as asked; the absolute floor covers elements passing near zero, where float32
    # rounding of the hyperparameters (signify keeps them as float32 device tensors) reached
    # 1.07e-6 once in about 25 x 55 steps of RMSprop with momentum (parameters ~ N(0, 1)).
    torch.testing.assert_close(a, b, rtol=1e-5, atol=3e-6, msg=lambda m: f"{what}: {m}")


def _hyper_rounding(kw):
    """Relative error of ``1 - beta`` once ``beta`` is stored in float32, as signify's
    executor stores hyperparameters (0.999 -> 1.3e-5). The trajectory does not see it (the
    bias corrections use the same beta), but moving averages such as ``exp_avg_sq`` carry
    it; with float64 hyperparameters they agree with torch to 3e-7."""
    betas = [*kw.get("betas", (0.9, 0.999)), kw.get("alpha", 0.99)]
    return max(abs((1 - torch.tensor(b).item()) / (1 - b) - 1) for b in betas)


def _check_state(sig, ref, p_sig, p_ref, what, kw):
    rtol = 1e-5 + _hyper_rounding(kw)
    for ps, pr in zip(p_sig, p_ref):
        s_ref, s_sig = ref.state[pr], sig.state[ps]
        for k, v in s_ref.items():
            if k == "momentum_buffer" and v is None:
                continue
            assert k in s_sig, f"{what}: signify lacks torch's state key {k!r}"
            torch.testing.assert_close(
                s_sig[k].float().reshape(v.shape),
                v.float(),
                rtol=rtol,
                atol=1e-6,
                msg=lambda m, k=k: f"{what} state {k}: {m}",
            )


@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_sign_false_equals_torch(cfg):
    """Every adapter with sign=False is the torch optimizer: two param groups, a parameter
    without gradient on some steps, and a scheduler moving lr every step."""
    name, kw = cfg
    cls = getattr(torch.optim, name)
    x0 = _params()
    p_ref, p_sig = _clone(x0), _clone(x0)
    ref = cls(_groups(p_ref, name, kw), **kw)
    sig = signify.signify(cls, sign=False)(_groups(p_sig, name, kw), **kw)
    schedule = lambda t: 1.0 / (1.0 + 0.05 * t) * (1.0 + 0.3 * math.sin(t))  # noqa: E731
    sched_ref = torch.optim.lr_scheduler.LambdaLR(ref, schedule)
    sched_sig = torch.optim.lr_scheduler.LambdaLR(sig, schedule)
    for step in range(STEPS):
        for i, (a, b) in enumerate(zip(p_ref, p_sig)):
            if i == 1 and step % 3 == 1:  # no gradient: torch skips the parameter entirely
                a.grad = b.grad = None
                continue
            g = torch.randn_like(a) * (0.1 + i)
            a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        sig.step()
        sched_ref.step()
        sched_sig.step()
        for i, (a, b) in enumerate(zip(p_sig, p_ref)):
            _close(a.detach(), b.detach(), f"{name} step {step} param {i}")
    _check_state(sig, ref, p_sig, p_ref, name, kw)
    assert [g["lr"] for g in sig.param_groups] == [g["lr"] for g in ref.param_groups]


@pytest.mark.parametrize("cfg", CONFIGS[1::2], ids=config_id)
def test_signify_instance_continues_like_torch(cfg):
    """signify(torch_instance) after k torch steps continues exactly as torch would."""
    name, kw = cfg
    cls = getattr(torch.optim, name)
    x0 = _params()
    p = _clone(x0)
    base = cls(p, **kw)
    for _ in range(7):
        for q in p:
            q.grad = torch.randn_like(q)
        base.step()
    p_ref = _clone([q.detach() for q in p])
    ref = cls(p_ref, **kw)
    ref.load_state_dict(copy.deepcopy(base.state_dict()))  # torch aliases loaded buffers
    sig = signify.signify(base, sign=False)
    assert sig.param_groups[0]["params"][0] is p[0]
    for step in range(20):
        for a, b in zip(p_ref, p):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        sig.step()
        for a, b in zip(p, p_ref):
            _close(a.detach(), b.detach(), f"{name} resumed step {step}")
    _check_state(sig, ref, p, p_ref, name, kw)


# --------------------------------------------------------------------------- state
# base kwargs -> (state kept under the deterministic sign, extra state under a stochastic one)
STATE_CASES = [
    ("SGD", dict(momentum=0.9), {"step", "momentum_buffer"}, {"max_scale.G"}),
    ("SGD", dict(), {"step"}, {"max_scale.G"}),
    ("Adam", dict(), {"step", "exp_avg"}, {"exp_avg_sq"}),
    ("Adam", dict(amsgrad=True), {"step", "exp_avg"}, {"exp_avg_sq", "max_exp_avg_sq"}),
    ("AdamW", dict(), {"step", "exp_avg"}, {"exp_avg_sq"}),
    ("Adamax", dict(), {"step", "exp_avg"}, {"exp_inf"}),
    ("RMSprop", dict(), {"step"}, {"square_avg"}),
    ("RMSprop", dict(centered=True), {"step"}, {"square_avg", "grad_avg"}),
    ("RMSprop", dict(momentum=0.9), {"step", "square_avg", "momentum_buffer"}, {"max_scale.G"}),
    (
        "RMSprop",
        dict(momentum=0.9, centered=True),
        {"step", "square_avg", "grad_avg", "momentum_buffer"},
        {"max_scale.G"},
    ),
    ("Adagrad", dict(lr_decay=0.1), {"step"}, {"sum"}),
    ("NAdam", dict(), {"step", "mu_product", "exp_avg"}, {"exp_avg_sq"}),
    ("RAdam", dict(), {"step", "exp_avg"}, {"exp_avg_sq"}),
]


@pytest.mark.parametrize("case", STATE_CASES, ids=lambda c: c[0] + str(sorted(c[1])))
def test_dead_state_dropped_under_deterministic_sign(case):
    name, kw, kept, extra = case
    cls = getattr(torch.optim, name)
    for stochastic, expected in ((False, kept), (True, kept | extra)):
        p = torch.randn(6, requires_grad=True)
        opt = signify.signify(cls, stochastic=stochastic)([p], lr=1e-2, **kw)
        p.grad = torch.randn(6)
        opt.step()
        assert set(opt.state[p]) == expected, (stochastic, set(opt.state[p]))


def test_adapter_registry():
    expected = {
        torch.optim.SGD: SGDAdapter,
        torch.optim.Adam: AdamAdapter,
        torch.optim.AdamW: AdamAdapter,
        torch.optim.Adamax: AdamaxAdapter,
        torch.optim.RMSprop: RMSpropAdapter,
        torch.optim.Adagrad: AdagradAdapter,
        torch.optim.NAdam: NAdamAdapter,
        torch.optim.RAdam: RAdamAdapter,
    }
    for base, adapter in expected.items():
        opt = signify.signify(base)([torch.zeros(2, requires_grad=True)], lr=1e-2)
        assert type(opt.chain[0]) is adapter, base


def test_torch_checkpoint_loads_into_signified():
    """State keys are torch's: a torch.optim checkpoint loads and continues exactly."""
    for name in ("Adamax", "RMSprop", "Adagrad", "NAdam", "RAdam"):
        cls = getattr(torch.optim, name)
        p = torch.randn(5, requires_grad=True)
        base = cls([p], lr=1e-2)
        for _ in range(4):
            p.grad = torch.randn(5)
            base.step()
        q = p.detach().clone().requires_grad_()
        sig = signify.signify(cls, sign=False)([q], lr=1e-2)
        sig.load_state_dict(copy.deepcopy(base.state_dict()))
        for _ in range(5):
            g = torch.randn(5)
            p.grad, q.grad = g.clone(), g.clone()
            base.step()
            sig.step()
        _close(q.detach(), p.detach(), name)
        # and back: signify's state_dict loads into torch
        back = cls([p.detach().clone().requires_grad_()], lr=1e-2)
        sd = sig.state_dict()
        sd.pop("signify")
        back.load_state_dict(sd)


# --------------------------------------------------------------------------- RMSprop groups
def test_rmsprop_mixed_momentum_groups():
    """Constructor momentum > 0 builds the running-max chain; a group with momentum 0 then
    works under every sign. The converse under a stochastic sign is a clear ValueError."""
    x0 = _params()
    for stochastic in (False, True):
        p = _clone(x0)
        opt = signify.signify(torch.optim.RMSprop, stochastic=stochastic, seed=1)(
            [{"params": p[:2]}, {"params": p[2:], "momentum": 0.0}], lr=1e-2, momentum=0.9
        )
        for _ in range(3):
            for q in p:
                q.grad = torch.randn_like(q)
            before = [q.detach().clone() for q in p]
            opt.step()
            for q, b in zip(p, before):  # every coordinate moves by lr, in both groups
                moved = (q.detach() - b).abs()
                torch.testing.assert_close(moved, torch.full_like(moved, 1e-2), atol=1e-6, rtol=0)
        # the momentum-free group: a = g / avg under the running max, a = g (no state) under
        # the deterministic sign
        assert set(opt.state[p[2]]) == (
            {"step", "square_avg", "max_scale.G"} if stochastic else {"step"}
        )
    # the momentum-free group under the running max: a = g / avg, sigma = max |g / avg|
    p = torch.randn(64, requires_grad=True)
    opt = signify.signify(torch.optim.RMSprop, [ExpectedSign()])(
        [{"params": [p], "momentum": 0.0}], lr=1e-2, momentum=0.9, alpha=0.9
    )
    ref = Reference("RMSprop", dict(alpha=0.9), p.shape)
    G = torch.zeros(64, dtype=torch.float64)
    for _ in range(6):
        p.grad = torch.randn(64)
        before = p.detach().double().clone()
        opt.step()
        a = ref.step(p.grad, before).base_dir
        G = torch.maximum(G, a.abs())
        _close(p.detach().double(), before - 1e-2 * a / G, "RMSprop mixed, expected sign")
    p = _clone(x0)
    opt = signify.signify(torch.optim.RMSprop, stochastic=True)(
        [{"params": p[:2]}, {"params": p[2:], "momentum": 0.9}], lr=1e-2
    )
    for q in p:
        q.grad = torch.randn_like(q)
    with pytest.raises(ValueError, match="momentum"):
        opt.step()
    torch.testing.assert_close([q.detach() for q in p], x0, rtol=0, atol=0)


# --------------------------------------------------------------------------- generic path
class _Halving(torch.optim.Optimizer):
    """A small custom optimizer: x <- x - lr * (g + 0.5 * previous g), with L2 decay."""

    def __init__(self, params, lr=0.1, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                prev = st.get("prev", torch.zeros_like(p))
                d = p.grad + group["weight_decay"] * p + 0.5 * prev
                st["prev"] = p.grad.clone()
                p.add_(d, alpha=-group["lr"])


class _AdamThenShrink(torch.optim.Adam):
    """Adam with an overridden step: it must not be taken for Adam."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.mul_(0.99)


class _PlainAdamSubclass(torch.optim.Adam):
    pass


@pytest.mark.parametrize(
    "cls, kw",
    [
        (torch.optim.Adadelta, dict(lr=0.5, weight_decay=0.1)),
        (_Halving, dict(lr=0.1, weight_decay=0.1)),
        (_AdamThenShrink, dict(lr=0.01)),
    ],
    ids=["Adadelta", "custom", "Adam-overridden-step"],
)
def test_generic_path(cls, kw, monkeypatch):
    monkeypatch.setenv("SIGNIFY_TRACED", "0")  # the run-and-read path, not the traced one
    x0 = _params()
    p_ref, p_off, p_on = _clone(x0), _clone(x0), _clone(x0)
    ref = cls(p_ref, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        off = signify.signify(cls, sign=False)(p_off, **kw)
        on = signify.signify(cls)(p_on, **kw)
        shadow = cls(_clone(x0), **kw)  # the base run on the sign run's iterates
    assert isinstance(off.chain[0], GenericAdapter) and isinstance(on.chain[0], GenericAdapter)
    p_shadow = shadow.param_groups[0]["params"]
    for step in range(12):
        for a, b, c, d in zip(p_ref, p_off, p_on, p_shadow):
            g = torch.randn_like(a)
            a.grad, b.grad, c.grad, d.grad = g.clone(), g.clone(), g.clone(), g.clone()
        ref.step()
        off.step()
        before = [c.detach().clone() for c in p_on]
        with torch.no_grad():
            for c, d in zip(p_on, p_shadow):
                d.copy_(c)
        shadow.step()
        on.step()
        for a, b in zip(p_off, p_ref):
            _close(a.detach(), b.detach(), f"{cls.__name__} sign=False step {step}")
        lr = kw["lr"]
        for c, d, x in zip(p_on, p_shadow, before):
            delta = (x - d.detach()).double()
            expected = x.double() - lr * torch.sign(delta / lr)
            _close(c.detach().double(), expected, f"{cls.__name__} sign step {step}")


def test_generic_path_stochastic_sign():
    """No denominator: the running max G = max(G, |delta / lr|) scales the noise; the first
    step is deterministic (|a_1| = G_1) and every step moves each coordinate by lr."""
    x0 = _params()
    p, p_shadow = _clone(x0), _clone(x0)
    opt = signify.signify(_Halving, stochastic=True, seed=4)(p, lr=0.1)
    shadow = _Halving(p_shadow, lr=0.1)
    for step in range(4):
        for a, b in zip(p, p_shadow):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        before = [a.detach().clone() for a in p]
        shadow.step()
        opt.step()
        for a, b, x in zip(p, p_shadow, before):
            moved = a.detach() - x
            torch.testing.assert_close(moved.abs(), torch.full_like(x, 0.1), atol=1e-6, rtol=0)
            if step == 0:
                torch.testing.assert_close(
                    moved, torch.sign(b.detach() - x) * 0.1, atol=1e-6, rtol=0
                )
        with torch.no_grad():
            for a, b in zip(p, p_shadow):
                b.copy_(a)


def test_generic_path_warns_once_per_class():
    class _Once(_Halving):
        pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        signify.signify(_Once)([torch.zeros(2, requires_grad=True)], lr=0.1)
        signify.signify(_Once, stochastic=True)([torch.zeros(2, requires_grad=True)], lr=0.1)
    msgs = [str(w.message) for w in caught if "no adapter" in str(w.message)]
    assert len(msgs) == 1 and "_Once" in msgs[0]


def test_subclass_without_new_step_uses_the_adapter(monkeypatch):
    monkeypatch.setenv("SIGNIFY_TRACED", "0")
    opt = signify.signify(_PlainAdamSubclass)([torch.zeros(2, requires_grad=True)], lr=0.1)
    assert type(opt.chain[0]) is AdamAdapter
    # a subclass with its own step is not the base's: traced (or run-and-read) instead
    opt = signify.signify(_AdamThenShrink)([torch.zeros(2, requires_grad=True)], lr=0.1)
    assert type(opt.chain[0]) in (TracedAdapter, GenericAdapter)
