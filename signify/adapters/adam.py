"""torch.optim.Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019).

``a = m / (1 - beta1^t)``, ``sigma = sqrt(v) / sqrt(1 - beta2^t) + eps`` (``v`` replaced by its
running max under amsgrad), exactly torch's arithmetic. Weight decay keeps the base's form:
L2 added to the gradient for Adam (unless ``decoupled_weight_decay=True``), decoupled for
AdamW. Under the deterministic sign ``sign(a) = sign(m)``: ``exp_avg_sq`` and
``max_exp_avg_sq`` are not allocated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..transforms.base import State, StepContext, Update, once, up
from .base import Adapter, lerp, stream

_M, _V, _VMAX = stream("exp_avg"), stream("exp_avg_sq"), stream("max_exp_avg_sq")


class AdamAdapter(Adapter):
    name = "adam"
    bases = (torch.optim.Adam, torch.optim.AdamW)

    def decoupled(self, ctx_or_group: StepContext | Mapping[str, Any]) -> bool:
        if issubclass(self.base, torch.optim.AdamW):
            return True
        if isinstance(ctx_or_group, StepContext):
            return ctx_or_group.flag("decoupled_weight_decay")
        return bool(ctx_or_group.get("decoupled_weight_decay", False))

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        state: State = {
            "step": [self.step_tensor(p) for p in params],
            "exp_avg": [self.zeros(p) for p in params],
        }
        if self.need_scale:
            state["exp_avg_sq"] = [self.zeros(p) for p in params]
            if group.get("amsgrad", False):
                state["max_exp_avg_sq"] = [self.zeros(p) for p in params]
        return state

    def begin(self, u: Update, state: State, ctx: StepContext) -> Update:
        return self.decoupled_decay(u, ctx, self.decoupled(ctx))

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        beta1, beta2 = ctx.hyper["betas"][0], ctx.hyper["betas"][1]
        eps = ctx.hyper["eps"]
        l2 = not self.decoupled(ctx)
        amsgrad = ctx.flag("amsgrad")
        num, scale = [], []
        n, steps = len(u.params), state["step"]
        bc = [1 - beta1**s for s in steps]
        if self.need_scale:
            bc += [(1 - beta2**s).sqrt() for s in steps]
        bc = once(bc)  # computed once per pass, not per element
        bc1, bc2 = bc[:n], bc[n:]
        for i in range(n):
            g = self.gradient(u, i, ctx, l2=l2)
            m = state["exp_avg"][i]
            m_new = lerp(up(m), g, 1 - beta1)
            ctx.write(i, m, m_new, _M)
            num.append(m_new / bc1[i])
            if self.need_scale:
                v = state["exp_avg_sq"][i]
                v_new = up(v) * beta2 + (1 - beta2) * g * g
                ctx.write(i, v, v_new, _V)
                if amsgrad:
                    vmax = state["max_exp_avg_sq"][i]
                    v_new = torch.maximum(up(vmax), v_new)
                    ctx.write(i, vmax, v_new, _VMAX)
                scale.append(v_new.sqrt() / bc2[i] + eps)
        u.num = num
        u.scale = scale if self.need_scale else None
        return u, state
