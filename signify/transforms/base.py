"""The transform protocol.

A transform is a small object with two pure-looking methods over lists of tensors, in the
manner of optax's ``GradientTransformation``:

* ``init(params, hyper) -> state``: per-parameter state, as ``{key: [tensor per param]}``;
* ``update(u, state, ctx) -> (u, state)``: read and write fields of the `Update` that flows
  through the chain, and update ``state``.

State tensors are updated in place through ``ctx.write`` (which applies the non-finite skip
mask and rounds into low-precision buffers), so the same code runs eagerly and inside one
``torch.compile`` graph. Everything a transform reads from ``ctx.hyper`` is a 0-d tensor, so a
learning-rate schedule never recompiles; what it reads from ``ctx.static`` (flags such as
``amsgrad``, or whether ``weight_decay`` is non-zero) is a compile-time constant.

The fields of `Update`:

``params``, ``grads``
    the parameters and their gradients, flattened to 1-D;
``num`` (a), ``scale`` (sigma)
    the base optimizer's update written as ``x <- x - lr * a / sigma`` (``scale`` is ``None``
    when the base has no denominator);
``direction``
    what the parameter write subtracts, times the step size;
``lr``
    the step size, a 0-d tensor (the group's ``lr``, or a stepsize oracle's estimate times it);
``step_scale``
    optional per-tensor 0-d multipliers of ``lr`` that belong to the base (Adagrad's decay);
``decay``
    the decoupled weight decay coefficient, applied as ``x <- x - lr * decay * x``.

Optional hooks, used by transforms that need more than elementwise work (each documented on
`Transform`): ``bind``, ``select``, ``before_step``, ``prepare``/``finalize`` (global
reductions before the update), ``exchange`` (a collective between two elementwise passes),
``after_step``, ``state_dict``/``load_state_dict`` (state that is not per parameter).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .. import rng

if TYPE_CHECKING:
    from ..optimizer import SignifiedOptimizer

State = dict[str, list[Tensor]]


def _reduce_rows() -> int:
    raw = os.environ.get("SIGNIFY_REDUCE_ROWS", "16384")
    if not raw.isdigit():
        raise ValueError(f"SIGNIFY_REDUCE_ROWS must be a non-negative integer, got {raw!r}")
    return int(raw)


#: Row length of the two-stage form of large whole-tensor sums (`total`); 0: one ``sum()``.
REDUCE_ROWS = _reduce_rows()
#: The fewest rows for which `total` sums rows first.
REDUCE_MIN_ROWS = 2048


def total(x: Tensor) -> Tensor:
    """The sum of all of ``x``'s elements, a 0-d tensor. A tensor of at least
    ``REDUCE_MIN_ROWS`` whole rows of ``REDUCE_ROWS`` elements (``SIGNIFY_REDUCE_ROWS``,
    default 16384; 0 turns it off) sums its rows first: a reduction along contiguous rows,
    one program per row, instead of inductor's split reduction of a long vector. Measured on
    an H100 (docs/stepsize.md): the ALIAS prepass over a 134M-element flat bucket went from
    1.48 to 1.27 ms a step; on 4M-element tensors (256 rows) it was slower, hence the
    minimum. Every whole-tensor sum of one pass must take the same form for inductor to
    fuse them into one read of the inputs."""
    c, n = REDUCE_ROWS, x.numel()
    if c and n >= REDUCE_MIN_ROWS * c and n % c == 0:
        return x.reshape(-1, c).sum(1).sum()
    return x.sum()


#: Width of the reduction that `once` goes through: above inductor's
#: ``unroll_reductions_threshold`` (8), which would turn a narrower one back into pointwise code.
_ONCE_WIDTH = 16


def once(xs: list[Tensor]) -> list[Tensor]:
    """Per-step scalars (one-element tensors: bias corrections from the step counts and
    the betas) that a compiled pass computes once, in one small kernel of their own, instead
    of in every element of the update kernel that reads them. Inductor inlines pointwise work
    on a 0-d tensor into its consumer, broadcast to the consumer's block: Adam's two ``pow``
    and a ``sqrt`` ran per element. The maximum of ``_ONCE_WIDTH`` copies of each is a
    reduction, whose result inductor stores as a buffer; its values are the ``xs`` exactly.
    Eager code computes each scalar once anyway and takes them unchanged. ``SIGNIFY_HOIST=0``
    (read when a graph is traced) inlines them again."""
    if not xs or not torch.compiler.is_compiling() or os.environ.get("SIGNIFY_HOIST") == "0":
        return xs
    # one value each (0-d or (1,)); mixed float32/float64 stack as float64, which holds
    # every float32 exactly, and each comes back in its own dtype
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in xs))
    stacked = torch.stack([x.reshape(()).to(dtype) for x in xs])
    out = stacked.unsqueeze(-1).expand(len(xs), _ONCE_WIDTH).amax(-1).unbind(0)
    return [o.reshape(x.shape).to(x.dtype) for o, x in zip(out, xs)]


def up(t: Tensor) -> Tensor:
    """``t`` in the compute precision: float32 for 16-bit types, unchanged for float32/64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@dataclasses.dataclass
