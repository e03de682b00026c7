"""Transforms: one file per concern. See `signify.transforms.base` for the protocol."""

from .apply import ApplyUpdate
from .base import State, StepContext, Transform, Update
from .scale import RunningMaxScale
from .sign import ExpectedSign, NoSign, Sign, StochasticSign
from .vote import MajorityVote
from .weight_decay import DecoupledWeightDecay

__all__ = [
    "ApplyUpdate",
    "DecoupledWeightDecay",
    "ExpectedSign",
    "MajorityVote",
    "NoSign",
    "RunningMaxScale",
    "Sign",
    "State",
    "StepContext",
    "StochasticSign",
    "Transform",
    "Update",
]
