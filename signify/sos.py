"""SOS Sign-SGD: a bisection search for a constant sign-descent step (Medyakov et al., arXiv
2506.03725, Alg. 2-3), for deterministic problems.

Sign descent with a constant step ``gamma`` for ``T`` steps is best near
``gamma* ~ sqrt(Delta / (L T))`` (``Delta = f(x_0) - f*``, ``L`` the l-inf smoothness).
Each probe runs ``T`` steps from ``x_0`` with a candidate ``gamma`` and measures both
unknowns along its own path (algorithms.md 3.2, a reconstruction: the paper's text was not
available)::

    N(gamma) = sum_t gamma <g_{t+1}, sign g_t>                       (<= f(x_0) - f(x_T))
    D(gamma) = T * max_t ||g_{t+1} - g_t||_1 / ||x_{t+1} - x_t||_inf   (T times a local L)
    phi(gamma) = N / D

and bisects ``log gamma`` for the fixed point ``gamma^2 = phi(gamma)``: a probe with
``gamma^2 > phi(gamma)`` is too large. The result is the largest probed step that is not
(``lo``), so every probe but one costs ``T + 1`` gradient evaluations and the search
``O(log log(hi / lo))`` probes... in practice about ``log2(log(hi / lo) / log(1 + rtol))``.

This is a host-side utility: it reads losses and norms with ``.item()``; it is not an
optimizer. The closure is called like a torch.optim closure: it recomputes the loss at the
current parameters, fills ``.grad`` and returns the loss (SOS sets ``.grad`` to None before
each call, so the closure need not zero it).

Example::

    res = signify.sos.sos(model.parameters(), closure, steps=1000)
    opt = signify.signify(torch.optim.SGD)(model.parameters(), lr=res.gamma)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


@dataclasses.dataclass
class Probe:
    gamma: float
    phi: float  # N / D
    loss: float  # f(x_T)
    accepted: bool  # gamma^2 <= phi: not too large


@dataclasses.dataclass
class SOSResult:
    """``gamma``: the step found; ``probes`` in the order run; ``evaluations``: closure calls;
    ``bracket``: the final ``(lo, hi)``."""

    gamma: float
    probes: list[Probe]
    evaluations: int
    bracket: tuple[float, float]


def _grads(params: list[Tensor], closure: Callable[[], Any]) -> tuple[float, list[Tensor]]:
    for p in params:
        p.grad = None  # a closure that does not zero them would otherwise accumulate
    with torch.enable_grad():
        loss = closure()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in params]
    return float(loss), grads


@torch.no_grad()
def probe(params: list[Tensor], closure: Callable[[], Any], gamma: float, steps: int) -> Probe:
    """Run ``steps`` of ``x -= gamma sign(g)`` from the current parameters (they are left at
    ``x_T``) and measure ``phi(gamma)``."""
    _, g = _grads(params, closure)
    num, lmax, loss = 0.0, 0.0, float("nan")
    for _ in range(steps):
        signs = [torch.sign(x) for x in g]
        moved = any(bool(s.any()) for s in signs)
        for p, s in zip(params, signs):
            p.sub_(gamma * s)
        loss, g_new = _grads(params, closure)
        num += gamma * sum(float((a * s).sum()) for a, s in zip(g_new, signs))
        if moved:
            diff = sum(float((a - b).abs().sum()) for a, b in zip(g_new, g))
            lmax = max(lmax, diff / gamma)
        g = g_new
    den = steps * lmax
    phi = num / den if den > 0 else math.inf
    return Probe(gamma, phi, loss, gamma * gamma <= phi)


def sos(
    params: Iterable[Tensor],
    closure: Callable[[], Any],
    steps: int,
    *,
    budget: int = 12,
    gamma_lo: float = 1e-8,
    gamma_hi: float = 1.0,
    rtol: float = 0.05,
    final_run: bool = False,
) -> SOSResult:
    """Search a constant sign-descent step for ``steps`` steps from the current parameters.

    Args:
        params: the parameters (tensors); restored to their starting values after each probe.
        closure: recomputes the loss at the current parameters and fills ``.grad``.
        steps: the horizon ``T`` of the run the step is for (each probe runs it).
        budget: the most probes (each costs ``steps + 1`` closure calls).
        gamma_lo, gamma_hi: the initial bracket (``gamma_hi`` is probed first: if it is not
            too large, it is returned).
        rtol: stop when ``hi / lo < 1 + rtol``.
        final_run: leave the parameters at the end of a run with the found step (one more
            run), instead of at ``x_0``.
    """
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of tensors, got a single tensor")
    params = list(params)
    for name, n in (("steps", steps), ("budget", budget)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    for name, v in (("gamma_lo", gamma_lo), ("gamma_hi", gamma_hi), ("rtol", rtol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if not gamma_lo < gamma_hi:
        raise ValueError(f"gamma_lo must be < gamma_hi, got {gamma_lo} and {gamma_hi}")
    if not params or not all(isinstance(p, Tensor) for p in params):
        raise TypeError("params must be a non-empty iterable of tensors")
    if not callable(closure):
        raise TypeError("closure must be callable")
    x0 = [p.detach().clone() for p in params]

    def restore() -> None:
        with torch.no_grad():
            for p, x in zip(params, x0):
                p.copy_(x)

    lo, hi = float(gamma_lo), float(gamma_hi)
    probes: list[Probe] = []
    evaluations = 0
    candidate = hi
    while len(probes) < budget:
        pr = probe(params, closure, candidate, steps)
        restore()
        probes.append(pr)
        evaluations += steps + 1
        if pr.accepted:
            lo = candidate
            if candidate == gamma_hi:  # the upper end is not too large: take it
                break
        else:
            hi = candidate
        if hi / lo < 1 + rtol:
            break
        candidate = math.sqrt(lo * hi)
    if final_run:
        probe(params, closure, lo, steps)
        evaluations += steps + 1
    return SOSResult(lo, probes, evaluations, (lo, hi))
