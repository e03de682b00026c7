"""Is the CUDA-graph replay active in a real training loop, and what does compile_chunk cost
there? A 24-layer GPT (``PRESETS["350m"]``), batch 8 x 512, bf16 autocast, full-parameter
Signum, ``zero_grad(set_to_none=True)`` (or ``False``, which keeps the gradients' addresses) every
iteration: ms per iteration (forward, backward,
step), how many steps were replays of the captured graph, and the first step's time (compile).

Usage: ``PYTHONPATH=. python bench/replay_check.py`` (GPU), ``--cpu`` for a tiny smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import signify
from bench import common
from signify.tasks.gpt import GPT, PRESETS

ROWS = [  # (label, compile_chunk (-1: flatten=True), CUDA graphs on, zero_grad(set_to_none=))
    ("AdamW fused", 0, True, True),
    ("Signum chunk=8", 8, True, True),
    ("Signum chunk=2", 2, True, True),
    ("Signum chunk=8, no CUDA graphs", 8, False, True),
    ("Signum chunk=2, no CUDA graphs", 2, False, True),
    ("AdamW fused, set_to_none=False", 0, True, False),
    ("Signum chunk=8, set_to_none=False", 8, True, False),
    ("Signum chunk=2, set_to_none=False", 2, True, False),
    # flatten=True: one buffer (signify/flat.py); a gradient allocated anew is copied in,
    # so the replay works with set_to_none=True too
    ("Signum flatten", -1, True, True),
    ("Signum flatten, set_to_none=False", -1, True, False),
    ("Signum flatten, no CUDA graphs", -1, False, True),
]


def run_row(
    label: str, chunk: int, graphs: bool, to_none: bool, args: argparse.Namespace
) -> dict[str, Any]:
    device = torch.device("cpu" if args.cpu else "cuda")
    torch.manual_seed(0)
    cfg = PRESETS[args.preset]
    model = GPT(cfg).to(device)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device)
    os.environ["SIGNIFY_CUDA_GRAPHS"] = "1" if graphs else "0"  # read when the optimizer is built
    if chunk == 0:
        opt: Any = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=not args.cpu)
    else:
        opt = signify.Signum(
            model.parameters(),
            lr=1e-4,
            momentum=0.9,
            compile=not args.cpu,
            compile_chunk=max(chunk, 1),
            flatten=chunk < 0,
        )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.cpu)

    def iteration() -> None:
        opt.zero_grad(set_to_none=to_none)
        with autocast:
            loss = model(x, x)[1]
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    iteration()
    common.sync(device)
    first = time.perf_counter() - t0
    t = common.time_ms(iteration, device, **args.timing)
    steps = 1 + args.timing["warmup"] + args.timing["reps"] * args.timing["windows"]
    graph = getattr(getattr(opt, "_executor", None), "_graph", None)
    row = {
        "row": label,
        "ms_per_iter": t["median_ms"],
        "first_step_s": first,
        "steps": steps,
        "graph_replays": graph[3] if graph is not None else 0,
    }
    common.sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--only", action="append", help="rows whose label contains this")
    args = ap.parse_args()
    if args.cpu:
        args.preset, args.batch, args.seq = "tiny", 2, 16
        args.timing = dict(warmup=1, reps=2, windows=1)
    else:
        args.preset, args.batch, args.seq = "350m", 8, 512
        args.timing = dict(warmup=5, reps=10, windows=3)
    rows = []
    only = [r for r in ROWS if not args.only or any(t in r[0] for t in args.only)]
    for label, chunk, graphs, to_none in only:
        rows.append(run_row(label, chunk, graphs, to_none, args))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "replay_check.json"), "w") as f:
            json.dump(
                {
                    "env": common.environment(torch.device("cpu" if args.cpu else "cuda")),
                    "rows": rows,
                },
                f,
                indent=1,
            )
    print(common.table(rows, ["row", "ms_per_iter", "graph_replays", "steps", "first_step_s"]))


if __name__ == "__main__":
    main()
