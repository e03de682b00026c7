"""Fine-tuning quality of block-coordinate training on the CPU: loss after equal compute time.

A character-level GPT (``signify.tasks.gpt``, 6 layers, d=192) is pretrained with AdamW on the
Python documentation (``pydoc_data``), then fine-tuned on Python source code from the
standard library (a domain shift) by each method for the same CPU time (one thread, process
CPU time, so other load on the machine does not change the result). The table reports the
validation loss on held-out source code at a third, two thirds and all of the budget, for
the best of two learning rates per method.

    PYTHONPATH=. python bench/blocks_quality.py              # ~15 CPU minutes
    PYTHONPATH=. python bench/blocks_quality.py --budget 3   # quick look

The pretrained checkpoint is cached under runs/ (git-ignored).
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
import sysconfig
import time
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import signify
from bench import common
from signify.tasks.gpt import GPT, GPTConfig
from signify.tasks.text import load_text
from signify.transforms import Blocks

ROOT = pathlib.Path(__file__).resolve().parent.parent
BATCH, SEQ = 8, 128


def encode(text: str, stoi: dict[str, int]) -> torch.Tensor:
    return torch.tensor([stoi[c] for c in text if c in stoi], dtype=torch.long)


def source_text(limit: int = 600_000) -> str:
    """Standard-library Python sources, in a fixed order, up to ``limit`` characters."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(errors="ignore")
        out.append(text)
        size += len(text)
        if size >= limit:
            break
    return "\n".join(out)[:limit]


def batch(data: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    ix = torch.randint(len(data) - SEQ - 1, (BATCH,), generator=gen)
    x = torch.stack([data[i : i + SEQ] for i in ix])
    y = torch.stack([data[i + 1 : i + 1 + SEQ] for i in ix])
    return x, y


@torch.no_grad()
def evaluate(model: GPT, data: torch.Tensor, batches: int = 12) -> float:
    gen = torch.Generator().manual_seed(1234)
    model.eval()
    losses = [model(*batch(data, gen))[1].item() for _ in range(batches)]
    model.train()
    return sum(losses) / len(losses)


def pretrained(cfg: GPTConfig, data: torch.Tensor, steps: int) -> dict[str, Any]:
    path = ROOT / "runs" / f"blocks_quality_pretrained_{steps}.pt"
    if path.exists():
        return torch.load(path)
    torch.manual_seed(0)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(0)
    for k in range(steps):
        loss = model(*batch(data, gen))[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if k % 100 == 0:
            print(f"pretrain {k}: {loss.item():.3f}", flush=True)
    path.parent.mkdir(exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.state_dict()


METHODS: dict[str, tuple[float, ...]] = {
    "adamw_full": (1e-3, 3e-3),
    "signum_full": (3e-4, 1e-3),
    "signum_blocks": (1e-3, 3e-3),
    "stoadam_blocks": (1e-3, 3e-3),
    "stoadam_blocks[own]": (1e-3, 3e-3),
    "stoadam_blocks[always]": (1e-3, 3e-3),
}


def make(method: str, model: GPT, lr: float) -> torch.optim.Optimizer:
    named = list(model.named_parameters())
    params = [p for _, p in named]
    outside = method.partition("[")[2].rstrip("]") or "never"
    if method == "adamw_full":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=True)
    if method == "signum_full":
        return signify.Signum(params, lr=lr, momentum=0.9, seed=0)
    if method == "signum_blocks":  # torch SGD's EMA momentum (dampening = momentum) + sign
        cls = signify.signify(torch.optim.SGD, blocks=Blocks("depth", outside=outside), seed=0)
        return cls(named, lr=lr, momentum=0.9, dampening=0.9)
    blocks = Blocks("depth", outside=outside)
    return signify.signify(torch.optim.Adam, stochastic=True, blocks=blocks, seed=0)(named, lr=lr)


def finetune(
    method: str, lr: float, state: dict[str, Any], cfg: GPTConfig, data: Any, budget: float
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = GPT(cfg)
    model.load_state_dict(copy.deepcopy(state))
    opt = make(method, model, lr)
    gen = torch.Generator().manual_seed(7)
    marks = [budget / 3, 2 * budget / 3, budget]
    losses: list[float] = []
    used, steps = 0.0, 0
    while marks:
        x, y = batch(data["train"], gen)
        t0 = time.process_time()
        loss = model(x, y)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        used += time.process_time() - t0
        steps += 1
        if used >= marks[0]:
            marks.pop(0)
            losses.append(evaluate(model, data["val"]))
    return {
        "method": method,
        "lr": lr,
        "steps": steps,
        "ms_per_step": 1e3 * used / steps,
        "loss_third": losses[0],
        "loss_two_thirds": losses[1],
        "loss_end": losses[2],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=45.0, help="CPU seconds per run")
    ap.add_argument("--pretrain-steps", type=int, default=500)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", type=pathlib.Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    text = load_text()
    vocab = sorted(set(text))
    stoi = {c: i for i, c in enumerate(vocab)}
    cfg = GPTConfig(vocab_size=len(vocab), block_size=SEQ, n_layer=6, n_head=6, n_embd=192)
    state = pretrained(cfg, encode(text, stoi), args.pretrain_steps)
    code = encode(source_text(), stoi)
    n = int(0.9 * len(code))
    data = {"train": code[:n], "val": code[n:]}
    model = GPT(cfg)
    model.load_state_dict(state)
    start = evaluate(model, data["val"])
    print(f"pretrained model, loss on held-out source code: {start:.3f}", flush=True)
    runs = []
    for method in args.methods:
        for lr in METHODS[method]:
            r = finetune(method, lr, state, cfg, data, args.budget)
            print(r, flush=True)
            runs.append(r)
    best = []
    for method in args.methods:
        mine = [r for r in runs if r["method"] == method]
        best.append(min(mine, key=lambda r: r["loss_end"]))
    payload = {
        "environment": common.environment(torch.device("cpu")),
        "config": {"model": vars(cfg), "batch": BATCH, "seq": SEQ, "budget_s": args.budget},
        "start_loss": start,
        "runs": runs,
        "best": best,
    }
    path = common.write_json("blocks_quality", payload, args.out)
    print(f"wrote {path}")
    cols = ["method", "lr", "steps", "ms_per_step", "loss_third", "loss_two_thirds", "loss_end"]
    print(common.table(best, cols))
    return payload


if __name__ == "__main__":
    main()
