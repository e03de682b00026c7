"""Running a chain over the optimizer's parameters: eagerly, or as compiled fused graphs.

One step is at most three kinds of pass, each over *chunks* of parameters:

1. a prepass, only when needed: the non-finite check of the gradients and the global
   reductions of transforms that ask for them (``prepare``, e.g. ALIAS's norms);
2. scalar work on the device: the ok flag, the step counters and the random-stream keys
   (one small graph, `signify.compiled.make_bookkeeping`), then ``finalize`` hooks (turn
   reductions into a stepsize), all as 0-d device tensors: no host sync;
3. the elementwise pass, split in segments around barrier transforms (a collective such as
   the majority vote sits between two segments).

Compiled layout. Each pass is one function of a *chunk*, a list of up to ``chunk`` 1-D
tensors of one param group, dtype and device, compiled with ``dynamic=True``: one graph
serves every chunk of the same length whatever the tensor sizes, so compile cost does not
grow with the number of tensors. A chain without cross-tensor work (no ``prepare``, ``plan``
or barrier) pads a bucket's last chunk with tiny zero tensors to the full length: then one
graph per pass serves the whole model. Other chains cut the rest in powers of two (a bucket
of 11 tensors runs as 8 + 2 + 1). Tensors whose sizes are multiples of
`signify.compiled.ROW` form their own chunks ("rows" layout, the default when compiling), in
which the graph tells the compiler so: Triton then issues 16-byte vector loads.
``SIGNIFY_LAYOUT=flat`` turns that off. Each graph is compiled from its own code object so
that no two optimizers (or variants) share dynamo's recompile budget. Every per-step scalar
(lr, step counters, bias corrections, random keys) is a device tensor: a scheduler changing
lr every step causes no recompile.

Host work. When the set of stepped parameters is the one of the last step, the cached plan
(aliases of parameters and state, chunk lists) is reused and only gradient aliases are made.
On CUDA, a compiled chain whose step is pure device work (no collectives, block switches or
``nonfinite="raise"``; a stepsize oracle's scalar hooks are allowed, `Transform.graph_safe`)
is captured as one CUDA graph once the same plan, gradient and optimizer-level tensor
addresses have repeated for two steps, and replayed while they stay the same: the step then
costs the host a few dozen microseconds whatever the number of tensors. The capture step
synchronises once. ``SIGNIFY_CUDA_GRAPHS=0`` turns this off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import compiled, rng, sharding
from .flat import FlatBucket, check_chain, home
from .planning import (
    Bucket,
    Chunk,
    HyperCache,
    Plan,
    alias,
    aliases_of_state,
    dim_order,
    powers_of_two,
)
from .sharding import local
from .transforms.base import State, Transform, freeze_static

if TYPE_CHECKING:
    from .optimizer import SignifiedOptimizer

__all__ = ["Executor", "HyperCache", "powers_of_two"]

_HOOKS = ("select", "before_step", "finalize", "exchange", "after_step")
#: The non-finite check reads max |g| per tensor: non-finite exactly when an entry is. (An L1
#: norm overflows for finite gradients: a 200k-entry fp16 gradient of 0.5s sums past 65504.)
_MAX_ABS = float("inf")
#: steps whose gradients moved (nothing else changed, no replay in between) before the hint
_MOVED_WARN = 8


class Executor:
    """Runs one optimizer's chain. Owned by `SignifiedOptimizer`; not public API."""

    def __init__(
        self,
        opt: SignifiedOptimizer,
        chain: Sequence[Transform],
        compile: bool,
        chunk: int,
        nonfinite: str,
        flatten: bool = False,
    ) -> None:
        self.opt = opt
        self.chain = list(chain)
        self.compile = compile
        self.chunk = chunk
        self.nonfinite = nonfinite
        #: ``max_grad_norm``: the gradients are clipped inside the compiled passes, unless an
        #: adapter steps the base on the host (run-and-read), which clips ``.grad`` itself
        norm = opt.options.max_grad_norm
        self.max_grad_norm = None if norm is None else float(norm)
        self.clip_in_graph = self.max_grad_norm is not None and not any(
            t.clips_on_host for t in self.chain
        )
        #: ``flatten=True``: buckets re-homed into one buffer each (`signify.flat`)
        self.flatten = flatten
        if flatten:
            check_chain(self.chain)
        self._homes: dict[tuple[Any, ...], FlatBucket] = {}
        self._warned_flat = False
        #: "rows" or "flat" (module docstring), from SIGNIFY_LAYOUT; rows when compiling
        self.layout = compiled.env_option(
            "SIGNIFY_LAYOUT", "rows" if compile else "flat", compiled.LAYOUTS
        )
        #: how the non-finite check reads the gradients when no transform has a prepass:
        #: "foreach" (torch's multi-tensor max-abs norm, a few launches for all tensors) or
        #: "graph" (inside the compiled prepass, one reduction per tensor)
        self.finite_check = compiled.env_option(
            "SIGNIFY_FINITE_CHECK", "foreach", compiled.FINITE_CHECKS
        )
        #: per-tensor chunks' graphs: "dynamic" sizes (one graph per tensor count) or
        #: "static" (one per set of sizes), from SIGNIFY_SHAPES; flat buckets are always static
        self.shapes = compiled.env_option("SIGNIFY_SHAPES", "dynamic", compiled.SHAPES)
        # read again where graphs are traced (`transforms.base.once`) and compiled
        # (`compiled.inductor_options`); checked here, before any step
        compiled.env_option("SIGNIFY_HOIST", "1", ("0", "1"))
        compiled.env_option("SIGNIFY_COMBO", "all", compiled.COMBO)
        self.hyper = HyperCache()
        self._plan: Plan | None = None
        self._plan_key_: Any = None
        self._compiled: dict[Any, Callable[..., Any]] = {}
        self._tag = f"{id(self):x}"
        self.rank = 0  # set by transforms whose ranks must draw independent noise
        self._rank_keys: dict[tuple[torch.device, int], Tensor] = {}
        #: 0-d bool of the current step (None when unchecked); read by ``finalize`` hooks
        self.ok: Tensor | None = None
        #: the process group over which the parameters are sharded (FSDP2), else None
        self.shard_group: Any = sharding.shard_group(opt.all_params())
        # Segments: [start, end) ranges of the chain split after each barrier transform.
        self.segments: list[tuple[int, int]] = []
        start = 0
        for i, t in enumerate(self.chain):
            if t.is_barrier:
                self.segments.append((start, i + 1))
                start = i
        self.segments.append((start, len(self.chain)))
        self.has_prepare = any(t.has_prepare for t in self.chain)
        self._hooks = {name: [t for t in self.chain if _overrides(t, name)] for name in _HOOKS}
        self._static_hooks = [t for t in self.chain if hasattr(t, "static_items")]
        self._probe: dict[tuple[int, Any], Any] = {}
        # Padding to full chunks is safe when no transform looks across tensors.
        self.pad = compile and not any(
            t.has_prepare or t.is_barrier or _overrides(t, "plan") for t in self.chain
        )
        #: whether CUDA graphs may be used at all; `capturable` adds what can change per step
        self.graphs = (
            compile
            and nonfinite != "raise"
            and not self._hooks["exchange"]
            and not self._hooks["after_step"]
            and os.environ.get("SIGNIFY_CUDA_GRAPHS", "1") != "0"
        )
        self._host_hooked = list(
            dict.fromkeys(self._hooks["before_step"] + self._hooks["finalize"])
        )
        self._graph: Any = None  # (signature, torch.cuda.CUDAGraph, ok tensor, replays)
        self._last_sig: Any = None
        self._streak = 0
        self._wasted = 0
        self._moved = 0
        self._warned_moved = False

    # ------------------------------------------------------------------ planning
    def invalidate(self, forget_homes: bool = False) -> None:
        """Forget the cached plan (state was created, dropped, moved or loaded), and with
        ``forget_homes`` the flat buckets too (`signify.flat.unflatten`)."""
        self._plan = None
        self._plan_key_ = None
        self._graph = None
        if forget_homes:
            self._homes.clear()

    def static(self, group: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        """The compile-time settings of a group: `freeze_static`, plus what transforms with
        a ``static_items(group)`` method add (values an adapter had to bake into a graph)."""
        out = freeze_static(group)
        for t in self._static_hooks:
            out = out + tuple(t.static_items(group))  # type: ignore[attr-defined]
        return out

    def active_params(self) -> list[list[Tensor]]:
        active = []
        for gi, group in enumerate(self.opt.param_groups):
            ps = [p for p in group["params"] if p.grad is not None]
            for t in self._hooks["select"]:
                ps = t.select(gi, ps)
            for p in ps:
                if p.grad is not None and p.grad.is_sparse:
                    raise ValueError("sparse gradients are not supported by signify")
            active.append(ps)
        return active

    def _state_keys(self, t: Transform, group: dict[str, Any]) -> tuple[str, ...]:
        """The per-parameter state keys ``t`` creates for ``group`` (probed once)."""
        key = (id(t), self.static(group))
        keys = self._probe.get(key)
        if keys is None:
            keys = self._probe[key] = tuple(t.init([torch.empty(0, device="meta")], group))
        return keys  # type: ignore[no-any-return]

    def _ensure_state(self, active: list[list[Tensor]]) -> None:
        """Create missing per-parameter state."""
        opt = self.opt
        for gi, ps in enumerate(active):
            if not ps:
                continue
            group = opt.param_groups[gi]
            for t in self.chain:
                probe = self._state_keys(t, group)
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

    def _plan_key(self, active: list[list[Tensor]]) -> Any:
        opt = self.opt
        groups = opt.param_groups
        # a parameter whose .data was replaced (model.to(...)): the plan's aliases are stale
        if self.shard_group is None:
            ptrs = tuple(p.data_ptr() for ps in active for p in ps)  # 0.1 us a tensor
        else:
            ptrs = tuple(local(p).data_ptr() for ps in active for p in ps)
        return (
            tuple((tuple(map(id, ps)), self.static(g)) for ps, g in zip(active, groups)),
            ptrs,
            id(opt.state),
            len(opt.state),
        )

    def _build_plan(self, active: list[list[Tensor]]) -> Plan:
        opt = self.opt
        position = {p: i for i, p in enumerate(opt.all_params())}
        plan = Plan([], [], [], [])
        for gi, ps in enumerate(active):
            if not ps:
                continue
            group = opt.param_groups[gi]
            static = self.static(group)
            key_lists = [self._state_keys(t, group) for t in self.chain]
            by_kind: dict[tuple[Any, ...], list[Tensor]] = {}
            for p in ps:
                kind = (p.device, p.dtype, p.grad.dtype if p.grad is not None else None)
                by_kind.setdefault(kind, []).append(p)
            for (device, dtype, _), bps in by_kind.items():
                if device not in plan.devices:
                    plan.devices.append(device)
                fb = self._flat(gi, group, device, dtype, bps) if self.flatten else None
                if fb is not None:
                    plan.flats.append(fb)
                    bucket = self._flat_bucket(gi, group, fb, key_lists, static, position)
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
        per-tensor scalar state, sharded parameters)."""
        if self.shard_group is not None:
            return None
        members = [  # frozen parameters (requires_grad=False) stay out of the buffer
            p
            for p in group["params"]
            if p.device == device and p.dtype == dtype and p.requires_grad
        ]
        if list(map(id, members)) != list(map(id, bps)) or not members:
            return None
        opt = self.opt
        keys: list[str] = []  # per-element state, re-homed into the bucket's buffers
        scalars: list[str] = []  # per-tensor scalars (counters, NAdam's mu_product)
        mirrored: list[str] = []  # the scalars no counter update reaches: copied after a step
        for t in self.chain:
            for k in self._state_keys(t, group):
                full = t.state_prefix + k
                vals = [opt.state[p][full] for p in members]
                if k in t.counters:
                    scalars.append(full)
                elif all(v.shape == p.shape for v, p in zip(vals, members)):
                    keys.append(full)
                elif all(v.numel() == 1 for v in vals):
                    scalars.append(full)
                    mirrored.append(full)
                else:
                    if not self._warned_flat:
                        self._warned_flat = True
                        warnings.warn(
                            f"signify: flatten=True, but the state {full!r} is neither per "
                            "element nor a scalar: stepping per tensor",
                            stacklevel=4,
                        )
                    return None
        for k in scalars:  # the first parameter's scalar serves the bucket: must agree (sync)
            vals_ = torch.stack([opt.state[p][k].reshape(()).double() for p in members])
            if not bool((vals_ == vals_[0]).all()):
                if not self._warned_flat:
                    self._warned_flat = True
                    warnings.warn(
                        f"signify: flatten=True, but the bucket's tensors disagree on {k!r} "
                        "(a step ran without some of their gradients): stepping per tensor",
                        stacklevel=4,
                    )
                return None
        hkey = (gi, device, dtype)
        fb = self._homes.get(hkey)
        if fb is None or list(map(id, fb.params)) != list(map(id, members)) or not fb.homed():
            fb = self._homes[hkey] = home(members)
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

    def _flat_bucket(
        self,
        gi: int,
        group: dict[str, Any],
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

    # ------------------------------------------------------------------ running
    def _runner(
        self,
        key: tuple[Any, ...],
        make: Callable[[], Callable[..., Any]],
        device: torch.device,
        static: bool = False,
    ) -> Any:
        """The (compiled) function of ``key``. ``static``: compiled for the exact shapes, as
        a flat bucket's graph is (its key holds the bucket's size)."""
        fn = self._compiled.get(key)
        if fn is None:
            fn = make()
            if self.compile:
                tagged = compiled.fresh(fn, f"{self._tag}_{len(self._compiled)}")
                fn = compiled.compile_fn(tagged, key[0], device.type, dynamic=not static)
            self._compiled[key] = fn
        return fn

    def _static(self, c: Any) -> bool:
        return c.flat is not None or self.shapes == "static"

    def _shape_key(self, c: Any) -> Any:
        return _shapes(c, self._static(c))

    def step(self) -> None:
        opt = self.opt
        active = self.active_params()
        if not any(active):
            return
        if self.nonfinite == "raise":
            self._raise_if_nonfinite(active)  # before anything (state included) changes
        key = self._plan_key(active)
        if self._plan is None or key != self._plan_key_:
            self._ensure_state(active)  # before the hooks: the run-and-read path fills it
        for t in self._hooks["before_step"]:
            t.before_step(opt, active)
        if self._hooks["before_step"]:
            key = self._plan_key(active)  # hooks may have dropped or moved state
        if self._plan is None or key != self._plan_key_:
            self._ensure_state(active)
            self._plan = self._build_plan(active)
            self._plan_key_ = self._plan_key(active)
            self.shard_group = sharding.shard_group(opt.all_params())
            self._graph = None
        plan = self._plan
        for fb in plan.flats:
            fb.bind_grads()  # gradients allocated anew are copied in (before the signature)
        hypers = {
            (c.group_index, c.device): self.hyper.get(
                c.group_index, opt.param_groups[c.group_index], c.device
            )
            for c in plan.chunks()
        }
        if self._use_graphs(plan):
            self._graphed_step(plan, hypers)
        else:
            self.ok = self._run(plan, hypers)
        for t in self._hooks["after_step"]:
            t.after_step(opt)

    def _use_graphs(self, plan: Plan) -> bool:
        return (
            self.capturable()
            and self.shard_group is None
            and plan.devices[0].type == "cuda"
            and len(plan.devices) == 1
        )

    def capturable(self) -> bool:
        """Whether this step may run as a CUDA graph: pure device work, with the host hooks
        of stepsize oracles allowed when they say so (`Transform.graph_safe`: no
        all-reduce)."""
        return self.graphs and all(t.graph_safe() for t in self._host_hooked)

    def _raise_if_nonfinite(self, active: list[list[Tensor]]) -> None:
        """``nonfinite="raise"``: one host sync (documented) on the gradients' max-abs norms."""
        grads = [local(p.grad) for ps in active for p in ps if p.grad is not None]
        bad, mode = _max_abs(grads), "foreach"
        if self.shard_group is not None:  # every rank of a sharded step raises together
            bad, mode = sharding.nonfinite_anywhere(bad, mode, self.shard_group), "graph"
        flag = ~torch.isfinite(bad).all() if mode == "foreach" else (bad != 0).any()
        if bool(flag):
            raise FloatingPointError("non-finite gradient (nonfinite='raise')")

    def _graphed_step(self, plan: Plan, hypers: dict[Any, dict[str, Tensor]]) -> None:
        """Replay the captured step while nothing it reads by address has moved."""
        shared = self.opt.shared_state(plan.devices[0])
        sig = (
            id(plan),
            tuple(local(p.grad).data_ptr() for p in plan.grad_params),  # type: ignore[arg-type]
            self.hyper.version,
            self.rank,
            # optimizer-level tensors (a stepsize's slots grow, a load replaces them)
            tuple(
                v.data_ptr() for d in shared.values() for v in d.values() if isinstance(v, Tensor)
            ),
        )
        graph = self._graph
        if graph is not None and graph[0] == sig:
            graph[1].replay()
            graph[3] += 1
            self._moved = 0  # the replay works: moves now and then are no cause to warn
            self.ok = graph[2]
            return
        if graph is not None and graph[3] < 2:
            self._wasted += 1  # captured, then moved before it paid off
        self._graph = None
        last = self._last_sig
        self._streak = self._streak + 1 if sig == last else 0
        if last is not None and sig != last and sig[0] == last[0] and sig[2:] == last[2:]:
            self._moved += 1  # only the gradients' addresses changed
            if self._moved == _MOVED_WARN and not self._warned_moved:
                self._warned_moved = True
                warnings.warn(
                    "signify: the gradients move to new addresses every step (zero_grad with "
                    "set_to_none=True), so the compiled step cannot replay as a CUDA graph and "
                    "pays its host overhead; call opt.zero_grad(set_to_none=False) to keep "
                    "them in place (docs/performance.md)",
                    stacklevel=3,
                )
        self._last_sig = sig
        if self._streak < 2 or self._wasted >= 3:
            self.ok = self._run(plan, hypers)
            return
        cuda_graph = torch.cuda.CUDAGraph()
        try:
            # Synchronises once; records without running. thread_local: other threads'
            # CUDA work (a data loader's copies) does not invalidate the capture.
            with torch.cuda.graph(cuda_graph, capture_error_mode="thread_local"):
                ok = self._run(plan, hypers)
        except RuntimeError as e:  # something in the chain cannot be captured: run plainly
            self.graphs = False
            warnings.warn(
                f"signify: CUDA graph capture failed, stepping without ({e})", stacklevel=3
            )
            self.ok = self._run(plan, hypers)
            return
        cuda_graph.replay()
        self._graph = [sig, cuda_graph, ok, 0]
        self.ok = ok

    def _run(self, plan: Plan, hypers: dict[Any, dict[str, Tensor]]) -> Tensor | None:
        opt = self.opt
        device = plan.devices[0]
        shared = opt.shared_state(device)
        shared_tensors = {
            name: {k: v for k, v in d.items() if isinstance(v, Tensor)}
            for name, d in shared.items()
        }
        per_chunk = []
        for c in plan.chunks():
            if c.flat is not None:
                grads = [c.flat.g_view]
            else:
                grads = [alias(local(p.grad), o) for p, o in zip(c.params, c.orders)]  # type: ignore[arg-type]
            per_chunk.append((c, grads + c.pad_grads, hypers[(c.group_index, c.device)]))

        with compiled.no_duck_shapes():
            # 1. prepass: gradient norm, non-finite check and global reductions
            check = self.nonfinite == "skip"  # "raise" checked before the step began
            bad: Tensor | None = None
            mode: str | None = None
            coefs: dict[torch.device, Tensor] = {}
            if self.clip_in_graph and self.max_grad_norm is not None:
                total = self._grad_norm(per_chunk, device)
                # clip_grad_norm_'s coefficient, bit for bit
                coef = torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0)
                coefs = {d: coef if d == device else coef.to(d) for d in plan.devices}
                if check:  # the norm is finite iff every gradient is: it is the check
                    bad, mode, check = total.reshape(1), "foreach", False
            if check and not self.has_prepare and self.finite_check == "foreach":
                mode = "foreach"
                bad = _max_abs(_real_grads(per_chunk), device)
            elif check or self.has_prepare:
                counts = torch.zeros(1, dtype=torch.float32, device=device)
                if check:
                    bad, mode = counts, "graph"
                for c, grads, hyper in per_chunk:
                    pkey: tuple[Any, ...] = ("prepare", c.static, self._shape_key(c), c.rows, check)
                    run = self._compiled.get(pkey) or self._runner(
                        pkey,
                        _maker(compiled.make_prepare, self.chain, c.static, check, c.rows),
                        device,
                        static=self._static(c),
                    )
                    clip = coefs.get(c.device)
                    run(c.views, grads, c.states, hyper, c.keys, shared_tensors, counts, clip)
            if check and bad is not None and self.shard_group is not None:
                # a non-finite entry may sit in one rank's shard: every rank must skip
                bad, mode = sharding.nonfinite_anywhere(bad, mode, self.shard_group), "graph"

            # 2. the step's scalars: ok flag, counters, random keys
            ok = self._bookkeeping(plan, device, mode, bad)
            if plan.counters:
                if ok is None:
                    torch._foreach_add_(plan.counters, 1.0)
                else:
                    # The list overload: the one with a 0-d tensor operand reads it on the
                    # host (a sync, and no CUDA graph capture).
                    okf = ok.to(torch.float32)
                    torch._foreach_add_(plan.counters, [okf] * len(plan.counters))
            self.ok = ok
            for t in self._hooks["finalize"]:
                t.finalize(opt)

            # 3. the elementwise pass, segment by segment
            for s in range(len(self.segments)):
                for c, grads, hyper in per_chunk:
                    skey: tuple[Any, ...] = ("segment", s, c.static, self._shape_key(c), c.rows)
                    start, end = self.segments[s]
                    run = self._compiled.get(skey) or self._runner(
                        skey,
                        _maker(compiled.make_segment, self.chain, start, end, c.static, c.rows),
                        device,
                        static=self._static(c),
                    )
                    clip = coefs.get(c.device)
                    run(c.views, grads, c.states, hyper, c.keys, ok, shared_tensors, clip)
                if s + 1 < len(self.segments):
                    self.chain[self.segments[s][1] - 1].exchange(opt)
            for fb in plan.flats:  # scalars that only the bucket's first tensor carried
                for dst, src in fb.mirrors:
                    torch._foreach_copy_(dst, src)
        return ok

    def _grad_norm(self, per_chunk: list[Any], device: torch.device) -> Tensor:
        """The 2-norm of this step's gradients, as ``clip_grad_norm_`` computes it (per-tensor
        norms, then their norm); over the shards of every rank when sharded."""
        grads = _real_grads(per_chunk)
        norms = []
        for d in dict.fromkeys(g.device for g in grads):
            norms += [
                n.to(device) for n in torch._foreach_norm([g for g in grads if g.device == d], 2)
            ]
        total = (
            torch.linalg.vector_norm(torch.stack(norms))
            if norms
            else torch.zeros((), device=device)
        )
        if self.shard_group is not None:
            total = sharding.norm_everywhere(total, self.shard_group)
        return total

    def _bookkeeping(
        self, plan: Plan, device: torch.device, mode: str | None, bad: Tensor | None
    ) -> Tensor | None:
        shared = self.opt.shared_state(device)
        state = shared["rng"]
        here = [b for b in plan.buckets if b.device == device]
        run = self._runner(
            ("bookkeeping", mode, self.rank != 0, len(here)),
            lambda: compiled.make_bookkeeping(mode, self.rank != 0),
            device,
        )
        rank_key = self._rank_keys.get((device, self.rank))
        if rank_key is None:
            rank_key = torch.tensor(rng.rank_key(self.rank), dtype=torch.int64, device=device)
            self._rank_keys[(device, self.rank)] = rank_key
        ok = run(
            bad,
            state["seed"],
            state["counter"],
            shared["nonfinite"]["skipped"],
            [b.tensor_keys for b in here],
            [b.step_keys for b in here],
            rank_key,
        )
        for b in plan.buckets:
            if b.device != device:  # other devices: the same keys, eagerly
                key = rng.step_key(state["seed"], state["counter"], self.rank).to(b.device)
                b.step_keys.copy_(rng.to_i32(rng.mix32(b.tensor_keys ^ key)))
        return ok  # type: ignore[no-any-return]


