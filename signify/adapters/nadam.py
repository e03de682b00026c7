"""torch.optim.NAdam (Dozat 2016, with torch's momentum-decay schedule).

torch's arithmetic, exactly::

    g       <- g (+ wd * x)                  # L2; or x <- (1 - lr wd) x if decoupled_weight_decay
    mu_t     = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))
    P_t      = P_{t-1} * mu_t                # mu_product, P_0 = 1
    m       <- beta1 * m + (1 - beta1) * g   # exp_avg
    v       <- beta2 * v + (1 - beta2) * g^2 # exp_avg_sq
    x       <- x - lr * [ (1 - mu_t) / (1 - P_t) * g + mu_{t+1} / (1 - P_t mu_{t+1}) * m ]
                  / (sqrt(v / (1 - beta2^t)) + eps)

so ``a = (1 - mu_t) / (1 - P_t) * g + mu_{t+1} / (1 - P_t mu_{t+1}) * m`` (the Nesterov
look-ahead numerator) and ``sigma = sqrt(v / (1 - beta2^t)) + eps``. The per-step scalars
(``mu``, ``P``, the bias correction) are computed in float64 on the device, as torch computes
them in Python floats, and ``mu_product`` is stored in float32 as torch stores it.

Both coefficients of ``a`` are positive, so under the deterministic sign the denominator is
irrelevant: ``exp_avg_sq`` is not allocated (``step``, ``mu_product`` and ``exp_avg`` are).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..transforms.base import State, StepContext, Update, once, up
from .base import Adapter, lerp, stream

_M, _V, _MU = stream("exp_avg"), stream("exp_avg_sq"), stream("mu_product")


class NAdamAdapter(Adapter):
    name = "nadam"
    bases = (torch.optim.NAdam,)

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        state: State = {
            "step": [self.step_tensor(p) for p in params],
            "mu_product": [torch.ones((), dtype=torch.float32, device=p.device) for p in params],
            "exp_avg": [self.zeros(p) for p in params],
        }
        if self.need_scale:
            state["exp_avg_sq"] = [self.zeros(p) for p in params]
        return state

    def begin(self, u: Update, state: State, ctx: StepContext) -> Update:
        return self.decoupled_decay(u, ctx, ctx.flag("decoupled_weight_decay"))

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        beta1, beta2 = ctx.hyper["betas"][0], ctx.hyper["betas"][1]
        b1, b2 = beta1.double(), beta2.double()
        decay = ctx.hyper["momentum_decay"].double()
        l2 = not ctx.flag("decoupled_weight_decay")
        num, scale = [], []
        n = len(u.params)
        coef: list[Tensor] = []  # per tensor: c_grad, c_avg (and bc2): computed once per pass
        for i in range(n):
            t = state["step"][i].double()
            mu = b1 * (1.0 - 0.5 * 0.96 ** (t * decay))
            mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * decay))
            p = state["mu_product"][i]
            p_new = (p.double() * mu).float()
            ctx.write(i, p, p_new, _MU)
            p64 = p_new.double()
            coef.append(((1.0 - mu) / (1.0 - p64)).float())
            coef.append((mu_next / (1.0 - p64 * mu_next)).float())
            if self.need_scale:
                coef.append((1.0 - b2**t).float())
        coef = once(coef)
        per = 3 if self.need_scale else 2
        for i in range(n):
            g = self.gradient(u, i, ctx, l2=l2)
            c_grad, c_avg = coef[per * i], coef[per * i + 1]
            m = state["exp_avg"][i]
            m_new = lerp(up(m), g, 1 - beta1)
            ctx.write(i, m, m_new, _M)
            num.append(c_grad * g + c_avg * m_new)
            if self.need_scale:
                v = state["exp_avg_sq"][i]
                v_new = up(v) * beta2 + (1 - beta2) * g * g
                ctx.write(i, v, v_new, _V)
                scale.append((v_new / coef[per * i + 2]).sqrt() + ctx.hyper["eps"])
        u.num = num
        u.scale = scale if self.need_scale else None
        return u, state

    def migrate(self, state: dict[str, Any], param: Tensor) -> dict[str, Any]:
        # checkpoints of torch < 1.13 hold mu_product as a Python float
        mu = state.get("mu_product")
        if mu is not None and not isinstance(mu, Tensor):
            state["mu_product"] = torch.tensor(float(mu), dtype=torch.float32, device=param.device)
        elif isinstance(mu, Tensor):
            state["mu_product"] = mu.to(device=param.device, dtype=torch.float32)
        return state
