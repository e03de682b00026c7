"""`signify()`: build a `torch.optim.Optimizer` subclass from a base optimizer and a chain.

`make_class` makes one class per (base, options): constructed like the base, with the base's
hyperparameter names and defaults, and `SignifiedOptimizer` (in `optimizer`) for the rest.
Classes are registered by a token, so that pickled instances find them again (`_rebuild`).
"""

from __future__ import annotations

import copy
import inspect
import uuid
import weakref
from collections.abc import Iterable
from typing import Any

import torch

from .adapters import adapter_for
from .optimizer import SignifiedOptimizer
from .options import Options, build_chain, check_options, warn_blocks_drop_stepsize
from .transforms.base import Transform

__all__ = ["make_class", "signify"]

CLASSES: weakref.WeakValueDictionary[str, type[SignifiedOptimizer]] = weakref.WeakValueDictionary()


def _base_hyperparameters(base: type[torch.optim.Optimizer]) -> dict[str, Any]:
    sig = inspect.signature(base.__init__)
    out: dict[str, Any] = {}
    for name, par in list(sig.parameters.items())[2:]:  # skip self, params
        if par.kind in (par.VAR_POSITIONAL, par.VAR_KEYWORD):
            continue
        out[name] = par.default
    return out


def signify(
    base: type[torch.optim.Optimizer] | torch.optim.Optimizer,
    transforms: Iterable[Transform] | None = None,
    *,
    sign: bool = True,
    stochastic: bool = False,
    seed: int | None = None,
    compile: bool | None = None,
    compile_chunk: int = 8,
    scale_beta: float = 1.0,
    state_dtype: torch.dtype | None = None,
    nonfinite: str = "skip",
    flatten: bool = False,
    max_grad_norm: float | None = None,
    blocks: Any = None,
    stepsize: Any = None,
    vote: Any = None,
    **unknown: Any,
) -> Any:
    """Turn a torch optimizer (a class or an instance) into its sign-based counterpart.

    Args:
        base: a ``torch.optim.Optimizer`` subclass, or an instance (the result then optimizes
            the same param groups with the same hyperparameters and state).
        transforms: an explicit ordered list of transforms placed between the base's adapter
            and the parameter write, replacing what ``sign``/``stochastic`` would build.
        sign: False gives the base optimizer exactly (no conversion).
        stochastic: the unbiased stochastic sign ``sign(a + sigma * n)`` (StoSignSGD).
        seed: seed of the optimizer's noise (``None``: drawn from torch's global generator).
        compile: run each step as compiled fused graphs (``None``: on CUDA when available).
        compile_chunk: tensors per compiled graph call (a power of two).
        scale_beta: decay of the running-max scale used by bases without a denominator.
        state_dtype: dtype of floating state buffers (``None``: the parameter's dtype).
        nonfinite: ``"skip"`` a step whose gradients hold NaN/Inf (default), ``"raise"``
            (costs a host sync) or ``"ignore"``.
        flatten: keep each param group's parameters (per device and dtype), gradients and
            moments in one buffer, so that a step is one kernel per pass (`signify.flat`:
            the parameters become views of it; elementwise chains only).
        max_grad_norm: clip the gradients to this total 2-norm inside the step, as
            ``torch.nn.utils.clip_grad_norm_`` before ``step()`` would, without writing
            ``.grad``: the norm's read of the gradients is also the non-finite check
            (docs/reliability.md).
        blocks: block-coordinate updates, e.g. ``"depth"`` (ABSignSGD) or a `Blocks`.
        stepsize: a parameter-free stepsize, e.g. ``"alias"`` or a stepsize transform.
        vote: ``"majority"``, a ``ProcessGroup`` or a `MajorityVote`: 1-bit majority vote.

    Returns:
        A ``torch.optim.Optimizer`` subclass (or an instance, when given an instance).
    """
    if unknown:
        raise TypeError(f"signify() got unexpected option(s): {', '.join(sorted(unknown))}")
    check_options(
        sign=sign,
        stochastic=stochastic,
        seed=seed,
        compile=compile,
        compile_chunk=compile_chunk,
        scale_beta=scale_beta,
        state_dtype=state_dtype,
        nonfinite=nonfinite,
        flatten=flatten,
        max_grad_norm=max_grad_norm,
    )
    chain: tuple[Transform, ...] | None = None
    if transforms is not None:
        if isinstance(transforms, Transform):
            transforms = [transforms]
        if isinstance(transforms, (str, bytes)) or not isinstance(transforms, Iterable):
            raise TypeError(
                f"transforms must be a list of Transform instances, got {type(transforms).__name__}"
            )
        chain = tuple(transforms)
        for t in chain:
            if not isinstance(t, Transform):
                raise TypeError(f"transforms must be Transform instances, got {type(t).__name__}")
        if (
            sign is not True
            or stochastic is not False
            or any(x is not None for x in (blocks, stepsize, vote))
        ):
            raise TypeError(
                "pass either an explicit transforms list or the shorthand keywords "
                "(sign=, stochastic=, blocks=, stepsize=, vote=), not both"
            )
    options = Options(
        sign=sign,
        stochastic=stochastic,
        seed=seed,
        compile=compile,
        compile_chunk=compile_chunk,
        scale_beta=float(scale_beta),
        state_dtype=state_dtype,
        nonfinite=nonfinite,
        flatten=flatten,
        max_grad_norm=None if max_grad_norm is None else float(max_grad_norm),
        transforms=chain,
        blocks=blocks,
        stepsize=stepsize,
        vote=vote,
    )
    if isinstance(base, torch.optim.Optimizer):
        cls = make_class(type(base), options)
        return cls.from_optimizer(base)  # type: ignore[attr-defined]
    if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
        raise TypeError(f"base must be a torch.optim.Optimizer subclass or instance, got {base!r}")
    if issubclass(base, SignifiedOptimizer):
        raise TypeError(f"{base.__name__} is already signified")
    return make_class(base, options)


