"""Bad input everywhere: every public argument of `signify()`, of the transforms its keywords
take, of the constructor and of the methods that change state rejects a wrong type with a
TypeError and a wrong value with a ValueError whose message names the argument; a rejected
``load_state_dict``, ``add_param_group``, ``step`` or ``set_loss`` leaves the parameters,
their ``requires_grad`` flags, the per-parameter and optimizer-level state, the param groups
and the transforms' host state exactly as they were, and the run continues like an untouched
twin.
"""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch

import signify
from signify.transforms import (
    Alias,
    AliasAdam,
    AliasLowMem,
    Blocks,
    DecoupledWeightDecay,
    MajorityVote,
    RunningMaxScale,
    Sign,
)

S = signify.signify
SGD, Adam, RMSprop = torch.optim.SGD, torch.optim.Adam, torch.optim.RMSprop
NAN, INF = float("nan"), float("inf")


def _p():
    return [torch.randn(3, requires_grad=True)]


def _named():
    return [("layers.0.w", torch.randn(3, requires_grad=True))]


# (id, call, exception, words the message must hold: the argument's name)
SIGNIFY = [
    ("base-int", lambda: S(3), TypeError, "base"),
    ("base-name", lambda: S("Adam"), TypeError, "base"),
    ("base-signified", lambda: S(S(Adam)), TypeError, "already signified"),
    ("transforms-int", lambda: S(SGD, 3), TypeError, "transforms"),
    ("transforms-str", lambda: S(SGD, "sign"), TypeError, "transforms"),
    ("transforms-item", lambda: S(SGD, [3]), TypeError, "transforms"),
    ("transforms-empty", lambda: S(SGD, []), ValueError, "transforms"),
    ("transforms-and-keywords", lambda: S(SGD, [Sign()], stochastic=True), TypeError, "transforms"),
    ("sign-int", lambda: S(SGD, sign=1), TypeError, "sign"),
    ("sign-none", lambda: S(SGD, sign=None), TypeError, "sign"),
    ("stochastic-str", lambda: S(SGD, stochastic="yes"), TypeError, "stochastic"),
    (
        "stochastic-without-sign",
        lambda: S(SGD, sign=False, stochastic=True),
        ValueError,
        "stochastic",
    ),
    ("seed-float", lambda: S(SGD, seed=1.5), TypeError, "seed"),
    ("seed-bool", lambda: S(SGD, seed=True), TypeError, "seed"),
    ("seed-negative", lambda: S(SGD, seed=-1), ValueError, "seed"),
    ("seed-too-large", lambda: S(SGD, seed=2**64), ValueError, "seed"),
    ("compile-str", lambda: S(SGD, compile="yes"), TypeError, "compile"),
    ("compile_chunk-float", lambda: S(SGD, compile_chunk=2.0), TypeError, "compile_chunk"),
    ("compile_chunk-3", lambda: S(SGD, compile_chunk=3), ValueError, "compile_chunk"),
    ("compile_chunk-0", lambda: S(SGD, compile_chunk=0), ValueError, "compile_chunk"),
    ("scale_beta-str", lambda: S(SGD, scale_beta="a"), TypeError, "scale_beta"),
    ("scale_beta-0", lambda: S(SGD, scale_beta=0.0), ValueError, "scale_beta"),
    ("scale_beta-nan", lambda: S(SGD, scale_beta=NAN), ValueError, "scale_beta"),
    ("scale_beta-1.5", lambda: S(SGD, scale_beta=1.5), ValueError, "scale_beta"),
    ("state_dtype-str", lambda: S(SGD, state_dtype="bfloat16"), TypeError, "state_dtype"),
    ("state_dtype-int32", lambda: S(SGD, state_dtype=torch.int32), ValueError, "state_dtype"),
    ("state_dtype-fp16", lambda: S(SGD, state_dtype=torch.float16), ValueError, "state_dtype"),
    ("nonfinite-int", lambda: S(SGD, nonfinite=1), TypeError, "nonfinite"),
    ("nonfinite-name", lambda: S(SGD, nonfinite="abort"), ValueError, "nonfinite"),
    ("flatten-str", lambda: S(SGD, flatten="yes"), TypeError, "flatten"),
    ("max_grad_norm-zero", lambda: S(SGD, max_grad_norm=0.0), ValueError, "max_grad_norm"),
    ("max_grad_norm-str", lambda: S(SGD, max_grad_norm="1"), TypeError, "max_grad_norm"),
    (
        "flatten-lowmem",
        lambda: S(SGD, flatten=True, stepsize="alias-lowmem"),
        ValueError,
        "flatten",
    ),
    ("unknown-option", lambda: S(SGD, stepsizes="alias"), TypeError, "stepsizes"),
    # blocks= and its policy's options
    ("blocks-int", lambda: S(SGD, blocks=3), TypeError, "blocks"),
    ("blocks-bool", lambda: S(SGD, blocks=True), TypeError, "blocks"),
    ("blocks-list", lambda: S(SGD, blocks=["layers.0"]), TypeError, "blocks"),
    ("blocks-name", lambda: S(SGD, blocks="deep"), ValueError, "blocks"),
    ("Blocks-rule-int", lambda: Blocks(3), TypeError, "rule"),
    ("Blocks-outside", lambda: Blocks(outside="x"), ValueError, "outside"),
    ("Blocks-inactive", lambda: Blocks(inactive="x"), ValueError, "inactive"),
    ("Blocks-switch_every-float", lambda: Blocks(switch_every=1.5), TypeError, "switch_every"),
    ("Blocks-switch_every-0", lambda: Blocks(switch_every=0), ValueError, "switch_every"),
    ("Blocks-depth_bias-str", lambda: Blocks(depth_bias="a"), TypeError, "depth_bias"),
    ("Blocks-depth_bias-negative", lambda: Blocks(depth_bias=-1.0), ValueError, "depth_bias"),
    ("Blocks-depth_bias-inf", lambda: Blocks(depth_bias=INF), ValueError, "depth_bias"),
    (
        "Blocks-depth_bias-cyclic",
        lambda: Blocks("cyclic", depth_bias=1.0),
        ValueError,
        "depth_bias",
    ),
    ("Blocks-partition-int", lambda: Blocks(partition=3), TypeError, "partition"),
    ("Blocks-partition-empty", lambda: Blocks(partition=[]), TypeError, "partition"),
    (
        "Blocks-partition-empty-prefix",
        lambda: S(SGD, blocks=Blocks(partition=[""]))(_named(), lr=0.1),
        TypeError,
        "prefixes",
    ),
    (
        "Blocks-partition-unmatched",
        lambda: S(SGD, blocks=Blocks(partition=["zz"]))(_named(), lr=0.1),
        ValueError,
        "prefix",
    ),
    ("blocks-unnamed-params", lambda: S(SGD, blocks="depth")(_p(), lr=0.1), ValueError, "names"),
    # stepsize= and its policies' options
    ("stepsize-int", lambda: S(SGD, stepsize=3), TypeError, "stepsize"),
    ("stepsize-name", lambda: S(SGD, stepsize="alias2"), ValueError, "stepsize"),
    ("stepsize-transform", lambda: S(SGD, stepsize=Sign()), TypeError, "stepsize"),
    ("Alias-d_0-str", lambda: Alias(d_0="a"), TypeError, "d_0"),
    ("Alias-d_0-0", lambda: Alias(d_0=0.0), ValueError, "d_0"),
    ("Alias-eta_0-negative", lambda: Alias(eta_0=-1.0), ValueError, "eta_0"),
    ("Alias-gamma_0-bool", lambda: Alias(gamma_0=True), TypeError, "gamma_0"),
    ("Alias-gamma_0-nan", lambda: Alias(gamma_0=NAN), ValueError, "gamma_0"),
    ("Alias-gamma_max-0", lambda: Alias(gamma_max=0.0), ValueError, "gamma_max"),
    ("Alias-f_lower-inf", lambda: Alias(f_lower=INF), ValueError, "f_lower"),
    ("Alias-f0-without-f_lower", lambda: Alias(f0=1.0), ValueError, "f0"),
    ("Alias-scope", lambda: Alias(scope="layer"), ValueError, "scope"),
    ("Alias-scope-int", lambda: Alias(scope=3), ValueError, "scope"),
    ("Alias-move", lambda: Alias(move="x"), ValueError, "move"),
    ("Alias-reduce", lambda: Alias(reduce="max"), ValueError, "reduce"),
    ("Alias-process_group", lambda: Alias(process_group=3), TypeError, "process_group"),
    ("AliasLowMem-d_0", lambda: AliasLowMem(d_0=-1.0), ValueError, "d_0"),
    ("AliasLowMem-scope", lambda: AliasLowMem(scope="x"), ValueError, "scope"),
    ("AliasAdam-beta-str", lambda: AliasAdam(beta="a"), TypeError, "beta"),
    ("AliasAdam-beta-1", lambda: AliasAdam(beta=1.0), ValueError, "beta"),
    ("AliasAdam-d_0", lambda: AliasAdam(d_0=0.0), ValueError, "d_0"),
    ("AliasAdam-scope", lambda: AliasAdam(scope="x"), ValueError, "scope"),
    # vote= and its options
    ("vote-int", lambda: S(SGD, vote=3), TypeError, "vote"),
    ("vote-bool", lambda: S(SGD, vote=True), TypeError, "vote"),
    ("vote-name", lambda: S(SGD, vote="minority"), ValueError, "vote"),
    ("MajorityVote-group", lambda: MajorityVote(3), TypeError, "group"),
    ("MajorityVote-zeros", lambda: MajorityVote(zeros="x"), ValueError, "zeros"),
    ("MajorityVote-layout", lambda: MajorityVote(layout="x"), ValueError, "layout"),
    # the other public transforms
    ("DecoupledWeightDecay-str", lambda: DecoupledWeightDecay("a"), TypeError, "weight_decay"),
    (
        "DecoupledWeightDecay-negative",
        lambda: DecoupledWeightDecay(-1.0),
        ValueError,
        "weight_decay",
    ),
    ("RunningMaxScale-0", lambda: RunningMaxScale(0.0), ValueError, "scale_beta"),
]

