"""Worker side of tests/test_integrations_dist.py: DDP, FSDP2 and vote scenarios on 2 gloo
ranks (one spawn runs them all). Each rank saves what it saw to ``out/rank{r}.pt``; the test
process compares it with single-process references (`reference`)."""

from __future__ import annotations

import copy
import os
import traceback
from typing import Any

import torch
import torch.distributed as dist
from _gloo import init_gloo, leave
from torch import nn

import signify
from signify.transforms.stepsize_alias import Alias

STEPS = 4
BAD_STEP = 3  # rank 1 sees a non-finite gradient at this step


class Net(nn.Module):
    """Two linear layers whose sizes do not split evenly over 2 ranks (5 and 3 rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 5), nn.Linear(5, 3)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](torch.tanh(self.layers[0](x)))


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)


def loss_of(model: nn.Module, rank: int, step: int) -> torch.Tensor:
    x, y = batch(rank, step)
    return ((model(x) - y) ** 2).mean()


#: name -> (factory of the optimizer class, constructor keywords)
CHAINS: dict[str, tuple[Any, dict[str, Any]]] = {
    "sign_adamw": (lambda: signify.signify(torch.optim.AdamW), {"lr": 1e-2, "weight_decay": 0.1}),
    "alias_sgd": (
        lambda: signify.signify(torch.optim.SGD, stepsize="alias"),
        {"momentum": 0.9},
    ),
    "alias_adam_tensor": (
        lambda: signify.signify(torch.optim.Adam, stepsize=Alias(scope="tensor")),
        {},
    ),
    "stochastic_adam": (
        lambda: signify.signify(torch.optim.Adam, stochastic=True),
        {"lr": 1e-2, "seed": 3},
    ),
    "stochastic_alias_adamw": (
        lambda: signify.signify(torch.optim.AdamW, stochastic=True, stepsize="alias"),
        {"weight_decay": 0.1, "seed": 5},
    ),
    # max_grad_norm below the gradients' norm: the norm is summed over the shards
    "clip_sign_adamw": (
        lambda: signify.signify(torch.optim.AdamW, max_grad_norm=0.05),
        {"lr": 1e-2, "weight_decay": 0.1},
    ),
    "clip_alias_sgd": (
        lambda: signify.signify(torch.optim.SGD, stepsize="alias", max_grad_norm=0.05),
        {"momentum": 0.9},
    ),
}


def build(name: str, params: Any) -> Any:
    make, kw = CHAINS[name]
    return make()(params, **kw)


# ------------------------------------------------------------------------------ scenarios
def run_ddp(rank: int) -> dict[str, Any]:
    """A signified optimizer on a DDP model (gradients averaged by DDP), a NaN on one rank."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(net())
    opt = build("stochastic_alias_adamw", model.parameters())
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        loss = loss_of(model, rank, step)
        if step == BAD_STEP and rank == 1:
            loss = loss * float("nan")  # DDP averages it into every rank's gradient
        loss.backward()
        opt.step()
    return {
        "params": [p.detach().clone() for p in model.module.parameters()],
        "skipped": opt.skipped_steps,
    }


def run_ddp_flat(rank: int) -> dict[str, Any]:
    """flatten=True under DDP, with its gradient buckets copied into .grad (the default) and
    as views of them (``gradient_as_bucket_view=True``: signify copies them into its buffer
    every step), torch's default ``zero_grad()``; a NaN on one rank."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for view in (False, True):
        model = DDP(net(), gradient_as_bucket_view=view)
        make, kw = CHAINS["sign_adamw"]
        opt = make()(model.parameters(), flatten=True, **kw)
        for step in range(1, STEPS + 1):
            opt.zero_grad()
            loss = loss_of(model, rank, step)
            if step == BAD_STEP and rank == 1:
                loss = loss * float("nan")
            loss.backward()
            opt.step()
        out[view] = [p.detach().clone() for p in model.module.parameters()]
        out[f"flat_{view}"] = bool(opt._executor._plan.flats)
    return out


def _fsdp_net(mesh: Any, seed: int = 0) -> Net:
    from torch.distributed.fsdp import fully_shard

    model = net(seed)
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _train_fsdp(model: Net, opt: Any, rank: int, steps: range, bad: bool = True) -> None:
    for step in steps:
        opt.zero_grad()
        loss_of(model, rank, step).backward()
        if bad and step == BAD_STEP and rank == 1:
            # a NaN in this rank's shard only: every rank must skip the step
            model.layers[1].weight.grad._local_tensor.view(-1)[0] = float("nan")
        opt.step()


def run_fsdp(rank: int, mesh: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in CHAINS:
        model = _fsdp_net(mesh)
        opt = build(name, model.parameters())
        _train_fsdp(model, opt, rank, range(1, STEPS + 1))
        out[name] = {
            "params": [p.full_tensor().detach().clone() for p in model.parameters()],
            "local": [p._local_tensor.detach().clone() for p in model.parameters()],
            "skipped": opt.skipped_steps,
        }
    return out


def run_fsdp_resume(rank: int, mesh: Any) -> dict[str, Any]:
    """Stop after step 2, save model and optimizer state, load into a fresh FSDP model and
    optimizer, continue: the local shards equal those of an uninterrupted run."""
    name = "stochastic_alias_adamw"
    model = _fsdp_net(mesh)
    opt = build(name, model.parameters())
    _train_fsdp(model, opt, rank, range(1, STEPS + 1))
    straight = [p._local_tensor.detach().clone() for p in model.parameters()]

    model = _fsdp_net(mesh)
    opt = build(name, model.parameters())
    _train_fsdp(model, opt, rank, range(1, 3))
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
    fresh = _fsdp_net(mesh, seed=99)
    fresh.load_state_dict(saved["model"])
    opt2 = build(name, fresh.parameters())
    opt2.load_state_dict(saved["opt"])
    _train_fsdp(fresh, opt2, rank, range(3, STEPS + 1))
    resumed = [p._local_tensor.detach().clone() for p in fresh.parameters()]
    kinds = sorted({type(v).__name__ for st in saved["opt"]["state"].values() for v in st.values()})
    return {"straight": straight, "resumed": resumed, "state_types": kinds}


def run_fsdp_noise(rank: int, mesh: Any) -> dict[str, Any]:
    """One (2, 64) weight, one row per rank, identical gradients on both rows: the
    stochastic signs of the two shards must still differ."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    layer = nn.Linear(64, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(64).expand(2, 64))
    fully_shard(layer, mesh=mesh)
    opt = signify.signify(torch.optim.Adam, stochastic=True)(layer.parameters(), lr=0.1, seed=0)
    w = layer.weight
    moves = []
    for step in range(3):
        layer(torch.randn(1, 64)).sum().backward()  # runs FSDP's hooks; then overwritten
        gen = torch.Generator().manual_seed(step)
        w.grad._local_tensor.copy_(torch.randn(64, generator=gen).view(1, 64))
        before = w._local_tensor.detach().clone()
        opt.step()
        opt.zero_grad()
        moves.append((w._local_tensor.detach() - before).clone())
    return {"moves": moves}


