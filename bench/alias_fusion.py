"""How inductor fuses ALIAS's reductions: candidate formulations of its two passes, each
compiled like the executor compiles a chunk (``dynamic=True``, sizes known to be multiples of
16, 8 tensors per call), replayed as one CUDA graph over 32 x 2048^2 fp32 tensors (134M).

Passes timed (B/param: the bytes each must move):

* ``check``: Signum's non-finite check, ``torch._foreach_norm(g, inf)`` (4);
* ``signum``: Signum's update ``m, p <- where(ok, ...)`` (20);
* ``pre_flat``: ALIAS prepass, per tensor ``sum|g - g'|``, ``<g, sign g'>``, finite (8);
* ``pre_rows``: the same as partial sums over rows of 16, then one sum per tensor (8);
* ``upd_measure``: ALIAS update with ``max |d|`` over the flat tensor (the current form) (20);
* ``upd_unit``: the same without ``max |d|`` (20);
* ``upd_rows``: ``max |d|`` as a max over rows of 16 inside the update, then over rows (20);
* ``upd_nowhere``: ``g' <- g`` written without reading ``g'`` (16; what ``nonfinite="ignore"``
  allows);
* ``upd_unit_gather`` / ``upd_rows_gather``: the skip kept, ``g'``'s old value gathered at an
  index that is 0 on an applied step (16).

    PYTHONPATH=. python bench/alias_fusion.py         # GPU, about a minute
    PYTHONPATH=. python bench/alias_fusion.py --cpu   # smoke test, tiny, eager timing
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench import common

CHUNK = 8


def _rows(xs: list[torch.Tensor]) -> None:
    for x in xs:
        if x.shape[0] % 16:
            raise ValueError("not a multiple of 16")


def check(g: list[torch.Tensor], out: torch.Tensor) -> None:
    out.copy_(torch.stack(torch._foreach_norm(g, float("inf"))).amax())


def signum(p, g, m, lr, beta, ok):  # type: ignore[no-untyped-def]
    _rows(p)
    for x, gi, mi in zip(p, g, m):
        m_new = torch.where(ok, beta * mi + (1 - beta) * gi, mi)
        mi.copy_(m_new)
        x.copy_(torch.where(ok, x - lr * torch.sign(m_new), x))


def pre_flat(g, gp, acc):  # type: ignore[no-untyped-def]
    _rows(g)
    l1s, dots, bads = [], [], []
    for gi, gpi in zip(g, gp):
        l1s.append((gi - gpi).abs().sum())
        dots.append((gi * torch.sign(gpi)).sum())
        bads.append((~torch.isfinite(gi)).sum().float())
    acc.add_(
        torch.stack([torch.stack(l1s).sum(), torch.stack(dots).sum(), torch.stack(bads).sum()])
    )


def pre_rows(g, gp, acc):  # type: ignore[no-untyped-def]
    _rows(g)
    l1s, dots, bads = [], [], []
    for gi, gpi in zip(g, gp):
        a, b = gi.view(-1, 16), gpi.view(-1, 16)
        l1s.append((a - b).abs().sum(1))
        dots.append((a * torch.sign(b)).sum(1))
        bads.append((~torch.isfinite(a)).sum(1).float())
    acc.add_(torch.stack([torch.cat(l1s).sum(), torch.cat(dots).sum(), torch.cat(bads).sum()]))


def _upd(p, g, gp, eff, ok, dx, mode):  # type: ignore[no-untyped-def]
    _rows(p)
    for i, (x, gi, gpi) in enumerate(zip(p, g, gp)):
        d = torch.sign(gi)
        if mode == "measure":
            dx[i].copy_(torch.where(ok, eff * d.abs().amax(), dx[i]))
        elif mode in ("rows", "rows_gather"):
            dx[i].copy_(torch.where(ok, eff * d.view(-1, 16).abs().amax(1).amax(), dx[i]))
        else:
            dx[i].copy_(torch.where(ok, eff, dx[i]))
        x.copy_(torch.where(ok, x - eff * d, x))
        if mode == "nowhere":
            gpi.copy_(gi)
        elif mode.endswith("gather"):
            # the old value is read only on a skipped step: on an applied one every lane
            # gathers element 0 (one cache line), so g' is written without being read
            idx = torch.where(ok, 0, torch.arange(gpi.shape[0], device=gpi.device))
            gpi.copy_(torch.where(ok, gi, gpi[idx]))
        else:
            gpi.copy_(torch.where(ok, gi, gpi))


def variants() -> dict[str, tuple[Callable[..., Any], int, bool]]:
    """name -> (function of (bufs, chunk slice), bytes per param, compile?)"""
    return {
        "check": (lambda b, s: check(b["g"][s], b["scratch"]), 4, False),
        "signum": (
            lambda b, s: b["f"]["signum"](
                b["p"][s], b["g"][s], b["m"][s], b["lr"], b["beta"], b["ok"]
            ),
            20,
            True,
        ),
        "pre_flat": (lambda b, s: b["f"]["pre_flat"](b["g"][s], b["gp"][s], b["acc"]), 8, True),
        "pre_rows": (lambda b, s: b["f"]["pre_rows"](b["g"][s], b["gp"][s], b["acc"]), 8, True),
        **{
            f"upd_{mode}": (
                lambda b, s, mode=mode: b["f"][f"upd_{mode}"](
                    b["p"][s], b["g"][s], b["gp"][s], b["lr"], b["ok"], b["dx"][s]
                ),
                16 if mode in ("nowhere", "unit_gather", "rows_gather") else 20,
                True,
            )
            for mode in ("measure", "unit", "rows", "nowhere", "unit_gather", "rows_gather")
        },
    }


#: inductor option sets the compiled passes are timed under (``--options``)
OPTION_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "cdt": {"coordinate_descent_tuning": True},
    "combo": {"combo_kernels": True},
}


def compiled_fns(
    do_compile: bool, options: dict[str, Any] | None = None
) -> dict[str, Callable[..., Any]]:
    fns: dict[str, Callable[..., Any]] = {
        "signum": signum,
        "pre_flat": pre_flat,
        "pre_rows": pre_rows,
    }
    for mode in ("measure", "unit", "rows", "nowhere", "unit_gather", "rows_gather"):

        def f(p, g, gp, eff, ok, dx, mode=mode):  # type: ignore[no-untyped-def]
            _upd(p, g, gp, eff, ok, dx, mode)

        f.__code__ = f.__code__.replace(co_name=f"upd_{mode}")
        fns[f"upd_{mode}"] = f
    if do_compile:
        fns = {
            k: torch.compile(v, fullgraph=True, dynamic=True, options=dict(options or {}))
            for k, v in fns.items()
        }
    return fns


def agreement(fns: dict[str, Callable[..., Any]], dev: torch.device) -> dict[str, bool]:
    """Every formulation against the plain one, on fresh random inputs (sizes multiples of
    16, as in the rows lane), on an applied and on a skipped step: the same parameters,
    previous gradients and moves (bit for bit), the same sums (to rounding)."""
    gen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**31, ())))
    shapes = [4096, 48, 1024]

    def fresh() -> list[torch.Tensor]:
        return [torch.randn(n, device=dev, generator=gen) for n in shapes]

    out: dict[str, bool] = {}
    g, gp = fresh(), fresh()
    acc = {k: torch.zeros(3, device=dev) for k in ("pre_flat", "pre_rows")}
    for k in acc:
        fns[k](g, gp, acc[k])
    # a sum of ~5000 terms of size ~1 rounds to ~1e-3 absolute: the dot may be near 0
    out["pre_rows"] = bool(torch.allclose(acc["pre_rows"], acc["pre_flat"], rtol=1e-5, atol=1e-3))
    for okv in (True, False):
        ok = torch.tensor(okv, device=dev)
        p0, g, gp0 = fresh(), fresh(), fresh()
        res = {}
        for mode in ("measure", "unit", "rows", "nowhere", "unit_gather", "rows_gather"):
            p, gp = [x.clone() for x in p0], [x.clone() for x in gp0]
            dx = [torch.zeros((), device=dev) for _ in shapes]
            fns[f"upd_{mode}"](p, g, gp, torch.tensor(1e-3, device=dev), ok, dx)
            res[mode] = (p, gp, dx)
        for mode, (p, gp, dx) in res.items():
            ref = res["unit" if "unit" in mode or mode == "nowhere" else "measure"]
            same = all(torch.equal(a, b) for a, b in zip(p + dx, ref[0] + ref[2]))
            if mode != "nowhere":  # the only form that does not keep g' on a skipped step
                same = same and all(torch.equal(a, b) for a, b in zip(gp, ref[1]))
            out[f"upd_{mode}"] = out.get(f"upd_{mode}", True) and same
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--options",
        default="default",
        help=f"comma-separated inductor option sets to time the compiled passes under, of "
        f"{sorted(OPTION_SETS)} (each compiles every pass again)",
    )
    args = ap.parse_args()
    sets = args.options.split(",")
    for name in sets:
        if name not in OPTION_SETS:
            ap.error(f"--options: unknown set {name!r}, choose from {sorted(OPTION_SETS)}")
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    side, count = (2048, 32) if dev.type == "cuda" else (64, 4)
    gen = torch.Generator(device=dev).manual_seed(0)

    def rnd() -> list[torch.Tensor]:
        return [torch.randn(side * side, device=dev, generator=gen) for _ in range(count)]

    bufs: dict[str, Any] = {"p": rnd(), "g": rnd(), "gp": rnd(), "m": rnd()}
    bufs["dx"] = [torch.zeros((), device=dev) for _ in range(count)]
    bufs.update(
        lr=torch.tensor(1e-3, device=dev),
        beta=torch.tensor(0.9, device=dev),
        ok=torch.tensor(True, device=dev),
        acc=torch.zeros(3, device=dev),
        scratch=torch.zeros((), device=dev),
        f=compiled_fns(dev.type == "cuda"),
    )
    n = side * side * count
    agree = agreement(bufs["f"], dev)
    print("agrees with the plain form: " + ", ".join(f"{k} {v}" for k, v in agree.items()))
    copy_bw = common.copy_bandwidth(dev, 2**30 if dev.type == "cuda" else 2**22)
    print(f"copy bandwidth {copy_bw / 1e12:.3f} TB/s on {common.environment(dev).get('gpu', dev)}")
    slices = [slice(i, i + CHUNK) for i in range(0, count, CHUNK)]
    rows = []
    for opt_set in sets:
        if opt_set != sets[0]:
            bufs["f"] = compiled_fns(dev.type == "cuda", OPTION_SETS[opt_set])
        for name, (fn, bpp, comp) in variants().items():
            if opt_set != sets[0] and not comp:
                continue  # not compiled: the same under every option set
            t = _time(fn, bufs, slices, dev)
            pct = 100 * bpp * n / (t / 1e3) / copy_bw
            rows.append(
                {"pass": name, "options": opt_set, "ms": t, "B_param": bpp, "pct_copy": pct}
            )
            print(json.dumps(rows[-1]), flush=True)
    print("| pass | options | ms | B/param | % copy bw |\n|---|---|---|---|---|")
    for r in rows:
        cells = (r["pass"], r["options"], f"{r['ms']:.3f}", r["B_param"], f"{r['pct_copy']:.1f}")
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.out:
        pathlib.Path(args.out).write_text(
            json.dumps(
                {"env": common.environment(dev), "copy_bw": copy_bw, "rows": rows, "agree": agree},
                indent=1,
            )
        )


def _time(
    fn: Callable[..., Any], bufs: dict[str, Any], slices: list[slice], dev: torch.device
) -> float:
    """Median ms of one pass over every chunk, replayed as one CUDA graph on a GPU."""

    def step() -> None:
        for s in slices:
            fn(bufs, s)

    for _ in range(3):
        step()
    run = step
    if dev.type == "cuda":
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
    return float(common.time_ms(run, dev, warmup=5, reps=20, windows=7)["median_ms"])


if __name__ == "__main__":
    main()
