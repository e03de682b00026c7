"""The options of `signify()` and the chain they build.

`Options` holds the validated keywords; `build_chain` turns them, with the base optimizer's
adapter, into ``[adapter, (running max scale), *middle, ApplyUpdate()]`` and checks that
every transform finds what it reads; `check_options` validates the keywords (TypeError for a
wrong type, ValueError for a bad value), at `signify()` and again for the ones an instance
overrides at construction (`RUNTIME_OPTIONS`).
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import torch

from . import validation
from .adapters import Adapter
from .transforms.apply import ApplyUpdate
from .transforms.base import Transform
from .transforms.scale import RunningMaxScale
from .transforms.sign import NoSign, Sign, StochasticSign

_NONFINITE = ("skip", "raise", "ignore")
#: Options that an instance may override at construction (they do not change the chain).
RUNTIME_OPTIONS = (
    "seed",
    "compile",
    "compile_chunk",
    "state_dtype",
    "nonfinite",
    "flatten",
    "max_grad_norm",
)
CHECKED_OPTIONS = ("sign", "stochastic", "scale_beta", *RUNTIME_OPTIONS)
_STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


@dataclasses.dataclass(frozen=True)
class Options:
    """The keyword options of `signify` (validated)."""

    sign: bool = True
    stochastic: bool = False
    seed: int | None = None
    compile: bool | None = None
    compile_chunk: int = 8
    scale_beta: float = 1.0
    state_dtype: torch.dtype | None = None
    nonfinite: str = "skip"
    flatten: bool = False
    max_grad_norm: float | None = None
    transforms: tuple[Transform, ...] | None = None
    blocks: Any = None
    stepsize: Any = None
    vote: Any = None

    def middle(self) -> list[Transform]:
        """The transforms between the adapter and the parameter write:
        ``[blocks, sign, vote, stepsize]`` from the keywords, or the explicit list."""
        if self.transforms is not None:
            return [copy.deepcopy(t) for t in self.transforms]
        out: list[Transform] = []
        if self.blocks is not None:
            from .transforms.blocks import make_blocks

            out.append(make_blocks(self.blocks))
        if not self.sign:
            out.append(NoSign())
        else:
            out.append(StochasticSign() if self.stochastic else Sign())
        if self.vote is not None:
            from .transforms.vote import make_vote

            out.append(make_vote(self.vote))
        if self.stepsize is not None:
            from .transforms.stepsize import make_stepsize

            out.append(make_stepsize(self.stepsize))
        return out


def warn_blocks_drop_stepsize(middle: list[Transform]) -> None:
    """Warn (to the caller of `signify`) of a pairing that silently keeps a stepsize fixed."""
    from .transforms.blocks import Blocks
    from .transforms.stepsize import StepsizeOracle

    drops = any(isinstance(t, Blocks) and t.inactive == "drop" for t in middle)
    if drops and any(isinstance(t, StepsizeOracle) for t in middle):
        warnings.warn(
            "a stepsize oracle with blocks whose inactive state is dropped (the default "
            "inactive='drop') loses each block's previous gradient at every switch: with one "
            "block a step the estimate never leaves its first step. Use "
            "Blocks(..., inactive='keep') (docs/stepsize.md)",
            stacklevel=4,  # here, make_class, signify, the user's line
        )


def build_chain(adapter: Adapter, options: Options) -> list[Transform]:
    """``[adapter, (running max scale), *middle, ApplyUpdate()]``, with dead state dropped."""
    middle = options.middle()
    for t in middle:
        if isinstance(t, (Adapter, ApplyUpdate)):
            raise ValueError(
                f"transforms must not include {type(t).__name__}: the base's adapter comes "
                "first and the parameter write last, implicitly"
            )
    needs_scale = any(
        "scale" in t.reads - getattr(t, "optional_reads", frozenset()) for t in middle
    )
    has_scale_maker = any("scale" in t.writes for t in middle)
    if needs_scale and not adapter.has_scale and not has_scale_maker:
        middle.insert(0, RunningMaxScale(options.scale_beta))
    chain: list[Transform] = [adapter, *middle, ApplyUpdate()]
    if not any("direction" in t.writes for t in chain):
        raise ValueError(
            "transforms: the chain has no transform that sets a direction (e.g. Sign())"
        )
    names = [t.name for t in chain]
    if len(set(names)) != len(names):
        raise ValueError(f"transform names must be unique in a chain, got {names}")
    # Dead-state elimination: walk back, telling each transform what later ones read.
    needed: set[str] = set()
    for t in reversed(chain):
        t.configure(frozenset(needed))
        needed -= set(t.writes)
        needed |= set(t.reads)
    # Check that every (non-optional) read is produced earlier.
    produced = {"params", "grads", "lr"}
    for t in chain:
        missing = (t.reads - getattr(t, "optional_reads", frozenset())) - produced
        missing -= {"decay", "step_scale"}
        if isinstance(t, Adapter):
            produced |= {"num", "decay", "step_scale"} | ({"scale"} if t.has_scale else set())
            continue
        if missing:
            raise ValueError(
                f"{type(t).__name__} reads {sorted(missing)}, set by no earlier transform"
            )
        produced |= set(t.writes)
    return chain


def check_options(
    *,
    sign: Any,
    stochastic: Any,
    seed: Any,
    compile: Any,
    compile_chunk: Any,
    scale_beta: Any,
    state_dtype: Any,
    nonfinite: Any,
    flatten: Any = False,
    max_grad_norm: Any = None,
) -> None:
    """Validate `signify`'s options (TypeError for a wrong type, ValueError for a bad value)."""
    validation.check_bool("flatten", flatten)
    validation.check_max_grad_norm(max_grad_norm)
    validation.check_bool("sign", sign)
    validation.check_bool("stochastic", stochastic)
    if stochastic and not sign:
        raise ValueError("stochastic=True needs sign=True (sign=False is the base optimizer)")
    validation.check_seed(seed)
    if compile is not None:
        validation.check_bool("compile", compile)
    if isinstance(compile_chunk, bool) or not isinstance(compile_chunk, int):
        raise TypeError(f"compile_chunk must be a power of two, got {compile_chunk!r}")
    if compile_chunk < 1 or compile_chunk & (compile_chunk - 1):
        raise ValueError(f"compile_chunk must be a power of two, got {compile_chunk}")
    if state_dtype is not None and not isinstance(state_dtype, torch.dtype):
        raise TypeError(f"state_dtype must be a torch.dtype or None, got {state_dtype!r}")
    if state_dtype is not None and state_dtype not in _STATE_DTYPES:
        raise ValueError(f"state_dtype must be one of {_STATE_DTYPES} or None, got {state_dtype}")
    if not isinstance(nonfinite, str):
        raise TypeError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
    if nonfinite not in _NONFINITE:
        raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
    RunningMaxScale(scale_beta)  # validates scale_beta
