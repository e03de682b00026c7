"""Decoupled weight decay as a transform (Loshchilov & Hutter 2019).

The base optimizer's own weight decay is handled by its adapter in the base's form (L2 added
to the gradient for Adam and SGD, decoupled for AdamW). This transform adds a decoupled
decay to any chain, ``x <- x - lr * (direction + wd * x)``, the form used by Signum (MXNet's
``wd_lh``), StoSignSGD (Alg. 3) and ABSignSGD. Group hyperparameter: ``decoupled_wd``.
"""

from __future__ import annotations

from typing import Any

from .base import State, StepContext, Transform, Update


class DecoupledWeightDecay(Transform):
    """Sets ``decay`` so that the parameter write applies ``x <- x - lr * wd * x``."""

    name = "decoupled_wd"
    writes = frozenset({"decay"})

    def __init__(self, weight_decay: float = 0.0) -> None:
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
            raise TypeError(f"weight_decay must be a float >= 0, got {weight_decay!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.weight_decay = float(weight_decay)

    @property
    def hyper_defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return {"decoupled_wd": self.weight_decay}

    def begin(self, u: Update, state: State, ctx: StepContext) -> Update:
        if ctx.flag("decoupled_wd"):
            wd = ctx.hyper["decoupled_wd"]
            u.decay = wd if u.decay is None else u.decay + wd
        return u

    def extra_repr(self) -> str:
        return f"weight_decay={self.weight_decay}"
