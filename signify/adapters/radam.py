"""torch.optim.RAdam (Liu et al. 2020, "On the Variance of the Adaptive Learning Rate").

torch's arithmetic, exactly::

    g      <- g (+ wd * x)               # L2; or x <- (1 - lr wd) x if decoupled_weight_decay
    m      <- beta1 * m + (1 - beta1) * g;     m_hat = m / (1 - beta1^t)
    v      <- beta2 * v + (1 - beta2) * g^2
    rho_inf = 2 / (1 - beta2) - 1;   rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
    rho_t > 5:   r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                 x <- x - lr * m_hat * r_t * sqrt(1 - beta2^t) / (sqrt(v) + eps)
    rho_t <= 5:  x <- x - lr * m_hat                            (un-rectified: SGD-momentum)

so ``a = m_hat`` and, in the rectified phase,
``sigma = (sqrt(v) + eps) / (sqrt(1 - beta2^t) r_t)``. The step scalars are computed in
float64 on the device (torch computes them in Python floats): ``rho_t`` is a difference of
two numbers near ``2 / (1 - beta2)`` and loses three digits in float32.

Un-rectified phase (``rho_t <= 5``, the first 5 steps for 0.9 <= ``beta2`` <= 0.9999) [R]: the base
step ``lr * m_hat`` has no denominator. With ``sign=False`` (a `NoSign` in the chain) the
adapter emits ``sigma = 1``, which is torch's step exactly. Under a sign, ``sigma = 1`` would
compare ``m_hat`` (gradient units) with a noise of width 1, i.e. a nearly pure-noise step;
signify emits ``sigma = |m_hat|`` instead, so the stochastic sign ``sign(a + |a| n)`` and
``ExpectedSign`` (``clip(a / |a|) = sign(a)``) both take the deterministic sign step there.
This keeps ``|a| <= sigma`` (the conversion stays unbiased for its own ``a / sigma``) and
matches the deterministic first step of StoSignSGD's running max (``|a_1| = G_1``). A
``sigma = 0`` would instead make ``ExpectedSign`` stop (``0 / 0 := 0``) while the stochastic
sign moved.

Under the deterministic sign ``sign(a) = sign(m)`` in both phases: ``exp_avg_sq`` is not
allocated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..transforms.base import State, StepContext, Update, once, up
from ..transforms.sign import NoSign
from .base import Adapter, lerp, stream

if TYPE_CHECKING:
    from ..optimizer import SignifiedOptimizer

_M, _V = stream("exp_avg"), stream("exp_avg_sq")


class RAdamAdapter(Adapter):
    name = "radam"
    bases = (torch.optim.RAdam,)

    def __init__(self, base: type[torch.optim.Optimizer]) -> None:
        super().__init__(base)
        #: the un-rectified phase emits sigma = 1 (the base exactly) instead of |a|
        self.unit_scale = False

    def bind(self, opt: SignifiedOptimizer) -> None:
        self.unit_scale = any(isinstance(t, NoSign) for t in opt.chain)

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        state: State = {
            "step": [self.step_tensor(p) for p in params],
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
        rho_inf = 2.0 / (1.0 - b2) - 1.0
        l2 = not ctx.flag("decoupled_weight_decay")
        num, scale = [], []
        n = len(u.params)
        # per tensor: the bias correction (and rho_t, the rectification factor), computed
        # once per pass rather than in float64 for every element
        coef: list[Tensor] = []
        for i in range(n):
            t = state["step"][i].double()
            coef.append((1.0 - b1**t).float())
            if self.need_scale:
                bc2 = 1.0 - b2**t
                rho_t = rho_inf - 2.0 * t * b2**t / bc2
                rect_sq = (rho_t - 4) * (rho_t - 2) * rho_inf
                rect_sq = rect_sq / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                factor = torch.where(rho_t > 5.0, bc2.sqrt() * rect_sq.clamp_min(0).sqrt(), 1.0)
                coef += [rho_t, factor.float()]
        coef = once(coef)
        per = 3 if self.need_scale else 1
        for i in range(n):
            g = self.gradient(u, i, ctx, l2=l2)
            m = state["exp_avg"][i]
            m_new = lerp(up(m), g, 1 - beta1)
            ctx.write(i, m, m_new, _M)
            a = m_new / coef[per * i]
            num.append(a)
            if not self.need_scale:
                continue
            v = state["exp_avg_sq"][i]
            v_new = up(v) * beta2 + (1 - beta2) * g * g
            ctx.write(i, v, v_new, _V)
            rectified = coef[per * i + 1] > 5.0
            sigma = (v_new.sqrt() + ctx.hyper["eps"]) / coef[per * i + 2]
            plain = torch.ones_like(a) if self.unit_scale else a.abs()
            scale.append(torch.where(rectified, sigma, plain))
        u.num = num
        u.scale = scale if self.need_scale else None
        return u, state
