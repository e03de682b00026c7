"""Probe: does a compiled dynamic-shape full reduction run at bandwidth on the GPU?"""

import torch

from bench.common import time_ms

dev = torch.device("cuda")
gs = [torch.randn(2048 * 2048, device=dev) for _ in range(8)]
hs = [torch.randn(2048 * 2048, device=dev) for _ in range(8)]
acc = torch.zeros((), device=dev)


def full(gs, hs, acc):
    for g, h in zip(gs, hs):
        acc.add_((g - h).abs().sum())


def split(gs, hs, acc):
    for g, h in zip(gs, hs):
        acc.add_((g - h).abs().view(-1, 1024).sum(1).sum())


for name, f in [("full", full), ("split", split)]:
    for dyn in (True, False):
        c = torch.compile(f, fullgraph=True, dynamic=dyn)
        t = time_ms(lambda c=c: c(gs, hs, acc), dev, warmup=2, reps=10, windows=3)["median_ms"]
        gbs = 8 * 8 * 2**22 / t / 1e6
        print(name, "dynamic" if dyn else "static", f"{t:.3f} ms", f"{gbs:.0f} GB/s", flush=True)
