"""Adapters: one file per base-optimizer family. `adapter_for` picks one for a class."""

from __future__ import annotations

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


def adapter_for(base: type[torch.optim.Optimizer]) -> Adapter:
    """The adapter for ``base``: a registered one if ``base`` is (or subclasses without
    changing ``step``) a known class, else the generic run-and-read path."""
    for cls in ADAPTERS:
        for known in cls.bases:
            if base is known or (issubclass(base, known) and base.step is known.step):
                return cls(base)
    from .generic import GenericAdapter

    return GenericAdapter(base)


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