def make_class(base: type[torch.optim.Optimizer], options: Options) -> type[SignifiedOptimizer]:
    if issubclass(base, SignifiedOptimizer):
        raise TypeError(f"{base.__name__} is already signified")
    closure = inspect.signature(base.step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        raise TypeError(
            f"{base.__name__}.step needs a closure (it re-evaluates the loss, e.g. for a line "
            "search): signify converts optimizers whose step reads the gradients once"
        )
    chain = build_chain(adapter_for(base), options)  # a malformed chain fails here
    warn_blocks_drop_stepsize(chain)
    if options.flatten:
        from .flat import check_chain

        check_chain(chain)
    prefix = "Sign" if options.sign else "Signified"
    name = prefix + base.__name__
    base_params = _base_hyperparameters(base)

    def from_optimizer(cls: type[SignifiedOptimizer], opt: torch.optim.Optimizer) -> Any:
        if not isinstance(opt, base):
            raise TypeError(
                f"opt must be a {base.__name__} (the base of {cls.__name__}), "
                f"got {type(opt).__name__}"
            )
        groups = []
        for g in opt.param_groups:
            keep = (*base_params, *opt.defaults, "params", "param_names")  # keys of a **kwargs base
            g2 = {k: v for k, v in g.items() if k in keep}
            groups.append(g2)
        kwargs = {k: v for k, v in opt.defaults.items() if k in base_params}
        new = cls(groups, **kwargs)
        if opt.state:
            # torch's load_state_dict keeps references: copy, so the two never share state.
            new.load_state_dict(copy.deepcopy(opt.state_dict()))
        return new

    doc = (
        f"{base.__module__}.{base.__qualname__} converted by signify.\n\n"
        f"Constructed like the base: ({', '.join(base_params)})."
    )
    token = uuid.uuid4().hex
    cls = type(
        name,
        (SignifiedOptimizer,),
        {
            "base": base,
            "options": options,
            "_base_params": base_params,
            "_token": token,
            "from_optimizer": classmethod(from_optimizer),
            "__doc__": doc,
            "__module__": "signify",
        },
    )
    CLASSES[token] = cls
    return cls
