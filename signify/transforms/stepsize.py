"""Stepsize oracles: transforms that choose the step size ``gamma`` of the sign step.

A stepsize transform sits after the direction (sign, vote) and before the parameter write. It
scales the step: ``x <- x - gamma * lr * (direction + decay * x)``. With an oracle the group's
``lr`` is a *multiplier* of ``gamma``, and it defaults to 1.0 (the transform's ``lr_default``),
so ``signify(torch.optim.SGD, stepsize="alias")(params)`` needs no learning rate; an LR
scheduler still multiplies it.

``make_stepsize(spec)`` builds one from the ``stepsize=`` keyword of `signify`:

=================  ==========================================================================
``"alias"``        `Alias`: ALIAS (Medyakov et al., arXiv 2506.03725), option I by default
``"alias-lowmem"`` `AliasLowMem`: the memory-efficient ALIAS (1 bit of state per parameter)
``"alias-adam"``   `AliasAdam`: the distance estimate of the ALIAS Adam version
``"constant"``     `ConstantStepsize`: ``gamma = 1`` (the null transform: ``lr`` is the step)
a transform        any `StepsizeOracle` instance, used as given
=================  ==========================================================================

How an oracle runs inside a step (no host synchronisation; see `signify.executor`):

1. ``before_step`` (host): zero the accumulators, grow the per-slot scalars if groups or
   parameters were added;
2. ``prepare`` (the prepass, eager or compiled per chunk): per-tensor reductions (an l1 norm,
   a dot product, an extremum) summed or maxed into ``acc_sum`` / ``acc_max``, 0-d device
   tensors indexed by *slot*;
3. ``finalize`` (host code on device scalars): all-reduce the accumulators across ranks if a
   process group is up, then turn them into ``gamma`` per slot, leaving every scalar unchanged
   on a step skipped for non-finite gradients;
4. ``update`` (the elementwise pass): ``lr <- gamma[slot] * lr``, and record what the next step
   needs (the previous gradient or its sign, the size of this step).

The *scope* decides what shares one estimate (a slot): ``"global"`` (one for the optimizer, the
paper's), ``"group"`` (one per param group: per-network learning rates, which Prodigy and
D-Adaptation users ask for) or ``"tensor"`` (one per parameter tensor).

Logging: ``opt.stepsizes()`` returns the step each group took in the last step (``gamma * lr``)
as device tensors; nothing is synchronised until you read them. The raw per-slot ``gamma`` is
``opt.shared_state(device)[name]["gamma"]``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .. import rng, sharding, zero
from .base import State, StepContext, Transform, Update

if TYPE_CHECKING:
    from ..optimizer import SignifiedOptimizer

SCOPES = ("global", "group", "tensor")
_SCALAR = rng.stream_constant("stepsize.scalar")
REDUCTIONS = ("auto", "mean", "sum", "none")


def check_number(name: str, value: Any, *, low: float | None = None, strict: bool = False) -> float:
    """A real, finite number (>= ``low``, or > ``low`` when ``strict``), else a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    if low is not None and (x <= low if strict else x < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {x}")
    return x


class StepsizeOracle(Transform):
    """Base class of stepsize transforms: scope, slots, accumulators, all-reduce, logging.

    Subclasses list their accumulator rows (``sum_rows``: summed over tensors and ranks;
    ``max_rows``: maxed) and per-slot scalars (``slot_init``), and implement `prepare`,
    `compute` (the scalar math of one step, over slots) and `update`.
    """

    reads = frozenset({"direction", "lr", "decay", "step_scale"})
    writes = frozenset({"lr", "step_scale"})
    #: the group ``lr`` when the user gives none: with an oracle, ``lr`` is a multiplier.
    lr_default: ClassVar[float | None] = 1.0
    sum_rows: ClassVar[tuple[str, ...]] = ()
    max_rows: ClassVar[tuple[str, ...]] = ()

    def __init__(self, scope: str = "global", reduce: str = "auto", process_group: Any = None):
        if not isinstance(scope, str) or scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if not isinstance(reduce, str) or reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        if process_group is not None and not (
            torch.distributed.is_available()
            and isinstance(process_group, torch.distributed.ProcessGroup)
        ):
            raise TypeError(
                f"process_group must be a torch.distributed ProcessGroup or None, "
                f"got {type(process_group).__name__}"
            )
        self.scope = scope
        self.reduce = reduce
        self.process_group = process_group
        self._opt: SignifiedOptimizer | None = None
        self._finalize_fn: Callable[..., None] | None = None
        self._shards: Any = None  # the shard group of sharded (FSDP2) parameters
        self._zero: Any = None  # the ZeroRedundancyOptimizer partition (`signify.zero`)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_finalize_fn"] = None  # a compiled function: rebuilt on first use
        state["_zero"] = None  # a weak reference to the ZeroRedundancyOptimizer
        return state

    def unbound_copy(self) -> StepsizeOracle:
        """A copy not bound to any optimizer (the configuration is immutable)."""
        new = copy.copy(self)
        new._opt = None
        new._finalize_fn = None
        new._shards = None
        new._zero = None
        return new

    # ---- per-slot scalars --------------------------------------------------------------
    def slot_init(self) -> dict[str, float]:
        """Per-slot scalars and their initial values (``gamma`` must be one of them)."""
        return {"gamma": 1.0}

    def n_slots(self, opt: SignifiedOptimizer) -> int:
        if self.scope == "global":
            return 1
        if self.scope == "group":
            return len(opt.param_groups)
        return len(opt.all_params())

    def shared_state(self, device: torch.device) -> dict[str, Any]:
        return self._fresh_slots(1, device)

    def _fresh_slots(self, n: int, device: torch.device) -> dict[str, Tensor]:
        out = {
            "acc_sum": torch.zeros(
                max(len(self.sum_rows), 1), n, dtype=torch.float32, device=device
            ),
            "acc_max": torch.zeros(
                max(len(self.max_rows), 1), n, dtype=torch.float32, device=device
            ),
        }
        for k, v in self.slot_init().items():
            out[k] = torch.full((n,), v, dtype=torch.float32, device=device)
        return out

    def _slots(self, opt: SignifiedOptimizer, device: torch.device) -> dict[str, Tensor]:
        """This oracle's shared dict, grown to the current number of slots."""
        shared = opt.shared_state(device)
        mine = shared.setdefault(self.name, {})
        n = self.n_slots(opt)
        have = mine["gamma"].numel() if "gamma" in mine else 0
        if have < n:
            fresh = self._fresh_slots(n, device)
            for k, v in fresh.items():
                old = mine.get(k)
                if old is not None and old.numel() > 0:
                    v[..., : old.shape[-1]] = old.to(device)
                mine[k] = v
        return mine

    # ---- hooks -------------------------------------------------------------------------
    def bind(self, opt: SignifiedOptimizer) -> None:
        self._opt = opt
        self._shards = sharding.shard_group(opt.all_params())
        if self._shards is not None and self.reduce in ("mean", "none"):
            raise ValueError(
                f"{type(self).__name__}: reduce={self.reduce!r} with sharded (FSDP2) "
                "parameters would give each shard its own estimate; their norms must be "
                "summed over the shards: leave reduce='auto' (or pass 'sum')"
            )
        self._zero = zero.detect(opt)
        zero.check_reduce(self)

    def plan(self, params: Sequence[Tensor], group_index: int) -> State:
        """``slots``: the slot of each tensor (one entry when the whole chunk shares one)."""
        if not params:
            return {}
        device = params[0].device
        if self.scope == "tensor":
            assert self._opt is not None
            position = {id(p): i for i, p in enumerate(self._opt.all_params())}
            idx = [position[id(p)] for p in params]
        else:
            idx = [0 if self.scope == "global" else group_index]
        return {"slots": [torch.tensor(idx, dtype=torch.int64, device=device)]}

    def before_step(self, opt: SignifiedOptimizer, active: list[list[Tensor]]) -> None:
        device = next(p for ps in active for p in ps).device
        mine = self._slots(opt, device)
        mine["acc_sum"].zero_()
        mine["acc_max"].fill_(-math.inf)  # slots without contributions stay -inf

    def supports_flat(self) -> bool:
        # A slot per group or one for all: a bucket's sums and maxima are those of its
        # tensors, and its per-tensor scalars agree (the executor checks and mirrors them).
        return self.scope != "tensor"

    def graph_safe(self) -> bool:
        # ``before_step`` resets the accumulators in place (eagerly, before a replay);
        # ``finalize`` is a compiled function of per-slot tensors. Only the all-reduce, a
        # host-issued collective, keeps a step out of a CUDA graph.
        return self.reduce_mode() == "none"

    def finalize(self, opt: SignifiedOptimizer) -> None:
        mine = opt._shared[self.name]
        # The ranks' ok flags travel with the accumulators: under a majority vote one rank
        # may skip its own step (a non-finite gradient) while the others do not, and every
        # rank must still commit the same gamma (the vote's write moves them all by it).
        ok = self.all_reduce(mine, opt._executor.ok)
        fn = self._finalize_fn
        if fn is None:
            fn = self.compute
            if opt.compiled:
                fn = torch.compile(fn, fullgraph=True, dynamic=False)
            self._finalize_fn = fn
        scalars = {k: v for k, v in mine.items() if isinstance(v, Tensor)}
        fn(scalars, ok)

    def compute(self, s: dict[str, Tensor], ok: Tensor | None) -> None:
        """The scalar math of one step, in place on the per-slot tensors ``s``."""

    # ---- prepass helpers ---------------------------------------------------------------
    def accumulate(
        self,
        ctx: StepContext,
        state: State,
        sums: list[list[Tensor]],
        maxes: list[list[Tensor]],
    ) -> None:
        """Add (``sums``) or max (``maxes``) per-tensor values into the slots: ``sums[r][i]``
        is row ``r`` of tensor ``i``, a 0-d tensor; ``-inf`` contributes nothing to a max."""
        mine = ctx.shared[self.name]
        slots = state["slots"][0]
        for rows, buf, op in ((sums, "acc_sum", "sum"), (maxes, "acc_max", "max")):
            if not rows:
                continue
            acc = mine[buf]
            vals = torch.stack([torch.stack(list(r)).to(acc.dtype) for r in rows])  # [rows, k]
            if self.scope != "tensor":  # the chunk shares one slot: reduce it first
                vals = vals.sum(1, keepdim=True) if op == "sum" else vals.amax(1, keepdim=True)
            cur = acc[:, slots]
            acc[:, slots] = cur + vals if op == "sum" else torch.maximum(cur, vals)

    def gamma_of(self, ctx: StepContext, state: State, n: int) -> list[Tensor]:
        """This step's ``gamma`` for each of the chunk's ``n`` tensors (0-d tensors)."""
        g = ctx.shared[self.name]["gamma"][state["slots"][0]]
        if self.scope == "tensor":
            return [g[i] for i in range(n)]
        return [g[0]] * n

    def scale_lr(self, u: Update, gammas: list[Tensor]) -> list[Tensor]:
        """Multiply the step by ``gamma``; returns the effective step of each tensor."""
        if self.scope == "tensor":
            base = u.step_scale
            u.step_scale = [gm if base is None else gm * base[i] for i, gm in enumerate(gammas)]
            return [u.lr * s for s in u.step_scale]
        u.lr = u.lr * gammas[0]
        if u.step_scale is None:
            return [u.lr] * len(gammas)
        return [u.lr * s for s in u.step_scale]

    # ---- distributed -------------------------------------------------------------------
    def group(self) -> Any:
        """The process group of the reductions: the one given, else the shard group of
        sharded parameters (FSDP2), else ZeroRedundancyOptimizer's, else the default group."""
        if self.process_group is not None:
            return self.process_group
        if self._shards is None and self._zero is not None:
            return self._zero.group
        return self._shards

    def reduce_mode(self) -> str:
        """``"auto"`` is ``"sum"`` over the shard group for sharded parameters (each rank
        holds a part of every tensor) and over ZeroRedundancyOptimizer's group (each rank
        steps some of the tensors; ``"none"`` for ``scope="tensor"``: a tensor's slot is its
        owner's), ``"mean"`` over the default group otherwise (data parallel: replicated
        parameters, per-rank gradients)."""
        if self.reduce == "none" or (self._zero is not None and self.scope == "tensor"):
            return "none"
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            if self.reduce in ("mean", "sum") and self.process_group is not None:
                raise RuntimeError("a process_group was given but torch.distributed is not up")
            return "none"
        if torch.distributed.get_world_size(self.group()) == 1:
            return "none"
        if self.reduce == "auto":
            return "sum" if self._shards is not None or self._zero is not None else "mean"
        return self.reduce

    def all_reduce(self, mine: dict[str, Tensor], ok: Tensor | None = None) -> Tensor | None:
        """Make every rank see the same accumulators: one all-gather of the few floats, then
        sums (averaged in ``"mean"`` mode) and maxima. Returns ``ok`` and-ed over the ranks
        (it rides in the same all-gather), so that every rank commits the step's scalars or
        none does."""
        mode = self.reduce_mode()
        if mode == "none":
            return ok
        import torch.distributed as dist

        acc_sum, acc_max = mine["acc_sum"], mine["acc_max"]
        flag = torch.ones(1, device=acc_sum.device) if ok is None else ok.float().reshape(1)
        flat = torch.cat([acc_sum.reshape(-1), acc_max.reshape(-1), flag])
        group = self.group()
        world = dist.get_world_size(group)
        out = torch.empty(world * flat.numel(), dtype=flat.dtype, device=flat.device)
        dist.all_gather_into_tensor(out, flat, group=group)
        out = out.view(world, -1)
        k = acc_sum.numel()
        sums = out[:, :k].sum(0)
        if mode == "mean":
            sums = sums / world
        acc_sum.copy_(sums.view_as(acc_sum))
        acc_max.copy_(out[:, k:-1].amax(0).view_as(acc_max))
        return None if ok is None else out[:, -1].min() > 0

    def mean_over_ranks(self, x: Tensor) -> Tensor:
        """``x`` averaged over ranks (for the loss at ``x_0``); unchanged without a group."""
        if self.reduce_mode() == "none":
            return x
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x, group=self.group())
        return x / dist.get_world_size(self.group())

    # ---- logging -----------------------------------------------------------------------
    def stepsizes(self, opt: SignifiedOptimizer) -> list[Tensor]:
        """Per group, the step taken in the last step, ``gamma * lr`` (times the base's own
        per-tensor factor, if any): a 0-d tensor, or a 1-D tensor over the group's
        parameters for ``scope="tensor"`` (each the step that tensor took last). Nothing is
        synchronised until they are read."""
        key = self.state_prefix + "s_prev"
        mine = opt._shared.get(self.name, {})
        plan = opt._executor._plan
        last = {id(p) for p in plan.grad_params} if plan is not None else set()
        out: list[Tensor] = []
        pos = 0
        for gi, group in enumerate(opt.param_groups):
            ps = group["params"]
            taken = [opt.state[p][key] for p in ps if key in opt.state.get(p, {})]
            # a tensor without a gradient in the last step keeps an older step
            latest = [
                opt.state[p][key] for p in ps if id(p) in last and key in opt.state.get(p, {})
            ]
            if self.scope == "tensor" and len(taken) == len(ps) and taken:
                out.append(torch.stack([t.reshape(()) for t in taken]))
            elif self.scope != "tensor" and (latest or taken):
                out.append((latest or taken)[0].reshape(()))
            elif "gamma" in mine:  # before the first step: the estimate times lr
                slot = (
                    slice(pos, pos + len(ps))
                    if self.scope == "tensor"
                    else (0 if self.scope == "global" else gi)
                )
                out.append(mine["gamma"][slot] * group["lr"])
            else:
                out.append(torch.tensor(float("nan")))
            pos += len(ps)
        return out

    def record_step(self, ctx: StepContext, state: State, eff: list[Tensor]) -> None:
        """Keep each tensor's applied step (for `stepsizes` and option I's ``d~``)."""
        for i, e in enumerate(eff):
            self.write_own(ctx, i, state["s_prev"][i], e, _SCALAR)

    @staticmethod
    def write_own(ctx: StepContext, i: int, dst: Tensor, value: Tensor, stream: int) -> None:
        """`StepContext.write` of this rank's own state, skipped where this rank skipped its
        step even when a vote before the oracle cleared ``ctx.ok`` for the group's parameter
        write: a rank that stored its non-finite gradient would hand NaN to every rank's next
        estimate through the all-reduce."""
        if ctx.own_ok is not None and ctx.own_ok is not ctx.ok:  # else write() masks it
            value = torch.where(ctx.own_ok, value, dst)
        ctx.write(i, dst, value, stream)

    def extra_state(self) -> dict[str, Any] | None:
        return {"scope": self.scope}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("scope", self.scope) != self.scope:
            raise ValueError(
                f"{type(self).__name__}: the state_dict was saved with scope="
                f"{state.get('scope')!r}, this optimizer has scope={self.scope!r}"
            )

    def after_load(self, opt: SignifiedOptimizer) -> None:
        mine = opt._shared.get(self.name, {})
        have, n = (mine["gamma"].numel() if "gamma" in mine else 1), self.n_slots(opt)
        if have not in (1, n):  # one slot: saved before the first step, grown on use
            raise ValueError(
                f"{type(self).__name__}: the state_dict holds {have} stepsize slots, this "
                f"optimizer has {n} (scope={self.scope!r}): other param groups or parameters"
            )
        # torch's load_state_dict casts state to the parameter's dtype: packed bits back
        key = self.state_prefix + "bits"
        for st in opt.state.values():
            bits = st.get(key)
            if isinstance(bits, Tensor) and bits.dtype != torch.uint8:
                st[key] = bits.to(torch.uint8)

    def extra_repr(self) -> str:
        return f"scope={self.scope!r}"


