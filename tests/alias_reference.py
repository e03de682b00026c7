"""Independent float64 (numpy) re-implementations of ALIAS (algorithms.md 3.3), memory-efficient
ALIAS (3.6) and the ALIAS Adam step-size recurrence (3.7b, Swin form), written from the spec
formulas, not from signify's code. They keep ``x_{t-1}`` and ``g_{t-1}`` in full and take the
norms of the differences directly, where signify measures the move when it is applied and
keeps one bit."""

from __future__ import annotations

import math

import numpy as np


class RefAlias:
    """ALIAS over ``slots`` (lists of tensor indices sharing one estimate).

    ``step(xs, gs, lr, f0)`` moves the float64 arrays ``xs`` in place and returns the list of
    ``gamma`` per slot used by this step."""

    def __init__(
        self,
        slots,
        *,
        option=1,
        d_0=1e-6,
        eta_0=0.0,
        gamma_0=1e-3,
        gamma_max=None,
        f_lower=None,
        lowmem=False,
        momentum=0.0,
        weight_decay=0.0,
    ):
        self.slots = [list(s) for s in slots]
        self.option, self.lowmem = option, lowmem
        self.d_0, self.gamma_0, self.gamma_max = d_0, gamma_0, gamma_max
        self.f_lower = f_lower
        self.momentum, self.weight_decay = momentum, weight_decay
        k = len(self.slots)
        self.eta = [eta_0] * k
        self.d = [d_0] * k
        self.dtilde = [0.0] * k
        self.x_prev = None
        self.g_prev = None
        self.step_prev = None  # per tensor: gamma * lr of the previous step
        self.buf = None
        self.f0 = None
        self.history = []  # gammas per step

    def step(self, xs, gs, lr=1.0, f0=None):
        if self.f0 is None:
            self.f0 = f0
        gammas = []
        steps = [0.0] * len(xs)
        for si, idx in enumerate(self.slots):
            if self.g_prev is not None:
                if self.lowmem:
                    g_now = np.concatenate([gs[i].ravel() for i in idx])
                    g_old = np.concatenate([self.g_prev[i].ravel() for i in idx])
                    num = max(g_now.max() - g_old.min(), g_old.max() - g_now.min())
                    den = sum(np.abs(xs[i] - self.x_prev[i]).sum() for i in idx)
                else:
                    num = sum(np.abs(gs[i] - self.g_prev[i]).sum() for i in idx)
                    den = max(np.abs(xs[i] - self.x_prev[i]).max() for i in idx)
                if den > 0:
                    self.eta[si] += num / den
                self.dtilde[si] += sum(
                    self.step_prev[i] * np.dot(gs[i].ravel(), np.sign(self.g_prev[i].ravel()))
                    for i in idx
                )
            if self.option == 1:
                self.d[si] = max(self.d[si], self.dtilde[si])
                top = self.d[si]
            else:
                top = max(self.f0 - self.f_lower, 0.0)
            gamma = math.sqrt(top / self.eta[si]) if self.eta[si] > 0 else self.gamma_0
            if self.gamma_max is not None:
                gamma = min(gamma, self.gamma_max)
            gammas.append(gamma)
            for i in idx:
                steps[i] = gamma * lr
        # the step: torch SGD heavy-ball buffer (buf = g first), decoupled decay, sign
        if self.momentum:
            if self.buf is None:
                self.buf = [g.copy() for g in gs]
            else:
                self.buf = [self.momentum * b + g for b, g in zip(self.buf, gs)]
            dirs = [np.sign(b) for b in self.buf]
        else:
            dirs = [np.sign(g) for g in gs]
        self.x_prev = [x.copy() for x in xs]
        self.g_prev = [g.copy() for g in gs]
        self.step_prev = steps
        self.history.append(gammas)
        for x, d, s in zip(xs, dirs, steps):
            x -= s * (d + self.weight_decay * x)
        return gammas


class RefAliasAdam:
    """The Swin ``AdamLike`` distance recurrence per slot, applied to a given direction."""

    def __init__(self, slots, beta=0.999, d_0=1.0):
        self.slots = [list(s) for s in slots]
        self.b = math.sqrt(beta)
        self.r = [0.0] * len(self.slots)
        self.d = [d_0] * len(self.slots)
        self.g_prev = None

    def multipliers(self, gs):
        """``d`` per slot for this step (updates the recurrence)."""
        for si, idx in enumerate(self.slots):
            s = 0.0
            if self.g_prev is not None:
                s = sum(np.dot(gs[i].ravel(), np.sign(self.g_prev[i].ravel())) for i in idx)
            self.r[si] = self.b * self.r[si] + (1 - self.b) * self.d[si] * s
            self.d[si] = max(self.d[si], self.r[si])
        self.g_prev = [g.copy() for g in gs]
        return list(self.d)