class Update:
    """The tensors that flow through a chain for one list of parameters."""

    params: list[Tensor]
    grads: list[Tensor]
    lr: Tensor
    num: list[Tensor] | None = None
    scale: list[Tensor] | None = None
    direction: list[Tensor] | None = None
    step_scale: list[Tensor] | None = None
    decay: Tensor | None = None


#: The entry of ``StepContext.shared`` that holds this rank's salt (absent on rank 0).
RANK = "_rank"


class StepContext:
    """What a transform may read besides its own state during one step of one group.

    ``hyper``: numeric group hyperparameters as device tensors (0-d, or 1-d for tuples).
    ``static``: compile-time constants of the group (see `freeze_static`).
    ``keys``: int32 per-tensor random-stream keys for this step (see `signify.rng`).
    ``ok``: 0-d bool, False when the step must change nothing (non-finite gradients).
    ``own_ok``: this rank's own ``ok``, kept when a majority vote clears ``ok`` (the vote's
    parameter write is the group's step and happens on every rank); state a transform after
    the vote keeps for this rank alone (a stepsize's previous gradient) follows it.
    ``shared``: the optimizer-level state of transforms (`Transform.shared_state`).
    """

    def __init__(
        self,
        hyper: Mapping[str, Tensor],
        static: Mapping[str, Any],
        keys: Tensor,
        ok: Tensor | None,
        shared: Mapping[str, Any],
    ) -> None:
        self.hyper = hyper
        self.static = static
        self.keys = keys
        self.ok = ok
        self.own_ok = ok
        self.shared = shared
        # the unused high 16 bits of the last stochastic-rounding draw, per (tensor, size)
        self._spare: dict[tuple[int, int], Tensor] = {}

    def flag(self, name: str) -> bool:
        """A static setting: a bool option, or whether a numeric hyperparameter is non-zero."""
        return bool(self.static.get(name, False))

    def bits(self, i: int, like: Tensor, stream: int) -> Tensor:
        """32 random bits (int64) per element of the i-th tensor of this chunk."""
        return rng.random_bits(self.keys[i], like.numel(), like.device, stream)

    def uniform(
        self, i: int, like: Tensor, stream: int = rng.STREAM_SIGN, per_rank: bool = False
    ) -> Tensor:
        """Uniform noise on (-1, 1) shaped like the i-th tensor, float32. ``per_rank``: an
        independent draw on each rank of a vote (the keys are the same on every rank, so
        that what must agree, a bf16 parameter's rounding, does; the executor hands the
        rank's salt in ``shared[RANK]``)."""
        key = self.keys[i]
        if per_rank and RANK in self.shared:
            key = rng.mix32_i32(key ^ self.shared[RANK]["key"])
        return rng.uniform_pm1(rng.random_bits(key, like.numel(), like.device, stream))

    def rounding_bits(self, i: int, dst: Tensor, stream: int) -> Tensor:
        """16 random bits per element (in the low half) for stochastically rounding a write
        into ``dst``. Rounding needs 16 bits and a hash gives 32: the first bf16 write of a
        tensor in a pass draws from its own ``stream`` and leaves the high half to the
        second, so a step writing bf16 parameters and a bf16 moment hashes once per element
        instead of twice (the hash is what bounds such a kernel on a GPU)."""
        key = (i, dst.numel())
        spare = self._spare.pop(key, None)
        if spare is not None:
            return spare
        bits = self.bits(i, dst, stream)
        self._spare[key] = bits >> 16
        return bits

    def write(self, i: int, dst: Tensor, value: Tensor, stream: int) -> None:
        """``dst <- value`` for the i-th tensor, skipped when the step is not ok, rounded
        stochastically when ``dst`` is bfloat16 and ``value`` is not."""
        if self.ok is not None:
            value = torch.where(self.ok, value, dst)
        if dst.dtype != value.dtype:
            if dst.dtype == torch.bfloat16:
                value = rng.stochastic_round(value, dst.dtype, self.rounding_bits(i, dst, stream))
            else:
                value = value.to(dst.dtype)
        dst.copy_(value)


