"""The optimizer contract of `signify`: construction like the base, options, chains, and the
torch.optim conventions users rely on."""

import copy
import math

import pytest
import torch

import signify
from signify import transforms as T
from tests.helpers import make_params, run_steps, set_random_grads


def test_class_is_an_optimizer_with_the_base_signature_and_defaults():
    cls = signify.signify(torch.optim.Adam, stochastic=True)
    assert issubclass(cls, torch.optim.Optimizer)
    ps = make_params()
    opt = cls(ps)
    ref = torch.optim.Adam(make_params())
    for k, v in ref.defaults.items():
        assert opt.defaults[k] == v, k
    opt2 = cls(ps, 1e-4, (0.9, 0.99), 1e-6, 0.1)  # positional, as for the base
    g = opt2.param_groups[0]
    assert (g["lr"], g["betas"], g["eps"], g["weight_decay"]) == (1e-4, (0.9, 0.99), 1e-6, 0.1)
    assert isinstance(opt2.param_groups[0], dict)


def test_signify_an_instance_keeps_groups_hyperparameters_and_state():
    ps = make_params()
    base = torch.optim.Adam(
        [{"params": ps[:1], "lr": 0.01}, {"params": ps[1:], "lr": 0.02, "weight_decay": 0.1}]
    )
    run_steps(base, ps, 3)
    opt = signify.signify(base, sign=False)
    assert isinstance(opt, torch.optim.Optimizer)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.02]
    assert opt.param_groups[1]["weight_decay"] == 0.1
    assert torch.equal(opt.state[ps[0]]["exp_avg"], base.state[ps[0]]["exp_avg"])
    ps2 = [p.detach().clone().requires_grad_() for p in ps]
    base2 = torch.optim.Adam(
        [{"params": ps2[:1], "lr": 0.01}, {"params": ps2[1:], "lr": 0.02, "weight_decay": 0.1}]
    )
    base2.load_state_dict(copy.deepcopy(base.state_dict()))
    a = run_steps(opt, ps, 5, seed=3)
    b = run_steps(base2, ps2, 5, seed=3)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_deterministic_sign_step_is_lr_times_sign_of_momentum():
    ps = make_params()
    lr, mom = 0.05, 0.9
    opt = signify.signify(torch.optim.SGD)(ps, lr=lr, momentum=mom, dampening=0.5)
    g = torch.Generator().manual_seed(1)
    buf = None
    for _ in range(6):
        set_random_grads(ps, g)
        before = [p.detach().double().clone() for p in ps]
        grads = [p.grad.double() for p in ps]
        buf = grads if buf is None else [mom * b + 0.5 * gr for b, gr in zip(buf, grads)]
        opt.step()
        for p, b, m in zip(ps, before, buf):
            torch.testing.assert_close(
                p.detach().double(), b - lr * torch.sign(m), rtol=0, atol=1e-6
            )


def test_deterministic_sign_does_not_allocate_the_dead_denominator():
    ps = make_params()
    det = signify.signify(torch.optim.Adam)(ps, lr=1e-3, amsgrad=True)
    run_steps(det, ps, 2)
    assert set(det.state[ps[0]]) == {"step", "exp_avg"}
    sto = signify.signify(torch.optim.Adam, stochastic=True)(ps, lr=1e-3, amsgrad=True)
    run_steps(sto, ps, 2)
    assert {"exp_avg_sq", "max_exp_avg_sq"} <= set(sto.state[ps[0]])
    sgd = signify.signify(torch.optim.SGD, stochastic=True)(ps, lr=1e-3, momentum=0.9)
    run_steps(sgd, ps, 2)
    assert "max_scale.G" in sgd.state[ps[0]]  # signify's own state is namespaced
    assert "Adam: a/sigma, denominator unused" in repr(det)


