"""ALIAS under torch.distributed (gloo, 2 spawned ranks): every rank uses the same stepsize,
equal to a single-process simulation of the all-reduced scalars.

* ``reduce="mean"`` (replicated parameters, local gradients): each rank has its own data, no
  gradient all-reduce (so the ranks' iterates differ, which makes a missing all-reduce
  visible); the simulation averages the l1 and dot terms over ranks and takes the max of the
  moves.
* ``reduce="sum"`` (sharded parameters): rank 0 owns two tensors, rank 1 the third; both see
  the full model's gradient. The stepsize must equal single-process ALIAS over all three.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import signify
from signify.transforms.stepsize_alias import Alias
from tests._gloo import leave
from tests.alias_reference import RefAlias
from tests.test_stepsize import Problem

STEPS = 12
WORLD = 2


def _set_grads(problem, params):
    f, gs = problem.grads([p.detach().numpy() for p in params])
    for p, g in zip(params, gs):
        p.grad = torch.from_numpy(g)
    return f


def _worker(rank, path, seeds):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{path}/rdzv", rank=rank, world_size=WORLD)
    try:
        out = {}
        # mean: own data per rank, replicated start
        pb = Problem(seed=seeds[rank])
        pb.x0 = Problem(seed=seeds[0]).x0
        ps = pb.params()
        opt = signify.signify(torch.optim.SGD, stepsize=Alias(f_lower=0.0))(ps)
        gam = []
        for _ in range(STEPS):
            opt.set_loss(_set_grads(pb, ps))
            opt.step()
            gam.append(opt.stepsizes()[0].item())
        out["mean_gamma"] = gam
        out["mean_x"] = [p.detach().numpy().copy() for p in ps]
        # sum: shards of one model, same data on both ranks
        pb = Problem(seed=seeds[0])
        ps = pb.params()
        mine = [ps[0], ps[1]] if rank == 0 else [ps[2]]
        opt = signify.signify(torch.optim.SGD, stepsize=Alias(reduce="sum"))(mine)
        gam = []
        for _ in range(STEPS):
            _set_grads(pb, ps)
            opt.step()
            gam.append(opt.stepsizes()[0].item())
            for i, p in enumerate(ps):  # exchange the updated shards
                dist.broadcast(p.data, src=0 if i < 2 else 1)
        out["sum_gamma"] = gam
        out["sum_x"] = [p.detach().numpy().copy() for p in ps]
        torch.save(out, f"{path}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    leave()  # gloo's teardown race at interpreter exit (tests/_gloo.py)


def _simulate_mean(seeds):
    """Per-rank iterates, shared option-II stepsize from averaged l1 / max move."""
    pbs = [Problem(seed=s) for s in seeds]
    x0 = Problem(seed=seeds[0]).x0
    xs = [[x.numpy().copy() for x in x0] for _ in pbs]
    eta, f0, prev, gam_hist = 0.0, None, None, []
    for _ in range(STEPS):
        out = [pb.grads(x) for pb, x in zip(pbs, xs)]
        if f0 is None:
            f0 = float(np.mean([f for f, _ in out]))
        gs = [g for _, g in out]
        if prev is not None:
            l1 = np.mean(
                [sum(np.abs(a - b).sum() for a, b in zip(g, gp)) for g, gp in zip(gs, prev[1])]
            )
            dx = max(max(np.abs(a - b).max() for a, b in zip(x, xp)) for x, xp in zip(xs, prev[0]))
            eta += l1 / dx
        gamma = math.sqrt(f0 / eta) if eta > 0 else 1e-3
        gam_hist.append(gamma)
        prev = ([[a.copy() for a in x] for x in xs], gs)
        for x, g in zip(xs, gs):
            for a, b in zip(x, g):
                a -= gamma * np.sign(b)
    return gam_hist, xs


def test_alias_all_reduce_matches_single_process_simulation(tmp_path):
    seeds = [int(s) for s in torch.randint(0, 2**31, (WORLD,))]
    # a fork server that imported torch once (shared with the worker's other spawns): the
    # ranks start in a fraction of a second instead of each importing torch again
    mp.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", "signify"])
    mp.start_processes(
        _worker, args=(str(tmp_path), seeds), nprocs=WORLD, join=True, start_method="forkserver"
    )
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    # mean: identical stepsizes on both ranks, equal to the simulation
    gam, xs = _simulate_mean(seeds)
    for r in range(WORLD):
        np.testing.assert_allclose(res[r]["mean_gamma"], gam, rtol=1e-5)
        for a, b in zip(res[r]["mean_x"], xs[r]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert res[0]["mean_gamma"] == res[1]["mean_gamma"]
    # sum: the sharded stepsize is single-process ALIAS over the whole model
    pb = Problem(seed=seeds[0])
    ref = RefAlias([[0, 1, 2]])
    x = [t.numpy().copy() for t in pb.x0]
    want = [ref.step(x, pb.grads(x)[1])[0] for _ in range(STEPS)]
    for r in range(WORLD):
        np.testing.assert_allclose(res[r]["sum_gamma"], want, rtol=1e-5)
        for a, b in zip(res[r]["sum_x"], x):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_reduce_mode_without_a_process_group():
    assert not dist.is_initialized()
    assert Alias().reduce_mode() == "none"
    assert Alias(reduce="sum").reduce_mode() == "none"
