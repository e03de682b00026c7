"""torch.optim conventions found broken by exploratory testing (2026-12-07), each checked
against torch.optim itself or a float64 formula written here."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import signify


def _pair(n: int = 6, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed) if seed is not None else None
    x = torch.randn(n, generator=g)
    return x.clone().requires_grad_(), x.clone().requires_grad_()


def _run_both(opt_a, opt_b, pa, pb, steps=4, change=None):  # type: ignore[no-untyped-def]
    for i in range(steps):
        g = torch.randn_like(pa)
        pa.grad, pb.grad = g.clone(), g.clone()
        if change is not None:
            change(opt_a, i)
            change(opt_b, i)
        opt_a.step()
        opt_b.step()
    return (pa - pb).abs().max().item()


# ------------------------------------------------------------------- presets' param groups
def test_signum_group_weight_decay_is_decoupled_and_momentum_an_ema():
    """A group's weight_decay means the constructor's (decoupled), not the base's L2."""
    a, b = _pair(), _pair()
    pa, pb = a[0], b[0]
    opt = signify.Signum(
        [{"params": [pa], "weight_decay": 0.1, "momentum": 0.5}, {"params": [pb]}],
        lr=0.1,
        weight_decay=0.5,
    )
    x = [pa.detach().double().clone(), pb.detach().double().clone()]
    m: list[torch.Tensor | None] = [None, None]
    for _ in range(3):
        gs = [torch.randn(6), torch.randn(6)]
        pa.grad, pb.grad = gs[0].clone(), gs[1].clone()
        opt.step()
        for i, (beta, wd) in enumerate(((0.5, 0.1), (0.9, 0.5))):
            g = gs[i].double()
            m[i] = g if m[i] is None else beta * m[i] + (1 - beta) * g  # type: ignore[operator]
            x[i] = x[i] - 0.1 * (torch.sign(m[i]) + wd * x[i])  # type: ignore[arg-type]
    torch.testing.assert_close(pa.detach().double(), x[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(pb.detach().double(), x[1], rtol=0, atol=1e-6)
    assert opt.param_groups[0]["weight_decay"] == 0.0  # the base's L2 stays off


def test_stosignsgd_and_signadamax_groups_translate():
    p, q = _pair()
    opt = signify.StoSignSGD([{"params": [p], "betas": (0.5, 0.9)}, {"params": [q]}], lr=0.1)
    g0 = opt.param_groups[0]
    assert (g0["momentum"], g0["dampening"], g0["scale_beta"]) == (0.5, 0.5, 0.9)
    assert "betas" not in g0
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        signify.StoSignSGD([{"params": [p], "betas": (0.5, 1.5)}])
    ax = signify.SignAdamax(
        [{"params": [p], "weight_decay": 0.2}, {"params": [q]}], weight_decay=0.01
    )
    assert [g["decoupled_wd"] for g in ax.param_groups] == [0.2, 0.01]
    assert [g["weight_decay"] for g in ax.param_groups] == [0.0, 0.0]


# ------------------------------------------------------------------------ subclassed bases
class _KwAdam(torch.optim.Adam):
    def __init__(self, params, lr=1e-3, **kw):  # type: ignore[no-untyped-def]
        super().__init__(params, lr=lr, **kw)


class _AscentSGD(torch.optim.SGD):
    """Passes maximize=True to its base internally: not in its own signature."""

    def __init__(self, params, lr=0.1, momentum=0.0):  # type: ignore[no-untyped-def]
        super().__init__(params, lr=lr, momentum=momentum, maximize=True)


@pytest.mark.parametrize(
    "base,kw",
    [
        (_KwAdam, {"lr": 0.05}),
        (_KwAdam, {"lr": 0.05, "betas": (0.5, 0.6)}),
        (_AscentSGD, {"momentum": 0.9}),
    ],
)
def test_subclass_hyperparameters_come_from_its_init(base, kw):
    base([torch.zeros(1, requires_grad=True)])  # torch wraps its step: the adapter still fits
    pa, pb = _pair()
    opt = signify.signify(base, sign=False)([pa], **kw)
    assert type(opt.chain[0]).__name__ in ("AdamAdapter", "SGDAdapter")
    assert _run_both(opt, base([pb], **kw), pa, pb) < 1e-6


def test_subclass_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="betaz"):
        signify.signify(_KwAdam)([torch.zeros(2, requires_grad=True)], betaz=(0.5, 0.6))


# ------------------------------------------------------------------- hyperparameter values
@pytest.mark.parametrize(
    "change",
    [
        lambda o, i: o.param_groups[0].__setitem__("lr", np.float32(0.05 * (i + 1))),
        lambda o, i: o.param_groups[0].__setitem__("lr", torch.tensor(0.5) if i == 1 else 0.1),
        lambda o, i: (
            o.param_groups[0].__setitem__("betas", (torch.tensor(0.8), 0.9)) if i == 2 else None
        ),
    ],
    ids=["numpy-lr", "tensor-then-float-lr", "tensor-betas"],
)
def test_changed_hyperparameters_are_used_like_torch(change):
    pa, pb = _pair()
    opt = signify.signify(torch.optim.Adam, sign=False)([pa], lr=0.1)
    assert _run_both(opt, torch.optim.Adam([pb], lr=0.1), pa, pb, change=change) < 1e-5


def test_numpy_and_tensor_hyperparameters_at_construction():
    pa, pb = _pair()
    kw = {"lr": np.float32(0.1), "betas": (torch.tensor(0.9), torch.tensor(0.99))}
    opt = signify.signify(torch.optim.Adam, sign=False)([pa], **kw)
    assert _run_both(opt, torch.optim.Adam([pb], **kw), pa, pb) < 1e-5


# -------------------------------------------------------------------------- checkpoints
def test_torch_checkpoint_keeps_the_chains_group_keys():
    p, _ = _pair()
    t = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.randn(6)
    t.step()
    q = p.detach().clone().requires_grad_()
    sto = signify.signify(torch.optim.SGD, stochastic=True)([q], lr=0.1, momentum=0.9)
    sto.load_state_dict(copy.deepcopy(t.state_dict()))
    q.grad = torch.randn(6)
    sto.step()  # needs scale_beta, which the torch checkpoint lacks
    assert sto.param_groups[0]["scale_beta"] == 1.0
    sig = signify.Signum([q], lr=0.1, weight_decay=0.5)
    sig.load_state_dict(copy.deepcopy(t.state_dict()))
    assert sig.param_groups[0]["decoupled_wd"] == 0.5


def test_checkpoint_with_number_step_loads():
    p, _ = _pair()
    t = torch.optim.Adam([p])
    p.grad = torch.randn(6)
    t.step()
    sd = t.state_dict()
    sd["state"][0]["step"] = 1  # torch < 1.12 saved numbers
    opt = signify.signify(torch.optim.Adam)([p])
    opt.load_state_dict(sd)
    assert torch.is_tensor(opt.state[p]["step"]) and opt.state[p]["step"].item() == 1


def test_state_dict_hooks_see_signifys_entry_and_pre_hooks_run_first():
    p, _ = _pair()
    opt = signify.Signum([p], lr=0.1)
    seen: dict[str, object] = {}
    opt.register_state_dict_post_hook(lambda o, sd: seen.update(post="signify" in sd))
    sd = opt.state_dict()
    assert seen["post"] is True

    def mend(o, sd):  # type: ignore[no-untyped-def]
        seen["pre"] = "signify" in sd
        return dict(sd, param_groups=[dict(g, lr=0.3) for g in sd["param_groups"]])

    bad = dict(sd, param_groups=[dict(g, lr=-5.0) for g in sd["param_groups"]])
    opt.register_load_state_dict_pre_hook(mend)
    opt.register_load_state_dict_post_hook(lambda o: seen.update(lpost=o.param_groups[0]["lr"]))
    opt.load_state_dict(bad)  # refused without the hook, mended by it
    assert seen["pre"] is True and seen["lpost"] == 0.3 == opt.param_groups[0]["lr"]


def test_instances_of_made_classes_pickle_and_continue():
    pa, _ = _pair()
    opt = signify.signify(torch.optim.Adam, stochastic=True)([pa], lr=0.1, seed=3)
    pa.grad = torch.randn(6)
    opt.step()
    clone = pickle.loads(pickle.dumps(opt))
    assert type(clone) is type(opt)  # the same class within one process
    qa = clone.param_groups[0]["params"][0]
    g = torch.randn(6)
    pa.grad, qa.grad = g.clone(), g.clone()
    opt.step()
    clone.step()
    assert torch.equal(pa, qa)


# ------------------------------------------------------------------------------ refusals
def test_sets_of_parameters_are_refused_like_torch():
    p, q = _pair()
    with pytest.raises(TypeError, match="params"):
        signify.signify(torch.optim.SGD)({p}, lr=0.1)
    opt = signify.signify(torch.optim.SGD)([p], lr=0.1)
    with pytest.raises(TypeError, match="param_group"):
        opt.add_param_group({"params": {q}})
    with pytest.raises(ValueError, match="differentiable"):
        opt.add_param_group({"params": [q], "differentiable": True})
    assert len(opt.param_groups) == 1


def test_closure_bases_and_foreign_instances_are_refused():
    with pytest.raises(TypeError, match="closure"):
        signify.signify(torch.optim.LBFGS)
    p, _ = _pair()
    with pytest.raises(TypeError, match="opt must be a Adam"):
        signify.signify(torch.optim.Adam).from_optimizer(torch.optim.SGD([p], lr=0.1))


def test_a_closure_may_return_anything_as_in_torch():
    p, _ = _pair()
    opt = signify.signify(torch.optim.SGD)([p], lr=0.1)
    p.grad = torch.randn(6)
    assert opt.step(lambda: "not a loss") == "not a loss"
    assert opt.step(lambda: np.float32(2.0)) == 2.0


@pytest.mark.parametrize("flatten", [False, True])
def test_state_entries_replaced_between_steps_are_used_like_torch(flatten):
    """Resetting a moment by assignment, or dropping a parameter's state, as users of torch
    do: the next step must use the new entries (a cached plan kept the old tensors)."""
    pa, pb = _pair()
    opt = signify.signify(torch.optim.Adam, sign=False, flatten=flatten)([pa], lr=0.1)
    ref = torch.optim.Adam([pb], lr=0.1)

    def change(o, i):  # type: ignore[no-untyped-def]
        p = o.param_groups[0]["params"][0]
        if i == 2:
            o.state[p]["exp_avg"] = torch.zeros(6)
        if i == 3:
            o.state[p] = {}

    assert _run_both(opt, ref, pa, pb, steps=5, change=change) < 1e-5
    assert sorted(opt.state[pa]) == sorted(ref.state[pb])


def test_numpy_weight_decay_is_applied():
    """A numpy hyperparameter is a number for the graph's settings too (decay on)."""
    pa, pb = _pair()
    opt = signify.signify(torch.optim.AdamW, sign=False)([pa], lr=0.1, weight_decay=np.float32(0.5))
    assert _run_both(opt, torch.optim.AdamW([pb], lr=0.1, weight_decay=0.5), pa, pb) < 1e-5


def test_a_warmup_from_lr_zero_compiles_nothing_new():
    """lr only scales the step: crossing 0 must not build (and compile) a second graph set.
    Eager steps go through the same cache of step functions, keyed as compiled ones are, so
    the count is the compiled graphs' without paying for compiling them."""
    ps = [torch.nn.Parameter(torch.randn(5)) for _ in range(3)]
    opt = signify.signify(torch.optim.Adam, stochastic=True, compile=False)(ps, lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 3))
    graphs = []
    for _ in range(4):
        for p in ps:
            p.grad = torch.randn(5)
        opt.step()
        sched.step()
        graphs.append(len(opt._executor._compiled))
    assert graphs[0] == graphs[-1] > 0


