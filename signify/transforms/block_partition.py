"""Splitting an optimizer's parameters into blocks, ordered shallow to deep.

A partition is given as

* ``None``: the numbered layer lists found in the parameter names. A layer is the part of a
  name up to its first all-digit component: ``transformer.h.3.attn.weight`` belongs to layer
  ``transformer.h.3``, ``model.layers.17.mlp.experts.2.w1`` to ``model.layers.17`` (nested
  numbers such as MoE experts stay inside their layer). Layers of one list are ordered by
  number; several lists (an encoder and a decoder) by first appearance in the parameters;
* a sequence of name prefixes, one block each, shallowest first. A prefix matches a name
  equal to it or continuing with ``"."`` (``"layers.1"`` does not match ``"layers.10.w"``);
  the longest matching prefix wins;
* a callable ``(name, param) -> block id``: blocks ordered by id; ``None`` means "outside";
* a sequence of sequences of parameters, shallowest first (no names needed).

Parameters in no block are "outside" (typically embeddings, the final norm and the head):
those before the first block parameter in the optimizer's order are the input side, the rest
the output side.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor


@dataclasses.dataclass
class Partition:
    blocks: list[list[Tensor]]  # shallow to deep
    labels: list[str]
    outside_in: list[Tensor]  # outside parameters before the first block parameter
    outside_out: list[Tensor]


_NEEDS_NAMES = (
    "blocks= needs parameter names to find the blocks: build the optimizer from "
    "model.named_parameters(), or give the blocks as lists of parameters "
    "(Blocks(partition=[[...], [...]]))"
)


def layer_of(name: str) -> tuple[str, int] | None:
    """``("transformer.h", 3)`` for ``"transformer.h.3.attn.weight"``, ``("ws", 3)`` for a
    ``ParameterList``'s ``"ws.3"``; None if unnumbered."""
    parts = name.split(".")
    for j, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:j]), int(part)
    return None


def _auto(names: list[str]) -> list[Any]:
    lists: dict[str, int] = {}  # prefix -> order of first appearance
    keys: list[Any] = []
    for name in names:
        layer = layer_of(name)
        if layer is not None:
            lists.setdefault(layer[0], len(lists))
            keys.append((lists[layer[0]], layer[1], f"{layer[0]}.{layer[1]}".lstrip(".")))
        else:
            keys.append(None)
    if not lists:
        sample = ", ".join(repr(n) for n in names[:4])
        raise ValueError(
            "blocks= found no numbered layer list (names like 'layers.3.' or 'h.3.') among "
            f"the parameter names ({sample}{', ...' if len(names) > 4 else ''}); give the "
            "blocks explicitly: Blocks(partition=[name prefixes] or a callable (name, param) "
            "-> block id, or lists of parameters)"
        )
    return keys


def _prefixes(names: list[str], prefixes: Sequence[str]) -> list[Any]:
    for p in prefixes:
        if not isinstance(p, str) or not p:
            raise TypeError(f"blocks= prefixes must be non-empty strings, got {p!r}")
    if len(set(prefixes)) != len(prefixes):
        raise ValueError(f"blocks= prefixes must be distinct, got {list(prefixes)}")
    keys: list[Any] = []
    used = set()
    for name in names:
        best = None
        for b, p in enumerate(prefixes):
            q = p.rstrip(".")
            if (name == q or name.startswith(q + ".")) and (
                best is None or len(q) > len(prefixes[best].rstrip("."))
            ):
                best = b
        keys.append(None if best is None else (best, 0, prefixes[best].rstrip(".")))
        if best is not None:
            used.add(best)
    unused = [p for b, p in enumerate(prefixes) if b not in used]
    if unused:
        raise ValueError(f"blocks= prefix(es) {unused} match no parameter name")
    return keys


def _from_callable(
    names: list[str], params: list[Tensor], fn: Callable[[str, Tensor], Any]
) -> list[Any]:
    keys: list[Any] = []
    for name, p in zip(names, params):
        bid = fn(name, p)
        keys.append(None if bid is None else (bid, 0, str(bid)))
    return keys


def resolve(params: list[Tensor], names: list[str] | None, spec: Any) -> Partition:
    """Split ``params`` (the optimizer's, in order) into blocks according to ``spec``."""
    if spec is not None and not isinstance(spec, str) and isinstance(spec, Sequence):
        if spec and all(isinstance(b, (list, tuple)) for b in spec):
            return _explicit(params, spec)
    if names is None:
        raise ValueError(_NEEDS_NAMES)
    if spec is None:
        keys = _auto(names)
    elif callable(spec):
        keys = _from_callable(names, params, spec)
    elif isinstance(spec, Sequence) and not isinstance(spec, str) and spec:
        keys = _prefixes(names, list(spec))
    else:
        raise TypeError(
            "blocks= partition must be None (numbered layers), a list of name prefixes, a "
            f"callable (name, param) -> block id, or lists of parameters; got {spec!r}"
        )
    try:
        ids = sorted({k[:2] for k in keys if k is not None}, key=_sort_key)
    except TypeError as e:
        raise TypeError(f"blocks= block ids must be mutually sortable: {e}") from None
    if not ids:
        raise ValueError("blocks= partition matches no parameter")
    index = {bid: i for i, bid in enumerate(ids)}
    blocks: list[list[Tensor]] = [[] for _ in ids]
    labels = [""] * len(ids)
    for p, k in zip(params, keys):
        if k is not None:
            blocks[index[k[:2]]].append(p)
            labels[index[k[:2]]] = k[2]
    return _with_outside(params, blocks, labels)


def _sort_key(bid: tuple[Any, int]) -> Any:
    return (isinstance(bid[0], str), bid[0], bid[1])


def _explicit(params: list[Tensor], spec: Sequence[Sequence[Tensor]]) -> Partition:
    owned = {id(p) for p in params}
    seen: set[int] = set()
    blocks: list[list[Tensor]] = []
    for b, block in enumerate(spec):
        out = []
        for p in block:
            if not isinstance(p, Tensor):
                raise TypeError(f"blocks= block {b} holds a {type(p).__name__}, not a tensor")
            if id(p) not in owned:
                raise ValueError(f"blocks= block {b} holds a tensor this optimizer does not own")
            if id(p) in seen:
                raise ValueError(f"blocks= a parameter appears in two blocks (block {b})")
            seen.add(id(p))
            out.append(p)
        if not out:
            raise ValueError(f"blocks= block {b} is empty")
        blocks.append(out)
    # keep each block's parameters in the optimizer's order
    order = {id(p): i for i, p in enumerate(params)}
    blocks = [sorted(b, key=lambda p: order[id(p)]) for b in blocks]
    return _with_outside(params, blocks, [f"block{b}" for b in range(len(blocks))])


def _with_outside(params: list[Tensor], blocks: list[list[Tensor]], labels: list[str]) -> Partition:
    inside = {id(p) for b in blocks for p in b}
    first = next(i for i, p in enumerate(params) if id(p) in inside)
    outside_in = [p for p in params[:first] if id(p) not in inside]
    outside_out = [p for p in params[first:] if id(p) not in inside]
    return Partition(blocks, labels, outside_in, outside_out)
