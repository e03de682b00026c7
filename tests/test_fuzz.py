"""Fuzzing (hypothesis), eager only: random hyperparameters, shapes (0-d and empty included),
dtypes and transform chains.

* ``sign=False`` is the torch.optim base, for every adapter family with random
  hyperparameters: signify rejects exactly the hyperparameters torch rejects (same error
  type), and otherwise steps like torch. fp32/fp64: to the rounding of the per-step scalars,
  which the executor keeps as float32 device tensors (measured, not bit for bit: see
  docs/reliability.md); bf16: writes are stochastically rounded by design, so each step may
  land one bf16 ulp away from torch's fp32 trajectory instead of round-to-nearest's half ulp
  (checked with fp32 state and no L2 decay, where the write is the only difference).
* Random chains (sign, stochastic sign, blocks, stepsize oracles, decoupled weight decay,
  state_dtype, nonfinite, scale_beta, flatten, explicit transform lists in random orders, mixed
  dtypes, frozen parameters, missing gradients): a configuration is either rejected at
  construction with a ValueError/TypeError that says something, or every step runs, and
  finite gradients (1e-30 to 1e30) never leave a non-finite parameter.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import signify
from signify.transforms import (
    Alias,
    AliasAdam,
    AliasLowMem,
    Blocks,
    ConstantStepsize,
    DecoupledWeightDecay,
    ExpectedSign,
    Sign,
    StochasticSign,
)

# Examples per property (the figures in docs/reliability.md come from these settings).
# SIGNIFY_FUZZ_EXAMPLES raises both for a long run.
EQUAL_EXAMPLES = int(os.environ.get("SIGNIFY_FUZZ_EXAMPLES", 300))
CHAIN_EXAMPLES = int(os.environ.get("SIGNIFY_FUZZ_EXAMPLES", 300))
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

SHAPES = [(), (0,), (3, 0), (5,), (2, 3), (1, 1, 1), (4, 2, 2)]
shapes = st.lists(st.sampled_from(SHAPES), min_size=1, max_size=4)
lrs = st.floats(0.0, 1.0)
betas = st.tuples(st.floats(0.0, 0.99), st.floats(0.0, 0.999))
epss = st.one_of(st.just(0.0), st.floats(1e-12, 1e-2))
wds = st.one_of(st.just(0.0), st.floats(0.0, 0.1))
flag = st.booleans()

#: family -> strategy of its hyperparameters (torch's names; a few invalid on purpose, e.g.
#: nesterov with dampening, which torch and signify must both reject).
HYPER = {
    "SGD": st.fixed_dictionaries(
        dict(
            lr=lrs,
            momentum=st.one_of(st.just(0.0), st.floats(0.0, 0.99)),
            dampening=st.one_of(st.just(0.0), st.floats(0.0, 0.5)),
            weight_decay=wds,
            nesterov=flag,
            maximize=flag,
        )
    ),
    "Adam": st.fixed_dictionaries(
        dict(lr=lrs, betas=betas, eps=epss, weight_decay=wds, amsgrad=flag, maximize=flag)
    ),
    "AdamW": st.fixed_dictionaries(
        dict(lr=lrs, betas=betas, eps=epss, weight_decay=st.floats(0.0, 0.5), amsgrad=flag)
    ),
    "Adamax": st.fixed_dictionaries(
        dict(lr=lrs, betas=betas, eps=epss, weight_decay=wds, maximize=flag)
    ),
    "RMSprop": st.fixed_dictionaries(
        # alpha < 1 and eps > 0: centered RMSprop divides by sqrt(v - m^2), 0 for alpha = 0
        dict(
            lr=lrs,
            alpha=st.floats(0.5, 0.999),
            eps=st.floats(1e-10, 1e-2),
            weight_decay=wds,
            momentum=st.one_of(st.just(0.0), st.floats(0.0, 0.9)),
            centered=flag,
            maximize=flag,
        )
    ),
    "Adagrad": st.fixed_dictionaries(
        dict(
            lr=lrs,
            lr_decay=st.one_of(st.just(0.0), st.floats(0.0, 0.1)),
            weight_decay=wds,
            initial_accumulator_value=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
            eps=st.floats(1e-12, 1e-2),
            maximize=flag,
        )
    ),
    "NAdam": st.fixed_dictionaries(
        dict(
            lr=lrs,
            betas=betas,
            eps=epss,
            weight_decay=wds,
            momentum_decay=st.one_of(st.just(0.0), st.floats(0.0, 0.1)),
            decoupled_weight_decay=flag,
            maximize=flag,
        )
    ),
    "RAdam": st.fixed_dictionaries(
        dict(
            lr=lrs,
            betas=betas,
            eps=epss,
            weight_decay=wds,
            decoupled_weight_decay=flag,
            maximize=flag,
        )
    ),
}
FAMILIES = sorted(HYPER)
DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}


@st.composite
def base_config(draw):
    family = draw(st.sampled_from(FAMILIES))
    return family, draw(HYPER[family])


def _groups(params, kw, two):
    if not two or len(params) < 2:
        return [{"params": params}]
    return [{"params": params[:1]}, {"params": params[1:], "lr": kw["lr"] * 0.5}]


def _base_rejects(cls, kw):
    try:
        cls([torch.zeros(1, requires_grad=True)], **kw)
    except (ValueError, TypeError) as e:
        return type(e)
    return None


# ------------------------------------------------------------------ sign=False is the base
@settings(FUZZ, max_examples=EQUAL_EXAMPLES)
@given(
    cfg=base_config(),
    dtype=st.sampled_from(sorted(DTYPES)),
    shape_list=shapes,
    steps=st.integers(1, 6),
    two_groups=flag,
    grad_exp=st.floats(-3.0, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_sign_false_equals_the_base(cfg, dtype, shape_list, steps, two_groups, grad_exp, seed):
    family, kw = cfg
    cls = getattr(torch.optim, family)
    dt = DTYPES[dtype]
    rejected = _base_rejects(cls, kw)
    event(f"{family} {dtype}")
    if rejected is not None:  # signify refuses what torch refuses, with the same type
        event(f"both refuse: {rejected.__name__}")
        with pytest.raises(rejected):
            signify.signify(cls, sign=False)([torch.zeros(1, requires_grad=True)], **kw)
        return
    gen = torch.Generator().manual_seed(seed)
    x0 = [torch.randn(s, generator=gen).to(dt) for s in shape_list]
    # torch runs in the parameter's dtype (fp32 for bf16: the trajectory to stay close to)
    ref_dt = torch.float32 if dt == torch.bfloat16 else dt
    options = {}
    if dt == torch.bfloat16:
        # fp32 state and no L2 decay: the stochastically rounded parameter write is then
        # the only difference (with bf16 state, or a decay that feeds the rounded weights
        # back into the gradient, Adam with eps = 0 amplifies rounding without bound where
        # |g| is tiny: torch's own bf16 run does the same)
        options["state_dtype"] = torch.float32
        kw = {**kw, "weight_decay": 0.0}
    ref_p = [x.to(ref_dt, copy=True).requires_grad_() for x in x0]
    sig_p = [x.clone().requires_grad_() for x in x0]
    ref = cls(_groups(ref_p, kw, two_groups), **kw)
    sig = signify.signify(cls, sign=False, seed=0, **options)(_groups(sig_p, kw, two_groups), **kw)
    mag = [x.abs().to(torch.float64) for x in x0]
    path = [0.0] * len(x0)  # per tensor, the sum over steps of the largest move of the step
    for _ in range(steps):
        before = [a.detach().to(torch.float64, copy=True) for a in ref_p]
        for a, b in zip(ref_p, sig_p):
            g = (torch.randn(a.shape, generator=gen) * 10**grad_exp).to(dt)
            a.grad, b.grad = g.to(ref_dt), g.clone()
        ref.step()
        sig.step()
        for i, (a, m, x) in enumerate(zip(ref_p, mag, before)):
            m.copy_(torch.maximum(m, a.detach().abs().double()))
            if a.numel():
                path[i] += float((a.detach().double() - x).abs().max())
    worst = 0.0
    for i, (x, a, b, m, moved) in enumerate(zip(x0, ref_p, sig_p, mag, path)):
        assert b.dtype == dt and b.shape == x.shape
        assert torch.isfinite(b).all() == torch.isfinite(a).all(), i
        err = (a.detach().double() - b.detach().double()).abs()
        if dt == torch.bfloat16:
            # under one bf16 ulp (<= 2^-7 |x|) per step from the stochastic rounding of the
            # write (a quarter more for the rounded value's own, larger magnitude)
            bound = 1.25 * steps * 2.0**-7 * m
        else:
            # float32 per-step scalars: relative to each step's move (summed: steps that
            # went back and forth err on each), plus the parameter's own rounding per step
            bound = 1e-4 * moved + 8 * steps * torch.finfo(dt).eps * m
        assert (err <= bound).all(), f"{family} {kw} {dtype} tensor {i}: {err.max()}"
        worst = max(worst, (err / bound).nan_to_num(0.0).max().item() if err.numel() else 0.0)
    # how close to the bound it came, for docs/reliability.md (--hypothesis-show-statistics)
    kind = "bf16" if dt == torch.bfloat16 else "fp32/fp64"
    bucket = next(b for b in (0.01, 0.03, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0) if worst <= b)
    event(f"{kind} error/bound <= {bucket}")


# ------------------------------------------------------------------ random chains
stepsizes = st.one_of(
    st.none(),
    st.sampled_from(["alias", "alias-lowmem", "alias-adam", "constant"]),
    st.builds(
        Alias,
        scope=st.sampled_from(["global", "group", "tensor"]),
        gamma_max=st.one_of(st.none(), st.floats(1e-3, 10.0)),
        d_0=st.floats(1e-8, 1.0),
    ),
    st.builds(Alias, f_lower=st.floats(-1.0, 0.0), f0=st.floats(0.0, 10.0)),
    st.builds(AliasLowMem, scope=st.sampled_from(["global", "group", "tensor"])),
    st.builds(
        AliasAdam, beta=st.floats(0.0, 0.999), scope=st.sampled_from(["global", "group", "tensor"])
    ),
)
blockss = st.one_of(
    st.none(),
    st.sampled_from(["depth", "cyclic", "random", "shuffle"]),
    st.builds(
        Blocks,
        st.sampled_from(["depth", "cyclic", "random", "shuffle"]),
        outside=st.sampled_from(["never", "always", "own"]),
        switch_every=st.integers(1, 3),
        inactive=st.sampled_from(["drop", "keep", "offload"]),
    ),
)
options = st.fixed_dictionaries(
    dict(
        sign=flag,
        stochastic=flag,
        seed=st.integers(0, 2**63 - 1),
        blocks=blockss,
        stepsize=stepsizes,
        state_dtype=st.sampled_from([None, torch.float32, torch.bfloat16, torch.float64]),
        nonfinite=st.sampled_from(["skip", "raise", "ignore"]),
        scale_beta=st.floats(1e-3, 1.0),
        flatten=flag,
    )
)
explicit_lists = st.lists(
    st.one_of(
        st.builds(Sign),
        st.builds(StochasticSign),
        st.builds(ExpectedSign),
        st.builds(DecoupledWeightDecay, st.floats(0.0, 0.1)),
        st.builds(Blocks, st.sampled_from(["depth", "cyclic"])),
        st.builds(Alias),
        st.builds(ConstantStepsize),
    ),
    min_size=1,
    max_size=4,
)


def _build(family, kw, opts, explicit, named, two_groups):
    """The optimizer, or the ValueError/TypeError a configuration gets at construction."""
    cls = getattr(torch.optim, family)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if explicit is not None:
                opt_cls = signify.signify(cls, explicit, seed=opts["seed"])
            else:
                opt_cls = signify.signify(cls, **opts)
            return opt_cls(_groups(named, kw, two_groups), **kw)
    except (ValueError, TypeError) as e:
        assert len(str(e)) > 10, repr(e)  # says something
        event(f"refused at construction: {type(e).__name__}: {str(e)[:50]}")
        return None


@settings(FUZZ, max_examples=CHAIN_EXAMPLES)
@given(
    cfg=base_config(),
    opts=options,
    explicit=st.one_of(st.none(), st.none(), st.none(), explicit_lists),
    dtype=st.sampled_from([*sorted(DTYPES), "mixed"]),
    shape_list=shapes,
    steps=st.integers(1, 5),
    two_groups=flag,
    frozen=flag,
    grad_exp=st.lists(st.floats(-30.0, 30.0), min_size=5, max_size=5),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_chains_step_or_refuse_and_stay_finite(
    cfg, opts, explicit, dtype, shape_list, steps, two_groups, frozen, grad_exp, seed
):
    family, kw = cfg
    if _base_rejects(getattr(torch.optim, family), kw) is not None:
        event("base refuses its hyperparameters")
        return  # covered by the test above
    kw = {**kw, "lr": min(kw["lr"], 0.1)}
    if not opts["sign"] and explicit is None:
        grad_exp = [min(max(e, -6.0), 6.0) for e in grad_exp]  # the base's own g^2 stays finite
    gen = torch.Generator().manual_seed(seed)
    dts = list(DTYPES.values())
    named = []
    for i, s in enumerate(shape_list):
        dt = dts[i % 3] if dtype == "mixed" else DTYPES[dtype]
        named.append((f"layers.{i}.weight", torch.randn(s, generator=gen).to(dt).requires_grad_()))
    if frozen:
        named[0][1].requires_grad_(False)
    if explicit is None and opts["stochastic"] and not opts["sign"]:
        with pytest.raises(ValueError, match="stochastic"):  # refused, then fuzzed without
            signify.signify(getattr(torch.optim, family), **opts)
        opts = {**opts, "stochastic": False}
    opt = _build(family, kw, opts, explicit, named, two_groups)
    if opt is None:
        return
    for k in range(steps):
        for i, (_, p) in enumerate(named):
            if not p.requires_grad or (i == 1 and k % 2 == 1):
                p.grad = None
                continue
            scale = 10 ** grad_exp[(k + i) % 5]
            p.grad = (torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale).to(p.dtype)
        opt.step()  # never raises once constructed: grads are finite
    event("stepped")
    for name, p in named:
        assert torch.isfinite(p).all(), (name, family, kw, opts, explicit)
    assert opt.skipped_steps == 0


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_empty_and_0d_parameters_step(nonfinite):
    """An empty parameter next to a 0-d one: the non-finite check leaves it out (torch's
    max-abs norm refuses empty tensors; every step raised before), and an Inf in the other
    parameters is still caught."""
    ps = [torch.randn(0, requires_grad=True), torch.randn((), requires_grad=True), torch.randn(3)]
    ps[2].requires_grad_()
    opt = signify.signify(torch.optim.Adam, stochastic=True, nonfinite=nonfinite)(ps, seed=0)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    before = [p.detach().clone() for p in ps]
    ps[1].grad = torch.tensor(float("inf"))
    if nonfinite == "raise":
        with pytest.raises(FloatingPointError):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, ps))
    ps[0].grad = None
    ps[1].grad = torch.randn(())
    opt.step()  # only the empty one lacks a gradient
    assert not torch.equal(before[1], ps[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoupled_decay_never_takes_a_weight_past_zero(dtype):
    """Found by the chain fuzz: AliasAdam's estimate jumped to 1e21 on a 1e24 gradient, the
    decay factor ``1 - lr * gamma * wd`` became -5e19 and the next step overflowed to -inf.
    Where ``lr * decay > 1`` the decayed weight is 0 (then the sign step), and below that
    the write is ``x - lr * (sign + wd * x)``, unchanged."""
    x = torch.randn(50, dtype=torch.float64)
    g = torch.randn(50, dtype=torch.float64)
    for wd, lr in ((3.0, 0.5), (1.0, 0.5)):
        p = x.to(dtype).clone().requires_grad_()
        opt = signify.signify(torch.optim.SGD, [Sign(), DecoupledWeightDecay(wd)])([p], lr=lr)
        p.grad = g.to(dtype)
        opt.step()
        x32, s = x.to(dtype).float(), torch.sign(g.to(dtype).float())
        want = -lr * s if lr * wd > 1 else x32 - lr * (s + wd * x32)
        if dtype == torch.float32:
            assert torch.equal(p.detach(), want)
        else:  # stochastic rounding: one of the two neighbours
            assert ((p.detach().float() - want).abs() <= want.abs() * 2.0**-7).all()
    gen = torch.Generator().manual_seed(0)
    p = torch.randn((), generator=gen).to(dtype).requires_grad_()
    opt = signify.signify(torch.optim.AdamW, stepsize="alias-adam", seed=0)(
        [p], lr=0.1, betas=(0.0, 0.0), eps=0.0, weight_decay=0.5
    )
    for scale in (1.0, 1e24, 1.0, 1.0):
        p.grad = (torch.randn((), generator=gen, dtype=torch.float64) * scale).to(dtype)
        opt.step()
        assert torch.isfinite(p)
