"""Turning the base's update ``a / sigma`` into a direction.

* `Sign`: ``sign(a)`` (signSGD, Bernstein et al. 2018). The denominator is irrelevant, so the
  base does not allocate it.
* `StochasticSign`: ``sign(a + sigma * n)``, ``n ~ U[-1, 1]`` per coordinate and step, the
  unbiased structural sign of StoSignSGD (arXiv 2604.15416, eq. 2 and Alg. 8/9):
  ``E[sign(a + sigma n)] = clip(a / sigma, -1, 1)``.
* `ExpectedSign`: ``clip(a / sigma, -1, 1)``, the in-expectation variant (IE-StoSignSGD,
  Alg. 10), which separates the effect of the noise from that of the preconditioning.
* `NoSign`: ``a / sigma``, the base optimizer exactly (``signify(..., sign=False)``).

``0 / 0`` is taken as 0 throughout (``sign(0) = 0``). ``a`` and ``sigma`` are read with
infinities clamped to the largest finite value (`_finite`): finite gradients large enough to
overflow a moment (``g * g`` past 3.4e38) then give a finite direction instead of
``inf - inf`` or ``inf / inf`` = NaN. A NaN ``a`` (a base's moment that overflowed to
``inf - inf``) gives the direction 0, as ``torch.sign(nan) = 0`` does for the signs: the
coordinate does not move, where the base itself would write NaN into the parameter.
"""

from __future__ import annotations

import torch

from .. import rng
from .base import State, StepContext, Transform, Update, up


def _need(u: Update, field: str, who: str) -> list[torch.Tensor]:
    value = getattr(u, field)
    if value is None:
        raise ValueError(f"{who} needs `{field}`, which no earlier transform of the chain set")
    return value


def _finite(t: torch.Tensor) -> torch.Tensor:
    """``t`` in the compute precision with +-inf clamped to the largest finite value (NaN
    stays NaN). A clamp: two operations per element, where ``nan_to_num`` lowers to six."""
    t = up(t)
    big = torch.finfo(t.dtype).max
    return t.clamp(-big, big)


class Sign(Transform):
    """``direction = sign(a)``."""

    name = "sign"
    reads = frozenset({"num"})
    writes = frozenset({"direction"})
    direction_values = "sign"

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        num = _need(u, "num", "Sign")
        u.direction = [torch.sign(up(a)) for a in num]
        return u, state


class StochasticSign(Transform):
    """``direction = sign(a + sigma * n)``, ``n ~ U[-1, 1]``: unbiased for ``a / sigma``
    wherever ``|a| <= sigma`` (clipped to ``sign(a)`` elsewhere)."""

    name = "stochastic_sign"
    reads = frozenset({"num", "scale"})
    writes = frozenset({"direction"})
    direction_values = "pm1"

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        num = _need(u, "num", "StochasticSign")
        scale = _need(u, "scale", "StochasticSign")
        u.direction = [
            torch.sign(_finite(a) + _finite(s) * ctx.uniform(i, a, rng.STREAM_SIGN, per_rank=True))
            for i, (a, s) in enumerate(zip(num, scale))
        ]
        return u, state


def _ratio(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    a, s = torch.nan_to_num(up(a)), torch.nan_to_num(up(s))  # NaN -> 0, inf -> max
    return torch.where(s != 0, a / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(a))


class ExpectedSign(Transform):
    """``direction = clip(a / sigma, -1, 1)``: the stochastic sign's mean, without noise."""

    name = "expected_sign"
    reads = frozenset({"num", "scale"})
    writes = frozenset({"direction"})

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        num = _need(u, "num", "ExpectedSign")
        scale = _need(u, "scale", "ExpectedSign")
        u.direction = [_ratio(a, s).clamp(-1.0, 1.0) for a, s in zip(num, scale)]
        return u, state


class NoSign(Transform):
    """``direction = a / sigma`` (or ``a`` when the base has no denominator): no conversion."""

    name = "no_sign"
    reads = frozenset({"num", "scale"})
    writes = frozenset({"direction"})
    #: the denominator is optional here: bases without one step along ``a``.
    optional_reads = frozenset({"scale"})

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        num = _need(u, "num", "NoSign")
        if u.scale is None:
            u.direction = [up(a) for a in num]
        else:
            u.direction = [up(a) / up(s) for a, s in zip(num, u.scale)]
        return u, state
