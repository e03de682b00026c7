"""The rewrite half of `signify.adapters.fxtrace`: read a traced step's parameter write as
``p_new = C * p + sum of terms`` and build the graph that outputs the base's new state and
the conversion's ``(a, sigma)`` instead of writing the parameter (see fxtrace's docstring).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx

aten = torch.ops.aten


class Untraceable(Exception):
    """The base's step cannot be traced or rewritten; the caller falls back."""


def _ancestors(nodes: list[fx.Node]) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


def _scalar_source(a: Any) -> fx.Node | None:
    """The tensor a scalar argument was read from (``_local_scalar_dense``), if any."""
    if isinstance(a, fx.Node) and a.target is aten._local_scalar_dense.default:
        return a.args[0]  # type: ignore[return-value]
    return None


_CHAIN = {
    aten.add.Tensor,
    aten.sub.Tensor,
    aten.addcdiv.default,
    aten.addcmul.default,
    aten.mul.Tensor,
}


_PASS = {aten.clone.default, aten.alias.default}


def _decompose(p: fx.Node, node: Any) -> tuple[list[Any], list[tuple[str, tuple[Any, ...]]]]:
    """``node = C * p + sum(terms)``: the factors of C, and the terms, each read off an op
    applied to the chain of values that starts at ``p``."""
    factors: list[Any] = []
    terms: list[tuple[str, tuple[Any, ...]]] = []
    chain: list[fx.Node] = []  # the parameter's successive values, last first
    ops = []
    while node is not p:
        if not isinstance(node, fx.Node) or not node.args:
            raise Untraceable(f"unsupported parameter write: {node}")
        t = node.target
        chain.append(node)
        if t in _PASS:
            node = node.args[0]
            continue
        if t not in _CHAIN:
            raise Untraceable(f"unsupported op on the parameter: {t}")
        args = list(node.args)
        if t in (aten.mul.Tensor, aten.add.Tensor) and "alpha" not in node.kwargs:
            if not _reads(args[0], p) and _reads(args[1], p):
                args = [args[1], args[0]]  # p's chain on the right of a commutative op
        if not isinstance(args[0], fx.Node) or not _reads(args[0], p):
            raise Untraceable("the parameter's new value is not computed from the parameter")
        ops.append((t, args, node.kwargs))
        node = args[0]
    on_chain = set(chain)
    for t, args, kwargs in reversed(ops):  # from the first write to the last
        for o in [*args[1:], *kwargs.values()]:
            if isinstance(o, fx.Node) and (o in on_chain or _ancestors([o]) & on_chain):
                raise Untraceable("a term of the update reads the partly updated parameter")
        if t is aten.mul.Tensor:
            factors.append(args[1])
            terms = [("scaled", (args[1], kind, a)) for kind, a in terms]
        elif t in (aten.add.Tensor, aten.sub.Tensor):
            sign = 1 if t is aten.add.Tensor else -1
            terms.append(("add", (args[1], kwargs.get("alpha", 1), sign)))
        else:
            kind = "addcdiv" if t is aten.addcdiv.default else "addcmul"
            terms.append((kind, (args[1], args[2], kwargs.get("value", 1))))
    return factors, terms


def _reads(x: Any, p: fx.Node) -> bool:
    return isinstance(x, fx.Node) and (x is p or p in _ancestors([x]))


