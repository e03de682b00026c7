"""Compiled (at each inlining threshold) against eager on the device: the same steps from the
same parameters, counting differing elements. ``PYTHONPATH=. python bench/realize_check.py``"""

from __future__ import annotations

import os
import sys

import torch

import signify

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(compile_: bool, dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator(device=DEV).manual_seed(0)
    ps = [
        torch.nn.Parameter(torch.randn(s, device=DEV, generator=gen).to(dtype))
        for s in [(1024, 512), (512,), (300, 7)]
    ]
    opt = signify.signify(torch.optim.Adam, stochastic=True, compile=compile_, seed=3)(
        ps, lr=1e-3, weight_decay=0.01
    )
    for _ in range(8):
        for p in ps:
            p.grad = torch.randn(p.shape, device=DEV, generator=gen).to(dtype)
        opt.step()
    return [p.detach().float() for p in ps]


for dname in sys.argv[1:] or ["fp32"]:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dname]
    eager = run(False, dtype)
    for t in os.environ.get("THRESHOLDS", "30,8").split(","):
        os.environ["SIGNIFY_REALIZE_THRESHOLD"] = t
        comp = run(True, dtype)
        diff = sum(int((a != b).sum()) for a, b in zip(eager, comp))
        print(
            f"{dname} threshold {t}: {diff} of {sum(a.numel() for a in eager)} differ", flush=True
        )
