"""Worker side of tests/test_vote.py: scenarios run by spawned gloo ranks.

One spawn of 7 ranks runs every scenario (process start-up dominates the cost): sub-groups
of 2, 3 and 4 ranks for the bit-exact checks, the whole world for the robustness run. Each
rank saves what it saw to ``out/rank{r}.pt``; the test process compares it with a
single-process simulation (`simulate`).
"""

from __future__ import annotations

import copy
import datetime
import math
import os
import traceback
from typing import Any

import torch
import torch.distributed as dist
from _gloo import init_gloo, leave

import signify
from signify.distributed import MajorityVoteHookState, majority_vote_hook
from signify.transforms.vote import MajorityVote

SIZES = [(37,), (8, 5), (3,), (16,)]  # sizes not multiples of 8; the last has zero gradients
STEPS = 4
LR = 0.01
MOMENTUM = 0.9
# (zeros, layout, nonfinite): "skip" makes the bad rank abstain everywhere at its bad step,
# "ignore" only where its gradient (and, afterwards, its momentum) is not finite.
CONFIGS = [
    ("dither", "auto", "skip"),
    ("exact", "auto", "skip"),
    ("dither", "other", "skip"),
    ("exact", "auto", "ignore"),
]
BAD_RANK_STEP = 2  # the group's last rank has non-finite gradients at this step
INACTIVE_STEP = 3  # tensor 2 has no gradient at this step (the active set changes)
ROBUST = {"d": 20, "n": 2048, "batch": 128, "steps": 100, "lr": 0.05, "momentum": 0.9}
ADVERSARIES = 3
TIMEOUT = 3  # seconds, of the group used by the timeout scenario
CLIP = 2.0  # max_grad_norm of the clipping scenario, below every rank's gradient norm


def initial(seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in SIZES]


def gradients(seed: int, rank: int, step: int, world: int) -> list[torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + rank * 1009 + step)
    gs: list[torch.Tensor | None] = [torch.randn(s, generator=gen) for s in SIZES]
    gs[3].zero_()  # type: ignore[union-attr]
    if step == BAD_RANK_STEP and rank == world - 1:
        gs[0][[1, 5]] = float("nan")  # type: ignore[index]
        gs[1][0, 0] = float("inf")  # type: ignore[index]
    if step == INACTIVE_STEP:
        gs[2] = None
    return gs


def other_layout(world: int) -> str:
    return "allgather"  # auto is all-to-all on a CPU


def run_exact(
    group: Any,
    world: int,
    zeros: str,
    layout: str,
    nonfinite: str,
    seed: int,
    max_grad_norm: float | None = None,
) -> dict[str, Any]:
    rank = dist.get_rank(group)
    params = [torch.nn.Parameter(t.clone()) for t in initial(seed)]
    vote = MajorityVote(group, zeros=zeros, layout=layout)
    opt = signify.signify(
        torch.optim.SGD, vote=vote, nonfinite=nonfinite, max_grad_norm=max_grad_norm
    )(params, lr=LR, momentum=MOMENTUM, dampening=MOMENTUM)
    stats = []
    for step in range(1, STEPS + 1):
        for p, g in zip(params, gradients(seed, rank, step, world)):
            p.grad = g
        opt.step()
        stats.append(dict(opt.vote_stats))
    return {"params": [p.detach().clone() for p in params], "stats": stats}


