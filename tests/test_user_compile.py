"""A user's own torch.compile around signify's step (docs/performance.md, "Compiling around
signify"): a compiled ``opt.step()`` (torch's compiled-optimizer recipe), ``torch.compile(
opt.step)``, a whole compiled training step, and the step under ``torch.compiler.disable``.

``step`` is excluded from tracing: under ``fullgraph=False`` it is one clean graph break and
steps exactly as eagerly (bit for bit, noise stream, skipped steps and counters included),
with signify's own compiled graphs (``compile=True``) running inside; ``fullgraph=True``
is an error that says what to do. Outer compiles use dynamo's default config; the outer
backend is ``CompileCounter`` (counts what dynamo hands a backend) except in the nested test.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

import signify

STEPS, NAN_AT = 5, 2


def _adam(**kw):
    return signify.signify(torch.optim.Adam, **kw)


CONFIGS = {  # name: (class, hyperparameters, runtime options)
    "signum": (signify.signify(torch.optim.SGD), {"lr": 0.01, "momentum": 0.9}, {}),
    "sign-adam": (_adam(), {"lr": 0.01}, {}),
    "stochastic-alias": (_adam(stochastic=True, stepsize="alias"), {}, {}),
    "stochastic-flat": (_adam(stochastic=True), {"lr": 0.01}, {"flatten": True}),
    "blocks": (_adam(stochastic=True, blocks="depth"), {"lr": 0.01}, {}),
}


def _data():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 8, generator=gen) for _ in range(STEPS)]
    xs[NAN_AT][0, 0] = float("nan")  # every gradient NaN: the step must be skipped
    return xs, [torch.randn(6, 4, generator=gen) for _ in range(STEPS)]


def _setup(name, compile_=False):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    cls, hyper, runtime = CONFIGS[name]
    opt = cls(
        model.named_parameters(), seed=7, compile=compile_, compile_chunk=1, **hyper, **runtime
    )
    return model, opt


def _backward(model, x, y):
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    return loss


def _run(name, mode, compile_=False, backend=None, after_first=None):
    """Params, optimizer and the dynamo frame count after each step. ``mode``: "eager";
    "fn" (a compiled function calling opt.step(), fullgraph=False); "method"
    (torch.compile(opt.step)); "train" (zero_grad + forward + backward + step compiled);
    "disable" (a compiled function calling torch.compiler.disable(opt.step))."""
    model, opt = _setup(name, compile_)
    hooked: list[int] = []  # a user's step hook: called once per step in every mode
    opt.register_step_post_hook(lambda *_: hooked.append(1))
    xs, ys = _data()
    backend = backend or CompileCounter()
    compile_outer = torch.compile(backend=backend)  # dynamo's default config

    if mode == "train":

        @compile_outer
        def train_step(x, y):
            opt.zero_grad()
            loss = _backward(model, x, y)
            opt.step()
            return loss

    else:
        step = {
            "eager": opt.step,
            "fn": compile_outer(lambda: opt.step()),
            "method": compile_outer(opt.step),
            "disable": compile_outer(lambda: torch.compiler.disable(opt.step)()),
        }[mode]

        def train_step(x, y):
            opt.zero_grad()
            _backward(model, x, y)
            step()

    frames = []
    for i in range(STEPS):
        train_step(xs[i], ys[i])
        frames.append(counters["frames"]["total"])
        if i == 0 and after_first is not None:
            after_first()
    assert len(hooked) == STEPS, (mode, hooked)
    return [p.detach().clone() for p in model.parameters()], opt, frames, backend


def _assert_same_run(got, want, blocks=False):
    (params, opt, _, _), (ref_params, ref, _, _) = got, want
    for p, q in zip(params, ref_params):
        assert torch.equal(p, q), (p - q).abs().max()
    assert opt.skipped_steps == ref.skipped_steps == 1
    counter = opt._shared["rng"]["counter"]  # the noise stream: one draw per applied step
    assert torch.equal(counter, ref._shared["rng"]["counter"]) and int(counter) == STEPS - 1
    sd, ref_sd = opt.state_dict(), ref.state_dict()
    assert sd["state"].keys() == ref_sd["state"].keys()
    if not blocks:  # (blocks drop idle state) every parameter counted the applied steps only
        assert sd["state"] and all(
            int(st.get("step", STEPS - 1)) == STEPS - 1 for st in sd["state"].values()
        )
    for k, st in ref_sd["state"].items():
        assert st.keys() == sd["state"][k].keys()
        for key, v in st.items():
            assert torch.equal(torch.as_tensor(sd["state"][k][key]), torch.as_tensor(v)), key


@pytest.mark.parametrize("name", list(CONFIGS))
def test_outer_compile_steps_as_eager(name):
    """Each way of compiling around an eager signify step gives the eager run bit for bit,
    the NaN step skipped; nothing of signify reaches the outer graph, and no step after the
    first compiles a frame."""
    ref = _run(name, "eager")
    modes = ["fn", "method", "disable"] + (["train"] if name != "blocks" else [])
    for mode in modes:  # blocks switch requires_grad: docs/blocks.md, torch.compile(model)
        torch._dynamo.reset()
        counters.clear()
        got = _run(name, mode)
        _assert_same_run(got, ref, blocks=name == "blocks")
        frames, cc = got[2], got[3]
        assert frames[0] > 0 and frames[-1] == frames[0], (mode, frames)  # no recompiles
        # a compiled opt.step() alone leaves no graph: the step ran outside dynamo
        assert cc.frame_count == (1 if mode == "train" else 0), (mode, cc.frame_count)
        breaks = " ".join(counters["graph_break"])
        assert "set_" not in breaks and "executor" not in breaks, breaks


def test_fullgraph_error_says_what_to_do():
    """fullgraph=True cannot hold the step: the error names signify and fullgraph=False,
    rather than dynamo's generic "Dynamo developers have intentionally marked ... Please file
    an issue to PyTorch", and nothing was stepped."""
    model, opt = _setup("signum")
    xs, ys = _data()
    _backward(model, xs[0], ys[0])
    before = [p.detach().clone() for p in model.parameters()]
    for fn in (lambda: opt.step(), opt.step):
        torch._dynamo.reset()
        with pytest.raises(torch._dynamo.exc.Unsupported) as info:
            torch.compile(fn, fullgraph=True, backend=CompileCounter())()
        msg = str(info.value)
        assert "signify: SignifiedOptimizer.step is marked as skipped" in msg
        assert "fullgraph=False" in msg and "call opt.step() outside" in msg
        assert "dont_skip_tracing" not in msg and "file an issue" not in msg.lower()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not opt.state and opt.skipped_steps == 0
    # the same step taken outside the compiled function works
    opt.step()
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_nested_compile_runs_signify_graphs_inside():
    """compile=True inside a user's compile: signify's own graphs are compiled and run under
    the outer function, the run equals the same compiled optimizer stepped eagerly bit for
    bit, and from the second step on neither the outer function nor signify's graphs
    recompile (torch.compiler.set_stance("fail_on_recompile")). The training step's outer
    backend is aot_eager (a real backward graph, eager kernels): inductor's would round the
    gradients differently (measured: moments within 2e-8, the same parameters)."""
    stance = torch.compiler.set_stance
    name = "stochastic-flat"  # one chain: its graphs compile once, then come from the cache
    ref = _run(name, "eager", compile_=True)
    for mode, backend in (("train", "aot_eager"), ("fn", "inductor")):
        torch._dynamo.reset()
        counters.clear()
        try:  # a function call sets the stance at once: from the second step on
            got = _run(name, mode, True, backend, lambda: stance("fail_on_recompile"))
        finally:
            stance("default")
        _assert_same_run(got, ref)
        opt = got[1]
        assert opt.compiled and opt._executor._compiled
        assert counters["stats"]["unique_graphs"] >= len(opt._executor._compiled)
        assert got[2][-1] == got[2][0], got[2]
