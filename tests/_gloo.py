"""The gloo process group of a spawned test rank (tests/_*_worker*.py)."""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


def init_gloo(rank: int, world: int, port: int, timeout_s: int = 300) -> None:
    """One thread per rank (the ranks share the machine's cores). The timeout is generous:
    `make test` runs two pytest-xdist workers, so a rank may wait in a collective while its
    peers compile on cores that the other worker is also using."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