C = S(SGD)  # a signified class with default options
CTOR = [
    ("params-int", lambda: C(3, lr=0.1), TypeError, "params"),
    ("params-tensor", lambda: C(torch.randn(3, requires_grad=True), lr=0.1), TypeError, "params"),
    ("params-empty", lambda: C([], lr=0.1), ValueError, "empty parameter list"),
    ("params-item", lambda: C([3], lr=0.1), TypeError, "params"),
    (
        "params-complex",
        lambda: C([torch.randn(2, dtype=torch.cfloat)], lr=0.1),
        ValueError,
        "complex",
    ),
    ("params-int64", lambda: C([torch.zeros(2, dtype=torch.int64)], lr=0.1), ValueError, "params"),
    ("params-twice", lambda: C([q := torch.randn(2), q], lr=0.1), ValueError, "params"),
    ("lr-str", lambda: C(_p(), lr="a"), TypeError, "lr"),
    ("lr-none", lambda: C(_p(), lr=None), TypeError, "lr"),
    ("lr-bool", lambda: C(_p(), lr=True), TypeError, "lr"),
    ("lr-negative", lambda: C(_p(), lr=-1.0), ValueError, "lr"),
    ("lr-nan", lambda: C(_p(), lr=NAN), ValueError, "lr"),
    ("lr-inf", lambda: C(_p(), lr=INF), ValueError, "lr"),
    ("lr-tensor-2", lambda: C(_p(), lr=torch.ones(2)), ValueError, "lr"),
    ("momentum-negative", lambda: C(_p(), lr=0.1, momentum=-1.0), ValueError, "momentum"),
    ("dampening-2", lambda: C(_p(), lr=0.1, momentum=0.5, dampening=2.0), ValueError, "dampening"),
    ("nesterov-int", lambda: C(_p(), lr=0.1, momentum=0.5, nesterov=1), TypeError, "nesterov"),
    ("nesterov-no-momentum", lambda: C(_p(), lr=0.1, nesterov=True), ValueError, "Nesterov"),
    ("weight_decay-inf", lambda: C(_p(), lr=0.1, weight_decay=INF), ValueError, "weight_decay"),
    ("maximize-int", lambda: C(_p(), lr=0.1, maximize=1), TypeError, "maximize"),
    ("betas-float", lambda: S(Adam)(_p(), betas=0.9), TypeError, "betas"),
    ("betas-one", lambda: S(Adam)(_p(), betas=(0.9,)), ValueError, "betas"),
    ("betas-three", lambda: S(Adam)(_p(), betas=(0.9, 0.9, 0.9)), ValueError, "betas"),
    ("betas-str", lambda: S(Adam)(_p(), betas=("a", 0.9)), TypeError, r"betas\[0\]"),
    ("betas-1", lambda: S(Adam)(_p(), betas=(1.0, 0.9)), ValueError, r"betas\[0\]"),
    ("betas-nan", lambda: S(Adam)(_p(), betas=(0.9, NAN)), ValueError, r"betas\[1\]"),
    ("eps-negative", lambda: S(Adam)(_p(), eps=-1.0), ValueError, "eps"),
    ("amsgrad-str", lambda: S(Adam)(_p(), amsgrad="y"), TypeError, "amsgrad"),
    ("alpha-2", lambda: S(RMSprop)(_p(), alpha=2.0), ValueError, "alpha"),
    ("centered-int", lambda: S(RMSprop)(_p(), centered=1), TypeError, "centered"),
    ("lr_decay", lambda: S(torch.optim.Adagrad)(_p(), lr_decay=-1.0), ValueError, "lr_decay"),
    (
        "initial_accumulator_value",
        lambda: S(torch.optim.Adagrad)(_p(), initial_accumulator_value=-1.0),
        ValueError,
        "initial_accumulator_value",
    ),
    (
        "momentum_decay",
        lambda: S(torch.optim.NAdam)(_p(), momentum_decay=-1.0),
        ValueError,
        "momentum_decay",
    ),
    (
        "decoupled_weight_decay-int",
        lambda: S(torch.optim.NAdam)(_p(), decoupled_weight_decay=1),
        TypeError,
        "decoupled_weight_decay",
    ),
    ("unknown-keyword", lambda: C(_p(), lr=0.1, foo=1), TypeError, "foo"),
    ("shorthand-at-constructor", lambda: C(_p(), lr=0.1, blocks="depth"), TypeError, "blocks"),
    ("too-many-positional", lambda: C(_p(), *range(12)), TypeError, "positional"),
    ("positional-and-keyword", lambda: C(_p(), 0.1, lr=0.1), TypeError, "lr"),
    ("runtime-seed", lambda: C(_p(), lr=0.1, seed=-1), ValueError, "seed"),
    ("runtime-compile", lambda: C(_p(), lr=0.1, compile=1), TypeError, "compile"),
    (
        "runtime-compile_chunk",
        lambda: C(_p(), lr=0.1, compile_chunk=3),
        ValueError,
        "compile_chunk",
    ),
    (
        "runtime-state_dtype",
        lambda: C(_p(), lr=0.1, state_dtype=torch.int8),
        ValueError,
        "state_dtype",
    ),
    ("runtime-nonfinite", lambda: C(_p(), lr=0.1, nonfinite="x"), ValueError, "nonfinite"),
    ("runtime-flatten", lambda: C(_p(), lr=0.1, flatten=1), TypeError, "flatten"),
    (
        "runtime-max_grad_norm",
        lambda: C(_p(), lr=0.1, max_grad_norm=float("nan")),
        ValueError,
        "max_grad_norm",
    ),
    (
        "runtime-flatten-lowmem",
        lambda: S(SGD, stepsize="alias-lowmem")(_p(), flatten=True),
        ValueError,
        "flatten",
    ),
    (
        "group-scale_beta-0",
        lambda: C([{"params": _p(), "scale_beta": 0.0}], lr=0.1),
        ValueError,
        "scale_beta",
    ),
    ("group-lr", lambda: C([{"params": _p(), "lr": -1.0}], lr=0.1), ValueError, "lr"),
    ("group-betas", lambda: S(Adam)([{"params": _p(), "betas": (2.0, 0.0)}]), ValueError, "betas"),
    (
        "decoupled_wd",
        lambda: S(SGD, [Sign(), DecoupledWeightDecay()])(_p(), lr=0.1, decoupled_wd=-1.0),
        ValueError,
        "decoupled_wd",
    ),
    # presets name their own arguments
    ("Signum-lr", lambda: signify.Signum(_p(), lr=-1.0), ValueError, "lr"),
    ("Signum-momentum-1", lambda: signify.Signum(_p(), momentum=1.0), ValueError, "momentum"),
    (
        "Signum-weight_decay",
        lambda: signify.Signum(_p(), weight_decay=-1.0),
        ValueError,
        "weight_decay",
    ),
    ("StoSignSGD-betas-float", lambda: signify.StoSignSGD(_p(), betas=0.9), TypeError, "betas"),
    (
        "StoSignSGD-betas0",
        lambda: signify.StoSignSGD(_p(), betas=(1.0, 1.0)),
        ValueError,
        r"betas\[0\]",
    ),
    (
        "StoSignSGD-betas1",
        lambda: signify.StoSignSGD(_p(), betas=(0.9, 0.0)),
        ValueError,
        r"betas\[1\]",
    ),
    (
        "StoSignSGD-betas-str",
        lambda: signify.StoSignSGD(_p(), betas=("a", 1.0)),
        TypeError,
        r"betas\[0\]",
    ),
    ("SignAdamax-eps", lambda: signify.SignAdamax(_p(), eps=-1.0), ValueError, "eps"),
    (
        "SignAdamax-weight_decay",
        lambda: signify.SignAdamax(_p(), weight_decay=-1.0),
        ValueError,
        "weight_decay",
    ),
]


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in SIGNIFY], ids=[c[0] for c in SIGNIFY])
def test_signify_and_transform_arguments(call, exc, words):
    with pytest.raises(exc, match=words) as info:
        call()
    assert type(info.value) is exc  # not a subclass standing in for the other kind


