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
(aliases of parameters and state, chunk lists; built by `signify.planner`) is reused and only
gradient aliases are made.
On CUDA, a compiled chain whose step is pure device work (no collectives, block switches or
``nonfinite="raise"``; a stepsize oracle's scalar hooks are allowed, `Transform.graph_safe`)
is captured as one CUDA graph (`signify.cudagraphs`) once the same plan, gradient and
optimizer-level tensor addresses have repeated for two steps, and replayed while they stay
the same: the step then costs the host a few dozen microseconds whatever the number of
tensors. The capture step synchronises once. ``SIGNIFY_CUDA_GRAPHS=0`` turns this off.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import compiled, gradcheck, rng, sharding, zero
from .cudagraphs import GraphReplay
from .flat import check_chain
from .planner import Planner, overrides
from .planning import HyperCache, Plan, alias, powers_of_two
from .sharding import local
from .transforms.base import RANK, Transform

if TYPE_CHECKING:
    from .optimizer import SignifiedOptimizer

__all__ = ["Executor", "HyperCache", "powers_of_two"]

_GRAD = attrgetter("grad")
_HOOKS = ("before_step", "finalize", "exchange", "after_step")  # select: `Planner`


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
        self.nonfinite = nonfinite
        #: ``max_grad_norm``: the gradients are clipped inside the compiled passes, unless an
        #: adapter steps the base on the host (run-and-read), which clips ``.grad`` itself
        norm = opt.options.max_grad_norm
        self.max_grad_norm = None if norm is None else float(norm)
        self.clip_in_graph = self.max_grad_norm is not None and not any(
            t.clips_on_host for t in self.chain
        )
        if flatten:  # buckets re-homed into one buffer each (`signify.flat`)
            check_chain(self.chain)
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
        #: the ZeroRedundancyOptimizer partition this optimizer steps (`signify.zero`)
        self.partition = zero.detect(opt)
        # Segments: [start, end) ranges of the chain split after each barrier transform.
        self.segments: list[tuple[int, int]] = []
        start = 0
        for i, t in enumerate(self.chain):
            if t.is_barrier:
                self.segments.append((start, i + 1))
                start = i
        self.segments.append((start, len(self.chain)))
        self.has_prepare = any(t.has_prepare for t in self.chain)
        self._hooks = {name: [t for t in self.chain if overrides(t, name)] for name in _HOOKS}
        self.planner = Planner(
            opt,
            self.chain,
            compile=compile,
            chunk=chunk,
            # padding to full chunks is safe when no transform looks across tensors
            pad=compile
            and not any(t.has_prepare or t.is_barrier or overrides(t, "plan") for t in self.chain),
            layout=self.layout,
            flatten=flatten,
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
        self.replay = GraphReplay()

    # ------------------------------------------------------------------ planning
    def invalidate(self, forget_homes: bool = False) -> None:
        """Forget the cached plan (state was created, dropped, moved or loaded), and with
        ``forget_homes`` the flat buckets too (`signify.flat.unflatten`)."""
        self._plan = None
        self._plan_key_ = None
        self.replay.forget()
        if forget_homes:
            self.planner.homes.clear()

    def _reduce_group(self) -> Any:
        """The group over which the non-finite check and the clipping norm span the model:
        FSDP2's shard group, ZeRO's process group, or None (this rank holds all of it)."""
        part = self.partition
        return self.shard_group if self.shard_group is not None or part is None else part.group

    def _plan_key(self, active: list[list[Tensor]]) -> Any:
        return self.planner.key(active, self.shard_group is not None)

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

    def _rank_key(self, device: torch.device) -> Tensor:
        """This rank's salt for the draws that must differ between ranks, an int32 tensor
        (`StepContext.uniform`; a rank held by a Python int would be traced as a symbol,
        whose integer hashing miscompiles on CPU)."""
        key = self._rank_keys.get((device, self.rank))
        if key is None:
            key = rng.to_i32(torch.tensor(rng.rank_key(self.rank), dtype=torch.int64)).to(device)
            self._rank_keys[(device, self.rank)] = key
        return key

    def _static(self, c: Any) -> bool:
        return c.flat is not None or self.shapes == "static"

    def _shape_key(self, c: Any) -> Any:
        return _shapes(c, self._static(c))

    def step(self) -> None:
        opt, planner = self.opt, self.planner
        active = planner.active_params()
        if not any(active):
            if self.partition is not None:
                zero.idle(self)  # the other ranks' collectives wait for this one
            return
        if self.nonfinite == "raise":
            self._raise_if_nonfinite(active)  # before anything (state included) changes
        key = self._plan_key(active)
        if self._plan is None or key != self._plan_key_:
            planner.ensure_state(active)  # before the hooks: the run-and-read path fills it
        for t in self._hooks["before_step"]:
            t.before_step(opt, active)
        if self._hooks["before_step"]:
            key = self._plan_key(active)  # hooks may have dropped or moved state
        if self._plan is None or key != self._plan_key_:
            planner.ensure_state(active)
            self._plan = planner.build(active, self.shard_group is not None)
            self._plan_key_ = self._plan_key(active)
            self.shard_group = sharding.shard_group(opt.all_params())
            self.replay.forget()
        plan = self._plan
        for fb in plan.flats:
            fb.bind_grads()  # gradients allocated anew are copied in (before the signature)
        hypers: dict[Any, dict[str, Tensor]] = {}  # one per group and device, not per chunk
        for b in plan.buckets:
            key = (b.chunks[0].group_index, b.device)
            if key not in hypers:
                hypers[key] = self.hyper.get(key[0], opt.param_groups[key[0]], key[1])
        if self._use_graphs(plan):
            self._graphed_step(plan, hypers)
        else:
            self.ok = self._run(plan, hypers)
        for t in self._hooks["after_step"]:
            t.after_step(opt)

    def _use_graphs(self, plan: Plan) -> bool:
        return (
            self.capturable()
            and self._reduce_group() is None
            and plan.devices[0].type == "cuda"
            and len(plan.devices) == 1
        )

    def capturable(self) -> bool:
        """Whether this step may run as a CUDA graph: pure device work, with the host hooks
        of stepsize oracles allowed when they say so (`Transform.graph_safe`: no
        all-reduce)."""
        return (
            self.graphs
            and not self.replay.failed
            and all(t.graph_safe() for t in self._host_hooked)
        )

    def _raise_if_nonfinite(self, active: list[list[Tensor]]) -> None:
        """``nonfinite="raise"``: one host sync (documented), before anything changes."""
        grads = [local(p.grad) for ps in active for p in ps if p.grad is not None]
        if not gradcheck.all_finite(grads, self._reduce_group()):
            raise FloatingPointError("non-finite gradient (nonfinite='raise')")

    def _graphed_step(self, plan: Plan, hypers: dict[Any, dict[str, Tensor]]) -> None:
        """Replay the captured step while nothing it reads by address has moved."""
        shared = self.opt.shared_state(plan.devices[0])
        sig = (
            id(plan),
            # (replayed only without sharding: the gradients are plain tensors; C-level
            # iteration, 0.1 us a tensor against 0.5 through a Python generator and `local`)
            tuple(map(Tensor.data_ptr, map(_GRAD, plan.grad_params))),
            self.hyper.version,
            self.rank,
            # optimizer-level tensors (a stepsize's slots grow, a load replaces them)
            tuple(
                v.data_ptr() for d in shared.values() for v in d.values() if isinstance(v, Tensor)
            ),
        )
        self.ok = self.replay.step(sig, lambda: self._run(plan, hypers))

    def _run(self, plan: Plan, hypers: dict[Any, dict[str, Tensor]]) -> Tensor | None:
        opt = self.opt
        device = plan.devices[0]
        shared = opt.shared_state(device)
        shared_tensors = {
            name: {k: v for k, v in d.items() if isinstance(v, Tensor)}
            for name, d in shared.items()
        }
        if self.rank:
            shared_tensors[RANK] = {"key": self._rank_key(device)}
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
                total = gradcheck.grad_norm(_real_grads(per_chunk), device, self._reduce_group())
                # clip_grad_norm_'s coefficient, bit for bit
                coef = torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0)
                coefs = {d: coef if d == device else coef.to(d) for d in plan.devices}
                if check:  # the norm is finite iff every gradient is: it is the check
                    bad, mode, check = total.reshape(1), "foreach", False
            if check and not self.has_prepare and self.finite_check == "foreach":
                mode = "foreach"
                bad = gradcheck.max_abs(_real_grads(per_chunk), device)
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
            if check and bad is not None and (group := self._reduce_group()) is not None:
                # a non-finite entry may sit in one rank's shard: every rank must skip
                bad, mode = sharding.nonfinite_anywhere(bad, mode, group), "graph"

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

    def _bookkeeping(
        self, plan: Plan, device: torch.device, mode: str | None, bad: Tensor | None
    ) -> Tensor | None:
        shared = self.opt.shared_state(device)
        state = shared["rng"]
        here = [b for b in plan.buckets if b.device == device]
        # Under a vote (a barrier) the write is the group's step on every rank, a rank that
        # skipped its own included: its random stream advances with the others'.
        count_all = any(t.is_barrier for t in self.chain)
        run = self._runner(
            ("bookkeeping", mode, len(here), count_all),
            lambda: compiled.make_bookkeeping(mode, count_all),
            device,
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
                key = rng.step_key(state["seed"], state["counter"]).to(b.device)
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
