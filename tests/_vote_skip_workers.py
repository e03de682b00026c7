"""Worker side of tests/test_vote_skips.py: a majority vote where one rank skips its own step
(a non-finite gradient), with a stepsize oracle after the vote and with bf16 parameters.
One spawn of ``WORLD`` gloo ranks runs every scenario; each rank saves what it saw to
``out/rank{r}.pt`` and the test compares the ranks with each other and with float64
simulations (`simulate_vote_alias`, `simulate_vote_sign`)."""

from __future__ import annotations

import math
import os
import traceback
from typing import Any

import torch
import torch.distributed as dist
from _gloo import init_gloo, leave

import signify
from signify.transforms.vote import MajorityVote

WORLD = 3
STEPS = 7
BAD_RANK, BAD_STEP = 1, 2  # this rank's gradient holds a NaN at this step
SHAPES = [(13,), (4, 5), (3,)]  # sizes not multiples of 8 * WORLD
LR = 0.5


def initial(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(s, generator=gen).to(dtype) for s in SHAPES]


def gradient(rank: int, step: int) -> list[torch.Tensor]:
    """Fresh per rank and step; the bad rank's first tensor holds a NaN at the bad step."""
    gen = torch.Generator().manual_seed(100 * step + rank)
    gs = [torch.randn(s, generator=gen) for s in SHAPES]
    if rank == BAD_RANK and step == BAD_STEP:
        gs[0][3] = float("nan")
    return gs


#: name -> (signify keywords, constructor keywords, parameter dtype)
SCENARIOS: dict[str, tuple[dict[str, Any], dict[str, Any], torch.dtype]] = {
    "alias": ({"stepsize": "alias"}, {"lr": LR}, torch.float32),
    "alias_momentum": ({"stepsize": "alias"}, {"lr": LR, "momentum": 0.9}, torch.float32),
    "alias_lowmem": ({"stepsize": "alias-lowmem"}, {"lr": LR}, torch.float32),
    "alias_adam": ({"stepsize": "alias-adam"}, {"lr": 1e-2}, torch.float32),
    "bf16": ({}, {"lr": 1e-2, "momentum": 0.9}, torch.bfloat16),
    "bf16_stochastic": ({"stochastic": True}, {"lr": 1e-2, "momentum": 0.9}, torch.bfloat16),
}


def run(rank: int, name: str) -> dict[str, Any]:
    sig, kw, dtype = SCENARIOS[name]
    ps = [torch.nn.Parameter(x) for x in initial(dtype)]
    make = signify.signify(torch.optim.SGD, vote=MajorityVote(zeros="exact"), **sig)
    opt = make(ps, compile=False, seed=11, **kw)
    gammas = []
    for step in range(STEPS):
        for p, g in zip(ps, gradient(rank, step)):
            p.grad = g.to(dtype)
        opt.step()
        if "stepsize" in sig:
            gammas.append(opt.stepsizes()[0].flatten().tolist())
    return {
        "params": [p.detach().clone() for p in ps],
        "gammas": gammas,
        "skipped": int(opt.skipped_steps),
    }


def worker(rank: int, world: int, port: int, out: str) -> None:
    # a hang in a collective fails the test after a minute instead of blocking CI
    init_gloo(rank, world, port, timeout_s=60)
    result: dict[str, Any] = {}
    try:
        for name in SCENARIOS:
            result[name] = run(rank, name)
        dist.barrier()
    except Exception:
        result["error"] = traceback.format_exc()
        raise
    finally:
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()
    leave()


# ------------------------------------------------------------------------------ references
def _votes(grads: list[list[torch.Tensor]], dirs: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """sign(sum of the ranks' votes); a rank whose gradient is not finite abstains (0)."""
    out = []
    for i in range(len(SHAPES)):
        total = torch.zeros(SHAPES[i], dtype=torch.float64)
        for g, d in zip(grads, dirs):
            if all(torch.isfinite(t).all() for t in g):
                total += torch.sign(d[i])
        out.append(torch.sign(total))
    return out


def simulate_vote_alias(world: int = WORLD) -> tuple[list[torch.Tensor], list[list[float]]]:
    """signSGD-MV with ALIAS option I (global scope, reduce="mean") in float64, written from
    the algorithm: each rank keeps its previous gradient and step (updated only on its own
    finite steps); the l1 and dot terms are averaged over ranks, the moves maxed; gamma,
    eta and d change only when every rank's gradient is finite (a NaN anywhere poisons the
    averages); the voted step moves every rank by gamma * lr."""
    xs = [x.double() for x in initial()]
    g_prev: list[list[torch.Tensor] | None] = [None] * world
    s_prev = [0.0] * world  # the rank's last step gamma * lr (= its l-inf move: a sign step)
    eta, d, dtilde, gamma = 0.0, 1e-6, 0.0, 1e-3
    gammas = []
    for step in range(STEPS):
        grads = [[g.double() for g in gradient(r, step)] for r in range(world)]
        ok = [all(torch.isfinite(t).all() for t in g) for g in grads]
        l1 = dot = has = 0.0
        dx = -math.inf
        for r in range(world):
            gp = g_prev[r]
            if gp is None:
                continue
            l1 += sum(float((a - b).abs().sum()) for a, b in zip(grads[r], gp))
            dot += sum(float((a * torch.sign(b)).sum()) for a, b in zip(grads[r], gp)) * s_prev[r]
            has += 1
            dx = max(dx, s_prev[r])
        if all(ok):
            if has > 0 and dx > 0:
                eta += (l1 / world) / dx
            dtilde += dot / world
            d = max(d, dtilde)
            gamma = math.sqrt(d / eta) if eta > 0 else 1e-3
        gammas.append([gamma * LR])
        votes = _votes(grads, grads)
        xs = [x - gamma * LR * v for x, v in zip(xs, votes)]
        for r in range(world):
            if ok[r]:
                g_prev[r], s_prev[r] = grads[r], gamma * LR
    return xs, gammas


def simulate_vote_sign(world: int = WORLD, lr: float = 1e-2) -> list[torch.Tensor]:
    """Signum-MV (torch SGD momentum 0.9 per rank, left untouched on a rank's skipped step)
    in float64."""
    xs = [x.double() for x in initial(torch.bfloat16)]
    bufs: list[list[torch.Tensor] | None] = [None] * world
    for step in range(STEPS):
        grads = [[g.double() for g in gradient(r, step)] for r in range(world)]
        for r in range(world):
            if all(torch.isfinite(t).all() for t in grads[r]):
                b = bufs[r]
                bufs[r] = (
                    list(grads[r]) if b is None else [0.9 * u + g for u, g in zip(b, grads[r])]
                )
        dirs = [b if b is not None else g for b, g in zip(bufs, grads)]
        xs = [x - lr * v for x, v in zip(xs, _votes(grads, dirs))]
    return xs
