"""ALIAS on the CPU-sized language-model task: the stepsize trajectory next to tuned Sign-SGD
(Signum) and AdamW.

The task is `signify.tasks`' tiny character-level GPT on the Python docs text. Signum and
AdamW are each tuned over a small grid of learning rates; ALIAS is not tuned: option II with
``f~ = 0`` (cross-entropy is non-negative), momentum 0.9, and the same linear warmup and
cosine multiplier schedule as the baselines (``lr`` is a multiplier of ALIAS's estimate), as in
the paper's LLM runs; also ALIAS option I and the ALIAS Adam estimate on sign(Adam). Writes
docs/img/alias_gpt.png (validation loss and step size against steps) and
docs/img/alias_gpt.json, and prints a table.

    PYTHONPATH=. python examples/alias_gpt.py           # a few minutes on a laptop CPU
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import time

import torch

import signify
from signify.tasks.gpt import GPT, GPTConfig
from signify.tasks.text import CharData
from signify.transforms.stepsize_alias import Alias

OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "img"


def schedule(steps: int, warmup: int):
    def f(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (t - warmup) / max(1, steps - warmup)))

    return f


def train(name, make_opt, data, args, seed=0):
    torch.manual_seed(seed)
    # smaller than the "tiny" preset so that ten runs take minutes on a shared 2-core CPU
    cfg = GPTConfig(vocab_size=data.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64)
    model = GPT(cfg)
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(args.steps, args.warmup))
    gen = torch.Generator().manual_seed(seed)
    val_gen = torch.Generator().manual_seed(1234)
    val = [data.batch("val", 64, cfg.block_size, val_gen) for _ in range(2)]
    hist = {"step": [], "val": [], "stepsize": [], "train": []}
    t0 = time.perf_counter()
    for t in range(args.steps + 1):
        if t % args.eval_every == 0 or t == args.steps:
            model.eval()
            with torch.no_grad():
                v = sum(model(x, y)[1].item() for x, y in val) / len(val)
            model.train()
            hist["step"].append(t)
            hist["val"].append(v)
        if t == args.steps:
            break
        x, y = data.batch("train", args.batch, cfg.block_size, gen)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        if hasattr(opt, "set_loss"):
            opt.set_loss(loss)
        opt.step()
        sched.step()
        hist["train"].append(loss.item())
        s = opt.stepsizes()[0] if hasattr(opt, "stepsizes") else opt.param_groups[0]["lr"]
        hist["stepsize"].append(float(torch.as_tensor(s).float().mean()))
    hist["seconds"] = time.perf_counter() - t0
    hist["name"] = name
    print(f"{name:34s} val {hist['val'][-1]:.4f}  {hist['seconds']:.0f}s", flush=True)
    return hist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--only", default=None, help="run only names containing this")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = CharData()
    sgd = torch.optim.SGD
    runs = {}
    signum = signify.signify(sgd)
    for lr in (3e-4, 1e-3, 3e-3):
        runs[f"Signum lr={lr:g}"] = lambda p, lr=lr: signum(p, lr=lr, momentum=0.9)
    for lr in (1e-3, 3e-3, 1e-2):
        runs[f"AdamW lr={lr:g}"] = lambda p, lr=lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.0)
    alias2 = signify.signify(sgd, stepsize=Alias(f_lower=0.0))
    alias1 = signify.signify(sgd, stepsize="alias")
    aadam = signify.signify(torch.optim.Adam, stepsize="alias-adam")
    runs["ALIAS II (f~=0), beta=0.9"] = lambda p: alias2(p, momentum=0.9)
    runs["ALIAS I, beta=0.9"] = lambda p: alias1(p, momentum=0.9)
    runs["ALIAS-Adam on sign(Adam)"] = lambda p: aadam(p)
    if args.only:
        runs = {n: m for n, m in runs.items() if args.only in n}
    results = {name: train(name, make, data, args) for name, make in runs.items()}
    best = [
        min((r for n, r in results.items() if n.startswith(fam)), key=lambda r: r["val"][-1])
        for fam in ("Signum", "AdamW")
        if any(n.startswith(fam) for n in results)
    ]
    shown = best + [r for n, r in results.items() if "ALIAS" in n]
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot(shown, out / "alias_gpt.png", args)
    rows = ["| run | final val loss | final step |", "|---|---|---|"]
    for n, r in results.items():
        rows.append(f"| {n} | {r['val'][-1]:.4f} | {r['stepsize'][-1]:.2e} |")
    print("\n".join(rows))
    (out / "alias_gpt.json").write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))


def plot(shown, path, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_s) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, r in enumerate(shown):
        ax_l.plot(r["step"], r["val"], color=f"C{i}", label=f"{r['name']} ({r['val'][-1]:.3f})")
        ax_s.plot(range(1, len(r["stepsize"]) + 1), r["stepsize"], color=f"C{i}", label=r["name"])
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("validation loss (nats/char)")
    ax_l.legend(fontsize=8)
    ax_s.set_yscale("log")
    ax_s.set_xlabel("step")
    ax_s.set_ylabel("step size (lr x schedule; ALIAS: gamma x schedule)")
    fig.suptitle(
        f"GPT 2x64 (0.1M), char-level pydoc text, batch {args.batch}x32, {args.steps} steps, "
        "warmup + cosine for all"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
