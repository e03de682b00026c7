"""Stepsize oracles: ALIAS (options I/II, momentum, weight decay, scopes), memory-efficient
ALIAS, the ALIAS Adam estimate and the constant stepsize, step by step against the float64
references of `tests.alias_reference`; lr as a multiplier, logging, checkpoints, skipped steps,
no host sync, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import signify
from signify.transforms import DecoupledWeightDecay, Sign
from signify.transforms.stepsize import ConstantStepsize, StepsizeOracle, make_stepsize
from signify.transforms.stepsize_alias import Alias, AliasLowMem, pack_signs, unpack_signs
from signify.transforms.stepsize_alias_adam import AliasAdam
from tests.alias_reference import RefAlias, RefAliasAdam

SHAPES = [(5, 3), (3,), (4,)]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls: intra-op threads only add contention on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Problem:
    """Softmax regression (W, b) plus a smooth quartic in a third tensor v: three tensors,
    float64, fresh random data per test. Gradients in numpy (the tests run thousands of steps;
    autograd on tiny tensors is slower than the optimizer)."""

    def __init__(self, n=64, seed=None):
        seed = int(torch.randint(0, 2**31, ())) if seed is None else seed
        rng = np.random.default_rng(seed)
        self.a = rng.standard_normal((n, 5))
        self.y = np.eye(3)[rng.integers(0, 3, n)]
        self.c = rng.standard_normal(4)
        self.x0 = [torch.from_numpy(rng.standard_normal(s) * 0.5) for s in SHAPES]

    def grads(self, xs):
        w, b, v = xs
        z = self.a @ w + b
        z = z - z.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        r = v - self.c
        loss = -(self.y * np.log(p)).sum(1).mean() + 0.25 * (r**4).sum() + 0.5 * (r**2).sum()
        dz = (p - self.y) / len(self.a)
        return float(loss), [self.a.T @ dz, dz.sum(0), r**3 + r]

    def params(self):
        return [x.clone().requires_grad_(True) for x in self.x0]


def feed(problem, params, opt):
    """Set the gradients at the current parameters; hand the loss to the optimizer."""
    f, gs = problem.grads([p.detach().numpy() for p in params])
    for p, g in zip(params, gs):
        p.grad = torch.from_numpy(g)
    opt.set_loss(f)
    return f


def run_pair(problem, make_opt, ref, steps, lrs=None, groups=None, slot_of_group=None):
    """Step signify and the reference side by side; compare iterates and stepsizes."""
    params = problem.params()
    groups = groups or [[0, 1, 2]]
    opt = make_opt([{"params": [params[i] for i in g]} for g in groups])
    xs = [x.numpy().copy() for x in problem.x0]
    sched = None
    if lrs is not None:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lrs[t])
    for t in range(steps):
        # Both take the oracle's answer at signify's iterate. The iterates differ by the
        # float32 rounding of the stepsize (1e-7), and a gradient coordinate within that of
        # zero would flip a sign and part them by 2 gamma (seen once in 800 runs).
        f = feed(problem, params, opt)
        lr = 1.0 if lrs is None else lrs[t]
        gam = ref.step(xs, [p.grad.numpy().copy() for p in params], lr=lr, f0=f)
        opt.step()
        if sched is not None:
            sched.step()
        for p, x in zip(params, xs):
            np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-5, atol=1e-6)
        got = [s.detach().double().numpy() for s in opt.stepsizes()]
        for gi, s in enumerate(got):
            want = np.array([gam[i] for i in (slot_of_group or (lambda g: [0]))(gi)]) * lr
            np.testing.assert_allclose(s.reshape(-1), want.reshape(-1), rtol=1e-5)
    return opt, params


def sgd(**kw):
    opts = {k: kw.pop(k) for k in ("compile", "compile_chunk", "nonfinite") if k in kw}
    return signify.signify(torch.optim.SGD, **opts, **kw)


@pytest.mark.parametrize("option", [1, 2])
def test_alias_matches_reference(option):
    pb = Problem()
    f_lower = None if option == 1 else 0.0
    ref = RefAlias([[0, 1, 2]], option=option, f_lower=f_lower, d_0=1e-6, gamma_0=1e-3)
    make = lambda groups: sgd(stepsize=Alias(f_lower=f_lower))(groups)  # noqa: E731
    opt, _ = run_pair(pb, make, ref, 40)
    s = opt.shared_state(torch.device("cpu"))["alias"]
    np.testing.assert_allclose(s["eta"].item(), ref.eta[0], rtol=1e-5)
    if option == 1:
        np.testing.assert_allclose(s["d"].item(), ref.d[0], rtol=1e-5)
    else:
        np.testing.assert_allclose(s["f0"].item(), ref.f0, rtol=1e-6)


def test_alias_momentum_weight_decay_eta0_clamp():
    """ALIAS(beta): gamma from raw gradients, direction sign(buf); decoupled decay scaled
    by gamma; eta_0 > 0 gives the paper's first step; the clamp caps gamma."""
    pb = Problem()
    ref = RefAlias([[0, 1, 2]], d_0=1e-3, eta_0=5.0, gamma_max=0.05, momentum=0.9, weight_decay=0.1)
    chain = [Sign(), DecoupledWeightDecay(0.1), Alias(d_0=1e-3, eta_0=5.0, gamma_max=0.05)]
    make = lambda groups: signify.signify(torch.optim.SGD, chain)(groups, momentum=0.9)  # noqa: E731
    run_pair(pb, make, ref, 30)
    gammas = [g[0] for g in ref.history]
    assert gammas[0] == pytest.approx((1e-3 / 5.0) ** 0.5) and max(gammas) == 0.05  # clamp


