"""LR schedulers and training-loop utilities on signified optimizers, against torch.optim
itself or float64 formulas written here: every torch scheduler (momentum cycling on Adam and
SGD bases included, tensor lr too), scheduler + optimizer checkpoints, a scheduler after
``add_param_group``, SWALR, step hooks, pickled optimizers and ``stepsizes()`` under a
scheduler. (OneCycleLR momentum cycling of the presets and a compiled step under LambdaLR:
tests/test_conventions.py; compiling here would cost most of this file's time budget.)"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch.optim import lr_scheduler as L
from torch.optim.swa_utils import SWALR

import signify
from signify.transforms.stepsize import ConstantStepsize

SCHEDULERS = {
    "LambdaLR": lambda o: L.LambdaLR(o, lambda s: 0.8**s),
    "StepLR": lambda o: L.StepLR(o, 2, 0.5),
    "MultiStepLR": lambda o: L.MultiStepLR(o, [2, 4], 0.3),
    "ExponentialLR": lambda o: L.ExponentialLR(o, 0.8),
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, 5),
    "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, 3),
    "CyclicLR": lambda o: L.CyclicLR(o, 0.01, 0.1, step_size_up=2),  # cycles beta1 on Adam
    "OneCycleLR": lambda o: L.OneCycleLR(o, 0.1, total_steps=10),
    "PolynomialLR": lambda o: L.PolynomialLR(o, 6, 2.0),
    "LinearLR": lambda o: L.LinearLR(o, 0.1, 1.0, 4),
    "SequentialLR": lambda o: L.SequentialLR(
        o, [L.LinearLR(o, 0.1, 1.0, 3), L.ExponentialLR(o, 0.7)], [3]
    ),
    "ChainedScheduler": lambda o: L.ChainedScheduler(
        [L.ConstantLR(o, 0.3, 3), L.ExponentialLR(o, 0.7)]
    ),
    "ReduceLROnPlateau": lambda o: L.ReduceLROnPlateau(o, patience=0, factor=0.5),
    "SWALR": lambda o: SWALR(o, swa_lr=0.02, anneal_epochs=3),
}


def _sched_step(s, i):  # type: ignore[no-untyped-def]
    if isinstance(s, L.ReduceLROnPlateau):
        s.step(float(i % 3))  # worse every other step: the lr drops
    else:
        s.step()


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_sets_the_sign_step_and_adams_betas(name, tensor_lr):
    """Deterministic sign of Adam: ``x -= lr_t sign(m_t)`` with ``m_t = b1_t m + (1 - b1_t) g``,
    in float64, with the lr and beta1 the scheduler wrote into the group before each step
    (CyclicLR and OneCycleLR cycle ``betas[0]``). The group's values equal those torch's Adam
    gets from the same scheduler."""
    n = 9
    x = torch.randn(n)
    p, q = x.clone().requires_grad_(), x.clone().requires_grad_()
    lr = (lambda: torch.tensor(0.05)) if tensor_lr else (lambda: 0.05)
    opt = signify.signify(torch.optim.Adam)([p], lr=lr())
    ref = torch.optim.Adam([q], lr=lr())
    sched, ref_sched = SCHEDULERS[name](opt), SCHEDULERS[name](ref)
    xr, m = x.double(), torch.zeros(n, dtype=torch.float64)
    moved_lr = set()
    for i in range(8):
        g = torch.randn(n)
        p.grad, q.grad = g.clone(), g.clone()
        group, ref_group = opt.param_groups[0], ref.param_groups[0]
        lr_t, b1 = float(group["lr"]), float(group["betas"][0])
        assert lr_t == float(ref_group["lr"]) and b1 == float(ref_group["betas"][0])
        moved_lr.add(lr_t)
        m = b1 * m + (1 - b1) * g.double()
        xr = xr - lr_t * torch.sign(m)
        opt.step()
        ref.step()
        torch.testing.assert_close(p.detach().double(), xr, rtol=0, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"])
        _sched_step(sched, i)
        _sched_step(ref_sched, i)
    assert len(moved_lr) > 1  # the scheduler did move lr


@pytest.mark.parametrize("base,kw", [(torch.optim.SGD, {"momentum": 0.9}), (torch.optim.NAdam, {})])
@pytest.mark.parametrize("name", ["CyclicLR", "OneCycleLR"])
def test_momentum_cycling_schedulers_match_torch_with_sign_off(base, kw, name):
    """``sign=False`` is the base exactly, also while a scheduler cycles momentum / beta1."""
    x = torch.randn(7)
    p, q = x.clone().requires_grad_(), x.clone().requires_grad_()
    opt = signify.signify(base, sign=False)([p], lr=0.05, **kw)
    ref = base([q], lr=0.05, **kw)
    sched, ref_sched = SCHEDULERS[name](opt), SCHEDULERS[name](ref)
    for _ in range(8):
        g = torch.randn(7)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ resume
def _model():  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))


RESUME = {
    "stochastic-adam-cyclic": (
        lambda ps, lr: signify.signify(torch.optim.Adam, stochastic=True)(ps, lr=lr, seed=3),
        lambda o: L.CyclicLR(o, 1e-3, 1e-2, step_size_up=3),
        1e-2,
    ),
    "alias-onecycle": (
        lambda ps, lr: signify.signify(torch.optim.SGD, stepsize="alias", stochastic=True)(
            ps, lr=lr, momentum=0.9, seed=3
        ),
        lambda o: L.OneCycleLR(o, 1.0, total_steps=20),
        1.0,
    ),
    "blocks-warm-restarts": (
        lambda ps, lr: signify.signify(torch.optim.AdamW, blocks="depth", stochastic=True)(
            ps, lr=lr, seed=3
        ),
        lambda o: L.CosineAnnealingWarmRestarts(o, 3),
        1e-2,
    ),
    "signadamax-plateau": (
        lambda ps, lr: signify.SignAdamax(ps, lr=lr, seed=3),
        lambda o: L.ReduceLROnPlateau(o, patience=0, factor=0.5),
        1e-2,
    ),
}


@pytest.mark.parametrize("tensor_lr", [False, True], ids=["float-lr", "tensor-lr"])
@pytest.mark.parametrize("name", sorted(RESUME))
def test_scheduler_and_optimizer_checkpoint_resume_bit_identically(name, tensor_lr):
    """Save model, optimizer and scheduler mid-run (torch.save), build new ones with other
    settings, load, continue: the same parameters, bit for bit, as the uninterrupted run."""
    make, make_sched, lr0 = RESUME[name]
    xs = torch.randn(10, 8, 4)

    def lr(v):  # type: ignore[no-untyped-def]
        return torch.tensor(v) if tensor_lr else v

    def step(m, o, s, k):  # type: ignore[no-untyped-def]
        o.zero_grad()
        loss = m(xs[k]).square().mean()
        loss.backward()
        o.step()
        _sched_step(s, k)

    m = _model()
    opt = make(m.named_parameters(), lr(lr0))
    sched = make_sched(opt)
    for k in range(4):
        step(m, opt, sched, k)
    buf = io.BytesIO()
    torch.save({"m": m.state_dict(), "o": opt.state_dict(), "s": sched.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    m2 = _model()
    m2.load_state_dict(ck["m"])
    opt2 = make(m2.named_parameters(), lr(0.5))
    sched2 = make_sched(opt2)
    opt2.load_state_dict(ck["o"])
    sched2.load_state_dict(ck["s"])
    for k in range(4, 10):
        step(m, opt, sched, k)
        step(m2, opt2, sched2, k)
        assert float(opt.param_groups[0]["lr"]) == float(opt2.param_groups[0]["lr"])
    for (n, a), b in zip(m.named_parameters(), m2.parameters()):
        assert torch.equal(a, b), n


# --------------------------------------------------------------------------- param groups
@pytest.mark.parametrize("name", ["StepLR", "ExponentialLR", "ReduceLROnPlateau"])
def test_a_group_added_after_the_scheduler_is_scheduled_like_torch(name):
    """torch's schedulers keep the groups they saw at construction (and index new ones by
    position where they read ``initial_lr``): the signified optimizer's lrs follow the same
    path as torch's SGD's, and its parameters move by those lrs."""
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(4, generator=gen), torch.randn(3, generator=gen)
    runs = []
    for make in (signify.signify(torch.optim.SGD, sign=False), torch.optim.SGD):
        p, q = torch.nn.Parameter(x.clone()), torch.nn.Parameter(y.clone())
        opt = make([p], lr=0.05, momentum=0.9)
        sched = SCHEDULERS[name](opt)
        lrs = []
        g = torch.Generator().manual_seed(3)
        for i in range(6):
            if i == 2:
                opt.add_param_group({"params": [q], "lr": 0.03})
            p.grad, q.grad = torch.randn(4, generator=g), torch.randn(3, generator=g)
            opt.step()
            _sched_step(sched, i)
            lrs.append([float(gr["lr"]) for gr in opt.param_groups])
        runs.append((lrs, p.detach().clone(), q.detach().clone()))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1])
    torch.testing.assert_close(runs[0][2], runs[1][2])


# ------------------------------------------------------------------------------- hooks
@pytest.mark.parametrize("preset", ["Signum", "StoSignSGD", "SignAdamax", "made"])
def test_step_hooks_run_once_and_may_replace_the_closure(preset):
    """As torch: global and per-optimizer pre/post hooks run once per step, in order, and a
    pre-hook's returned (args, kwargs) are what the step gets (here a closure's loss)."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    p = torch.nn.Parameter(torch.randn(4))
    if preset == "made":
        opt = signify.signify(torch.optim.Adam, stochastic=True)([p], lr=0.1)
    else:
        opt = getattr(signify, preset)([p], lr=0.1)
    calls: list[str] = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global-pre")),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append("global-post")),
        opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
    ]
    swap = opt.register_step_pre_hook(lambda o, a, k: ((a[0],), {"closure": lambda: 42.0}))
    try:
        p.grad = torch.randn(4)
        before = p.detach().clone()
        assert opt.step() == 42.0
        assert calls == ["global-pre", "pre", "post", "global-post"]
        assert not torch.equal(p.detach(), before)
    finally:
        for h in (*handles, swap):
            h.remove()


