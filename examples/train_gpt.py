"""nanoGPT-style training of a character-level GPT with a signified optimizer.

    python examples/train_gpt.py                          # tiny model, CPU, ~1 min
    python examples/train_gpt.py --tiny --steps 5         # the CI smoke size
    python examples/train_gpt.py --device cuda --preset small --steps 2000 --compile
    python examples/train_gpt.py --base Adam --stochastic --blocks depth --blocks-outside own
    python examples/train_gpt.py --base SGD --momentum 0.9 --stepsize alias
    python examples/train_gpt.py --base AdamW --no-sign           # the torch baseline

The text is the Python documentation shipped with the standard library (no download). The
loop is nanoGPT's: weight decay on matrices only (two param groups), linear warmup then cosine
decay, gradient clipping, bf16 autocast on a GPU, periodic evaluation, a checkpoint that
resumes exactly (``--ckpt``: model, optimizer with its noise generator, data generator, step).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import time

import torch

import signify
from signify.tasks.gpt import GPT, PRESETS, GPTConfig
from signify.tasks.text import CharData


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train a char-level GPT with a signified optimizer.")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--tiny", action="store_true", help="a 2-layer d=32 model for smoke tests")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--base", default="Adam", help="a torch.optim class name (Adam, AdamW, SGD...)")
    p.add_argument("--no-sign", action="store_true", help="train with the base itself")
    p.add_argument("--stochastic", action="store_true", help="StoSignSGD's unbiased sign")
    p.add_argument("--blocks", default=None, help='block schedule, e.g. "depth" (ABSignSGD)')
    p.add_argument(
        "--blocks-outside",
        default=None,
        choices=["never", "always", "own"],
        help="embeddings/head under --blocks (default never: fine-tuning; own: from scratch)",
    )
    p.add_argument("--stepsize", default=None, help='stepsize oracle, e.g. "alias"')
    p.add_argument("--lr", type=float, default=None, help="lr (a multiplier with --stepsize)")
    p.add_argument("--momentum", type=float, default=0.9, help="for --base SGD")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default 5%%)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: off)")
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="compile the optimizer step")
    p.add_argument(
        "--flatten", action="store_true", help="one buffer per param group (fastest on a GPU)"
    )
    p.add_argument("--ckpt", default=None, help="checkpoint path: resumed from if it exists")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def build_optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.Optimizer:
    base = getattr(torch.optim, args.base)
    named = list(model.named_parameters())
    # nanoGPT: decay 2-D weights, not biases, norms or positional tables. Names are kept
    # (pairs) so a block schedule can find the layers.
    decay = [(n, p) for n, p in named if p.dim() >= 2]
    no_decay = [(n, p) for n, p in named if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {"momentum": args.momentum} if args.base == "SGD" else {}
    if args.no_sign:
        plain = [{**g, "params": [p for _, p in g["params"]]} for g in groups]
        return base(plain, lr=args.lr or 1e-3, **extra)
    blocks = args.blocks
    if blocks is not None and args.blocks_outside is not None:
        from signify.transforms import Blocks

        blocks = Blocks(blocks, outside=args.blocks_outside)
    cls = signify.signify(
        base,
        stochastic=args.stochastic,
        blocks=blocks,
        stepsize=args.stepsize,
        seed=args.seed,
        compile=args.compile or None,
        flatten=args.flatten,
        # clipping inside the step: the same result as clip_grad_norm_ before it, and its
        # read of the gradients is also the optimizer's non-finite check
        max_grad_norm=args.clip or None,
    )
    lr = args.lr if args.lr is not None else (1.0 if args.stepsize else 1e-3)
    return cls(groups, lr=lr, **extra)


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    data = CharData()
    if args.tiny:
        cfg = GPTConfig(vocab_size=data.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    else:
        cfg = dataclasses.replace(PRESETS[args.preset], vocab_size=data.vocab_size)
    model = GPT(cfg).to(device)
    opt = build_optimizer(args, model)
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 20)

    def lr_lambda(t: int) -> float:
        if args.stepsize:  # an oracle picks the step; a warmup would skew its estimate
            return 1.0
        if t < warmup:
            return (t + 1) / warmup
        progress = min(1.0, (t - warmup) / max(1, args.steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    gen = torch.Generator().manual_seed(args.seed)
    start = 0
    if args.ckpt and os.path.exists(args.ckpt):
        ck = torch.load(args.ckpt, map_location=device, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        start = ck["step"]
        print(f"resumed from {args.ckpt} at step {start}")

    def autocast() -> contextlib.AbstractContextManager:
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    val_gen = torch.Generator().manual_seed(1234)
    val = [data.batch("val", args.batch_size, cfg.block_size, val_gen, device) for _ in range(8)]
    eval_every = args.eval_every or max(1, args.steps // 10)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters, optimizer {type(opt).__name__}, device {device}")

    @torch.no_grad()
    def evaluate() -> float:
        model.eval()
        with autocast():
            loss = sum(float(model(x, y)[1]) for x, y in val) / len(val)
        model.train()
        return loss

    t0 = time.perf_counter()
    for step in range(start, args.steps):
        x, y = data.batch("train", args.batch_size, cfg.block_size, gen, device)
        with autocast():
            _, loss = model(x, y)
        loss.backward()
        if args.clip and args.no_sign:  # a signified optimizer clips inside its step
            torch.nn.utils.clip_grad_norm_(
                [p for p in model.parameters() if p.grad is not None], args.clip
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if (step + 1) % eval_every == 0 or step + 1 == args.steps:
            dt = time.perf_counter() - t0
            tok = (step + 1 - start) * args.batch_size * cfg.block_size
            print(
                f"step {step + 1:5d}  train {loss.item():.4f}  val {evaluate():.4f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {tok / dt:,.0f} tok/s"
            )
    if args.ckpt:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "generator": gen.get_state(),
                "step": args.steps,
            },
            args.ckpt,
        )
        print(f"checkpoint written to {args.ckpt}")


if __name__ == "__main__":
    main()