def test_explicit_chain_and_repr():
    ps = make_params()
    cls = signify.signify(torch.optim.SGD, [T.ExpectedSign(), T.DecoupledWeightDecay(0.1)])
    opt = cls(ps, lr=0.1, momentum=0.9, dampening=0.9)
    names = [type(t).__name__ for t in opt.chain]
    assert names == [
        "SGDAdapter",
        "RunningMaxScale",
        "ExpectedSign",
        "DecoupledWeightDecay",
        "ApplyUpdate",
    ]
    text = repr(opt)
    assert "ExpectedSign" in text and "RunningMaxScale(beta=1.0)" in text
    # ExpectedSign with G = max|m| over one step: |direction| = |m|/G = 1 at step one.
    before = [p.detach().clone() for p in ps]
    set_random_grads(ps)
    opt.step()
    for p, b in zip(ps, before):
        expect = b - 0.1 * (torch.sign(p.grad) + 0.1 * b)
        torch.testing.assert_close(p.detach(), expect)


def test_explicit_chain_errors():
    with pytest.raises(TypeError, match="Transform"):
        signify.signify(torch.optim.Adam, [object()])
    with pytest.raises(TypeError, match="either"):
        signify.signify(torch.optim.Adam, [T.Sign()], stochastic=True)
    with pytest.raises(ValueError, match="direction"):
        signify.signify(torch.optim.Adam, [T.DecoupledWeightDecay()])
    with pytest.raises(ValueError, match="unique"):
        signify.signify(torch.optim.Adam, [T.Sign(), T.Sign()])
    with pytest.raises(ValueError, match="ApplyUpdate"):
        signify.signify(torch.optim.Adam, [T.Sign(), T.ApplyUpdate()])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: signify.signify(torch.optim.Adam, stochastic=1), TypeError, "stochastic"),
        (lambda: signify.signify(torch.optim.Adam, sign="yes"), TypeError, "sign"),
        (lambda: signify.signify(torch.optim.Adam, bogus=True), TypeError, "bogus"),
        (lambda: signify.signify(torch.nn.Linear), TypeError, "base"),
        (lambda: signify.signify(3), TypeError, "base"),
        (lambda: signify.signify(torch.optim.Adam, seed=-1), ValueError, "seed"),
        (lambda: signify.signify(torch.optim.Adam, seed=1.5), TypeError, "seed"),
        (lambda: signify.signify(torch.optim.Adam, nonfinite="drop"), ValueError, "nonfinite"),
        (lambda: signify.signify(torch.optim.Adam, compile="on"), TypeError, "compile"),
        (lambda: signify.signify(torch.optim.Adam, compile_chunk=3), ValueError, "compile_chunk"),
        (
            lambda: signify.signify(torch.optim.Adam, state_dtype=torch.int8),
            ValueError,
            "state_dtype",
        ),
        (lambda: signify.signify(torch.optim.SGD, scale_beta=0.0), ValueError, "scale_beta"),
    ],
)
def test_bad_options(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"lr": -1.0}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"eps": -1e-8}, ValueError, "eps"),
        ({"betas": (1.0, 0.999)}, ValueError, r"betas\[0\]"),
        ({"betas": (0.9, -0.1)}, ValueError, r"betas\[1\]"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"amsgrad": "no"}, TypeError, "amsgrad"),
        ({"differentiable": True}, ValueError, "differentiable"),
        ({"momentum": 0.9}, TypeError, "momentum"),
    ],
)
def test_bad_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        signify.signify(torch.optim.Adam)(make_params(), **kwargs)


