"""Optimizer-step benchmark: signify's compiled steps against torch and the memory floor.

For each workload, dtype and optimizer row it measures: ms per step (median of CUDA-event
windows, the lr changed every step as a scheduler would), achieved TB/s counting the fewest
bytes the step must move (params read + written, grads read, every state buffer read +
written), that as % of the device-to-device copy bandwidth measured in the same run,
optimizer-state bytes per parameter, the transient peak memory of a step, the first call's
time (compile included), the host time to issue one step, graphs compiled after warm-up
(should be 0) and whether a step synchronises with the host (``set_sync_debug_mode``).

Then: cold and warm compile time in fresh processes sharing one TORCHINDUCTOR_CACHE_DIR,
a chunk-size sweep, executor variants (layout, non-finite check, inductor combo kernels),
and the cost of the counter-hash noise against ``torch.rand_like`` (bench/step_rng.py).

    PYTHONPATH=. python bench/step.py          # one GPU, about 5 minutes
    PYTHONPATH=. python bench/step.py --cpu    # smoke test, eager, seconds

Results go to bench/results/step-<device>.json; the table prints last.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any

import torch

import signify
from bench import common

LR = 1e-4
BF16_ROWS = (
    "torch AdamW fused",
    "torch AdamW compiled",
    "Signum",
    "StoSignSGD",
    "SignAdam stochastic",
    "SignAdam deterministic",
)  # and every flat row


# ---------------------------------------------------------------------------- workloads
def shapes(workload: str) -> list[tuple[int, ...]]:
    if workload == "134m":  # the peers' shapes (HeavyBall's benchmark)
        return [(2048, 2048)] * 32
    if workload == "350m":  # LLaMA-350M: 24 layers, d=1024, ffn 2816, vocab 32000
        d, f, v = 1024, 2816, 32000
        layer = [(d, d)] * 4 + [(f, d), (f, d), (d, f), (d,), (d,)]
        return [(v, d)] + layer * 24 + [(d,), (v, d)]
    if workload == "tiny":  # --cpu smoke
        return [(64, 64)] * 4 + [(64,), (37,)]
    raise ValueError(f"unknown workload {workload!r}")


def make_params(workload: str, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    ps = []
    for s in shapes(workload):
        p = torch.nn.Parameter(torch.randn(s, device=device, generator=gen).mul_(0.02).to(dtype))
        p.grad = torch.randn(s, device=device, generator=gen).mul_(1e-3).to(dtype)
        ps.append(p)
    return ps


# ---------------------------------------------------------------------------- rows
def _signify_row(make: Callable[..., Any], **kw: Any) -> Callable[..., Any]:
    def build(ps: list[torch.Tensor], compile_: bool, chunk: int) -> Any:
        return make(ps, lr=LR, compile=compile_, compile_chunk=chunk, seed=0, **kw)

    return build


def rows() -> dict[str, Callable[..., Any]]:
    S = signify.signify
    out: dict[str, Callable[..., Any]] = {
        "Signum": _signify_row(signify.Signum, momentum=0.9),
        "StoSignSGD": _signify_row(signify.StoSignSGD),
        "SignAdam stochastic": _signify_row(S(torch.optim.Adam, stochastic=True)),
        "SignAdam stochastic [nonfinite=ignore]": _signify_row(
            S(torch.optim.Adam, stochastic=True, nonfinite="ignore")
        ),
        "SignAdam deterministic": _signify_row(S(torch.optim.Adam)),
        "SignAdamax stochastic": _signify_row(S(torch.optim.Adamax, stochastic=True)),
        "SignAdamax deterministic": _signify_row(S(torch.optim.Adamax)),
        "SignSGD momentum": _signify_row(S(torch.optim.SGD), momentum=0.9),
        "SignRMSprop stochastic": _signify_row(S(torch.optim.RMSprop, stochastic=True)),
        "SignAdagrad stochastic": _signify_row(S(torch.optim.Adagrad, stochastic=True)),
        # flatten=True: one buffer per bucket, one kernel per pass (signify/flat.py)
        "Signum [flatten]": _signify_row(signify.Signum, momentum=0.9, flatten=True),
        "StoSignSGD [flatten]": _signify_row(signify.StoSignSGD, flatten=True),
        "StoSignSGD [flatten; nonfinite=ignore]": _signify_row(
            signify.StoSignSGD, flatten=True, nonfinite="ignore"
        ),
        "SignAdam stochastic [flatten]": _signify_row(
            S(torch.optim.Adam, stochastic=True), flatten=True
        ),
        "SignAdam stochastic [flatten; nonfinite=ignore]": _signify_row(
            S(torch.optim.Adam, stochastic=True, nonfinite="ignore"), flatten=True
        ),
        "SignAdam deterministic [flatten]": _signify_row(S(torch.optim.Adam), flatten=True),
        "SignAdam deterministic [flatten; nonfinite=ignore]": _signify_row(
            S(torch.optim.Adam, nonfinite="ignore"), flatten=True
        ),
        "Signum [flatten; nonfinite=ignore]": _signify_row(
            signify.Signum, momentum=0.9, flatten=True, nonfinite="ignore"
        ),
        "SignAdam deterministic [nonfinite=ignore]": _signify_row(
            S(torch.optim.Adam, nonfinite="ignore")
        ),
        "SignAdamax deterministic [flatten; nonfinite=ignore]": _signify_row(
            S(torch.optim.Adamax, nonfinite="ignore"), flatten=True
        ),
        "SignRMSprop deterministic [flatten; nonfinite=ignore]": _signify_row(
            S(torch.optim.RMSprop, nonfinite="ignore"), flatten=True
        ),
    }
    return out


def torch_rows(device: torch.device) -> dict[str, Callable[..., Any]]:
    def fused(ps: list[torch.Tensor], compile_: bool, chunk: int) -> Any:
        return torch.optim.AdamW(ps, lr=LR, fused=True)

    def compiled(ps: list[torch.Tensor], compile_: bool, chunk: int) -> Any:
        opt = torch.optim.AdamW(ps, lr=LR, foreach=True)
        opt.step = torch.compile(opt.step)  # type: ignore[method-assign]
        return opt

    return {"torch AdamW fused": fused, "torch AdamW compiled": compiled}


def peer_rows() -> tuple[dict[str, Callable[..., Any]], str]:
    try:
        import heavyball  # type: ignore[import-not-found]
    except ImportError:
        return {}, "heavyball not importable: peer rows skipped (peers.md 4.2: SignLaProp 3.27 ms)"

    def hb(cls: Any) -> Callable[..., Any]:
        return lambda ps, compile_, chunk: cls(ps, lr=LR, consume_grad=False)

    return {
        "heavyball SignLaProp": hb(heavyball.SignLaProp),
        "heavyball AdamW": hb(heavyball.AdamW),
    }, f"heavyball {getattr(heavyball, '__version__', '?')}"


def adapter_name(opt: Any) -> str:
    chain = getattr(opt, "chain", None)
    if not chain:
        return "-"
    return type(chain[0]).__name__.replace("Adapter", "").lower() or "-"


# ---------------------------------------------------------------------------- measuring
def state_bytes(opt: Any, ps: list[torch.Tensor]) -> int:
    total = 0
    for p in ps:
        for v in opt.state.get(p, {}).values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                total += v.numel() * v.element_size()
    return total


def measure(
    name: str,
    build: Callable[..., Any],
    ps: list[torch.Tensor],
    device: torch.device,
    args: argparse.Namespace,
    chunk: int,
    copy_bw: float,
) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    n = sum(p.numel() for p in ps)
    row: dict[str, Any] = {"row": name, "chunk": chunk}
    compile_ = not args.cpu or args.compile
    try:
        opt = build(ps, compile_, chunk)
    except Exception as e:  # a row that cannot be built on this machine
        return {**row, "error": repr(e)[:200]}
    lrs = [LR, LR * 1.001]
    counter = [0]

    def step() -> None:
        counter[0] += 1
        for g in opt.param_groups:
            g["lr"] = lrs[counter[0] & 1]  # a scheduler: new lr every step
        opt.step()

    t0 = time.perf_counter()
    step()
    common.sync(device)
    row["first_s"] = time.perf_counter() - t0
    for _ in range(2):
        step()
    common.sync(device)
    graphs = counters["stats"]["unique_graphs"]
    reps = 3 if args.cpu else 20
    t = common.time_ms(step, device, warmup=2, reps=reps, windows=3 if args.cpu else 5)
    row["ms"] = t["median_ms"]
    row["recompiles"] = counters["stats"]["unique_graphs"] - graphs
    host = []
    for _ in range(5):
        common.sync(device)
        t0 = time.perf_counter()
        step()
        host.append((time.perf_counter() - t0) * 1e3)
    common.sync(device)
    row["host_ms"] = statistics.median(host)
    if device.type == "cuda":
        try:
            torch.cuda.set_sync_debug_mode("error")
            step()
            step()
            row["sync"] = "no"
        except RuntimeError as e:
            row["sync"] = "YES: " + str(e).splitlines()[0][:80]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        common.sync(device)
        base = torch.cuda.memory_allocated(device)
        common.peak_memory_reset(device)
        step()
        common.sync(device)
        row["peak_MiB"] = (common.peak_memory(device) - base) / 2**20
    psize = ps[0].element_size()
    sb = state_bytes(opt, ps)
    row["state_B"] = sb / n
    row["B_param"] = 2 * psize + ps[0].grad.element_size() + 2 * sb / n  # type: ignore[union-attr]
    row["TBps"] = row["B_param"] * n / (row["ms"] * 1e-3) / 1e12
    row["pct_copy"] = 100 * row["B_param"] * n / (row["ms"] * 1e-3) / copy_bw
    row["adapter"] = adapter_name(opt)
    return row


def safe_measure(name: str, *a: Any) -> dict[str, Any]:
    try:
        return measure(name, *a)
    except Exception as e:  # report and go on: one broken row must not cost the run
        import traceback

        traceback.print_exc()
        return {"row": name, "error": repr(e)[:300]}


# ---------------------------------------------------------------------------- correctness
def check(device: torch.device, steps: int = 6) -> list[dict[str, Any]]:
    """Compiled (CUDA graphs included) against eager on mixed small shapes: the fraction of
    elements that differ and the largest difference in units of lr. Deterministic rows should
    agree to rounding; stochastic ones draw the same noise, so they differ only where the
    noisy argument of the sign is within rounding of 0."""
    S = signify.signify
    cases = [
        ("Signum", signify.Signum, {"momentum": 0.9}, torch.float32),
        ("StoSignSGD", signify.StoSignSGD, {}, torch.float32),
        ("SignAdam stochastic", S(torch.optim.Adam, stochastic=True), {}, torch.float32),
        ("SignAdamW deterministic", S(torch.optim.AdamW), {"weight_decay": 0.1}, torch.float32),
        ("SignAdam stochastic bf16", S(torch.optim.Adam, stochastic=True), {}, torch.bfloat16),
        (
            "SignAdamax stochastic (traced)",
            S(torch.optim.Adamax, stochastic=True),
            {},
            torch.float32,
        ),
        (
            "SignAdam stochastic flatten",
            S(torch.optim.Adam, stochastic=True),
            {"flatten": True},
            torch.float32,
        ),
        (
            "SignAdam stochastic flatten bf16",
            S(torch.optim.Adam, stochastic=True),
            {"flatten": True},
            torch.bfloat16,
        ),
    ]
    shapes = [(256, 64), (64,), (3, 7), (1024,), (96, 32)]
    out = []
    for name, cls, kw, dtype in cases:
        runs = []
        for compile_ in (False, True):
            gen = torch.Generator(device=device).manual_seed(0)
            ps = [
                torch.nn.Parameter(torch.randn(s, device=device, generator=gen).to(dtype))
                for s in shapes
            ]
            opt = cls(ps, lr=1e-2, seed=5, compile=compile_, compile_chunk=4, **kw)
            for _ in range(steps):
                for p in ps:
                    p.grad = torch.randn(p.shape, device=device, generator=gen).to(dtype)
                opt.step()
            runs.append(torch.cat([p.detach().float().reshape(-1) for p in ps]))
        diff = (runs[0] - runs[1]).abs()
        out.append(
            {
                "case": name,
                "frac_differ": float((diff > 0).float().mean()),
                "max_diff_lr": float(diff.max() / 1e-2),
            }
        )
        print(out[-1], flush=True)
    return out


# ---------------------------------------------------------------------------- compile probe
def compile_probe(args: argparse.Namespace) -> None:
    """Run in a fresh process: the first step's time of one row (compile included)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    ps = make_params(args.workload, torch.float32, device)
    if args.row == FLOOR:
        # torch's own first-compile cost: one elementwise graph over one parameter
        fn = torch.compile(lambda p, g: p.add_(g, alpha=-LR), fullgraph=True)
        opt = types.SimpleNamespace(step=lambda: fn(ps[0].detach(), ps[0].grad))
    else:
        opt = rows()[args.row](ps, True, args.chunk)
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    opt.step()
    common.sync(device)
    first = time.perf_counter() - t0
    if prof is not None:  # where a first step's seconds go (to stderr)
        import pstats

        prof.disable()
        for key in ("cumulative", "tottime"):
            pstats.Stats(prof, stream=sys.stderr).sort_stats(key).print_stats(35)
    t0 = time.perf_counter()
    opt.step()
    common.sync(device)
    print(json.dumps({"first_s": first, "second_s": time.perf_counter() - t0}))


