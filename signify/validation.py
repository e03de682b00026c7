"""Argument checks with messages that name the argument."""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

# hyperparameter -> (lowest allowed, highest allowed, lowest is exclusive). Every value must
# also be finite: an infinite lr or weight decay only turns the parameters into inf/NaN.
_RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (0.0, math.inf, False),
    "eps": (0.0, math.inf, False),
    "weight_decay": (0.0, math.inf, False),
    "decoupled_wd": (0.0, math.inf, False),
    "momentum": (0.0, math.inf, False),  # torch allows momentum > 1 (diverging): so do we
    "dampening": (0.0, 1.0, False),
    "alpha": (0.0, math.inf, False),
    "lr_decay": (0.0, math.inf, False),
    "initial_accumulator_value": (0.0, math.inf, False),
    "momentum_decay": (0.0, math.inf, False),
    "scale_beta": (0.0, 1.0, True),  # RunningMaxScale's (0, 1]
}
# Narrower ranges for one base (and its subclasses): RMSprop's alpha > 1 makes the second
# moment negative (torch accepts it and steps to NaN).
_BASE_RANGES: dict[type[torch.optim.Optimizer], dict[str, tuple[float, float, bool]]] = {
    torch.optim.RMSprop: {"alpha": (0.0, 1.0, False)},
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
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars pass
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def check_max_grad_norm(value: Any) -> None:
    """``max_grad_norm``: None (no clipping) or a finite number > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"max_grad_norm must be a positive number or None, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"max_grad_norm must be a finite number > 0, got {value!r}")


def _ranges(base: type[torch.optim.Optimizer]) -> dict[str, tuple[float, float, bool]]:
    out = dict(_RANGES)
    for cls, narrower in _BASE_RANGES.items():
        if issubclass(base, cls):
            out.update(narrower)
    return out


def _default_len(base: type[torch.optim.Optimizer], name: str) -> int | None:
    """How many values the base's default of ``name`` holds (betas: 2), if a tuple."""
    par = inspect.signature(base.__init__).parameters.get(name)
    default = par.default if par is not None else None
    return len(default) if isinstance(default, (tuple, list)) else None


def check_hyper(hyper: Mapping[str, Any], base: type[torch.optim.Optimizer]) -> None:
    """Check the hyperparameters signify knows; the base checks the rest of its own."""
    ranges = _ranges(base)
    for name, value in hyper.items():
        if name in ranges:
            x = _number(name, value)
            lo, hi, open_lo = ranges[name]
            if not math.isfinite(x) or x < lo or x > hi or (open_lo and x <= lo):
                bound = ("(" if open_lo else "[") + f"{lo}, {hi}" + (")" if hi == math.inf else "]")
                raise ValueError(f"{name} must be a finite number in {bound}, got {x}")
        elif name in _BETAS:
            if not isinstance(value, (tuple, list)) or len(value) < 1:
                raise TypeError(f"{name} must be a tuple of numbers, got {value!r}")
            n = _default_len(base, name)
            if n is not None and len(value) != n:
                raise ValueError(f"{name} must hold {n} numbers, got {value!r}")
            for i, b in enumerate(value):
                x = _number(f"{name}[{i}]", b)
                if math.isnan(x) or not 0.0 <= x < 1.0:
                    raise ValueError(f"{name}[{i}] must be in [0, 1), got {x}")
        elif name in _BOOLS:
            check_bool(name, value)


def check_with_base(
    base: type[torch.optim.Optimizer], hyper: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Let the base class validate its own hyperparameters on a throwaway parameter; returns
    the group it built (without ``params``), or None for a base that cannot be built so."""
    from .adapters.base import IMPLEMENTATION_OPTIONS

    kwargs = {k: v for k, v in hyper.items() if k not in IMPLEMENTATION_OPTIONS}
    dummy = torch.zeros(1, requires_grad=True)
    try:
        built = base([dummy], **kwargs)
    except (ValueError, TypeError) as e:
        raise type(e)(f"{base.__name__}: {e}") from None
    except Exception:  # a base that cannot be built on one dummy tensor checks nothing here
        return None
    groups = getattr(built, "param_groups", None)
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)):
        return None
    return {k: v for k, v in groups[0].items() if k not in ("params", "param_names")}


def check_seed(seed: Any) -> None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    if seed is not None and not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")


def check_params(params: Any) -> list[Any]:
    """``params`` as a list (a generator is consumed once), else a TypeError naming it."""
    if isinstance(params, (Tensor, str, bytes, Mapping)):
        kind = "a single tensor" if isinstance(params, Tensor) else type(params).__name__
        raise TypeError(
            "params must be an iterable of tensors, dicts (param groups) or (name, tensor) "
            f"pairs, got {kind}"
        )
    check_ordered("params", params)
    try:
        return list(params)
    except TypeError:
        raise TypeError(
            "params must be an iterable of tensors, dicts (param groups) or (name, tensor) "
            f"pairs, got {type(params).__name__}"
        ) from None


def check_ordered(name: str, params: Any) -> None:
    # torch's rule: the noise (keyed by position) and checkpoints rely on a fixed order
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{name} must be an ordered collection (a list), not a set: the order of a set's "
            "tensors changes between runs"
        )


def check_group_params(params: list[Any]) -> None:
    """Floating-point (not complex) tensors, each once."""
    seen: set[int] = set()
    for p in params:
        if not isinstance(p, Tensor):
            continue  # torch's own check names it
        if p.is_complex():
            raise ValueError("complex parameters are not supported by signify")
        if not p.is_floating_point():
            raise ValueError(f"params must be floating-point tensors, got one of dtype {p.dtype}")
        if id(p) in seen:
            raise ValueError("params: a tensor appears twice in one param group")
        seen.add(id(p))


def check_saved_groups(groups: Any, base: type[torch.optim.Optimizer]) -> None:
    """A state_dict's ``param_groups``: dicts with ``params``, valid hyperparameters."""
    if not isinstance(groups, list) or not all(
        isinstance(g, Mapping) and isinstance(g.get("params"), list) for g in groups
    ):
        raise TypeError("state_dict['param_groups'] must be a list of dicts with a 'params' list")
    for i, g in enumerate(groups):
        try:
            check_hyper({k: v for k, v in g.items() if k not in ("params", "param_names")}, base)
        except (ValueError, TypeError) as e:
            raise type(e)(f"state_dict['param_groups'][{i}]: {e}") from None


def check_saved_shared(shared: Any, template: Mapping[str, Mapping[str, Any]]) -> None:
    """A state_dict's optimizer-level state against a fresh one (``template``): the same
    entries, each holding at least the template's keys, tensors where it has tensors, of
    the same dtype and number of dimensions (sizes may differ: stepsize slots grow)."""
    where = "state_dict['signify']['shared']"
    if not isinstance(shared, Mapping) or not all(isinstance(d, Mapping) for d in shared.values()):
        raise TypeError(f"{where} must be a dict of dicts")
    if not shared:
        return  # saved before the first step
    if set(shared) != set(template):
        raise ValueError(
            f"{where} holds entries {sorted(shared)}, this optimizer's chain {sorted(template)}"
        )
    for name, fresh in template.items():
        for k, v in fresh.items():
            if k not in shared[name]:
                raise ValueError(f"{where}[{name!r}] lacks {k!r}")
            got = shared[name][k]
            if isinstance(v, Tensor) and not (
                isinstance(got, Tensor) and got.dtype == v.dtype and got.dim() == v.dim()
            ):
                what = f"{got.dtype} of {got.dim()} dims" if isinstance(got, Tensor) else repr(got)
                raise ValueError(
                    f"{where}[{name!r}][{k!r}] must be a {v.dtype} tensor of {v.dim()} dims, "
                    f"got {what}"
                )