def _shapes(c: Any, static: bool = False) -> Any:
    """What of a chunk's shapes its graph's key holds: the count of tensors (compiled with
    dynamic sizes), or its sizes when compiled for them (a flat bucket always, per-tensor
    chunks under ``SIGNIFY_SHAPES=static``): inductor picks a kernel's launch configuration
    and a reduction's split from the sizes it compiles for, and a dynamic graph compiled
    first for a small bucket, or found in the inductor cache from a run on small shapes,
    would step a large bucket with those; measured on an H100: flat ALIAS 48.8 ms a step
    instead of 1.48."""
    if c.flat is not None:
        return ("flat", tuple(v.numel() for v in c.views))
    if static:
        return ("sizes", tuple(v.numel() for v in c.views))
    return len(c.views)


def _real_grads(per_chunk: list[Any]) -> list[Tensor]:
    """The gradients of a step's chunks without the zero padding of full chunks."""
    return [g for c, grads, _ in per_chunk for g in grads[: len(grads) - len(c.pad_grads)]]


def _maker(make: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: make(*args)


def _overrides(t: Transform, name: str) -> bool:
    return getattr(type(t), name) is not getattr(Transform, name)


def env_chunk(default: int = 8) -> int:
    return int(os.environ.get("SIGNIFY_COMPILE_CHUNK", default))


def _max_abs(grads: list[Tensor], device: torch.device | None = None) -> Tensor:
    """Max |g| of each non-empty gradient, stacked in the widest dtype (no cast overflows
    to inf). Empty gradients hold no non-finite value and have no infinity norm (torch
    raises on them): they are left out; with none left, a single 0."""
    if device is None and grads:
        device = grads[0].device
    grads = [g for g in grads if g.numel() > 0]
    if not grads:
        return torch.zeros(1, device=device)
    return torch.stack(torch._foreach_norm(grads, _MAX_ABS))  # type: ignore[arg-type, misc]
