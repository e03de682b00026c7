"""Block-coordinate training speed and memory: ``blocks="depth"`` against full-parameter runs.

A 24-layer GPT (``signify.tasks.gpt.PRESETS["350m"]``, ~370M parameters, fp32 weights, bf16
autocast), batch 8 x 512, one training iteration = zero_grad + forward + backward + step:

* ``adamw_fused``: full-parameter ``torch.optim.AdamW(fused=True)``;
* ``signum_full``: full-parameter ``signify.Signum`` (compiled);
* ``signum_blocks``: Signum with ``Blocks("depth")`` (momentum dropped on every switch);
* ``stoadam_blocks``: ``signify(torch.optim.Adam, stochastic=True, blocks="depth")``.

Block rows are timed two ways: each of the N layers held active in turn (``per-layer``; the
row's time is the average weighted by the depth clock's long-run shares ``1/tau_i``), and a
real run of consecutive scheduled steps. Peak memory is the largest over all of that, which
includes steps that train the shallowest layer. Targets (issue 4): blocks >= 1.7x faster per
iteration than full AdamW, and peak memory <= 62% of AdamW's.

    PYTHONPATH=. python bench/blocks.py            # GPU, ~3-4 minutes on an H100
    PYTHONPATH=. python bench/blocks.py --cpu      # seconds: tiny model, smoke test
    PYTHONPATH=. python bench/blocks.py --policies # adds outside="own"/"always" rows
"""

from __future__ import annotations

import argparse
import contextlib
import pathlib
import sys
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import signify
from bench import common
from signify.tasks.gpt import GPT, PRESETS
from signify.transforms import Blocks
from signify.transforms.block_rules import DepthClock, depth_shares

GIB = 2**30


class SteerableDepth:
    """The depth clock, or a fixed block while ``forced`` is set (to time each layer alone
    with one optimizer, hence one set of compiled graphs)."""

    def __init__(self, depth_bias: float = 10.0) -> None:
        self.clock = DepthClock(depth_bias)
        self.forced: int | None = None
        self.n = 0
        self.history: list[int] = []  # the clock's picks (not the forced ones)

    def __call__(self, k: int, n: int) -> int:
        if self.n != n:
            self.clock.reset(n, 0)
            self.n = n
        if self.forced is not None:
            return self.forced
        self.history.append(self.clock.next()[0])
        return self.history[-1]


def make_optimizer(
    name: str, model: torch.nn.Module, compile_: bool, rule: Any, outside: str
) -> torch.optim.Optimizer:
    named = list(model.named_parameters())
    params = [p for _, p in named]
    if name == "adamw_fused":
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    if name == "signum_full":
        return signify.Signum(params, lr=1e-4, momentum=0.9, compile=compile_)
    blocks = Blocks(rule, outside=outside)
    if name == "signum_blocks":  # torch SGD's EMA momentum (dampening = momentum) + sign
        cls = signify.signify(torch.optim.SGD, blocks=blocks)
        return cls(named, lr=1e-4, momentum=0.9, dampening=0.9, compile=compile_)
    if name == "stoadam_blocks":
        cls = signify.signify(torch.optim.Adam, stochastic=True, blocks=blocks)
        return cls(named, lr=1e-4, compile=compile_)
    raise ValueError(name)