def test_bad_params_and_groups():
    cls = signify.signify(torch.optim.SGD)
    with pytest.raises(ValueError, match="complex"):
        cls([torch.randn(3, dtype=torch.complex64, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        cls([{"params": make_params(), "lr": -0.1}], lr=0.1)
    opt = cls(make_params(), lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        opt.add_param_group({"params": make_params(), "momentum": -1.0})
    with pytest.raises(TypeError):
        cls(torch.randn(3, requires_grad=True), lr=0.1)  # a bare tensor, as torch rejects


def test_sparse_gradients_are_rejected_before_any_change():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = signify.signify(torch.optim.SGD)(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    assert torch.equal(emb.weight, before)


def test_param_groups_closures_hooks_and_zero_grad():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = signify.signify(torch.optim.Adam)(
        [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.0}], lr=0.01
    )
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    frozen = [p.detach().clone() for p in model[2].parameters()]

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    losses = [opt.step(closure).item() for _ in range(50)]
    assert calls[:2] == ["pre", "post"] and len(calls) == 100
    assert losses[-1] < losses[0]
    for p, f in zip(model[2].parameters(), frozen):  # lr = 0 group does not move
        assert torch.equal(p.detach(), f)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_named_parameters_and_add_param_group():
    model = torch.nn.Linear(3, 2)
    opt = signify.signify(torch.optim.AdamW)(model.named_parameters(), lr=1e-3)
    assert opt.param_groups[0]["param_names"] == ["weight", "bias"]
    extra = torch.nn.Linear(2, 2)
    opt.add_param_group({"params": list(extra.named_parameters()), "lr": 0.5})
    set_random_grads(list(model.parameters()) + list(extra.parameters()))
    before = extra.weight.detach().clone()
    opt.step()
    delta = (extra.weight.detach() - before).abs()
    # deterministic sign with decoupled decay 0.01*lr: every coordinate moves by ~lr = 0.5
    assert torch.allclose(delta, torch.full_like(delta, 0.5), atol=0.5 * 0.01 * 3)
    assert opt.state_dict()["param_groups"][1]["param_names"] == ["weight", "bias"]


def test_lr_scheduler_sets_the_sign_step_size():
    ps = make_params()
    opt = signify.signify(torch.optim.SGD)(ps, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (t + 1))
    g = torch.Generator().manual_seed(0)
    for t in range(5):
        set_random_grads(ps, g)
        before = [p.detach().clone() for p in ps]
        lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        for p, b in zip(ps, before):
            torch.testing.assert_close((p.detach() - b).abs(), torch.full_like(b, lr))
        assert math.isclose(lr, 0.1 / (t + 1))


def test_tensor_lr_is_accepted():
    ps = make_params()
    opt = signify.signify(torch.optim.Adam)(ps, lr=torch.tensor(0.25))
    before = [p.detach().clone() for p in ps]
    run_steps(opt, ps, 1)
    for p, b in zip(ps, before):
        torch.testing.assert_close((p.detach() - b).abs(), torch.full_like(b, 0.25))


def test_params_without_grad_are_skipped():
    ps = make_params()
    opt = signify.signify(torch.optim.Adam, stochastic=True)(ps, lr=0.1)
    ps[0].grad = torch.randn_like(ps[0])
    before = ps[1].detach().clone()
    opt.step()
    assert torch.equal(ps[1].detach(), before) and ps[1] not in opt.state
    assert opt.state[ps[0]]["step"].item() == 1


def test_preset_signatures():
    ps = make_params()
    assert isinstance(
        signify.Signum(ps, lr=1e-3, momentum=0.9, weight_decay=0.1), torch.optim.Optimizer
    )
    assert signify.StoSignSGD(ps, betas=(0.9, 0.99)).param_groups[0]["scale_beta"] == 0.99
    # paper defaults (algorithms.md 2.2): momentum 0.9 with dampening 0.9, pure running max
    g = signify.StoSignSGD(ps).param_groups[0]
    assert (g["momentum"], g["dampening"], g["scale_beta"]) == (0.9, 0.9, 1.0)
    g = signify.Signum(ps).param_groups[0]
    assert (g["momentum"], g["dampening"]) == (0.9, 0.9)
    with pytest.raises(ValueError, match=r"betas\[1\]"):  # the preset's own argument
        signify.StoSignSGD(ps, betas=(0.9, 1.5))
    with pytest.raises(TypeError, match="betas"):
        signify.StoSignSGD(ps, betas=0.9)
    with pytest.raises(TypeError, match="seed"):
        signify.Signum(ps, seed="x")
