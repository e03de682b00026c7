"""Tracing a torch optimizer's per-tensor update into an FX graph, and rewriting its
parameter write into the sign conversion's ``(a, sigma)``.

`trace` builds a one-tensor instance of the base class (``foreach=False``, and
``differentiable=True`` where the class has it, which keeps step counters as tensors) and
traces its own ``step()`` with ``make_fx`` on fake tensors, twice:

* from an empty state, to find how the state is created (the first op of each buffer's
  in-place chain: ``zeros_like(p)``, ``full_like(p, v)``, a constant step): the *init* graph;
* from a given state, functionalised, with the hyperparameters that can be tensors passed
  as 0-d tensor inputs: the *update* graph, ending in ``copy_`` of each new value into its
  input.

The parameter's new value is then read as ``p_new = C * p + sum of terms``: the chain of
``mul`` (decoupled weight decay), ``add``/``sub`` with ``alpha`` (``x - lr d``), ``addcdiv``
(``x - lr a / sigma``) and ``addcmul`` ops applied to ``p``. Evaluated with ``lr = 1`` (the
base's update is linear in lr; every other use of lr, e.g. in state, keeps the real value),
``decay = 1 - C`` and the terms give the conversion's input: ``addcdiv`` terms
``v_i * t1_i / t2`` over one ``t2`` (Adam's one, NAdam's two) give
``a = -sum(v_i t1_i) sign(t2)``, ``sigma = |t2|``; anything else gives
``a = -(sum of terms)`` and no sigma. A base whose step does not involve lr at all (Rprop)
gets ``a`` divided by lr, so that ``lr * a / sigma`` is still its step. Every other factor
stays inside ``a / sigma`` (bias corrections, Adagrad's lr decay): the conversion's step
is lr. Hyperparameters the base branches on (``if weight_decay != 0``, ``if momentum > 0``)
cannot be tensors: they are baked into the graph as constants, and a change of their value
traces again (`Spec.baked`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, fx

from .fxrewrite import Untraceable, _ancestors, build

__all__ = ["Spec", "Untraceable", "trace", "trace_init"]


@dataclasses.dataclass
class Spec:
    """What tracing found for one configuration of the base."""

    keys: tuple[str, ...]  # every state key of the base, in its order
    elementwise: dict[str, bool]  # key -> shaped like the parameter (else a 0-d scalar)
    hypers: tuple[tuple[str, int | None], ...]  # tensor inputs: (name, tuple index or None)
    baked: tuple[tuple[str, Any], ...]  # hyperparameters baked in as constants
    update: fx.GraphModule  # (p, g, *state, *hypers) -> (*new written state, a, sigma)
    decay: fx.GraphModule | None  # (*hypers) -> decoupled decay coefficient (0-d)
    live: tuple[str, ...]  # state keys the update writes
    has_scale: bool


def _example(v: Any) -> Any:
    """A hyperparameter as a python value to trace with (a 1-element tensor as its float:
    the graph takes it as a tensor input anyway)."""
    if isinstance(v, Tensor) and v.numel() == 1:
        return float(v.detach().cpu())
    if isinstance(v, (tuple, list)):
        return type(v)(_example(x) for x in v)
    return v


def _kwargs_for(base: type[torch.optim.Optimizer], hyper: Mapping[str, Any]) -> dict[str, Any]:
    sig = inspect.signature(base.__init__).parameters
    kw = {k: _example(v) for k, v in hyper.items() if k in sig}
    if "differentiable" in sig:
        kw["differentiable"] = True
    if "foreach" in sig:
        kw["foreach"] = False
    for k in ("fused", "capturable"):
        if k in sig:
            kw[k] = None if k == "fused" else False
    return kw


_IMPLEMENTATION = ("differentiable", "foreach", "fused", "capturable")


def _candidates(hyper: Mapping[str, Any]) -> list[str]:
    """Hyperparameters that may become tensor inputs: non-zero numbers, tuples of numbers."""
    out = []
    for k, v in hyper.items():
        if k in _IMPLEMENTATION or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) and v != 0:
            out.append(k)
        elif (
            isinstance(v, (tuple, list))
            and v
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
        ):
            out.append(k)
    return out


class _Probe:
    """A one-tensor instance of the base, and the state its first step creates."""

    def __init__(self, base: type[torch.optim.Optimizer], hyper: Mapping[str, Any]) -> None:
        self.base = base
        kw = _kwargs_for(base, hyper)
        # group keys the constructor does not take (a per-group lr_mult the step reads)
        extra = {
            k: _example(v)
            for k, v in hyper.items()
            if k not in kw and k not in _IMPLEMENTATION and k not in ("params", "param_names")
        }
        self.hyper = {**extra, **kw}  # the implementation flags set here win over the user's
        p = torch.randn(8)
        try:
            self.inst = base([p], **kw)
            self.inst.param_groups[0].update(extra)
            p.grad = torch.randn(8)
            self.inst.step()
        except Exception as e:  # a base that will not step a plain tensor
            raise Untraceable(f"{base.__name__}: a probe step failed: {e}") from None
        state = self.inst.state[p]
        self.keys = tuple(k for k, v in state.items() if v is not None)
        self.elementwise = {}
        for k in self.keys:
            v = state[k]
            if not isinstance(v, Tensor) or not v.is_floating_point():
                raise Untraceable(f"state {k!r} of {base.__name__} is not a float tensor")
            if tuple(v.shape) == (8,):
                self.elementwise[k] = True
            elif v.dim() == 0:
                self.elementwise[k] = False
            else:
                raise Untraceable(f"state {k!r} of {base.__name__} has shape {tuple(v.shape)}")
        self.example_state = [state[k].detach().clone() for k in self.keys]
        self.group = self.inst.param_groups[0]

    def _set(self, p: Tensor, g: Tensor, state: list[Tensor] | None, hyp: dict[str, Any]) -> None:
        self.group["params"] = [p]
        self.group.update(hyp)
        self.inst.state.clear()
        if state is not None:
            self.inst.state[p] = dict(zip(self.keys, state))
        p.grad = g

    def trace_update(self, tensor_names: list[str]) -> fx.GraphModule:
        """The functional graph of one step from a given state."""
        from torch.fx.experimental.proxy_tensor import make_fx

        flat: list[tuple[str, int | None]] = []
        for n in tensor_names:
            v = self.hyper[n]
            flat += [(n, j) for j in range(len(v))] if isinstance(v, (tuple, list)) else [(n, None)]
        self.flat = flat
        nk = len(self.keys)

        def f(p: Tensor, g: Tensor, *rest: Tensor) -> None:
            hyp: dict[str, Any] = {}
            for (n, j), t in zip(flat, rest[nk:]):
                if j is None:
                    hyp[n] = t
                else:
                    hyp.setdefault(n, list(self.hyper[n]))[j] = t
            hyp = {k: (tuple(v) if isinstance(v, list) else v) for k, v in hyp.items()}
            self._set(p, g, list(rest[:nk]), hyp)
            self.inst.step()

        args = [torch.randn(8), torch.randn(8), *self.example_state]
        for n, j in flat:
            v = self.hyper[n]
            args.append(torch.tensor(float(v if j is None else v[j]), dtype=torch.float32))
        try:
            from torch.func import functionalize

            return make_fx(functionalize(f, remove="mutations_and_views"), tracing_mode="symbolic")(
                *args
            )
        finally:
            self._set(torch.randn(8), torch.randn(8), None, dict(self.hyper))

    def trace_init(self) -> fx.GraphModule:
        """(p, g) -> the state the base creates for a parameter (in its constructor, as
        torch 2.11's Adagrad does, or lazily in its first step), before a step changes it."""
        from torch.fx.experimental.proxy_tensor import make_fx

        keys, base, kw = self.keys, self.base, _kwargs_for(self.base, self.hyper)

        def f(p: Tensor, g: Tensor) -> list[Tensor]:
            inst = base([p], **kw)
            if any(k not in inst.state.get(p, {}) for k in keys):
                p.grad = g
                inst.step()
            return [inst.state[p][k] for k in keys]

        try:
            gm = make_fx(f, tracing_mode="symbolic")(torch.randn(8), torch.randn(8))
        except Exception as e:
            raise Untraceable(f"{self.base.__name__}: tracing the state init failed: {e}") from None
        return _init_graph(gm, self.base.__name__)


def _is_inplace(n: fx.Node) -> bool:
    name = getattr(n.target, "__name__", "")
    return n.op == "call_function" and name.split(".")[0].endswith("_") and bool(n.args)


def _init_graph(gm: fx.GraphModule, who: str) -> fx.GraphModule:
    """Keep, for each returned state buffer, the op that created it (the start of its
    in-place chain): its value before the first step touched it."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    created = []
    for n in out.args[0]:
        while True:
            if isinstance(n.kwargs.get("out"), fx.Node):
                n = n.kwargs["out"]  # an out= op writes into the buffer
            elif _is_inplace(n) and isinstance(n.args[0], fx.Node):
                n = n.args[0]
            else:
                break
        created.append(n)
    deps = _ancestors(created)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in gm.graph.nodes:
        if n in deps or n.op == "placeholder":
            env[n] = graph.node_copy(n, lambda x: env[x])
    graph.output([env[n] for n in created])
    graph.eliminate_dead_code()
    init = fx.GraphModule(gm, graph)
    # The state may take the gradient's shape (Rprop's ``grad.new().fill_(lr)``), not its
    # values: a first-step rule such as SGD's ``buf = grad.clone()`` is refused.
    p = torch.randn(8)
    a, b = init(p, torch.randn(8)), init(p, torch.randn(8))
    if any(not torch.equal(x, y) for x, y in zip(a, b)):
        raise Untraceable(f"{who} initialises its state from the gradient (a first-step rule)")
    return init


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Failed trial traces are expected: keep torch's loggers from printing them."""
    loggers = [logging.getLogger(n) for n in ("torch._subclasses.fake_tensor", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ------------------------------------------------------------------------ entry points
def trace_init(base: type[torch.optim.Optimizer], hyper: Mapping[str, Any]) -> fx.GraphModule:
    """(p, g) -> the state ``base`` creates for a parameter with the settings ``hyper``,
    in the order of `Spec.keys` (``g`` gives a shape only). The settings are constants."""
    with _quiet():
        return _Probe(base, hyper).trace_init()


def trace(base: type[torch.optim.Optimizer], hyper: Mapping[str, Any]) -> Spec:
    """Trace ``base``'s update for the settings in ``hyper`` (python values)."""
    with _quiet():
        probe = _Probe(base, hyper)
        probe.trace_init()  # refuses first-step rules
    hyper = probe.hyper
    cands = _candidates(hyper)
    if "lr" not in cands:
        raise Untraceable("lr must be a non-zero number to trace the update")
    ok: list[str] = []
    with _quiet():
        for c in cands:
            try:
                probe.trace_update([*ok, c])
                ok.append(c)
            except Exception:
                continue
    if "lr" not in ok:
        raise Untraceable(f"{base.__name__} branches on lr: it cannot be a tensor input")
    try:
        gm = probe.trace_update(ok)
        built = build(probe, gm)
    except Untraceable:
        raise
    except Exception as e:
        raise Untraceable(f"{base.__name__}: {type(e).__name__}: {e}") from None
    baked = tuple((k, hyper[k]) for k in cands if k not in ok)
    spec = Spec(
        keys=probe.keys,
        elementwise=probe.elementwise,
        hypers=tuple(probe.flat),
        baked=baked,
        update=built["update"],
        decay=built["decay"],
        live=built["written"],
        has_scale=built["has_scale"],
    )
    with _quiet():
        _verify(base, probe.hyper, spec)
    return spec


def _verify(base: type[torch.optim.Optimizer], hyper: Mapping[str, Any], spec: Spec) -> None:
    """Check the rewritten update against the base's own step, which the rewrite assumes
    is linear in lr and the same for every shape: a 1-D and a 2-D parameter, at lr and 3 lr,
    from a state one step old. A base that uses lr in its state (``buf += lr g; p -= buf``),
    branches on shapes (``if p.ndim >= 2``, factored moments) or decays by ``1 / (1 + lr wd)``
    fails here and is run and read instead."""
    gen = torch.Generator().manual_seed(0)
    nlive = len(spec.live)
    for shape in ((8,), (3, 4)):
        for scale in (1.0, 3.0):
            hyp = dict(hyper, lr=hyper["lr"] * scale)
            p = torch.randn(shape, generator=gen)
            try:
                inst = base([p], **_kwargs_for(base, hyp))
                inst.param_groups[0].update(
                    {k: v for k, v in hyp.items() if k not in _IMPLEMENTATION}
                )
                p.grad = torch.randn(shape, generator=gen)
                inst.step()
                st = inst.state[p]
                before = [st[k].detach().clone() for k in spec.keys]
                x0 = p.detach().clone()
                g = torch.randn(shape, generator=gen)
                p.grad = g.clone()
                inst.step()
                after = [st[k].detach() for k in spec.live]
            except Exception as e:
                raise Untraceable(f"{base.__name__}: a check step failed: {e}") from None
            ins = []
            for k, v in zip(spec.keys, before):
                ok = v.shape == shape if spec.elementwise[k] else v.dim() == 0
                if not ok:
                    raise Untraceable(f"{base.__name__}: state {k!r} has shape {tuple(v.shape)}")
                ins.append(v.reshape(-1) if spec.elementwise[k] else v)
            hv = [
                torch.tensor(float(hyp[n] if j is None else hyp[n][j]), dtype=torch.float32)
                for n, j in spec.hypers
            ]
            x = x0.reshape(-1)
            outs = spec.update(x, g.reshape(-1), *ins, *hv)
            a, sigma = outs[nlive], outs[nlive + 1]
            d = a if sigma is None else a / sigma
            decay = spec.decay(*hv) if spec.decay is not None else 0.0
            want = x - hyp["lr"] * (d + decay * x)
            got = [*(o.reshape(-1) for o in outs[:nlive]), want]
            real = [*(v.reshape(-1) for v in after), p.detach().reshape(-1)]
            for o, r in zip(got, real):
                if not torch.allclose(o.float(), r.float(), rtol=1e-4, atol=1e-6):
                    raise Untraceable(
                        f"{base.__name__}: the rewritten update does not reproduce the base's "
                        f"step (shape {shape}, lr {hyp['lr']:g})"
                    )
