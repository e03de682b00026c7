"""The traced adapter: any torch optimizer whose step traces, at adapter speed.

For a base without a hand-written adapter, `signify.adapters.fxtrace` traces the base's own
``step()`` on one fake tensor and rewrites its parameter write ``x <- C x + terms`` into the
conversion's ``(a, sigma)`` and a decoupled ``decay`` (module docstring there). This adapter
runs that graph per tensor inside the executor's fused pass, like a hand-written adapter:
no extra parameter copies, no eager step, and it compiles. It keeps the base's state under
the base's own keys (a torch.optim checkpoint loads unchanged) and lets the base's graph
advance its own step counters.

What traces: optimizers written with per-tensor tensor ops whose step works on a plain
tensor with ``foreach=False`` (torch.optim's Adam, AdamW, Adamax, RMSprop, Adagrad, NAdam,
Adadelta, Rprop do; SGD's first step copies the gradient into the buffer, RAdam and ASGD
branch on values, so they take their hand-written adapter or the run-and-read path). A
custom ``Optimizer`` subclass traces when its ``step()`` reads ``group[...]`` hyperparameters
and ``self.state[p]`` tensors and updates ``p`` in place with the ops above; one that calls
``.item()``, branches on tensor values, keeps non-tensor state or state of another shape,
steps several tensors jointly, or needs a closure falls back to run-and-read. Differences
from the hand-written adapters: the traced path computes the base's whole state (a
deterministic sign does not drop the denominator's state), and every factor but lr stays
inside ``a / sigma`` (so Adagrad's lr decay is not a separate ``step_scale``). Difference
from run-and-read: a multiplicative shrink of the parameter (decoupled weight decay, or a
fixed ``p.mul_(0.99)``) is kept exactly as the base applies it, and only the rest of the
update is sign-converted (run-and-read converts the whole delta, shrink included).
``SIGNIFY_TRACED=0`` turns tracing off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import sharding
from ..transforms.base import State, StepContext, Update, freeze_static
from . import fxtrace
from .base import Adapter, stream

#: traced specs, shared by every optimizer of a class: (base, flags, baked values) -> Spec
_SPECS: dict[tuple[Any, ...], fxtrace.Spec] = {}
#: names baked for (base, flags), known after the first trace of that configuration
_BAKED: dict[tuple[Any, ...], tuple[str, ...]] = {}
#: state-init graphs: (base, every setting) -> GraphModule (settings are constants there)
_INITS: dict[tuple[Any, ...], Any] = {}


#: Group keys a base's step does not read: torch's schedulers' bookkeeping, signify's chain.
_NOT_BASE = frozenset(
    {
        "params",
        "param_names",
        "initial_lr",
        "max_lr",
        "min_lr",
        "base_momentum",
        "max_momentum",
        "decoupled_wd",
        "scale_beta",
    }
)


def _base_hyper(base: type[torch.optim.Optimizer], group: Mapping[str, Any]) -> dict[str, Any]:
    """The group's settings as the base's step may read them: its constructor's, and other
    numeric keys (a step may read one its constructor does not take, such as a per-group
    ``lr_mult``); not names and labels, which would only multiply the traces."""
    import inspect

    names = set(inspect.signature(base.__init__).parameters)
    return {
        k: v
        for k, v in group.items()
        if k not in _NOT_BASE and (k in names or not isinstance(v, (str, type(None))))
    }


def spec_for(base: type[torch.optim.Optimizer], group: Mapping[str, Any]) -> fxtrace.Spec:
    """The traced spec for ``group``'s settings (traced once per configuration)."""
    hyper = _base_hyper(base, group)
    flags = (base, freeze_static(hyper))
    baked = _BAKED.get(flags)
    if baked is not None:
        spec = _SPECS.get((*flags, tuple(hyper[n] for n in baked)))
        if spec is not None:
            return spec
    spec = fxtrace.trace(base, hyper)
    names = tuple(n for n, _ in spec.baked)
    _BAKED[flags] = names
    _SPECS[(*flags, tuple(hyper[n] for n in names))] = spec
    return spec


def init_for(base: type[torch.optim.Optimizer], group: Mapping[str, Any]) -> Any:
    hyper = _base_hyper(base, group)
    key = (base, tuple(sorted((k, repr(v)) for k, v in hyper.items())))
    gm = _INITS.get(key)
    if gm is None:
        gm = _INITS[key] = fxtrace.trace_init(base, hyper)
    return gm


