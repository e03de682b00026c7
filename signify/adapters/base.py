"""Adapters: a base optimizer's update written as ``x <- x - lr * a / sigma``.

An adapter is the first transform of every chain. It owns the base's state under the base's
own key names (``exp_avg``, ``momentum_buffer``, ``step``...), so a torch.optim checkpoint
loads into the signified optimizer unchanged, and it applies everything of the base except
the final parameter write: moments, bias corrections, amsgrad, nesterov, ``maximize``, L2
weight decay (added to the gradient), and decoupled weight decay (handed to the write as
``decay``). It outputs ``num`` (a), ``scale`` (sigma, or ``None`` when the base has no
denominator) and optionally ``step_scale`` (a schedule the base applies to its own step).

``need_scale`` is set when the chain is built: under the deterministic sign the denominator
does not change the update, and the adapter does not allocate the state that only feeds it
(Adam's ``exp_avg_sq``, for instance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from .. import rng
from ..transforms.base import StepContext, Transform, Update, up

#: Keyword arguments of torch.optim classes that select an implementation. signify has its
#: own (eager or compiled), so these are accepted and ignored.
IMPLEMENTATION_OPTIONS = ("foreach", "fused", "capturable")


def check_supported(hyper: Mapping[str, Any]) -> None:
    """Settings no adapter honours, in the constructor or in a param group."""
    if hyper.get("differentiable", False):
        raise ValueError("differentiable=True is not supported by signify")


class Adapter(Transform):
    """Base class of adapters. ``bases`` lists the optimizer classes it implements."""

    bases: ClassVar[tuple[type[torch.optim.Optimizer], ...]] = ()
    writes = frozenset({"num", "scale", "decay", "step_scale"})
    counters: tuple[str, ...] = ("step",)
    #: False for bases whose update has no denominator (SGD): ``scale`` stays None.
    has_scale: ClassVar[bool] = True

    def __init__(self, base: type[torch.optim.Optimizer]) -> None:
        self.base = base
        self.need_scale = True

    @property
    def state_prefix(self) -> str:
        return ""

    def configure(self, needed: frozenset[str]) -> None:
        self.need_scale = self.has_scale and "scale" in needed

    def exported_state(self, p: Tensor) -> dict[str, Any]:
        """Per-parameter state the adapter keeps outside ``opt.state`` that checkpoints
        should hold (the run-and-read base's own); `migrate` takes it back on load."""
        return {}

    def validate(self, hyper: Mapping[str, Any]) -> None:
        """Reject settings signify cannot honour (the base has already checked its own)."""
        check_supported(hyper)

    # helpers for subclasses -------------------------------------------------------------
    @staticmethod
    def step_tensor(p: Tensor) -> Tensor:
        return torch.zeros((), dtype=torch.float32, device=p.device)

    @staticmethod
    def gradient(u: Update, i: int, ctx: StepContext, l2: bool = True) -> Tensor:
        """The base's effective gradient: negated under ``maximize``, plus ``wd * x`` when the
        base adds L2 weight decay (``l2`` and a non-zero ``weight_decay``)."""
        g = up(u.grads[i])
        if ctx.flag("maximize"):
            g = -g
        if l2 and ctx.flag("weight_decay"):
            g = g + ctx.hyper["weight_decay"] * up(u.params[i])
        return g

    @staticmethod
    def decoupled_decay(u: Update, ctx: StepContext, decoupled: bool) -> Update:
        """Hand the base's weight decay to the parameter write when the base decouples it
        (AdamW's form, ``x <- x - lr * wd * x`` in the same step)."""
        if decoupled and ctx.flag("weight_decay"):
            u.decay = ctx.hyper["weight_decay"]
        return u

    def migrate(self, state: dict[str, Any], param: Tensor) -> dict[str, Any]:
        """Fill keys a torch.optim checkpoint lacks (called on load)."""
        return state

    def extra_repr(self) -> str:
        form = "a/sigma" if self.has_scale else "a (no denominator)"
        dead = "" if self.need_scale or not self.has_scale else ", denominator unused"
        return f"{self.base.__name__}: {form}{dead}"


def lerp(a: Tensor, b: Tensor, weight: Any) -> Tensor:
    """``torch.lerp`` in the wider of the two dtypes (it refuses mixed ones: a bf16 or fp64
    moment of an fp64 or fp32 parameter under ``state_dtype=``)."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    return torch.lerp(a.to(dtype), b.to(dtype), weight)


def stream(key: str) -> int:
    """Random-stream constant for rounding writes into the state buffer ``key``."""
    return rng.stream_constant(key)
