"""Transforms: one file per concern. See `signify.transforms.base` for the protocol."""

from .apply import ApplyUpdate
from .base import State, StepContext, Transform, Update
from .blocks import Blocks
from .scale import RunningMaxScale
from .sign import ExpectedSign, NoSign, Sign, StochasticSign
from .stepsize import ConstantStepsize, StepsizeOracle
from .stepsize_alias import Alias, AliasLowMem
from .stepsize_alias_adam import AliasAdam
from .vote import MajorityVote
from .weight_decay import DecoupledWeightDecay

__all__ = [
    "Alias",
    "AliasAdam",
    "AliasLowMem",
    "ApplyUpdate",
    "Blocks",
    "ConstantStepsize",
    "DecoupledWeightDecay",
    "ExpectedSign",
    "MajorityVote",
    "NoSign",
    "RunningMaxScale",
    "Sign",
    "State",
    "StepContext",
    "StepsizeOracle",
    "StochasticSign",
    "Transform",
    "Update",
]
