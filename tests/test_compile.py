"""Compiled deployment: no recompiles in steady state, compiled == eager, no host sync.

Compiling on this CPU box is slow (inductor's C++), so every compiled optimizer here steps one
tensor with compile_chunk=1, and the stochastic and deterministic checks share their graphs.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch._dynamo.utils import counters

import signify
from signify.optimizer import _compile_by_default


def _grads(params, step):
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)


@contextlib.contextmanager
def _no_host_sync(monkeypatch):
    """Fail on anything that reads a tensor's value on the host during the block."""

    def boom(*_a, **_k):
        raise AssertionError("host sync in step()")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy"):
            m.setattr(torch.Tensor, name, boom)
        yield


def _run(cls, compile_, steps, schedule, monkeypatch=None, **kw):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 16))
    opt = cls([w], lr=0.05, compile=compile_, compile_chunk=1, seed=3, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s)) if schedule else None
    graphs = []
    for s in range(steps):
        _grads([w], s)
        if monkeypatch is not None and s >= 2:
            with _no_host_sync(monkeypatch):
                opt.step()
        else:
            opt.step()
        if sched is not None:
            sched.step()
        graphs.append(counters["stats"]["unique_graphs"])
    return w.detach().clone(), opt, graphs


def test_compile_default_is_eager_on_cpu():
    p = torch.nn.Parameter(torch.randn(3))
    opt = signify.Signum([p], lr=0.1)
    assert opt.compiled is False
    assert _compile_by_default([p]) is False
    assert signify.Signum([p], lr=0.1, compile=True).compiled is True