def run_stochastic(group: Any, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Identical gradients on every rank: the stochastic signs must still differ (and the
    parameters, bf16 ones written with stochastic rounding included, must not)."""
    params = [torch.nn.Parameter(t.clone().to(dtype)) for t in initial(7)]
    opt = signify.signify(torch.optim.SGD, stochastic=True, vote=group, seed=3)(
        params, lr=LR, momentum=MOMENTUM, dampening=MOMENTUM
    )
    vote = next(t for t in opt.chain if isinstance(t, MajorityVote))
    sends = []
    for step in range(1, 4):
        for p, g in zip(params, gradients(11, 0, step, 99)):
            p.grad = None if g is None else (g + 0.05 * step).to(dtype)
        opt.step()
        sends.append(vote._wire.send.clone())
    return {"params": [p.detach().clone() for p in params], "sends": sends}


def run_compiled(group: Any) -> dict[str, Any]:
    """The stochastic MV step compiled and eager on two ranks: the same bits. Rank 1 folds its
    rank into the sign noise's stream (a symbolic rank miscompiled on CPU and GPU once).
    compile_chunk=1: both tensors step through the same one-tensor graphs."""
    out: dict[str, Any] = {}
    for compiled in (False, True):
        params = [torch.nn.Parameter(t.clone()) for t in initial(5)[:2]]
        opt = signify.signify(
            torch.optim.SGD, stochastic=True, vote=group, seed=4, compile=compiled, compile_chunk=1
        )(params, lr=LR, momentum=MOMENTUM, dampening=MOMENTUM)
        for step in range(1, 3):
            for p, g in zip(params, gradients(13, dist.get_rank(), step, 2)):
                p.grad = None if g is None else g.clone()
            opt.step()
        out[compiled] = [p.detach().clone() for p in params]
    return out


def run_mismatch(group: Any, rank: int) -> list[str]:
    out = []
    for shapes in ([(6,), (4 + rank,)], [(2, 3)] if rank == 0 else [(3, 2)]):
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        opt = signify.signify(torch.optim.SGD, vote=group)(params, lr=0.1)
        for p in params:
            p.grad = torch.randn_like(p)
        before = [p.detach().clone() for p in params]
        try:
            opt.step()
            out.append("no error")
        except ValueError as e:
            unchanged = all(torch.equal(p, b) for p, b in zip(params, before))
            out.append(f"ValueError unchanged={unchanged}: {e}")
    return out


def run_seed(group: Any, rank: int) -> dict[str, Any]:
    """Ranks seeded apart, or given seed=rank: the vote group agrees on rank 0's seed."""
    import warnings

    torch.manual_seed(100 + rank)
    p = torch.nn.Parameter(torch.randn(3))
    out: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, seed in (("unseeded", None), ("per_rank", 7 + rank)):
            opt = signify.signify(torch.optim.SGD, vote=group, seed=seed)([p], lr=0.1)
            out[name] = int(opt.state_dict()["signify"]["seed"])
    out["warnings"] = [str(w.message) for w in caught]
    # ranks that load checkpoints of other seeds: the next step's check says so
    p.grad = torch.randn(3)
    opt.step()
    sd = opt.state_dict()
    sd["signify"]["seed"] = 100 + rank
    opt.load_state_dict(sd)
    p.grad = torch.randn(3)
    try:
        opt.step()
        out["reload"] = "no error"
    except ValueError as e:
        out["reload"] = str(e)
    return out


def run_hook(group: Any, zeros: str) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = dist.get_rank(group)
    world = dist.get_world_size(group)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    ref = copy.deepcopy(model)
    ddp = DDP(model, process_group=group)
    state = MajorityVoteHookState(group, zeros=zeros)
    ddp.register_comm_hook(state, majority_vote_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(500 + rank)
    agree = []
    for _ in range(3):  # DDP rebuilds its buckets after the first iteration
        x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)
        opt.zero_grad()
        ref.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        torch.nn.functional.mse_loss(ref(x), y).backward()
        for p, q in zip(model.parameters(), ref.parameters()):
            everyone = [torch.empty_like(q.grad) for _ in range(world)]
            dist.all_gather(everyone, q.grad, group=group)
            expected = torch.sign(sum(torch.sign(g) for g in everyone))
            agree.append(torch.equal(p.grad, expected))
        opt.step()
        ref.load_state_dict(model.state_dict())
    return {
        "agree": agree,
        "params": [p.detach().clone() for p in model.parameters()],
        "stats": dict(state.stats, bytes_sent=dict(state.stats["bytes_sent"])),
    }


def run_timeout(group: Any) -> str:
    """Rank 1 never builds or steps: rank 0 must fail after the group's timeout, not hang
    (building already waits: the group agrees on a seed)."""
    import time

    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.randn(5)
    t0 = time.perf_counter()
    try:
        opt = signify.signify(torch.optim.SGD, vote=group)([p], lr=0.1)
        opt.step()
        return "no error"
    except RuntimeError as e:
        return f"{type(e).__name__} after {time.perf_counter() - t0:.1f}s: {str(e)[:200]}"


def robust_loss(adversarial: bool) -> tuple[float, float]:
    """Least squares, every rank a minibatch of its own; the last ADVERSARIES ranks send
    inverted signs (they negate their gradients). Returns (initial, final) full loss."""
    c = ROBUST
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(c["n"], c["d"], generator=gen)
    y = x @ torch.randn(c["d"], generator=gen) + 0.5 * torch.randn(c["n"], generator=gen)
    w = torch.nn.Parameter(torch.zeros(c["d"]))
    opt = signify.signify(torch.optim.SGD, vote="majority")(
        [w], lr=c["lr"], momentum=c["momentum"], dampening=c["momentum"]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / c["steps"])
    local = torch.Generator().manual_seed(100 + rank)
    first = ((x @ w - y) ** 2).mean().item()
    for _ in range(c["steps"]):
        idx = torch.randint(0, c["n"], (c["batch"],), generator=local)
        with torch.no_grad():
            grad = 2 * x[idx].T @ (x[idx] @ w - y[idx]) / c["batch"]
        w.grad = -grad if adversarial and rank >= world - ADVERSARIES else grad
        opt.step()
        sched.step()
    return first, ((x @ w - y) ** 2).mean().item()


def worker(rank: int, world: int, port: int, out: str) -> None:
    import time

    t0 = time.perf_counter()
    init_gloo(rank, world, port)  # the other ranks wait while ranks 0 and 1 compile
    groups = {w: dist.new_group(list(range(w))) for w in (2, 3, 4)}
    short = dist.new_group([0, 1], timeout=datetime.timedelta(seconds=TIMEOUT))
    result: dict[str, Any] = {"times": {"init": time.perf_counter() - t0}}
    try:
        for w, group in groups.items():
            if rank >= w:
                continue
            for zeros, layout, nonfinite in CONFIGS:
                lay = other_layout(w) if layout == "other" else layout
                key = ("exact", w, zeros, lay, nonfinite)
                result[key] = run_exact(group, w, zeros, lay, nonfinite, seed=w)
            result[("clip", w)] = run_exact(group, w, "exact", "auto", "skip", w, CLIP)
            result[("hook", w)] = run_hook(group, "exact" if w == 4 else "dither")
        if rank < 3:
            result["stochastic"] = run_stochastic(groups[3])
            result["stochastic_bf16"] = run_stochastic(groups[3], torch.bfloat16)
        if rank < 2:
            result["mismatch"] = run_mismatch(groups[2], rank)
            result["seed"] = run_seed(groups[2], rank)
            result["compiled"] = run_compiled(groups[2])
        dist.barrier()
        result["times"]["scenarios"] = time.perf_counter() - t0
        result["robust"] = {"honest": robust_loss(False), "adversarial": robust_loss(True)}
        result["times"]["robust"] = time.perf_counter() - t0
        if rank == 0:
            result["timeout"] = run_timeout(short)
        dist.barrier()
    except Exception:
        result["error"] = traceback.format_exc()
        raise
    finally:
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()
    leave()  # only after success: an exception above ends the rank with an error


# ----------------------------------------------------------------------------- simulation
def simulate(
    world: int, zeros: str, nonfinite: str, seed: int, max_grad_norm: float | None = None
) -> list[torch.Tensor]:
    """The vote of W workers, in one process, written from the algorithm (float64 momentum,
    integer vote counts), independent of signify's code. With ``max_grad_norm`` each worker
    clips its own gradients (float32, torch's coefficient) before its momentum."""
    x = [t.clone() for t in initial(seed)]
    m: list[list[torch.Tensor | None]] = [[None] * len(SIZES) for _ in range(world)]
    lr = torch.tensor(LR, dtype=torch.float32)
    for step in range(1, STEPS + 1):
        grads = [gradients(seed, r, step, world) for r in range(world)]
        if max_grad_norm is not None:
            for r in range(world):
                norm = torch.stack([g.norm() for g in grads[r] if g is not None]).norm()
                coef = torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0)
                grads[r] = [None if g is None else g * coef for g in grads[r]]
        for i in range(len(SIZES)):
            if grads[0][i] is None:
                continue
            total = torch.zeros(x[i].numel(), dtype=torch.int64)
            for r in range(world):
                g = grads[r][i].double().reshape(-1)  # type: ignore[union-attr]
                ok = nonfinite == "ignore" or all(
                    bool(torch.isfinite(t).all()) for t in grads[r] if t is not None
                )
                if ok:
                    m[r][i] = g if m[r][i] is None else MOMENTUM * m[r][i] + (1 - MOMENTUM) * g
                d = torch.sign(m[r][i]) if ok else torch.zeros_like(g)  # type: ignore[arg-type]
                abstain = (d == 0) | ~torch.isfinite(g) | ~torch.isfinite(d)
                vote = torch.where(abstain, 0, d).long()
                if zeros == "dither" or world == 1:
                    c = torch.arange(g.numel())
                    dither = ((c + (step - 1) + r) % 2) * 2 - 1
                    vote = torch.where(abstain, dither, vote) if world > 1 else vote
                total += vote
            x[i] = x[i] - lr * torch.sign(total).float().view_as(x[i])
    return x


def expected_bytes(world: int, zeros: str, layout: str, sizes: list[tuple[int, ...]]) -> int:
    """Bytes sent per rank, from the layout's formula."""
    bits = 2 if zeros == "exact" else 1
    ratio = 1 if bits == 1 and world % 2 == 1 else 2 // bits
    length = sum(math.ceil(math.prod(s) / 8) * bits for s in sizes)
    if layout == "allgather":
        return (world - 1) * length
    return (world - 1) * math.ceil(length / world) * (1 + ratio)
