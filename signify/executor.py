"""Running a chain over the optimizer's parameters: eagerly, or as compiled fused graphs.

One step is at most three kinds of pass, each over *chunks* of parameters:

1. a prepass, only when needed: the non-finite check of the gradients and the global
   reductions of transforms that ask for them (``prepare``, e.g. ALIAS's norms);
2. host-side scalar work: ``finalize`` (turn reductions into a stepsize), the step counters
   and the random-stream keys, all as 0-d device tensors (no host sync);
3. the elementwise pass, split in segments around barrier transforms (a collective such as
   the majority vote sits between two segments).

Compiled layout. Each pass is one function of a *chunk*, a list of up to ``chunk`` 1-D
tensors, compiled with ``dynamic=True`` so one graph serves every chunk of the same length
whatever the tensor sizes: compile cost does not grow with the number of tensors. Chunk
lengths are powers of two (a bucket of 11 tensors runs as 8 + 2 + 1), so at most
``log2(chunk) + 1`` graphs exist per pass. Each graph is compiled from its own code object so
that no two optimizers (or variants) share dynamo's recompile budget. Every per-step scalar
(lr, step counters, bias corrections, random keys) is a device tensor: a scheduler changing lr
every step causes no recompile, and ``step()`` never synchronises with the device.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import rng
from .transforms.base import State, StepContext, Transform, Update, freeze_static

if TYPE_CHECKING:
    from .optimizer import SignifiedOptimizer

_NOT_PARAMS = ("params", "param_names")


def _flat(t: Tensor) -> Tensor:
    return t.view(-1) if t.is_contiguous() else t.reshape(-1)


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
                    t.fill_(float(v))
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
    flat_params: list[Tensor]
    states: list[State]  # per transform, 1-D views of its state buffers
    keys: Tensor  # view of the bucket's per-step random keys
    static: tuple[tuple[str, Any], ...]
    device: torch.device


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


def _powers_of_two(n: int, cap: int) -> list[int]:
    out = []
    while n > 0:
        k = min(cap, 1 << (n.bit_length() - 1))
        out.append(k)
        n -= k
    return out


def _fresh(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object, hence its own dynamo cache and budget."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    new = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
    return new


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

    # ------------------------------------------------------------------ planning
    def invalidate(self) -> None:
        """Forget the cached plan (state was created, dropped, moved or loaded)."""
        self._plan = None
        self._plan_key = None

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

    def _ensure_state(self, active: list[list[Tensor]]) -> bool:
        """Create missing per-parameter state; True if anything was created."""
        opt = self.opt
        created = False
        for gi, ps in enumerate(active):
            if not ps:
                continue
            group = opt.param_groups[gi]
            for t in self.chain:
                probe = t.init([torch.empty(0, device="meta")], group)
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
                created = True
        return created

    def _build_plan(self, active: list[list[Tensor]]) -> Plan:
        opt = self.opt
        position = {p: i for i, p in enumerate(opt.all_params())}
        buckets: list[Bucket] = []
        counters: list[Tensor] = []
        devices: list[torch.device] = []
        for gi, ps in enumerate(active):
            if not ps:
                continue
            group = opt.param_groups[gi]
            static = freeze_static(group)
            key_lists = [list(t.init([torch.empty(0, device="meta")], group)) for t in self.chain]
            by_kind: dict[tuple[Any, ...], list[Tensor]] = {}
            for p in ps:
                kind = (p.device, p.dtype, p.grad.dtype if p.grad is not None else None)
                by_kind.setdefault(kind, []).append(p)
            for (device, _, _), bps in by_kind.items():
                if device not in devices:
                    devices.append(device)
                tkeys = torch.tensor(
                    [rng.tensor_key(position[p]) for p in bps], dtype=torch.int64, device=device
                )
                step_keys = torch.zeros_like(tkeys)
                sizes = [len(bps)] if not self.compile else _powers_of_two(len(bps), self.chunk)
                chunks: list[Chunk] = []
                start = 0
                for n in sizes:
                    cps = bps[start : start + n]
                    states: list[State] = []
                    for t, tkeys_t in zip(self.chain, key_lists):
                        st: State = {
                            k: [_flat(opt.state[p][t.state_prefix + k]) for p in cps]
                            for k in tkeys_t
                        }
                        st.update(t.plan(cps, gi))
                        states.append(st)
                    chunks.append(
                        Chunk(
                            gi,
                            cps,
                            [_flat(p.data) for p in cps],
                            states,
                            step_keys[start : start + n],
                            static,
                            device,
                        )
                    )
                    start += n
                buckets.append(Bucket(device, tkeys, step_keys, chunks))
                for t in self.chain:
                    for c in t.counters:
                        counters.extend(opt.state[p][t.state_prefix + c] for p in bps)
        return Plan(buckets, counters, devices)

    # ------------------------------------------------------------------ running
    def _runner(self, kind: str, segment: int, static: Any, n: int) -> Callable[..., Any]:
        key = (kind, segment, static, n)
        fn = self._compiled.get(key)
        if fn is None:
            if kind == "prepare":
                fn = _make_prepare(self.chain, dict(static), self.nonfinite != "ignore")
            else:
                start, end = self.segments[segment]
                fn = _make_segment(self.chain, start, end, dict(static))
            if self.compile:
                fn = _compiled(_fresh(fn, f"{self._tag}_{len(self._compiled)}"))
            self._compiled[key] = fn
        return fn

    def step(self) -> None:
        opt = self.opt
        active = self.active_params()
        if not any(active):
            return
        for t in self._hooks["before_step"]:
            t.before_step(opt, active)
        created = self._ensure_state(active)
        plan_key = tuple(
            (tuple(map(id, ps)), freeze_static(g)) for ps, g in zip(active, opt.param_groups)
        )
        if created or self._plan is None or plan_key != self._plan_key:
            self._plan = self._build_plan(active)
            self._plan_key = plan_key
        plan = self._plan
        device = plan.devices[0]
        shared = opt.shared_state(device)
        shared_tensors = {
            name: {k: v for k, v in d.items() if isinstance(v, Tensor)}
            for name, d in shared.items()
        }

        per_chunk = []
        for bucket in plan.buckets:
            for c in bucket.chunks:
                grads = [_flat(p.grad) for p in c.params]  # type: ignore[arg-type]
                hyper = self.hyper.get(c.group_index, opt.param_groups[c.group_index], c.device)
                per_chunk.append((c, grads, hyper))

        # 1. prepass: non-finite check and global reductions
        ok: Tensor | None = None
        if self.nonfinite != "ignore" or self.has_prepare:
            bad = torch.zeros((), dtype=torch.float32, device=device)
            for c, grads, hyper in per_chunk:
                run = self._runner("prepare", 0, c.static, len(c.params))
                run(c.flat_params, grads, c.states, hyper, c.keys, shared_tensors, bad)
            if self.nonfinite == "raise":
                if bad.item() != 0:  # documented host sync
                    raise FloatingPointError("non-finite gradient (nonfinite='raise')")
            elif self.nonfinite == "skip":
                ok = bad == 0
                opt.count_skipped(bad)

        # 2. counters and random keys, on the device
        state = opt.rng_state(device)
        if ok is None:
            if plan.counters:
                torch._foreach_add_(plan.counters, 1.0)
            state["counter"].add_(1)
        else:
            okf = ok.to(torch.float32)
            if plan.counters:
                torch._foreach_add_(plan.counters, [okf] * len(plan.counters))
            state["counter"].add_(ok.to(torch.int64))
        for bucket in plan.buckets:
            seed = state["seed"].to(bucket.device)
            counter = state["counter"].to(bucket.device)
            key = rng.step_key(seed, counter, self.rank)
            bucket.step_keys.copy_(rng.mix32(bucket.tensor_keys ^ key))
        self.ok = ok
        for t in self._hooks["finalize"]:
            t.finalize(opt)

        # 3. the elementwise pass, segment by segment
        for s in range(len(self.segments)):
            for c, grads, hyper in per_chunk:
                run = self._runner("segment", s, c.static, len(c.params))
                run(c.flat_params, grads, c.states, hyper, c.keys, ok, shared_tensors)
            if s + 1 < len(self.segments):
                self.chain[self.segments[s][1] - 1].exchange(opt)

        for t in self._hooks["after_step"]:
            t.after_step(opt)


def _overrides(t: Transform, name: str) -> bool:
    return getattr(type(t), name) is not getattr(Transform, name)


def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    duck = _duck_shape_off()

    def run(*args: Any) -> Any:
        with duck():
            return compiled(*args)

    return run


def _duck_shape_off() -> Callable[[], Any]:
    """Dynamo assumes equal sizes stay equal ("duck shaping"); chunks of different tensors
    break that assumption, so it is switched off while signify's graphs trace."""
    try:
        import torch.fx.experimental._config as fx_config

        return lambda: fx_config.patch(use_duck_shape=False)  # type: ignore[attr-defined]
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        import contextlib

        return contextlib.nullcontext


