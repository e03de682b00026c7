"""Seeds, exact resume through state_dict, torch checkpoints, and non-finite gradients."""

import copy
import io

import pytest
import torch

import signify
from tests.helpers import make_params, run_steps, set_random_grads

MAKERS = {
    "stochastic_adam": lambda ps, seed: signify.signify(torch.optim.Adam, stochastic=True)(
        ps, lr=1e-2, weight_decay=0.01, seed=seed
    ),
    "stosignsgd": lambda ps, seed: signify.StoSignSGD(ps, lr=1e-2, betas=(0.9, 0.99), seed=seed),
    "stochastic_bf16": lambda ps, seed: signify.signify(torch.optim.AdamW, stochastic=True)(
        ps, lr=1e-3, seed=seed
    ),
}


def _params(kind):
    dtype = torch.bfloat16 if kind.endswith("bf16") else torch.float32
    torch.manual_seed(1234)
    return [p.detach().to(dtype).requires_grad_() for p in make_params()]


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_same_seed_same_run_other_seed_other_run(kind):
    runs = []
    for seed in (7, 7, 8):
        ps = _params(kind)
        runs.append(run_steps(MAKERS[kind](ps, seed), ps, 5, seed=11))
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_seed_none_follows_torch_global_seed():
    def run():
        torch.manual_seed(5)
        ps = _params("stochastic_adam")
        torch.manual_seed(6)
        return run_steps(MAKERS["stochastic_adam"](ps, None), ps, 4)

    assert all(torch.equal(a, b) for a, b in zip(run(), run()))


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("stop", [1, 4])
def test_exact_resume(kind, stop):
    total = 7
    ps = _params(kind)
    straight = run_steps(MAKERS[kind](ps, 3), ps, total, seed=21)

    ps = _params(kind)
    opt = MAKERS[kind](ps, 3)
    g = torch.Generator().manual_seed(21)
    for _ in range(stop):
        set_random_grads(ps, g)
        opt.step()
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in ps], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)

    ps2 = [p.clone().requires_grad_() for p in ckpt["params"]]
    opt2 = MAKERS[kind](ps2, 999)  # a different seed: the checkpoint's must win
    opt2.load_state_dict(ckpt["opt"])
    for _ in range(total - stop):
        set_random_grads(ps2, g)
        opt2.step()
    for a, b in zip(straight, ps2):
        assert torch.equal(a, b.detach())


def test_state_dict_layout_and_load_errors():
    ps = make_params()
    opt = signify.StoSignSGD(ps, lr=1e-2, seed=0)
    run_steps(opt, ps, 2)
    sd = opt.state_dict()
    assert sd["signify"]["schema"] == signify.checkpoint.SCHEMA_VERSION
    assert sd["signify"]["chain"] == [
        "sgd",
        "max_scale",
        "stochastic_sign",
        "decoupled_wd",
        "apply",
    ]
    assert set(sd["state"][0]) == {"step", "momentum_buffer", "max_scale.G"}

    other = signify.signify(torch.optim.SGD, stochastic=True)(make_params(), lr=1e-2, momentum=0.9)
    with pytest.raises(ValueError, match="chain"):
        other.load_state_dict(copy.deepcopy(sd))
    bad = copy.deepcopy(sd)
    bad["signify"]["schema"] = 99
    with pytest.raises(ValueError, match="schema"):
        signify.StoSignSGD(make_params(), seed=0).load_state_dict(bad)
    wrong_shapes = signify.StoSignSGD(make_params(((7, 13), (5,), (3, 4, 2))), seed=0)
    with pytest.raises(ValueError, match="shape"):
        wrong_shapes.load_state_dict(copy.deepcopy(sd))
    fewer = signify.StoSignSGD(make_params(((13, 7),)), seed=0)
    with pytest.raises(ValueError, match="parameters"):
        fewer.load_state_dict(copy.deepcopy(sd))
    with pytest.raises(TypeError, match="state_dict"):
        fewer.load_state_dict([1, 2])


@pytest.mark.parametrize("base", [torch.optim.Adam, torch.optim.SGD])
def test_torch_checkpoint_loads_into_signified_base(base):
    kw = {"lr": 1e-2, "momentum": 0.9} if base is torch.optim.SGD else {"lr": 1e-2}
    ps = make_params()
    ref = base(ps, **kw)
    run_steps(ref, ps, 3)
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    opt = signify.signify(base, sign=False)(ps2, **kw)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    a = run_steps(ref, ps, 4, seed=5)
    b = run_steps(opt, ps2, 4, seed=5)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def _snapshot(opt, ps):
    state = {k: v.clone() for p in ps for k, v in opt.state[p].items()}
    shared = {
        (n, k): v.clone()
        for n, d in opt._shared.items()
        for k, v in d.items()
        if isinstance(v, torch.Tensor) and n != "nonfinite"
    }
    return [p.detach().clone() for p in ps], state, shared


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_step_changes_nothing_and_is_counted(bad):
    ps = make_params()
    opt = signify.signify(torch.optim.Adam, stochastic=True)(ps, lr=1e-2, seed=0)
    run_steps(opt, ps, 2)
    params, state, shared = _snapshot(opt, ps)
    set_random_grads(ps)
    ps[1].grad[2] = bad
    opt.step()
    params2, state2, shared2 = _snapshot(opt, ps)
    assert all(torch.equal(a, b) for a, b in zip(params, params2))
    assert all(torch.equal(state[k], state2[k]) for k in state)
    assert all(torch.equal(shared[k], shared2[k]) for k in shared)
    assert opt.skipped_steps == 1
    # the run continues exactly as if the bad step had never been taken
    ref_ps = make_params()
    for r, p in zip(ref_ps, params):
        r.data.copy_(p)
    ref = copy.deepcopy(opt)
    a = run_steps(opt, ps, 3, seed=9)
    b = run_steps(ref, [p for p in ref.param_groups[0]["params"]], 3, seed=9)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_nonfinite_raise_and_ignore():
    ps = make_params()
    opt = signify.signify(torch.optim.SGD, nonfinite="raise")(ps, lr=0.1)
    set_random_grads(ps)
    ps[0].grad[0, 0] = float("nan")
    before = [p.detach().clone() for p in ps]
    with pytest.raises(FloatingPointError):
        opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(ps, before))
    opt = signify.signify(torch.optim.SGD, nonfinite="ignore")(ps, lr=0.1)
    opt.step()
    # not checked: the step is applied (sign(nan) = 0, so that coordinate stays) and not counted
    assert opt.skipped_steps == 0
    for p, b in zip(ps, before):
        want = b - 0.1 * torch.sign(torch.nan_to_num(p.grad, nan=0.0))
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-7)
    assert ps[0][0, 0] == before[0][0, 0]
