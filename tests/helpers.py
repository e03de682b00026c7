"""Small shared utilities of the tests."""

from __future__ import annotations

import torch


def make_params(shapes=((13, 7), (5,), (3, 4, 2)), dtype=torch.float32):
    return [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]


def set_random_grads(params, generator=None, scale=1.0):
    for p in params:
        p.grad = torch.randn(p.shape, dtype=p.dtype, generator=generator) * scale


def run_steps(opt, params, steps, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        set_random_grads(params, g, scale)
        opt.step()
    return [p.detach().clone() for p in params]