def test_from_optimizer_keeps_group_keys_a_subclass_sets_through_kwargs():
    _, pb = _pair()
    base = _KwAdam([{"params": [pb], "betas": (0.5, 0.6)}], lr=0.05)
    opt = signify.signify(_KwAdam, sign=False).from_optimizer(base)
    assert opt.param_groups[0]["betas"] == (0.5, 0.6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_step_under_another_default_dtype_saves_a_loadable_state(dtype):
    """Lightning's bf16-true sets the default dtype while a manual step runs: the
    optimizer's own scalars (skip counter, ALIAS accumulators) stay float32."""
    p = torch.nn.Parameter(torch.randn(4))
    opt = signify.signify(torch.optim.SGD, stepsize="alias")([p])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        p.grad = torch.randn(4, dtype=torch.float32)
        opt.step()
    finally:
        torch.set_default_dtype(previous)
    shared = opt.state_dict()["signify"]["shared"]
    assert shared["nonfinite"]["skipped"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in shared["alias"].values() if v.is_floating_point())
    fresh = signify.signify(torch.optim.SGD, stepsize="alias")([torch.nn.Parameter(torch.randn(4))])
    fresh.load_state_dict(opt.state_dict())


@pytest.mark.parametrize("kind", ["stochastic", "alias", "blocks"])
def test_resume_through_torch_distributed_checkpoint_helpers_is_exact(kind):
    """get/set_optimizer_state_dict pass only 'state' and 'param_groups' on: signify's entry
    rides in the first group too, so the seed, counters, scalars and block clock resume."""
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    makers = {
        "stochastic": lambda m, s: signify.signify(torch.optim.Adam, stochastic=True)(
            m.named_parameters(), lr=1e-2, seed=s
        ),
        "alias": lambda m, s: signify.signify(torch.optim.SGD, stepsize="alias")(
            m.named_parameters(), seed=s
        ),
        "blocks": lambda m, s: signify.signify(torch.optim.Adam, blocks="cyclic")(
            m.named_parameters(), lr=1e-2, seed=s
        ),
    }
    xs = torch.randn(8, 16, 8)

    def model():  # type: ignore[no-untyped-def]
        torch.manual_seed(1)
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))

    def step(m, o, k):  # type: ignore[no-untyped-def]
        o.zero_grad()
        m(xs[k]).square().mean().backward()
        o.step()

    m, m2 = model(), model()
    opt = makers[kind](m, 3)
    for k in range(3):
        step(m, opt, k)
    sd = copy.deepcopy(get_optimizer_state_dict(m, opt))
    assert set(sd) == {"state", "param_groups"}
    m2.load_state_dict(m.state_dict())
    opt2 = makers[kind](m2, 99)
    set_optimizer_state_dict(m2, opt2, sd)
    assert all("signify" not in g for g in opt2.param_groups)
    for k in range(3, 8):
        step(m, opt, k)
        step(m2, opt2, k)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_run_and_read_state_dict_leaves_the_live_state_and_resumes_chain_state():
    """Exporting the base's state must not write into opt.state, and loading must keep the
    chain's own entries (the stochastic sign's running max) out of the base's."""
    import warnings

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make = signify.signify(torch.optim.ASGD, stochastic=True)
    opt = make([p], lr=0.1, seed=1)
    for _ in range(2):
        p.grad = torch.randn(4)
        opt.step()
    keys = sorted(opt.state[p])
    sd = copy.deepcopy(opt.state_dict())
    assert sorted(opt.state[p]) == keys and "eta" in sd["state"][0]
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = make([q], lr=0.1, seed=2)
    opt2.load_state_dict(sd)
    assert sorted(opt2.state[q]) == keys
    for _ in range(3):
        g = torch.randn(4)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        opt2.step()
    assert torch.equal(p, q)