#: Hyperparameters that only scale a step: their value never changes a graph, so a schedule
#: crossing 0 (a warmup from lr = 0, a cosine to 0) compiles nothing new.
SCALE_ONLY = frozenset({"lr"})


def freeze_static(group: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The compile-time view of a param group: bools, strings and None as they are, numbers
    as "is non-zero" (``lr``: always True), tuples element-wise; tensors (whose value may
    change any step) as True. Changing one of these values recompiles."""

    def nonzero(k: str, x: Any) -> bool:
        return True if isinstance(x, Tensor) or k in SCALE_ONLY else bool(x != 0)

    def scalar(x: Any) -> bool:
        if isinstance(x, Tensor):
            return x.numel() == 1
        return isinstance(x, numbers.Real) and not isinstance(x, bool)

    out: list[tuple[str, Any]] = []
    for k, v in sorted(group.items()):
        kind = type(v)
        if kind is float or kind is int:  # the common case, first (host cost per step)
            out.append((k, True if k in SCALE_ONLY else v != 0))
            continue
        if k in ("params", "param_names"):
            continue
        if isinstance(v, np.bool_):
            out.append((k, bool(v)))
        elif isinstance(v, bool) or v is None or isinstance(v, str):
            out.append((k, v))
        elif scalar(v):
            out.append((k, nonzero(k, v)))
        elif isinstance(v, (tuple, list)) and all(scalar(x) for x in v):
            out.append((k, tuple(nonzero(k, x) for x in v)))
    return tuple(out)


class Transform:
    """Base class of every transform. Subclasses override what they need.

    Class attributes:

    ``name``: short name for ``repr`` and for namespacing state keys (``"<name>.<key>"``).
    ``reads`` / ``writes``: the `Update` fields it uses, so a chain can drop state that no
    longer matters (a base's denominator under the deterministic sign) and check order.
    ``hyper_defaults``: group hyperparameters it adds, with their defaults.
    ``counters``: per-parameter state keys incremented by one before each applied step.
    ``flat_max``: per-tensor scalars read only through a maximum over tensors, so that a
    flat bucket (``flatten=True``) may hold their maximum when its tensors' values differ.
    ``state_prefix``: prefix of its per-parameter state keys (adapters use the base's own
    names, with no prefix, so torch.optim checkpoints load unchanged).
    ``direction_values``: what a transform that writes ``direction`` puts in it, when it
    can say: ``"sign"`` (every entry -1, 0 or 1) or ``"pm1"`` (every entry -1 or 1, 0 only
    where its input is exactly 0); ``None``: any value. Stepsize oracles read it to know the
    size of a step without measuring it.
    """

    name: ClassVar[str] = "transform"
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    hyper_defaults: ClassVar[dict[str, Any]] = {}
    counters: tuple[str, ...] = ()
    flat_max: tuple[str, ...] = ()
    direction_values: ClassVar[str | None] = None
    #: True when the transform needs the whole step's reductions (``prepare``) first.
    has_prepare: ClassVar[bool] = False
    #: True when the transform splits the elementwise pass around a collective.
    is_barrier: ClassVar[bool] = False
    #: True when it runs a base optimizer on ``.grad`` on the host (run-and-read): then
    #: ``max_grad_norm`` clips ``.grad`` there instead of inside the compiled passes.
    clips_on_host: ClassVar[bool] = False

    #: dtype of floating state buffers (``None``: the parameter's dtype); set by the optimizer
    state_dtype: torch.dtype | None = None

    @property
    def state_prefix(self) -> str:
        return self.name + "."

    def zeros(self, p: Tensor) -> Tensor:
        """A zero state buffer shaped like ``p``, in the chain's state dtype."""
        return torch.zeros_like(
            p, dtype=self.state_dtype or p.dtype, memory_format=torch.preserve_format
        )

    # ---- per-parameter state and the elementwise update -------------------------------
    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        """Fresh per-parameter state for ``params`` (created lazily on their first step)."""
        return {}

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        return u, state

    def begin(self, u: Update, state: State, ctx: StepContext) -> Update:
        """Set per-segment scalar fields (e.g. ``decay``) at the start of every elementwise
        pass, including the pass after a barrier."""
        return u

    # ---- optimizer-level hooks (host side, optional) ----------------------------------
    def bind(self, opt: SignifiedOptimizer) -> None:
        """Called once when the optimizer is built (blocks read parameter names here)."""

    def configure(self, needed: frozenset[str]) -> None:
        """Told which `Update` fields later transforms read (dead-state elimination)."""

    def shared_state(self, device: torch.device) -> dict[str, Any]:
        """Optimizer-level state (0-d tensors, host integers), kept in ``state_dict``."""
        return {}

    def select(self, group_index: int, params: list[Tensor]) -> list[Tensor]:
        """Choose the parameters this step updates (block-coordinate methods)."""
        return params

    def before_step(self, opt: SignifiedOptimizer, active: list[list[Tensor]]) -> None:
        """Host-side work before the elementwise passes (the run-and-read fallback)."""

    def prepare(self, u: Update, state: State, ctx: StepContext) -> None:
        """Accumulate global reductions into ``ctx.shared[self.name]`` (a pass before any
        parameter changes). Enabled by ``has_prepare = True``."""

    def finalize(self, opt: SignifiedOptimizer) -> None:
        """Turn the reductions into scalars (all-reduced across ranks if needed)."""

    def exchange(self, opt: SignifiedOptimizer) -> None:
        """The collective between the two passes of a barrier transform."""

    def supports_flat(self) -> bool:
        """May this transform step a flat bucket (``flatten=True``: a param group's tensors
        of one dtype as one 1-D tensor, `signify.flat`)? By default only transforms with no
        hook beyond ``init``/``update``/``bind``: the others may look across tensors."""
        hooks = ("select", "before_step", "finalize", "exchange", "after_step", "plan", "prepare")
        return not self.is_barrier and all(
            getattr(type(self), h) is getattr(Transform, h) for h in hooks
        )

    def graph_safe(self) -> bool:
        """May a step with this transform's ``before_step``/``finalize`` be captured as one
        CUDA graph? Say True only when ``finalize`` is device work on tensors that keep their
        addresses from step to step (it is recorded into the graph and replayed) and
        ``before_step`` may run eagerly before each replay. Transforms with ``exchange`` or
        ``after_step`` hooks are never captured."""
        return False

    def after_step(self, opt: SignifiedOptimizer) -> None:
        """Host-side work after the step (block switch, ``requires_grad`` flags)."""

    def extra_state(self) -> dict[str, Any] | None:
        """Host-side state to save in ``state_dict()["signify"]["extra"][name]``."""
        return None

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned."""

    def after_load(self, opt: SignifiedOptimizer) -> None:
        """Called after ``load_state_dict`` restored per-parameter and shared state."""

    def plan(self, params: Sequence[Tensor], group_index: int) -> State:
        """Per-step scratch lists for ``params`` (views into flat buffers), rebuilt whenever
        the set of stepped parameters changes."""
        return {}

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"
