"""Argument checks with messages that name the argument."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

# hyperparameter -> (lowest allowed, highest allowed, highest is exclusive)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, math.inf, False),
    "eps": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, False),
    "decoupled_wd": (0.0, math.inf, False),
    "momentum": (0.0, math.inf, False),
    "dampening": (0.0, 1.0, False),
    "alpha": (0.0, math.inf, False),
    "lr_decay": (0.0, math.inf, False),
    "initial_accumulator_value": (0.0, math.inf, False),
    "momentum_decay": (0.0, math.inf, False),
    "scale_beta": (0.0, 1.0, False),
}
_BETAS = ("betas",)
_BOOLS = ("amsgrad", "nesterov", "maximize", "centered", "decoupled_weight_decay")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{name} must be a number or a 1-element tensor, got shape {tuple(value.shape)}"
            )
        if value.is_complex():
            raise TypeError(f"{name} must be real, got a complex tensor")
        return float(value.detach().float().cpu().item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def check_hyper(hyper: Mapping[str, Any], base: type[torch.optim.Optimizer]) -> None:
    """Check the hyperparameters signify knows; the base checks the rest of its own."""
    for name, value in hyper.items():
        if name in _RANGES:
            x = _number(name, value)
            lo, hi, open_hi = _RANGES[name]
            if math.isnan(x) or x < lo or x > hi or (open_hi and x >= hi):
                bound = f"[{lo}, {hi})" if open_hi else f"[{lo}, {hi}]"
                raise ValueError(f"{name} must be in {bound}, got {x}")
        elif name in _BETAS:
            if not isinstance(value, (tuple, list)) or len(value) < 1:
                raise TypeError(f"{name} must be a tuple of numbers, got {value!r}")
            for i, b in enumerate(value):
                x = _number(f"{name}[{i}]", b)
                if math.isnan(x) or not 0.0 <= x < 1.0:
                    raise ValueError(f"{name}[{i}] must be in [0, 1), got {x}")
        elif name in _BOOLS:
            check_bool(name, value)


def check_with_base(base: type[torch.optim.Optimizer], hyper: Mapping[str, Any]) -> None:
    """Let the base class validate its own hyperparameters on a throwaway parameter."""
    from .adapters.base import IMPLEMENTATION_OPTIONS

    kwargs = {k: v for k, v in hyper.items() if k not in IMPLEMENTATION_OPTIONS}
    dummy = torch.zeros(1, requires_grad=True)
    try:
        base([dummy], **kwargs)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{base.__name__}: {e}") from None
    except Exception:  # a base that cannot be built on one dummy tensor checks nothing here
        return