def test_lowmem_matches_reference():
    pb = Problem()
    ref = RefAlias([[0, 1, 2]], lowmem=True, d_0=1e-6)
    run_pair(pb, lambda groups: sgd(stepsize="alias-lowmem")(groups), ref, 40)


def test_alias_compiled_matches_reference():
    """One compiled run: chunks of 2 and 1 tensors, the reductions in the prepass graph, the
    scalar math compiled too."""
    pb = Problem()
    ref = RefAlias([[0, 1, 2]], momentum=0.9)
    make = lambda groups: sgd(stepsize="alias", compile=True, compile_chunk=2)(  # noqa: E731
        groups, momentum=0.9
    )
    opt, _ = run_pair(pb, make, ref, 8)
    assert opt.compiled


def test_scopes_group_and_tensor():
    pb = Problem()
    groups = [[0, 1], [2]]
    ref = RefAlias(groups)
    make = lambda g: sgd(stepsize=Alias(scope="group"))(g)  # noqa: E731
    run_pair(pb, make, ref, 25, groups=groups, slot_of_group=lambda gi: [gi])
    ref = RefAlias([[0], [1], [2]])
    make = lambda g: sgd(stepsize=Alias(scope="tensor"))(g)  # noqa: E731
    pos = {0: [0, 1], 1: [2]}
    run_pair(pb, make, ref, 25, groups=groups, slot_of_group=lambda gi: pos[gi])


def test_lr_is_a_multiplier_default_one_and_schedulers_scale_it():
    pb = Problem()
    opt = sgd(stepsize="alias")(pb.params())
    assert opt.param_groups[0]["lr"] == 1.0
    assert sgd()(pb.params()).param_groups[0]["lr"] == pytest.approx(1e-3)  # base default
    lrs = [min(1.0, (t + 1) / 10) * 0.5 for t in range(31)]
    ref = RefAlias([[0, 1, 2]])
    run_pair(pb, lambda g: sgd(stepsize="alias")(g), ref, 30, lrs=lrs)
    # an explicit lr is kept, positionally too
    assert sgd(stepsize="alias")(pb.params(), 0.3).param_groups[0]["lr"] == 0.3


def test_alias_adam_matches_reference():
    """d from the Swin recurrence multiplies lr; the direction is the chain's sign(m).
    Gradients clipped to norm 1, as in the authors' runs (the estimate is in gradient units:
    unclipped, d can grow without bound)."""
    pb = Problem()
    params = pb.params()
    opt = signify.signify(torch.optim.Adam, stepsize=AliasAdam(beta=0.5, d_0=1e-3))(params)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3)  # keeps the base's lr
    ref = RefAliasAdam([[0], [1], [2]], beta=0.5, d_0=1e-3)
    m = [np.zeros(s) for s in SHAPES]
    xs = [x.numpy().copy() for x in pb.x0]

    def clipped(xs):
        gs = pb.grads(xs)[1]
        norm = np.sqrt(sum((g**2).sum() for g in gs))
        return [g / max(1.0, norm) for g in gs]

    for _ in range(30):
        gs = clipped([p.detach().numpy() for p in params])  # at signify's iterate (run_pair)
        ds = ref.multipliers([g.copy() for g in gs])
        m = [0.9 * mi + 0.1 * g for mi, g in zip(m, gs)]
        for x, mi, d in zip(xs, m, ds):
            x -= 1e-3 * d * np.sign(mi)
        for p, g in zip(params, gs):
            p.grad = torch.from_numpy(g)
        opt.step()
        for p, x in zip(params, xs):
            np.testing.assert_allclose(p.detach().numpy(), x, rtol=1e-5, atol=1e-6)
        got = opt.stepsizes()[0].double().numpy()
        np.testing.assert_allclose(got, 1e-3 * np.array(ds), rtol=1e-5)
    assert max(ds) > 1e-3  # the estimate moved


