"""Transforms: one file per concern. See `signify.transforms.base` for the protocol."""

from .apply import ApplyUpdate
from .base import State, StepContext, Transform, Update
from .scale import RunningMaxScale
from .sign import ExpectedSign, NoSign, Sign, StochasticSign
from .stepsize import ConstantStepsize, StepsizeOracle
from .stepsize_alias import Alias, AliasLowMem
from .stepsize_alias_adam import AliasAdam
from .weight_decay import DecoupledWeightDecay

__all__ = [
    "Alias",
    "AliasAdam",
    "AliasLowMem",
    "ApplyUpdate",
    "ConstantStepsize",
    "DecoupledWeightDecay",
    "ExpectedSign",
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
