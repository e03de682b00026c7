"""Peak memory of the compiled 1-bit sign packing (alias-lowmem), before and after summing in uint8.

``pack_signs`` ORs 8 shifted bits per byte with a sum. A plain ``.sum(1)`` promotes uint8 to
int64, so the compiled reduction wrote an int64 buffer of 8 B per 8 elements (1 B/param) and
then cast it to uint8 (1 bit/param). ``.sum(1, dtype=torch.uint8)`` writes the byte directly.
This measures, on one device and in one process:

* the packing alone, compiled, on ``--numel`` elements: peak allocation above input + output;
* a compiled alias-lowmem step (``signify(SGD, stepsize="alias-lowmem", compile=True)``) on
  ``--tensors`` tensors of ``--numel`` elements: peak during ``step()`` above what was
  allocated before it, with the package's packing swapped for the old expression and back.

Prediction: old peak ~ 1 B/param of the largest compiled chunk, new ~ 0.

    python bench/pack_memory.py [--device cuda] [--numel 67108864] [--tensors 4]
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

import signify
from bench import common
from signify.transforms import stepsize_alias

NEW = stepsize_alias.pack_signs


def pack_int64_sum(g: torch.Tensor) -> torch.Tensor:
    """The expression before the change (sum promotes to int64, then a cast)."""
    n = g.numel()
    bits = F.pad((g > 0).to(torch.uint8), (0, (-n) % 8)).view(-1, 8)
    shifts = torch.arange(8, dtype=torch.uint8, device=g.device)
    return (bits << shifts).sum(1).to(torch.uint8)


def pack_alone(fn: Any, numel: int, device: torch.device) -> int:
    torch._dynamo.reset()
    g = torch.randn(numel, device=device)
    compiled = torch.compile(fn)
    out = compiled(g)  # compile and warm
    del out
    common.sync(device)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    common.peak_memory_reset(device)
    out = compiled(g)
    common.sync(device)
    peak = common.peak_memory(device) - before - out.numel() * out.element_size()
    return int(peak)


def step_peak(fn: Any, numel: int, tensors: int, device: torch.device) -> int:
    torch._dynamo.reset()
    stepsize_alias.pack_signs = fn
    try:
        ps = [torch.randn(numel, device=device, requires_grad=True) for _ in range(tensors)]
        opt = signify.signify(torch.optim.SGD, stepsize="alias-lowmem", compile=True)(ps, lr=1.0)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
        common.sync(device)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        common.peak_memory_reset(device)
        opt.step()
        common.sync(device)
        return int(common.peak_memory(device) - before)
    finally:
        stepsize_alias.pack_signs = NEW


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--numel", type=int, default=2**26)
    ap.add_argument("--tensors", type=int, default=4)
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for name, fn in (("int64 sum (before)", pack_int64_sum), ("uint8 sum (now)", NEW)):
        rows.append(
            {
                "pack": name,
                "alone_extra_B_per_param": pack_alone(fn, args.numel, device) / args.numel,
            }
        )
    print(common.table(rows, ["pack", "alone_extra_B_per_param"]))
    old_peak = step_peak(pack_int64_sum, args.numel, args.tensors, device)
    new_peak = step_peak(NEW, args.numel, args.tensors, device)
    n = args.numel * args.tensors
    print(
        f"alias-lowmem compiled step, {args.tensors} x {args.numel}: peak above before-step "
        f"{old_peak / n:.3f} B/param (before) vs {new_peak / n:.3f} B/param (now)"
    )


if __name__ == "__main__":
    main()
