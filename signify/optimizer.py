"""`SignifiedOptimizer`: the base class of the optimizers `signify()` (in `factory`) builds.

The returned class is constructed like the base (same hyperparameter names and defaults) and
behaves like any torch optimizer: plain-dict ``param_groups``, ``add_param_group``,
``zero_grad``, closures, LR schedulers (the scheduled ``lr`` is the sign step size),
``state_dict``/``load_state_dict``, step hooks and named parameters.

Its chain is ``[adapter, *transforms, ApplyUpdate()]``: the adapter rewrites the base's step as
``x <- x - lr * a / sigma``; the transforms turn ``(a, sigma)`` into a direction (and may add
a stepsize, a vote, a block schedule); the last one writes the parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from . import dcp, validation
from .adapters import adapter_for
from .adapters.base import check_supported
from .checkpoint import CheckpointedOptimizer
from .executor import Executor
from .options import (
    CHECKED_OPTIONS,
    RUNTIME_OPTIONS,
    Options,
    build_chain,
    check_options,
)
from .transforms.base import Transform

__all__ = ["SignifiedOptimizer"]


_F = TypeVar("_F", bound=Callable[..., Any])

#: What torch.compile says where it meets ``step`` (with ``fullgraph=True``: the error).
NOT_TRACED = (
    "signify: SignifiedOptimizer.step is marked as skipped by torch.compile on purpose (its "
    "host bookkeeping runs in Python; with compile=True it runs its own compiled graphs). "
    "Compile the surrounding function with fullgraph=False, where the step is one clean "
    "graph break and steps exactly as eagerly, or call opt.step() outside it"
)


def _not_traced(fn: _F) -> _F:
    """``torch._disable_dynamo`` with a reason: dynamo graph-breaks where it meets ``fn``
    (it reads the two attributes set here, so a ``fullgraph=True`` error says what to do,
    not "Dynamo developers have intentionally marked..."), and ``fn`` runs with dynamo off
    inside. torch._dynamo is imported at the first call, not at signify's import."""
    disabled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def not_traced(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if disabled is None:
            import torch._dynamo

            disabled = torch._dynamo.disable(fn, recursive=True)
        return disabled(*args, **kwargs)

    not_traced._torchdynamo_disable = True  # type: ignore[attr-defined]
    not_traced._torchdynamo_disable_msg = NOT_TRACED  # type: ignore[attr-defined]
    return not_traced  # type: ignore[return-value]


class SignifiedOptimizer(CheckpointedOptimizer):
    """Base class of the classes `signify` returns. Not constructed directly."""

    base: ClassVar[type[torch.optim.Optimizer]]
    options: ClassVar[Options]
    _base_params: ClassVar[dict[str, Any]]  # base hyperparameter name -> default
    _token: ClassVar[str]  # names the class in this process (pickling, `_rebuild`)

    def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
        params = validation.check_params(params)
        overrides = {k: kwargs.pop(k) for k in RUNTIME_OPTIONS if k in kwargs}
        if overrides:
            current = {f: getattr(self.options, f) for f in CHECKED_OPTIONS}
            check_options(**{**current, **overrides})
            self.options = dataclasses.replace(self.options, **overrides)  # type: ignore[misc]
        hyper, base_keys = self._bind_hyper(args, kwargs)
        validation.check_hyper(hyper, self.base)
        # The base, built on a throwaway tensor, checks its own hyperparameters and tells the
        # group keys its __init__ sets beyond its signature (a subclass's super() call).
        built = validation.check_with_base(self.base, {k: hyper[k] for k in base_keys})
        if built is not None:
            for k in base_keys - set(self._base_params) - set(built):
                del hyper[k]  # a subclass's own keyword, consumed by its __init__
            for k, v in built.items():
                hyper.setdefault(k, v)
        if "lr" not in hyper:
            raise TypeError(
                f"{self.base.__name__} has no lr hyperparameter: the sign step's size is a "
                "param group's 'lr'"
            )
        adapter = adapter_for(self.base, hyper)
        adapter.validate(hyper)
        self._adapter = adapter
        self._chain = build_chain(adapter, self.options)
        for t in self._chain:
            hyper.update({k: v for k, v in t.hyper_defaults.items() if k not in hyper})
        validation.check_hyper(hyper, self.base)
        self._shared: dict[str, dict[str, Any]] = {}
        self._seed = self.options.seed
        if self._seed is None:
            self._seed = int(torch.randint(0, 2**62, (1,)).item())
        super().__init__(params, hyper)
        for t in self._chain:
            t.state_dtype = self.options.state_dtype
            t.bind(self)
        compile_ = self.options.compile
        if compile_ is None:
            compile_ = _compile_by_default(self.all_params())
        self._executor = self._make_executor(compile_)

    def _make_executor(self, compile_: bool) -> Executor:
        o = self.options
        return Executor(self, self._chain, compile_, o.compile_chunk, o.nonfinite, o.flatten)

    # ---------------------------------------------------------------- construction
    @classmethod
    def _bind_hyper(
        cls, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], set[str]]:
        """The hyperparameters as the base's signature binds them, and which of them go to
        the base (the rest are the transforms'). A base with ``**kwargs`` takes unknown ones."""
        names = list(cls._base_params)
        if len(args) > len(names):
            raise TypeError(
                f"{cls.__name__} takes at most {len(names)} positional hyperparameters "
                f"({', '.join(names)}), got {len(args)}"
            )
        hyper = dict(cls._base_params)
        for name, value in zip(names, args):
            if name in kwargs:
                raise TypeError(f"{cls.__name__} got multiple values for argument {name!r}")
            hyper[name] = value
        transform_keys = set()
        explicit = set(names[: len(args)]) | set(kwargs)
        for t in cls.options.middle():
            transform_keys |= set(t.hyper_defaults)
            # A stepsize oracle makes lr a multiplier of its estimate, 1.0 unless given.
            lr_default = getattr(t, "lr_default", None)
            if lr_default is not None and "lr" in hyper and "lr" not in explicit:
                hyper["lr"] = lr_default
        transform_keys |= {"scale_beta"}
        base_keys = set(names)
        for name, value in kwargs.items():
            if name not in cls._base_params and name not in transform_keys:
                if not _takes_var_keywords(cls.base):
                    raise TypeError(f"{cls.__name__} got an unexpected keyword argument {name!r}")
                base_keys.add(name)
            hyper[name] = value
        for name, value in hyper.items():
            if value is inspect.Parameter.empty:
                raise TypeError(f"{cls.__name__} missing required argument {name!r}")
        return hyper, base_keys

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("param_group must have a 'params' entry (the tensors to optimize)")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        validation.check_ordered("param_group['params']", params)
        params = list(params) if params is not None else []
        if params and all(isinstance(p, tuple) and len(p) == 2 for p in params):
            # Named parameters (model.named_parameters()), also on torch < 2.6.
            param_group = dict(param_group)
            param_group["param_names"] = [n for n, _ in params]
            param_group["params"] = [p for _, p in params]
        else:
            param_group = dict(param_group, params=params)
        validation.check_group_params(param_group["params"])
        group_hyper = {k: v for k, v in param_group.items() if k not in ("params", "param_names")}
        validation.check_hyper(group_hyper, self.base)
        check_supported(group_hyper)
        super().add_param_group(param_group)
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.invalidate()

    # ---------------------------------------------------------------- stepping
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Perform one optimization step (``closure`` re-evaluates the loss, as in torch)."""
        return self._step(closure)

    # Not traced by an outer torch.compile (as torch.optim's own state_dict/zero_grad): a
    # compiled training step graph-breaks here and the step runs as it would eagerly,
    # its own compiled graphs included. Tracing into it would follow the executor's host
    # bookkeeping (plans, aliases made with set_) into dozens of graph breaks. Not ``step``
    # itself: torch's step-hook wrapper copies its attributes (functools.wraps), and dynamo
    # would then stop at the wrapper, before the hooks, as well.
    @_not_traced
    @torch.no_grad()
    def _step(self, closure: Any) -> Any:
        if not self.state and dcp.initializing(self):  # torch's DCP state init: no step
            dcp.init_state(self)
            return None
        loss = None
        if closure is not None:
            if not callable(closure):
                raise TypeError(f"closure must be callable or None, got {type(closure).__name__}")
            with torch.enable_grad():
                loss = closure()
            if _is_loss(loss):
                self.set_loss(loss)
            else:  # passed through, as torch does; a transform that needs the loss says so
                self.set_loss(None)
        self._executor.step()
        return loss

    def set_loss(self, loss: Any) -> None:
        """Give loss-aware transforms the loss at the current parameters (a tensor or a
        float; nothing is synchronised). ALIAS option II reads it once, at the first step;
        ``step(closure)`` calls this with the closure's loss."""
        if isinstance(loss, Tensor):
            if loss.numel() != 1 or loss.is_complex():
                raise ValueError(
                    f"loss must be a real 1-element tensor, got shape {tuple(loss.shape)}"
                )
        elif loss is not None and (isinstance(loss, bool) or not isinstance(loss, numbers.Real)):
            raise TypeError(f"loss must be a tensor, a number or None, got {type(loss).__name__}")
        self.last_loss = loss.detach() if isinstance(loss, Tensor) else loss

    def stepsizes(self) -> list[Tensor]:
        """The step each param group took in its last step, as device tensors (reading them
        synchronises, calling this does not): a stepsize oracle's ``gamma * lr`` (per tensor
        under ``scope="tensor"``), else the ``lr`` that step used (not the one a scheduler
        stepped since has set)."""
        for t in self._chain:
            fn = getattr(t, "stepsizes", None)
            if fn is not None:
                return fn(self)  # type: ignore[no-any-return]
        return self._last_lrs()

    def _last_lrs(self) -> list[Tensor]:
        """Per group, the ``lr`` its last step used: the executor's device copy, written when
        that step ran, since a scheduler stepped after it has already moved ``group["lr"]``
        (the group's ``lr`` itself before its first step, or after a load)."""
        cached = self._executor.hyper._tensors
        out = []
        for gi, g in enumerate(self.param_groups):
            last = next((t["lr"] for (i, _), t in cached.items() if i == gi and "lr" in t), None)
            out.append(
                torch.as_tensor(g["lr"], dtype=torch.float32).clone()
                if last is None
                else last.clone()  # the copy is rewritten in place by the next step
            )
        return out

    # ---------------------------------------------------------------- introspection
    @property
    def chain(self) -> list[Transform]:
        """The transforms of this optimizer, adapter first, parameter write last."""
        return list(self._chain)

    @property
    def compiled(self) -> bool:
        return self._executor.compile

    @property
    def skipped_steps(self) -> int:
        """Steps skipped because a gradient was non-finite (reading it syncs the device)."""
        d = self._shared.get("nonfinite")
        return int(d["skipped"].item()) if d else 0

    def __repr__(self) -> str:
        chain = ", ".join(repr(t) for t in self._chain)
        body = super().__repr__()
        head, _, rest = body.partition("(")
        return f"{head}(\nchain: [{chain}]{rest if rest.startswith(chr(10)) else chr(10) + rest}"

    # ---------------------------------------------------------------- shared state
    def shared_state(self, device: torch.device) -> dict[str, dict[str, Any]]:
        """Optimizer-level state (random generator, skip counter, transforms' scalars)."""
        if "rng" not in self._shared:
            for name, fresh in self._fresh_shared(device).items():
                self._shared.setdefault(name, fresh)
        else:
            for d in self._shared.values():
                for k, v in d.items():
                    if isinstance(v, Tensor) and v.device != device:
                        d[k] = v.to(device)
        return self._shared

    def rng_state(self, device: torch.device) -> dict[str, Tensor]:
        return self.shared_state(device)["rng"]

    def count_skipped(self, bad: Tensor) -> None:
        self._shared["nonfinite"]["skipped"].add_((bad != 0).to(torch.float32))

    # ---------------------------------------------------------------- pickling / copy
    _OWN_ATTRS = ("_adapter", "_chain", "_shared", "_seed", "options")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for k in self._OWN_ATTRS:
            if k in self.__dict__:
                state[k] = self.__dict__[k]
        state["_compile"] = self._executor.compile
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        compile_ = state.pop("_compile", False)
        super().__setstate__(state)
        if "_chain" in state:
            self._executor = self._make_executor(compile_)
            # torch pickles no hooks: the chain's own (the block clock's step post-hook) are
            # registered again, or a copy would stop advancing on steps without gradients
            for t in self._chain:
                if callable(register := getattr(t, "register_hooks", None)):
                    register(self)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A class made by signify() is no module attribute, so pickle cannot find it by
        # name: rebuild it from its base and options (the same class within this process).
        cls = type(self)
        if "_token" not in cls.__dict__:  # a class of its own (a preset, a user's subclass)
            return super().__reduce_ex__(protocol)
        return _rebuild, (cls.base, cls.options, cls._token), self.__getstate__()


def _rebuild(base: type[torch.optim.Optimizer], options: Options, token: str) -> Any:
    """An empty instance of the class ``signify`` made for ``base`` and ``options`` (the
    class itself when it still exists in this process); pickle then sets its state."""
    from .factory import CLASSES, make_class

    cls = CLASSES.get(token) or make_class(base, options)
    return cls.__new__(cls)


def _is_loss(x: Any) -> bool:
    if isinstance(x, Tensor):
        return x.numel() == 1 and not x.is_complex()
    return x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool))


def _compile_by_default(params: Sequence[Tensor]) -> bool:
    """Compile on CUDA where torch.compile works (Triton importable); eager elsewhere."""
    if not params or not all(p.device.type == "cuda" for p in params):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _takes_var_keywords(base: type[torch.optim.Optimizer]) -> bool:
    sig = inspect.signature(base.__init__)
    return any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
