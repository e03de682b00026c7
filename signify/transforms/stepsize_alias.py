"""ALIAS: Automatic Local per-Iteration Approximation of the Stepsize (Medyakov et al.,
"Sign-SGD via Parameter-Free Optimization", arXiv 2506.03725, ICLR 2026).

For an l-infinity-smooth f, sign descent with a constant step ``gamma`` has the best step
``gamma* ~ sqrt(Delta / (L T))`` with ``Delta = f(x_0) - f*``. ALIAS plugs running estimates of
both unknowns into every step (spec: algorithms.md section 3.3)::

    eta_t   = eta_{t-1} + ||g_t - g_{t-1}||_1 / ||x_t - x_{t-1}||_inf     (t >= 1; eta_0 given)
    option I:  d~_t = sum_{i<t} gamma_i <g_{i+1}, sign(g_i)>,  d_t = max(d_{t-1}, d~_t),
               gamma_t = sqrt(d_t / eta_t)
    option II: gamma_t = sqrt((f(x_0) - f~) / eta_t)                        (f~ <= f*)
    x_{t+1} = x_t - gamma_t * lr * direction_t

``gamma_t`` uses the current gradient, so the reductions run in the prepass, before any
parameter moves. The direction is the chain's (``sign(g)``, or ``sign(buf)`` under SGD
momentum: ALIAS(beta) of the paper's LLM runs, whose ``gamma`` comes from raw gradients, as in
the authors' code).

Choices (documented in docs/stepsize.md):

* ``||x_t - x_{t-1}||_inf`` is known when the step is applied (``gamma * lr * max|d + decay
  x|`` per tensor; ``gamma * lr`` for a sign direction where that is exact, ``move="auto"``),
  so no copy of ``x_{t-1}`` is kept: 4 bytes of state per parameter (``g_{t-1}``) instead of
  the authors' 8.
* ``gamma_i`` in ``d~`` is the step actually taken (``gamma_i`` times the ``lr`` multiplier).
* The first step (``eta = 0``, where the formula gives infinity) uses ``gamma_0``; the
  authors' code instead clamps every step at ``clamp_level = 1e-3``. Here the clamp
  ``gamma_max`` is off by default: on the paper's convex problems it would cap the step below
  the tuned one.
* ``update_gap`` (the authors refresh ``gamma`` every 20 steps in their LLM runs) is not
  implemented: ``gamma`` is refreshed every step, the paper's algorithm.

`AliasLowMem` is the memory-efficient variant (spec 3.6): 1 bit of state per parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import rng
from ..sharding import local
from .base import State, StepContext, Update, total, up
from .stepsize import StepsizeOracle, check_number

if TYPE_CHECKING:
    from ..optimizer import SignifiedOptimizer

_GPREV = rng.stream_constant("alias.g_prev")
_SCALAR = rng.stream_constant("alias.scalar")


# ---- packed signs ----------------------------------------------------------------------
def packed_size(n: int) -> int:
    return (n + 7) // 8


def pack_signs(g: Tensor) -> Tensor:
    """``g > 0`` as bits, 8 per uint8 (little-endian within a byte; zero counts as negative)."""
    n = g.numel()
    bits = F.pad((g > 0).to(torch.uint8), (0, (-n) % 8)).view(-1, 8)
    shifts = torch.arange(8, dtype=torch.uint8, device=g.device)
    # The shifted bits are disjoint, so their sum is their OR and fits a byte. Summing in
    # uint8 keeps the compiled reduction's output at 1 bit/param (a plain sum promotes to int64).
    return (bits << shifts).sum(1, dtype=torch.uint8)


def unpack_signs(packed: Tensor, n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The +-1 signs stored by `pack_signs`, as ``dtype``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = ((packed.unsqueeze(1) >> shifts) & 1).view(-1)[:n]
    return bits.to(dtype) * 2 - 1


def _check_direction(u: Update, who: str) -> list[Tensor]:
    if u.direction is None:
        raise ValueError(f"{who} scales a direction: place it after the sign transform")
    return u.direction


def _scalar_state(p: Tensor) -> Tensor:
    return torch.zeros((), dtype=torch.float32, device=p.device)


class _AliasBase(StepsizeOracle):
    """What `Alias` and `AliasLowMem` share: options, the first step, option II's loss."""

    counters = ("n",)
    has_prepare = True

    def __init__(
        self,
        *,
        d_0: float = 1e-6,
        eta_0: float = 0.0,
        gamma_0: float = 1e-3,
        gamma_max: float | None = None,
        f_lower: float | None = None,
        f0: float | None = None,
        scope: str = "global",
        move: str = "auto",
        reduce: str = "auto",
        process_group: Any = None,
    ) -> None:
        super().__init__(scope, reduce, process_group)
        if move not in ("auto", "measure", "unit"):
            raise ValueError(f"move must be 'auto', 'measure' or 'unit', got {move!r}")
        self.move = move
        self._unit = move == "unit"  # "auto" is resolved against the chain in `bind`
        self.d_0 = check_number("d_0", d_0, low=0.0, strict=True)
        self.eta_0 = check_number("eta_0", eta_0, low=0.0)
        self.gamma_0 = check_number("gamma_0", gamma_0, low=0.0, strict=True)
        self.gamma_max = (
            None
            if gamma_max is None
            else check_number("gamma_max", gamma_max, low=0.0, strict=True)
        )
        self.f_lower = None if f_lower is None else check_number("f_lower", f_lower)
        if f0 is not None and f_lower is None:
            raise ValueError("f0 (the loss at x_0) is used by option II only: also pass f_lower")
        self.f0 = None if f0 is None else check_number("f0", f0)
        self._seen: Any = None

    @property
    def option(self) -> int:
        return 1 if self.f_lower is None else 2

    def bind(self, opt: SignifiedOptimizer) -> None:
        super().bind(opt)
        if self.move == "auto":
            values = None  # what the last direction written before this transform holds
            for t in opt.chain:
                if t is self:
                    break
                if "direction" in t.writes:
                    values = t.direction_values
            self._unit = self.unit_exact(values)

    def unit_exact(self, values: str | None) -> bool:
        """Whether ``move="auto"`` may take the size of a step as known for a direction
        whose entries are ``values`` (`Transform.direction_values`)."""
        return False

    def slot_init(self) -> dict[str, float]:
        return {"gamma": self.gamma_0, "eta": self.eta_0, "d": self.d_0, "dtilde": 0.0}

    def before_step(self, opt: SignifiedOptimizer, active: list[list[Tensor]]) -> None:
        super().before_step(opt, active)
        mine = opt._shared[self.name]
        if self.option != 2:
            return
        loss = getattr(opt, "last_loss", None)
        if "f0" not in mine:
            if self.f0 is not None:
                loss = self.f0
            elif loss is None:
                raise ValueError(
                    f"{type(self).__name__} option II (f_lower={self.f_lower}) needs the loss "
                    "at x_0: call opt.step(closure), or opt.set_loss(loss) before the first "
                    "step, or pass f0="
                )
            mine["f0"] = self.mean_over_ranks(self._as_scalar(loss, mine["gamma"].device))
            self._seen = loss
        elif loss is not None and loss is not self._seen and self.reduce_mode() == "none":
            # a loss of inf/nan at x_0 (fp16 overflow) is replaced by the next one given
            # (one process only: under a process group f(x_0) is the first loss's mean)
            self._seen = loss
            new = self._as_scalar(loss, mine["f0"].device)
            mine["f0"].copy_(torch.where(mine["f0"].isfinite(), mine["f0"], new))

    @staticmethod
    def _as_scalar(loss: Any, device: torch.device) -> Tensor:
        return torch.as_tensor(loss).detach().to(device=device, dtype=torch.float32).reshape(())

    def numerator(self, s: dict[str, Tensor], dot: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``d_t`` (option I; with the new ``d~`` and ``d``) or ``f(x_0) - f~`` (option II)."""
        if self.option == 1:
            dtilde = s["dtilde"] + dot
            d = torch.maximum(s["d"], dtilde)
            return d, {"dtilde": dtilde, "d": d}
        assert self.f_lower is not None
        return (s["f0"] - self.f_lower).clamp_min(0.0).expand_as(s["eta"]), {}

    def finish(
        self,
        s: dict[str, Tensor],
        eta: Tensor,
        num: tuple[Tensor, dict[str, Tensor]],
        ok: Tensor | None,
    ) -> None:
        """``gamma = sqrt(num / eta)`` (``gamma_0`` while ``eta = 0``), clamped, committed
        only on applied steps."""
        value, new = num
        pos = eta > 0
        gamma = torch.where(pos, (value / torch.where(pos, eta, 1.0)).sqrt(), self.gamma_0)
        if self.gamma_max is not None:
            gamma = gamma.clamp_max(self.gamma_max)
        gamma = torch.where(gamma.isfinite(), gamma, s["gamma"])  # never step by inf/nan
        new = {**new, "eta": eta, "gamma": gamma}
        for k, v in new.items():
            s[k].copy_(v if ok is None else torch.where(ok, v, s[k]))

    def extra_repr(self) -> str:
        opt = "I" if self.option == 1 else f"II, f_lower={self.f_lower}"
        clamp = "" if self.gamma_max is None else f", gamma_max={self.gamma_max}"
        return f"option {opt}, scope={self.scope!r}{clamp}"


class Alias(_AliasBase):
    """ALIAS (algorithms.md 3.3): option I by default (gradients only); option II when
    ``f_lower`` (a lower bound of the loss, e.g. 0 for cross-entropy) is given, with the loss
    at ``x_0`` from ``f0=``, the closure of the first ``step`` or ``opt.set_loss(loss)``.

    Args:
        d_0: initial distance-to-optimum proxy of option I (in units of the loss; small).
        eta_0: initial smoothness accumulator (the authors' ``L_inf``, 0 in their runs).
        gamma_0: the first step, taken while ``eta = 0``.
        gamma_max: optional clamp of ``gamma`` (the authors' ``clamp_level``, 1e-3 in their
            LLM script); ``None`` (default) for none.
        f_lower, f0: option II's lower bound and (optionally) the loss at ``x_0``.
        scope: ``"global"`` (the paper's), ``"group"`` or ``"tensor"``.
        move: how the size of a step ``||x_t - x_{t-1}||_inf`` is known: ``"measure"``
            reduces ``max |d + decay x|`` in the update pass, exact for any direction;
            ``"unit"`` takes ``max |d| = 1`` when there is no decay, which spares the update
            pass a reduction (exact for a sign direction unless every entry of it is 0);
            ``"auto"`` (default) is ``"unit"`` for the stochastic sign, and for the sign
            (and the vote) at ``"global"`` or ``"group"`` scope, where a direction that is 0
            everywhere (every gradient entry exactly 0) is the only case it gets wrong, and
            ``"measure"`` otherwise (``"tensor"`` scope with the sign: a tensor whose
            gradient is 0 everywhere, such as a frozen or unused one, has not moved).
        reduce: across ranks, ``"mean"`` (data parallel, replicated parameters; the default
            when a process group is up), ``"sum"`` (each rank holds a shard of the
            parameters: the default under FSDP2 and ZeroRedundancyOptimizer), ``"none"``.

    State: ``alias.g_prev`` (the previous gradient), and per tensor the last step's size
    ``alias.s_prev`` and l-inf move ``alias.dx``, and a step counter ``alias.n``.
    """

    name = "alias"
    sum_rows = ("l1", "dot", "has")
    max_rows = ("dx",)
    flat_max = ("dx",)  # a bucket's l-inf move is its tensors' largest (decay moves differ)

    def unit_exact(self, values: str | None) -> bool:
        return values == "pm1" or (values == "sign" and self.scope != "tensor")

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        return {
            "g_prev": [self.zeros(p) for p in params],
            "s_prev": [_scalar_state(p) for p in params],
            "dx": [_scalar_state(p) for p in params],
            "n": [_scalar_state(p) for p in params],
        }

    def prepare(self, u: Update, state: State, ctx: StepContext) -> None:
        l1s, dots, hass, dxs = [], [], [], []
        for i, g_raw in enumerate(u.grads):
            has = state["n"][i][0] > 0
            g, gp = up(g_raw), up(state["g_prev"][i])
            l1 = total((g - gp).abs())
            dot = total(g * torch.sign(gp)) * state["s_prev"][i][0]
            l1s.append(torch.where(has, l1, 0.0))
            dots.append(torch.where(has, dot, 0.0) if self.option == 1 else l1.new_zeros(()))
            hass.append(has.to(torch.float32))
            dxs.append(torch.where(has, state["dx"][i][0], -math.inf))
        self.accumulate(ctx, state, [l1s, dots, hass], [dxs])

    def compute(self, s: dict[str, Tensor], ok: Tensor | None) -> None:
        l1, dot, has = s["acc_sum"][0], s["acc_sum"][1], s["acc_sum"][2]
        dx = s["acc_max"][0]
        valid = (has > 0) & (dx > 0)
        eta = s["eta"] + torch.where(valid, l1 / torch.where(valid, dx, 1.0), 0.0)
        self.finish(s, eta, self.numerator(s, dot), ok)

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        direction = _check_direction(u, "Alias")
        eff = self.scale_lr(u, self.gamma_of(ctx, state, len(u.params)))
        unit = self._unit and u.decay is None
        for i, (p, d) in enumerate(zip(u.params, direction)):
            move = d if u.decay is None else d + u.decay * up(p)
            if unit:
                dx = eff[i]
            else:
                dx = eff[i] * move.abs().amax() if p.numel() > 0 else eff[i] * 0
            self.write_own(ctx, i, state["dx"][i], dx, _SCALAR)
            self.write_own(ctx, i, state["g_prev"][i], up(u.grads[i]), _GPREV)
        self.record_step(ctx, state, eff)
        return u, state


class AliasLowMem(_AliasBase):
    """Memory-efficient ALIAS (algorithms.md 3.6): 1 bit per parameter (the sign of the
    previous gradient, packed 8 per byte) plus scalars. The norms are swapped and the
    numerator bounded from stored extrema::

        eta_t = eta_{t-1} + B_t / ||x_t - x_{t-1}||_1,
        B_t = max(max g_t - min g_{t-1}, max g_{t-1} - min g_t) >= ||g_t - g_{t-1}||_inf

    (max/min over the slot's tensors). ``||x_t - x_{t-1}||_1`` is measured when the step is
    applied (``move="unit"``: ``gamma * lr * numel``, every entry moving; ``"auto"`` takes
    it for the stochastic sign only, whose entries are never 0). Option I's
    ``<g_t, sign(g_{t-1})>`` reads the stored bits; one bit cannot hold
    ``sign(0) = 0``, so a zero gradient entry is stored as negative.

    Arguments as `Alias`. State: ``alias_lowmem.bits`` (uint8, ``ceil(n/8)``), per tensor
    ``gmax``, ``gmin``, ``s_prev``, ``dx`` (l1 move) and ``n``.
    """

    name = "alias_lowmem"
    sum_rows = ("dot", "has", "dx")
    max_rows = ("max", "neg_min", "max_prev", "neg_min_prev")

    def supports_flat(self) -> bool:
        return False  # packed bits per tensor: no per-element buffer to re-home

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        return {
            "bits": [
                torch.zeros(packed_size(local(p).numel()), dtype=torch.uint8, device=p.device)
                for p in params
            ],
            "gmax": [_scalar_state(p) for p in params],
            "gmin": [_scalar_state(p) for p in params],
            "s_prev": [_scalar_state(p) for p in params],
            "dx": [_scalar_state(p) for p in params],
            "n": [_scalar_state(p) for p in params],
        }

    def unit_exact(self, values: str | None) -> bool:
        return values == "pm1"  # an l1 move counts every entry: the sign has zeros

    def plan(self, params: Sequence[Tensor], group_index: int) -> State:
        out = super().plan(params, group_index)
        # this step's (max g, min g) per tensor: from the prepass to the update pass
        out["cur"] = [torch.zeros(2, dtype=torch.float32, device=p.device) for p in params]
        return out

    def prepare(self, u: Update, state: State, ctx: StepContext) -> None:
        dots, hass, dxs = [], [], []
        mx_, nmn_, mxp_, nmnp_ = [], [], [], []
        ninf = -math.inf
        for i, g_raw in enumerate(u.grads):
            has = state["n"][i][0] > 0
            g = up(g_raw)
            if g.numel() > 0:
                mx, mn = g.amax(), g.amin()
            else:
                mx = mn = g.new_zeros(())
            state["cur"][i].copy_(torch.stack([mx, mn]).float())
            if self.option == 1:
                sgn = unpack_signs(state["bits"][i], g.numel(), g.dtype)
                dot = (g * sgn).sum() * state["s_prev"][i][0]
                dots.append(torch.where(has, dot, 0.0))
            else:
                dots.append(g.new_zeros(()))
            hass.append(has.to(torch.float32))
            dxs.append(torch.where(has, state["dx"][i][0], 0.0))
            mx_.append(torch.where(has, mx, ninf))
            nmn_.append(torch.where(has, -mn, ninf))
            mxp_.append(torch.where(has, state["gmax"][i][0], ninf))
            nmnp_.append(torch.where(has, -state["gmin"][i][0], ninf))
        self.accumulate(ctx, state, [dots, hass, dxs], [mx_, nmn_, mxp_, nmnp_])

    def compute(self, s: dict[str, Tensor], ok: Tensor | None) -> None:
        dot, has, dx1 = s["acc_sum"][0], s["acc_sum"][1], s["acc_sum"][2]
        mx, nmn, mxp, nmnp = (s["acc_max"][k] for k in range(4))
        bound = torch.maximum(mx + nmnp, mxp + nmn)  # max g_t - min g_{t-1}, and the converse
        valid = (has > 0) & (dx1 > 0)
        eta = s["eta"] + torch.where(valid, bound / torch.where(valid, dx1, 1.0), 0.0)
        self.finish(s, eta, self.numerator(s, dot), ok)

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        direction = _check_direction(u, "AliasLowMem")
        eff = self.scale_lr(u, self.gamma_of(ctx, state, len(u.params)))
        unit = self._unit and u.decay is None
        for i, (p, d) in enumerate(zip(u.params, direction)):
            move = d if u.decay is None else d + u.decay * up(p)
            dx1 = eff[i] * p.numel() if unit else eff[i] * move.abs().sum()
            self.write_own(ctx, i, state["dx"][i], dx1, _SCALAR)
            self.write_own(ctx, i, state["gmax"][i], state["cur"][i][0], _SCALAR)
            self.write_own(ctx, i, state["gmin"][i], state["cur"][i][1], _SCALAR)
            self.write_own(ctx, i, state["bits"][i], pack_signs(u.grads[i]), _SCALAR)
        self.record_step(ctx, state, eff)
        return u, state
