"""Data-parallel training with a 1-bit majority vote (signSGD-MV / Signum-MV, Bernstein et al.).

    torchrun --nproc_per_node 2 examples/ddp_vote.py                  # CPU, gloo
    torchrun --nproc_per_node 2 examples/ddp_vote.py --tiny --steps 5 # CI smoke size
    torchrun --nproc_per_node 8 examples/ddp_vote.py --preset small --steps 2000   # 8 GPUs, NCCL
    python examples/ddp_vote.py --tiny                                # one process (world of 1)

Each rank computes gradients on its own data shard and keeps its own momentum; the optimizer

    signify.signify(torch.optim.SGD, vote="majority")(model.parameters(), lr=..., momentum=0.9)

sends only the packed signs of its update (1 bit per coordinate), and every rank applies
``sign(sum of the ranks' signs)``: parameters stay identical on all ranks without an
all-reduce of gradients. The model is therefore *not* wrapped in DDP (DDP would all-reduce
the gradients as well, which is exactly the traffic the vote removes).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist

import signify
from signify.tasks.gpt import GPT, PRESETS, GPTConfig
from signify.tasks.text import CharData


def setup() -> tuple[int, int, torch.device, str | None]:
    """Join torchrun's group (NCCL on GPUs, gloo on CPU), or make a world of one."""
    tmp = None
    if "RANK" not in os.environ:
        tmp = tempfile.mkdtemp()
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        print("not under torchrun: running a world of 1 (use torchrun --nproc_per_node N)")
    else:
        cuda = torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)  # ranks share the cores
    return rank, world, device, tmp


def main() -> None:
    p = argparse.ArgumentParser(description="Majority-vote data-parallel training.")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--tiny", action="store_true", help="a 2-layer d=32 model (smoke tests)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16, help="per rank")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--stochastic", action="store_true", help="vote on stochastic signs")
    args = p.parse_args()
    rank, world, device, tmp = setup()

    data = CharData()
    if args.tiny:
        cfg = GPTConfig(vocab_size=data.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)
    else:
        cfg = dataclasses.replace(PRESETS[args.preset], vocab_size=data.vocab_size)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = GPT(cfg).to(device)
    SignumMV = signify.signify(torch.optim.SGD, vote="majority", stochastic=args.stochastic)
    # one seed for the group (the stochastic sign's noise differs between ranks anyway)
    opt = SignumMV(model.parameters(), lr=args.lr, momentum=args.momentum, seed=0)
    gen = torch.Generator().manual_seed(1000 + rank)  # each rank its own data shard

    log_every = max(1, args.steps // 10)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = data.batch("train", args.batch_size, cfg.block_size, gen, device)
        _, loss = model(x, y)
        loss.backward()
        opt.step()  # local momentum -> packed signs -> vote -> identical update everywhere
        opt.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == args.steps:
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            if rank == 0:
                tok = step * args.batch_size * cfg.block_size * world
                print(
                    f"step {step:5d}  loss (mean over {world} ranks) {float(mean) / world:.4f}  "
                    f"{tok / (time.perf_counter() - t0):,.0f} tok/s"
                )

    flat = torch.cat([q.detach().reshape(-1).float() for q in model.parameters()])
    checks = [torch.zeros(2, device=device) for _ in range(world)]
    dist.all_gather(checks, torch.stack([flat.sum(), (flat * flat).sum()]))
    same = all(torch.equal(checks[0], c) for c in checks)
    if rank == 0:
        n = flat.numel()
        print(f"parameters identical on all {world} ranks: {same}")
        ring = 2 * (world - 1) / world  # all-to-all + all-gather, or a ring all-reduce
        print(
            f"per step each rank sends about {ring * n / 8 / 2**10:.1f} KiB of packed signs "
            f"(a fp32 gradient all-reduce: {ring * 4 * n / 2**10:.1f} KiB)"
        )
    dist.barrier()
    dist.destroy_process_group()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    if not same:
        raise SystemExit("ranks diverged")


if __name__ == "__main__":
    main()
    # Leave without Python's teardown. On CPU, gloo's worker threads outlive the process
    # group (torch 2.13) and one still releasing a finished collective while the interpreter
    # shuts down aborts the rank ("terminate called without an active exception"; 2 of
    # 133 runs on a busy 2-core machine). Everything is printed and the group destroyed.
    sys.stdout.flush()
    os._exit(0)
