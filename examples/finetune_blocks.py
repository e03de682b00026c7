"""Block-coordinate fine-tuning with ``blocks="depth"`` (ABSignSGD, Zhou & Pu, ICLR 2026).

    python examples/finetune_blocks.py                 # tiny GPT, CPU, about a minute
    python examples/finetune_blocks.py --tiny --steps 4 --pretrain-steps 2   # CI smoke size
    python examples/finetune_blocks.py --device cuda --preset small --steps 1000

A GPT is first pretrained briefly on the Python documentation text, then fine-tuned on a new
domain (Python source code from the standard library, same characters) twice from the same
weights: full fine-tuning with AdamW, and block-coordinate fine-tuning with

    signify.signify(torch.optim.Adam, stochastic=True, blocks="depth")(model.named_parameters())

which trains one transformer layer per step, chosen by ABSignSGD's depth-biased clock
(deeper layers more often). The optimizer sets ``requires_grad`` so that backward stops at the
active layer: frozen layers get no gradient and, by default, hold no optimizer state.
The script prints the loss on held-out code, the time per step and the optimizer state.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import time

import torch

import signify
from signify.tasks.gpt import GPT, PRESETS, GPTConfig
from signify.tasks.text import CharData


def code_tokens(data: CharData) -> torch.Tensor:
    """Standard-library source encoded with the docs' characters (others become spaces)."""
    import argparse as m1
    import dataclasses as m2
    import json.decoder as m3
    import string as m4
    import textwrap as m5

    text = "\n".join(inspect.getsource(m) for m in (m1, m2, m3, m4, m5))
    space = data.stoi[" "]
    return torch.tensor([data.stoi.get(c, space) for c in text], dtype=torch.long)


def batch(tokens: torch.Tensor, bs: int, block: int, gen: torch.Generator, device: torch.device):
    ix = torch.randint(len(tokens) - block - 1, (bs,), generator=gen)
    x = torch.stack([tokens[i : i + block] for i in ix])
    y = torch.stack([tokens[i + 1 : i + 1 + block] for i in ix])
    return x.to(device), y.to(device)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for st in opt.state.values()
        for v in st.values()
        if isinstance(v, torch.Tensor)
    )


def active_layers(model: torch.nn.Module) -> list[str]:
    """The numbered layers whose weights will receive a gradient in the next backward."""
    names = {
        ".".join(n.split(".")[:3])
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith("transformer.h.")
    }
    return sorted(names)


def main() -> None:
    p = argparse.ArgumentParser(description="Block-coordinate fine-tuning with blocks='depth'.")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--tiny", action="store_true", help="a 4-layer d=32 model (smoke tests)")
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tuning lr (both optimizers)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    data = CharData()
    if args.tiny:
        cfg = GPTConfig(vocab_size=data.vocab_size, block_size=32, n_layer=4, n_head=2, n_embd=32)
    else:
        cfg = dataclasses.replace(PRESETS[args.preset], vocab_size=data.vocab_size)
    gen = torch.Generator().manual_seed(0)

    model = GPT(cfg).to(device)
    pre = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(args.pretrain_steps):
        x, y = data.batch("train", args.batch_size, cfg.block_size, gen, device)
        model(x, y)[1].backward()
        pre.step()
        pre.zero_grad(set_to_none=True)
    print(f"pretrained {args.pretrain_steps} steps on the docs text")

    code = code_tokens(data)
    split = int(0.9 * len(code))
    train, held = code[:split], code[split:]
    val_gen = torch.Generator().manual_seed(1)
    val = [batch(held, args.batch_size, cfg.block_size, val_gen, device) for _ in range(8)]

    @torch.no_grad()
    def evaluate(m: torch.nn.Module) -> float:
        return sum(float(m(x, y)[1]) for x, y in val) / len(val)

    print(f"held-out code loss before fine-tuning: {evaluate(model):.4f}")
    runs = {
        "full AdamW": lambda m: torch.optim.AdamW(m.parameters(), lr=args.lr),
        'sign(Adam) stochastic, blocks="depth"': lambda m: signify.signify(
            torch.optim.Adam, stochastic=True, blocks="depth", seed=0
        )(m.named_parameters(), lr=args.lr),
    }
    for name, make in runs.items():
        m = copy.deepcopy(model)
        opt = make(m)
        ft_gen = torch.Generator().manual_seed(2)
        peak_state = 0
        t0 = time.perf_counter()
        for step in range(args.steps):
            if step < 3 and "blocks" in name:
                print(f"  step {step}: trainable layers {active_layers(m)}")
            x, y = batch(train, args.batch_size, cfg.block_size, ft_gen, device)
            m(x, y)[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            peak_state = max(peak_state, state_bytes(opt))
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / max(1, args.steps) * 1e3
        print(
            f"{name:40s} held-out code loss {evaluate(m):.4f}  {ms:.1f} ms/step  "
            f"optimizer state (peak) {peak_state / 2**20:.2f} MiB"
        )


if __name__ == "__main__":
    main()
