"""The functions a step runs over chunks of tensors, and how they are compiled.

Three graph bodies, each built per (chain segment, static settings of a param group):

* `make_prepare`: the non-finite check of the gradients and the global reductions of
  transforms that ask for them (``prepare``), before any parameter changes;
* `make_bookkeeping`: the step's scalar work on the device (the ok flag, the skip count,
  the random-stream counter and every bucket's per-tensor keys), one small graph per step
  instead of a few dozen eager launches;
* `make_segment`: the elementwise pass of a chain segment, ending in the parameter write.

`compile_fn` compiles one of them from a fresh code object, so that no two optimizers (or
variants) share dynamo's recompile budget: with ``dynamic=True``, except a flat bucket's
graphs, compiled for the bucket's size (`signify.executor._shapes`).

Layouts. The executor hands each graph 1-D tensors. In a "rows" chunk every size is a
multiple of ``ROW``, and the graph says so first thing (`_rows`), so that Triton can issue
16-byte vector loads without a per-element bound check on the tail, which it cannot prove
for a bare dynamic size.
"""

from __future__ import annotations

import contextlib
import json
import os
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import rng
from .transforms.base import StepContext, Transform, Update, total, up

#: Row length of the "rows" layout: 16 elements, a multiple of every vector width.
ROW = 16
LAYOUTS = ("rows", "flat")
FINITE_CHECKS = ("graph", "foreach")
SHAPES = ("dynamic", "static")
COMBO = ("off", "prepare", "all")