def test_constant_stepsize_is_the_null_transform():
    pb = Problem()
    a, b = pb.params(), pb.params()
    oa = sgd(stepsize="constant")(a, lr=0.01, momentum=0.9)
    ob = sgd()(b, lr=0.01, momentum=0.9)
    for _ in range(5):
        feed(pb, a, oa)
        oa.step()
        feed(pb, b, ob)
        ob.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert oa.stepsizes()[0].item() == pytest.approx(0.01)
    assert isinstance(make_stepsize("constant"), ConstantStepsize)


def test_option_two_needs_the_loss_and_takes_it_from_set_loss():
    params = [torch.randn(3, requires_grad=True)]
    opt = sgd(stepsize=Alias(f_lower=0.0))(params)
    params[0].grad = torch.randn(3)
    with pytest.raises(ValueError, match="set_loss"):
        opt.step()
    before = params[0].detach().clone()
    assert torch.equal(params[0], before)  # nothing moved
    opt.set_loss(torch.tensor(2.5))
    opt.step()
    assert opt.shared_state(torch.device("cpu"))["alias"]["f0"].item() == 2.5
    opt2 = sgd(stepsize=Alias(f_lower=1.0, f0=3.0))(params)
    opt2.step()
    assert opt2.shared_state(torch.device("cpu"))["alias"]["f0"].item() == 3.0
    # the closure's loss at x_0 is captured by step(closure), and only the first one
    opt3 = sgd(stepsize=Alias(f_lower=0.0))(params)
    target = torch.randn(3)
    losses = []

    def closure():
        opt3.zero_grad()
        loss = ((params[0] - target) ** 2).sum()
        loss.backward()
        losses.append(loss.item())
        return loss

    for _ in range(3):
        opt3.step(closure)
    f0 = opt3.shared_state(torch.device("cpu"))["alias"]["f0"].item()
    assert f0 == pytest.approx(losses[0]) and losses[1] != losses[0]
    gamma = opt3.stepsizes()[0].item()
    assert gamma == pytest.approx(
        (losses[0] / opt3.shared_state(torch.device("cpu"))["alias"]["eta"].item()) ** 0.5, rel=1e-5
    )


def test_nonfinite_first_loss_never_reaches_the_parameters():
    x = torch.randn(5, requires_grad=True)
    opt = sgd(stepsize=Alias(f_lower=0.0))([x])
    for t in range(4):
        x.grad = torch.randn(5)
        opt.set_loss(torch.tensor(float("inf")) if t == 0 else torch.tensor(2.0))
        opt.step()
        assert torch.isfinite(x).all()
    assert opt.shared_state(torch.device("cpu"))["alias"]["f0"].item() == 2.0
    assert torch.isfinite(opt.stepsizes()[0])


@pytest.mark.parametrize("spec", ["alias", "alias-lowmem", "alias-adam"])
def test_skipped_step_leaves_scalars_and_resume_is_exact(spec):
    torch.manual_seed(0)
    pb = Problem()
    a = pb.params()
    opt = sgd(stepsize=spec)(a, momentum=0.9)
    for _ in range(4):
        feed(pb, a, opt)
        opt.step()
    name = opt.chain[-2].name
    before = {k: v.clone() for k, v in opt.shared_state(torch.device("cpu"))[name].items()}
    st_before = copy.deepcopy(opt.state_dict())
    feed(pb, a, opt)
    a[0].grad[0, 0] = float("nan")
    opt.step()
    after = opt.shared_state(torch.device("cpu"))[name]
    for k in ("gamma", "eta", "d", "dtilde", "r"):
        if k in before:
            assert torch.equal(before[k], after[k]), k
    # resume from the checkpoint taken before the skipped step: identical continuation
    b = [x.detach().clone().requires_grad_(True) for x in a]
    opt_b = sgd(stepsize=spec)(b, momentum=0.9)
    opt_b.load_state_dict(st_before)
    for _ in range(3):
        feed(pb, a, opt)
        opt.step()
        feed(pb, b, opt_b)
        opt_b.step()
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_no_host_sync_during_step(monkeypatch):
    """No .item(), .tolist(), bool(tensor) or .cpu() while stepping (after the first)."""
    pb = Problem()
    params = pb.params()
    opts = [
        sgd(stepsize="alias")(params, momentum=0.9),
        sgd(stepsize=Alias(scope="tensor", f_lower=0.0))(params),
        sgd(stepsize="alias-lowmem")(params),
        signify.signify(torch.optim.Adam, stepsize="alias-adam")(params),
    ]
    for opt in opts:
        feed(pb, params, opt)
        opt.step()

    def boom(*a, **k):
        raise AssertionError("host sync in step()")

    for opt in opts:
        for _ in range(2):
            feed(pb, params, opt)
            with monkeypatch.context() as m:
                for name in ("item", "tolist", "__bool__", "cpu", "numpy", "__float__", "__int__"):
                    m.setattr(torch.Tensor, name, boom)
                opt.step()
                opt.stepsizes()