def run_hsdp_replicas(rank: int) -> dict[str, Any]:
    """HSDP with 2 replicas of 1 shard: replicas draw the same noise and stay identical."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("replicate", "shard"))
    model = _fsdp_net(mesh)
    opt = build("stochastic_alias_adamw", model.parameters())
    _train_fsdp(model, opt, rank, range(1, STEPS + 1), bad=False)
    return {"local": [p._local_tensor.detach().clone() for p in model.parameters()]}


def run_refusals(mesh: Any) -> dict[str, str]:
    """Stacks that cannot run on shards raise a clear error at construction."""
    from signify.transforms import Blocks

    cases = {
        "blocks": lambda m: signify.signify(torch.optim.SGD, blocks=Blocks("cyclic"))(
            m.named_parameters(), lr=0.1
        ),
        "vote": lambda m: signify.signify(torch.optim.SGD, vote="majority")(m.parameters(), lr=0.1),
        "traced": lambda m: signify.signify(torch.optim.Adadelta)(m.parameters()),
        "alias_mean": lambda m: signify.signify(torch.optim.SGD, stepsize=Alias(reduce="mean"))(
            m.parameters()
        ),
        "mixed": lambda m: signify.signify(torch.optim.SGD)(
            [*m.parameters(), nn.Parameter(torch.randn(3))], lr=0.1
        ),
    }
    out = {}
    for name, make in cases.items():
        try:
            make(_fsdp_net(mesh))
            out[name] = "no error"
        except ValueError as e:
            out[name] = f"ValueError: {e}"
    return out


def run_vote_blocks_nonfinite(rank: int) -> dict[str, Any]:
    """vote + blocks + stochastic sign, a NaN on rank 1: rank 1 abstains and skips its own
    state update, the group step happens, both schedules advance together."""
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))
    torch.manual_seed(0)
    model = nn.ModuleDict({"layers": model})
    opt = signify.signify(torch.optim.SGD, stochastic=True, vote="majority", blocks="cyclic")(
        model.named_parameters(), lr=0.05, momentum=0.9, seed=1
    )
    blocks = next(t for t in opt.chain if type(t).__name__ == "Blocks")
    active = []
    for step in range(1, STEPS + 2):
        opt.zero_grad()
        x, y = batch(rank, step)
        loss = ((model["layers"](x) - y) ** 2).mean()
        if step == BAD_STEP and rank == 1:
            loss = loss * float("nan")
        loss.backward()
        opt.step()
        active.append(blocks.active)
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "active": active,
        "skipped": opt.skipped_steps,
    }


def worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    result: dict[str, Any] = {}
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,))
        result["ddp"] = run_ddp(rank)
        result["ddp_flat"] = run_ddp_flat(rank)
        result["fsdp"] = run_fsdp(rank, mesh)
        result["fsdp_resume"] = run_fsdp_resume(rank, mesh)
        result["fsdp_noise"] = run_fsdp_noise(rank, mesh)
        result["hsdp"] = run_hsdp_replicas(rank)
        result["refusals"] = run_refusals(mesh)
        result["vote_blocks"] = run_vote_blocks_nonfinite(rank)
        dist.barrier()
    except Exception:
        result["error"] = traceback.format_exc()
        raise
    finally:
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
        dist.destroy_process_group()
    leave()  # only after success: an exception above ends the rank with an error


# ------------------------------------------------------------------------------ reference
def reference(name: str, world: int = 2, nan_at: int | None = BAD_STEP) -> list[torch.Tensor]:
    """One process, no wrapper: the gradient of each step is the mean of the ranks'
    gradients (what DDP's all-reduce and FSDP's reduce-scatter compute); the step at
    ``nan_at`` holds a NaN."""
    model = net()
    opt = build(name, model.parameters())
    for step in range(1, STEPS + 1):
        grads = []
        for r in range(world):
            model.zero_grad()
            loss_of(model, r, step).backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for i, p in enumerate(model.parameters()):
            p.grad = sum(g[i] / world for g in grads)
        if step == nan_at:
            model.layers[1].weight.grad.view(-1)[0] = float("nan")
        opt.step()
    return [p.detach().clone() for p in model.parameters()]