def _make_prepare(
    chain: list[Transform], static: dict[str, Any], check_finite: bool
) -> Callable[..., None]:
    users = [i for i, t in enumerate(chain) if t.has_prepare]

    def signify_prepare(params, grads, states, hyper, keys, shared, bad):  # type: ignore[no-untyped-def]
        if check_finite:
            for g in grads:
                bad.add_((~torch.isfinite(g)).sum())
        ctx = StepContext(hyper, static, keys, None, shared)
        u = Update(params=params, grads=grads, lr=hyper["lr"])
        for i in users:
            chain[i].prepare(u, states[i], ctx)

    return signify_prepare


def _make_segment(
    chain: list[Transform], start: int, end: int, static: dict[str, Any]
) -> Callable[..., None]:
    def signify_segment(params, grads, states, hyper, keys, ok, shared):  # type: ignore[no-untyped-def]
        ctx = StepContext(hyper, static, keys, ok, shared)
        u = Update(params=params, grads=grads, lr=hyper["lr"])
        for i, t in enumerate(chain):
            u = t.begin(u, states[i], ctx)
        for i in range(start, end):
            t = chain[i]
            if t.is_barrier and i == start and start > 0:
                u = t.post(u, states[i], ctx)  # type: ignore[attr-defined]
            elif t.is_barrier and i == end - 1:
                t.pre(u, states[i], ctx)  # type: ignore[attr-defined]
            else:
                u, _ = t.update(u, states[i], ctx)

    return signify_segment


def env_chunk(default: int = 8) -> int:
    return int(os.environ.get("SIGNIFY_COMPILE_CHUNK", default))
