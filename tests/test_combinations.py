"""Option interactions: combinations of options that each work alone, checked together.

Researchers toggle one option and compare, so every pair of options must keep the
guarantees each one gives alone. Sampled with a fixed seed (not the full product) over the
bases SGD (momentum), Adam, AdamW (amsgrad), RMSprop (centered, momentum), Adamax, NAdam,
RAdam and Adagrad:

* exact resume through ``torch.save`` / ``torch.load`` for pairs of options, with a skipped
  non-finite step before or after the save, and across ``flatten`` toggled at load time
  (deterministic chains: flat steps equal per-tensor steps bit for bit, docs/performance.md);
* toggles that must change nothing: every block active is no blocks, the non-finite policy
  on finite gradients, a clip threshold no gradient reaches, the seed of a deterministic chain;
* ``add_param_group`` mid-run under each option: per-tensor chains step the new group as a
  fresh optimizer of its own would, and a checkpoint taken afterwards resumes exactly;
* a non-finite gradient under combinations the other files do not cover (flat buckets with
  clipping, bf16 parameters, kept / offloaded block state): nothing that existed changes, the
  step is counted, and the run continues as if the bad step had never been taken;
* ``state_dtype`` changed at load time: the loaded state is re-cast;
* Signum against a float64 reference under each runtime option.

Eager only: compiled steps equal eager ones in tests/test_flat.py, test_clip.py,
test_nonfinite.py and test_reliability_resume.py (a compiled case here cost 15 s of the
suite's 10 minutes).
"""

from __future__ import annotations

import io
import itertools
import random
import warnings

import pytest
import torch

import signify
from signify.transforms import Blocks
from signify.transforms.stepsize_alias import Alias

BASES = {
    "sgdm": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9, "weight_decay": 0.01}),
    "adam": (torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.01}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.05, "amsgrad": True}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 1e-2, "momentum": 0.5, "centered": True}),
    "adamax": (torch.optim.Adamax, {"lr": 1e-2}),
    "nadam": (torch.optim.NAdam, {"lr": 1e-2}),
    "radam": (torch.optim.RAdam, {"lr": 1e-2}),
    "adagrad": (torch.optim.Adagrad, {"lr": 1e-2, "lr_decay": 0.01}),
}
#: an input side, two numbered layers (the blocks) and a head
SHAPES = [
    ("embed.weight", (4, 3)),
    ("layers.0.weight", (4, 4)),
    ("layers.0.bias", (4,)),
    ("layers.1.weight", (4, 4)),
    ("layers.1.bias", (4,)),
    ("head.weight", (2, 4)),
]

#: option sets; factories, as transforms bind to one optimizer
OPTIONS = {
    "stochastic": lambda: {"stochastic": True},
    "blocks_depth": lambda: {"blocks": "depth"},
    "blocks_random_keep": lambda: {"blocks": Blocks("random", inactive="keep")},
    "blocks_own_offload": lambda: {"blocks": Blocks("depth", inactive="offload", outside="own")},
    "alias": lambda: {"stepsize": "alias"},
    "alias_lowmem": lambda: {"stepsize": "alias-lowmem"},
    "alias_group": lambda: {"stepsize": Alias(scope="group")},
    "flatten": lambda: {"flatten": True},
    "bf16_state": lambda: {"state_dtype": torch.bfloat16},
    "clip": lambda: {"max_grad_norm": 0.5},
    "ignore": lambda: {"nonfinite": "ignore"},
}
#: combinations documented as refused (docs/performance.md: flat buckets stay per tensor for
#: chains that look across tensors, and say so with a ValueError)
FLAT_REFUSES = {"blocks_depth", "blocks_random_keep", "blocks_own_offload", "alias_lowmem"}


def named_params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(n, torch.randn(s, generator=gen).to(dtype).requires_grad_()) for n, s in SHAPES]


