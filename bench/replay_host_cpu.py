"""The host work of a replayed step, on the CPU: packages side by side in one process.

A CUDA graph replay leaves only the host's bookkeeping (active parameters, the plan key, the
hyperparameters, the replay signature and its comparison) on the step's critical path for
many small tensors. This runs that path on the CPU: the executor is told to replay and the
graph is a stub whose ``replay()`` does nothing, so only the host work is timed. 220 tensors
of 64 x 32, stochastic Adam, eager and compiled plans, 30 interleaved rounds of 100 steps.

    python bench/replay_host_cpu.py --old DIR    (every DIR/signify_*/ against this tree;
                                                  git archive REV signify | tar x, renamed)
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from typing import Any

import torch


class _StubGraph:
    def replay(self) -> None:
        pass


def build(name: str, compile_: bool) -> Any:
    pkg = importlib.import_module(name)
    gen = torch.Generator().manual_seed(0)
    ps = [torch.randn(64, 32, generator=gen).requires_grad_() for _ in range(220)]
    for p in ps:
        p.grad = torch.randn(64, 32, generator=gen)
    opt = pkg.signify(torch.optim.Adam, stochastic=True, compile=compile_)(ps, lr=1e-3)
    for _ in range(3):
        opt.step()
    ex = opt._executor
    ex._use_graphs = lambda plan: True
    replay = ex.replay
    real_step = replay.step

    def step(sig: Any, run: Any) -> Any:
        if replay.graph is None:  # "capture": a stub that replays nothing
            replay.graph = [sig, _StubGraph(), None, 0]
        return real_step(sig, run)

    replay.step = step
    for _ in range(3):
        opt.step()
    assert replay.graph[3] > 0, "not replaying"
    return opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, args.old)
    names = [*sorted(n for n in os.listdir(args.old) if n.startswith("signify_")), "signify"]
    for compile_ in (False, True):
        opts = {n: build(n, compile_) for n in names}
        res: dict[str, list[float]] = {n: [] for n in opts}
        for r in range(args.rounds):
            for n in sorted(opts, reverse=r % 2 == 1):
                t0 = time.perf_counter()
                for _ in range(100):
                    opts[n].step()
                res[n].append((time.perf_counter() - t0) / 100 * 1e3)
        cells = ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in res.items())
        print(f"compile={compile_}: median ms per step: {cells}")


if __name__ == "__main__":
    main()