def env_option(name: str, default: str, allowed: Sequence[str]) -> str:
    value = os.environ.get(name, default)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def fresh(fn: Callable[..., Any], tag: str) -> Callable[..., Any]:
    """A copy of ``fn`` with its own code object, hence its own dynamo cache and budget."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def compile_fn(
    fn: Callable[..., Any], kind: str, device_type: str, dynamic: bool = True
) -> Callable[..., Any]:
    options = inductor_options(kind, device_type)
    return torch.compile(fn, fullgraph=True, dynamic=dynamic, options=options)


def inductor_options(kind: str, device_type: str) -> dict[str, Any]:
    """Inductor settings of one graph (``kind``: "prepare", "bookkeeping" or "segment").

    The counter hash (`signify.rng`) reads every intermediate twice (``x ^ (x >> 16)``);
    inductor inlines a pointwise value into each reader unless its expression exceeds
    ``realize_opcount_threshold`` operations (default 30), so a chain of hash rounds is
    re-expanded in every reader, lowering work that doubles per round. A lower threshold
    materialises the intermediates, which the scheduler fuses back into the same kernel as
    kernel-local values (the kernel count does not change).

    * bookkeeping (integer scalars only, so exact whatever the kernel layout): threshold 4.
      CPU, cold cache: the step key's graph 30 s -> 9 s.
    * elementwise graphs on the CPU: threshold 8; the same bits as 30 (bench/realize.py),
      a stochastic AdamW bf16 first step 27-29 s -> 20-22 s on 2 cores.
    * elementwise graphs on a GPU: inductor's default. Threshold 8 measured on an H100
      (bench/results/h100-session3-2026-11-23): 350M cold compile 23.7 -> 18.2 s, stochastic
      Adam bf16 1.368 -> 1.263 ms, fp32 equal. Re-measured on the current build (seventh
      session, flat, ``nonfinite="ignore"``): no gain left (fp32 1.273 vs 1.270 ms, bf16
      0.818 vs 0.814), and both thresholds differ from eager in 10 of 526,900 fp32
      stochastic-Adam parameters after 8 steps (a last-bit difference flips a rare
      stochastic sign), so the default stays. ``SIGNIFY_REALIZE_THRESHOLD`` overrides both
      elementwise defaults.

    Combo kernels (GPU): inductor's ``combo_kernels`` launches the independent kernels of a
    graph (one per tensor of a per-tensor chunk) as one, so a chunk of eight tensors pays
    one launch and one partly idle last wave instead of eight; the split reductions of a
    prepass lose their many tiny second-stage kernels. Measured on an H100 (docs/performance.md,
    seventh session; 134M, per tensor): Signum 1.275 -> 1.131 ms, ALIAS 1.596 -> 1.343 ms,
    stochastic Adam without the check 1.481 -> 1.292 ms; first compile slower (9.1 -> 12.7 s).
    ``SIGNIFY_COMBO``: ``all`` (default), ``prepare`` (the prepass only) or ``off``; a flat
    bucket's graph has one tensor, so it is unchanged.

    Size asserts: inductor's generated wrapper re-checks every input's sizes and strides on
    each call (``size_asserts``), which dynamo's guards have checked just before; a chunk of
    eight tensors has some fifty inputs. Off for every graph here: on the 2-core CPU box a
    step of 220 tensors (28 chunk calls) took 10.13 ms instead of 10.99 ms, on the H100 machine
    (CUDA-graph replay off) 8.51 ms instead of 9.12 (medians of 30 interleaved rounds,
    ``bench/host_overhead.py``; docs/performance.md, ninth session).

    ``SIGNIFY_INDUCTOR`` (a JSON object of inductor options, e.g.
    ``{"coordinate_descent_tuning": true}``) adds to the elementwise graphs' settings: the
    benchmarks' switch for trying a setting side by side (docs/performance.md).
    """
    if kind == "bookkeeping":
        return {"realize_opcount_threshold": 4, **_NO_SIZE_ASSERTS}
    default = "8" if device_type == "cpu" else "30"
    raw = os.environ.get("SIGNIFY_REALIZE_THRESHOLD", default)
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"SIGNIFY_REALIZE_THRESHOLD must be a positive integer, got {raw!r}")
    opts: dict[str, Any] = {"realize_opcount_threshold": int(raw), **_NO_SIZE_ASSERTS}
    combo = env_option("SIGNIFY_COMBO", "all", COMBO)
    if device_type == "cuda" and (combo == "all" or (combo == "prepare" and kind == "prepare")):
        from torch._inductor import config as inductor_config

        if hasattr(inductor_config, "combo_kernels"):  # an unknown option name is an error
            opts["combo_kernels"] = True
    return {**opts, **extra_inductor_options()}


#: inductor's per-call re-check of the inputs' sizes and strides (the guards checked them)
_NO_SIZE_ASSERTS = {"size_asserts": False}


def extra_inductor_options() -> dict[str, Any]:
    """The options of ``SIGNIFY_INDUCTOR``, checked against inductor's config names."""
    raw = os.environ.get("SIGNIFY_INDUCTOR", "").strip()
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"SIGNIFY_INDUCTOR must be a JSON object, got {raw!r} ({e})") from None
    if not isinstance(opts, dict):
        raise ValueError(f"SIGNIFY_INDUCTOR must be a JSON object, got {raw!r}")
    from torch._inductor import config as inductor_config

    known = set(inductor_config.get_config_copy())
    unknown = sorted(set(opts) - known)
    if unknown:
        raise ValueError(f"SIGNIFY_INDUCTOR: unknown inductor option(s) {unknown}")
    return opts


def no_duck_shapes() -> contextlib.AbstractContextManager[Any]:
    """Dynamo assumes that sizes equal at trace time stay equal ("duck shaping"); chunks of
    unrelated tensors break that assumption, so it is switched off while a step runs (it
    matters only when a graph is traced, and costs one config patch per step)."""
    try:
        import torch.fx.experimental._config as fx_config

        return fx_config.patch(use_duck_shape=False)  # type: ignore[attr-defined, no-any-return]
    except (ImportError, AttributeError):  # pragma: no cover - older torch
        return contextlib.nullcontext()


def _rows(xs: list[Tensor]) -> None:
    """Tell the compiler that every size is a multiple of ROW: a branch on it makes dynamo
    guard ``n % 16 == 0``, which the shape environment records as a divisibility fact that
    inductor reads (``statically_known_multiple_of``). A view or a slice carrying the same
    fact (``x.view(-1, 16)``, ``x.narrow(0, 0, 16 * (n // 16))``) also works, but splits the
    fused update into several kernels (measured on an H100: 3 kernels per tensor, 35% of
    copy bandwidth)."""
    for x in xs:
        if x.shape[0] % ROW:
            raise ValueError("a rows chunk holds a tensor whose size is not a multiple of 16")


