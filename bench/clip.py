"""Gradient clipping plus the optimizer step: ``clip_grad_norm_`` then ``step()``, against
``max_grad_norm=`` (the clip inside signify's step), on 32 x 2048^2 fp32 tensors (134M).

What each row must move through memory (B/param, fp32):

* ``clip_grad_norm_`` reads the gradients for the norm (4), then scales them in place
  (read and write, 8): 12;
* the signified Adam step reads the gradients once more for its non-finite check (4) and
  moves 28 (parameter, m, v read and written, gradient read); torch's fused AdamW moves 28
  and has no check;
* with ``max_grad_norm`` the norm's read is also the check and the coefficient is applied
  where the update reads the gradient: 4 + 28 = 32.

Each row is timed as one call of ``clip (if outside) + step`` with a new lr every step,
CUDA events, median of windows; the copy bandwidth is measured in the same run.

    PYTHONPATH=. python bench/clip.py                 # GPU, about a minute
    PYTHONPATH=. python bench/clip.py --cpu --out x   # smoke test, tiny
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import signify
from bench import common

MAX_NORM = 1.0
LR = 1e-4
SignAdam = signify.signify(torch.optim.Adam, stochastic=True)


def rows() -> dict[str, tuple[Callable[..., Any], bool, int]]:
    """name -> (build(params) -> optimizer, clip outside with clip_grad_norm_, B/param)."""
    return {
        "torch AdamW fused + clip_grad_norm_": (
            lambda ps, c: torch.optim.AdamW(ps, lr=LR, fused=ps[0].is_cuda),
            True,
            40,
        ),
        "SignAdam stochastic + clip_grad_norm_": (
            lambda ps, c: SignAdam(ps, lr=LR, seed=0, compile=c),
            True,
            44,
        ),
        "SignAdam stochastic, max_grad_norm": (
            lambda ps, c: SignAdam(ps, lr=LR, seed=0, compile=c, max_grad_norm=MAX_NORM),
            False,
            32,
        ),
        "SignAdam stochastic [flatten] + clip_grad_norm_": (
            lambda ps, c: SignAdam(ps, lr=LR, seed=0, compile=c, flatten=True),
            True,
            44,
        ),
        "SignAdam stochastic [flatten], max_grad_norm": (
            lambda ps, c: SignAdam(
                ps, lr=LR, seed=0, compile=c, flatten=True, max_grad_norm=MAX_NORM
            ),
            False,
            32,
        ),
        "SignAdam stochastic [flatten], no clip": (
            lambda ps, c: SignAdam(ps, lr=LR, seed=0, compile=c, flatten=True),
            False,
            32,
        ),
    }


def measure(name: str, spec: Any, dev: torch.device, side: int, count: int, copy_bw: float):  # type: ignore[no-untyped-def]
    build, outside, bpp = spec
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    gen = torch.Generator(device=dev).manual_seed(0)
    ps = [torch.randn(side, side, device=dev, generator=gen) for _ in range(count)]
    for p in ps:
        p.requires_grad_(True)
        p.grad = torch.randn(side, side, device=dev, generator=gen)  # norm >> MAX_NORM
    opt = build(ps, dev.type == "cuda")
    lrs = [LR, LR * 1.001]
    counter = [0]

    def step() -> None:
        counter[0] += 1
        for g in opt.param_groups:
            g["lr"] = lrs[counter[0] & 1]
        if outside:
            torch.nn.utils.clip_grad_norm_(ps, MAX_NORM)
        opt.step()

    for _ in range(3):
        step()
    common.sync(dev)
    t = common.time_ms(step, dev, warmup=3, reps=3 if dev.type == "cpu" else 20, windows=5)
    n = side * side * count
    ms = t["median_ms"]
    return {
        "row": name,
        "ms": ms,
        "B_param": bpp,
        "pct_copy": 100 * bpp * n / (ms * 1e-3) / copy_bw,
        "finite": all(bool(torch.isfinite(p).all()) for p in ps),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    side, count = (2048, 32) if dev.type == "cuda" else (64, 4)
    copy_bw = common.copy_bandwidth(dev, 2**30 if dev.type == "cuda" else 2**22)
    env = common.environment(dev)
    print(f"copy bandwidth {copy_bw / 1e12:.3f} TB/s on {env.get('gpu', dev)}")
    out = []
    for name, spec in rows().items():
        out.append(measure(name, spec, dev, side, count, copy_bw))
        print(json.dumps(out[-1]), flush=True)
    print(common.table(out, ["row", "ms", "B_param", "pct_copy"]))
    if args.out:
        payload = {"env": env, "copy_bw": copy_bw, "n": side * side * count, "rows": out}
        pathlib.Path(args.out).write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
