"""Inductor's inlining threshold for the elementwise graphs (`signify.compiled.inductor_options`):
step time, % of copy bandwidth and the first step's time (compile included) per threshold,
side by side in one process, plus cold/warm compile of the 350M shapes in fresh processes.
The parameters after the same steps must be bit-identical across thresholds.

    PYTHONPATH=. python bench/realize.py --thresholds 30,8      # one GPU, about 3 minutes
    PYTHONPATH=. python bench/realize.py --cpu                   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import torch

from bench import common, step

ROWS = [("Signum", "fp32"), ("SignAdam stochastic", "fp32"), ("SignAdam stochastic", "bf16")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="smoke test: tiny shapes, compiled")
    ap.add_argument("--thresholds", default="30,8")
    ap.add_argument("--no-cold", action="store_true", help="skip the 350M cold/warm probe")
    ap.add_argument("--out", default=None, help="JSON path")
    args = ap.parse_args()
    args.compile = True
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    workload = "tiny" if args.cpu else "134m"
    thresholds = [int(t) for t in args.thresholds.split(",")]
    copy_bw = common.copy_bandwidth(device, 2**24 if args.cpu else 2**30)
    print(f"copy bandwidth {copy_bw / 1e12:.3f} TB/s on {device}", flush=True)
    # process warm-up (inductor's one-time costs) on a row not in the table
    warm = step.make_params("tiny", torch.float32, device)
    step.rows()["StoSignSGD"](warm, True, 8).step()
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    results: list[dict[str, Any]] = []
    for name, dname in ROWS:
        finals = {}
        for t in thresholds:  # interleaved per row: the same machine state for both
            os.environ["SIGNIFY_REALIZE_THRESHOLD"] = str(t)
            ps = step.make_params(workload, dtypes[dname], device)
            row = step.safe_measure(name, step.rows()[name], ps, device, args, 8, copy_bw)
            row.update(threshold=t, dtype=dname)
            finals[t] = [p.detach().clone() for p in ps]
            same = all(torch.equal(a, b) for a, b in zip(finals[thresholds[0]], finals[t]))
            row["same_as_first"] = same
            results.append(row)
            keys = ("row", "dtype", "threshold", "ms", "pct_copy", "first_s", "same_as_first")
            print(json.dumps({k: row.get(k) for k in keys}, default=str), flush=True)
            del ps
    compile_rows = []
    if not args.no_cold:
        for t in thresholds:
            os.environ["SIGNIFY_REALIZE_THRESHOLD"] = str(t)
            t0 = time.perf_counter()
            big = "tiny" if args.cpu else "350m"
            r = step.cold_warm(
                argparse.Namespace(cpu=args.cpu, chunk=8), big, "SignAdam stochastic"
            )
            r.update(threshold=t, wall_s=time.perf_counter() - t0)
            compile_rows.append(r)
            print(json.dumps(r, default=str), flush=True)
    payload = {
        "env": common.environment(device),
        "copy_TBps": copy_bw / 1e12,
        "rows": results,
        "compile": compile_rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=2, default=str)
    cols = ["row", "dtype", "threshold", "ms", "pct_copy", "first_s", "same_as_first"]
    print(common.table(results, cols))
    if compile_rows:
        print(common.table(compile_rows, ["workload", "threshold", "cold_s", "warm_s"]))


if __name__ == "__main__":
    main()