#: the compile probe's row for torch's own cost of a first compiled call
FLOOR = "torch floor"


def cold_warm(args: argparse.Namespace, workload: str, row: str) -> dict[str, Any]:
    """First-step seconds in fresh processes: cold (empty inductor cache), then warm, beside
    torch's floor (one trivial elementwise graph, same cache). Python may write ``.pyc``
    files here (``PYTHONDONTWRITEBYTECODE`` is dropped), as a normal installation has them:
    otherwise every fresh process compiles torch's inductor sources to bytecode again (2.2 s
    of a warm start on the H100 box). The warm figures are medians of ``args.warm_runs``."""
    out: dict[str, Any] = {"workload": workload, "row": row, "chunk": args.chunk}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, PYTHONPATH=os.getcwd())
        env.pop("PYTHONDONTWRITEBYTECODE", None)

        def probe(which: str) -> float | None:
            cmd = [sys.executable, "-m", "bench.step", "--compile-probe", "--workload", workload]
            cmd += ["--row", which, "--chunk", str(args.chunk)] + (["--cpu"] if args.cpu else [])
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            try:
                return float(json.loads(r.stdout.strip().splitlines()[-1])["first_s"])
            except (ValueError, IndexError):
                out.setdefault("errors", []).append((r.stderr or r.stdout)[-300:])
                return None

        def warm(which: str) -> float | None:
            got = [t for t in (probe(which) for _ in range(args.warm_runs)) if t is not None]
            return statistics.median(got) if got else None

        out["floor_cold_s"] = probe(FLOOR)  # also writes torch's .pyc files
        out["floor_warm_s"] = warm(FLOOR)
        out["cold_s"] = probe(row)
        out["warm_s"] = warm(row)
        if out["warm_s"] is not None and out["floor_warm_s"] is not None:
            out["warm_over_floor_s"] = out["warm_s"] - out["floor_warm_s"]
    return out


