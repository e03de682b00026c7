"""signify: turn any PyTorch optimizer into a sign-based one by composing transforms.

SignAdam = signify(torch.optim.Adam, stochastic=True)
opt = SignAdam(model.parameters(), lr=1e-4)
"""

from . import adapters, rng, sos, transforms
from .factory import signify
from .optimizer import SignifiedOptimizer
from .presets import SignAdamax, Signum, StoSignSGD

__version__ = "0.1.0"

__all__ = [
    "SignAdamax",
    "SignifiedOptimizer",
    "Signum",
    "StoSignSGD",
    "adapters",
    "rng",
    "signify",
    "sos",
    "transforms",
]
