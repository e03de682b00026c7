"""Where a compiled step's time goes: the CUDA kernels of a few steps, per kernel name.

For a step far from the copy-bandwidth floor, the kernel table says whether the time is in
the update kernels (bytes), in extra passes (a reduction that inductor did not fuse), or in
gaps between kernels (host-bound). Profiles without CUDA graphs (``SIGNIFY_CUDA_GRAPHS=0``) so
that each kernel appears by name; the kernels are the ones the graph replays.

Usage: ``PYTHONPATH=. python bench/profile_step.py --case alias --case signum-bf16``
(GPU only), writes ``profile_<case>.txt`` under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import signify


def build(case: str, device: torch.device) -> tuple[Any, list[torch.Tensor], int]:
    """(optimizer, params, bytes a fused step must move) for a named case, 134M params."""
    dtype = torch.bfloat16 if case.endswith("-bf16") else torch.float32
    base = case.removesuffix("-bf16")
    gen = torch.Generator(device=device).manual_seed(0)
    ps = []
    for _ in range(32):
        p = torch.nn.Parameter(
            (torch.randn(2048, 2048, device=device, generator=gen) * 0.02).to(dtype)
        )
        p.grad = (torch.randn(2048, 2048, device=device, generator=gen) * 1e-3).to(dtype)
        ps.append(p)
    n, b = sum(p.numel() for p in ps), dtype.itemsize
    S = signify.signify
    if base == "signum":
        return signify.Signum(ps, lr=1e-3, momentum=0.9, compile=True), ps, 5 * b * n
    if base == "signsgd":
        return S(torch.optim.SGD, compile=True)(ps, lr=1e-3), ps, 3 * b * n
    if base.startswith("alias"):
        kw: dict[str, Any] = {}
        if base.endswith("-unit"):
            from signify.transforms.stepsize_alias import Alias

            kw["stepsize"] = Alias(move="unit")
        else:
            kw["stepsize"] = "alias"
        mom = 0.9 if "beta" in base else 0.0
        opt = S(torch.optim.SGD, compile=True, **kw)(ps, lr=1.0, momentum=mom)
        return opt, ps, (8 if mom else 6) * b * n
    if base == "stoadam":
        return S(torch.optim.Adam, stochastic=True, compile=True)(ps, lr=1e-3), ps, 7 * b * n
    raise ValueError(f"unknown case {case!r}")


def profile(case: str, out: Path, steps: int = 5) -> str:
    device = torch.device("cuda")
    opt, ps, nbytes = build(case, device)
    for _ in range(3):
        opt.step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            opt.step()
        torch.cuda.synchronize()
    per: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.name].append(e.device_time)
    total = sum(sum(v) for v in per.values()) / steps
    lines = [
        f"{case}: {total / 1e3:.3f} ms of kernels per step ({nbytes / 1e9:.2f} GB a fused step "
        f"must move); per kernel name, per step:",
        "| us/step | calls/step | us/call | kernel |",
        "|---|---|---|---|",
    ]
    for name, ts in sorted(per.items(), key=lambda kv: -sum(kv[1])):
        us, calls = sum(ts) / steps, len(ts) / steps
        lines.append(f"| {us:.1f} | {calls:.1f} | {us / calls:.1f} | {name[:110]} |")
    text = "\n".join(lines[:40])
    (out / f"profile_{case}.txt").write_text("\n".join(lines) + "\n")
    del opt, ps
    torch.cuda.empty_cache()
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", required=True)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args()
    os.environ.setdefault("SIGNIFY_CUDA_GRAPHS", "0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for case in args.case:
        print(profile(case, out), flush=True)
        print(flush=True)


if __name__ == "__main__":
    main()
