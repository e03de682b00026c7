"""What a study reads off an optimizer at its log points (these calls sync the device).

* `state_bytes`: bytes of the tensors in ``opt.state`` (plus a wrapped base's state and
  signify's optimizer-level scalars), each storage counted once. Block schedules that drop
  idle state show it here.
* `stepsize_trace`: the 0-d floating scalars a stepsize transform keeps in
  ``opt.shared_state(device)[transform.name]`` (ALIAS's ``gamma``, its accumulators, ...),
  keyed ``"<transform>.<key>"``; taken from transforms whose name or key says step size
  (``stepsize``, ``alias``, ``sos``, ``gamma``, ``lr``). Empty for other optimizers.
* `comm_bytes`: bytes a vote sent so far: a transform's ``bytes_communicated`` (attribute or
  method), else the sum of its shared scalars whose key contains ``bytes``. 0 without a vote.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_STEPSIZE_WORDS = ("stepsize", "step_size", "alias", "sos", "gamma", "oracle")


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def state_bytes(opt: torch.optim.Optimizer) -> int:
    tensors = _tensors(list(opt.state.values()))
    for t in getattr(opt, "chain", []):
        inner = getattr(t, "inner", None)
        if isinstance(inner, torch.optim.Optimizer):
            tensors += _tensors(list(inner.state.values()))
    tensors += _tensors(getattr(opt, "_shared", {}))
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        if t.device.type == "meta":
            continue
        key = (t.untyped_storage().data_ptr(), int(t.storage_offset()))
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


def _shared(opt: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    shared = getattr(opt, "_shared", None)
    return shared if isinstance(shared, dict) else {}


def stepsize_trace(opt: torch.optim.Optimizer) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, d in _shared(opt).items():
        if name in ("rng", "nonfinite") or not isinstance(d, dict):
            continue
        named = any(w in name.lower() for w in _STEPSIZE_WORDS)
        for k, v in d.items():
            if not (isinstance(v, Tensor) and v.dim() == 0 and v.is_floating_point()):
                continue
            if named or any(w in k.lower() for w in _STEPSIZE_WORDS):
                out[f"{name}.{k}"] = float(v)
    return out


def comm_bytes(opt: torch.optim.Optimizer) -> int:
    total = 0
    shared = _shared(opt)
    for t in getattr(opt, "chain", []):
        attr = getattr(t, "bytes_communicated", None)
        if attr is not None:
            value = attr() if callable(attr) else attr
            total += int(value)
            continue
        for k, v in shared.get(getattr(t, "name", ""), {}).items():
            if "bytes" in k.lower() and isinstance(v, (Tensor, int, float)):
                total += int(v)
    return total
