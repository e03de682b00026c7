"""Optimizer memory: the bytes each configuration keeps between steps, from first principles.

Every tensor reachable from the optimizer object is counted (``opt.state``, ``opt._shared``,
the executor's plan and caches, flat buckets, the transforms' attributes, hooks), once per
storage, leaving out the parameters' and gradients' own storages. Two numbers per
configuration, after a few eager steps:

* ``state``: the storages reachable from ``opt.state``. Asserted exactly: per-element buffers
  (``n`` elements of the buffer's dtype per tensor, packed signs ``ceil(n / 8)`` bytes, a flat
  bucket ``N`` elements padded to a multiple of `signify.compiled.ROW`) plus 4-byte fp32
  scalars per tensor (step counters, ALIAS's per-tensor scalars).
* ``overhead``: everything else the optimizer keeps alive (random counters, hyperparameter
  copies, stepsize slots, random keys of the plan...). Asserted independent of the number of
  parameters: a model with the same tensors four times as wide keeps the same overhead, so
  scratch that scales with the parameters and outlives a step fails here.

The torch.optim baselines go through the same count (Adam 8 B/param, SGD momentum 4 B/param).
docs/api.md ("Memory") quotes these numbers.
"""

from __future__ import annotations

import gc
import itertools
import math
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest
import torch
from torch import nn

import signify
from signify.compiled import ROW
from signify.transforms import Blocks

SMALL = (13, 11, 7, 5)  # three Linear layers: 6 tensors, odd sizes (packed bits, padding)
LARGE = (52, 44, 28, 20)  # the same tensors, 4x as wide
F32 = 4


def _model(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])  # names 0.*, 2.*, 4.*: three blocks for blocks=


def _storages(root: Any) -> dict[int, int]:
    """``{storage address: bytes}`` of every tensor reachable from ``root`` (through
    containers, instance dicts, closures and defaults; not modules, classes or globals)."""
    out: dict[int, int] = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or o is None:
            continue
        seen.add(id(o))
        if isinstance(o, torch.Tensor):
            try:
                st = o.untyped_storage()
                ptr = st.data_ptr()
            except (RuntimeError, NotImplementedError):  # meta / fake tensors hold no memory
                continue
            if st.nbytes():
                out[ptr] = max(out.get(ptr, 0), st.nbytes())
            continue
        if isinstance(o, (types.ModuleType, type, str, bytes, int, float, bool)):
            continue
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif isinstance(o, types.FunctionType):
            stack.extend(c.cell_contents for c in (o.__closure__ or ()) if _filled(c))
            stack.append(o.__defaults__)
        else:
            stack.extend(
                r for r in gc.get_referents(o) if not isinstance(r, (types.ModuleType, type))
            )
    return out


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


def measure(opt: Any, params: Iterable[torch.Tensor]) -> tuple[int, int]:
    """``(state, overhead)`` bytes (module docstring)."""
    mine = set()
    for p in params:
        mine.add(p.untyped_storage().data_ptr())
        if p.grad is not None:
            mine.add(p.grad.untyped_storage().data_ptr())
    state = {k: v for k, v in _storages(opt.state).items() if k not in mine}
    everything = {k: v for k, v in _storages(opt).items() if k not in mine}
    overhead = sum(v for k, v in everything.items() if k not in state)
    return sum(state.values()), overhead


def _train(opt: Any, params: Sequence[torch.Tensor], steps: int) -> None:
    for _ in range(steps):
        for p in params:  # as a backward pass would: frozen parameters get none
            p.grad = torch.randn_like(p) if p.requires_grad else None
        opt.step()


def _run(make: Callable[[Sequence[torch.Tensor]], Any], widths: tuple[int, ...], steps: int = 3):
    params = list(_model(widths).parameters())
    opt = make(params)
    _train(opt, params, steps)
    return (*measure(opt, params), params)


def _sizes(params: Iterable[torch.Tensor]) -> list[int]:
    return [p.numel() for p in params]


def _bits(sizes: list[int]) -> int:
    return sum(math.ceil(n / 8) for n in sizes)


def _padded(n: int) -> int:
    return n + (-n) % ROW


O = torch.optim
SGD, Adam = O.SGD, O.Adam
bf16 = torch.bfloat16