def run_row(
    name: str, args: argparse.Namespace, device: torch.device, outside: str = "never"
) -> dict[str, Any]:
    torch.manual_seed(0)
    cfg = PRESETS[args.preset]
    # what an earlier row left allocated is not this row's (subtracted from its peak)
    left = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    model = GPT(cfg).to(device)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), device=device)
    steer = SteerableDepth()
    is_blocks = name.endswith("_blocks")
    opt = make_optimizer(name, model, compile_=not args.cpu, rule=steer, outside=outside)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )

    def iteration() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = model(x, x)[1]
        loss.backward()
        opt.step()

    row: dict[str, Any] = {"row": name if outside == "never" else f"{name}[{outside}]"}
    for _ in range(args.warm):  # compile and allocate state before the peak is measured
        iteration()
    common.sync(device)
    common.peak_memory_reset(device)
    if not is_blocks:
        t = common.time_ms(iteration, device, **args.timing)
        row["ms_per_iter"] = row["ms_real_run"] = t["median_ms"]
        row["peak_gib"] = (common.peak_memory(device) - left) / GIB
        return row

    n = cfg.n_layer + (2 if outside == "own" else 0)
    shares = depth_shares(n)
    if not args.skip_per_layer and outside == "never":
        per_layer = []
        for i in range(n):
            steer.forced = i
            iteration()  # steps the previous block, then switches to block i
            common.peak_memory_reset(device)
            t = common.time_ms(iteration, device, **args.layer_timing)
            per_layer.append(
                {
                    "block": i + 1,
                    "ms": t["median_ms"],
                    "peak_gib": (common.peak_memory(device) - left) / GIB,
                    "share": shares[i],
                }
            )
        row["per_layer"] = per_layer
        row["ms_per_iter"] = sum(r["ms"] * r["share"] for r in per_layer)
        row["peak_gib_per_layer_max"] = max(r["peak_gib"] for r in per_layer)
        steer.forced = None
    common.peak_memory_reset(device)
    start = len(steer.history)
    t = common.time_ms(iteration, device, **args.run_timing)
    row["ms_real_run"] = t["median_ms"]
    picks = steer.history[start - 1 : -1]  # the block each timed step trained
    row["real_run_mean_layers_backprop"] = sum(n - i for i in picks) / len(picks)
    if "per_layer" in row:  # what the per-layer times predict for these very picks
        row["ms_real_run_predicted"] = sum(row["per_layer"][i]["ms"] for i in picks) / len(picks)
    row.setdefault("ms_per_iter", row["ms_real_run"])
    peak = (common.peak_memory(device) - left) / GIB
    row["peak_gib"] = max(peak, row.get("peak_gib_per_layer_max", 0))
    return row


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny model on the CPU (smoke test)")
    ap.add_argument("--policies", action="store_true", help='add outside="own"/"always" rows')
    ap.add_argument("--skip-per-layer", action="store_true", help="only the real-run timing")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="folder for the JSON")
    args = ap.parse_args(argv)
    if args.cpu:
        args.preset, args.batch, args.seq, args.warm = "tiny", 2, 16, 1
        args.timing = dict(warmup=1, reps=2, windows=1)
        args.layer_timing = dict(warmup=0, reps=1, windows=1)
        args.run_timing = dict(warmup=1, reps=4, windows=1)
    else:
        args.preset, args.batch, args.seq, args.warm = "350m", 8, 512, 3
        args.timing = dict(warmup=5, reps=10, windows=3)
        args.layer_timing = dict(warmup=1, reps=4, windows=3)
        args.run_timing = dict(warmup=24, reps=40, windows=5)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.cpu:
        print("no CUDA device: running the --cpu smoke configuration")
        args = parse([*(argv or []), "--cpu"])
    if device.type == "cpu":
        torch.set_num_threads(1)  # a smoke test; OpenMP spinning on a shared box is slower
    rows = []
    jobs: list[tuple[str, str]] = [
        ("adamw_fused", "never"),
        ("signum_full", "never"),
        ("signum_blocks", "never"),
        ("stoadam_blocks", "never"),
    ]
    if args.policies:
        jobs += [("stoadam_blocks", "own"), ("stoadam_blocks", "always")]
    for name, outside in jobs:
        rows.append(run_row(name, args, device, outside))
        print(
            f"{rows[-1]['row']}: {rows[-1]['ms_per_iter']:.2f} ms, {rows[-1]['peak_gib']:.2f} GiB"
        )
        _free(device)
    base = rows[0]
    for r in rows:
        r["speedup_vs_adamw"] = base["ms_per_iter"] / r["ms_per_iter"]
        r["speedup_real_run"] = base["ms_per_iter"] / r["ms_real_run"]
        r["memory_vs_adamw"] = r["peak_gib"] / base["peak_gib"] if base["peak_gib"] else 0.0
        if r["row"].endswith("_blocks"):
            ok = r["speedup_vs_adamw"] >= 1.7 and r["memory_vs_adamw"] <= 0.62
            r["targets"] = "met" if ok else "missed"
    payload = {
        "environment": common.environment(device),
        "config": {"preset": args.preset, "batch": args.batch, "seq": args.seq},
        "rows": rows,
    }
    path = common.write_json("blocks_cpu" if args.cpu else "blocks", payload, args.out)
    print(f"wrote {path}")
    cols = ["row", "ms_per_iter", "ms_real_run", "peak_gib", "speedup_vs_adamw"]
    cols += ["speedup_real_run", "memory_vs_adamw", "targets"]
    print(common.table(rows, cols))
    return payload


def _free(device: torch.device) -> None:
    import gc

    torch._dynamo.reset()  # compiled graphs of the last row's optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