_SCALAR_FIX = {
    # op with a Scalar argument -> a builder of the same value from tensors
    aten.add.Tensor: lambda g, a, kw, s: g.call_function(
        aten.add.Tensor, (a[0], g.call_function(aten.mul.Tensor, (a[1], s)))
    ),
    aten.sub.Tensor: lambda g, a, kw, s: g.call_function(
        aten.sub.Tensor, (a[0], g.call_function(aten.mul.Tensor, (a[1], s)))
    ),
    aten.addcmul.default: lambda g, a, kw, s: g.call_function(
        aten.add.Tensor,
        (
            a[0],
            g.call_function(aten.mul.Tensor, (g.call_function(aten.mul.Tensor, (a[1], s)), a[2])),
        ),
    ),
    aten.addcdiv.default: lambda g, a, kw, s: g.call_function(
        aten.add.Tensor,
        (
            a[0],
            g.call_function(aten.mul.Tensor, (g.call_function(aten.div.Tensor, (a[1], a[2])), s)),
        ),
    ),
}
_TENSOR_FORM = {
    aten.lerp.Scalar: aten.lerp.Tensor,
    aten.pow.Tensor_Scalar: aten.pow.Tensor_Tensor,
    aten.mul.Scalar: aten.mul.Tensor,
    aten.div.Scalar: aten.div.Tensor,
    aten.add.Scalar: aten.add.Tensor,
    aten.sub.Scalar: aten.sub.Tensor,
    aten.clamp.default: aten.clamp.Tensor,
    aten.maximum.default: aten.maximum.default,
}


# Python arithmetic on scalars read from tensors: the same arithmetic on the tensors.
_PY_OPS = {
    operator.mul: operator.mul,
    operator.add: operator.add,
    operator.sub: operator.sub,
    operator.truediv: operator.truediv,
    operator.neg: operator.neg,
    operator.pow: operator.pow,
    math.sqrt: torch.sqrt,
    torch.sym_sqrt: torch.sqrt,  # type: ignore[dict-item]
}


class _Copier:
    """Copies nodes of the traced graph into a new graph, turning scalars read from tensors
    back into tensors, optionally with the lr input replaced by a tensor of ones."""

    def __init__(self, graph: fx.Graph, env: dict[fx.Node, Any], subst: dict[fx.Node, Any]):
        self.graph = graph
        self.env = env  # original node -> new node, shared by all copiers of one graph
        self.subst = subst  # original node -> replacement (lr -> ones) for this copier
        self.memo: dict[fx.Node, Any] = {}

    def __call__(self, n: Any) -> Any:
        if not isinstance(n, fx.Node):
            return n
        if n in self.subst:
            return self.subst[n]
        if n in self.memo:
            return self.memo[n]
        if not self.subst and n in self.env:
            return self.env[n]
        deps = _ancestors([n])
        if self.subst and not (deps & set(self.subst)) and n in self.env:
            return self.env[n]
        new = self._copy(n)
        self.memo[n] = new
        if not self.subst:
            self.env[n] = new
        return new

    def _copy(self, n: fx.Node) -> Any:
        g = self.graph
        if n.target is aten._local_scalar_dense.default:
            return self(n.args[0])  # the tensor itself
        args = [self(a) for a in n.args]
        kwargs = {k: self(v) for k, v in n.kwargs.items()}
        scalar_from_tensor = [
            a for a in (*n.args, *n.kwargs.values()) if _scalar_source(a) is not None
        ]
        t = n.target
        if n.op == "call_function" and t in _PY_OPS:
            return g.call_function(_PY_OPS[t], tuple(args), kwargs)  # type: ignore[arg-type]
        if scalar_from_tensor:
            if t in _SCALAR_FIX:
                s = kwargs.pop("alpha", None) if "alpha" in kwargs else kwargs.pop("value", None)
                if s is None:
                    return g.call_function(t, tuple(args), kwargs)  # a Tensor position
                return _SCALAR_FIX[t](g, args, kwargs, s)
            if t in _TENSOR_FORM:
                return g.call_function(_TENSOR_FORM[t], tuple(args), kwargs)
            if t is aten.rsub.Scalar:
                return g.call_function(aten.sub.Tensor, (args[1], args[0]))
            if t in (aten.mul.Tensor, aten.div.Tensor, aten.add.Tensor, aten.sub.Tensor):
                return g.call_function(t, tuple(args), kwargs)
            raise Untraceable(f"cannot pass a tensor to {t} in place of a scalar")
        if n.op == "call_function" and t in (
            operator.mul,
            operator.add,
            operator.sub,
            operator.truediv,
            operator.neg,
            operator.pow,
        ):
            return g.call_function(t, tuple(args), kwargs)
        return g.node_copy(n, self)


