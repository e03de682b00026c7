"""What a study reads off an optimizer at its log points (these calls sync the device).

* `state_bytes`: bytes of the tensors in ``opt.state`` (plus a wrapped base's state and
  signify's optimizer-level scalars), each storage counted once. Block schedules that drop
  idle state show it here.
* `stepsize_trace`: for optimizers with a stepsize oracle (a transform with a ``stepsizes``
  method), the step each param group took in the last step, ``opt.stepsizes()``
  (``gamma * lr``), keyed ``"step[g]"`` (the mean over tensors under ``scope="tensor"``).
  Otherwise the 0-d floating scalars that a transform whose name or key says step size
  (``stepsize``, ``alias``, ``sos``, ``gamma``) keeps in ``opt.shared_state``, keyed
  ``"<transform>.<key>"``. Empty for optimizers without an oracle.
* `comm_bytes`: bytes a vote sent so far: a transform's ``stats["total_bytes_sent"]`` (the
  `MajorityVote` accounting) or ``bytes_communicated`` (attribute or method), else the sum of
  its shared scalars whose key contains ``bytes``. 0 without a vote.
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
    oracle = any(callable(getattr(t, "stepsizes", None)) for t in getattr(opt, "chain", []))
    if oracle and callable(getattr(opt, "stepsizes", None)):
        for gi, s in enumerate(opt.stepsizes()):  # type: ignore[attr-defined]
            s = torch.as_tensor(s).detach().float()
            out[f"step[{gi}]"] = float(s.mean()) if s.numel() else float("nan")
        return out
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
        stats = getattr(t, "stats", None)
        if isinstance(stats, dict) and "total_bytes_sent" in stats:
            total += int(stats["total_bytes_sent"])
            continue
        attr = getattr(t, "bytes_communicated", None)
        if attr is not None:
            value = attr() if callable(attr) else attr
            total += int(value)
            continue
        for k, v in shared.get(getattr(t, "name", ""), {}).items():
            if "bytes" in k.lower() and isinstance(v, (Tensor, int, float)):
                total += int(v)
    return total
