"""torch.optim.Adagrad (Duchi, Hazan & Singer 2011).

torch's arithmetic, exactly::

    g    <- g (+ wd * x)                                    # L2, the base's only form
    s    <- s + g^2                                         # sum, starts at
                                                            # initial_accumulator_value
    x    <- x - lr / (1 + (t - 1) * lr_decay) * g / (sqrt(s) + eps)

so ``a = g``, ``sigma = sqrt(s) + eps`` (``|a| <= sigma`` always: the stochastic sign is
exactly unbiased), and ``lr_decay`` is a schedule of the base, not part of ``a / sigma``: it
is handed to the parameter write as ``step_scale = 1 / (1 + (t - 1) * lr_decay)``, so the sign
step is ``lr * step_scale`` too.

As in torch, ``sum`` starts at the *constructor's* ``initial_accumulator_value`` for every
param group (torch reads the group's value nowhere). Under the deterministic sign
``sign(a) = sign(g)``: ``sum`` is not allocated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..transforms.base import State, StepContext, Update, up
from .base import Adapter, stream

_SUM = stream("sum")


class AdagradAdapter(Adapter):
    name = "adagrad"
    bases = (torch.optim.Adagrad,)

    def __init__(self, base: type[torch.optim.Optimizer]) -> None:
        super().__init__(base)
        self.initial_accumulator_value = 0.0

    def validate(self, hyper: Mapping[str, Any]) -> None:
        super().validate(hyper)
        self.initial_accumulator_value = float(hyper.get("initial_accumulator_value", 0.0))

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        state: State = {"step": [self.step_tensor(p) for p in params]}
        if self.need_scale:
            state["sum"] = [
                torch.full_like(
                    p,
                    self.initial_accumulator_value,
                    dtype=self.state_dtype or p.dtype,
                    memory_format=torch.preserve_format,
                )
                for p in params
            ]
        return state

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        num, scale, step_scale = [], [], []
        for i in range(len(u.params)):
            g = self.gradient(u, i, ctx)
            num.append(g)
            if ctx.flag("lr_decay"):
                t = state["step"][i]
                step_scale.append(1 / (1 + (t - 1) * ctx.hyper["lr_decay"]))
            if self.need_scale:
                s = state["sum"][i]
                s_new = up(s) + g * g
                ctx.write(i, s, s_new, _SUM)
                scale.append(s_new.sqrt() + ctx.hyper["eps"])
        u.num = num
        u.scale = scale if self.need_scale else None
        if step_scale:
            u.step_scale = step_scale
        return u, state
