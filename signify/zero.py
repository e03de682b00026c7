"""Parameters partitioned by ``torch.distributed.optim.ZeroRedundancyOptimizer`` (ZeRO-1).

ZeRO builds one optimizer of the given class per rank over that rank's partition of the
parameters (whole tensors, disjoint), steps it, then broadcasts each tensor from its owner.
An elementwise step needs nothing from other ranks; what looks across tensors does. A
signified optimizer that ZeRO builds (`detect`, once, at construction) therefore:

* reduces over ZeRO's process group what spans the model: a stepsize oracle's norms are
  summed (``reduce="auto"`` is ``"sum"``; ``scope="tensor"`` keeps each tensor's estimate on
  its owner, ``"none"``), so are the squares of the clipping norm and the non-finite flags
  (every rank skips a step together, as one process would);
* takes part in those collectives on a rank with nothing to step (an empty partition, or no
  gradient in it this step), with a neutral contribution (`idle`), instead of leaving the
  others waiting;
* keys each tensor's noise by its position in ZeRO's ``param_groups``, as one process over
  all of them does: with the same seed, the same draws;
* carries each rank's ``state_dict()["signify"]`` through ZeRO's consolidated
  ``state_dict()`` (under ``"signify_zero"``) and back in ZeRO's ``load_state_dict``, which
  otherwise drop it (`_save_hook`, `_load_hook`).

The majority vote and block schedules are refused (`refuse`): both assume every rank steps
every parameter; so is a stepsize's ``reduce=`` that cannot be right (`check_reduce`). The
detection looks for ZeRO's ``_init_local_optimizer`` among the callers of the optimizer's
constructor (a code-object comparison, at construction only).
"""

from __future__ import annotations

import sys
import weakref
from itertools import chain
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import gradcheck, sharding

if TYPE_CHECKING:
    from .executor import Executor
    from .optimizer import SignifiedOptimizer

#: the key of ZeRO's consolidated ``state_dict()`` holding each rank's signify entry
ENTRY = "signify_zero"
_DEPTH = 16  # frames searched above the constructor's hooks


class Partition:
    """This rank's place in a ZeroRedundancyOptimizer: its process group and rank."""

    def __init__(self, zero: Any) -> None:
        self._zero = weakref.ref(zero)
        self.group = zero.process_group
        self.rank = int(zero.rank)
        self.world = int(zero.world_size)
        self.device = zero.param_groups[0]["params"][0].device

    def positions(self, opt: SignifiedOptimizer) -> dict[Tensor, int]:
        """Each parameter's position among ZeRO's (its noise key, as in one process)."""
        zero = self._zero()
        params = opt.all_params()
        if zero is not None:
            everything = list(chain.from_iterable(g["params"] for g in zero.param_groups))
            if {id(p) for p in params} <= {id(q) for q in everything}:
                return {p: i for i, p in enumerate(everything)}
        return {p: i for i, p in enumerate(params)}


def detect(opt: SignifiedOptimizer) -> Partition | None:
    """The ZeRO partition ``opt`` was built for (None outside ZeRO). Looked up once, while
    the optimizer is constructed, and kept on it; the first lookup registers the
    checkpoint hooks on the ZeroRedundancyOptimizer."""
    if "_zero" in opt.__dict__:
        return opt.__dict__["_zero"]  # type: ignore[no-any-return]
    found = None
    zero_cls = _zero_class()
    # where ZeRO builds its rank's optimizer (torch 2.13; tests/test_zero.py notices a change)
    code = getattr(getattr(zero_cls, "_init_local_optimizer", None), "__code__", None)
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_DEPTH):
        if frame is None or code is None:
            break
        if frame.f_code is code:
            zero = frame.f_locals.get("self")
            if isinstance(zero, zero_cls):
                found = Partition(zero)
                zero.register_state_dict_post_hook(_save_hook)
                zero.register_load_state_dict_pre_hook(_load_hook)
            break
        frame = frame.f_back
    opt.__dict__["_zero"] = found
    return found


def _zero_class() -> Any:
    # Looked up, not imported: a ZeroRedundancyOptimizer building this optimizer has imported
    # its module, and importing it here (FSDP along with it) would add about 0.35 s to the
    # first construction of every signified optimizer.
    module = sys.modules.get("torch.distributed.optim")
    return getattr(module, "ZeroRedundancyOptimizer", None)


def of(opt: Any) -> Partition | None:
    """The partition recorded on ``opt`` by `detect` (None when there is none)."""
    return getattr(opt, "__dict__", {}).get("_zero")


def positions(opt: SignifiedOptimizer) -> dict[Tensor, int]:
    """Each parameter's position for its noise key: ZeRO's, else the optimizer's own."""
    part = of(opt)
    if part is not None:
        return part.positions(opt)
    return {p: i for i, p in enumerate(opt.all_params())}


