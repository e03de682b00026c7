"""The step that ``torch.distributed.checkpoint.state_dict`` takes to make state, made without
stepping.

``get_optimizer_state_dict`` and ``set_optimizer_state_dict`` call torch's
``_init_optim_state(optim)`` first: when ``optim.state`` is empty and no parameter has a
gradient, it sets zero gradients, sets every group's ``lr`` to 0 and calls ``optim.step()``,
so that the state has its keys (``set_optimizer_state_dict`` with a flattened state rebuilds a
parameter's state only from the keys its live state has). A signified step is not a no-op
with ``lr`` 0: it advances the noise counter, the step counts, ALIAS's accumulators and the
block clock (a block schedule with ``inactive="drop"`` has no state between steps, so every
save stepped it). That step instead only creates the per-parameter state the next step would
create and keep, and the optimizer-level state (seed, counters, stepsize scalars) as the
first step would create it (`init_state`); nothing else changes (docs/reliability.md). The
state then has every key a checkpoint of the optimizer holds: a fresh optimizer's
``get_optimizer_state_dict`` is the template ``dcp.load`` fills.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

from torch import Tensor

from .sharding import local
from .transforms.blocks import Blocks

if TYPE_CHECKING:
    from .optimizer import SignifiedOptimizer

__all__ = ["init_state", "initializing"]

_MODULE = "torch.distributed.checkpoint.state_dict"
_CALLER = "_init_optim_state"
#: frames between ``SignifiedOptimizer._step`` and its caller: the no_grad and dynamo-disable
#: wrappers, ``step``, torch's step-hook wrapper, an LR scheduler's counting wrapper
_DEPTH = 12


def initializing(opt: SignifiedOptimizer) -> bool:
    """Whether the running step of ``opt`` (whose state is empty) is torch's
    ``_init_optim_state``'s: a dict lookup when DCP's module was never imported, and a look
    at the first group's ``lr`` (that init sets 0) before a walk up a dozen frames: 0.3 us a
    step with a number ``lr``, 1.8 with a tensor one, on this CPU, for a block schedule
    dropping its state (the one whose state is empty at every step)."""
    if _MODULE not in sys.modules:
        return False
    lr = opt.param_groups[0].get("lr") if opt.param_groups else None
    if isinstance(lr, (int, float)) and lr != 0:
        return False  # (a tensor lr is not compared: on a GPU that would synchronise)
    code = _code()
    if code is None:
        return False
    frame = sys._getframe(2)
    for _ in range(_DEPTH):
        if frame is None:
            return False
        if frame.f_code is code:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


@functools.cache
def _code() -> Any:
    """The code of torch's ``_init_optim_state`` (None where this torch has none)."""
    fn = getattr(sys.modules[_MODULE], _CALLER, None)
    return getattr(fn, "__code__", None)


def init_state(opt: SignifiedOptimizer) -> None:
    """Create, for every parameter with a gradient (torch's zeros), the per-parameter state
    its next step would create and keep: no parameter, clock, counter or optimizer-level
    state changes. A block schedule with ``inactive="drop"`` keeps none between steps (the
    next block's state is created at its step): its scheduled parameters get none, and the
    checkpoint holds what the live optimizer holds. The optimizer-level state is created as
    a first step creates it (values set at its creation, not by it)."""
    dropped: set[Tensor] = set()
    for t in opt._chain:
        if isinstance(t, Blocks) and t.inactive == "drop":
            dropped.update(p for ps in t.blocks for p in ps)
    active = [
        [p for p in g["params"] if p.grad is not None and p not in dropped]
        for g in opt.param_groups
    ]
    if any(active):
        opt._executor.planner.ensure_state(active)
        opt._executor.invalidate()
    first = next((p for ps in active for p in ps), None)
    if first is None:
        first = next(iter(opt.all_params()), None)
    if first is not None:
        opt.shared_state(local(first).device)