def test_packed_signs_round_trip_and_bound_property():
    for n in (1, 7, 8, 9, 100):
        g = torch.randn(n)
        packed = pack_signs(g)
        assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
        assert torch.equal(unpack_signs(packed, n), torch.where(g > 0, 1.0, -1.0))
    # the memory-efficient bound (algorithms.md 7.3) on random vectors, several scales
    for _ in range(200):
        n = int(torch.randint(1, 50, ()))
        g0 = torch.randn(n, dtype=torch.float64) * torch.rand(()) * 10
        g1 = g0 + torch.randn(n, dtype=torch.float64) * torch.rand(())
        true = (g1 - g0).abs().max()
        bound = torch.maximum(g1.max() - g0.min(), g0.max() - g1.min())
        assert bound >= true


def test_lowmem_state_is_one_bit_and_loads():
    params = [torch.randn(1000, requires_grad=True), torch.randn(13, requires_grad=True)]
    opt = sgd(stepsize="alias-lowmem")(params)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[params[0]]
    big = [k for k, v in st.items() if v.numel() > 1]
    assert big == ["alias_lowmem.bits"] and st[big[0]].numel() == 125
    opt2 = sgd(stepsize="alias-lowmem")(params)
    opt2.load_state_dict(opt.state_dict())
    assert torch.equal(opt2.state[params[0]]["alias_lowmem.bits"], st["alias_lowmem.bits"])


@pytest.mark.parametrize("cls", [Alias, AliasLowMem])
@pytest.mark.parametrize("move", ["unit", "auto"])
def test_move_unit_equals_measure_for_a_sign_direction(cls, move):
    pb = Problem()
    a, b = pb.params(), pb.params()
    oa = sgd(stepsize=cls(move="measure"))(a, momentum=0.9)
    ob = sgd(stepsize=cls(move=move))(b, momentum=0.9)
    for _ in range(10):
        feed(pb, a, oa)
        oa.step()
        feed(pb, b, ob)
        ob.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "cls, kw, scope, unit",
    [
        (Alias, {}, "global", True),
        (Alias, {}, "group", True),
        (Alias, {}, "tensor", False),  # a tensor with a zero gradient has not moved
        (Alias, {"stochastic": True}, "tensor", True),
        (Alias, {"sign": False}, "global", False),  # any direction: measured
        (AliasLowMem, {}, "global", False),  # an l1 move counts the sign's zeros
        (AliasLowMem, {"stochastic": True}, "global", True),
    ],
)
def test_move_auto_takes_the_step_as_known_only_where_exact(cls, kw, scope, unit):
    params = [torch.randn(6, requires_grad=True)]
    opt = sgd(stepsize=cls(scope=scope), **kw)(params)
    assert opt.chain[-2]._unit is unit


def test_move_auto_measures_a_tensor_that_did_not_move():
    """Per-tensor scope, one tensor's gradient 0 everywhere (so it did not move): "auto"
    measures its move (0) as "measure" does, where "unit" would take a full step and feed
    the next step's l1 / move into that tensor's eta."""
    runs = {}
    for move in ("auto", "measure", "unit"):
        torch.manual_seed(0)
        params = [torch.randn(8, requires_grad=True), torch.randn(5, requires_grad=True)]
        opt = sgd(stepsize=Alias(scope="tensor", move=move))(params)
        for step in range(3):
            params[0].grad = torch.randn(8)
            params[1].grad = torch.zeros(5) if step == 0 else torch.randn(5)
            opt.step()
        runs[move] = opt.shared_state(torch.device("cpu"))["alias"]["eta"].clone()
    assert torch.equal(runs["auto"], runs["measure"])
    assert runs["unit"][1] > runs["measure"][1]


