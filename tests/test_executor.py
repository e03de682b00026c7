"""The executor's layouts and planning: every layout and check gives the same numbers."""

from __future__ import annotations

import pytest
import torch

import signify
from signify.executor import powers_of_two


def _params(channels_last: bool = False):
    gen = torch.Generator().manual_seed(0)
    conv = torch.randn(8, 3, 3, 3, generator=gen)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
    shapes = [(16, 8), (5,), (3, 7), (32,)]  # multiples of 16 and not: both lanes
    ps = [torch.randn(s, generator=gen) for s in shapes] + [conv]
    return [torch.nn.Parameter(p) for p in ps]


def _run(monkeypatch, layout, check="foreach", channels_last=False, steps=4, stochastic=True):
    monkeypatch.setenv("SIGNIFY_LAYOUT", layout)
    monkeypatch.setenv("SIGNIFY_FINITE_CHECK", check)
    ps = _params(channels_last)
    groups = [{"params": ps[:3]}, {"params": ps[3:], "weight_decay": 0.1}]
    opt = signify.signify(torch.optim.AdamW, stochastic=stochastic)(groups, lr=0.01, seed=2)
    gen = torch.Generator().manual_seed(1)
    for s in range(steps):
        for p in ps:
            g = torch.randn(p.shape, generator=gen)
            if s == 2 and p is ps[1]:
                g[0] = float("inf")  # a skipped step
            p.grad = g  # contiguous even for a channels_last weight: read through a copy
        opt.step()
    return [p.detach().clone() for p in ps], opt


@pytest.mark.parametrize(
    "layout,check", [("rows", "foreach"), ("flat", "graph"), ("rows", "graph")]
)
def test_layouts_and_checks_agree(monkeypatch, layout, check):
    ref, ref_opt = _run(monkeypatch, "flat", "foreach")
    got, opt = _run(monkeypatch, layout, check)
    assert opt._executor.layout == layout and opt._executor.finite_check == check
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
    assert opt.skipped_steps == ref_opt.skipped_steps == 1


def test_channels_last_parameters_are_written(monkeypatch):
    """A channels_last weight is stepped in its memory order, element for element the same
    as the contiguous weight (the old reshape-to-1-D path wrote to a copy). The noise of a
    stochastic sign follows memory order, so the check uses the deterministic sign."""
    ref, _ = _run(monkeypatch, "rows", channels_last=False, stochastic=False)
    got, _ = _run(monkeypatch, "rows", channels_last=True, stochastic=False)
    assert got[-1].is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(got[-1], _params(True)[-1])
    torch.testing.assert_close(got[-1], ref[-1], rtol=0, atol=0)


def test_chunks_are_powers_of_two():
    assert powers_of_two(11, 8) == [8, 2, 1]
    assert powers_of_two(220, 8) == [8] * 27 + [4]
    assert powers_of_two(0, 8) == []
    assert sum(powers_of_two(37, 16)) == 37


def test_plan_is_reused_and_rebuilt_when_state_changes(monkeypatch):
    ps = _params()
    opt = signify.Signum(ps, lr=0.1)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    plan = opt._executor._plan
    opt.step()
    assert opt._executor._plan is plan  # same params, same state: reused
    del opt.state[ps[0]]  # state dropped by hand: recreated, plan rebuilt
    opt.step()
    assert opt._executor._plan is not plan
    assert "momentum_buffer" in opt.state[ps[0]]
    ps[1].grad = None  # a different set of stepped params
    before = ps[1].detach().clone()
    opt.step()
    assert torch.equal(ps[1], before)


def test_bad_layout_env(monkeypatch):
    monkeypatch.setenv("SIGNIFY_LAYOUT", "diagonal")
    with pytest.raises(ValueError, match="SIGNIFY_LAYOUT"):
        signify.Signum(_params(), lr=0.1)