def clipped(grads: Sequence[Tensor], coef: Tensor) -> list[Tensor]:
    """``max_grad_norm``: the gradients times the clip coefficient (a 0-d tensor), rounded to
    their dtype as ``clip_grad_norm_``'s in-place multiply would be; fused into the pass that
    reads them, so ``.grad`` itself is left unscaled. (fp16 goes through ``.to``, which a
    compiled graph may skip: there the product keeps float32 precision.)"""
    out = []
    for g in grads:
        v = up(g) * coef
        if g.dtype == torch.bfloat16:
            v = _nearest_bf16(v)
        out.append(v.to(g.dtype))
    return out


def _nearest_bf16(v: Tensor) -> Tensor:
    """float32 ``v`` rounded to the nearest bfloat16 (ties to even), still as float32.
    Written on the bits because inductor drops a ``.to(bfloat16)`` followed by an upcast
    (on the CPU, 1-2 of 277 bf16 parameters differed from eager in 2 runs of 8);
    non-finite values pass as they are (their patterns could overflow the addition)."""
    b = v.view(torch.int32)
    r = ((b + 0x7FFF + ((b >> 16) & 1)) & -0x10000).view(torch.float32)
    return torch.where(torch.isfinite(v), r, v)


def make_prepare(
    chain: list[Transform],
    static_items: Sequence[tuple[str, Any]],
    check_finite: bool,
    rows: bool,
) -> Callable[..., None]:
    users = [i for i, t in enumerate(chain) if t.has_prepare]
    static = dict(static_items)

    def signify_prepare(params, grads, states, hyper, keys, shared, bad, clip):  # type: ignore[no-untyped-def]
        if rows:
            _rows(params)
        if clip is not None:
            grads = clipped(grads, clip)
        if check_finite:
            for g in grads:
                bad.add_(total(~torch.isfinite(g)))
        ctx = StepContext(hyper, static, keys, None, shared)
        u = Update(params=params, grads=grads, lr=hyper["lr"])
        for i in users:
            chain[i].prepare(u, states[i], ctx)

    return signify_prepare


def make_segment(
    chain: list[Transform],
    start: int,
    end: int,
    static_items: Sequence[tuple[str, Any]],
    rows: bool,
) -> Callable[..., None]:
    static = dict(static_items)

    def signify_segment(params, grads, states, hyper, keys, ok, shared, clip):  # type: ignore[no-untyped-def]
        if rows:
            _rows(params)
        if clip is not None:
            grads = clipped(grads, clip)
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


def make_bookkeeping(check: str | None, count_all: bool = False) -> Callable[..., Tensor | None]:
    """The step's scalar work; per-tensor keys are written as int32 (`signify.rng`).
    ``check``: None (no check: every step counts), "graph" (``bad`` counts non-finite
    gradient entries) or "foreach" (``bad`` holds per-tensor max-abs norms of the gradients,
    non-finite iff a gradient is). ``count_all``: the random-stream counter advances even on
    a step this rank skips (under a majority vote the parameter write is the group's and
    happens on every rank; its stochastic rounding must draw the same keys everywhere, so
    the ranks' counters must not fall out of step)."""

    def signify_bookkeeping(bad, seed, counter, skipped, tensor_keys, step_keys):  # type: ignore[no-untyped-def]
        ok = None
        if check is None:
            counter.add_(1)
        else:
            ok = (bad == 0).all() if check == "graph" else torch.isfinite(bad).all()
            counter.add_(1 if count_all else ok.to(torch.int64))
            skipped.add_((~ok).to(skipped.dtype))
        key = rng.step_key(seed, counter)
        for tk, sk in zip(tensor_keys, step_keys):
            sk.copy_(rng.to_i32(rng.mix32(tk ^ key)))
        return ok

    return signify_bookkeeping
