"""A first look at the compiled path on a GPU: correctness against eager, host syncs, and the
step time of a few signified optimizers at 134M fp32 parameters, against torch fused AdamW and
the copy bandwidth measured in the same run. Usage: PYTHONPATH=. python bench/gpu_smoke.py"""

from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import signify
from bench.common import copy_bandwidth, environment, time_ms, write_json

dev = torch.device("cuda")


def params(shapes, dtype=torch.float32, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    ps = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, device=dev, generator=g, dtype=dtype) * 0.02)
        p.grad = torch.randn(s, device=dev, generator=g, dtype=dtype) * 1e-3
        ps.append(p)
    return ps


def check_equal():
    out = {}
    shapes = [(300, 70), (1000,), (64, 64, 3)]
    for name, make in {
        "adam_det": lambda: signify.signify(torch.optim.Adam),
        "adam_sto": lambda: signify.signify(torch.optim.Adam, stochastic=True, seed=1),
        "sgd_sto": lambda: signify.signify(torch.optim.SGD, stochastic=True, seed=1),
    }.items():
        for dtype in (torch.float32, torch.bfloat16):
            res = []
            for comp in (False, True):
                ps = params(shapes, dtype)
                kw = {"momentum": 0.9} if name.startswith("sgd") else {}
                opt = make()(ps, lr=1e-3, compile=comp, compile_chunk=2, **kw)
                for _ in range(3):
                    opt.step()
                res.append([p.detach().float() for p in ps])
            diff = max((a - b).abs().max().item() for a, b in zip(*res))
            out[f"{name}_{dtype}"] = diff
            print("eager vs compiled", name, dtype, diff, flush=True)
    return out


def time_case(name, make, shapes, rows, bw, bpp, dtype=torch.float32):
    ps = params(shapes, dtype)
    n = sum(p.numel() for p in ps)
    opt = make(ps)
    t0 = time.perf_counter()
    opt.step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    try:
        torch.cuda.set_sync_debug_mode("error")
        opt.step()
        sync_ok = True
    except RuntimeError as e:
        sync_ok = f"sync: {e}"[:200]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    t = time_ms(opt.step, dev, warmup=3, reps=20, windows=5)["median_ms"]
    roof = bpp * n / bw * 1e3 if bpp else None
    row = {
        "case": name,
        "ms": t,
        "first_call_s": first,
        "no_sync": sync_ok,
        "pct_of_copy_bw": (roof / t * 100) if roof else None,
        "n": n,
    }
    rows.append(row)
    print(row, flush=True)
    del opt, ps
    torch.cuda.empty_cache()


def main():
    env = environment(dev)
    print(env, flush=True)
    eq = check_equal()
    bw = copy_bandwidth(dev)
    print("copy bandwidth TB/s", bw / 1e12, flush=True)
    rows = []
    big = [(2048, 2048)] * 32
    time_case(
        "torch AdamW fused",
        lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        big,
        rows,
        bw,
        28,
    )
    for chunk in (8, 32):
        time_case(
            f"Signum chunk{chunk} skip",
            lambda ps, c=chunk: signify.Signum(ps, lr=1e-3, compile=True, compile_chunk=c),
            big,
            rows,
            bw,
            20,
        )
        time_case(
            f"Signum chunk{chunk} ignore",
            lambda ps, c=chunk: signify.Signum(
                ps, lr=1e-3, compile=True, compile_chunk=c, nonfinite="ignore"
            ),
            big,
            rows,
            bw,
            20,
        )
    time_case(
        "sto Adam chunk8 ignore",
        lambda ps: signify.signify(
            torch.optim.Adam, stochastic=True, compile=True, nonfinite="ignore"
        )(ps, lr=1e-3),
        big,
        rows,
        bw,
        28,
    )
    time_case(
        "det Adam chunk8 ignore",
        lambda ps: signify.signify(torch.optim.Adam, compile=True, nonfinite="ignore")(ps, lr=1e-3),
        big,
        rows,
        bw,
        20,
    )
    time_case(
        "StoSignSGD chunk8 ignore",
        lambda ps: signify.StoSignSGD(ps, lr=1e-3, compile=True, nonfinite="ignore"),
        big,
        rows,
        bw,
        28,
    )
    llama = []
    for _ in range(24):
        llama += [(1024, 1024)] * 4 + [(2816, 1024), (2816, 1024), (1024, 2816), (1024,), (1024,)]
    llama += [(32000, 1024), (32000, 1024), (1024,)]
    time_case(
        "llama350m AdamW fused",
        lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
        llama,
        rows,
        bw,
        28,
    )
    for chunk in (8, 32):
        time_case(
            f"llama350m sto Adam chunk{chunk} ignore",
            lambda ps, c=chunk: signify.signify(
                torch.optim.Adam,
                stochastic=True,
                compile=True,
                compile_chunk=c,
                nonfinite="ignore",
            )(ps, lr=1e-3),
            llama,
            rows,
            bw,
            28,
        )
    time_case(
        "bf16 Signum chunk8 ignore",
        lambda ps: signify.Signum(ps, lr=1e-3, compile=True, nonfinite="ignore"),
        big,
        rows,
        bw,
        10,
        dtype=torch.bfloat16,
    )
    out = {"env": env, "equal": eq, "copy_bw": bw, "rows": rows}
    d = os.environ.get("OUT")
    write_json("gpu_smoke", out, out_dir=__import__("pathlib").Path(d) if d else None)
    print("\n| case | ms | % copy bw | first call s | no sync |")
    for r in rows:
        pct = f"{r['pct_of_copy_bw']:.0f}" if r["pct_of_copy_bw"] else ""
        print(f"| {r['case']} | {r['ms']:.3f} | {pct} | {r['first_call_s']:.1f} | {r['no_sync']} |")


if __name__ == "__main__":
    main()
