"""Host cost of the plan check that sees replaced state entries (2026-12-07).

The executor reuses its plan while a key of the parameters and their state is unchanged; the
key now also holds the identity of every ``opt.state`` entry and of each tensor in them, so
that ``opt.state[p]["exp_avg"] = new`` or ``opt.state[p] = {}`` between steps is used (it
was silently ignored). This times the same compiled stochastic-Adam step of many small
tensors (host-bound) with the package before the change (``signify_old``, a copy of commit
35ad313's ``signify/`` on ``sys.path``) and after it, in one process, interleaved rounds,
medians; CUDA-graph replay off (the host work shows) and on.

    python bench/plan_check.py --old DIR [--device cuda] [--tensors 220] [--out x.json]

``DIR`` holds ``signify_old/`` (``git archive 35ad313 signify | tar x``, renamed: the core
imports only relatively).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from typing import Any

import torch

from bench import common


def build(pkg: Any, n: int, device: torch.device, replay: bool) -> Any:
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(64, 32, generator=gen).to(device).requires_grad_() for _ in range(n)]
    for p in ps:
        p.grad = torch.randn(64, 32, generator=gen).to(device)
    os.environ["SIGNIFY_CUDA_GRAPHS"] = "1" if replay else "0"
    opt = pkg.signify(torch.optim.Adam, stochastic=True, compile=True)(ps, lr=1e-3)
    for _ in range(4):
        opt.step()
    common.sync(device)
    return opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, help="folder holding signify_old/")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tensors", type=int, default=220)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sys.path.insert(0, args.old)
    pkgs = {
        "old": importlib.import_module("signify_old"),
        "new": importlib.import_module("signify"),
    }
    device = torch.device(args.device)
    result: dict[str, Any] = {"environment": common.environment(device)}
    for replay in [False, True] if device.type == "cuda" else [False]:
        opts = {k: build(pkg, args.tensors, device, replay) for k, pkg in pkgs.items()}
        times: dict[str, list[float]] = {k: [] for k in opts}
        for r in range(args.rounds):
            for k in sorted(opts, reverse=r % 2 == 1):  # alternate who goes first
                common.sync(device)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    opts[k].step()
                common.sync(device)
                times[k].append((time.perf_counter() - t0) / args.steps * 1e3)
        med = {k: statistics.median(v) for k, v in times.items()}
        key = "replay" if replay else "no_replay"
        result[key] = {"median_ms": med, "min_ms": {k: min(v) for k, v in times.items()}}
        print(
            f"{key}: old {med['old']:.3f} ms, new {med['new']:.3f} ms, new/old "
            f"{med['new'] / med['old']:.3f}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
