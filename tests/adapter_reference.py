"""Float64 re-implementations of the base optimizers' formulas, for the adapter tests.

Written from torch's documented algorithms (and StoSignSGD's conversion rule), independently
of signify's adapters: each `Reference.step` returns, for one tensor, the numerator ``a``, the
scale ``sigma`` signify's sign transforms should see, the base's own step direction
``a / sigma_base`` (``sigma_base = 1`` where the base has no denominator), the base's
step-size schedule and its decoupled decay.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
from torch import Tensor

F64 = torch.float64


@dataclasses.dataclass
class RefStep:
    a: Tensor
    sigma: Tensor
    base_dir: Tensor  # what torch subtracts, divided by lr * step_scale (decay excluded)
    step_scale: float = 1.0
    decay: float = 0.0


class Reference:
    """One tensor's float64 optimizer state for the base ``kind`` with hyperparameters ``hp``
    (torch's names and defaults). ``scale_beta``: decay of the running max that signify uses
    where the base has no denominator (StoSignSGD, algorithms.md 2.2)."""

    DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {
        "SGD": dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
        "Adam": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False),
        "AdamW": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False),
        "Adamax": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
        "RMSprop": dict(alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False),
        "Adagrad": dict(lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10),
        "NAdam": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3),
        "RAdam": dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
    }

    def __init__(self, kind: str, hp: dict[str, Any], shape: Any, scale_beta: float = 1.0):
        self.kind = kind
        self.hp = {**self.DEFAULTS[kind], "maximize": False, "decoupled_weight_decay": False}
        self.hp.update({k: v for k, v in hp.items() if k != "lr"})
        self.t = 0
        z = torch.zeros(shape, dtype=F64)
        self.m, self.v, self.vmax, self.c, self.buf = z.clone(), z.clone(), z.clone(), z, z
        self.G = torch.zeros(shape, dtype=F64)
        self.mu_product = 1.0
        if kind == "Adagrad":
            self.v = torch.full(shape, float(self.hp["initial_accumulator_value"]), dtype=F64)
        self.scale_beta = scale_beta

    def _running_max(self, a: Tensor) -> Tensor:
        self.G = torch.maximum(self.scale_beta * self.G, a.abs())
        return self.G

    def step(self, grad: Tensor, x: Tensor) -> RefStep:
        hp, kind = self.hp, self.kind
        self.t += 1
        t = self.t
        g = grad.to(F64) * (-1.0 if hp["maximize"] else 1.0)
        x = x.to(F64)
        wd = float(hp["weight_decay"])
        decoupled = kind == "AdamW" or bool(hp["decoupled_weight_decay"])
        if wd and not decoupled:
            g = g + wd * x
        decay = wd if decoupled else 0.0
        if kind == "SGD":
            mu, damp = hp["momentum"], hp["dampening"]
            d = g
            if mu:
                self.buf = g.clone() if t == 1 else mu * self.buf + (1 - damp) * g
                d = g + mu * self.buf if hp["nesterov"] else self.buf
            return RefStep(d, self._running_max(d), d)
        if kind in ("Adam", "AdamW", "Adamax", "NAdam", "RAdam"):
            b1, b2 = hp["betas"]
            self.m = b1 * self.m + (1 - b1) * g
        if kind in ("Adam", "AdamW"):
            self.v = b2 * self.v + (1 - b2) * g * g
            v = self.v
            if hp["amsgrad"]:
                self.vmax = torch.maximum(self.vmax, self.v)
                v = self.vmax
            a = self.m / (1 - b1**t)
            sigma = v.sqrt() / math.sqrt(1 - b2**t) + hp["eps"]
            return RefStep(a, sigma, a / sigma, decay=decay)
        if kind == "Adamax":
            self.v = torch.maximum(b2 * self.v, g.abs() + hp["eps"])
            a = self.m / (1 - b1**t)
            return RefStep(a, self.v.clone(), a / self.v)
        if kind == "RMSprop":
            al = hp["alpha"]
            self.v = al * self.v + (1 - al) * g * g
            if hp["centered"]:
                self.c = al * self.c + (1 - al) * g
                avg = (self.v - self.c**2).sqrt() + hp["eps"]
            else:
                avg = self.v.sqrt() + hp["eps"]
            if hp["momentum"]:
                self.buf = hp["momentum"] * self.buf + g / avg
                return RefStep(self.buf.clone(), self._running_max(self.buf), self.buf.clone())
            return RefStep(g, avg, g / avg)
        if kind == "Adagrad":
            self.v = self.v + g * g
            sigma = self.v.sqrt() + hp["eps"]
            return RefStep(g, sigma, g / sigma, step_scale=1 / (1 + (t - 1) * hp["lr_decay"]))
        if kind == "NAdam":
            md = hp["momentum_decay"]
            mu = b1 * (1 - 0.5 * 0.96 ** (t * md))
            mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * md))
            self.mu_product *= mu
            self.v = b2 * self.v + (1 - b2) * g * g
            a = (1 - mu) / (1 - self.mu_product) * g
            a = a + mu_next / (1 - self.mu_product * mu_next) * self.m
            sigma = (self.v / (1 - b2**t)).sqrt() + hp["eps"]
            return RefStep(a, sigma, a / sigma, decay=decay)
        if kind == "RAdam":
            self.v = b2 * self.v + (1 - b2) * g * g
            a = self.m / (1 - b1**t)
            rho_inf = 2 / (1 - b2) - 1
            rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
            if rho_t > 5:
                r = math.sqrt(
                    (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                )
                sigma = (self.v.sqrt() + hp["eps"]) / (math.sqrt(1 - b2**t) * r)
                return RefStep(a, sigma, a / sigma, decay=decay)
            # un-rectified phase: the base steps along m_hat; signify's scale is |m_hat| [R]
            return RefStep(a, a.abs(), a.clone(), decay=decay)
        raise ValueError(kind)


def expected_sign(a: Tensor, sigma: Tensor) -> Tensor:
    """``clip(a / sigma, -1, 1)`` with ``0 / 0 := 0`` (algorithms.md 1.2)."""
    safe = torch.where(sigma != 0, sigma, torch.ones_like(sigma))
    return torch.where(sigma != 0, a / safe, torch.zeros_like(a)).clamp(-1, 1)


# (class name, kwargs): one entry per setting the exactness tests cover.
CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.5, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("SGD", dict(lr=0.05, momentum=0.8, dampening=0.8)),
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, amsgrad=True, betas=(0.8, 0.99))),
    ("Adamax", dict(lr=0.01)),
    ("Adamax", dict(lr=0.01, weight_decay=0.1, maximize=True, betas=(0.8, 0.99))),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, centered=True, weight_decay=0.1)),
    ("RMSprop", dict(lr=0.01, momentum=0.9)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True, maximize=True, alpha=0.9)),
    ("Adagrad", dict(lr=0.05)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.05, initial_accumulator_value=0.3)),
    ("Adagrad", dict(lr=0.05, weight_decay=0.1, maximize=True, eps=1e-6)),
    ("NAdam", dict(lr=0.01)),
    ("NAdam", dict(lr=0.01, momentum_decay=0.02, weight_decay=0.1)),
    ("NAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
    ("RAdam", dict(lr=0.01)),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, betas=(0.8, 0.99))),
    ("RAdam", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
]


def config_id(cfg: tuple[str, dict[str, Any]]) -> str:
    name, kw = cfg
    return name + "-" + "-".join(f"{k}={v}" for k, v in kw.items() if k != "lr")
