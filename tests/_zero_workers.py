"""Worker side of tests/test_zero.py: signified optimizers under
``torch.distributed.optim.ZeroRedundancyOptimizer`` on 3 gloo ranks (one spawn runs every
scenario). Each rank saves what it saw to ``out/rank{r}.pt`` after every scenario, so that a
rank that dies or hangs in one scenario still reports the others; the test process compares
them with single-process runs over all the parameters (`reference`).

The model is four float64 tensors (24, 4, 5 and 3 entries); ZeRO's greedy partition gives
rank 0 ``W``, rank 1 ``v`` and rank 2 ``b`` and ``u`` (by size, largest first), and with the
two param groups ``[W, b]``, ``[v, u]``: rank 0 ``W``, rank 1 ``b`` and ``u``, rank 2 ``v``
(a group empty on ranks 0 and 2). Each rank computes the gradient of its own data; the
ranks then average them by hand (an all-gather, summed in rank order, as `reference` does).
"""

from __future__ import annotations

import copy
import os
import traceback
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from _gloo import init_gloo, leave
from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO

import signify
from signify.transforms.stepsize_alias import Alias

WORLD = 3
STEPS = 6
SHAPES = [(6, 4), (4,), (5,), (3,)]  # W, b, v, u
NAN_STEP = 3  # the "nan" scenario: a NaN in u's gradient (rank 2's partition) at this step