def test_one_instance_serves_several_optimizers_and_deepcopies():
    cls = sgd(stepsize=Alias(scope="tensor"))
    pb = Problem()
    a, b = pb.params(), pb.params()[:2]
    oa, ob = cls(a), cls(b)
    for _ in range(3):
        feed(pb, a, oa)
        oa.step()
        for p, q in zip(b, a):
            p.grad = q.grad.clone()
        ob.step()
    assert oa.chain[-2] is not ob.chain[-2]
    assert len(oa.stepsizes()[0]) == 3 and len(ob.stepsizes()[0]) == 2
    oc = copy.deepcopy(oa)
    c = oc.param_groups[0]["params"]
    assert oc.chain[-2]._opt is oc
    feed(pb, a, oa)
    for p, q in zip(c, a):
        p.grad = q.grad.clone()
    oa.step()
    oc.step()
    for p, q in zip(c, a):
        assert torch.equal(p, q)


def test_new_param_group_gets_its_own_slot():
    a, b = torch.randn(4, requires_grad=True), torch.randn(3, requires_grad=True)
    opt = sgd(stepsize=Alias(scope="group"))([a])
    a.grad = torch.randn(4)
    opt.step()
    opt.add_param_group({"params": [b], "lr": 0.5})
    for _ in range(3):
        a.grad, b.grad = torch.randn(4), torch.randn(3)
        opt.step()
    s = opt.stepsizes()
    assert len(s) == 2 and s[1].item() > 0
    assert opt.shared_state(torch.device("cpu"))["alias"]["gamma"].numel() == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="stepsize"):
        make_stepsize("prodigy")
    with pytest.raises(TypeError, match="stepsize"):
        make_stepsize(3)
    with pytest.raises(TypeError, match="StepsizeOracle"):
        make_stepsize(Sign())
    with pytest.raises(ValueError, match="stepsize"):
        signify.signify(torch.optim.SGD, stepsize="nope")
    with pytest.raises(ValueError, match="scope"):
        Alias(scope="layer")
    with pytest.raises(ValueError, match="reduce"):
        Alias(reduce="max")
    with pytest.raises(ValueError, match="move"):
        Alias(move="guess")
    with pytest.raises(ValueError, match="d_0"):
        Alias(d_0=0.0)
    with pytest.raises(ValueError, match="eta_0"):
        Alias(eta_0=-1.0)
    with pytest.raises(ValueError, match="gamma_max"):
        AliasLowMem(gamma_max=0.0)
    with pytest.raises(ValueError, match="gamma_0"):
        Alias(gamma_0=float("nan"))
    with pytest.raises(TypeError, match="f_lower"):
        Alias(f_lower="0")
    with pytest.raises(ValueError, match="f_lower"):
        Alias(f0=1.0)
    with pytest.raises(ValueError, match="beta"):
        AliasAdam(beta=1.0)
    with pytest.raises(TypeError, match="d_0"):
        AliasAdam(d_0=True)
    # an oracle placed before the sign has no direction to scale
    with pytest.raises(ValueError, match="direction"):
        signify.signify(torch.optim.SGD, [Alias(), Sign()])
    assert isinstance(make_stepsize("alias"), StepsizeOracle)


@pytest.mark.parametrize("scope", ["global", "group"])
def test_stepsizes_report_the_last_step_when_a_tensor_sat_out(scope):
    """A tensor without a gradient keeps its old step: the report is the step just taken."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(4) * 1e-3)
    opt = signify.signify(torch.optim.SGD, stepsize=Alias(scope=scope))([a, b])
    for t in range(6):
        a.grad = torch.randn(3) if t == 0 else None
        b.grad = torch.randn(4)
        before = b.detach().clone()
        opt.step()
    moved = (b.detach() - before).abs().max().item()
    assert opt.stepsizes()[0].item() == pytest.approx(moved, rel=2e-3)  # float32 ulps


def test_blocks_that_drop_state_with_a_stepsize_oracle_warn():
    """The default inactive='drop' deletes ALIAS's previous gradients at each switch: one
    block a step then keeps gamma at gamma_0 for good, which the warning says."""
    from signify.transforms.blocks import Blocks

    with pytest.warns(UserWarning, match="inactive='keep'"):
        cls = signify.signify(torch.optim.SGD, blocks="cyclic", stepsize="alias")
    lin = [torch.nn.Linear(3, 3) for _ in range(3)]
    model = torch.nn.Sequential(*lin)
    opt = cls(model.named_parameters())
    for _ in range(6):
        model(torch.randn(4, 3)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    assert opt.stepsizes()[0].item() == pytest.approx(1e-3)  # what the warning is about
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        signify.signify(torch.optim.SGD, blocks=Blocks("cyclic", inactive="keep"), stepsize="alias")
