"""Running a chain over the optimizer's parameters: eagerly, or as compiled fused graphs.

One step is at most three kinds of pass, each over *chunks* of parameters:

1. a prepass, only when needed: the non-finite check of the gradients and the global
   reductions of transforms that ask for them (``prepare``, e.g. ALIAS's norms);
2. scalar work on the device: the ok flag, the step counters and the random-stream keys
   (one small graph, `signify.compiled.make_bookkeeping`), then ``finalize`` hooks (turn
   reductions into a stepsize), all as 0-d device tensors: no host sync;
3. the elementwise pass, split in segments around barrier transforms (a collective such as
   the majority vote sits between two segments).

Compiled layout. Each pass is one function of a *chunk*, a list of up to ``chunk`` tensors of
one param group, dtype and device, compiled with ``dynamic=True`` so one graph serves every
chunk of the same length whatever the tensor sizes: compile cost does not grow with the number
of tensors. Chunk lengths are powers of two (a bucket of 11 tensors runs as 8 + 2 + 1), so at
most ``log2(chunk) + 1`` graphs exist per pass and layout. Tensors whose size is a multiple
of `signify.compiled.ROW` travel as ``[n / 16, 16]`` views ("rows" layout, the default), so
the compiler knows their sizes allow vector loads; ``SIGNIFY_LAYOUT=flat`` passes 1-D views.
Each graph is compiled from its own code object so that no two optimizers (or variants) share
dynamo's recompile budget. Every per-step scalar (lr, step counters, bias corrections, random
keys) is a device tensor: a scheduler changing lr every step causes no recompile.

Host work per step is kept to what must be done: when the set of stepped parameters is the
one of the last step, the cached plan (views of parameters and state, chunk lists) is reused
and only the gradients' views are rebuilt.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import compiled, rng
from .transforms.base import State, Transform, freeze_static

if TYPE_CHECKING:
    from .optimizer import SignifiedOptimizer

_NOT_PARAMS = ("params", "param_names")


class HyperCache:
    """Device copies of a group's numeric hyperparameters, refreshed only when they change."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, torch.device], dict[str, Any]] = {}
        self._tensors: dict[tuple[int, torch.device], dict[str, Tensor]] = {}

    def get(self, gi: int, group: dict[str, Any], device: torch.device) -> dict[str, Tensor]:
        key = (gi, device)
        values = self._values.setdefault(key, {})
        tensors = self._tensors.setdefault(key, {})
        for name, v in group.items():
            if name in _NOT_PARAMS or isinstance(v, bool) or v is None or isinstance(v, str):
                continue
            if isinstance(v, Tensor):
                if v.numel() != 1:
                    continue
                t = tensors.get(name)
                if t is None:
                    tensors[name] = t = torch.empty((), dtype=torch.float32, device=device)
                t.copy_(v.detach().reshape(()), non_blocking=True)
                continue
            if isinstance(v, (int, float)):
                if values.get(name) != v or name not in tensors:
                    t = tensors.get(name)
                    if t is None or t.dim() != 0:
                        tensors[name] = t = torch.empty((), dtype=torch.float32, device=device)
                    t.fill_(float(v))  # a launch with a host scalar: no sync
                    values[name] = v
            elif isinstance(v, (tuple, list)) and v and all(isinstance(x, (int, float)) for x in v):
                tv = tuple(float(x) for x in v)
                if values.get(name) != tv or name not in tensors:
                    tensors[name] = torch.tensor(tv, dtype=torch.float32).to(device)
                    values[name] = tv
        return tensors

    def clear(self) -> None:
        self._values.clear()
        self._tensors.clear()


@dataclasses.dataclass
class Chunk:
    group_index: int
    params: list[Tensor]  # the parameters themselves (for .grad)
    views: list[Tensor]  # parameters in the chunk's layout (1-D, or [n / ROW, ROW])
    orders: list[list[int] | None]  # dimension order giving memory order (None: contiguous)
    shapes: list[tuple[int, ...]]  # view shape of each gradient
    states: list[State]  # per transform, views of its state buffers
    keys: Tensor  # view of the bucket's per-step random keys
    static: tuple[tuple[str, Any], ...]
    device: torch.device
    rows: bool


@dataclasses.dataclass
class Bucket:
    device: torch.device
    tensor_keys: Tensor  # int64 [n], one per parameter (global position)
    step_keys: Tensor  # int64 [n], refreshed each step
    chunks: list[Chunk]


@dataclasses.dataclass
class Plan:
    buckets: list[Bucket]
    counters: list[Tensor]  # per-parameter counters (e.g. "step") of stepped parameters
    devices: list[torch.device]
    flat_keys: dict[Any, list[tuple[str, ...]]]  # per static: executor-built keys
    state_ref: Any  # (opt.state object, its length) when the plan was built