def test_tuple_hyperparameters_change_in_place():
    """A new betas pair is copied into the same device tensor (a captured CUDA graph reads
    it by address) and takes effect: sign=False steps like torch.optim.Adam."""
    ref_ps, ps = _params(), _params()
    ref = torch.optim.Adam(ref_ps, lr=0.01)
    opt = signify.signify(torch.optim.Adam, sign=False)(ps, lr=0.01)
    gen = torch.Generator().manual_seed(3)
    for s in range(4):
        if s == 2:
            for g in (ref.param_groups[0], opt.param_groups[0]):
                g["betas"] = (0.5, 0.9)
        for p, q in zip(ref_ps, ps):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        if s == 2:
            betas = opt._executor.hyper._tensors[(0, torch.device("cpu"))]["betas"]
        ref.step()
        opt.step()
    assert opt._executor.hyper._tensors[(0, torch.device("cpu"))]["betas"] is betas
    torch.testing.assert_close(betas, torch.tensor([0.5, 0.9]))
    for a, b in zip(ref_ps, ps):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_which_chains_may_run_as_a_cuda_graph():
    """A stepsize oracle's scalar hooks (reset before the step, a compiled finalize) do not
    keep a compiled step out of a CUDA graph; collectives, block switches, the run-and-read
    fallback and nonfinite="raise" do. (The capture itself needs a GPU: bench/stepsize.py
    checks a captured ALIAS step against eager there.)"""
    p = torch.nn.Parameter(torch.randn(8, 16))
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(16, 16) for _ in range(2)])

    def capturable(**kw) -> bool:
        nonfinite = kw.pop("nonfinite", "skip")
        cls = signify.signify(torch.optim.SGD, compile=True, **kw)
        params = model.named_parameters() if "blocks" in kw else [p]
        return cls(params, lr=1.0, nonfinite=nonfinite)._executor.capturable()

    assert capturable()
    for name in ("alias", "alias-lowmem", "alias-adam", "constant"):
        assert capturable(stepsize=name), name
    assert not capturable(nonfinite="raise")
    assert not capturable(blocks="cyclic")
    assert not capturable(stepsize="alias", blocks="cyclic")
    with pytest.MonkeyPatch.context() as m:  # an all-reduce of the norms is host-issued
        from signify.transforms.stepsize_alias import Alias

        m.setattr(Alias, "reduce_mode", lambda self: "mean")
        assert not capturable(stepsize="alias")
    eager = signify.signify(torch.optim.SGD, stepsize="alias", compile=False)([p], lr=1.0)
    assert not eager._executor.capturable()

    class OwnSGD(torch.optim.Optimizer):  # no adapter, not traceable: run-and-read
        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for q in g["params"]:
                    if q.grad is not None and float(q.grad.abs().max()) >= 0:  # host read
                        q.add_(q.grad, alpha=-g["lr"])

    with pytest.warns(UserWarning):
        generic = signify.signify(OwnSGD, compile=True)([p], lr=1.0)
    assert not generic._executor.capturable()


def test_hint_when_gradients_move_every_step(monkeypatch):
    """Gradients at new addresses every step (zero_grad(set_to_none=True) in a real training
    loop, measured on an H100 and an H200) keep the step from replaying as a CUDA graph: after
    8 such steps signify says once to keep them in place. (The graph path is forced on the
    CPU; with moving gradients it never reaches a capture.)"""
    p = torch.nn.Parameter(torch.randn(8, 16))
    opt = signify.Signum([p], lr=0.1, momentum=0.9)
    monkeypatch.setattr(opt._executor, "_use_graphs", lambda plan: True)
    keep = []
    with pytest.warns(UserWarning, match="set_to_none=False") as record:
        for _ in range(12):
            keep.append(torch.randn(8, 16))  # alive: the next one cannot reuse its memory
            p.grad = keep[-1]
            opt.step()
    assert sum("set_to_none=False" in str(w.message) for w in record) == 1


@pytest.mark.parametrize("flatten", [False, True])
def test_replaced_parameter_data_keeps_being_stepped(flatten):
    """``p.data = ...`` between steps (what ``model.to(...)`` does) must not leave the step
    writing into the old memory: the plan is rebuilt."""
    w = torch.nn.Parameter(torch.randn(5))
    v = torch.nn.Parameter(torch.randn(3))
    opt = signify.Signum([w, v], lr=0.1, momentum=0.0, flatten=flatten)
    w.grad, v.grad = torch.ones(5), torch.ones(3)
    opt.step()
    w.data = w.data.clone()
    before = w.detach().clone()
    opt.step()
    torch.testing.assert_close(w.detach(), before - 0.1)
