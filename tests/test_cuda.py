"""The same contracts on CUDA tensors, where the default is the compiled executor with CUDA-graph
replay: ``sign=False`` against torch.optim, the deterministic direction against the float64
reference, exact resume, no host sync in ``step()``, unbiased stochastic sign and rounding.
Skipped without a GPU (CI has none); run on the lent GPU with
``PYTHONPATH=. python -m pytest -q tests/test_cuda.py`` (results in docs/reliability.md)."""

from __future__ import annotations

import io

import pytest
import torch
from adapter_reference import CONFIGS, Reference, config_id

import signify
from signify.transforms import Sign

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEV = "cuda"
# one config per family (the first of each in CONFIGS), compiled: the default on CUDA
FAMILIES = list({name: (name, kw) for name, kw in reversed(CONFIGS)}.values())


def _grads(ps, gen):
    for i, p in enumerate(ps):
        # in place, so the gradients keep their addresses and the CUDA-graph replay runs
        g = torch.randn(p.shape, device=DEV, generator=gen) * (0.1 + i)
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)


@pytest.mark.parametrize("cfg", FAMILIES, ids=config_id)
def test_sign_false_equals_torch_on_cuda(cfg):
    name, kw = cfg
    cls = getattr(torch.optim, name)
    x0 = [torch.randn(s, device=DEV) for s in [(64, 48), (100,), (3, 5, 7)]]
    p_ref = [x.clone().requires_grad_() for x in x0]
    p_sig = [x.clone().requires_grad_() for x in x0]
    ref = cls(p_ref, **kw)
    sig = signify.signify(cls, sign=False)(p_sig, **kw)
    assert sig.compiled
    sched = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + 0.1 * t)) for o in (ref, sig)]
    gen = torch.Generator(device=DEV).manual_seed(int(torch.randint(0, 2**31, ())))
    for step in range(12):
        _grads(p_ref, gen)
        for a, b in zip(p_ref, p_sig):
            if b.grad is None:
                b.grad = a.grad.clone()
            else:
                b.grad.copy_(a.grad)
        ref.step()
        sig.step()
        for s in sched:
            s.step()
        for i, (a, b) in enumerate(zip(p_sig, p_ref)):
            torch.testing.assert_close(
                a.detach(),
                b.detach(),
                rtol=1e-5,
                atol=3e-6,
                msg=lambda m, s=step, i=i: f"{s} {i}: {m}",
            )


@pytest.mark.parametrize("cfg", FAMILIES, ids=config_id)
def test_direction_matches_reference_on_cuda(cfg):
    name, kw = cfg
    lr, n = kw["lr"], 4096
    p = torch.randn(n, device=DEV, requires_grad=True)
    opt = signify.signify(getattr(torch.optim, name), [Sign()])([p], **kw)
    assert opt.compiled
    ref = Reference(name, kw, (n,))
    checked = 0
    for _ in range(10):
        g = torch.randn(n) * torch.exp(torch.randn(n))
        p.grad = g.to(DEV)
        before = p.detach().double().cpu()
        opt.step()
        r = ref.step(g, before)
        expected = before - lr * r.step_scale * (torch.sign(r.a) + r.decay * before)
        keep = r.a.abs() > 1e-4 * r.a.abs().max()  # float32 may flip the sign of a ~ 0 only
        checked += int(keep.sum())
        got = p.detach().double().cpu()
        torch.testing.assert_close(got[keep], expected[keep], rtol=0, atol=3e-7 + 1e-5 * lr)
    assert checked > 0.98 * 10 * n


def _stoadam(ps, seed):
    return signify.signify(torch.optim.Adam, stochastic=True, stepsize="alias")(
        ps, lr=1e-2, weight_decay=0.01, seed=seed
    )


def test_exact_resume_compiled_on_cuda():
    x0 = [torch.randn(s, device=DEV) for s in [(32, 16), (16,)]]

    def run(ps, opt, steps, gen):
        for _ in range(steps):
            _grads(ps, gen)
            opt.step()

    straight = [x.clone().requires_grad_() for x in x0]
    run(straight, _stoadam(straight, 3), 9, torch.Generator(device=DEV).manual_seed(1))
    first = [x.clone().requires_grad_() for x in x0]
    gen = torch.Generator(device=DEV).manual_seed(1)
    opt = _stoadam(first, 3)
    run(first, opt, 4, gen)
    buf = io.BytesIO()
    torch.save({"p": [p.detach() for p in first], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)
    second = [p.clone().requires_grad_() for p in ckpt["p"]]
    opt2 = _stoadam(second, 999)
    opt2.load_state_dict(ckpt["opt"])
    run(second, opt2, 5, gen)
    for a, b in zip(straight, second):
        assert torch.equal(a.detach(), b.detach())


def test_no_host_sync_in_steady_state_steps_on_cuda():
    ps = [torch.randn(256, 64, device=DEV, requires_grad=True) for _ in range(3)]
    opts = [
        signify.signify(torch.optim.Adam, stochastic=True)(ps, lr=1e-3),
        signify.Signum(ps, lr=1e-3),
        signify.signify(torch.optim.SGD, stepsize="alias")(ps, lr=1.0),
        signify.signify(torch.optim.Adam, stochastic=True)(ps, lr=1e-3, flatten=True),
        signify.signify(torch.optim.SGD, stepsize="alias")(ps, lr=1.0, flatten=True),
        signify.signify(torch.optim.Adam, stochastic=True)(ps, lr=1e-3, max_grad_norm=1.0),
        signify.signify(torch.optim.SGD, stepsize="alias")(
            ps, lr=1.0, flatten=True, max_grad_norm=1.0
        ),
    ]
    gen = torch.Generator(device=DEV).manual_seed(0)
    for opt in opts:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t))
        for _ in range(4):  # warm-up: compile and CUDA-graph capture (which syncs once)
            _grads(ps, gen)
            opt.step()
            sched.step()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(5):
                _grads(ps, gen)
                opt.step()
                sched.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("stepsize", [None, "alias"])
