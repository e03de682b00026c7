"""Cost of a parameter-free stepsize: a compiled ALIAS step against a compiled Signum step.

134M fp32 parameters (32 tensors of 2048 x 2048, HeavyBall's shapes, as in peers.md 4.2),
fixed gradients. Each case is a signified SGD; the rows differ only in ``stepsize=`` and
momentum. Reports the median step time, the ratio to the Signum step of the same momentum,
the bytes a perfectly fused step must move per parameter, the share of the measured copy
bandwidth that represents, and whether a step synchronises with the host.

Minimum traffic per parameter (fp32; ``nonfinite="skip"``, the default, reads g once more in
the prepass for the finite check):

=====================  ==================================================================
signSGD                prepass g (4) + update p rw, g (12)                            = 16
Signum (beta=0.9)      prepass g (4) + update p rw, g, m rw (20)                      = 24
ALIAS                  prepass g, g_prev (8) + update p rw, g, g_prev w (16)          = 24
ALIAS(beta)            prepass g, g_prev (8) + update p rw, g, m rw, g_prev w (24)     = 32
ALIAS-lowmem           prepass g, bits (4.125) + update p rw, g, bits w (12.125)      = 16.25
ALIAS-lowmem(beta)     prepass g, bits (4.125) + update p rw, g, m rw, bits w (20.125) = 24.25
=====================  ==================================================================

The ``,unit`` rows take the size of a step as known (``move="unit"``) instead of reducing
``max |d|`` in the update graph: if they are much faster, inductor did not fuse that reduction
into the update kernel.

Usage: ``PYTHONPATH=. python bench/stepsize.py`` (GPU), ``--cpu`` for a seconds-long smoke
run on tiny tensors (eager).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import signify
from bench.common import copy_bandwidth, environment, table, time_ms, write_json

# name -> (stepsize, momentum, baseline name, minimum bytes per parameter)
CASES: dict[str, tuple[str | None, float, str, float]] = {
    "signsgd": (None, 0.0, "signsgd", 16.0),
    "alias": ("alias", 0.0, "signsgd", 24.0),
    "alias-lowmem": ("alias-lowmem", 0.0, "signsgd", 16.25),
    "signum": (None, 0.9, "signum", 24.0),
    "alias(beta)": ("alias", 0.9, "signum", 32.0),
    "alias-lowmem(beta)": ("alias-lowmem", 0.9, "signum", 24.25),
    "alias,measure": ("alias-measure", 0.0, "signsgd", 24.0),
    "alias(beta),measure": ("alias-measure", 0.9, "signum", 32.0),
    "alias(beta),unit": ("alias-unit", 0.9, "signum", 32.0),
    "alias-lowmem(beta),unit": ("alias-lowmem-unit", 0.9, "signum", 24.25),
}
# ",flat": the same with flatten=True (one buffer per bucket, signify/flat.py)
CASES.update(
    {
        f"{k},flat": (v[0], v[1], f"{v[2]},flat", v[3])
        for k, v in CASES.items()
        if k in ("signsgd", "signum", "alias", "alias(beta)")
    }
)


def oracle(name: str | None):
    """``stepsize=`` for a case: ``-unit`` takes the step's size as known (``move="unit"``),
    sparing the update graph its reduction; ``-measure`` reduces it in the update graph
    (``move="measure"``); neither: the default (``move="auto"``)."""
    if name is None or not name.endswith(("-unit", "-measure")):
        return name
    from signify.transforms.stepsize_alias import Alias, AliasLowMem

    base, move = name.rsplit("-", 1)
    return (AliasLowMem if base == "alias-lowmem" else Alias)(move=move)


def _flat(case: str) -> bool:
    return case.endswith(",flat")


def make_params(shapes: list[tuple[int, ...]], device: torch.device) -> list[torch.nn.Parameter]:
    g = torch.Generator(device=device).manual_seed(0)
    out = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, device=device, generator=g) * 0.02)
        p.grad = torch.randn(s, device=device, generator=g) * 1e-3
        out.append(p)
    return out


def no_sync(opt: Any, device: torch.device) -> bool | str:
    """True if a step runs with CUDA's sync debug mode set to error."""
    if device.type != "cuda":
        return "n/a (cpu)"
    try:
        torch.cuda.set_sync_debug_mode("error")
        opt.step()
        return True
    except RuntimeError as e:
        return f"sync: {e}"[:160]
    finally:
        torch.cuda.set_sync_debug_mode(0)