@pytest.mark.parametrize("call, exc, words", [c[1:] for c in CTOR], ids=[c[0] for c in CTOR])
def test_constructor_arguments(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


def test_vote_without_torch_distributed_is_a_runtime_error():
    """Not an argument error: the process has no process group (documented)."""
    with pytest.raises(RuntimeError, match="init_process_group"):
        S(SGD, vote="majority")(_p(), lr=0.1)


def test_every_public_option_is_in_the_table():
    """A new keyword of signify() or a new constructor runtime option needs a row here."""
    import inspect

    options = set(inspect.signature(signify.signify).parameters) - {"unknown"}
    rows = " ".join(c[0] for c in SIGNIFY + CTOR)
    missing = [o for o in options if not re.search(rf"\b{o}\b", rows)]
    assert not missing, missing
    for o in signify.options.RUNTIME_OPTIONS:
        assert f"runtime-{o}" in rows, o


# ------------------------------------------------------------------ rejected calls change nothing
def _model_params():
    torch.manual_seed(0)
    return [
        ("layers.0.weight", torch.randn(4, 3, requires_grad=True)),
        ("layers.0.bias", torch.randn(4, requires_grad=True)),
        ("layers.1.weight", torch.randn(2, 4, requires_grad=True)),
    ]


def _make(named):
    cls = S(
        torch.optim.AdamW,
        stochastic=True,
        blocks=Blocks("depth", inactive="keep"),
        stepsize="alias",
    )
    return cls(named, weight_decay=0.01, seed=5)


def _train(opt, params, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()


def _snapshot(opt, params):
    return {
        "params": [p.detach().clone() for p in params],
        "flags": [p.requires_grad for p in params],
        "state": [{k: v.clone() for k, v in opt.state[p].items()} for p in params],
        "shared": {(n, k): v.clone() for n, d in opt._shared.items() for k, v in d.items()},
        "groups": [
            (
                [next(i for i, q in enumerate(params) if q is p) for p in g["params"]],
                {k: v for k, v in g.items() if k != "params"},
            )
            for g in opt.param_groups
        ],
        "extra": [copy.deepcopy(t.extra_state()) for t in opt.chain],
        "seed": opt._seed,
    }


def _assert_same(a, b):
    assert len(a["params"]) == len(b["params"])
    for x, y in zip(a["params"], b["params"]):
        assert torch.equal(x, y)
    assert a["flags"] == b["flags"]
    for sa, sb in zip(a["state"], b["state"]):
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    assert a["shared"].keys() == b["shared"].keys()
    for k in a["shared"]:
        assert torch.equal(a["shared"][k], b["shared"][k]), k
    assert a["groups"] == b["groups"]
    assert a["extra"] == b["extra"] and a["seed"] == b["seed"]


def _sd(edit):
    """A valid state_dict of a trained twin, edited."""
    named = _model_params()
    opt = _make(named)
    _train(opt, [p for _, p in named], 3, seed=1)
    sd = copy.deepcopy(opt.state_dict())
    edit(sd)
    return sd


def _set(path, value):
    def edit(sd):
        d = sd
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return edit


def _pop(path):
    def edit(sd):
        d = sd
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]

    return edit


def _new(*shape):
    return torch.randn(*shape, requires_grad=True)


# (id, what the call does to opt, exception, words)
REJECTED = [
    ("load-int", lambda o: o.load_state_dict(3), TypeError, "state_dict"),
    ("load-empty", lambda o: o.load_state_dict({}), TypeError, "state_dict"),
    (
        "load-no-groups",
        lambda o: o.load_state_dict(_sd(_pop(["param_groups"]))),
        TypeError,
        "state_dict",
    ),
    (
        "load-groups-int",
        lambda o: o.load_state_dict(_sd(_set(["param_groups"], 3))),
        TypeError,
        "param_groups",
    ),
    (
        "load-state-int",
        lambda o: o.load_state_dict(_sd(_set(["state"], 3))),
        TypeError,
        "state_dict",
    ),
    (
        "load-group-lr",
        lambda o: o.load_state_dict(_sd(_set(["param_groups", 0, "lr"], -1.0))),
        ValueError,
        "lr",
    ),
    (
        "load-group-betas",
        lambda o: o.load_state_dict(_sd(_set(["param_groups", 0, "betas"], (2.0, 0.1)))),
        ValueError,
        "betas",
    ),
    (
        "load-unknown-state-entry",
        lambda o: o.load_state_dict(_sd(_set(["state", 7], {"step": torch.tensor(1.0)}))),
        ValueError,
        "state",
    ),
    (
        "load-state-shape",
        lambda o: o.load_state_dict(_sd(_set(["state", 0, "exp_avg"], torch.ones(2)))),
        ValueError,
        "exp_avg",
    ),
    (
        "load-state-not-tensor",
        lambda o: o.load_state_dict(_sd(_set(["state", 0, "exp_avg"], 1.0))),
        TypeError,
        "exp_avg",
    ),
    (
        "load-state-step-shape",
        lambda o: o.load_state_dict(_sd(_set(["state", 0, "step"], torch.ones(3)))),
        ValueError,
        "step",
    ),
    (
        "load-state-missing-key",
        lambda o: o.load_state_dict(_sd(_pop(["state", 0, "exp_avg"]))),
        ValueError,
        "exp_avg",
    ),
    (
        "load-signify-int",
        lambda o: o.load_state_dict(_sd(_set(["signify"], 3))),
        TypeError,
        "signify",
    ),
    (
        "load-schema",
        lambda o: o.load_state_dict(_sd(_set(["signify", "schema"], 99))),
        ValueError,
        "schema",
    ),
    (
        "load-chain",
        lambda o: o.load_state_dict(_sd(_set(["signify", "chain"], ["adamw", "sign", "apply"]))),
        ValueError,
        "chain",
    ),
    (
        "load-seed",
        lambda o: o.load_state_dict(_sd(_set(["signify", "seed"], "x"))),
        TypeError,
        "seed",
    ),
    (
        "load-shared-int",
        lambda o: o.load_state_dict(_sd(_set(["signify", "shared"], 3))),
        TypeError,
        "shared",
    ),
    (
        "load-shared-missing-entry",
        lambda o: o.load_state_dict(_sd(_pop(["signify", "shared", "alias"]))),
        ValueError,
        "shared",
    ),
    (
        "load-shared-counter",
        lambda o: o.load_state_dict(_sd(_set(["signify", "shared", "rng", "counter"], "x"))),
        ValueError,
        "counter",
    ),
    (
        "load-shared-gamma-dtype",
        lambda o: o.load_state_dict(
            _sd(_set(["signify", "shared", "alias", "gamma"], torch.ones(1, dtype=torch.int64)))
        ),
        ValueError,
        "gamma",
    ),
    (
        "load-stepsize-slots",
        lambda o: o.load_state_dict(
            _sd(_set(["signify", "shared", "alias", "gamma"], torch.ones(5)))
        ),
        ValueError,
        "slots",
    ),
    (
        "load-extra-int",
        lambda o: o.load_state_dict(_sd(_set(["signify", "extra"], 3))),
        TypeError,
        "extra",
    ),
    (
        "load-extra-blocks-garbage",
        lambda o: o.load_state_dict(_sd(_set(["signify", "extra", "blocks"], 3))),
        ValueError,
        "blocks",
    ),
    (
        "load-extra-alias-garbage",
        lambda o: o.load_state_dict(_sd(_set(["signify", "extra", "alias"], 3))),
        ValueError,
        "alias",
    ),
    ("add-int", lambda o: o.add_param_group(3), TypeError, "param_group"),
    ("add-no-params", lambda o: o.add_param_group({"lr": 0.1}), ValueError, "params"),
    (
        "add-lr",
        lambda o: o.add_param_group({"params": [_new(2)], "param_names": ["x"], "lr": -1.0}),
        ValueError,
        "lr",
    ),
    (
        "add-betas",
        lambda o: o.add_param_group({"params": [_new(2)], "param_names": ["x"], "betas": (0.9,)}),
        ValueError,
        "betas",
    ),
    (
        "add-int-param",
        lambda o: o.add_param_group(
            {"params": [torch.zeros(2, dtype=torch.int32)], "param_names": ["x"]}
        ),
        ValueError,
        "params",
    ),
    (
        "add-existing-param",
        lambda o: o.add_param_group(
            {"params": [o.param_groups[0]["params"][0]], "param_names": ["x"]}
        ),
        ValueError,
        "more than one parameter group",
    ),
    ("step-closure", lambda o: o.step(3), TypeError, "closure"),
    ("set_loss-str", lambda o: o.set_loss("a"), TypeError, "loss"),
    ("set_loss-shape", lambda o: o.set_loss(torch.ones(3)), ValueError, "loss"),
]


@pytest.mark.parametrize(
    "call, exc, words", [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED]
)
def test_rejected_calls_change_nothing(call, exc, words):
    named = _model_params()
    params = [p for _, p in named]
    opt = _make(named)
    _train(opt, params, 3, seed=2)
    before = _snapshot(opt, params)
    with pytest.raises(exc, match=words):
        call(opt)
    _assert_same(before, _snapshot(opt, params))
    # ... and it goes on exactly as an untouched twin
    twin_named = _model_params()
    twin_params = [p for _, p in twin_named]
    twin = _make(twin_named)
    _train(twin, twin_params, 3, seed=2)
    _train(opt, params, 3, seed=3)
    _train(twin, twin_params, 3, seed=3)
    _assert_same(_snapshot(twin, twin_params), _snapshot(opt, params))


def test_the_valid_state_dict_the_table_edits_loads():
    """The table's states are rejected for their edit, not for being invalid already."""
    named = _model_params()
    opt = _make(named)
    _train(opt, [p for _, p in named], 1, seed=2)
    opt.load_state_dict(_sd(lambda sd: None))
    assert math.isfinite(float(opt._shared["alias"]["gamma"][0]))
