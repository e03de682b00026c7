"""The gloo process group of a spawned test rank (tests/_*_worker*.py), and its exit."""

from __future__ import annotations

import datetime
import os
import socket
import sys

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port free now on 127.0.0.1, for a spawn's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def leave() -> None:
    """End a rank that succeeded (results saved, group destroyed) without Python's teardown.

    Once an optimizer has stepped in the process, gloo's worker threads outlive
    ``destroy_process_group`` (torch 2.13, CPU). One that drops its last reference to a
    finished collective while the interpreter shuts down takes the GIL, is cancelled, and
    aborts the rank with "terminate called without an active exception" (a core dump:
    ``ProcessGroupGloo::runLoop`` -> ``~AsyncAllgatherWork`` -> ``decref_pyobject`` ->
    ``take_gil`` -> ``pthread_exit``). Seen in 2 of 133 runs of examples/ddp_vote.py on a
    loaded 2-core machine and once in a full test run; a barrier before the teardown does
    not prevent it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
