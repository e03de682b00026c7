"""The generic path for optimizers without an adapter: run the base's step, read the update.

Before each step the adapter snapshots the parameters, runs the base optimizer's own
``step()`` (which updates its state), reads ``delta = before - after``, restores the
parameters and hands ``a = delta / lr`` to the chain (torchzero's ``Wrap`` trick). The base has
no known denominator, so a stochastic sign uses the running-max scale. It is correct for any
optimizer but costs two extra parameter copies and an eager base step (about 2.8x a fused
sign step, peers.md 4.2); the whole update is converted, weight decay included.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from .. import sharding
from ..transforms.base import State, StepContext, Update, up
from .base import Adapter

if TYPE_CHECKING:
    from ..optimizer import SignifiedOptimizer

_warned: set[type] = set()


class GenericAdapter(Adapter):
    name = "generic"
    has_scale = False
    counters: tuple[str, ...] = ()
    #: the base steps eagerly on ``.grad``: ``max_grad_norm`` clips it there, in place
    clips_on_host: ClassVar[bool] = True

    def __init__(self, base: type[torch.optim.Optimizer]) -> None:
        super().__init__(base)
        self.inner: torch.optim.Optimizer | None = None
        self.nonfinite = "skip"
        self.max_grad_norm: float | None = None

    def bind(self, opt: SignifiedOptimizer) -> None:
        sharding.refuse(
            opt,
            f"the run-and-read path ({self.base.__name__} has no adapter)",
            "it steps whole tensors with host-side checks; FSDP2 needs an adapter that steps "
            "the local shard (SGD, Adam, AdamW, Adamax, RMSprop, Adagrad, NAdam, RAdam)",
        )
        if self.base not in _warned:
            _warned.add(self.base)
            warnings.warn(
                f"signify has no adapter for {self.base.__name__}: using the generic path "
                "(run the base step, read the update), correct but slower",
                stacklevel=4,
            )
        groups = [dict(g) for g in opt.param_groups]
        self.inner = self.base(groups)  # type: ignore[call-arg]
        self.nonfinite = opt.options.nonfinite
        self.max_grad_norm = opt.options.max_grad_norm

    def init(self, params: Sequence[Tensor], group: Mapping[str, Any]) -> State:
        return {"delta": [torch.zeros_like(p, dtype=up(p).dtype) for p in params]}

    def before_step(self, opt: SignifiedOptimizer, active: list[list[Tensor]]) -> None:
        inner = self.inner
        assert inner is not None
        while len(inner.param_groups) < len(opt.param_groups):  # groups added later
            inner.add_param_group(dict(opt.param_groups[len(inner.param_groups)]))
        for gi, g in zip(inner.param_groups, opt.param_groups):
            for k, v in g.items():
                if k != "params":
                    gi[k] = v
        params = [p for ps in active for p in ps]
        for p in params:  # this hook runs before the executor creates missing state
            if "delta" not in opt.state[p]:
                opt.state[p]["delta"] = torch.zeros_like(p, dtype=torch.float32)
        if self.nonfinite != "ignore":
            # The base's eager step cannot be masked on the device: check on the host.
            finite = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
            if not finite:
                if self.nonfinite == "raise":
                    raise FloatingPointError("non-finite gradient (nonfinite='raise')")
                return  # the executor skips the step (its own check): nothing may change
        if self.max_grad_norm is not None:
            # ``.grad`` is scaled in place here, unlike the fused paths (docs/reliability.md)
            with_grad = [p for p in params if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(with_grad, self.max_grad_norm)
        chosen = set(params)
        hidden = {}
        for g in inner.param_groups:
            for p in g["params"]:
                if p not in chosen and p.grad is not None:
                    hidden[p] = p.grad
                    p.grad = None
        before = [p.detach().clone() for p in params]
        inner.step()
        for p, b in zip(params, before):
            opt.state[p]["delta"].copy_(b - p.detach())
            p.copy_(b)
        for p, g in hidden.items():
            p.grad = g

    def update(self, u: Update, state: State, ctx: StepContext) -> tuple[Update, State]:
        lr = u.lr
        safe = torch.where(lr != 0, lr, torch.ones_like(lr))
        u.num = [torch.where(lr != 0, d / safe, torch.zeros_like(d)) for d in state["delta"]]
        u.scale = None
        return u, state

    # The base's state lives in its own instance (its step creates it on an empty entry),
    # but checkpoints hold it in the optimizer's per-parameter entries, where torch's do:
    # a torch checkpoint of the base loads, and the signified one's loads into torch.
    def exported_state(self, p: Tensor) -> dict[str, Any]:
        return dict(self.inner.state.get(p, {})) if self.inner is not None else {}

    def migrate(self, state: dict[str, Any], param: Tensor) -> dict[str, Any]:
        if self.inner is None:
            return state
        # the chain's own entries: "delta", and the transforms' ("<name>.<key>")
        ours = {k: v for k, v in state.items() if k == "delta" or "." in k}
        self.inner.state[param] = {k: v for k, v in state.items() if k not in ours}
        return ours

    def load_extra_state(self, state: dict[str, Any]) -> None:
        # checkpoints before 2026-12-07 kept the base's state apart, under "inner"
        if self.inner is not None and "inner" in state:
            self.inner.load_state_dict(state["inner"])

    def extra_repr(self) -> str:
        return f"{self.base.__name__}: run-and-read"