def build(base, named, options, two_groups=False, **runtime):
    cls, kw = BASES[base]
    params = named
    if two_groups:  # a second group with its own lr
        params = [{"params": named[:3]}, {"params": named[3:], "lr": kw["lr"] * 0.5}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # blocks that drop state next to a stepsize warn
        return signify.signify(cls, **options)(params, **kw, **runtime)


def set_grads(named, k, bad=None):
    """Gradients of step ``k`` (seeded, float64 drawn); ``bad`` goes into the last one."""
    gen = torch.Generator().manual_seed(1000 + k)
    have = []
    for _, p in named:
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        p.grad = g if p.requires_grad else None
        if p.requires_grad:
            have.append(p)
    if bad is not None:
        have[-1].grad.view(-1)[-1] = bad


def train(opt, named, steps, bad_step=None):
    for k in steps:
        set_grads(named, k, float("nan") if k == bad_step else None)
        opt.step()


def values(named):
    return [p.detach().clone() for _, p in named]


def assert_identical(a, b, what=""):
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and torch.equal(x, y), (what, i, (x - y).abs().max())


def checkpoint_roundtrip(named, opt):
    buf = io.BytesIO()
    torch.save({"params": values(named), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def fresh_from(ckpt, named_like):
    fresh = named_params(dtype=named_like[0][1].dtype, seed=123)  # other values: loaded over
    for (_, p), v, (_, q) in zip(fresh, ckpt["params"], named_like):
        p.data.copy_(v)
        p.requires_grad_(q.requires_grad)
    return fresh


# ------------------------------------------------------------------ resume over pairs
def _pair_cases():
    rng = random.Random(20261207)
    pairs = list(itertools.combinations(sorted(OPTIONS), 2))
    pairs = [
        p
        for p in pairs
        if not ("flatten" in p and FLAT_REFUSES & set(p))
        and not OPTIONS[p[0]]().keys() & OPTIONS[p[1]]().keys()  # two of one option
    ]
    rng.shuffle(pairs)
    bases = sorted(BASES)
    cases = []
    for i, pair in enumerate(pairs[:24]):
        base = bases[i % len(bases)]
        stop = rng.randint(1, 5)
        bad = rng.choice([None, 0, 2, 4])
        if "ignore" in pair:
            bad = None  # unchecked: a NaN would be stepped (documented)
        cases.append(pytest.param(base, pair, stop, bad, id=f"{base}-{'+'.join(pair)}"))
    return cases


@pytest.mark.parametrize(("base", "pair", "stop", "bad"), _pair_cases())
def test_pairs_of_options_resume_bit_for_bit(base, pair, stop, bad):
    total = 6

    def options():
        out = {}
        for name in pair:
            out.update(OPTIONS[name]())
        return out

    named = named_params()
    straight = build(base, named, options(), two_groups=True, seed=3)
    train(straight, named, range(total), bad)

    first = named_params()
    opt = build(base, first, options(), two_groups=True, seed=3)
    train(opt, first, range(stop), bad)
    ckpt = checkpoint_roundtrip(first, opt)
    resumed = fresh_from(ckpt, first)
    opt2 = build(base, resumed, options(), two_groups=True, seed=999)  # the checkpoint's wins
    opt2.load_state_dict(ckpt["opt"])
    train(opt2, resumed, range(stop, total), bad)
    assert_identical(values(named), values(resumed), pair)
    assert opt2.skipped_steps == straight.skipped_steps == (bad is not None)


def test_flatten_refusals_are_the_documented_ones():
    for name in sorted(FLAT_REFUSES):
        with pytest.raises(ValueError):
            build("adam", named_params(), {**OPTIONS[name](), "flatten": True})


# a per-tensor ALIAS checkpoint holds per-tensor moves (alias.dx) that differ under decoupled
# decay: the flat bucket holds their maximum (all the step reads) and steps flat, no warning
@pytest.mark.filterwarnings("error:signify. flatten=True, but the bucket")
@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("extra", ["none", "alias", "clip", "bf16_state"])
def test_deterministic_resume_across_flatten_toggle(base, extra):
    """A deterministic chain's checkpoint loads into the other layout and continues bit for
    bit, both ways (flat steps equal per-tensor steps for deterministic chains)."""
    opts = OPTIONS[extra]() if extra != "none" else {}
    for src, dst in ((True, False), (False, True)):
        named = named_params()
        straight = build(base, named, {**opts, "flatten": src}, two_groups=True)
        train(straight, named, range(5))
        first = named_params()
        opt = build(base, first, {**opts, "flatten": src}, two_groups=True)
        train(opt, first, range(2))
        ckpt = checkpoint_roundtrip(first, opt)
        resumed = fresh_from(ckpt, first)
        opt2 = build(base, resumed, {**opts, "flatten": dst}, two_groups=True)
        opt2.load_state_dict(ckpt["opt"])
        train(opt2, resumed, range(2, 5))
        assert_identical(values(named), values(resumed), (src, dst))


# ------------------------------------------------------------------ toggles that change nothing
def _all_blocks():
    return Blocks(lambda k, n: list(range(n)), outside="always")


TOGGLE_EXTRAS = {
    "none": dict,
    "stochastic": lambda: {"stochastic": True},
    "alias": lambda: {"stepsize": "alias"},
    "alias_lowmem": lambda: {"stepsize": "alias-lowmem"},
    "bf16_state": lambda: {"state_dtype": torch.bfloat16},
    "clip": lambda: {"max_grad_norm": 0.3},
}


def _run(base, options, dtype=torch.float32, steps=5):
    named = named_params(dtype)
    opt = build(base, named, options, two_groups=True)
    train(opt, named, range(steps))
    return values(named)


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("extra", sorted(TOGGLE_EXTRAS))
def test_toggles_that_must_change_nothing(base, extra):
    # bf16 parameters for two bases: their writes round stochastically, from the seed
    dtype = torch.bfloat16 if base in ("adam", "sgdm") else torch.float32
    opts = {**TOGGLE_EXTRAS[extra](), "seed": 1}
    ref = _run(base, opts, dtype)
    # every block active at every step is no blocks
    assert_identical(ref, _run(base, {**opts, "blocks": _all_blocks()}, dtype), "all blocks")
    # the non-finite policy does nothing on finite gradients
    for policy in ("raise", "ignore"):
        assert_identical(ref, _run(base, {**opts, "nonfinite": policy}, dtype), policy)
    # a clip threshold no gradient norm reaches: coefficient exactly 1
    if "max_grad_norm" not in opts:
        assert_identical(ref, _run(base, {**opts, "max_grad_norm": 1e30}, dtype), "clip")
    # the seed only feeds the noise: a deterministic chain in fp32 ignores it
    if extra not in ("stochastic", "bf16_state") and dtype == torch.float32:
        assert_identical(ref, _run(base, {**opts, "seed": 2}), "seed")
    if extra == "stochastic":  # and the noise does depend on it (after RAdam's first 5
        # steps, un-rectified: a deterministic sign, docs/adapters.md)
        a, b = _run(base, opts, dtype, steps=8), _run(base, {**opts, "seed": 2}, dtype, steps=8)
        assert any(not torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ add_param_group
ADD_GROUP = {
    "none": dict,
    "flatten": lambda: {"flatten": True},
    "bf16_state": lambda: {"state_dtype": torch.bfloat16},
    "alias_tensor": lambda: {"stepsize": Alias(scope="tensor")},
    "alias_group": lambda: {"stepsize": Alias(scope="group")},
    "raise": lambda: {"nonfinite": "raise"},
    # coupled across groups: only the resume is checked
    "stochastic_flat": lambda: {"stochastic": True, "flatten": True},
    "blocks_keep": lambda: {"blocks": Blocks("cyclic", inactive="keep", outside="own")},
    "alias": lambda: {"stepsize": "alias"},
    "clip": lambda: {"max_grad_norm": 0.5},
}
PER_TENSOR = {"none", "flatten", "bf16_state", "alias_tensor", "alias_group", "raise"}


@pytest.mark.parametrize("option", sorted(ADD_GROUP))
def test_add_param_group_mid_run(option):
    rng = random.Random(option)
    base = rng.choice(sorted(BASES))
    kw = BASES[base][1]
    lr = kw["lr"] * 0.5
    named = named_params()
    opt = build(base, named[:3], ADD_GROUP[option](), seed=5)
    train(opt, named[:3], range(3))
    opt.add_param_group({"params": named[3:], "lr": lr})
    train(opt, named, range(3, 6))
    got = values(named)
    assert all(torch.isfinite(x).all() for x in got)

    if option in PER_TENSOR:
        # per-tensor chains: the first group as if alone, the new one as a fresh optimizer
        ref = named_params()
        first = build(base, ref[:3], ADD_GROUP[option](), seed=5)
        train(first, ref[:3], range(3))
        second = build(base, ref[3:], ADD_GROUP[option](), seed=5)
        for g in second.param_groups:
            g["lr"] = lr
        for k in range(3, 6):
            set_grads(ref, k)  # the same gradient stream as the run above
            first.step()
            second.step()
        assert_identical(values(ref), got, option)

    # a checkpoint taken after the addition resumes exactly in an optimizer built the same way
    ckpt = checkpoint_roundtrip(named, opt)
    train(opt, named, range(6, 9))
    resumed = fresh_from(ckpt, named)
    opt2 = build(base, resumed[:3], ADD_GROUP[option](), seed=77)
    opt2.add_param_group({"params": resumed[3:], "lr": lr})
    opt2.load_state_dict(ckpt["opt"])
    train(opt2, resumed, range(6, 9))
    assert_identical(values(named), values(resumed), option)


# ------------------------------------------------------------------ non-finite steps
NONFINITE = {
    "flat_clip": lambda: {"flatten": True, "max_grad_norm": 0.5},
    "flat_stochastic_bf16_state": lambda: {
        "flatten": True,
        "stochastic": True,
        "state_dtype": torch.bfloat16,
    },
    "flat_alias": lambda: {"flatten": True, "stepsize": "alias"},
    "clip_alias_adam": lambda: {"max_grad_norm": 1.0, "stepsize": "alias-adam"},
    "blocks_keep": lambda: {"blocks": Blocks("depth", inactive="keep", switch_every=2)},
    "blocks_offload_own": lambda: {"blocks": Blocks("random", inactive="offload", outside="own")},
    "blocks_clip": lambda: {"blocks": "depth", "max_grad_norm": 1.0},
    "blocks_lowmem_stochastic": lambda: {
        "blocks": Blocks("cyclic", inactive="keep"),
        "stepsize": "alias-lowmem",
        "stochastic": True,
    },
}


def _everything(opt, named):
    state = {
        (i, k): v.clone()
        for i, (_, p) in enumerate(named)
        for k, v in opt.state.get(p, {}).items()
        if isinstance(v, torch.Tensor)
    }
    shared = {
        (n, k): v.clone()
        for n, d in opt._shared.items()
        if n != "nonfinite"
        for k, v in d.items()
        if isinstance(v, torch.Tensor) and not k.startswith("acc_")  # per-step scratch
    }
    return values(named), [p.requires_grad for _, p in named], state, shared


def _nonfinite_cases():
    rng = random.Random(7)
    cases = []
    for name in sorted(NONFINITE):
        for dtype in ("fp32", "bf16"):
            base = rng.choice(sorted(BASES))
            bad = rng.choice([float("nan"), float("inf"), -float("inf")])
            cases.append(pytest.param(name, dtype, base, bad, id=f"{name}-{dtype}-{base}-{bad}"))
    return cases


@pytest.mark.parametrize(("name", "dtype", "base", "bad"), _nonfinite_cases())
def test_nonfinite_step_under_combinations(name, dtype, base, bad):
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    named, twin = named_params(dt), named_params(dt)
    opt = build(base, named, NONFINITE[name](), two_groups=True, seed=3)
    ref = build(base, twin, NONFINITE[name](), two_groups=True, seed=3)
    train(opt, named, range(3))
    train(ref, twin, range(3))
    params, flags, state, shared = _everything(opt, named)
    set_grads(named, 3, bad)
    opt.step()
    params2, flags2, state2, shared2 = _everything(opt, named)
    assert opt.skipped_steps == 1
    assert_identical(params, params2, "params")
    assert flags == flags2
    # state a parameter already had is untouched (a parameter stepping for the first time
    # may get its initial state allocated: zeros, as the twin allocates them later)
    for k, v in state.items():
        assert torch.equal(v, state2[k].to(v.device)), k
    assert shared.keys() == shared2.keys()
    for k, v in shared.items():
        assert torch.equal(v, shared2[k]), k
    # and the run goes on as if the bad step had never been taken
    train(opt, named, range(4, 7))
    train(ref, twin, range(4, 7))
    a, fa, sa, ha = _everything(opt, named)
    b, fb, sb, hb = _everything(ref, twin)
    assert_identical(a, b, "continued")
    assert fa == fb and sa.keys() == sb.keys() and ha.keys() == hb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for k in ha:
        assert torch.equal(ha[k], hb[k]), k


# ------------------------------------------------------------------ state_dtype at load
@pytest.mark.parametrize("flatten", [False, True])
def test_state_dtype_changed_at_load_recasts_the_state(flatten):
    rng = random.Random(11)
    changes = ((None, torch.bfloat16), (torch.bfloat16, None), (torch.bfloat16, torch.float64))
    for src, dst in changes:
        base = rng.choice(sorted(BASES))
        named = named_params()
        opt = build(base, named, {"state_dtype": src, "flatten": flatten}, seed=1)
        train(opt, named, range(3))
        ckpt = checkpoint_roundtrip(named, opt)
        resumed = fresh_from(ckpt, named)
        opt2 = build(base, resumed, {"state_dtype": dst, "flatten": flatten}, seed=1)
        opt2.load_state_dict(ckpt["opt"])
        want = dst or torch.float32
        for when in ("loaded", "stepped"):
            for p in opt2.state:
                for k, v in opt2.state[p].items():
                    if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0:
                        assert v.dtype == want, (base, src, dst, when, k)
            train(opt2, resumed, range(3, 4))


# ------------------------------------------------------------------ float64 reference
def _signum_reference(x0, grads, lr, beta, wd):
    """m_1 = g_1, m = beta m + (1 - beta) g, x -= lr (sign(m) + wd x), in float64."""
    xs = [x.double().clone() for x in x0]
    ms: list = [None] * len(xs)
    for gs in grads:
        for i, g in enumerate(gs):
            g = g.double()
            ms[i] = g.clone() if ms[i] is None else beta * ms[i] + (1 - beta) * g
            xs[i] = xs[i] - lr * (torch.sign(ms[i]) + wd * xs[i])
    return xs


@pytest.mark.parametrize(
    "runtime",
    [
        {"flatten": True},
        {"state_dtype": torch.float64},
        {"max_grad_norm": 1e30, "flatten": True},
        {"nonfinite": "raise", "state_dtype": torch.float64, "flatten": True},
    ],
    ids=["flatten", "fp64_state", "clip_unreached_flat", "raise_fp64_flat"],
)
def test_signum_runtime_options_follow_the_float64_reference(runtime):
    gen = torch.Generator().manual_seed(3)
    x0 = [torch.randn(s, generator=gen) for _, s in SHAPES]
    grads = [[torch.randn(s, generator=gen) for _, s in SHAPES] for _ in range(6)]
    ps = [x.clone().requires_grad_() for x in x0]
    opt = signify.Signum(
        [{"params": ps[:3]}, {"params": ps[3:], "weight_decay": 0.0, "momentum": 0.5}],
        lr=0.01,
        momentum=0.9,
        weight_decay=0.1,
        seed=0,
        **runtime,
    )
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    want = _signum_reference(x0[:3], [g[:3] for g in grads], 0.01, 0.9, 0.1)
    want += _signum_reference(x0[3:], [g[3:] for g in grads], 0.01, 0.5, 0.0)
    for p, w in zip(ps, want):
        # float32 parameter arithmetic: a few ulps of |x| per step
        torch.testing.assert_close(p.detach().double(), w, rtol=0, atol=1e-6)