def test_compiled_matches_eager_without_recompiles_or_syncs(monkeypatch):
    """Stochastic signified Adam under an lr schedule: compiled and eager give the same bits
    (the noise is a counter hash), the schedule recompiles nothing after the first step, and
    steady-state steps read nothing back from the device."""
    cls = signify.signify(torch.optim.Adam, stochastic=True)
    eager, _, _ = _run(cls, False, 6, True)
    comp, opt, graphs = _run(cls, True, 6, True, monkeypatch)
    assert opt.compiled
    assert graphs[1] > 0 and graphs[-1] == graphs[1], graphs  # nothing compiled after step 1
    assert torch.equal(eager, comp)

    # Deterministic sign with decoupled weight decay: a different chain (its own graphs).
    cls = signify.signify(torch.optim.AdamW, stochastic=False)
    eager, _, _ = _run(cls, False, 4, True, weight_decay=0.1)
    comp, _, graphs = _run(cls, True, 4, True, weight_decay=0.1)
    assert graphs[-1] == graphs[1], graphs
    torch.testing.assert_close(comp, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("stochastic", [False, True])
def test_eager_step_does_not_sync(monkeypatch, stochastic):
    cls = signify.signify(torch.optim.Adam, stochastic=stochastic)
    _run(cls, False, 5, True, monkeypatch)


def test_nonfinite_skip_without_sync(monkeypatch):
    """The default nonfinite="skip" decides on the device: a NaN gradient leaves params and
    state untouched and the step is counted as skipped, all without a host read."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 16))
    opt = signify.StoSignSGD([w], lr=0.1, seed=0)
    _grads([w], 0)
    opt.step()
    before = w.detach().clone()
    state = {k: v.clone() for k, v in opt.state[w].items()}
    w.grad[1, 3] = float("nan")
    with _no_host_sync(monkeypatch):
        opt.step()
    assert torch.equal(w, before)
    for k, v in opt.state[w].items():
        assert torch.equal(v, state[k]), k
    assert opt.skipped_steps == 1


def test_traced_adapter_compiles_like_eager():
    """A traced base (an Adamax whose step is overridden, so no hand-written adapter applies)
    runs inside the compiled pass, drawing the same noise as eager."""
    from signify.adapters.traced import TracedAdapter

    class OwnAdamax(torch.optim.Adamax):
        def step(self, closure=None):
            return super().step(closure)

    cls = signify.signify(OwnAdamax, stochastic=True)
    eager, _opt_e, _ = _run(cls, False, 4, True, weight_decay=0.01)
    comp, opt_c, graphs = _run(cls, True, 4, True, weight_decay=0.01)
    assert isinstance(opt_c.chain[0], TracedAdapter) and opt_c.compiled
    assert graphs[-1] == graphs[1], graphs
    torch.testing.assert_close(comp, eager, rtol=0, atol=1e-6)


def test_inductor_options_per_graph_kind_and_override(monkeypatch):
    """The realize threshold each graph kind compiles with, the environment override, and a
    clear error for a bad override."""
    from signify import compiled

    monkeypatch.delenv("SIGNIFY_REALIZE_THRESHOLD", raising=False)
    key = "realize_opcount_threshold"
    assert compiled.inductor_options("bookkeeping", "cuda")[key] == 4
    assert compiled.inductor_options("segment", "cpu")[key] == 8
    assert compiled.inductor_options("prepare", "cuda")[key] == 30
    monkeypatch.setenv("SIGNIFY_REALIZE_THRESHOLD", "12")
    assert compiled.inductor_options("segment", "cuda")[key] == 12
    assert compiled.inductor_options("bookkeeping", "cpu")[key] == 4
    for kind in ("bookkeeping", "prepare", "segment"):  # the guards checked the inputs
        for device_type in ("cpu", "cuda"):
            assert compiled.inductor_options(kind, device_type)["size_asserts"] is False
    for bad in ("abc", "0", "-3"):
        monkeypatch.setenv("SIGNIFY_REALIZE_THRESHOLD", bad)
        with pytest.raises(ValueError, match="SIGNIFY_REALIZE_THRESHOLD"):
            compiled.inductor_options("segment", "cpu")


def test_inductor_options_extra_from_environment(monkeypatch):
    """SIGNIFY_INDUCTOR adds inductor options to the elementwise graphs (not to the
    bookkeeping graph); bad JSON and unknown option names are errors naming the variable."""
    from signify import compiled

    monkeypatch.delenv("SIGNIFY_REALIZE_THRESHOLD", raising=False)
    monkeypatch.setenv("SIGNIFY_INDUCTOR", '{"coordinate_descent_tuning": true}')
    assert compiled.inductor_options("segment", "cuda")["coordinate_descent_tuning"] is True
    assert compiled.inductor_options("prepare", "cpu")["realize_opcount_threshold"] == 8
    assert "coordinate_descent_tuning" not in compiled.inductor_options("bookkeeping", "cuda")
    for bad, what in (("{nope", "JSON"), ("[1]", "JSON object"), ('{"no_such": 1}', "no_such")):
        monkeypatch.setenv("SIGNIFY_INDUCTOR", bad)
        with pytest.raises(ValueError, match=f"SIGNIFY_INDUCTOR.*{what}"):
            compiled.inductor_options("segment", "cuda")


def test_reduce_rows_setting_sums_the_same(monkeypatch):
    """A large tensor sums whole rows of C (SIGNIFY_REDUCE_ROWS) first: the same sum to
    rounding, compiled and eager; a size that is not whole rows takes the plain sum; a bad
    value is a ValueError naming the setting."""
    from signify.transforms import base

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64 * 48, generator=gen)
    odd = torch.randn(64 * 48 + 5, generator=gen)
    monkeypatch.setattr(base, "REDUCE_ROWS", 0)
    plain = base.total(x)
    monkeypatch.setattr(base, "REDUCE_ROWS", 64)
    monkeypatch.setattr(base, "REDUCE_MIN_ROWS", 2)
    for fn in (base.total, torch.compile(base.total, fullgraph=True, dynamic=True)):
        torch.testing.assert_close(fn(x), x.double().sum().float(), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(fn(odd), odd.double().sum().float(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(base.total(x), plain, rtol=1e-5, atol=1e-4)
    # eager: exactly the two-stage form (which rounds differently from one sum here)
    two_stage = x.reshape(-1, 64).sum(1).sum()
    assert torch.equal(base.total(x), two_stage) and not torch.equal(two_stage, x.sum())
    assert torch.equal(plain, x.sum())
    monkeypatch.setattr(base, "REDUCE_MIN_ROWS", 64)  # 48 rows: too few
    assert torch.equal(base.total(x), x.sum())
    for bad in ("-1", "x", "1.5"):
        monkeypatch.setenv("SIGNIFY_REDUCE_ROWS", bad)
        with pytest.raises(ValueError, match="SIGNIFY_REDUCE_ROWS"):
            base._reduce_rows()


def test_combo_kernels_setting_per_graph_kind(monkeypatch):
    """SIGNIFY_COMBO: combo kernels for every elementwise graph on a GPU (default), for the
    prepass only, or off; never on the CPU (inductor's C++ backend has none) nor in the
    bookkeeping graph; a bad value is an error naming the variable."""
    from signify import compiled

    monkeypatch.delenv("SIGNIFY_COMBO", raising=False)
    monkeypatch.delenv("SIGNIFY_INDUCTOR", raising=False)

    def combo(kind: str, device: str) -> bool:
        return bool(compiled.inductor_options(kind, device).get("combo_kernels", False))

    assert combo("segment", "cuda") and combo("prepare", "cuda")
    assert not combo("segment", "cpu") and not combo("bookkeeping", "cuda")
    monkeypatch.setenv("SIGNIFY_COMBO", "prepare")
    assert combo("prepare", "cuda") and not combo("segment", "cuda")
    monkeypatch.setenv("SIGNIFY_COMBO", "off")
    assert not combo("prepare", "cuda") and not combo("segment", "cuda")
    monkeypatch.setenv("SIGNIFY_COMBO", "yes")
    with pytest.raises(ValueError, match="SIGNIFY_COMBO"):
        compiled.inductor_options("segment", "cuda")
    with pytest.raises(ValueError, match="SIGNIFY_COMBO"):  # at construction, on any device
        signify.Signum([torch.nn.Parameter(torch.randn(4))], lr=1e-2, compile=True)


@pytest.mark.parametrize("shapes", ["dynamic", "static"])
def test_per_tensor_graphs_dynamic_or_compiled_for_their_sizes(monkeypatch, shapes):
    """SIGNIFY_SHAPES: per-tensor chunks share one dynamic-size graph per tensor count
    (default), or get a graph per set of sizes (static); both step exactly as eager, and a
    bad value is an error naming the variable."""
    monkeypatch.setenv("SIGNIFY_SHAPES", shapes)
    torch.manual_seed(5)
    a = [torch.randn(48), torch.randn(32)]
    b = [torch.randn(160), torch.randn(16)]
    grads = [[torch.randn_like(x) for x in a + b] for _ in range(3)]
    finals = []
    for compile_ in (False, True):
        ps = [torch.nn.Parameter(x.clone()) for x in a + b]
        opt = signify.Signum(
            [{"params": ps[:2]}, {"params": ps[2:], "lr": 5e-3}],
            lr=1e-2,
            compile=compile_,
            compile_chunk=2,
            seed=2,
        )
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        finals.append([p.detach().clone() for p in ps])
        if compile_:
            keys = sorted(k[3] for k in opt._executor._compiled if k[0] == "segment")
    for e, c in zip(*finals):
        torch.testing.assert_close(c, e, rtol=0, atol=1e-6)
    if shapes == "dynamic":
        assert keys == [2]  # one graph: two tensors, any sizes
    else:
        assert keys == [("sizes", (48, 32)), ("sizes", (160, 16))]
    monkeypatch.setenv("SIGNIFY_SHAPES", "some")
    with pytest.raises(ValueError, match="SIGNIFY_SHAPES"):
        signify.Signum([torch.nn.Parameter(torch.randn(4))], lr=1e-2, compile=True)


@pytest.mark.parametrize("hoist", ["1", "0"])
def test_per_step_scalars_are_reduced_once_when_compiled(monkeypatch, hoist):
    """`once`: eager, the scalars come back unchanged (the same tensors); traced, each goes
    through a 16-wide maximum (a reduction, so inductor stores it rather than recomputing
    it per element of its reader) and keeps its exact value and shape; SIGNIFY_HOIST=0
    leaves the traced graph without it. A signified Adam's traced update reduces its bias
    corrections the same way."""
    from signify.transforms.base import once

    monkeypatch.setenv("SIGNIFY_HOIST", hoist)
    gen = torch.Generator().manual_seed(6)
    step = torch.randint(1, 50, (), generator=gen).float()
    beta = torch.rand((1,), generator=gen) * 0.5 + 0.45
    x = torch.randn(64, generator=gen)
    ops: list[str] = []

    def backend(gm, example_inputs):  # type: ignore[no-untyped-def]
        ops.extend(str(n.target) for n in gm.graph.nodes)
        return gm.forward

    def fn(x, step, beta):  # type: ignore[no-untyped-def]
        b1, b2 = once([1 - beta**step, (1 - beta**step).sqrt()])
        return x / b1 + b2, b1, b2

    eager = fn(x, step, beta)
    xs = [1 - beta**step]
    assert once(xs)[0] is xs[0]
    torch._dynamo.reset()
    traced = torch.compile(fn, backend=backend, fullgraph=True)(x, step, beta)
    for t, e in zip(traced, eager):
        assert t.shape == e.shape and torch.equal(t, e)
    assert any("amax" in o for o in ops) == (hoist == "1"), ops

    ops.clear()
    from signify import compiled

    def capture(fn, kind, device_type, dynamic=True):  # type: ignore[no-untyped-def]
        return torch.compile(fn, fullgraph=True, dynamic=dynamic, backend=backend)

    monkeypatch.setattr(compiled, "compile_fn", capture)
    p = torch.nn.Parameter(torch.randn(32, generator=gen))
    # compile_chunk=1: the graph of this one tensor (the default chunk of 8 traces 7 empty ones)
    opt = signify.signify(torch.optim.Adam, stochastic=True)(
        [p], lr=1e-3, compile=True, compile_chunk=1, nonfinite="ignore"
    )
    p.grad = torch.randn(32, generator=gen)
    opt.step()
    assert any("amax" in o for o in ops) == (hoist == "1"), ops
    monkeypatch.setenv("SIGNIFY_HOIST", "yes")
    with pytest.raises(ValueError, match="SIGNIFY_HOIST"):
        signify.Signum([torch.nn.Parameter(torch.randn(4))], lr=1e-2, compile=True)


@pytest.mark.parametrize("name", ["Adamax", "NAdam", "RAdam"])
def test_compiled_adapters_with_hoisted_scalars_equal_torch(name):
    """The adapters whose per-step scalars go through `once` (bias corrections; NAdam's
    momentum coefficients; RAdam's rectification, which switches on at step 6 with the
    default betas), compiled with sign=False, step like torch.optim for 8 steps. Both tensors
    share one graph (compile_chunk=2: the default chunk of 8 would pad it with 6 empty
    tensors, which cost compile time and test nothing here)."""
    cls = getattr(torch.optim, name)
    gen = torch.Generator().manual_seed(11)
    x0 = [torch.randn(48, generator=gen), torch.randn(16, 3, generator=gen)]
    grads = [[torch.randn(x.shape, generator=gen) for x in x0] for _ in range(8)]
    ref_ps = [torch.nn.Parameter(x.clone()) for x in x0]
    sig_ps = [torch.nn.Parameter(x.clone()) for x in x0]
    ref = cls(ref_ps, lr=1e-2, weight_decay=0.01)
    sig = signify.signify(cls, sign=False)(
        sig_ps, lr=1e-2, weight_decay=0.01, compile=True, compile_chunk=2, nonfinite="ignore"
    )
    assert sig.compiled
    for gs in grads:
        for a, b, g in zip(ref_ps, sig_ps, gs):
            a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        sig.step()
    for a, b in zip(sig_ps, ref_ps):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
