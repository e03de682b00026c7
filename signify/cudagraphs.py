"""Replaying a compiled step as one CUDA graph.

A compiled step launches a few graphs per chunk; on a model of hundreds of tensors the host
work of those launches, not the GPU, sets the step time. When everything the step reads by
address stays in place (the plan, the gradients, the hyperparameter and optimizer-level
tensors), the whole step is captured once as a CUDA graph and replayed: a few dozen
microseconds of host time whatever the number of tensors. The executor decides whether a
step may be captured (`signify.executor.Executor.capturable`) and says what its addresses
are (the *signature*); this module decides when to capture and when to replay.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

#: steps whose gradients moved (nothing else changed, no replay in between) before the hint
MOVED_WARN = 8
#: a signature seen this many times in a row is captured
STREAK = 2
#: captures that were dropped before two replays paid them off, after which capture stops
MAX_WASTED = 3


class GraphReplay:
    """Captures a step once its signature has repeated, replays it while it repeats.

    The signature's first entry identifies the plan and its third onwards everything else;
    its second entry is the gradients' addresses, which a ``zero_grad(set_to_none=True)``
    moves every step: that case is told apart to warn the user once."""

    def __init__(self) -> None:
        self.graph: Any = None  # [signature, torch.cuda.CUDAGraph, ok tensor, replays]
        self.failed = False  # a capture raised: the chain holds something uncapturable
        self._last: Any = None
        self._streak = 0
        self._wasted = 0
        self._moved = 0
        self._warned_moved = False

    def forget(self) -> None:
        """Drop the captured graph (the plan or its tensors changed)."""
        self.graph = None

    def step(self, sig: tuple[Any, ...], run: Callable[[], Tensor | None]) -> Tensor | None:
        """Replay the graph of ``sig``, or capture it, or just ``run()`` the step; returns
        the step's ok flag (what ``run`` returns)."""
        graph = self.graph
        if graph is not None and graph[0] == sig:
            graph[1].replay()
            graph[3] += 1
            self._moved = 0  # the replay works: moves now and then are no cause to warn
            return graph[2]  # type: ignore[no-any-return]
        if graph is not None and graph[3] < 2:
            self._wasted += 1  # captured, then moved before it paid off
        self.graph = None
        last = self._last
        self._streak = self._streak + 1 if sig == last else 0
        if last is not None and sig != last and sig[0] == last[0] and sig[2:] == last[2:]:
            self._moved += 1  # only the gradients' addresses changed
            if self._moved == MOVED_WARN and not self._warned_moved:
                self._warned_moved = True
                warnings.warn(
                    "signify: the gradients move to new addresses every step (zero_grad with "
                    "set_to_none=True), so the compiled step cannot replay as a CUDA graph and "
                    "pays its host overhead; call opt.zero_grad(set_to_none=False) to keep "
                    "them in place (docs/performance.md)",
                    stacklevel=4,
                )
        self._last = sig
        if self._streak < STREAK or self._wasted >= MAX_WASTED:
            return run()
        cuda_graph = torch.cuda.CUDAGraph()
        try:
            # Synchronises once; records without running. thread_local: other threads'
            # CUDA work (a data loader's copies) does not invalidate the capture.
            with torch.cuda.graph(cuda_graph, capture_error_mode="thread_local"):
                ok = run()
        except RuntimeError as e:  # something in the chain cannot be captured: run plainly
            self.failed = True
            warnings.warn(
                f"signify: CUDA graph capture failed, stepping without ({e})", stacklevel=4
            )
            return run()
        cuda_graph.replay()
        self.graph = [sig, cuda_graph, ok, 0]
        return ok
