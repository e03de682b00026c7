"""Non-finite gradients across every combination of transforms, and extreme finite ones.

* ``nonfinite="skip"`` (default): a step whose gradients hold NaN or Inf changes nothing
  (parameters, per-parameter state, noise counter, block clock, stepsize scalars,
  ``requires_grad`` flags), is counted in ``skipped_steps``, and the run then continues
  exactly as if the bad step had never been taken.
* ``nonfinite="raise"`` raises ``FloatingPointError`` and also changes nothing.
* Finite gradients, however extreme (1e-45 to 3e38, bf16 and fp64 too), never make the
  optimizer produce a non-finite parameter, with ``eps=0`` and large step sizes.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import signify
from signify.transforms import Blocks


class Stack(nn.Module):
    def __init__(self, dtype=torch.float32, seed=0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList(nn.Linear(4, 4, dtype=dtype) for _ in range(3))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x.square().mean()


class OwnAdadelta(torch.optim.Adadelta):
    """No hand-written adapter: the traced path."""


class HostReader(torch.optim.Optimizer):
    """Reads a value on the host in its step: not traceable, the run-and-read path."""

    def __init__(self, params, lr=1e-2):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.abs().max().item() >= 0:
                    p.add_(p.grad, alpha=-group["lr"])


def _blocks(rule="depth"):
    return Blocks(rule, switch_every=2)


#: name -> (optimizer factory over named parameters, keywords)
CHAINS = {
    "sign_adam": (lambda: signify.signify(torch.optim.Adam), {"lr": 1e-2}),
    "stochastic_adamw": (
        lambda: signify.signify(torch.optim.AdamW, stochastic=True),
        {"lr": 1e-2, "weight_decay": 0.1},
    ),
    "stochastic_sgd": (
        lambda: signify.signify(torch.optim.SGD, stochastic=True),
        {"lr": 1e-2, "momentum": 0.9},
    ),
    "bf16_state": (
        lambda: signify.signify(torch.optim.Adam, stochastic=True, state_dtype=torch.bfloat16),
        {"lr": 1e-2},
    ),
    "blocks": (lambda: signify.signify(torch.optim.Adam, blocks=_blocks()), {"lr": 1e-2}),
    "alias": (lambda: signify.signify(torch.optim.SGD, stepsize="alias"), {"momentum": 0.9}),
    "alias_lowmem": (lambda: signify.signify(torch.optim.SGD, stepsize="alias-lowmem"), {}),
    "alias_adam": (lambda: signify.signify(torch.optim.Adam, stepsize="alias-adam"), {}),
    "everything": (
        lambda: signify.signify(
            torch.optim.AdamW, stochastic=True, blocks=_blocks(), stepsize="alias"
        ),
        {"weight_decay": 0.01},
    ),
    "everything_random": (
        lambda: signify.signify(
            torch.optim.SGD, stochastic=True, blocks=_blocks("random"), stepsize="alias-lowmem"
        ),
        {"momentum": 0.9},
    ),
    "sign_false": (lambda: signify.signify(torch.optim.Adam, sign=False), {"lr": 1e-2}),
    "traced": (lambda: signify.signify(OwnAdadelta, stochastic=True), {"lr": 0.5}),
    "generic": (lambda: signify.signify(HostReader, stochastic=True), {"lr": 1e-2}),
    "stosignsgd": (lambda: signify.StoSignSGD, {"lr": 1e-2, "weight_decay": 0.1}),
    "signum": (lambda: signify.Signum, {"lr": 1e-2}),
    "signadamax": (lambda: signify.SignAdamax, {"lr": 1e-2}),
}


def build(name, model, **options):
    make, kw = CHAINS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the run-and-read path warns
        return make()(model.named_parameters(), **kw, seed=3, **options)


def grads(model, k, bad=None):
    """Gradients of step ``k`` (a seeded batch); ``bad`` is put into one entry of every
    gradient that exists (with blocks, those of the active block)."""
    gen = torch.Generator().manual_seed(k)
    x = torch.randn(5, 4, generator=gen, dtype=model.layers[0].weight.dtype)
    for p in model.parameters():
        p.grad = None
    model(x).backward()
    if bad is not None:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.view(-1)[k % p.numel()] = bad


def snapshot(model, opt):
    blocks = next((t for t in opt.chain if isinstance(t, Blocks)), None)
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "flags": [p.requires_grad for p in model.parameters()],
        "state": {
            (i, k): v.clone() if isinstance(v, torch.Tensor) else v
            for i, p in enumerate(model.parameters())
            for k, v in opt.state.get(p, {}).items()
        },
        # (a stepsize's acc_* are scratch: zeroed at the start of every step)
        "shared": {
            (n, k): v.clone()
            for n, d in opt._shared.items()
            if n != "nonfinite"
            for k, v in d.items()
            if isinstance(v, torch.Tensor) and not k.startswith("acc_")
        },
        "clock": None if blocks is None else (blocks.active, blocks.extra_state()),
    }


def same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    assert a["flags"] == b["flags"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert a["shared"].keys() == b["shared"].keys()
    for k in a["shared"]:
        assert torch.equal(a["shared"][k], b["shared"][k]), k
    assert a["clock"] == b["clock"]


def step_both(model, opt, twin, ref, ks):
    """The same gradients of steps ``ks`` into both runs."""
    for k in ks:
        grads(model, k)
        opt.step()
        grads(twin, k)
        ref.step()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_skipped_step_changes_nothing_and_the_run_continues_exactly(name, bad):
    model, twin = Stack(), Stack()
    opt, ref = build(name, model), build(name, twin)
    step_both(model, opt, twin, ref, range(3))
    before = snapshot(model, opt)
    grads(model, 3, bad)
    opt.step()
    same(before, snapshot(model, opt))
    assert opt.skipped_steps == 1 and ref.skipped_steps == 0
    step_both(model, opt, twin, ref, range(4, 8))  # the twin never saw the bad step
    same(snapshot(twin, ref), snapshot(model, opt))


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_raise_changes_nothing(name):
    model, twin = Stack(), Stack()
    opt = build(name, model, nonfinite="raise")
    ref = build(name, twin, nonfinite="raise")
    step_both(model, opt, twin, ref, range(2))
    before = snapshot(model, opt)
    grads(model, 2, math.nan)
    with pytest.raises(FloatingPointError, match="non-finite"):
        opt.step()
    same(before, snapshot(model, opt))
    step_both(model, opt, twin, ref, range(3, 6))
    same(snapshot(twin, ref), snapshot(model, opt))


def test_blocks_clock_stands_still_on_skipped_steps_only():
    """The schedule advances on applied steps and on steps that had no gradient at all, and
    not on skipped ones; with nonfinite='ignore' nothing is checked and it advances."""
    model = Stack()
    opt = build("blocks", model)
    blocks = next(t for t in opt.chain if isinstance(t, Blocks))
    seen = []
    for k in range(6):
        grads(model, k, math.nan if k in (2, 3) else None)
        opt.step()
        seen.append(blocks.extra_state())
    assert seen[1] == seen[2] == seen[3] != seen[4]
    assert [s["held"] for s in seen] == [1, 0, 0, 0, 1, 0]  # switch_every=2
    model = Stack()
    opt = build("blocks", model, nonfinite="ignore")
    blocks = next(t for t in opt.chain if isinstance(t, Blocks))
    states = []
    for k in range(3):
        grads(model, k, math.nan if k == 1 else None)
        opt.step()
        states.append(blocks.extra_state())
    assert states[0] != states[1] != states[2]


# ---------------------------------------------------------------- extreme finite gradients
FINITE_CHAINS = [
    *sorted(set(CHAINS) - {"sign_false", "generic"}),
    "expected_sign",
    "stochastic_rmsprop",
    "stochastic_adagrad",
]
CHAINS["expected_sign"] = (
    lambda: signify.signify(torch.optim.Adam, [signify.transforms.ExpectedSign()]),
    {"lr": 1e-2},
)
CHAINS["stochastic_rmsprop"] = (
    lambda: signify.signify(torch.optim.RMSprop, stochastic=True),
    {"lr": 1e-2, "centered": True, "momentum": 0.5},
)
CHAINS["stochastic_adagrad"] = (
    lambda: signify.signify(torch.optim.Adagrad, stochastic=True),
    {"lr": 1e-2},
)
FUZZ_CASES: list[int] = []


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(FINITE_CHAINS),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
    exponents=st.lists(st.floats(-45, 38.5), min_size=4, max_size=4),
    lr=st.sampled_from([0.0, 1e-8, 1e-2, 1.0, 100.0]),
    eps_zero=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_extreme_finite_gradients_never_make_parameters_non_finite(
    name, dtype, exponents, lr, eps_zero, seed
):
    FUZZ_CASES.append(1)
    model = Stack(dtype=torch.float64 if dtype == torch.float64 else torch.float32, seed=seed)
    model.to(dtype)
    make, kw = CHAINS[name]
    kw = dict(kw)
    if "lr" in kw or name.startswith("alias") or name == "everything":
        kw["lr"] = lr
    if eps_zero and name in ("sign_adam", "stochastic_adamw", "bf16_state", "expected_sign"):
        kw["eps"] = 0.0
    opt = make()(model.named_parameters(), **kw, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    finfo = torch.finfo(dtype)
    for e in exponents:
        for p in model.parameters():
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 10.0**e
            p.grad = g.clamp(-finfo.max, finfo.max).to(dtype)
            p.grad[0] = 0.0  # exact zeros too (0 / 0 in a ratio)
        opt.step()
        for p in model.parameters():
            assert torch.isfinite(p).all(), (name, e)
    assert opt.skipped_steps == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("name", FINITE_CHAINS)
def test_largest_finite_gradients(name, dtype):
    """Gradients at the largest finite value, constant, alternating in sign (the base's
    moment overflows to inf, then inf - inf), or then zero: no step is skipped (they are
    finite) and no parameter becomes non-finite."""
    big = torch.finfo(dtype).max
    patterns = {
        "constant": lambda k, n: torch.full((n,), big, dtype=dtype),
        "alternating": lambda k, n: torch.full((n,), big * (-1) ** k, dtype=dtype),
        "then_zero": lambda k, n: torch.full((n,), big if k < 2 else 0.0, dtype=dtype),
    }
    make, kw = CHAINS[name]
    for pattern in patterns.values():
        model = Stack(dtype=torch.float64 if dtype == torch.float64 else torch.float32).to(dtype)
        opt = make()(model.named_parameters(), **kw, seed=1)
        for k in range(5):
            for p in model.parameters():
                p.grad = pattern(k, p.numel()).view_as(p)
            opt.step()
        assert all(torch.isfinite(p).all() for p in model.parameters()), pattern
        assert opt.skipped_steps == 0


def test_large_finite_fp16_gradient_is_not_skipped():
    """The default check reads max |g| per tensor: an L1 norm of 200k fp16 entries of 0.5
    overflows fp16 (65504) and skipped every step of a finite gradient."""
    p = nn.Parameter(torch.zeros(200_000, dtype=torch.float16))
    opt = signify.signify(torch.optim.SGD)([p], lr=2.0**-4)
    p.grad = torch.full_like(p, 0.5)
    opt.step()
    assert opt.skipped_steps == 0 and torch.equal(p.detach(), torch.full_like(p, -(2.0**-4)))
    p.grad[7] = math.inf
    opt.step()
    assert opt.skipped_steps == 1


def test_compiled_alias_skip_changes_nothing(name="alias"):
    """Compiled, a skipped step keeps ALIAS's previous gradient, a buffer the update pass
    otherwise only writes (a cheaper keep that skips reading it was tried and measured
    slower, docs/stepsize.md); the 4 x 4 weights run in the rows lane, the biases in the
    flat one, one tensor a chunk (three chunks a lane share each lane's graphs: chunks of 2
    and 1 would compile twice as many). The compiled run then continues like an eager twin
    that never saw the bad step."""
    model, twin = Stack(), Stack()
    opt = build(name, model, compile=True, compile_chunk=1)
    ref = build(name, twin)  # eager: the plain where
    assert opt.compiled and not ref.compiled
    step_both(model, opt, twin, ref, range(3))
    before = snapshot(model, opt)
    grads(model, 3, math.nan)
    opt.step()
    same(before, snapshot(model, opt))
    step_both(model, opt, twin, ref, range(4, 7))
    a, b = snapshot(twin, ref), snapshot(model, opt)
    for x, y in zip(a["params"], b["params"]):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k], b["state"][k], rtol=1e-6, atol=1e-7)