def build(probe: Any, gm: fx.GraphModule) -> dict[str, Any]:
    """Rewrite the functional update graph (see the module docstring)."""
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    nk = len(probe.keys)
    p_in, g_in = placeholders[0], placeholders[1]
    state_in = placeholders[2 : 2 + nk]
    hyper_in = placeholders[2 + nk :]
    lr_in = next((h for h, (n, _) in zip(hyper_in, probe.flat) if n == "lr"), None)
    if lr_in is None:
        raise Untraceable("lr could not be a tensor input")
    new_value: dict[fx.Node, fx.Node] = {}
    for n in nodes:
        if n.target is aten.copy_.default and n.args[0] in placeholders:
            new_value[n.args[0]] = n.args[1]  # type: ignore[index, assignment]
    if p_in not in new_value:
        raise Untraceable("the step does not write the parameter")
    factors, terms = _decompose(p_in, new_value[p_in])
    if not terms:
        raise Untraceable("the parameter write has no update term")
    written = [k for k, n in zip(probe.keys, state_in) if n in new_value]

    graph = fx.Graph()
    env: dict[fx.Node, Any] = {}
    env[p_in] = graph.placeholder("p")
    env[g_in] = graph.placeholder("g")
    for k, n in zip(probe.keys, state_in):
        env[n] = graph.placeholder(f"state_{k}")
    for (name, j), n in zip(probe.flat, hyper_in):
        env[n] = graph.placeholder(f"h_{name}" + ("" if j is None else f"_{j}"))
    copy = _Copier(graph, env, {})
    outs = [copy(new_value[n]) for k, n in zip(probe.keys, state_in) if k in written]
    one = graph.call_function(aten.ones_like.default, (env[lr_in],))
    at_one = _Copier(graph, env, {lr_in: one})
    num, scale = _conversion(graph, at_one, terms)
    roots = [a for _, args in terms for a in _flat_args(args) if isinstance(a, fx.Node)]
    if lr_in not in _ancestors(roots):
        # The base's step does not scale with lr (Rprop's own step sizes): a / sigma is
        # its step divided by lr, so that the write of lr * a / sigma is the base's step.
        lr = env[lr_in]
        safe = graph.call_function(
            aten.where.self, (graph.call_function(aten.ne.Scalar, (lr, 0)), lr, one)
        )
        num = graph.call_function(aten.div.Tensor, (num, safe))
    graph.output((*outs, num, scale))
    graph.eliminate_dead_code()
    update = fx.GraphModule(gm, graph)
    decay = None
    if factors:
        dgraph = fx.Graph()
        denv: dict[fx.Node, Any] = {}
        for (name, j), n in zip(probe.flat, hyper_in):
            denv[n] = dgraph.placeholder(f"h_{name}" + ("" if j is None else f"_{j}"))
        if _ancestors([f for f in factors if isinstance(f, fx.Node)]) & (
            set(state_in) | {p_in, g_in}
        ):
            raise Untraceable("the parameter's decay factor depends on more than hyperparameters")
        lr = denv[lr_in]
        done = dgraph.call_function(aten.ones_like.default, (lr,))
        fnodes = [f for f in factors if isinstance(f, fx.Node)]
        scales_with_lr = lr_in in _ancestors(fnodes)
        dcopy = _Copier(dgraph, denv, {lr_in: done} if scales_with_lr else {})
        c: Any = done
        for f in factors:
            c = dgraph.call_function(aten.mul.Tensor, (c, dcopy(f)))
        out = dgraph.call_function(aten.rsub.Scalar, (c, 1))
        if not scales_with_lr:
            # A factor that does not involve lr (a fixed shrink): the write's decay is
            # lr * decay, so decay = (1 - C) / lr gives the base's C exactly.
            nz = dgraph.call_function(aten.ne.Scalar, (lr, 0))
            safe = dgraph.call_function(aten.where.self, (nz, lr, done))
            out = dgraph.call_function(
                aten.where.self,
                (
                    nz,
                    dgraph.call_function(aten.div.Tensor, (out, safe)),
                    dgraph.call_function(aten.zeros_like.default, (lr,)),
                ),
            )
        dgraph.output(out)
        dgraph.eliminate_dead_code()
        decay = fx.GraphModule(gm, dgraph)
    return {
        "update": update,
        "decay": decay,
        "written": tuple(written),
        "has_scale": scale is not None,
    }