def check(name: str, device: torch.device, steps: int = 8) -> dict[str, Any]:
    """Compiled (CUDA-graph replay from the third step: gradients are refreshed in place)
    against eager, same gradients: the largest parameter difference in units of the largest
    step, the relative difference of the last stepsize, and whether a graph was replayed."""
    stepsize, momentum, _, _ = CASES[name]
    shapes = [(512, 512)] * 3 + [(1000,), (24, 40)]
    out = []
    for compile_ in (True, False):
        ps = make_params(shapes, device)
        cls = signify.signify(torch.optim.SGD, stepsize=oracle(stepsize), compile=compile_)
        opt = cls(ps, lr=1.0 if stepsize else 1e-3, momentum=momentum, flatten=_flat(name))
        g = torch.Generator(device=device).manual_seed(1)
        x0 = [p.detach().clone() for p in ps]
        for _ in range(steps):
            for p in ps:
                p.grad.copy_(torch.randn(p.shape, device=device, generator=g) * 1e-3)
            opt.step()
        move = max(float((p.detach() - q).abs().max()) for p, q in zip(ps, x0))
        out.append(([p.detach().clone() for p in ps], float(opt.stepsizes()[0]), move, opt))
    (pc, sc, move, opt_c), (pe, se, _, _) = out
    diff = max(float((a - b).abs().max()) for a, b in zip(pc, pe))
    graph = opt_c._executor.replay.graph
    return {
        "check_case": name,
        "param_diff_per_move": diff / move if move > 0 else float("nan"),
        "stepsize_rel_diff": abs(sc - se) / abs(se) if se else float("nan"),
        "graph_replays": graph[3] if graph is not None else 0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device("cpu" if args.cpu else "cuda")
    shapes = [(64, 64)] * 4 if args.cpu else [(2048, 2048)] * 32
    compile_ = not args.cpu if args.compile is None else args.compile
    n = sum(int(torch.Size(s).numel()) for s in shapes)
    bw = copy_bandwidth(device, 2**22 if args.cpu else 2**30)
    timing = {"warmup": 2, "reps": 3, "windows": 3} if args.cpu else {}
    rows: list[dict[str, Any]] = []
    for name in args.cases:
        stepsize, momentum, _, bpp = CASES[name]
        if args.nonfinite == "ignore" and not stepsize:
            bpp -= 4.0  # no finite check, no prepass (ALIAS's prepass reads g all the same)
        ps = make_params(shapes, device)
        cls = signify.signify(
            torch.optim.SGD, stepsize=oracle(stepsize), compile=compile_, nonfinite=args.nonfinite
        )
        opt = cls(ps, lr=1.0 if stepsize else 1e-3, momentum=momentum, flatten=_flat(name))
        t0 = time.perf_counter()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - t0
        synced = no_sync(opt, device)
        ms = time_ms(opt.step, device, **timing)["median_ms"]
        rows.append(
            {
                "case": name,
                "ms": ms,
                "bytes_per_param": bpp,
                "pct_copy_bw": bpp * n / (ms / 1e3) / bw * 100,
                "first_call_s": first,
                "no_sync": synced,
                "stepsize": float(opt.stepsizes()[0].float().mean()),
            }
        )
        print(rows[-1], flush=True)
        del opt, ps
    checks = []
    if args.check and device.type == "cuda" and compile_:
        for name in args.cases:
            checks.append(check(name, device))
            print(checks[-1], flush=True)
    by_name = {r["case"]: r for r in rows}
    for r in rows:
        base = by_name.get(CASES[r["case"]][2])
        r["ratio"] = r["ms"] / base["ms"] if base else float("nan")
        signum = by_name.get("signum,flat" if _flat(r["case"]) else "signum")  # the yardstick
        r["vs_signum"] = r["ms"] / signum["ms"] if signum else float("nan")
    return {
        "env": environment(device),
        "params": n,
        "shapes": f"{len(shapes)} x {shapes[0]}",
        "compile": compile_,
        "nonfinite": args.nonfinite,
        "copy_bandwidth_GBps": bw / 1e9,
        "rows": rows,
        "checks": checks,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny eager smoke run on the CPU")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--nonfinite", default="skip", choices=("skip", "ignore"))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare compiled (CUDA graphs) with eager on small shapes (GPU only)",
    )
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    result = run(args)
    tag = "stepsize_cpu" if args.cpu else f"stepsize_{args.nonfinite}"
    out = None if args.out is None else __import__("pathlib").Path(args.out)
    path = write_json(tag, result, out)
    print(f"\nwrote {path}")
    print(
        f"{result['params'] / 1e6:.1f}M fp32 params ({result['shapes']}), compile="
        f"{result['compile']}, nonfinite={result['nonfinite']}, copy bandwidth "
        f"{result['copy_bandwidth_GBps']:.0f} GB/s"
    )
    cols = ["case", "ms", "ratio", "vs_signum", "bytes_per_param", "pct_copy_bw", "no_sync"]
    cols.append("first_call_s")
    print(table(result["rows"], cols))
    if result["checks"]:
        print("\ncompiled vs eager, 8 steps, gradients refreshed in place")
        cols = ["check_case", "param_diff_per_move", "stepsize_rel_diff", "graph_replays"]
        print(table(result["checks"], cols))
    return result


if __name__ == "__main__":
    main()