class TracedAdapter(Adapter):
    """Runs the traced, rewritten update of ``base`` (see the module docstring)."""

    name = "traced"
    counters: tuple[str, ...] = ()  # the base's graph advances its own counters

    def __init__(self, base: type[torch.optim.Optimizer], spec: fxtrace.Spec) -> None:
        super().__init__(base)
        self.has_scale = spec.has_scale  # type: ignore[misc]
        self._specs: list[fxtrace.Spec] = []
        self._index: dict[int, int] = {}
        self._streams: dict[str, int] = {}
        self._add(spec)

    @classmethod
    def build(
        cls, base: type[torch.optim.Optimizer], hyper: Mapping[str, Any]
    ) -> TracedAdapter | None:
        """The traced adapter for ``base`` with settings ``hyper``, or None if it does not
        trace (the caller falls back to run-and-read)."""
        try:
            return cls(base, spec_for(base, hyper))
        except fxtrace.Untraceable:
            return None

    def _add(self, spec: fxtrace.Spec) -> int:
        i = self._index.get(id(spec))
        if i is None:
            i = self._index[id(spec)] = len(self._specs)
            self._specs.append(spec)
            # Stream constants hashed here, on the host: dynamo (2.11) cannot iterate bytes.
            self._streams.update({k: stream(k) for k in spec.keys})
        return i

    def _spec(self, group: Mapping[str, Any]) -> fxtrace.Spec:
        try:
            spec = spec_for(self.base, group)
        except fxtrace.Untraceable as e:
            raise ValueError(
                f"a param group of {self.base.__name__} has settings whose step cannot be "
                f"traced ({e}); use the same settings as the first group, or signify.adapters"
                ".GenericAdapter"
            ) from None
        if spec.has_scale != self.has_scale:
            which = "has" if spec.has_scale else "has no"
            raise ValueError(
                f"with the settings of this param group, {self.base.__name__}'s update {which} "
                "denominator, unlike the settings the optimizer was built with"
            )
        return spec

    # ---- executor hooks ---------------------------------------------------------------
    def bind(self, opt: Any) -> None:
        sharding.refuse(
            opt,
            f"the traced adapter ({self.base.__name__} has no hand-written adapter)",
            "its state is created by the base's traced init on whole tensors; FSDP2 needs an "
            "adapter that steps the local shard (SGD, Adam, AdamW, Adamax, RMSprop, Adagrad, "
            "NAdam, RAdam)",
        )

    def static_items(self, group: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
        """The spec of this group's configuration, a compile-time constant."""
        return (("traced.spec", self._add(self._spec(group))),)

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        spec = self._spec(group)
        init = init_for(self.base, group)
        out: State = {k: [] for k in spec.keys}
        for p in params:
            flat = p.detach().reshape(-1)
            values = init(flat, flat)
            for k, v in zip(spec.keys, values):
                if spec.elementwise[k]:
                    v = v.reshape(p.shape).to(device=p.device, dtype=self.state_dtype or p.dtype)
                else:
                    v = v.reshape(()).to(device=p.device, dtype=torch.float32)
                out[k].append(v.clone())
        return out

    def migrate(self, state: dict[str, Any], param: Tensor) -> dict[str, Any]:
        # torch keeps some per-tensor scalars on the CPU; the fused step reads them on the
        # parameter's device.
        for k, v in state.items():
            if isinstance(v, Tensor) and v.dim() == 0 and v.is_floating_point():
                state[k] = v.to(device=param.device, dtype=torch.float32)
        return state

    def _hypers(self, spec: fxtrace.Spec, ctx: StepContext) -> list[Tensor]:
        return [ctx.hyper[n] if j is None else ctx.hyper[n][j] for n, j in spec.hypers]

    def begin(self, u: Update, state: State, ctx: StepContext) -> Update:
        spec = self._specs[ctx.static["traced.spec"]]
        if spec.decay is not None:
            u.decay = spec.decay.forward(*self._hypers(spec, ctx))
        return u

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        spec = self._specs[ctx.static["traced.spec"]]
        hypers = self._hypers(spec, ctx)
        nlive = len(spec.live)
        num, scale = [], []
        for i in range(len(u.params)):
            st = []
            for k in spec.keys:
                v = state[k][i].float()
                st.append(v if spec.elementwise[k] else v.reshape(()))
            outs = spec.update.forward(u.params[i].float(), u.grads[i].float(), *st, *hypers)
            for k, new in zip(spec.live, outs[:nlive]):
                ctx.write(i, state[k][i], new, self._streams[k])
            num.append(outs[nlive])
            scale.append(outs[nlive + 1])
        u.num = num
        u.scale = scale if self.need_scale else None
        return u, state

    def extra_repr(self) -> str:
        return super().extra_repr() + ", traced"
