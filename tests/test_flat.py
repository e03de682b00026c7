"""flatten=True: buckets re-homed into one buffer. The same steps as per tensor (deterministic
chains, bit for bit), compiled == eager, the bookkeeping that keeps the buffers right
(gradients allocated anew, missing gradients, replaced parameters, loaded state, unflatten),
no host sync in steady state, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import signify
from signify.flat import unflatten
from signify.transforms.stepsize_alias import Alias
from tests.test_compile import _no_host_sync

FAMILIES = [
    ("signum", lambda: signify.Signum, {"momentum": 0.9}),
    (
        "sgd-nesterov-wd",
        lambda: signify.signify(torch.optim.SGD),
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.01},
    ),
    ("adam", lambda: signify.signify(torch.optim.Adam), {}),
    ("adamw", lambda: signify.signify(torch.optim.AdamW), {"weight_decay": 0.1}),
    ("adamax", lambda: signify.signify(torch.optim.Adamax), {}),
    ("rmsprop", lambda: signify.signify(torch.optim.RMSprop), {"momentum": 0.5}),
    ("adagrad", lambda: signify.signify(torch.optim.Adagrad), {"lr_decay": 0.01}),
    ("nadam", lambda: signify.signify(torch.optim.NAdam), {}),
    ("radam", lambda: signify.signify(torch.optim.RAdam), {"weight_decay": 0.01}),
    ("adam-nosign", lambda: signify.signify(torch.optim.Adam, sign=False), {}),
]


class Net(torch.nn.Module):
    """A conv (channels_last), two linears with biases, a norm: several shapes and layouts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.conv.to(memory_format=torch.channels_last)
        self.fc1 = torch.nn.Linear(4 * 4 * 4, 12)
        self.norm = torch.nn.LayerNorm(12)
        self.fc2 = torch.nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)).flatten(1)
        return self.fc2(self.norm(F.relu(self.fc1(h))))


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 6, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def _train(cls, kw, flatten, steps=6, compile_=False, every=None, seed=None, **opt_kw):
    """Train a fresh Net (the same initial weights for a given seed); ``every(step, model,
    opt)`` runs before each backward."""
    torch.manual_seed(0 if seed is None else seed)
    model = Net()
    opt = cls(
        model.parameters(), lr=1e-2, flatten=flatten, compile=compile_, seed=5, **kw, **opt_kw
    )
    for s in range(steps):
        if every is not None:
            every(s, model, opt)
        x, y = _data(s)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=(s % 2 == 0))  # both ways a gradient can come back
    return model, opt