def params(shapes: list[tuple[int, ...]] = SHAPES) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def data(rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    a = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    return a, torch.randint(0, 4, (16,), generator=gen), torch.randn(8, generator=gen).double()


def loss_of(ps: list[torch.Tensor], rank: int) -> torch.Tensor:
    """Softmax regression in (W, b) plus a quartic in v and a quadratic in u."""
    a, y, c = data(rank)
    out = F.cross_entropy(a @ ps[0] + ps[1], y)
    if len(ps) > 2:
        r = ps[2] - c[:5]
        out = out + 0.25 * (r**4).sum() + 0.5 * (r**2).sum() + ((ps[3] - c[5:]) ** 2).sum()
    return out


def grads_of(ps: list[torch.Tensor], rank: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = loss_of(ps, rank)
    return loss.detach(), list(torch.autograd.grad(loss, ps))


def mean_grads(ps: list[torch.Tensor], step: int, nan: bool) -> torch.Tensor:
    """Set each ``.grad`` to the mean of the ranks' gradients; return this rank's loss."""
    loss, gs = grads_of(ps, dist.get_rank())
    for p, g in zip(ps, gs):
        every = [torch.empty_like(g) for _ in range(WORLD)]
        dist.all_gather(every, g)
        p.grad = sum(every) / WORLD
    if nan and step == NAN_STEP:
        ps[3].grad[0] = float("nan")
    return loss


#: name -> (class factory, keywords for ZeRO / the class, two param groups (1/0), a NaN at
#: NAN_STEP (1/0))
CHAINS: dict[str, tuple[Any, dict[str, Any], int, int]] = {
    "signum": (lambda: signify.signify(torch.optim.SGD), {"lr": 0.05, "momentum": 0.9}, 0, 0),
    "nan": (lambda: signify.signify(torch.optim.SGD), {"lr": 0.05, "momentum": 0.9}, 0, 1),
    "signum_raise": (
        lambda: signify.signify(torch.optim.SGD),
        {"lr": 0.05, "momentum": 0.9, "nonfinite": "raise"},
        0,
        0,
    ),
    "sign_adamw": (
        lambda: signify.signify(torch.optim.AdamW),
        {"lr": 0.05, "weight_decay": 0.1},
        1,
        0,
    ),
    "clip": (
        lambda: signify.signify(torch.optim.SGD, sign=False, max_grad_norm=0.1),
        {"lr": 0.1},
        0,
        0,
    ),
    "stochastic": (
        lambda: signify.signify(torch.optim.Adam, stochastic=True),
        {"lr": 0.05, "seed": 11},
        0,
        0,
    ),
    "alias_i": (lambda: signify.signify(torch.optim.SGD, stepsize="alias"), {}, 0, 0),
    "alias": (lambda: signify.signify(torch.optim.SGD, stepsize=Alias(f_lower=0.0)), {}, 0, 0),
    "alias_group": (
        lambda: signify.signify(torch.optim.SGD, stepsize=Alias(scope="group", f_lower=0.0)),
        {},
        1,
        0,
    ),
    "alias_sum": (
        lambda: signify.signify(torch.optim.SGD, stepsize=Alias(f_lower=0.0, reduce="sum")),
        {},
        0,
        0,
    ),
    "alias_tensor": (
        lambda: signify.signify(torch.optim.SGD, stepsize=Alias(scope="tensor")),
        {},
        0,
        0,
    ),
    "sto_alias_adamw": (
        lambda: signify.signify(torch.optim.AdamW, stochastic=True, stepsize=Alias(f_lower=0.0)),
        {"weight_decay": 0.1, "seed": 5},
        0,
        0,
    ),
    "alias_clip": (
        lambda: signify.signify(torch.optim.SGD, stepsize=Alias(f_lower=0.0), max_grad_norm=0.5),
        {},
        0,
        0,
    ),
}


def groups(ps: list[torch.Tensor], two: bool) -> list[dict[str, Any]]:
    return [{"params": [ps[0], ps[1]]}, {"params": ps[2:]}] if two else [{"params": ps}]


def train(opt: Any, ps: list[torch.Tensor], steps: range, nan: bool, zero: bool) -> list:
    sizes = []
    for step in steps:
        if zero:
            loss = mean_grads(ps, step, nan)
        else:  # one process over all parameters: the ranks' mean gradient and loss
            out = [grads_of(ps, r) for r in range(WORLD)]
            loss = sum(o[0] for o in out) / WORLD
            for i, p in enumerate(ps):
                p.grad = sum(o[1][i] for o in out) / WORLD
            if nan and step == NAN_STEP:
                ps[3].grad[0] = float("nan")
        local = opt.optim if zero else opt
        local.set_loss(loss)
        opt.step()
        sizes.append([s.detach().clone() for s in local.stepsizes()])
    return sizes


def run(name: str, zero: bool = True, shapes: list[tuple[int, ...]] = SHAPES) -> dict[str, Any]:
    make, kw, two, nan = CHAINS[name]
    ps = params(shapes)
    opt = (
        ZeRO(groups(ps, two), optimizer_class=make(), **kw)
        if zero
        else make()(groups(ps, two), **kw)
    )
    sizes = train(opt, ps, range(1, STEPS + 1), nan, zero)
    local = opt.optim if zero else opt
    mine = local.all_params()
    return {
        "params": [p.detach().clone() for p in ps],
        "stepsizes": sizes,
        "skipped": local.skipped_steps,
        "owned": [next(i for i, p in enumerate(ps) if p is q) for q in mine],
    }


def reference(name: str, shapes: list[tuple[int, ...]] = SHAPES) -> dict[str, Any]:
    """One process, no ZeRO: the same chain over every parameter, on the mean gradient."""
    return run(name, zero=False, shapes=shapes)


# ------------------------------------------------------------------------------ scenarios
def run_checkpoints(rank: int) -> dict[str, Any]:
    """Save after step 3 through ZeRO (``consolidate_state_dict(to=0)``, ``state_dict()`` on
    rank 0, sent to every rank), load into a fresh ZeRO with another seed, run steps 4-6.
    Then the same from a single-process signify checkpoint of steps 1-3."""
    name = "sto_alias_adamw"
    make, kw, two, _ = CHAINS[name]
    ps = params()
    z = ZeRO(groups(ps, two), optimizer_class=make(), **kw)
    train(z, ps, range(1, 4), False, True)
    z.consolidate_state_dict(to=0)
    box = [copy.deepcopy(z.state_dict()) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    saved = box[0]
    at3 = [p.detach().clone() for p in ps]
    train(z, ps, range(4, STEPS + 1), False, True)
    out: dict[str, Any] = {"straight": [p.detach().clone() for p in ps]}
    out["top_keys"] = sorted(saved)

    def resume(sd: dict[str, Any]) -> tuple[list[torch.Tensor], list[list[str]]]:
        qs = [p.detach().clone().requires_grad_() for p in at3]
        z2 = ZeRO(groups(qs, two), optimizer_class=make(), **{**kw, "seed": 99})
        z2.load_state_dict(copy.deepcopy(sd))
        keys = [sorted(g) for g in z2.optim.param_groups]
        train(z2, qs, range(4, STEPS + 1), False, True)
        return [q.detach().clone() for q in qs], keys

    out["resumed"], _ = resume(saved)
    # one process over every parameter (each rank runs it alone), steps 1-3, then ZeRO
    ps1 = params()
    one = make()(groups(ps1, two), **kw)
    train(one, ps1, range(1, 4), False, False)
    out["from_single"], out["group_keys"] = resume(one.state_dict())
    return out


def run_refusals() -> dict[str, str]:
    from signify.transforms import Blocks

    cases = {
        "vote": lambda: signify.signify(torch.optim.SGD, vote="majority"),
        "blocks": lambda: signify.signify(torch.optim.SGD, blocks=Blocks("cyclic")),
        "alias_mean": lambda: signify.signify(torch.optim.SGD, stepsize=Alias(reduce="mean")),
    }
    return {name: refused(make) for name, make in cases.items()}


def refused(make: Any) -> str:
    """The error a ZeRO over ``make()`` raises within two steps ("no error": none)."""
    ps = params()
    try:
        z = ZeRO(ps, optimizer_class=make(), lr=0.1)
        train(z, ps, range(1, 3), False, True)
        return "no error"
    except (ValueError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"


def run_tensor_scope() -> dict[str, Any]:
    """``scope="tensor"``: ranks hold different numbers of slots (1, 1 and 2)."""
    out = run("alias_tensor")
    out["sum"] = refused(
        lambda: signify.signify(torch.optim.SGD, stepsize=Alias(scope="tensor", reduce="sum"))
    )
    return out


def scenarios(rank: int) -> dict[str, Any]:
    """In the order they run: those that hang (a rank with nothing to step) or abort the
    process (a collective of another size) without the fix come last."""
    return {
        "det": lambda: {n: run(n) for n in ("signum", "sign_adamw")},
        "nan": lambda: run("nan"),
        "clip": lambda: run("clip"),
        "stochastic": lambda: run("stochastic"),
        "alias": lambda: {n: run(n) for n in ("alias_i", "alias", "alias_group", "alias_sum")},
        "checkpoints": lambda: run_checkpoints(rank),
        "refusals": run_refusals,
        "empty": lambda: {
            n: run(n, shapes=SHAPES[:2]) for n in ("alias_clip", "signum", "signum_raise")
        },
        "tensor": run_tensor_scope,
    }


def worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port, timeout_s=int(os.environ.get("SIGNIFY_ZERO_TIMEOUT", "60")))
    result: dict[str, Any] = {}
    for name, fn in scenarios(rank).items():
        try:
            result[name] = fn()
        except Exception:
            result[name] = {"error": traceback.format_exc()}
        path = os.path.join(out, f"rank{rank}.pt")
        torch.save(result, path + ".tmp")  # whole or not at all: a peer's abort kills this rank
        os.replace(path + ".tmp", path)
    dist.barrier()
    dist.destroy_process_group()
    leave()