# ---------------------------------------------------------------------------- main
#: ``--rows "NAME @check=graph"``: the row NAME run under an executor setting
ROW_ENV = {
    "check=graph": {"SIGNIFY_FINITE_CHECK": "graph"},
    "check=foreach": {"SIGNIFY_FINITE_CHECK": "foreach"},
    "realize=8": {"SIGNIFY_REALIZE_THRESHOLD": "8"},
    "shapes=static": {"SIGNIFY_SHAPES": "static"},
    "combo=off": {"SIGNIFY_COMBO": "off"},
    "combo=prepare": {"SIGNIFY_COMBO": "prepare"},
    "hoist=0": {"SIGNIFY_HOIST": "0"},
}


def row_env(name: str) -> tuple[str, dict[str, str]]:
    base, _, setting = name.partition(" @")
    if setting and setting not in ROW_ENV:
        raise SystemExit(f"unknown row setting {setting!r}; settings: {', '.join(ROW_ENV)}")
    return base, ROW_ENV.get(setting, {})


@contextlib.contextmanager
def env_vars(**kw: str) -> Any:
    old = {k: os.environ.get(k) for k in kw}
    os.environ.update(kw)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="smoke test on the CPU (eager, tiny)")
    ap.add_argument(
        "--compile", action="store_true", help="with --cpu: compile, probe and time the noise"
    )
    ap.add_argument("--workloads", default=None, help="comma list of 134m,350m (--cpu: tiny)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--rows", default=None, help="comma list of row names (default: all)")
    ap.add_argument("--chunk", type=int, default=8, help="compile_chunk of the main table")
    ap.add_argument("--chunks", default="4,16", help="extra chunk sizes for the sweep")
    ap.add_argument(
        "--cold-chunks", default=None, help="chunk sizes of the cold/warm probe (default: --chunk)"
    )
    ap.add_argument(
        "--cold-row", default="SignAdam stochastic", help="row of the cold/warm compile probe"
    )
    ap.add_argument("--no-variants", action="store_true", help="skip layout/check/combo rows")
    ap.add_argument("--no-rng", action="store_true", help="skip the noise micro-benchmark")
    ap.add_argument("--no-check", action="store_true", help="skip compiled-vs-eager checks")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold/warm compile probe")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/...)")
    ap.add_argument("--compile-probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="350m", help=argparse.SUPPRESS)
    ap.add_argument("--row", default="SignAdam stochastic", help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true", help="with --compile-probe: cProfile it")
    ap.add_argument("--warm-runs", type=int, default=3, help="warm fresh-process probes (median)")
    args = ap.parse_args()
    if args.warm_runs < 1:
        ap.error(f"--warm-runs must be at least 1, got {args.warm_runs}")
    if args.compile_probe:
        compile_probe(args)
        return
    t_start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # a loaded small box stalls on OpenMP barriers otherwise
    workloads = (args.workloads or ("tiny" if args.cpu else "134m,350m")).split(",")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    copy_bw = common.copy_bandwidth(device, 2**24 if args.cpu else 2**30)
    print(f"copy bandwidth {copy_bw / 1e12:.3f} TB/s on {device}", flush=True)
    table = {**torch_rows(device), **rows()}
    peers, peer_note = peer_rows()
    table.update(peers)
    print(peer_note, flush=True)
    wanted = args.rows.split(",") if args.rows else list(table)
    for name in wanted:
        if row_env(name)[0] not in table:
            raise SystemExit(f"unknown row {name!r}; rows: {', '.join(table)}")
    results: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    if not args.no_check and (device.type == "cuda" or args.compile):
        extra["check"] = check(device)

    def record(row: dict[str, Any]) -> None:
        results.append(row)
        keys = ("workload", "dtype", "row", "ms", "pct_copy", "first_s", "host_ms", "error")
        print(json.dumps({k: row[k] for k in keys if k in row}, default=str), flush=True)

    for workload in workloads:
        for dname in args.dtypes.split(","):
            ps = make_params(workload, dtypes[dname], device)
            for name in wanted:
                if name == "torch AdamW compiled" and (
                    (workload == "350m" and not args.cpu) or (args.cpu and not args.compile)
                ):
                    continue  # compile time grows with the tensor count (the point of signify)
                base, env = row_env(name)
                if dname == "bf16" and base not in BF16_ROWS and "flatten" not in base:
                    continue
                with env_vars(**env):
                    row = safe_measure(name, table[base], ps, device, args, args.chunk, copy_bw)
                record({"workload": workload, "dtype": dname, **row})
            del ps
    # variants on the largest workload, fp32, stochastic signified Adam
    big = workloads[-1]
    if not args.no_variants:
        ps = make_params(big, torch.float32, device)
        name = "SignAdam stochastic"
        variants: list[tuple[str, dict[str, str], int]] = [
            ("layout=flat", {"SIGNIFY_LAYOUT": "flat"}, args.chunk),
            ("check=graph", {"SIGNIFY_FINITE_CHECK": "graph"}, args.chunk),
            ("no CUDA graphs", {"SIGNIFY_CUDA_GRAPHS": "0"}, args.chunk),
        ]
        variants += [(f"chunk={c}", {}, int(c)) for c in args.chunks.split(",") if c]
        if device.type == "cuda":
            variants.append(("no combo kernels", {"SIGNIFY_COMBO": "off"}, args.chunk))
        for label, env, chunk in variants:
            with env_vars(**env):
                row = safe_measure(name, table[name], ps, device, args, chunk, copy_bw)
            record({"workload": big, "dtype": "fp32", **row, "row": f"{name} [{label}]"})
        del ps
    if args.cpu and not args.compile:  # the rest compiles: not in the eager smoke test
        args.no_cold = args.no_rng = True
    if not args.no_cold:
        extra["compile"] = []
        for c in (args.cold_chunks or str(args.chunk)).split(","):
            args.chunk = int(c)
            extra["compile"].append(cold_warm(args, big, args.cold_row))
            print(json.dumps(extra["compile"][-1]), flush=True)
    if not args.no_rng:
        from bench import step_rng

        extra["rng"] = step_rng.run(device, args.cpu, copy_bw)
    payload = {
        "environment": common.environment(device),
        "copy_bandwidth_TBps": copy_bw / 1e12,
        "peers": peer_note,
        "rows": results,
        **extra,
        "wall_s": time.perf_counter() - t_start,
    }
    tag = "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "_")
    path = (
        common.write_json(f"step-{tag}", payload) if args.out is None else _write(args.out, payload)
    )
    print(f"\nwrote {path} in {payload['wall_s']:.0f} s")
    if "check" in extra:
        print("\ncompiled vs eager (6 steps, mixed shapes):")
        print(common.table(extra["check"], ["case", "frac_differ", "max_diff_lr"]))
    if "rng" in extra:
        print("\nnoise inside one compiled kernel (134M elements):")
        print(common.table(extra["rng"], ["kernel", "B_param", "ms", "pct_copy"]))
    for c in extra.get("compile", []):
        t = {k: c.get(k) if c.get(k) is not None else float("nan") for k in c}
        nan = float("nan")
        print(f"\ncompile {c['row']} {c['workload']} chunk={c['chunk']}: ", end="")
        print(f"cold {t.get('cold_s', nan):.1f} s, warm {t.get('warm_s', nan):.1f} s", end="")
        print(f" (torch floor: cold {t.get('floor_cold_s', nan):.1f} s, ", end="")
        print(f"warm {t.get('floor_warm_s', nan):.1f} s)")
    cols = ["workload", "dtype", "row", "adapter", "ms", "TBps", "pct_copy", "B_param"]
    cols += ["state_B", "peak_MiB", "first_s", "host_ms", "recompiles", "sync"]
    print(f"\ncopy bandwidth {copy_bw / 1e12:.3f} TB/s; {peer_note}")
    print(common.table(results, cols))


def _write(path: str, payload: dict[str, Any]) -> str:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    return path


if __name__ == "__main__":
    main()
