"""The parameter write, the last transform of every chain.

``x <- x - lr * step_scale * (direction + decay * x)``, the decay never taking a weight past 0
(``x <- -lr * step_scale * direction`` where ``lr * step_scale * decay > 1``)

computed in float32 and written back in the parameter's dtype. A sign step of size ``lr`` is
often below the resolution of a bfloat16 parameter (``lr = 1e-4`` on a weight of 0.05 is a
fifth of an ulp), so bfloat16 parameters are written with stochastic rounding, unbiased and
drawn from the optimizer's counter-based generator (`signify.rng`).
"""

from __future__ import annotations

import torch

from .. import rng
from .base import State, StepContext, Transform, Update, up


class ApplyUpdate(Transform):
    """Writes the parameters."""

    name = "apply"
    reads = frozenset({"direction", "lr", "decay", "step_scale"})

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        if u.direction is None:
            raise ValueError("ApplyUpdate needs `direction`: put a sign transform in the chain")
        for i, (p, d) in enumerate(zip(u.params, u.direction)):
            lr = u.lr if u.step_scale is None else u.lr * u.step_scale[i]
            x = up(p)
            if u.decay is None:
                new = x - lr * d
            else:
                new = x - lr * (d + u.decay * x)
                # Decoupled decay shrinks a weight toward 0, never past it: where
                # lr * decay > 1 (a stepsize oracle's large step, or lr * weight_decay > 1)
                # the decayed weight is 0, not (1 - lr * decay) x, whose repeated sign
                # flips grow geometrically to inf. Bit-identical below 1.
                new = torch.where(torch.as_tensor(lr * u.decay, device=x.device) > 1, -lr * d, new)
            ctx.write(i, p, new, stream=rng.STREAM_PARAM)
        return u, state