def test_a_group_taken_from_a_preset_and_added_again_keeps_its_decay():
    a, b = _pair()
    opt = signify.Signum([a], lr=0.1, weight_decay=0.3)
    group = dict(opt.param_groups[0], params=[b])
    opt.add_param_group(group)
    assert opt.param_groups[1]["decoupled_wd"] == 0.3


class _Holder:
    class SubAdam(signify.signify(torch.optim.Adam)):  # type: ignore[misc]
        def extra(self) -> int:
            return 42


def test_a_users_subclass_of_a_made_class_pickles_as_itself():
    opt = _Holder.SubAdam([torch.nn.Parameter(torch.randn(3))], lr=0.1)
    assert type(pickle.loads(pickle.dumps(opt))) is _Holder.SubAdam
    assert type(copy.deepcopy(opt)) is _Holder.SubAdam


def test_the_entry_survives_dcp_with_an_empty_first_group():
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    def model():  # type: ignore[no-untyped-def]
        torch.manual_seed(1)
        return torch.nn.Linear(4, 1)

    m, m2 = model(), model()
    make = signify.signify(torch.optim.Adam, stochastic=True)
    opt = make([{"params": []}, {"params": list(m.parameters())}], lr=1e-2, seed=3)
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    sd = copy.deepcopy(get_optimizer_state_dict(m, opt))
    opt2 = make([{"params": []}, {"params": list(m2.parameters())}], lr=1e-2, seed=9)
    set_optimizer_state_dict(m2, opt2, sd)
    assert opt2.state_dict()["signify"]["seed"] == 3


