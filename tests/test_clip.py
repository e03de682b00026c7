"""``max_grad_norm``: gradient clipping inside the step.

The reference is torch itself: ``torch.nn.utils.clip_grad_norm_`` on the gradients, then the
same signified optimizer without clipping. Eager steps must give the same parameters bit for
bit (same norm, same coefficient, same rounding), compiled ones the eager reference's to the
summation order of reductions; the fused paths leave ``.grad`` unscaled and use the norm as
the non-finite check (no second read of the gradients). Each case also shows, eagerly, that
clipping changed the result, so a run that ignored the option would fail.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_nonfinite import HostReader, OwnAdadelta

import signify
from signify import gradcheck
from signify.transforms import Blocks
from signify.transforms.stepsize_alias import Alias

MAX_NORM = 0.7


def _params(dtype=torch.float32):
    shapes = [(37, 5), (64,), (3, 3, 3), (1,)]
    return [torch.randn(s, dtype=dtype) for s in shapes]


def _grads(ps, t):
    # alternate large and small gradients: the coefficient changes from step to step, and
    # a momentum of clipped gradients points elsewhere than one of raw gradients
    big = 5.0 if t % 2 else 0.02
    return [torch.randn_like(p) * big for p in ps]


def _history(ps, steps):
    return [_grads(ps, t) for t in range(steps)]


def _run(make, ps, history, clip_inside, clip_outside):
    xs = [p.clone().requires_grad_() for p in ps]
    opt = make(xs, max_grad_norm=MAX_NORM) if clip_inside else make(xs)
    for gs in history:
        for x, g in zip(xs, gs):
            x.grad = g.clone()
        if clip_outside:
            torch.nn.utils.clip_grad_norm_(xs, MAX_NORM)
        opt.step()
        if clip_inside and not opt._adapter.clips_on_host:
            for x, g in zip(xs, gs):  # the fused paths leave .grad as backward wrote it
                assert torch.equal(x.grad, g)
    return [x.detach() for x in xs], opt


CASES = {
    "adam": (torch.optim.Adam, {"lr": 1e-2}, {}),
    "adamw_stochastic": (torch.optim.AdamW, {"lr": 1e-2, "seed": 4}, {"stochastic": True}),
    "sgd_momentum": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9}, {}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 1e-2, "seed": 6}, {"stochastic": True}),
    "sgd_alias": (torch.optim.SGD, {"momentum": 0.9}, {"stepsize": "alias"}),
    "adam_alias_tensor": (torch.optim.Adam, {}, {"stepsize": Alias(scope="tensor")}),
    # no adapter, a traceable step; stochastic: its sign of d = update alone would not
    # show the clipping, the scale of d does
    "traced_adadelta": (OwnAdadelta, {"lr": 1.0, "seed": 7}, {"stochastic": True}),
}


#: every case eagerly; the compiled graphs (per tensor and flat) for a few, as compiling
#: costs seconds on the CPU: with a prepass (ALIAS), and the flat buffer (per tensor without
#: a prepass: `test_clip_coefficient_changes_without_recompiling`). Compiled per tensor, one
#: tensor a chunk (compile_chunk=1): each lane's chunks share one graph (the default's
#: chunks of 2 and 1 tensors cost two; ALIAS's norms still combine across chunks)
LAYOUTS = [(c, "eager") for c in sorted(CASES)] + [
    ("sgd_alias", "compiled"),
    ("adam", "flat"),
    ("sgd_momentum", "flat"),
]


@pytest.mark.parametrize(("case", "layout"), LAYOUTS)
def test_clip_inside_equals_clip_grad_norm_then_step(case, layout):
    base, kw, opts = CASES[case]
    run_kw = {"compile": layout != "eager", "flatten": layout == "flat", **kw}
    if layout == "compiled":
        run_kw["compile_chunk"] = 1
    cls = signify.signify(base, **opts)

    def make(xs, **extra):
        return cls(xs, **run_kw, **extra)

    ps = _params()
    hist = _history(ps, 6)
    got, opt = _run(make, ps, hist, clip_inside=True, clip_outside=False)
    if case.startswith("traced"):
        assert opt._adapter.name == "traced"
    assert (opt._executor._plan.flats != []) == (layout == "flat")
    if layout == "eager":
        want, _ = _run(make, ps, hist, clip_inside=False, clip_outside=True)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    else:
        # against the eager run (compiling the reference too would double the test's cost):
        # equal to the summation order of ALIAS's norms
        def make_eager(xs, **extra):
            eager_kw = {k: v for k, v in run_kw.items() if k != "compile_chunk"}
            return cls(xs, **{**eager_kw, "compile": False, "flatten": False}, **extra)

        want, _ = _run(make_eager, ps, hist, clip_inside=False, clip_outside=True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if layout == "eager":  # the same arithmetic in every layout: shown once per case
        unclipped, _ = _run(make, ps, hist, clip_inside=False, clip_outside=False)
        assert any(not torch.equal(a, b) for a, b in zip(got, unclipped)), (
            "clipping changed nothing"
        )


def test_clip_on_the_run_and_read_path_scales_grad_in_place():
    """An optimizer with no adapter and no traceable step: the base runs eagerly on
    ``.grad``, which is clipped there in place (documented), with the same result."""
    # stochastic: the running-max scale of a base without a denominator sees the clipping
    cls = signify.signify(HostReader, stochastic=True, seed=3)
    ps = _params()
    hist = _history(ps, 5)
    got, opt = _run(cls, ps, hist, clip_inside=True, clip_outside=False)
    assert opt._adapter.clips_on_host
    want, _ = _run(cls, ps, hist, clip_inside=False, clip_outside=True)
    unclipped, _ = _run(cls, ps, hist, clip_inside=False, clip_outside=False)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(got, unclipped))


def test_clip_in_bf16_rounds_like_clip_grad_norm():
    """bf16 parameters and gradients: torch computes the norms and the coefficient in bf16
    and rounds the scaled gradient to bf16; the step does the same."""
    cls = signify.signify(torch.optim.SGD)

    def make(xs, **extra):
        return cls(xs, lr=1e-2, momentum=0.9, compile=False, seed=1, **extra)

    ps = _params(torch.bfloat16)
    hist = _history(ps, 5)
    got, _ = _run(make, ps, hist, clip_inside=True, clip_outside=False)
    want, _ = _run(make, ps, hist, clip_inside=False, clip_outside=True)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_compiled_clip_rounds_bf16_like_torch():
    """Inside a compiled graph the scaled bf16 gradient is still rounded to bf16 (inductor
    drops a plain ``.to(bfloat16)`` before an upcast; `compiled.clipped` rounds on the bits),
    including ties, subnormals, overflow to inf and NaN."""
    from signify.compiled import clipped

    g = torch.randn(4096, dtype=torch.bfloat16) * torch.logspace(-30, 30, 4096).bfloat16()
    g = torch.cat([g, torch.tensor([3e38, -3e38, 1e-40, math.inf, math.nan]).bfloat16()])
    coef = torch.tensor(0.7371).bfloat16()  # from bf16 norms, as in clip_grad_norm_
    fn = torch.compile(lambda gs, c: [x.float() * 2 for x in clipped(gs, c)], fullgraph=True)
    got = fn([g], coef)[0]
    want = g.clone()
    torch._foreach_mul_([want], coef)  # what clip_grad_norm_ does
    torch.testing.assert_close(got, want.float() * 2, rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(g, want)


@pytest.mark.parametrize("compile_", [False, True])
def test_norm_is_the_nonfinite_check(monkeypatch, compile_):
    """With clipping, a NaN gradient skips the step through the norm (no separate max-abs
    read of the gradients), changes nothing, and the run continues as if it never came."""

    def no_second_read(*a, **k):
        raise AssertionError("the non-finite check read the gradients a second time")

    monkeypatch.setattr(gradcheck, "max_abs", no_second_read)
    cls = signify.signify(torch.optim.SGD)
    ps = _params()
    xs = [p.clone().requires_grad_() for p in ps]
    ref = [p.clone().requires_grad_() for p in ps]
    kw = {"lr": 1e-2, "momentum": 0.9, "seed": 2, "compile": compile_, "max_grad_norm": MAX_NORM}
    if compile_:  # chunks of 2 tensors, the last padded: the graphs of the test below
        kw["compile_chunk"] = 2
    opt, ref_opt = cls(xs, **kw), cls(ref, **kw)
    for t in range(4):
        gs = _grads(ps, t)
        if t == 2:
            before = [x.detach().clone() for x in xs]
            state = {k: v.clone() for k, v in opt.state[xs[0]].items() if torch.is_tensor(v)}
            bad = [g.clone() for g in gs]
            bad[1].view(-1)[3] = math.nan
            for x, g in zip(xs, bad):
                x.grad = g
            opt.step()
            assert opt.skipped_steps == 1
            assert all(torch.equal(a, b) for a, b in zip(before, xs))
            after = opt.state[xs[0]]
            assert all(torch.equal(after[k], v) for k, v in state.items())
        for x, g in zip(xs, gs):
            x.grad = g.clone()
        for x, g in zip(ref, gs):
            x.grad = g.clone()
        opt.step()
        ref_opt.step()
    for a, b in zip(xs, ref):
        assert torch.equal(a, b)


def test_clip_coefficient_changes_without_recompiling():
    """The coefficient is a 0-d tensor computed on the device: steps with different norms
    reuse the compiled graphs; the per-tensor compiled steps equal the eager run with
    ``clip_grad_norm_``."""
    from torch._dynamo.utils import counters

    cls = signify.signify(torch.optim.SGD)
    ps = _params()
    hist = [[g * (t + 1) for g in _grads(ps, t)] for t in range(12)]
    xs = [p.clone().requires_grad_() for p in ps]
    ref = [p.clone().requires_grad_() for p in ps]
    # compile_chunk=2 (padded chunks): the graphs of test_norm_is_the_nonfinite_check[True]
    opt = cls(xs, lr=1e-2, momentum=0.9, compile=True, compile_chunk=2, max_grad_norm=MAX_NORM)
    ref_opt = cls(ref, lr=1e-2, momentum=0.9, compile=False)
    frames = None
    for t, gs in enumerate(hist):
        if t == 2:
            frames = counters["stats"]["unique_graphs"]
        for x, r, g in zip(xs, ref, gs):
            x.grad, r.grad = g.clone(), g.clone()
        opt.step()
        torch.nn.utils.clip_grad_norm_(ref, MAX_NORM)
        ref_opt.step()
    assert counters["stats"]["unique_graphs"] == frames
    for a, b in zip(xs, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (math.inf, ValueError),
        (math.nan, ValueError),
        ("1.0", TypeError),
        (True, TypeError),
        (torch.tensor(1.0), TypeError),
    ],
)
def test_bad_max_grad_norm_is_refused_naming_it(value, error):
    with pytest.raises(error, match="max_grad_norm"):
        signify.signify(torch.optim.Adam, max_grad_norm=value)
    cls = signify.signify(torch.optim.Adam)
    with pytest.raises(error, match="max_grad_norm"):
        cls([torch.randn(3, requires_grad=True)], max_grad_norm=value)


def test_instance_option_overrides_the_class():
    cls = signify.signify(torch.optim.Adam, max_grad_norm=1.0)
    assert cls.options.max_grad_norm == 1.0
    opt = cls([torch.randn(3, requires_grad=True)], max_grad_norm=2)
    assert opt.options.max_grad_norm == 2 and opt._executor.max_grad_norm == 2.0


def test_clip_with_blocks_uses_the_active_blocks_gradients():
    """With ``blocks=`` the frozen blocks get no ``.grad`` in a training loop, so the norm is
    over the active block's gradients: what ``clip_grad_norm_(model.parameters())`` gives."""
    from test_nonfinite import Stack

    runs = []
    for inside in (True, False):
        model = Stack(seed=5)
        cls = signify.signify(torch.optim.SGD, blocks=Blocks("cyclic", switch_every=2))
        opt = cls(
            model.named_parameters(),
            lr=1e-2,
            momentum=0.9,
            **({"max_grad_norm": 0.002} if inside else {}),
        )
        gen = torch.Generator().manual_seed(9)
        for _ in range(8):
            opt.zero_grad()
            model(torch.randn(16, 4, generator=gen) * 10).backward()
            assert any(p.grad is None for p in model.parameters())  # frozen blocks
            if not inside:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.002)
                assert norm > 0.002  # clipping acts
            opt.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
