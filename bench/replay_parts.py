"""Where the host time of a replayed step goes, old package against this tree, on a GPU
(written 2026-12-07, first run in the thirteenth GPU session).

`bench/replay_diag.py` (twelfth session) found the replayed step of 220 small tensors
(stochastic Adam, compiled) at 1.4-1.6x the wall time of 35ad313's with the same CUDA graph
(166 us, 126 kernels each), while cProfile on the same machine showed the new package's
Python work below the old one's, and an emulation on the CPU (replay stubbed) shows the two
equal. This checks for a device sync (`torch.cuda.set_sync_debug_mode`) and times the
parts of a step one by one: active parameters, plan key, key comparison, the step; and
lists the host-side events (aten ops and CUDA runtime calls, torch.profiler) whose count per
step differs between the two packages: work launched outside the graph would show there.

    python bench/replay_parts.py --old DIR     (DIR holds signify_old/, as plan_check.py)
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import warnings
from collections import Counter
from typing import Any

import torch

from bench.plan_check import build


def parts(opt: Any) -> tuple[float, ...]:
    ex = opt._executor
    torch.cuda.synchronize()
    a = time.perf_counter()
    active = ex.planner.active_params()
    b = time.perf_counter()
    key = ex._plan_key(active)
    c = time.perf_counter()
    _ = key == ex._plan_key_
    d = time.perf_counter()
    opt.step()
    e = time.perf_counter()
    torch.cuda.synchronize()
    return b - a, c - b, d - c, e - d


def host_ops(opt: Any) -> Counter[str]:
    """Names of the host-side events (aten ops, CUDA runtime calls) of one step."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    return Counter(e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.old)
    opts = {}
    for name in ("signify_old", "signify"):
        opts[name] = build(importlib.import_module(name), 220, torch.device("cuda"), True)
        for _ in range(10):
            opts[name].step()
    for name, opt in opts.items():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                opt.step()
        torch.cuda.set_sync_debug_mode(0)
        print(name, "sync warnings:", len(caught), [str(x.message)[:80] for x in caught[:2]])
    ops = {name: host_ops(opt) for name, opt in opts.items()}
    names = sorted(set(ops["signify_old"]) | set(ops["signify"]))
    print("host events per step that differ (old -> new):")
    for n in names:
        if ops["signify_old"][n] != ops["signify"][n]:
            print(f"  {n[:70]}: {ops['signify_old'][n]} -> {ops['signify'][n]}")
    print(
        "total host events:", sum(ops["signify_old"].values()), "->", sum(ops["signify"].values())
    )
    for _ in range(3):
        for name, opt in opts.items():
            xs = [parts(opt) for _ in range(100)]
            med = [statistics.median(x[i] for x in xs) * 1e6 for i in range(4)]
            print(name, " ".join(f"{m:.1f}" for m in med), "us: active, key, compare, step")
    for name, opt in opts.items():
        ts = []
        for _ in range(20):
            torch.cuda.synchronize()
            a = time.perf_counter()
            for _ in range(20):
                opt.step()
            ts.append((time.perf_counter() - a) / 20 * 1e6)
        torch.cuda.synchronize()
        print(name, "host us per step (20 steps, no sync)", f"{statistics.median(ts):.1f}")


if __name__ == "__main__":
    main()