def _conversion(graph: fx.Graph, at_one: _Copier, terms: list[Any]):  # type: ignore[no-untyped-def]
    """(a, sigma or None) from the terms of ``p_new - C p`` at lr = 1. Every factor but lr
    (bias corrections, Adagrad's lr decay) stays inside a / sigma, which is the base's step
    divided by lr: the conversion's step is lr itself."""

    def scalar(v: Any) -> Any:
        src = _scalar_source(v)
        return at_one(src if src is not None else v)

    # ``addcdiv`` terms that all divide by one tensor t2 (one term, as in Adam; or NAdam's
    # two, gradient and momentum over sqrt(v_hat) + eps): ``a = -sum(v t1 sign(t2))``,
    # ``sigma = |t2|``. Summing the terms first and calling that ``a`` with no sigma would
    # lose the base's denominator to the running max, and the stochastic sign would no longer
    # be unbiased for the base's own step (a traced NAdam differed from NAdam's adapter).
    if terms and all(k == "addcdiv" for k, _ in terms) and len({a[1] for _, a in terms}) == 1:
        t2c = at_one(terms[0][1][1])
        sign2 = graph.call_function(aten.sign.default, (t2c,))
        a = None
        for _, (t1, _t2, v) in terms:  # one term: (t1 sign(t2)) (-v), as before
            ai = graph.call_function(aten.mul.Tensor, (at_one(t1), sign2))
            ai = graph.call_function(aten.mul.Tensor, (ai, _neg(graph, scalar(v))))
            a = ai if a is None else graph.call_function(aten.add.Tensor, (a, ai))
        return a, graph.call_function(aten.abs.default, (t2c,))
    total: Any = None
    for term in terms:
        value = _term_value(graph, at_one, term, scalar)
        total = value if total is None else graph.call_function(aten.add.Tensor, (total, value))
    return graph.call_function(aten.neg.default, (total,)), None


def _flat_args(args: Any) -> list[Any]:
    out = []
    for a in args:
        out += _flat_args(a) if isinstance(a, (tuple, list)) else [a]
    return out


def _neg(graph: fx.Graph, v: Any) -> Any:
    if isinstance(v, (int, float)):
        return -v
    return graph.call_function(aten.neg.default, (v,))


def _term_value(graph: fx.Graph, at_one: _Copier, term: Any, scalar: Any) -> Any:
    kind, args = term
    if kind == "scaled":
        factor, inner_kind, inner_args = args
        inner = _term_value(graph, at_one, (inner_kind, inner_args), scalar)
        return graph.call_function(aten.mul.Tensor, (inner, scalar(factor)))
    if kind == "add":
        t, alpha = args[0], args[1]
        sign = args[2] if len(args) > 2 else 1
        value = at_one(t)
        coef = scalar(alpha)
        if sign < 0:
            coef = _neg(graph, coef)
        if isinstance(coef, (int, float)) and coef == 1:
            return value
        return graph.call_function(aten.mul.Tensor, (value, coef))
    t1, t2, v = args
    op = aten.div.Tensor if kind == "addcdiv" else aten.mul.Tensor
    value = graph.call_function(op, (at_one(t1), at_one(t2)))
    coef = scalar(v)
    if isinstance(coef, (int, float)) and coef == 1:
        return value
    return graph.call_function(aten.mul.Tensor, (value, coef))