# name -> (factory, expected state bytes of tensors of these sizes). N elements, T tensors.
CASES: dict[str, tuple[Callable[[Sequence[torch.Tensor]], Any], Callable[[list[int]], int]]] = {
    # torch.optim, counted the same way
    "torch SGD momentum": (
        lambda ps: SGD(ps, lr=1e-3, momentum=0.9),
        lambda s: F32 * sum(s),
    ),
    "torch Adam": (lambda ps: Adam(ps, lr=1e-3), lambda s: 2 * F32 * sum(s) + F32 * len(s)),
    # signify: 4 B/param per floating buffer, 4 B per tensor per scalar (a step counter each)
    "signSGD": (lambda ps: signify.signify(SGD)(ps, lr=1e-3), lambda s: F32 * len(s)),
    "signify(SGD, momentum)": (
        lambda ps: signify.signify(SGD)(ps, lr=1e-3, momentum=0.9),
        lambda s: F32 * sum(s) + F32 * len(s),
    ),
    "Signum": (lambda ps: signify.Signum(ps), lambda s: F32 * sum(s) + F32 * len(s)),
    "sign Adam": (  # exp_avg only: exp_avg_sq is dead under the deterministic sign
        lambda ps: signify.signify(Adam)(ps),
        lambda s: F32 * sum(s) + F32 * len(s),
    ),
    "stochastic Adam": (
        lambda ps: signify.signify(Adam, stochastic=True)(ps),
        lambda s: 2 * F32 * sum(s) + F32 * len(s),
    ),
    "StoSignSGD": (lambda ps: signify.StoSignSGD(ps), lambda s: 2 * F32 * sum(s) + F32 * len(s)),
    "SignAdamax": (lambda ps: signify.SignAdamax(ps), lambda s: 2 * F32 * sum(s) + F32 * len(s)),
    # ALIAS: g_prev + (step, s_prev, dx, n) per tensor
    "alias": (
        lambda ps: signify.signify(SGD, stepsize="alias")(ps),
        lambda s: F32 * sum(s) + 4 * F32 * len(s),
    ),
    "alias, momentum": (
        lambda ps: signify.signify(SGD, stepsize="alias")(ps, momentum=0.9),
        lambda s: 2 * F32 * sum(s) + 4 * F32 * len(s),
    ),
    # packed sign bits + (step, gmax, gmin, s_prev, dx, n) per tensor
    "alias-lowmem": (
        lambda ps: signify.signify(SGD, stepsize="alias-lowmem")(ps),
        lambda s: _bits(s) + 6 * F32 * len(s),
    ),
    "alias-lowmem, momentum": (
        lambda ps: signify.signify(SGD, stepsize="alias-lowmem")(ps, momentum=0.9),
        lambda s: F32 * sum(s) + _bits(s) + 6 * F32 * len(s),
    ),
    # Adam's live moments + packed bits + (step, n, s_prev) per tensor
    "alias-adam": (
        lambda ps: signify.signify(Adam, stepsize="alias-adam")(ps),
        lambda s: F32 * sum(s) + _bits(s) + 3 * F32 * len(s),
    ),
    "alias-adam, stochastic": (
        lambda ps: signify.signify(Adam, stochastic=True, stepsize="alias-adam")(ps),
        lambda s: 2 * F32 * sum(s) + _bits(s) + 3 * F32 * len(s),
    ),
    # state_dtype=bfloat16: floating buffers at 2 bytes, scalars and bits unchanged
    "Signum, bf16 state": (
        lambda ps: signify.Signum(ps, state_dtype=bf16),
        lambda s: 2 * sum(s) + F32 * len(s),
    ),
    "stochastic Adam, bf16 state": (
        lambda ps: signify.signify(Adam, stochastic=True, state_dtype=bf16)(ps),
        lambda s: 2 * 2 * sum(s) + F32 * len(s),
    ),
    "alias, momentum, bf16 state": (
        lambda ps: signify.signify(SGD, stepsize="alias", state_dtype=bf16)(ps, momentum=0.9),
        lambda s: 2 * 2 * sum(s) + 4 * F32 * len(s),
    ),
    "alias-lowmem, momentum, bf16 state": (
        lambda ps: signify.signify(SGD, stepsize="alias-lowmem", state_dtype=bf16)(
            ps, momentum=0.9
        ),
        lambda s: 2 * sum(s) + _bits(s) + 6 * F32 * len(s),
    ),
    # flatten=True: one padded buffer per per-element key (the per-tensor entries are views)
    "Signum, flat": (
        lambda ps: signify.Signum(ps, flatten=True),
        lambda s: F32 * _padded(sum(s)) + F32 * len(s),
    ),
    "stochastic Adam, flat": (
        lambda ps: signify.signify(Adam, stochastic=True, flatten=True)(ps),
        lambda s: 2 * F32 * _padded(sum(s)) + F32 * len(s),
    ),
    "stochastic Adam, flat, bf16 state": (
        lambda ps: signify.signify(Adam, stochastic=True, flatten=True, state_dtype=bf16)(ps),
        lambda s: 2 * 2 * _padded(sum(s)) + F32 * len(s),
    ),
    "alias, momentum, flat": (
        lambda ps: signify.signify(SGD, stepsize="alias", flatten=True)(ps, momentum=0.9),
        lambda s: 2 * F32 * _padded(sum(s)) + 4 * F32 * len(s),
    ),
}

#: what the optimizer-level state and the plan may hold, whatever the model's size
OVERHEAD_MAX = 512