def test_flat_compiled_equals_eager_on_cuda(stepsize):
    """flatten=True, compiled with the CUDA-graph replay against eager: the same noise and
    (for ALIAS) the same estimate, to the summation order of its norms (a stochastic sign
    may flip where its argument is within rounding of 0)."""
    shapes = [(256, 64), (64,), (3, 7), (1024,)]
    runs = []
    for compile_ in (False, True):
        gen = torch.Generator(device=DEV).manual_seed(0)
        ps = [torch.randn(s, device=DEV, generator=gen).requires_grad_() for s in shapes]
        opt = signify.signify(torch.optim.Adam, stochastic=True, stepsize=stepsize)(
            ps, lr=1e-2, seed=4, compile=compile_, flatten=True
        )
        for _ in range(6):
            _grads(ps, gen)
            opt.step()
        assert opt._executor._plan.flats
        runs.append(torch.cat([p.detach().reshape(-1) for p in ps]))
    differ = ((runs[0] - runs[1]).abs() > 1e-6).float().mean()
    assert (differ == 0) if stepsize is None else (differ < 1e-3), differ


def test_stochastic_sign_unbiased_on_cuda():
    """Identical history on every coordinate: the mean step is -lr * clip(a / sigma)."""
    n, lr = 2**18, 0.01
    p = torch.zeros(n, device=DEV, requires_grad=True)
    opt = signify.signify(torch.optim.Adam, stochastic=True)([p], lr=lr, seed=5)
    ref = Reference("Adam", dict(lr=lr), (1,))
    for _ in range(6):
        g = float(torch.randn(()))
        p.grad = torch.full((n,), g, device=DEV)
        before = p.detach().clone()
        opt.step()
        r = ref.step(torch.tensor([g]), torch.zeros(1, dtype=torch.float64))
        want = float((r.a / r.sigma).clamp(-1, 1))
        step = (p.detach() - before) / -lr
        se = float(step.std()) / n**0.5 + 1e-12
        assert abs(float(step.mean()) - want) < 5 * se + 1e-6


def test_bf16_stochastic_rounding_unbiased_on_cuda():
    """A sign step of 1/64 of a bf16 ulp moves the mean like fp32 would."""
    n, lr = 2**18, 2**-14
    p = torch.ones(n, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    opt = signify.Signum([p], lr=lr, momentum=0.0, seed=1)
    p.grad = torch.ones(n, device=DEV, dtype=torch.bfloat16)
    for _ in range(8):
        opt.step()
    moved = 1.0 - p.detach().double().mean()
    assert abs(moved - 8 * lr) < 0.05 * 8 * lr


@pytest.mark.parametrize("flatten", [False, True])
def test_clip_inside_equals_clip_grad_norm_on_cuda(flatten):
    """``max_grad_norm`` in the compiled step (CUDA graphs replayed: the gradients are
    refreshed in place) against ``clip_grad_norm_`` then the same compiled step; clipping
    is active (the unclipped run differs). Compiled kernels may contract a multiply-add
    differently, so a rare stochastic sign may flip where its argument is within rounding
    of zero."""
    shapes = [(256, 64), (64,), (3, 7), (1024,)]
    runs = {}
    for mode in ("inside", "outside", "none"):
        gen = torch.Generator(device=DEV).manual_seed(0)
        ps = [torch.randn(s, device=DEV, generator=gen).requires_grad_() for s in shapes]
        extra = {"max_grad_norm": 0.5} if mode == "inside" else {}
        opt = signify.signify(torch.optim.Adam, stochastic=True)(
            ps, lr=1e-2, seed=4, flatten=flatten, **extra
        )
        for _ in range(8):
            _grads(ps, gen)
            if mode == "outside":
                torch.nn.utils.clip_grad_norm_(ps, 0.5)
            opt.step()
        assert bool(opt._executor._plan.flats) == flatten
        runs[mode] = torch.cat([p.detach().reshape(-1) for p in ps])
    differ = ((runs["inside"] - runs["outside"]).abs() > 1e-6).float().mean()
    assert differ < 1e-3, differ
    assert ((runs["inside"] - runs["none"]).abs() > 1e-6).float().mean() > 0.01


def test_compiled_sign_packing_keeps_no_wide_temporary_on_cuda():
    """alias-lowmem packs 8 signs a byte: the compiled step's peak above what it held before
    is the new bits (1/8 B/param), not a promoted int64 sum (1 B/param; measured 1.000 before
    43db342, 0.125 after, bench/pack_memory.py)."""
    n = 2**24
    ps = [torch.randn(n, device=DEV, requires_grad=True) for _ in range(2)]
    opt = signify.signify(torch.optim.SGD, stepsize="alias-lowmem")(ps, lr=1.0)
    assert opt.compiled
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    opt.step()
    torch.cuda.synchronize()
    extra = (torch.cuda.max_memory_allocated() - before) / (2 * n)
    assert extra < 0.5, f"{extra:.3f} B/param above the step's start"
