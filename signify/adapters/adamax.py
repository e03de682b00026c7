"""torch.optim.Adamax (Kingma & Ba 2015, section 7.1), the base of StoSignSGD's Alg. 9.

torch's arithmetic, exactly::

    g      <- g (+ wd * x)                       # L2, the base's only weight-decay form
    m      <- beta1 * m + (1 - beta1) * g        # exp_avg
    u      <- max(beta2 * u, |g| + eps)          # exp_inf (eps inside the max, as torch)
    x      <- x - lr * m / (1 - beta1^t) / u

so ``a = m / (1 - beta1^t)`` and ``sigma = u``. ``|a| <= sigma`` holds exactly when
``beta2 = 1`` (algorithms.md 2.4); for ``beta1 < beta2 < 1`` ``|a|`` can exceed ``sigma`` by
at most ``(1 - beta1) / ((1 - beta1 / beta2)(1 - beta1^t))``, and the stochastic sign clips
there (``E = clip(a / sigma, -1, 1)``).

Under the deterministic sign ``sign(a) = sign(m)``: ``exp_inf`` only feeds the denominator
and is not allocated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..transforms.base import State, StepContext, Update, once, up
from .base import Adapter, lerp, stream

_M, _U = stream("exp_avg"), stream("exp_inf")


class AdamaxAdapter(Adapter):
    name = "adamax"
    bases = (torch.optim.Adamax,)

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        state: State = {
            "step": [self.step_tensor(p) for p in params],
            "exp_avg": [self.zeros(p) for p in params],
        }
        if self.need_scale:
            state["exp_inf"] = [self.zeros(p) for p in params]
        return state

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        beta1, beta2 = ctx.hyper["betas"][0], ctx.hyper["betas"][1]
        eps = ctx.hyper["eps"]
        num, scale = [], []
        bc1 = once([1 - beta1**s for s in state["step"]])  # once per pass, not per element
        for i in range(len(u.params)):
            g = self.gradient(u, i, ctx)
            m = state["exp_avg"][i]
            m_new = lerp(up(m), g, 1 - beta1)
            ctx.write(i, m, m_new, _M)
            num.append(m_new / bc1[i])
            if self.need_scale:
                inf = state["exp_inf"][i]
                inf_new = torch.maximum(up(inf) * beta2, g.abs() + eps)
                ctx.write(i, inf, inf_new, _U)
                scale.append(inf_new)
        u.num = num
        u.scale = scale if self.need_scale else None
        return u, state
