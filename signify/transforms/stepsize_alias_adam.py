"""The step-size estimate of the ALIAS Adam version (Medyakov et al., arXiv 2506.03725).

The paper describes it as "sign descent with Adam-style moments and weight decay", with base
step 1e-3 and betas (0.9, 0.999). The authors released two implementations that disagree
(algorithms.md 3.7b, an open ambiguity). signify follows the Swin one
(``vit/run_svrg_reb_swin.py::AdamLike``), a Prodigy-like distance estimate from the agreement
of consecutive gradient signs, per tensor::

    s_t = <g_t, sign(g_{t-1})>                     (0 on a tensor's first step)
    r_t = sqrt(beta) r_{t-1} + (1 - sqrt(beta)) d_{t-1} s_t      (r_0 = 0)
    d_t = max(d_{t-1}, r_t)                                      (d_0 given)
    x_{t+1} = x_t - d_t * lr * direction_t

Why this one: it uses the signed agreement ``<g, sign(g_prev)>`` of ALIAS option I, while the
LLaMA version's ``<|g|, |g_prev|>`` is never negative and, under the authors' gradient
clipping to norm 1, never exceeds 1, so its ``d`` can never leave its initial value.

What differs from the Swin code, and why:

* ALIAS only supplies the step size here: the direction is the chain's. With
  ``signify(torch.optim.Adam, stepsize="alias-adam")`` it is ``sign(m)`` (the paper's "sign
  descent with Adam-style moments"); with ``sign=False`` it is Adam's ``m_hat / (sqrt(v_hat) +
  eps)``. The Swin code feeds ``d * g`` into m and v (Prodigy's weighting); here the base's
  moments are torch's, unweighted. Under a constant ``d`` the two agree.
* Only the sign of ``g_{t-1}`` is used, so it is stored packed, 1 bit per parameter (the code
  keeps the full gradient).
* ``lr`` keeps the base's default (1e-3 for Adam, the paper's base step) and a scheduler
  multiplies the step, as the paper's cosine runs do; ``d_0`` defaults to 1.0 (the LLaMA
  code's initial ``d``), so the step starts at ``lr`` and only grows while consecutive
  gradients agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..sharding import local
from .base import State, StepContext, Update, up
from .stepsize import StepsizeOracle, check_number
from .stepsize_alias import _SCALAR, _check_direction, pack_signs, packed_size, unpack_signs


class AliasAdam(StepsizeOracle):
    """``lr * d`` with ``d`` the Swin ``AdamLike`` distance estimate (see the module doc).

    Args:
        beta: the EMA factor of ``r`` is ``sqrt(beta)`` (the code uses Adam's beta2, 0.999).
        d_0: initial ``d`` (> 0).
        scope: ``"tensor"`` (default, as coded), ``"group"`` or ``"global"``.
        reduce: across ranks, as for `Alias`.

    State: ``alias_adam.bits`` (packed ``sign(g_prev)``), ``alias_adam.n``, the last step
    ``alias_adam.s_prev``; per slot ``r``,
    ``d`` and ``gamma`` (= ``d``) in shared state.
    """

    name = "alias_adam"
    lr_default = None  # the base's own default lr (the paper's base step)
    counters = ("n",)
    has_prepare = True
    sum_rows = ("dot",)

    def supports_flat(self) -> bool:
        return False  # packed bits per tensor: no per-element buffer to re-home

    def __init__(
        self,
        beta: float = 0.999,
        d_0: float = 1.0,
        scope: str = "tensor",
        reduce: str = "auto",
        process_group: Any = None,
    ) -> None:
        super().__init__(scope, reduce, process_group)
        self.beta = check_number("beta", beta, low=0.0)
        if not self.beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {self.beta}")
        self.d_0 = check_number("d_0", d_0, low=0.0, strict=True)

    def slot_init(self) -> dict[str, float]:
        return {"gamma": self.d_0, "d": self.d_0, "r": 0.0}

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        return {
            "bits": [
                torch.zeros(packed_size(local(p).numel()), dtype=torch.uint8, device=p.device)
                for p in params
            ],
            "n": [torch.zeros((), dtype=torch.float32, device=p.device) for p in params],
            "s_prev": [torch.zeros((), dtype=torch.float32, device=p.device) for p in params],
        }

    def prepare(self, u: Update, state: State, ctx: StepContext) -> None:
        dots = []
        for i, g_raw in enumerate(u.grads):
            g = up(g_raw)
            dot = (g * unpack_signs(state["bits"][i], g.numel(), g.dtype)).sum()
            dots.append(torch.where(state["n"][i][0] > 0, dot, 0.0))
        self.accumulate(ctx, state, [dots], [])

    def compute(self, s: dict[str, Tensor], ok: Tensor | None) -> None:
        b = math.sqrt(self.beta)
        r = b * s["r"] + (1.0 - b) * s["d"] * s["acc_sum"][0]
        # an overflowed agreement (finite gradients near 3.4e38) keeps the last estimate
        r = torch.where(r.isfinite(), r, s["r"])
        d = torch.maximum(s["d"], r)
        for k, v in (("r", r), ("d", d), ("gamma", d)):
            s[k].copy_(v if ok is None else torch.where(ok, v, s[k]))

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        _check_direction(u, "AliasAdam")
        eff = self.scale_lr(u, self.gamma_of(ctx, state, len(u.params)))
        for i, g in enumerate(u.grads):
            self.write_own(ctx, i, state["bits"][i], pack_signs(g), _SCALAR)
        self.record_step(ctx, state, eff)
        return u, state

    def extra_repr(self) -> str:
        return f"beta={self.beta}, d_0={self.d_0}, scope={self.scope!r}"
