"""torch.optim.RMSprop (Tieleman & Hinton 2012; centered form: Graves 2013).

torch's arithmetic, exactly::

    g      <- g (+ wd * x)                                   # L2, the base's only form
    s      <- alpha * s + (1 - alpha) * g^2                  # square_avg
    c      <- alpha * c + (1 - alpha) * g                    # grad_avg (centered only)
    avg     = sqrt(s - c^2) + eps   (centered)   |   sqrt(s) + eps
    momentum = 0:   x <- x - lr * g / avg          a = g,   sigma = avg
    momentum > 0:   b <- mu * b + g / avg           a = b,   no denominator
                    x <- x - lr * b

With momentum the direction is the buffer ``b``, a sum of ``g / avg`` over past steps with no
single denominator: ``scale`` is None and a stochastic sign takes StoSignSGD's running max
``G = max(beta G, |b|)`` (`signify.transforms.RunningMaxScale`). ``square_avg`` (and
``grad_avg``) stay live in that case under every sign, since ``b`` accumulates ``g / avg``.

Which of the two forms the chain is built for is decided by the constructor's ``momentum``
(a param group may override it later):

* constructor ``momentum > 0``: the chain has the running-max scale; a group with
  ``momentum = 0`` then hands the whole step ``a = g / avg`` (no denominator) to it;
* constructor ``momentum = 0``: the chain has no running-max scale; a group with
  ``momentum > 0`` under a sign that needs a scale (stochastic, expected) raises ValueError at
  its first step. With ``sign=False`` or the deterministic sign, any mix works.

Dead state under the deterministic sign: ``sign(g / avg) = sign(g)``, so with ``momentum = 0``
neither ``square_avg`` nor ``grad_avg`` is allocated; with ``momentum > 0`` both are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..transforms.base import State, StepContext, Update, up
from .base import Adapter, lerp, stream

if TYPE_CHECKING:
    from ..optimizer import SignifiedOptimizer

_S, _C, _BUF = stream("square_avg"), stream("grad_avg"), stream("momentum_buffer")


def _positive(value: Any) -> bool:
    return float(value) > 0 if value is not None else False


class RMSpropAdapter(Adapter):
    name = "rmsprop"
    bases = (torch.optim.RMSprop,)

    def __init__(self, base: type[torch.optim.Optimizer]) -> None:
        super().__init__(base)
        #: a later transform reads ``scale`` (possibly optionally, as NoSign does)
        self.scale_read = True
        #: a later transform requires ``scale`` (a stochastic or expected sign)
        self.scale_required = True
        #: a later transform writes ``scale`` (the running max added for momentum)
        self.rescaled = False

    def validate(self, hyper: Mapping[str, Any]) -> None:
        super().validate(hyper)
        # The denominator exists only without momentum (see the module docstring).
        self.has_scale = not _positive(hyper.get("momentum", 0))  # type: ignore[misc]

    def configure(self, needed: frozenset[str]) -> None:
        super().configure(needed)
        self.scale_read = "scale" in needed

    def bind(self, opt: SignifiedOptimizer) -> None:
        later = [t for t in opt.chain if t is not self]
        self.rescaled = any("scale" in t.writes for t in later)
        self.scale_required = any(
            "scale" in t.reads - getattr(t, "optional_reads", frozenset()) for t in later
        )

    def _uses_avg(self, momentum: bool) -> bool:
        return momentum or self.rescaled or self.scale_read

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        momentum = _positive(group.get("momentum", 0))
        if momentum and self.scale_required and not self.rescaled:
            raise ValueError(
                "RMSprop: a param group with momentum > 0 has no denominator, and this chain's "
                "sign needs one; signify adds the running-max scale only when the constructor's "
                "momentum is > 0 (construct with momentum > 0, then set momentum=0 in groups "
                "that need it)"
            )
        state: State = {"step": [self.step_tensor(p) for p in params]}
        if self._uses_avg(momentum):
            state["square_avg"] = [self.zeros(p) for p in params]
            if group.get("centered", False):
                state["grad_avg"] = [self.zeros(p) for p in params]
        if momentum:
            state["momentum_buffer"] = [self.zeros(p) for p in params]
        return state

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        momentum, centered = ctx.flag("momentum"), ctx.flag("centered")
        alpha, eps = ctx.hyper["alpha"], ctx.hyper["eps"]
        uses_avg = self._uses_avg(momentum)
        with_scale = not momentum and not self.rescaled and self.scale_read
        num, scale = [], []
        for i in range(len(u.params)):
            g = self.gradient(u, i, ctx)
            if not uses_avg:
                num.append(g)
                continue
            s = state["square_avg"][i]
            s_new = up(s) * alpha + (1 - alpha) * g * g
            ctx.write(i, s, s_new, _S)
            if centered:
                c = state["grad_avg"][i]
                c_new = lerp(up(c), g, 1 - alpha)
                ctx.write(i, c, c_new, _C)
                avg = (s_new - c_new * c_new).sqrt() + eps
            else:
                avg = s_new.sqrt() + eps
            if momentum:
                b = state["momentum_buffer"][i]
                b_new = up(b) * ctx.hyper["momentum"] + g / avg
                ctx.write(i, b, b_new, _BUF)
                num.append(b_new)
            elif with_scale:
                num.append(g)
                scale.append(avg)
            else:  # the running max normalises the whole step
                num.append(g / avg)
        u.num = num
        u.scale = scale if with_scale else None
        return u, state

    def extra_repr(self) -> str:
        if not self.has_scale:
            return f"{self.base.__name__}: a = momentum buffer (no denominator)"
        dead = "" if self.scale_read else ", denominator unused"
        return f"{self.base.__name__}: a/sigma{dead}"
