"""Host time of a compiled per-tensor step, with inductor's size asserts on and off.

A compiled per-tensor step is one compiled call per chunk of ``compile_chunk`` tensors; when
it cannot replay as a CUDA graph (gradients that move every step) or runs on a CPU, the
host work of those calls sets the step time. This builds two optimizers over the same shapes
in one process, one whose elementwise graphs compile with ``size_asserts`` on
(``SIGNIFY_INDUCTOR``) and one with signify's default (off), and times them in interleaved
rounds (medians). The bookkeeping graph (one call a step) has the default in both.

    PYTHONPATH=. python bench/host_overhead.py [--tensors 220] [--chunk 8] [--device cuda]

On CUDA the CUDA-graph replay is turned off (``SIGNIFY_CUDA_GRAPHS=0``): the replay hides
the host work this measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import signify
from bench import common


def build(n: int, shape: tuple[int, ...], chunk: int, device: torch.device, asserts: bool):
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(shape, generator=gen).to(device).requires_grad_() for _ in range(n)]
    for p in ps:
        p.grad = torch.randn(shape, generator=gen).to(device)
    if asserts:
        os.environ["SIGNIFY_INDUCTOR"] = json.dumps({"size_asserts": True})
    else:
        os.environ.pop("SIGNIFY_INDUCTOR", None)
    cls = signify.signify(torch.optim.Adam, stochastic=True, compile=True, compile_chunk=chunk)
    opt = cls(ps, lr=1e-3)
    for _ in range(3):  # compiles here, with the environment of this build
        opt.step()
    common.sync(device)
    return opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tensors", type=int, default=220)
    ap.add_argument("--shape", default="64,32", help="each tensor's shape (small: host-bound)")
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=5, help="steps per timed round")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="JSON path")
    args = ap.parse_args()
    device = torch.device(args.device)
    os.environ["SIGNIFY_CUDA_GRAPHS"] = "0"
    if device.type == "cpu":
        torch.set_num_threads(1)
    shape = tuple(int(s) for s in args.shape.split(","))
    opts = {
        "size_asserts on": build(args.tensors, shape, args.chunk, device, True),
        "size_asserts off (default)": build(args.tensors, shape, args.chunk, device, False),
    }
    times: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(args.rounds):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            common.sync(device)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e3)
    rows = [
        {"setting": k, "median_ms": statistics.median(v), "min_ms": min(v)}
        for k, v in times.items()
    ]
    calls = -(-args.tensors // args.chunk)
    print(f"{args.tensors} tensors of {shape}, chunk {args.chunk} ({calls} chunk calls a step)")
    print(common.table(rows, ["setting", "median_ms", "min_ms"]))
    payload = {"environment": common.environment(device), "args": vars(args), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main()