def test_a_pickled_block_optimizer_advances_its_clock_on_a_step_without_gradients():
    """The block clock advances on a step in which no parameter had a gradient through a step
    post-hook; torch pickles no hooks, so a copy (``copy.deepcopy``, ``torch.save(opt)``)
    kept the first block forever when that block got no gradient. The copy must step
    exactly as the original."""
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    opt = signify.signify(torch.optim.Adam, blocks="cyclic")(m.named_parameters(), lr=0.1)
    m2, opt2 = pickle.loads(pickle.dumps((m, opt)))
    m3, opt3 = copy.deepcopy((m, opt))
    xs = torch.randn(6, 5, 3)
    for k in range(6):
        for mm, oo in ((m, opt), (m2, opt2), (m3, opt3)):
            oo.zero_grad()
            if k != 1:  # step 1: step() without a backward (no gradients at all)
                mm(xs[k]).square().mean().backward()
            oo.step()
    assert opt2.chain[1].active == opt3.chain[1].active == opt.chain[1].active
    for a, b, c in zip(m.parameters(), m2.parameters(), m3.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)


# ---------------------------------------------------------------------------- stepsizes
@pytest.mark.parametrize("kind", ["plain", "constant-oracle", "tensor-lr"])
def test_stepsizes_report_the_lr_the_last_step_took_under_a_scheduler(kind):
    """``stepsizes()`` is "the step each group took in its last step" (ALIAS's ``gamma * lr``);
    without an oracle, or with the null `ConstantStepsize`, it returned the group's current
    lr, which a scheduler stepped after ``opt.step()`` has already moved on."""
    p, q = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2))
    groups = [{"params": [p]}, {"params": [q], "lr": 0.2}]
    if kind == "constant-oracle":
        opt = signify.signify(torch.optim.SGD, stepsize=ConstantStepsize())(groups, lr=0.1)
    elif kind == "tensor-lr":
        opt = signify.signify(torch.optim.SGD)(groups, lr=torch.tensor(0.1))
    else:
        opt = signify.Signum(groups, lr=0.1)
    sched = L.ExponentialLR(opt, 0.5)
    torch.testing.assert_close(opt.stepsizes(), [torch.tensor(0.1), torch.tensor(0.2)])
    for _ in range(3):
        taken = [float(g["lr"]) for g in opt.param_groups]
        before = [p.detach().clone(), q.detach().clone()]
        p.grad, q.grad = torch.randn(5), torch.randn(2)
        opt.step()
        sched.step()
        got = opt.stepsizes()
        for s, lr_t, x, b in zip(got, taken, (p, q), before):
            assert s.item() == pytest.approx(lr_t)
            # the parameters did move by that lr (a sign step)
            torch.testing.assert_close((x.detach() - b).abs(), torch.full_like(b, lr_t))
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.1 * 0.5**3)
