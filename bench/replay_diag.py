"""Where a replayed step's time goes, old package against this tree (2026-12-07).

`bench/plan_check.py` measured a replayed (CUDA graph) step of 220 small tensors at 1.5-1.8x
the time of 35ad313's. This splits one step into the host's share (the Python work before
the replay: plan key, hyperparameters, signature; timed over calls without a sync) and the
graph's (its replay alone, timed with events), and counts the kernels a replay runs
(torch.profiler), for both packages in one process.

    python bench/replay_diag.py --old DIR [--tensors 220] [--out x.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from typing import Any

import torch

from bench.plan_check import build


def host_us(opt: Any, n: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        opt.step()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / n * 1e6


def graph_us(opt: Any, n: int) -> float:
    g = opt._executor.replay.graph[1]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n * 1e3


def kernels(opt: Any) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--tensors", type=int, default=220)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sys.path.insert(0, args.old)
    pkgs = {
        "old": importlib.import_module("signify_old"),
        "new": importlib.import_module("signify"),
    }
    device = torch.device("cuda")
    opts = {k: build(pkg, args.tensors, device, True) for k, pkg in pkgs.items()}
    for opt in opts.values():
        for _ in range(4):
            opt.step()
        assert opt._executor.replay.graph is not None, "not replaying"
    res: dict[str, dict[str, Any]] = {k: {"host": [], "graph": []} for k in opts}
    for r in range(args.rounds):
        for k in sorted(opts, reverse=r % 2 == 1):
            res[k]["host"].append(host_us(opts[k], 50))
            res[k]["graph"].append(graph_us(opts[k], 50))
    out = {}
    for k, opt in opts.items():
        out[k] = {
            "host_us": statistics.median(res[k]["host"]),
            "graph_us": statistics.median(res[k]["graph"]),
            "kernels_per_step": kernels(opt),
            "replays": opt._executor.replay.graph[3],
        }
    print("| package | host us/step | graph us/replay | kernels/step | replays |")
    print("|---|---|---|---|---|")
    for k, v in out.items():
        cells = [f"{v['host_us']:.1f}", f"{v['graph_us']:.1f}", v["kernels_per_step"], v["replays"]]
        print(f"| {k} | " + " | ".join(map(str, cells)) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
