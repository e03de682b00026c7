"""A noise scale for bases whose update has no denominator.

StoSignSGD (arXiv 2604.15416, Alg. 3, as given by the zij canon page) tracks
``G_t = max(beta * G_{t-1}, |m_t|)`` per coordinate. Since ``|a| <= G`` always holds, the
stochastic sign ``sign(a + G n)`` is exactly unbiased for ``a / G``. ``beta = 1`` is the pure
running max of the theory (the default); ``beta < 1`` lets the scale forget large early
values. The first step is deterministic (``|a_1| = G_1``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import rng
from .base import State, StepContext, Transform, Update, up

_G = rng.stream_constant("max_scale.G")


class RunningMaxScale(Transform):
    """``scale = G = max(beta * G, |a|)``, elementwise; group hyperparameter ``scale_beta``."""

    name = "max_scale"
    reads = frozenset({"num"})
    writes = frozenset({"scale"})

    def __init__(self, beta: float = 1.0) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"scale_beta must be a float in (0, 1], got {beta!r}")
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"scale_beta must be in (0, 1], got {beta}")
        self.beta = float(beta)

    @property
    def hyper_defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return {"scale_beta": self.beta}

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        return {"G": [self.zeros(p) for p in params]}

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        if u.num is None:
            raise ValueError("RunningMaxScale needs `num`, which no earlier transform set")
        beta = ctx.hyper["scale_beta"]
        out = []
        for i, (a, g) in enumerate(zip(u.num, state["G"])):
            new = torch.maximum(beta * up(g), up(a).abs())
            ctx.write(i, g, new, stream=_G)
            out.append(new)
        u.scale = out
        return u, state

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