@pytest.mark.parametrize("name", list(CASES))
def test_state_bytes(name):
    make, expected = CASES[name]
    state, overhead, params = _run(make, SMALL)
    assert state == expected(_sizes(params)), (name, state, expected(_sizes(params)))
    state_l, overhead_l, params_l = _run(make, LARGE)
    assert state_l == expected(_sizes(params_l)), (name, state_l, expected(_sizes(params_l)))
    # nothing else scales with the parameters: 4x wider tensors, the same overhead
    assert overhead_l == overhead, (name, overhead, overhead_l)
    assert overhead <= OVERHEAD_MAX, (name, overhead)


def test_against_torch_optim():
    """Per parameter: sign Adam keeps what torch's SGD momentum keeps, stochastic Adam what
    torch's Adam keeps (plus a 4-byte step counter per tensor where torch's SGD has none),
    alias-lowmem 1/32 of ALIAS's fp32 ``g_prev``."""
    names = ["torch Adam", "torch SGD momentum", "sign Adam", "stochastic Adam"]
    names += ["stochastic Adam, bf16 state", "stochastic Adam, flat", "alias", "alias-lowmem"]
    s = {k: _run(CASES[k][0], LARGE)[0] for k in names}
    sizes = _sizes(_model(LARGE).parameters())
    n, t = sum(sizes), len(sizes)
    assert s["torch Adam"] == 8 * n + 4 * t
    assert s["torch SGD momentum"] == 4 * n
    assert s["sign Adam"] == s["torch SGD momentum"] + 4 * t
    assert s["stochastic Adam"] == s["torch Adam"]
    assert s["stochastic Adam, bf16 state"] == s["torch Adam"] // 2 + 2 * t
    assert s["stochastic Adam, flat"] - s["stochastic Adam"] == 8 * ((-n) % ROW)
    assert s["alias"] - 4 * 4 * t == 4 * n  # g_prev, fp32
    bits = s["alias-lowmem"] - 6 * 4 * t  # sign(g_prev), packed
    assert bits == sum((k + 7) // 8 for k in sizes) and 32 * bits <= 4 * n + 32 * t


def test_flat_gradient_buffer():
    """flatten=True keeps one gradient buffer (the gradients' home) across
    ``zero_grad(set_to_none=True)``, where torch frees the gradients: 4 B/param, once."""
    params = list(_model(LARGE).parameters())
    opt = signify.signify(Adam, stochastic=True, flatten=True)(params)
    _train(opt, params, 3)
    state, before = measure(opt, params)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in params)
    state_after, after = measure(opt, params)
    assert state_after == state
    assert after - before == F32 * _padded(sum(_sizes(params)))


def _blocks(opt: Any) -> Blocks:
    return next(t for t in opt.chain if isinstance(t, Blocks))


@pytest.mark.parametrize("base", ["sgd-momentum", "adam-stochastic"])
def test_blocks_drop_keeps_only_the_active_block(base):
    """``blocks="depth"``, ``inactive="drop"``: between steps only the held block has state
    (with ``switch_every=2`` every other step holds it), nothing once it is switched out;
    the executor's plan keeps no view of dropped state."""
    per_elem, kw = (1, {"momentum": 0.9}) if base == "sgd-momentum" else (2, {})
    cls = SGD if base == "sgd-momentum" else Adam
    for widths in (SMALL, LARGE):
        model = _model(widths)
        params = list(model.parameters())
        make = signify.signify(
            cls, stochastic=base != "sgd-momentum", blocks=Blocks("depth", switch_every=2)
        )
        opt = make(model.named_parameters(), lr=1e-3, **kw)
        blk = _blocks(opt)
        overheads = set()
        for _ in range(6):
            active = blk.active_params()
            _train(opt, params, 1)
            now = blk.active_params()
            kept = active if [id(p) for p in now] == [id(p) for p in active] else []
            state, overhead = measure(opt, params)
            sizes = _sizes(kept)
            # per element: SGD's momentum or Adam's m and v; a step counter per tensor
            assert state == per_elem * F32 * sum(sizes) + F32 * len(sizes), (state, sizes)
            assert set(map(id, opt.state)) == set(map(id, kept))
            overheads.add(overhead)
        assert max(overheads) <= OVERHEAD_MAX, overheads


def test_blocks_keep_fills_up():
    """``inactive="keep"``: each block's state appears at its first pick and stays: after
    one pass over the three blocks, the full-model state of the base."""
    model = _model(LARGE)
    params = list(model.parameters())
    make = signify.signify(Adam, stochastic=True, blocks=Blocks("cyclic", inactive="keep"))
    opt = make(model.named_parameters())
    blk = _blocks(opt)
    have: list[torch.Tensor] = []
    for _ in range(4):
        have += [p for p in blk.active_params() if all(p is not q for q in have)]
        _train(opt, params, 1)
        state, _ = measure(opt, params)
        assert state == 2 * F32 * sum(_sizes(have)) + F32 * len(have)
    assert len(have) == len(params)