def refuse(opt: SignifiedOptimizer, who: str, why: str) -> None:
    """Raise when ``opt`` is a ZeroRedundancyOptimizer's partition: ``who`` cannot run."""
    if detect(opt) is not None:
        raise ValueError(
            f"{who} does not work under torch.distributed.optim.ZeroRedundancyOptimizer: "
            f"each rank steps only its own partition of the parameters; {why}"
        )


def check_reduce(oracle: Any) -> None:
    """A stepsize oracle's ``reduce=`` that cannot be right on a partition raises: the
    norms of disjoint partitions add up (``"sum"``); a ``"tensor"`` slot is its owner's."""
    if oracle._zero is None or oracle.reduce == "auto":
        return
    per_tensor = oracle.scope == "tensor"
    want = "none" if per_tensor else "sum"
    if oracle.reduce != want:
        why = (
            "each tensor's estimate lives on the rank that owns the tensor"
            if per_tensor
            else "the norms of the ranks' disjoint partitions must be summed"
        )
        raise ValueError(
            f"{type(oracle).__name__}(scope={oracle.scope!r}): reduce={oracle.reduce!r} under "
            f"torch.distributed.optim.ZeroRedundancyOptimizer is wrong: {why}; leave "
            f"reduce='auto' (or pass {want!r})"
        )


# ------------------------------------------------------------------------ a rank at rest
def idle(ex: Executor) -> None:
    """A rank with nothing to step joins the collectives the others run in this step, in
    their order (`Executor.step`, `Executor._run`), with neutral values: no non-finite
    gradient, a zero norm, zero sums and ``-inf`` maxima. Its oracles commit the same
    scalars as the others, so they stay equal on every rank."""
    from .transforms.stepsize import StepsizeOracle

    part, opt = ex.partition, ex.opt
    assert part is not None
    device, group = part.device, part.group
    oracles = [t for t in ex.chain if isinstance(t, StepsizeOracle) and t.reduce_mode() != "none"]
    if ex.nonfinite == "raise":  # (a host sync, as on the other ranks)
        if sharding.nonfinite_anywhere(torch.zeros(1, device=device), "graph", group).item():
            raise FloatingPointError("non-finite gradient (nonfinite='raise')")
    for t in oracles:  # the accumulators zeroed; option II's f(x_0) averaged on first use
        t.before_step(opt, [[torch.empty(0, device=device)]])
    if ex.clip_in_graph:
        gradcheck.grad_norm([], device, group)
    elif ex.nonfinite == "skip":
        sharding.nonfinite_anywhere(torch.zeros(1, device=device), "graph", group)
    ex.ok = torch.ones((), dtype=torch.bool, device=device)
    for t in oracles:
        t.finalize(opt)


# ------------------------------------------------------------------------ checkpoints
def _save_hook(zero: Any, sd: dict[str, Any]) -> None:
    """ZeRO's ``state_dict()`` keeps only the ranks' ``state`` entries: add their signify
    entries, in rank order (consolidated by ``consolidate_state_dict`` on this rank)."""
    entries = [local.get("signify") for local in getattr(zero, "_all_state_dicts", [])]
    if entries and all(e is not None for e in entries):
        sd[ENTRY] = entries


def _load_hook(zero: Any, sd: dict[str, Any]) -> None:
    """Runs inside ZeRO's ``load_state_dict``, after it wrote this rank's per-parameter
    state into the local optimizer and before it copies the saved group keys into it.
    Restores the local optimizer's signify state: this rank's entry of a ZeRO checkpoint
    saved by as many ranks, or the entry of a single-process signify checkpoint (the same
    for every rank: the random stream, and ``"global"`` or ``"group"`` stepsize scalars)."""
    opt = zero.optim
    part = of(opt)
    if part is None:
        return
    entry = None
    if ENTRY in sd:
        entries = sd[ENTRY]
        if not isinstance(entries, list) or len(entries) != part.world:
            n = len(entries) if isinstance(entries, list) else entries
            raise ValueError(
                f"this ZeroRedundancyOptimizer checkpoint holds the signify state of {n} "
                f"ranks: load it on as many, over the same parameters (this group has "
                f"{part.world})"
            )
        entry = entries[part.rank]
    else:
        entry = sd.get("signify")
        groups = sd.get("param_groups", [])
        for g in groups:  # never a live group key: ZeRO copies every saved key into them
            found = g.pop("signify", None) if isinstance(g, dict) else None
            entry = found if entry is None else entry
    if entry is not None:
        opt._check_extra(entry)
    for p in opt.all_params():  # ZeRO moved every 0-d tensor to the CPU
        st = opt.state.get(p)
        if st:
            opt.state[p] = {
                k: v.to(p.device) if isinstance(v, Tensor) else v for k, v in st.items()
            }
    opt._restore_loaded(entry, copy_tensors=True)  # as signify's own load
