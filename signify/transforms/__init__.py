"""Transforms: one file per concern. See `signify.transforms.base` for the protocol."""

from .apply import ApplyUpdate
from .base import State, StepContext, Transform, Update
from .blocks import Blocks
from .scale import RunningMaxScale
from .sign import ExpectedSign, NoSign, Sign, StochasticSign
from .vote import MajorityVote
from .weight_decay import DecoupledWeightDecay

__all__ = [
    "ApplyUpdate",
    "Blocks",
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