def _same(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("name, cls, kw", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_flat_steps_equal_per_tensor_steps(name, cls, kw):
    ref, _ = _train(cls(), kw, False)
    got, opt = _train(cls(), kw, True)
    _same(ref, got)
    plan = opt._executor._plan
    assert len(plan.flats) == 1 and all(c.flat is not None for c in plan.chunks())


def test_buffers_are_shared_and_layouts_kept():
    model, opt = _train(signify.signify(torch.optim.Adam, stochastic=True), {}, True, steps=2)
    opt.zero_grad(set_to_none=False)
    ps = list(model.parameters())
    assert len({p.untyped_storage().data_ptr() for p in ps}) == 1
    assert len({p.grad.untyped_storage().data_ptr() for p in ps}) == 1
    for key in ("exp_avg", "exp_avg_sq"):
        assert len({opt.state[p][key].untyped_storage().data_ptr() for p in ps}) == 1
    assert model.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert opt.state[model.conv.weight]["exp_avg"].stride() == model.conv.weight.stride()


def test_stochastic_compiled_equals_eager_and_moves_by_lr():
    # the chain of tests/test_compile.py (one tensor a graph): its compiled graphs are reused
    cls = signify.signify(torch.optim.Adam, stochastic=True)
    eager, _ = _train(cls, {}, True, steps=3)
    comp, opt = _train(cls, {}, True, steps=3, compile_=True)
    assert opt.compiled
    _same(eager, comp)
    # a sign step moves every coordinate by exactly lr (0 where the argument is exactly 0)
    torch.manual_seed(0)
    start = Net()
    for p, q in zip(start.parameters(), comp.parameters()):
        moved = (q.detach() - p.detach()).abs() / 1e-2
        assert torch.allclose(moved.round(), moved, atol=1e-3)  # whole steps of lr
        assert (moved.round() <= 3).all() and (moved.round() % 2 == 1).float().mean() > 0.9


def test_missing_gradient_steps_per_tensor_and_keeps_counters_right():
    """A parameter without a gradient for one step: that step (and every later one, its step
    counter now differs) runs per tensor over the same memory, as the per-tensor optimizer."""

    def drop(step, model, opt):
        if step == 2:
            model.fc2.bias.requires_grad_(False)
            model.fc2.bias.grad = None
        if step == 3:
            model.fc2.bias.requires_grad_(True)

    cls = signify.signify(torch.optim.Adam)
    ref, _ = _train(cls, {}, False, every=drop)
    with pytest.warns(UserWarning, match="disagree on 'step'"):
        got, opt = _train(cls, {}, True, every=drop)
    _same(ref, got)
    assert not opt._executor._plan.flats  # counters disagree: per tensor from then on


def test_replaced_parameter_data_is_rehomed():
    def replace(step, model, opt):
        if step == 3:
            with torch.no_grad():
                model.fc1.weight.data = model.fc1.weight.data.clone()

    cls = signify.signify(torch.optim.AdamW)
    ref, _ = _train(cls, {"weight_decay": 0.1}, True)
    got, _ = _train(cls, {"weight_decay": 0.1}, True, every=replace)
    _same(ref, got)
    ps = list(got.parameters())
    assert len({p.untyped_storage().data_ptr() for p in ps}) == 1


def test_state_dict_round_trips_between_layouts():
    cls = signify.signify(torch.optim.Adam)
    for src_flat in (False, True):
        model, opt = _train(cls, {}, src_flat, steps=3)
        sd = copy.deepcopy(opt.state_dict())  # torch's load keeps references: no sharing
        twin = Net()
        twin.load_state_dict(model.state_dict())
        opt2 = cls(twin.parameters(), lr=1e-2, flatten=not src_flat, seed=5)
        opt2.load_state_dict(sd)
        for m, o in ((model, opt), (twin, opt2)):
            x, y = _data(99)
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
        _same(model, twin)


def test_unflatten_gives_each_parameter_its_storage_and_steps_go_on():
    cls = signify.signify(torch.optim.Adam)
    ref, _ = _train(cls, {}, True, steps=5)
    box = {}

    def cut(step, model, opt):
        if step == 3:
            unflatten(opt)
            box["storages"] = len({p.untyped_storage().data_ptr() for p in model.parameters()})

    got, _ = _train(cls, {}, True, steps=5, every=cut)
    assert box["storages"] == len(list(got.parameters()))
    _same(ref, got)


def test_groups_and_dtypes_get_buckets_of_their_own():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(torch.randn(7))
    c = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    d = torch.nn.Parameter(torch.randn(6))
    groups = [{"params": [a, b, c]}, {"params": [d], "lr": 0.5}]
    opt = signify.Signum(groups, lr=0.1, momentum=0.9, flatten=True)
    ref = signify.Signum(
        [
            {
                "params": [x.detach().clone().requires_grad_() for x in g["params"]],
                **{k: v for k, v in g.items() if k != "params"},
            }
            for g in groups
        ],
        lr=0.1,
        momentum=0.9,
    )
    refs = [p for g in ref.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip((a, b, c, d), refs):
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    for p, q in zip((a, b, c, d), refs):
        assert torch.equal(p.detach(), q.detach())
    assert len(opt._executor._plan.flats) == 3


def test_steady_state_flat_steps_do_not_sync(monkeypatch):
    model, opt = _train(signify.signify(torch.optim.Adam, stochastic=True), {}, True, steps=2)
    for s in range(3):
        x, y = _data(10 + s)
        opt.zero_grad(set_to_none=bool(s % 2))
        F.cross_entropy(model(x), y).backward()
        with _no_host_sync(monkeypatch):
            opt.step()


def test_traced_base_and_scalar_state_are_mirrored():
    """A traced base keeps its own scalar "step" per tensor (no counter of signify's): the
    bucket's first tensor carries it through the step and the others get a copy."""

    class OwnAdamax(torch.optim.Adamax):  # no hand-written adapter: traced
        def step(self, closure=None):
            return super().step(closure)

    cls = signify.signify(OwnAdamax)
    ref, ref_opt = _train(cls, {}, False, steps=3)
    got, opt = _train(cls, {}, True, steps=3)
    assert opt._executor._plan.flats
    _same(ref, got)
    for p, q in zip(ref.parameters(), got.parameters()):
        assert torch.equal(ref_opt.state[p]["step"], opt.state[q]["step"])


def test_state_of_another_shape_warns_and_steps_per_tensor():
    from signify.transforms import Sign
    from signify.transforms.base import Transform

    class Pairs(Transform):  # per-tensor state that is neither per element nor a scalar
        name = "pairs"

        def init(self, params, group):
            return {"pair": [torch.zeros(2, device=p.device) for p in params]}

        def update(self, u, state, ctx):
            return u, state

    cls = signify.signify(torch.optim.SGD, [Sign(), Pairs()])
    ref, _ = _train(cls, {}, False, steps=2)
    with pytest.warns(UserWarning, match="neither per element nor a scalar"):
        got, opt = _train(cls, {}, True, steps=2)
    assert not opt._executor._plan.flats
    _same(ref, got)


def test_bad_flatten_arguments():
    with pytest.raises(TypeError, match="flatten"):
        signify.signify(torch.optim.Adam, flatten="yes")
    for kw in (
        {"stepsize": "alias-lowmem"},
        {"stepsize": "alias-adam"},
        {"stepsize": Alias(scope="tensor")},
        {"blocks": "depth"},
        {"vote": "majority"},
    ):
        with pytest.raises(ValueError, match="flatten"):
            signify.signify(torch.optim.SGD, flatten=True, **kw)
    with pytest.raises(TypeError, match="flatten"):
        signify.Signum([torch.nn.Parameter(torch.randn(3))], lr=0.1, flatten=1)


@pytest.mark.parametrize(
    "stepsize, momentum",
    [("alias", 0.0), ("alias", 0.9), (Alias(scope="group"), 0.0), ("constant", 0.9)],
    ids=["alias", "alias-beta", "alias-group", "constant"],
)
def test_stepsize_oracle_on_flat_buckets_matches_per_tensor(stepsize, momentum):
    """A bucket's sums and maxima are those of its tensors: the same estimate as per tensor
    (to the rounding of the summation order), the same steps."""
    cls = signify.signify(torch.optim.SGD, stepsize=stepsize)
    ref, ref_opt = _train(cls, {"momentum": momentum}, False)
    got, opt = _train(cls, {"momentum": momentum}, True)
    assert opt._executor._plan.flats
    torch.testing.assert_close(opt.stepsizes()[0], ref_opt.stepsizes()[0], rtol=1e-5, atol=0)
    for p, q in zip(ref.parameters(), got.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    for p, q in zip(ref.parameters(), got.parameters()):  # per-tensor scalars mirrored
        for k, v in ref_opt.state[p].items():
            if v.dim() == 0:
                torch.testing.assert_close(opt.state[q][k], v, rtol=1e-5, atol=0)


def test_frozen_parameters_stay_out_of_the_buffer():
    """A frozen tensor in the group (fine-tuning) neither blocks the flat step nor moves."""

    def freeze(step, model, opt):
        if step == 0:
            model.conv.weight.requires_grad_(False)

    cls = signify.signify(torch.optim.Adam)
    ref, _ = _train(cls, {}, False, every=freeze)
    got, opt = _train(cls, {}, True, every=freeze)
    _same(ref, got)
    (fb,) = opt._executor._plan.flats
    assert all(p is not got.conv.weight for p in fb.params)
    assert len(fb.params) == len(list(got.parameters())) - 1


def test_flat_parameters_save_with_torch_and_safetensors(tmp_path):
    """Views of one storage: torch.save and safetensors' save_file both round-trip them."""
    model, _ = _train(signify.signify(torch.optim.Adam), {}, True, steps=2)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    torch.save(sd, tmp_path / "m.pt")
    back = torch.load(tmp_path / "m.pt")
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    st = pytest.importorskip("safetensors.torch")
    # safetensors takes row-major tensors only (the channels_last conv weight, flat or not,
    # is copied); every other entry is still a view of the bucket's one storage
    rm = {k: v.contiguous() for k, v in sd.items()}
    assert sum(v.data_ptr() == sd[k].data_ptr() for k, v in rm.items()) == len(sd) - 1
    st.save_file(rm, str(tmp_path / "m.safetensors"))
    back = st.load_file(str(tmp_path / "m.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_each_bucket_compiles_for_its_own_size():
    """A flat bucket's graph is compiled for the bucket's exact size, one graph per size:
    a dynamic graph compiled first for a small bucket would step a large one with kernels
    configured for the small one (a launch configuration, a reduction split). Two groups of
    different sizes get a graph each, and later steps with a scheduler compile nothing."""
    from torch._dynamo.utils import counters

    torch.manual_seed(3)
    small = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))]
    big = [torch.nn.Parameter(torch.randn(40, 8))]
    opt = signify.Signum(
        [{"params": small}, {"params": big, "weight_decay": 0.0}],
        lr=1e-2,
        flatten=True,
        compile=True,
        seed=1,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s))
    graphs = []
    for _ in range(4):
        for p in small + big:
            p.grad = torch.randn_like(p)
        opt.step()
        sched.step()
        graphs.append(counters["stats"]["unique_graphs"])
    segments = [k for k in opt._executor._compiled if k[0] == "segment"]
    assert sorted(k[3] for k in segments) == [("flat", (16,)), ("flat", (320,))]  # rows of 16
    assert graphs[1] == graphs[-1]
