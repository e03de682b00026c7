"""Worker of tests/test_vote_blocks.py: 2 gloo ranks train with blocks="depth" and vote."""

from __future__ import annotations

import torch
import torch.distributed as dist
from _gloo import init_gloo, leave

import signify

SIZES = [(6, 5), (13,), (4, 4)]  # one tensor per layer, sizes not multiples of 8
STEPS = 9
LR = 0.01


def initial() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=gen) for s in SIZES]


def gradient(rank: int, step: int, i: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * rank + 10 * step + i)
    return torch.randn(SIZES[i], generator=gen)


def worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    params = [torch.nn.Parameter(x.clone()) for x in initial()]
    named = [(f"layers.{i}.weight", p) for i, p in enumerate(params)]
    opt = signify.signify(torch.optim.SGD, blocks="depth", vote="majority")(
        named, lr=LR, momentum=0.9
    )
    coords = []
    for step in range(STEPS):
        for i, p in enumerate(params):  # as autograd would: only trainable tensors get a grad
            p.grad = gradient(rank, step, i) if p.requires_grad else None
        opt.step()
        coords.append(opt.vote_stats["coords"])
    torch.save({"params": [p.detach() for p in params], "coords": coords}, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()
    leave()