def powers_of_two(n: int, cap: int) -> list[int]:
    out = []
    while n > 0:
        k = min(cap, 1 << (n.bit_length() - 1))
        out.append(k)
        n -= k
    return out


def _dim_order(t: Tensor) -> list[int] | None:
    """The permutation of dims that lists ``t``'s elements in memory order (None when ``t``
    is contiguous); raises for tensors that do not cover a dense block of memory."""
    if t.is_contiguous():
        return None
    strides, sizes = t.stride(), t.shape
    order = sorted(range(t.dim()), key=lambda d: (-strides[d], -sizes[d]))
    if not t.permute(order).is_contiguous():
        raise ValueError(
            "signify steps dense parameters only (contiguous, or a permutation of a "
            f"contiguous block such as channels_last); got sizes {tuple(t.shape)} and "
            f"strides {t.stride()}"
        )
    return order


def _view(t: Tensor, order: list[int] | None, shape: tuple[int, ...]) -> Tensor:
    """``t`` in the memory order of its parameter, as a view of ``shape``. Tensors laid out
    otherwise (a gradient with other strides) are read through a copy: only read-only
    inputs may need one."""
    if order is not None:
        t = t.permute(order)
    return t.view(shape) if t.is_contiguous() else t.reshape(shape)


class Executor:
    """Runs one optimizer's chain. Owned by `SignifiedOptimizer`; not public API."""

    def __init__(
        self,
        opt: SignifiedOptimizer,
        chain: Sequence[Transform],
        compile: bool,
        chunk: int,
        nonfinite: str,
    ) -> None:
        self.opt = opt
        self.chain = list(chain)
        self.compile = compile
        self.chunk = chunk
        self.nonfinite = nonfinite
        #: "rows" or "flat" (see the module docstring), from SIGNIFY_LAYOUT; the default is
        #: rows when compiling and flat in eager mode, where the 2-D views would buy nothing
        self.layout = compiled.env_option(
            "SIGNIFY_LAYOUT", "rows" if compile else "flat", compiled.LAYOUTS
        )
        #: how the non-finite check reads the gradients when no transform has a prepass:
        #: "foreach" (torch's multi-tensor L1 norm, a few launches for all tensors) or
        #: "graph" (inside the compiled prepass, one reduction per tensor)
        self.finite_check = compiled.env_option(
            "SIGNIFY_FINITE_CHECK", "foreach", compiled.FINITE_CHECKS
        )
        self.hyper = HyperCache()
        self._plan: Plan | None = None
        self._plan_key: Any = None
        self._compiled: dict[Any, Callable[..., Any]] = {}
        self._tag = f"{id(self):x}"
        self.rank = 0  # set by transforms whose ranks must draw independent noise
        #: 0-d bool of the current step (None when unchecked); read by ``finalize`` hooks
        self.ok: Tensor | None = None
        # Segments: [start, end) ranges of the chain split after each barrier transform.
        self.segments: list[tuple[int, int]] = []
        start = 0
        for i, t in enumerate(self.chain):
            if t.is_barrier:
                self.segments.append((start, i + 1))
                start = i
        self.segments.append((start, len(self.chain)))
        self.has_prepare = any(t.has_prepare for t in self.chain)
        self._hooks = {
            name: [t for t in self.chain if _overrides(t, name)]
            for name in ("select", "before_step", "finalize", "exchange", "after_step")
        }
        self._static_hooks = [t for t in self.chain if hasattr(t, "static_items")]
        self._probe: dict[tuple[int, Any], list[tuple[str, ...]]] = {}

    # ------------------------------------------------------------------ planning
    def invalidate(self) -> None:
        """Forget the cached plan (state was created, dropped, moved or loaded)."""
        self._plan = None
        self._plan_key = None

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
            keys = [tuple(t.init([torch.empty(0, device="meta")], group))]
            self._probe[key] = keys
        return keys[0]

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

    def _build_plan(self, active: list[list[Tensor]]) -> Plan:
        opt = self.opt
        position = {p: i for i, p in enumerate(opt.all_params())}
        buckets: list[Bucket] = []
        counters: list[Tensor] = []
        devices: list[torch.device] = []
        flat_keys: dict[Any, list[tuple[str, ...]]] = {}
        for gi, ps in enumerate(active):
            if not ps:
                continue
            group = opt.param_groups[gi]
            static = self.static(group)
            key_lists = [self._state_keys(t, group) for t in self.chain]
            flat_keys[static] = key_lists
            by_kind: dict[tuple[Any, ...], list[Tensor]] = {}
            for p in ps:
                kind = (p.device, p.dtype, p.grad.dtype if p.grad is not None else None)
                by_kind.setdefault(kind, []).append(p)
            for (device, _, _), bps in by_kind.items():
                if device not in devices:
                    devices.append(device)
                # Within a bucket: tensors in the rows layout first, then the others, so
                # that every chunk is of one layout (a graph's inputs have one rank).
                rows = self.layout == "rows"
                lanes = [
                    [p for p in bps if rows and p.numel() % compiled.ROW == 0],
                    [p for p in bps if not (rows and p.numel() % compiled.ROW == 0)],
                ]
                ordered = lanes[0] + lanes[1]
                tkeys = torch.tensor(
                    [rng.tensor_key(position[p]) for p in ordered],
                    dtype=torch.int64,
                    device=device,
                )
                step_keys = torch.zeros_like(tkeys)
                chunks: list[Chunk] = []
                start = 0
                for lane, lane_ps in enumerate(lanes):
                    as_rows = lane == 0 and rows
                    sizes = (
                        powers_of_two(len(lane_ps), self.chunk)
                        if self.compile
                        else ([len(lane_ps)] if lane_ps else [])
                    )
                    offset = 0
                    for n in sizes:
                        cps = lane_ps[offset : offset + n]
                        chunks.append(self._chunk(gi, cps, key_lists, static, device, as_rows))
                        chunks[-1].keys = step_keys[start : start + n]
                        offset += n
                        start += n
                buckets.append(Bucket(device, tkeys, step_keys, chunks))
                for t in self.chain:
                    for c in t.counters:
                        counters.extend(opt.state[p][t.state_prefix + c] for p in bps)
        return Plan(buckets, counters, devices, flat_keys, (opt.state, len(opt.state)))

    def _chunk(
        self,
        gi: int,
        cps: list[Tensor],
        key_lists: list[tuple[str, ...]],
        static: tuple[tuple[str, Any], ...],
        device: torch.device,
        rows: bool,
    ) -> Chunk:
        opt = self.opt
        orders = [_dim_order(p) for p in cps]
        shapes: list[tuple[int, ...]] = [
            (p.numel() // compiled.ROW, compiled.ROW) if rows else (-1,) for p in cps
        ]
        states: list[State] = []
        for t, keys in zip(self.chain, key_lists):
            st: State = {}
            for k in keys:
                views = []
                for p, order, shape in zip(cps, orders, shapes):
                    full = t.state_prefix + k
                    buf = opt.state[p][full]
                    if (
                        order is not None
                        and buf.shape == p.shape
                        and not buf.permute(order).is_contiguous()
                    ):
                        # State laid out unlike its parameter: re-lay it (once).
                        buf = torch.empty_like(p, dtype=buf.dtype).copy_(buf)
                        opt.state[p][full] = buf
                    if buf.numel() == p.numel() and buf.dim() > 0:
                        views.append(_view(buf, order, shape))
                    else:  # a per-tensor scalar (a step counter): 1-D
                        views.append(buf.view(-1))
                st[k] = views
            st.update(t.plan(cps, gi))
            states.append(st)
        views = [_view(p.data, o, s) for p, o, s in zip(cps, orders, shapes)]
        return Chunk(gi, cps, views, orders, shapes, states, torch.empty(0), static, device, rows)

    # ------------------------------------------------------------------ running
    def _runner(self, key: tuple[Any, ...], make: Callable[[], Callable[..., Any]]) -> Any:
        fn = self._compiled.get(key)
        if fn is None:
            fn = make()
            if self.compile:
                fn = compiled.compile_fn(compiled.fresh(fn, f"{self._tag}_{len(self._compiled)}"))
            self._compiled[key] = fn
        return fn

    def _prepare_runner(self, c: Chunk, check: bool) -> Any:
        assert self._plan is not None
        fk = self._plan.flat_keys[c.static]
        return self._runner(
            ("prepare", c.static, len(c.params), c.rows, check),
            lambda: compiled.make_prepare(self.chain, dict(c.static), check, fk, c.rows),
        )

    def _segment_runner(self, s: int, c: Chunk) -> Any:
        assert self._plan is not None
        start, end = self.segments[s]
        fk = self._plan.flat_keys[c.static]
        return self._runner(
            ("segment", s, c.static, len(c.params), c.rows),
            lambda: compiled.make_segment(self.chain, start, end, dict(c.static), fk, c.rows),
        )

    def _plan_for(self, active: list[list[Tensor]]) -> Plan:
        opt = self.opt
        plan_key = tuple(
            (tuple(map(id, ps)), self.static(g)) for ps, g in zip(active, opt.param_groups)
        )
        plan = self._plan
        if (
            plan is None
            or plan_key != self._plan_key
            or plan.state_ref[0] is not opt.state
            or plan.state_ref[1] != len(opt.state)
        ):
            self._ensure_state(active)
            plan = self._plan = self._build_plan(active)
            self._plan_key = plan_key
        return plan

    def step(self) -> None:
        opt = self.opt
        active = self.active_params()
        if not any(active):
            return
        for t in self._hooks["before_step"]:
            t.before_step(opt, active)
        with compiled.no_duck_shapes():
            self._step(self._plan_for(active))
        for t in self._hooks["after_step"]:
            t.after_step(opt)

    def _step(self, plan: Plan) -> None:
        opt = self.opt
        device = plan.devices[0]
        shared = opt.shared_state(device)
        shared_tensors = {
            name: {k: v for k, v in d.items() if isinstance(v, Tensor)}
            for name, d in shared.items()
        }
        groups = opt.param_groups
        hypers: dict[tuple[int, torch.device], dict[str, Tensor]] = {}
        per_chunk = []
        for bucket in plan.buckets:
            for c in bucket.chunks:
                hk = (c.group_index, c.device)
                hyper = hypers.get(hk)
                if hyper is None:
                    hyper = hypers[hk] = self.hyper.get(
                        c.group_index, groups[c.group_index], c.device
                    )
                grads = [
                    _view(p.grad, o, s)  # type: ignore[arg-type]
                    for p, o, s in zip(c.params, c.orders, c.shapes)
                ]
                per_chunk.append((c, grads, hyper))

        # 1. prepass: non-finite check and global reductions
        check = self.nonfinite != "ignore"
        bad: Tensor | None = None
        mode: str | None = None
        if check and not self.has_prepare and self.finite_check == "foreach":
            mode = "foreach"
            grads_all = [p.grad for c, _, _ in per_chunk for p in c.params]
            norms = torch._foreach_norm(grads_all, 1)  # type: ignore[arg-type]
            bad = torch.stack(norms).float()
        elif check or self.has_prepare:
            mode = "graph" if check else None
            bad = torch.zeros(1, dtype=torch.float32, device=device)
            for c, grads, hyper in per_chunk:
                run = self._prepare_runner(c, check)
                run(c.views, grads, c.states, hyper, c.keys, shared_tensors, bad)
        if self.nonfinite == "raise":
            assert bad is not None
            flag = (bad != 0).any() if mode == "graph" else ~torch.isfinite(bad).all()
            if bool(flag):  # documented host sync
                raise FloatingPointError("non-finite gradient (nonfinite='raise')")
            mode = None  # the step goes ahead: count it unconditionally

        # 2. the step's scalars: ok flag, counters, random keys
        ok = self._bookkeeping(plan, device, mode, bad)
        if plan.counters:
            if ok is None:
                torch._foreach_add_(plan.counters, 1.0)
            else:
                torch._foreach_add_(plan.counters, ok.to(torch.float32))
        self.ok = ok
        for t in self._hooks["finalize"]:
            t.finalize(opt)

        # 3. the elementwise pass, segment by segment
        for s in range(len(self.segments)):
            for c, grads, hyper in per_chunk:
                run = self._segment_runner(s, c)
                run(c.views, grads, c.states, hyper, c.keys, ok, shared_tensors)
            if s + 1 < len(self.segments):
                self.chain[self.segments[s][1] - 1].exchange(opt)

    def _bookkeeping(
        self, plan: Plan, device: torch.device, mode: str | None, bad: Tensor | None
    ) -> Tensor | None:
        shared = self.opt.shared_state(device)
        state = shared["rng"]
        here = [b for b in plan.buckets if b.device == device]
        run = self._runner(
            ("bookkeeping", mode, self.rank, len(here)),
            lambda: compiled.make_bookkeeping(mode, self.rank),
        )
        ok = run(
            bad,
            state["seed"],
            state["counter"],
            shared["nonfinite"]["skipped"],
            [b.tensor_keys for b in here],
            [b.step_keys for b in here],
        )
        for b in plan.buckets:
            if b.device != device:  # other devices: the same keys, eagerly
                key = rng.step_key(state["seed"], state["counter"], self.rank).to(b.device)
                b.step_keys.copy_(rng.mix32(b.tensor_keys ^ key))
        return ok  # type: ignore[no-any-return]


def _overrides(t: Transform, name: str) -> bool:
    return getattr(type(t), name) is not getattr(Transform, name)


def env_chunk(default: int = 8) -> int:
    return int(os.environ.get("SIGNIFY_COMPILE_CHUNK", default))