def test_numpy_bool_flags_are_used():
    pa, pb = _pair()
    opt = signify.signify(torch.optim.Adam, sign=False)([pa], lr=0.1)
    ref = torch.optim.Adam([pb], lr=0.1)

    def change(o, i):  # type: ignore[no-untyped-def]
        if i == 1:
            o.param_groups[0]["maximize"] = np.True_

    assert _run_both(opt, ref, pa, pb, steps=3, change=change) < 1e-5


def test_stosignsgd_group_momentum_stays_an_ema():
    p, q = _pair()
    opt = signify.StoSignSGD([{"params": [p], "momentum": 0.5}, {"params": [q]}], lr=0.1)
    assert opt.param_groups[0]["dampening"] == 0.5 and opt.param_groups[1]["dampening"] == 0.9


def test_a_preset_from_a_torch_optimizer_continues_as_its_formula():
    """Signum.from_optimizer(sgd): the groups' settings in the preset's terms (decoupled
    decay) and SGD's summed momentum buffer rescaled to the EMA's average; the next step is
    ``m = b m + (1 - b) g``, ``x -= lr (sign(m) + wd x)`` in float64."""
    torch.manual_seed(3)
    a, b = torch.nn.Parameter(torch.randn(7)), torch.nn.Parameter(torch.randn(4))
    sgd = torch.optim.SGD(
        [{"params": [a]}, {"params": [b], "weight_decay": 0.0, "lr": 0.05}],
        lr=0.1,
        momentum=0.8,
        weight_decay=0.01,
    )
    for _ in range(3):
        a.grad, b.grad = torch.randn(7), torch.randn(4)
        sgd.step()
    bufs = [sgd.state[p]["momentum_buffer"].double().clone() for p in (a, b)]
    xs = [p.detach().double().clone() for p in (a, b)]
    opt = signify.Signum.from_optimizer(sgd)
    assert [g["decoupled_wd"] for g in opt.param_groups] == [0.01, 0.0]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0]
    grads = [torch.randn(7), torch.randn(4)]
    a.grad, b.grad = grads[0].clone(), grads[1].clone()
    opt.step()
    for p, x, buf, g, lr, wd in zip((a, b), xs, bufs, grads, (0.1, 0.05), (0.01, 0.0)):
        m = 0.8 * (0.2 * buf) + 0.2 * g.double()
        want = x - lr * (torch.sign(m) + wd * x)
        assert torch.allclose(p.detach().double(), want, atol=1e-6)
    assert signify.SignAdamax.from_optimizer(
        torch.optim.Adamax([a], weight_decay=0.1)
    ).param_groups[0]["decoupled_wd"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="nesterov"):
        signify.Signum.from_optimizer(torch.optim.SGD([a], lr=0.1, momentum=0.9, nesterov=True))
    with pytest.raises(TypeError, match="opt must be a SGD"):
        signify.StoSignSGD.from_optimizer(torch.optim.Adamax([a]))


@pytest.mark.parametrize("preset", ["Signum", "StoSignSGD"])
def test_a_scheduler_cycling_momentum_moves_the_ema(preset):
    """OneCycleLR writes only ``momentum``: the preset's EMA must follow it (``m = b_t m +
    (1 - b_t) g``), not keep the first dampening. Float64 reference: the buffer for both, the
    parameters for Signum (StoSignSGD's step is random)."""
    torch.manual_seed(5)
    p = torch.nn.Parameter(torch.randn(9))
    opt = getattr(signify, preset)([p], lr=0.1, seed=0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    x, m = p.detach().double().clone(), None
    for _ in range(6):
        g = torch.randn(9)
        p.grad = g.clone()
        beta, lr = opt.param_groups[0]["momentum"], opt.param_groups[0]["lr"]
        m = g.double() if m is None else beta * m + (1 - beta) * g.double()
        opt.step()
        sched.step()
        x = x - lr * torch.sign(m)
        assert torch.allclose(opt.state[p]["momentum_buffer"].double(), m, atol=1e-6)
        if preset == "Signum":
            assert torch.allclose(p.detach().double(), x, atol=1e-6)
    assert opt.param_groups[0]["momentum"] != 0.9  # the scheduler did move it
