"""Flat buckets (``flatten=True``): one contiguous buffer per bucket, one kernel per pass.

A compiled step otherwise runs one kernel per tensor and pass: each pays a launch and a
partly idle last wave, which cost 10-30% of the copy bandwidth on models of many mid-sized
tensors (LLaMA-350M: 219 tensors) until inductor's combo kernels (the GPU default,
`signify.compiled.inductor_options`) merged a chunk's kernels into one launch. With
``flatten=True`` the parameters of one param group, device and dtype are re-homed, at their
first step, into one buffer: each parameter's ``.data`` becomes a view of it (``as_strided``
at its offset, in its own memory order, so channels_last weights stay channels_last), and so
do its gradient and every per-element state buffer (moments). The executor then hands each
compiled pass the whole buffer as one 1-D tensor: one kernel per pass, one compiled graph of
one tensor (compile cost of ``compile_chunk=1``), and a handful of calls per step even
without CUDA graphs.

What it changes, and what the executor checks every step (host work only, no sync):

* a parameter whose ``.data`` was replaced (``model.to(...)``, a user's assignment) is
  re-homed: its group's buffer is rebuilt from the current values;
* a gradient that is not the bucket's view (``zero_grad(set_to_none=True)``, torch's
  default, lets the backward allocate a new one) is copied into the buffer and the view is
  put back as ``.grad`` (8 more bytes per fp32 parameter that step); with
  ``zero_grad(set_to_none=False)`` the backward accumulates into the view in place;
* a bucket is stepped flat only when every parameter of it has a gradient (of a dtype it
  accepts as ``.grad``: a ``.data`` swap keeps the old one) and all their
  per-tensor scalars (step counters) agree (checked, with one synchronisation, when the plan
  is rebuilt); any other step runs per tensor over the same memory, and once a step has run
  without some of the bucket's gradients their counters differ for good (a warning says so);
* frozen parameters (``requires_grad=False``) stay out of the buffer;
* the noise of the stochastic sign is drawn per bucket (the bucket's key, element offsets
  within it): the same distribution as per tensor, other bits.

Parameters of one bucket share one storage, as non-overlapping views: `torch.save` writes
the storage once (saving a single parameter alone writes all of it), and safetensors'
``save_file`` and Hugging Face ``save_pretrained`` write each view on its own (tested with
safetensors 0.8). For a tool that refuses tensors sharing a storage, ``unflatten(opt)``
gives each parameter its own again. Not for sharded (FSDP2) parameters, nor for chains that
look across tensors (blocks, the vote, per-tensor stepsize estimates): `check_chain` names
them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .compiled import ROW  # buffers are padded to a multiple of it (the "rows" lane)
from .planning import alias, dim_order

if TYPE_CHECKING:
    from .transforms.base import Transform


def check_chain(chain: Sequence[Transform]) -> None:
    """A ValueError naming ``flatten`` and the transforms of ``chain`` that cannot step flat
    buckets (`Transform.supports_flat`), if any."""
    blockers = [t.name for t in chain if not t.supports_flat()]
    if blockers:
        raise ValueError(
            "flatten=True needs a chain of elementwise transforms; "
            f"{', '.join(blockers)} look(s) across tensors or hook(s) into the step"
        )


@dataclasses.dataclass
class FlatBucket:
    """The buffers of one bucket and where each parameter lives in them."""

    params: list[Tensor]
    offsets: list[int]
    p: Tensor  # 1-D, the parameters (padded to a multiple of ROW)
    g: Tensor  # 1-D, the gradients
    state: dict[str, Tensor]  # full state key -> 1-D buffer (per-element state only)
    p_view: Tensor  # 1-D aliases handed to the graphs (made once)
    g_view: Tensor
    state_views: dict[str, Tensor]
    #: (others, first) per-tensor scalars that the step updates in the first parameter's
    #: state only, copied to the others after each step
    mirrors: list[tuple[list[Tensor], list[Tensor]]] = dataclasses.field(default_factory=list)

    def view(self, buf: Tensor, i: int) -> Tensor:
        """The i-th parameter's slot of ``buf``, shaped and strided like the parameter."""
        p = self.params[i]
        return buf.as_strided(p.shape, p.stride(), self.offsets[i])

    def homed(self) -> bool:
        """Whether every parameter still lives in the bucket's buffer."""
        base, size = self.p.data_ptr(), self.p.element_size()
        return all(
            p.data_ptr() == base + size * off and p.dtype == self.p.dtype
            for p, off in zip(self.params, self.offsets)
        )

    def bind_grads(self) -> None:
        """Copy gradients that are not the bucket's views into it and put the views back
        as ``.grad`` (a parameter without a gradient keeps none: its plan is per tensor)."""
        base, size = self.g.data_ptr(), self.g.element_size()
        stray_src, stray_dst = [], []
        for i, (p, off) in enumerate(zip(self.params, self.offsets)):
            g = p.grad
            if g is None:
                continue
            if g.data_ptr() == base + size * off and g.stride() == p.stride():
                continue
            view = self.view(self.g, i)
            stray_src.append(g)
            stray_dst.append(view)
            p.grad = view
        if stray_src:
            torch._foreach_copy_(stray_dst, stray_src)

    def bind_state(self, opt: Any, keys: Sequence[str]) -> None:
        """Copy state buffers that are not the bucket's views into it (a loaded or fresh
        state) and put the views in ``opt.state``."""
        for k in keys:
            buf = self.state.get(k)
            if buf is None:
                like = opt.state[self.params[0]][k]
                buf = self.state[k] = torch.zeros_like(self.p, dtype=like.dtype)
                self.state_views[k] = alias(buf)
            base, size = buf.data_ptr(), buf.element_size()
            for i, (p, off) in enumerate(zip(self.params, self.offsets)):
                cur = opt.state[p][k]
                if cur.data_ptr() == base + size * off and cur.dtype == buf.dtype:
                    continue
                view = self.view(buf, i)
                view.copy_(cur)
                opt.state[p][k] = view


def home(params: Sequence[Tensor]) -> FlatBucket:
    """Re-home ``params`` (one dtype and device, dense) into one buffer, with a gradient
    buffer beside it; their current values and gradients are copied over."""
    for p in params:
        dim_order(p)  # raises for a parameter that does not cover a dense block of memory
    offsets, total = [], 0
    for p in params:
        offsets.append(total)
        total += p.numel()
    total += (-total) % ROW
    like = params[0]
    flat_p = torch.zeros(total, dtype=like.dtype, device=like.device)
    gdtype = like.grad.dtype if like.grad is not None else like.dtype
    flat_g = torch.zeros(total, dtype=gdtype, device=like.device)
    fb = FlatBucket(list(params), offsets, flat_p, flat_g, {}, alias(flat_p), alias(flat_g), {})
    with torch.no_grad():
        for i, p in enumerate(params):
            view = fb.view(flat_p, i)
            view.copy_(p)
            p.data = view
    fb.bind_grads()
    return fb


def unflatten(opt: Any) -> None:
    """Give every parameter, gradient and state buffer of ``opt`` its own storage again
    (before saving with a format that refuses shared memory). The next step re-homes them."""
    with torch.no_grad():
        for p in opt.all_params():
            p.data = p.data.clone()
            if p.grad is not None:
                p.grad = p.grad.clone()
            for k, v in opt.state.get(p, {}).items():
                if isinstance(v, Tensor) and v.shape == p.shape and v.dim() > 0:
                    opt.state[p][k] = v.clone()
    opt._executor.invalidate(forget_homes=True)
