"""torch.optim.SGD: ``x <- x - lr * d`` with ``d`` the (heavy-ball or Nesterov) momentum.

SGD has no denominator, so ``a = d`` and ``scale`` is None: a stochastic sign takes its scale
from StoSignSGD's running max (`signify.transforms.RunningMaxScale`). With
``dampening = momentum`` the momentum is the EMA ``m = beta m + (1 - beta) g`` (``m_1 = g``),
and ``signify(SGD, stochastic=True)`` is StoSignSGD (arXiv 2604.15416, Alg. 3).

torch's SGD keeps no step counter; the adapter keeps one (``step``) only to know the first
step, where torch sets the buffer to the gradient itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..transforms.base import State, StepContext, Update, up
from .base import Adapter, stream

_BUF = stream("momentum_buffer")


class SGDAdapter(Adapter):
    name = "sgd"
    bases = (torch.optim.SGD,)
    has_scale = False

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        state: State = {"step": [self.step_tensor(p) for p in params]}
        if group.get("momentum", 0) != 0:
            state["momentum_buffer"] = [self.zeros(p) for p in params]
        return state

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        nesterov = ctx.flag("nesterov")
        momentum = ctx.flag("momentum")
        num = []
        for i in range(len(u.params)):
            g = self.gradient(u, i, ctx)
            if momentum:
                mu, damp = ctx.hyper["momentum"], ctx.hyper["dampening"]
                buf = state["momentum_buffer"][i]
                first = state["step"][i] == 1
                new = torch.where(first, g, mu * up(buf) + (1 - damp) * g)
                ctx.write(i, buf, new, _BUF)
                g = g + mu * new if nesterov else new
            num.append(g)
        u.num, u.scale = num, None
        return u, state

    def migrate(self, state: dict[str, Any], param: Tensor) -> dict[str, Any]:
        if "step" not in state:
            # A torch.optim.SGD checkpoint: a stored buffer means the first step is past.
            started = 1.0 if state.get("momentum_buffer") is not None else 0.0
            state["step"] = torch.tensor(started, dtype=torch.float32, device=param.device)
        if state.get("momentum_buffer", 0) is None:
            del state["momentum_buffer"]
        return state
