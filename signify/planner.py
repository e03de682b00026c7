"""Building the executor's plan: which tensors a step touches, cut into chunks for the graphs.

`Planner` turns the stepped parameters of each param group into buckets (one per device and
dtype) and the buckets into chunks (`signify.planning`), and makes the per-parameter state
a step needs. The executor rebuilds the plan only when its key changes (other stepped
parameters, moved parameter memory, created or dropped state), so a steady training loop
builds it once.

Layouts (the executor's module docstring says why):

* per tensor: chunks of up to ``compile_chunk`` tensors; compiled chains without cross-tensor
  work pad a bucket's last chunk to the full length, others cut the rest in powers of two;
  tensors whose sizes are multiples of `signify.compiled.ROW` form their own chunks ("rows");
* flat (``flatten=True``): a bucket is re-homed into one buffer (`signify.flat`) and steps as
  one chunk of one tensor, whenever its tensors can (all have gradients, their counters
  agree, their state is per element or per tensor, nothing is sharded).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import chain
from operator import attrgetter, is_
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import compiled, rng, sharding, zero
from .flat import FlatBucket, home
from .planning import (
    Bucket,
    Chunk,
    Plan,
    alias,
    aliases_of_state,
    check_stepped,
    dim_order,
    powers_of_two,
)
from .sharding import local
from .transforms.base import State, Transform, freeze_static

if TYPE_CHECKING:
    from .optimizer import SignifiedOptimizer

_GRAD = attrgetter("grad")
_IS_SPARSE = attrgetter("is_sparse")


class _Identities:
    """Objects compared by identity, in order (`==`; tensors' own `==` compares values). A
    tuple of their ids made an int object per entry every step: 660 entries (220 tensors of
    stochastic Adam) took 60 us against 40 us this way on a 2-core CPU (2026-12-08)."""

    __slots__ = ("items",)

    def __init__(self, items: tuple[Any, ...]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Identities):
            return NotImplemented
        a, b = self.items, other.items
        return len(a) == len(b) and all(map(is_, a, b))

    __hash__ = None  # type: ignore[assignment]


class Planner:
    """Plans one optimizer's steps. Owned by `signify.executor.Executor`; not public API."""

    def __init__(
        self,
        opt: SignifiedOptimizer,
        chain: Sequence[Transform],
        *,
        compile: bool,
        chunk: int,
        pad: bool,
        layout: str,
        flatten: bool,
    ) -> None:
        self.opt = opt
        self.chain = list(chain)
        self.compile = compile
        self.chunk = chunk
        #: pad a bucket's last chunk to ``chunk`` tensors (one graph per pass for the model)
        self.pad = pad
        #: "rows" or "flat" (`signify.executor`)
        self.layout = layout
        self.flatten = flatten
        self.homes: dict[tuple[Any, ...], FlatBucket] = {}
        self._warned_flat = False
        self._probe: dict[tuple[int, Any], Any] = {}
        self._select = [t for t in self.chain if overrides(t, "select")]
        self._static_hooks = [t for t in self.chain if hasattr(t, "static_items")]

    # ------------------------------------------------------------------ what a step touches
    def static(self, group: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        """The compile-time settings of a group: `freeze_static`, plus what transforms with
        a ``static_items(group)`` method add (values an adapter had to bake into a graph)."""
        out = freeze_static(group)
        for t in self._static_hooks:
            out = out + tuple(t.static_items(group))  # type: ignore[attr-defined]
        return out

    def active_params(self) -> list[list[Tensor]]:
        """Per param group, the parameters this step updates (with a gradient, and chosen
        by the chain's ``select`` hooks, e.g. a block schedule)."""
        active = []
        for gi, group in enumerate(self.opt.param_groups):
            ps = [p for p in group["params"] if p.grad is not None]
            for t in self._select:
                ps = t.select(gi, ps)  # a subset: every gradient is there
            active.append(ps)
        # C-level iteration: this and `key` run every step (0.1 us a tensor each, host-bound
        # steps of many small tensors feel them)
        if any(map(_IS_SPARSE, map(_GRAD, chain.from_iterable(active)))):
            raise ValueError("sparse gradients are not supported by signify")
        return active

    def state_keys(self, t: Transform, group: dict[str, Any]) -> tuple[str, ...]:
        """The per-parameter state keys ``t`` creates for ``group`` (probed once)."""
        key = (id(t), self.static(group))
        keys = self._probe.get(key)
        if keys is None:
            keys = self._probe[key] = tuple(t.init([torch.empty(0, device="meta")], group))
        return keys  # type: ignore[no-any-return]

    def ensure_state(self, active: list[list[Tensor]]) -> None:
        """Create missing per-parameter state (after `check_stepped`: a refused step makes
        none)."""
        opt = self.opt
        check_stepped(opt, active)
        for gi, ps in enumerate(active):
            if not ps:
                continue
            group = opt.param_groups[gi]
            for t in self.chain:
                probe = self.state_keys(t, group)
                if not probe:
                    continue
                keys = [t.state_prefix + k for k in probe]
                missing = [p for p in ps if any(k not in opt.state[p] for k in keys)]
                if not missing:
                    continue
                fresh = t.init(missing, group)
                for k, values in fresh.items():
                    for p, v in zip(missing, values):
                        opt.state[p].setdefault(t.state_prefix + k, v)

    def key(self, active: list[list[Tensor]], sharded: bool) -> Any:
        """What a plan depends on: equal keys, the cached plan still holds."""
        opt = self.opt
        groups = opt.param_groups
        # a parameter whose .data was replaced (model.to(...)): the plan's aliases are stale
        if not sharded:
            ptrs = tuple(map(Tensor.data_ptr, chain.from_iterable(active)))
        else:
            ptrs = tuple(local(p).data_ptr() for ps in active for p in ps)
        state = opt.state
        return (
            tuple((tuple(map(id, ps)), self.static(g)) for ps, g in zip(active, groups)),
            ptrs,
            id(state),
            len(state),
            # an entry replaced between steps (opt.state[p] = {}, state[k] = new tensor): the
            # plan's aliases would keep stepping the old tensors. The entries in order, not
            # the dicts: the plan holds tensors, and a replaced or emptied dict changes this
            # sequence. Iterated, not looked up by parameter: a tensor-keyed lookup costs a
            # Python __hash__ call each.
            _Identities(tuple(chain.from_iterable(map(dict.values, state.values())))),
        )

    # ------------------------------------------------------------------ building
    def build(self, active: list[list[Tensor]], sharded: bool) -> Plan:
        opt = self.opt
        position = zero.positions(opt)  # ZeRO's over all ranks: noise keys as in one process
        plan = Plan([], [], [], [])
        for gi, ps in enumerate(active):
            if not ps:
                continue
            group = opt.param_groups[gi]
            static = self.static(group)
            key_lists = [self.state_keys(t, group) for t in self.chain]
            by_kind: dict[tuple[Any, ...], list[Tensor]] = {}
            for p in ps:
                kind = (p.device, p.dtype, p.grad.dtype if p.grad is not None else None)
                by_kind.setdefault(kind, []).append(p)
            for (device, dtype, _), bps in by_kind.items():
                if device not in plan.devices:
                    plan.devices.append(device)
                use_flat = self.flatten and not sharded
                fb = self._flat(gi, group, device, dtype, bps) if use_flat else None
                if fb is not None:
                    plan.flats.append(fb)
                    bucket = self._flat_bucket(gi, fb, key_lists, static, position)
                else:
                    bucket = self._bucket(gi, group, bps, key_lists, static, device, position)
                plan.buckets.append(bucket)
                for t in self.chain:
                    for name in t.counters:
                        plan.counters.extend(opt.state[p][t.state_prefix + name] for p in bps)
                for chunk in plan.buckets[-1].chunks:
                    plan.grad_params.extend(chunk.params)
                    plan.counters.extend(chunk.pad_counters)
        return plan

    def _flat(
        self, gi: int, group: dict[str, Any], device: torch.device, dtype: Any, bps: list[Tensor]
    ) -> FlatBucket | None:
        """The flat bucket of these parameters, re-homed if needed; None when this step must
        run per tensor (a parameter of the bucket has no gradient, step counters disagree,
        per-tensor state that is neither per element nor a scalar)."""
        members = [  # frozen parameters (requires_grad=False) stay out of the buffer
            p
            for p in group["params"]
            if p.device == device and p.dtype == dtype and p.requires_grad
        ]
        if list(map(id, members)) != list(map(id, bps)) or not members:
            return None
        # a gradient the bucket's view could not be assigned as (a `.data` swap to another
        # dtype keeps the old gradient, of a dtype the parameter no longer accepts)
        if any(_grad_dtype_refused(p) for p in members):
            self._warn_flat("a gradient's dtype is not its parameter's: stepping per tensor")
            return None
        opt = self.opt
        keys: list[str] = []  # per-element state, re-homed into the bucket's buffers
        scalars: list[str] = []  # per-tensor scalars (counters, NAdam's mu_product)
        mirrored: list[str] = []  # the scalars no counter update reaches: copied after a step
        maxed: set[str] = set()  # scalars the bucket may hold as their maximum (flat_max)
        for t in self.chain:
            for k in self.state_keys(t, group):
                full = t.state_prefix + k
                vals = [opt.state[p][full] for p in members]
                if k in t.counters:
                    scalars.append(full)
                elif all(v.shape == p.shape for v, p in zip(vals, members)):
                    keys.append(full)
                elif all(v.numel() == 1 for v in vals):
                    scalars.append(full)
                    mirrored.append(full)
                    if k in t.flat_max:
                        maxed.add(full)
                else:
                    self._warn_flat(
                        f"the state {full!r} is neither per element nor a scalar: stepping "
                        "per tensor"
                    )
                    return None
        for k in scalars:  # the first parameter's scalar serves the bucket: must agree (sync)
            vals_ = torch.stack([opt.state[p][k].reshape(()).double() for p in members])
            if not bool((vals_ == vals_[0]).all()) and k in maxed:
                # a per-tensor checkpoint's (the step reads only their maximum): the same
                # numbers, and a later per-tensor load reads the same maximum again
                for p in members:
                    opt.state[p][k].copy_(vals_.max())
            elif not bool((vals_ == vals_[0]).all()):
                self._warn_flat(
                    f"the bucket's tensors disagree on {k!r} (a step ran without some of "
                    "their gradients): stepping per tensor"
                )
                return None
        hkey = (gi, device, dtype)
        fb = self.homes.get(hkey)
        if fb is None or list(map(id, fb.params)) != list(map(id, members)) or not fb.homed():
            fb = self.homes[hkey] = home(members)
        fb.bind_state(opt, keys)
        fb.mirrors = [
            (
                [opt.state[p][k] for p in members[1:]],
                [opt.state[members[0]][k]] * (len(members) - 1),
            )
            for k in mirrored
            if len(members) > 1
        ]
        return fb

    def _warn_flat(self, why: str) -> None:
        if not self._warned_flat:
            self._warned_flat = True
            warnings.warn(f"signify: flatten=True, but {why}", stacklevel=5)

    def _flat_bucket(
        self,
        gi: int,
        fb: FlatBucket,
        key_lists: list[tuple[str, ...]],
        static: tuple[tuple[str, Any], ...],
        position: dict[Tensor, int],
    ) -> Bucket:
        """A bucket of one chunk holding one tensor: the whole flat buffer."""
        opt, first = self.opt, fb.params[0]
        states: list[State] = []
        for t, keys in zip(self.chain, key_lists):
            st: State = {}
            for k in keys:
                full = t.state_prefix + k
                view = fb.state_views.get(full)
                st[k] = [view if view is not None else alias(opt.state[first][full])]
            st.update(t.plan(fb.params, gi))  # stepsize oracles: one slot for the bucket
            states.append(st)
        device = fb.p.device
        tensor_keys = torch.tensor(
            [rng.tensor_key(position[first], 0)], dtype=torch.int64, device=device
        )
        step_keys = torch.zeros_like(tensor_keys, dtype=torch.int32)
        rows = self.layout == "rows"
        chunk = Chunk(
            gi, list(fb.params), [], [fb.p_view], [], [], states, step_keys, static, device, rows
        )
        chunk.flat = fb
        return Bucket(device, tensor_keys, step_keys, [chunk])

    def _bucket(
        self,
        gi: int,
        group: dict[str, Any],
        bps: list[Tensor],
        key_lists: list[tuple[str, ...]],
        static: tuple[tuple[str, Any], ...],
        device: torch.device,
        position: dict[Tensor, int],
    ) -> Bucket:
        """Chunks of one bucket: the rows lane (sizes multiples of ROW) first, then the rest,
        so that every chunk is of one layout."""
        rows = self.layout == "rows"
        fits = [rows and p.numel() % compiled.ROW == 0 for p in bps]
        lanes = [[p for p, f in zip(bps, fits) if f], [p for p, f in zip(bps, fits) if not f]]
        pieces: list[tuple[list[Tensor], int, bool]] = []  # (params, padding, rows)
        for lane, lane_ps in enumerate(lanes):
            if not lane_ps:
                continue
            if not self.compile:
                sizes = [len(lane_ps)]
            elif self.pad:
                sizes = [self.chunk] * (len(lane_ps) // self.chunk)
                if len(lane_ps) % self.chunk:
                    sizes.append(len(lane_ps) % self.chunk)
            else:
                sizes = powers_of_two(len(lane_ps), self.chunk)
            offset = 0
            for n in sizes:
                padding = self.chunk - n if self.pad and self.compile else 0
                pieces.append((lane_ps[offset : offset + n], padding, lane == 0 and rows))
                offset += n
        # Keys follow the global position (padding after every parameter), so a tensor's
        # noise does not depend on how it is chunked.
        keys = []
        for cps, padding, _ in pieces:
            keys += [rng.tensor_key(position[p], sharding.shard_index(p)) for p in cps]
            keys += [rng.tensor_key(len(position) + len(keys) + i) for i in range(padding)]
        tensor_keys = torch.tensor(keys, dtype=torch.int64, device=device)
        step_keys = torch.zeros_like(tensor_keys, dtype=torch.int32)
        chunks, start = [], 0
        for cps, padding, as_rows in pieces:
            c = self._chunk(gi, group, cps, padding, key_lists, static, device, as_rows)
            n = len(cps) + padding
            c.keys = step_keys.new_empty(0).set_(step_keys.untyped_storage(), start, (n,), (1,))
            chunks.append(c)
            start += n
        return Bucket(device, tensor_keys, step_keys, chunks)

    def _chunk(
        self,
        gi: int,
        group: dict[str, Any],
        cps: list[Tensor],
        padding: int,
        key_lists: list[tuple[str, ...]],
        static: tuple[tuple[str, Any], ...],
        device: torch.device,
        rows: bool,
    ) -> Chunk:
        opt = self.opt
        orders = [dim_order(local(p)) for p in cps]
        like = cps[0]
        pads = [torch.zeros(compiled.ROW, dtype=like.dtype, device=device) for _ in range(padding)]
        pad_grads = [
            torch.zeros(compiled.ROW, dtype=like.grad.dtype, device=device)  # type: ignore[union-attr]
            for _ in range(padding)
        ]
        states: list[State] = []
        pad_counters: list[Tensor] = []
        for t, keys in zip(self.chain, key_lists):
            st: State = {}
            pad_state = t.init(pads, group) if pads and keys else {}
            for k in keys:
                st[k] = aliases_of_state(opt, cps, orders, t.state_prefix + k)
                st[k] += [alias(v) for v in pad_state.get(k, [])]
            for name in t.counters:
                pad_counters += pad_state.get(name, [])
            st.update(t.plan(cps, gi))
            states.append(st)
        views = [alias(local(p.data), o) for p, o in zip(cps, orders)] + pads
        return Chunk(
            gi,
            cps,
            orders,
            views,
            pad_grads,
            pad_counters,
            states,
            torch.empty(0),
            static,
            device,
            rows,
        )


def _grad_dtype_refused(p: Tensor) -> bool:
    """Whether ``p.grad``'s dtype is one ``p`` refuses to be assigned (torch >= 2.9 has
    ``grad_dtype``: None accepts any; before, only the parameter's dtype)."""
    accepted = getattr(p, "grad_dtype", p.dtype)
    return p.grad is not None and accepted is not None and p.grad.dtype != accepted


def overrides(t: Transform, name: str) -> bool:
    """Whether ``t`` implements the hook ``name`` (the base class's is a no-op)."""
    return getattr(type(t), name) is not getattr(Transform, name)