class ConstantStepsize(StepsizeOracle):
    """``gamma = 1``: the group's ``lr`` is the step, as without an oracle (the null
    transform, for ablations). ``lr`` keeps the base's default."""

    name = "constant_stepsize"
    lr_default = None
    reads = frozenset()
    writes = frozenset()

    def __init__(self) -> None:
        super().__init__("global", "none")

    def shared_state(self, device: torch.device) -> dict[str, Any]:
        return {}

    def bind(self, opt: SignifiedOptimizer) -> None:
        self._opt = opt  # no reductions: nothing to check for sharded parameters

    def plan(self, params: Sequence[Tensor], group_index: int) -> State:
        return {}

    def before_step(self, opt: SignifiedOptimizer, active: list[list[Tensor]]) -> None:
        pass

    def finalize(self, opt: SignifiedOptimizer) -> None:
        pass

    def stepsizes(self, opt: SignifiedOptimizer) -> list[Tensor]:
        return opt._last_lrs()  # the lr of the last step, as an oracle's stepsizes() give

    def extra_repr(self) -> str:
        return ""


def make_stepsize(spec: Any) -> Transform:
    """The transform for ``signify(..., stepsize=spec)``: a name or a `StepsizeOracle`."""
    from .stepsize_alias import Alias, AliasLowMem
    from .stepsize_alias_adam import AliasAdam

    if isinstance(spec, StepsizeOracle):
        return spec.unbound_copy()  # each optimizer binds its own
    if isinstance(spec, Transform):
        raise TypeError(
            f"stepsize must be a name or a StepsizeOracle, got the transform {type(spec).__name__}"
        )
    if not isinstance(spec, str):
        raise TypeError(f"stepsize must be a name or a StepsizeOracle, got {spec!r}")
    makers: dict[str, Callable[[], Transform]] = {
        "alias": Alias,
        "alias-lowmem": AliasLowMem,
        "alias-adam": AliasAdam,
        "constant": ConstantStepsize,
    }
    if spec not in makers:
        raise ValueError(f"stepsize must be one of {sorted(makers)} or a transform, got {spec!r}")
    return makers[spec]()
