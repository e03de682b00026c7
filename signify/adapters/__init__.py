"""Adapters: one file per base-optimizer family. `adapter_for` picks one for a class."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

import torch

from .adagrad import AdagradAdapter
from .adam import AdamAdapter
from .adamax import AdamaxAdapter
from .base import Adapter
from .nadam import NAdamAdapter
from .radam import RAdamAdapter
from .rmsprop import RMSpropAdapter
from .sgd import SGDAdapter

ADAPTERS: list[type[Adapter]] = [
    SGDAdapter,
    AdamAdapter,
    AdamaxAdapter,
    RMSpropAdapter,
    AdagradAdapter,
    NAdamAdapter,
    RAdamAdapter,
]


def adapter_for(
    base: type[torch.optim.Optimizer], hyper: Mapping[str, Any] | None = None
) -> Adapter:
    """The adapter for ``base``: a registered one if ``base`` is (or subclasses without
    changing ``step``) a known class; else the traced one (`signify.adapters.traced`) when
    the base's step traces with the settings ``hyper`` (its defaults if None); else the
    generic run-and-read path. ``SIGNIFY_TRACED=0`` skips tracing (run-and-read for every
    base without a hand-written adapter, e.g. to check one path against the other)."""
    for cls in ADAPTERS:
        for known in cls.bases:
            if base is known or (issubclass(base, known) and _same_step(base, known)):
                return cls(base)
    if os.environ.get("SIGNIFY_TRACED", "1") != "0":
        from .traced import TracedAdapter

        traced = TracedAdapter.build(base, _defaults(base) if hyper is None else hyper)
        if traced is not None:
            return traced
    from .generic import GenericAdapter

    return GenericAdapter(base)


def _same_step(base: type[torch.optim.Optimizer], known: type[torch.optim.Optimizer]) -> bool:
    # torch wraps a class's step in a profiling hook when its first instance is built, so a
    # subclass built once has a wrapper of the same step: compare what the wrappers wrap
    return inspect.unwrap(base.step) is inspect.unwrap(known.step)


def _defaults(base: type[torch.optim.Optimizer]) -> dict[str, Any]:
    params = list(inspect.signature(base.__init__).parameters.values())[2:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


__all__ = [
    "ADAPTERS",
    "AdagradAdapter",
    "AdamAdapter",
    "AdamaxAdapter",
    "Adapter",
    "NAdamAdapter",
    "RAdamAdapter",
    "RMSpropAdapter",
    "SGDAdapter",
    "adapter_for",
]
