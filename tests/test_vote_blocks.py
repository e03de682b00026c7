"""blocks="depth" with vote=: only the active block's signs travel, and every rank ends with
the parameters of a single-process simulation of ABSignSGD-MV (algorithms.md 4.4)."""

from __future__ import annotations

import os
import sys
import tempfile

import torch

from signify.transforms.block_rules import depth_schedule

sys.path.insert(0, os.path.dirname(__file__))
import _vote_blocks_worker as vb
import torch.multiprocessing as mp
from test_vote import free_port


def simulate(world: int) -> list[torch.Tensor]:
    """Block i (0 = shallowest) chosen by the depth clock. Each rank keeps torch SGD's momentum
    (buf = g on a fresh start, else 0.9 buf + g) on its worker; the state is dropped when the
    block is switched out, so it starts afresh at every new activation. The update is
    -lr * sign(sum over ranks of sign(buf)), no move on a tie."""
    xs = [x.double() for x in vb.initial()]
    bufs: list[torch.Tensor] = []
    previous = None
    for step, block in enumerate(depth_schedule(len(vb.SIZES), 10.0, vb.STEPS)):
        grads = [vb.gradient(r, step, block).double() for r in range(world)]
        if block == previous:
            bufs = [0.9 * b + g for b, g in zip(bufs, grads)]
        else:
            bufs = grads
        votes = sum(torch.sign(b) for b in bufs)
        xs[block] = xs[block] - vb.LR * torch.sign(votes)
        previous = block
    return xs


def test_vote_with_blocks_sends_only_the_active_block_and_matches_simulation():
    world = 2
    # a fork server that imported torch once (shared with the worker's other spawns)
    mp.set_forkserver_preload(
        ["torch", "torch.distributed", "torch._dynamo", "signify", "_vote_blocks_worker"]
    )
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            vb.worker,
            args=(world, free_port(), out),
            nprocs=world,
            join=True,
            start_method="forkserver",
        )
        ranks = [torch.load(f"{out}/rank{r}.pt", weights_only=False) for r in range(world)]
    picks = depth_schedule(len(vb.SIZES), 10.0, vb.STEPS)
    expected_coords = [torch.Size(vb.SIZES[b]).numel() for b in picks]
    ref = simulate(world)
    for r in ranks:
        assert r["coords"] == expected_coords  # the vote carried the active block only
        for got, want in zip(r["params"], ref):
            torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)
