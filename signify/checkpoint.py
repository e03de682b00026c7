"""Checkpoints of a signified optimizer: ``state_dict`` and an all-or-nothing ``load_state_dict``.

A signified optimizer's ``state_dict()`` is torch's (per-parameter state and param groups),
plus ``state_dict()["signify"]``: the schema version, the chain's names, the noise seed, the
optimizer-level state (random counter, skip counter, stepsize scalars) and each transform's
extra state. ``load_state_dict`` reads it, or a plain torch optimizer's state of the base
(whose adapter migrates it), and checks everything before keeping anything: a state that
fails a check raises ValueError/TypeError and leaves the optimizer as it was.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import Tensor

from . import validation
from .sharding import local
from .transforms.base import Transform

if TYPE_CHECKING:
    from .adapters import Adapter
    from .executor import Executor
    from .optimizer import SignifiedOptimizer
    from .options import Options

#: Version of the ``state_dict()["signify"]`` layout; bumped on incompatible changes.
SCHEMA_VERSION = 1
#: The key under which every param group holds the same entry (it survives DCP).
_GROUP_ENTRY = "signify"


class CheckpointedOptimizer(torch.optim.Optimizer):
    """The checkpoint half of `signify.optimizer.SignifiedOptimizer` (its base class)."""

    base: ClassVar[type[torch.optim.Optimizer]]
    options: ClassVar[Options]
    _adapter: Adapter
    _chain: list[Transform]
    _executor: Executor
    _shared: dict[str, dict[str, Any]]
    _seed: int | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _carry_entry_through_flat_dcp()
        super().__init__(*args, **kwargs)

    def __setstate__(self, state: dict[str, Any]) -> None:
        _carry_entry_through_flat_dcp()  # an unpickled optimizer was never constructed
        super().__setstate__(state)

    def _fresh_shared(self, device: torch.device) -> dict[str, dict[str, Any]]:
        """Optimizer-level state as a new optimizer has it (the random stream, the skip
        counter, each transform's scalars): also what a loaded one is checked against."""
        seed = self._seed if self._seed is not None else 0
        out: dict[str, dict[str, Any]] = {
            "rng": {
                "seed": torch.tensor(seed, dtype=torch.int64, device=device),
                "counter": torch.zeros((), dtype=torch.int64, device=device),
            },
            "nonfinite": {"skipped": torch.zeros((), dtype=torch.float32, device=device)},
        }
        for t in self._chain:
            out.setdefault(t.name, t.shared_state(device))
        return out

    def all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self) -> dict[str, Any]:
        _carry_entry_through_flat_dcp()  # get_optimizer_state_dict comes here first
        # torch runs the post hooks inside its state_dict(): hold them back so that they see
        # the whole state, signify's entry included
        with _held(self, "_optimizer_state_dict_post_hooks") as post_hooks:
            sd = super().state_dict()
        for i, p in enumerate(self.all_params()):  # state a run-and-read base keeps itself
            if extra := self._adapter.exported_state(p):
                sd["state"][i] = {**sd["state"].get(i, {}), **extra}  # not into opt.state
        shared = {name: _copied(d) for name, d in self._shared.items()}
        sd["signify"] = {
            "schema": SCHEMA_VERSION,
            "chain": [t.name for t in self._chain],
            "seed": self._seed,
            "shared": shared,
            "extra": {t.name: x for t in self._chain if (x := t.extra_state()) is not None},
        }
        for group in sd["param_groups"]:
            # the same entry, where torch.distributed.checkpoint's get/set_optimizer_state_dict
            # keep it (they pass only "state" and "param_groups" on, and drop an empty group's)
            group[_GROUP_ENTRY] = sd["signify"]
        for hook in post_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state (signify's or the base torch optimizer's) all or nothing: a state
        that fails any check raises ValueError/TypeError and leaves the optimizer as it was."""
        if not (
            isinstance(state_dict, dict)
            and isinstance(state_dict.get("state"), dict)
            and "param_groups" in state_dict
        ):
            raise TypeError("state_dict must be a dict returned by an optimizer's state_dict()")
        state_dict = dict(state_dict)
        # torch runs the hooks inside its load; here pre hooks run first (they may mend a
        # state before it is checked, and see signify's entry) and post hooks last
        pre_hooks = self._optimizer_load_state_dict_pre_hooks
        post_hooks = self._optimizer_load_state_dict_post_hooks
        for pre in pre_hooks.values():
            result = pre(self, state_dict)
            if result is not None:
                state_dict = result
        with _held(self, "_optimizer_load_state_dict_pre_hooks"):
            with _held(self, "_optimizer_load_state_dict_post_hooks"):
                self._load(state_dict)
        for post in post_hooks.values():
            post(self)

    def _load(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("signify", None)
        groups = state_dict.get("param_groups")
        if isinstance(groups, list) and any(
            isinstance(g, dict) and _GROUP_ENTRY in g for g in groups
        ):
            found = [g[_GROUP_ENTRY] for g in groups if isinstance(g, dict) and _GROUP_ENTRY in g]
            extra = found[0] if extra is None else extra
            state_dict["param_groups"] = [  # never a group key
                {k: v for k, v in g.items() if k != _GROUP_ENTRY} if isinstance(g, dict) else g
                for g in groups
            ]
        if extra is not None:
            self._check_extra(extra)
        validation.check_saved_groups(state_dict["param_groups"], self.base)
        self._check_shapes(state_dict)
        before = self._snapshot()
        try:
            super().load_state_dict(state_dict)
            for group, old in zip(self.param_groups, before["param_groups"]):
                for k, v in old.items():  # keys a torch checkpoint of the base lacks
                    group.setdefault(k, v)  # (the chain's: decoupled_wd, scale_beta, ...)
            self._restore_loaded(extra)
            for i, p in enumerate(self.all_params()):  # as the transforms restored it
                if self.state.get(p):
                    self._check_param_state(i, p)
        except Exception as e:
            self._restore(before)  # a state_dict a transform rejects changes nothing
            internal = (KeyError, AttributeError, IndexError, RuntimeError)
            if isinstance(e, internal) and not isinstance(e, torch.OutOfMemoryError):
                raise ValueError(
                    f"state_dict could not be loaded ({type(e).__name__}: {e}); "
                    "the optimizer is unchanged"
                ) from e
            raise

    def _restore_loaded(self, extra: dict[str, Any] | None, copy_tensors: bool = False) -> None:
        """After torch's load wrote ``self.state``: each parameter's state as the transforms
        keep it, then signify's entry (checked: `_check_extra`), if any; ``copy_tensors``
        when the entry's tensors must not be shared with the dict it came from."""
        for p in self.all_params():
            st = self.state.get(p)
            if st:
                self.state[p] = self._restore_param_state(p, st)
        if extra is not None:
            self._seed = extra.get("seed", self._seed)
            shared = extra.get("shared", {})
            if copy_tensors:
                self._shared = {k: _copied(d) for k, d in shared.items()}
            else:
                self._shared = {k: dict(d) for k, d in shared.items()}
            for t in self._chain:
                if t.name in extra.get("extra", {}):
                    _load_extra(t, extra["extra"][t.name])
        self._after_load()

    def _check_extra(self, extra: Any) -> None:
        """``state_dict["signify"]``: schema, chain, seed and optimizer-level state."""
        if not isinstance(extra, dict):
            raise TypeError("state_dict['signify'] must be the dict SignifiedOptimizer saves")
        schema = extra.get("schema")
        if schema != SCHEMA_VERSION:
            raise ValueError(
                f"state_dict has signify schema {schema}; this version reads {SCHEMA_VERSION}"
            )
        names = [t.name for t in self._chain]
        if extra.get("chain") != names:
            raise ValueError(
                f"state_dict was saved by the chain {extra.get('chain')}, "
                f"this optimizer has {names}"
            )
        try:
            validation.check_seed(extra.get("seed"))
        except (ValueError, TypeError) as e:
            raise type(e)(f"state_dict['signify']: {e}") from None
        if not isinstance(extra.get("extra", {}), dict):
            raise TypeError("state_dict['signify']['extra'] must be a dict")
        validation.check_saved_shared(
            extra.get("shared", {}), self._fresh_shared(torch.device("cpu"))
        )

    def _check_param_state(self, i: int, p: Tensor) -> None:
        """Each transform's per-parameter state is there whole (all its keys, tensors of the
        kind a fresh one has: floating or not, 0-d or not) or not at all (created at the
        next step, as for a torch checkpoint)."""
        st = self.state[p]
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        meta = torch.empty(local(p).shape, dtype=p.dtype, device="meta")
        for t in self._chain:
            probe = self._executor.planner.state_keys(t, group)
            have = [k for k in probe if t.state_prefix + k in st]
            if not have:
                continue
            if len(have) != len(probe):
                missing = [t.state_prefix + k for k in probe if k not in have]
                raise ValueError(
                    f"state of parameter {i} lacks {missing} ({type(t).__name__}), "
                    f"holding {[t.state_prefix + k for k in have]}"
                )
            fresh = t.init([meta], group)
            for k in have:
                v, want = st[t.state_prefix + k], fresh[k][0]
                if not isinstance(v, Tensor):
                    raise TypeError(
                        f"state {t.state_prefix + k!r} of parameter {i} must be a tensor, "
                        f"got {type(v).__name__}"
                    )
                if v.is_floating_point() != want.is_floating_point() or (v.dim() == 0) != (
                    want.dim() == 0
                ):
                    raise ValueError(
                        f"state {t.state_prefix + k!r} of parameter {i} is a {v.dtype} tensor "
                        f"of shape {tuple(v.shape)}, expected {want.dtype} of shape "
                        f"{tuple(want.shape)}"
                    )

    def _after_load(self) -> None:
        self._executor.invalidate()
        self._executor.hyper.clear()
        for t in self._chain:
            t.after_load(cast("SignifiedOptimizer", self))

    def _snapshot(self) -> dict[str, Any]:
        """What `load_state_dict` changes (torch's load replaces state and groups by new
        objects, so references to the old ones are a snapshot)."""
        return {
            "state": self.state,
            "param_groups": self.param_groups,
            "entries": {p: dict(st) for p, st in self.state.items()},
            "shared": self._shared,
            "seed": self._seed,
            "extra": {t.name: t.extra_state() for t in self._chain},
            "flags": [(p, p.requires_grad) for p in self.all_params()],
        }

    def _restore(self, before: dict[str, Any]) -> None:
        self.state = before["state"]
        self.state.clear()
        self.state.update(before["entries"])
        self.param_groups = before["param_groups"]
        self._shared, self._seed = before["shared"], before["seed"]
        for t in self._chain:
            if before["extra"][t.name] is not None:
                t.load_extra_state(before["extra"][t.name])
        for p, flag in before["flags"]:
            p.requires_grad_(flag)
        self._after_load()

    def _check_shapes(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("param_groups", [])
        ids = [i for g in saved for i in g.get("params", [])]
        params = self.all_params()
        if len(ids) != len(params):
            raise ValueError(
                f"state_dict holds {len(ids)} parameters, this optimizer {len(params)}"
            )
        unknown = set(state_dict["state"]) - set(ids)
        if unknown:
            raise ValueError(
                f"state_dict['state'] holds entries {sorted(map(str, unknown))} that are no "
                "parameter of its param_groups"
            )
        for i, p in zip(ids, params):
            for key, value in state_dict["state"].get(i, {}).items():
                if isinstance(value, Tensor) and value.dim() > 0 and value.shape != p.shape:
                    n = local(p).numel()  # a sharded parameter's bits cover its shard
                    if value.dtype == torch.uint8 and value.shape == ((n + 7) // 8,):
                        continue  # packed signs, 1 bit per element (alias-lowmem)
                    raise ValueError(
                        f"state {key!r} of parameter {i} has shape {tuple(value.shape)}, "
                        f"the parameter {tuple(p.shape)}"
                    )

    def _restore_param_state(self, p: Tensor, st: dict[str, Any]) -> dict[str, Any]:
        st = self._adapter.migrate(dict(st), p)
        dtype = self.options.state_dtype
        for k, v in st.items():
            if k.endswith("step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                # torch < 1.12 saved step counters as numbers
                v = torch.tensor(float(v), dtype=torch.float32)
            if not isinstance(v, Tensor):
                continue
            if k.endswith("step") and v.dim() == 0:
                st[k] = v.to(device=p.device, dtype=torch.float32)
            elif dtype is not None and v.is_floating_point() and v.dim() > 0:
                st[k] = v.to(dtype=dtype)
        return st


def _carry_entry_through_flat_dcp() -> None:
    """Let ``set_optimizer_state_dict`` hand signify's entry on from a flattened state.

    With ``StateDictOptions(flatten_optimizer_state_dict=True)`` (torchtitan's setting) the
    entry is saved as ``"param_groups.<fqn>.signify"`` for each parameter, but torch's
    ``_unflatten_optim_state_dict`` rebuilds a group only from the keys the live group has,
    and ``load_state_dict`` runs after it: nothing of signify's sees the flattened dict. So
    that function is wrapped (once): for a signified optimizer, each group it
    returns gets the entry saved with its first parameter, where `_load` looks for it. Other
    optimizers, and torch without that function, are left as they are.

    Only once the module is imported (importing it costs ~0.12 s): a signified optimizer
    built or unpickled after that, or whose ``state_dict()`` was called (a DCP save or the
    load recipe's ``get_optimizer_state_dict``), wraps it."""
    dsd = sys.modules.get("torch.distributed.checkpoint.state_dict")
    if dsd is None:
        return
    unflatten = getattr(dsd, "_unflatten_optim_state_dict", None)
    if not callable(unflatten) or getattr(unflatten, "_signify_entry", False):
        return

    @functools.wraps(unflatten)
    def unflatten_with_entry(optim: Any, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        out = unflatten(optim, state_dict, *args, **kwargs)
        if isinstance(optim, CheckpointedOptimizer) and isinstance(out, dict):
            for group in out.get("param_groups", []):
                fqns = group.get("params") if isinstance(group, dict) else None
                key = f"param_groups.{fqns[0]}.{_GROUP_ENTRY}" if fqns else None
                if key in state_dict:
                    group[_GROUP_ENTRY] = state_dict[key]
        return out

    unflatten_with_entry._signify_entry = True  # type: ignore[attr-defined]
    setattr(dsd, "_unflatten_optim_state_dict", unflatten_with_entry)  # noqa: B010


@contextlib.contextmanager
def _held(opt: torch.optim.Optimizer, hooks: str) -> Iterator[OrderedDict[Any, Any]]:
    """Take the hooks ``opt.<hooks>`` away for the block (they are yielded to run by hand)."""
    held = getattr(opt, hooks)
    setattr(opt, hooks, OrderedDict())
    try:
        yield held
    finally:
        setattr(opt, hooks, held)


def _copied(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with its own tensors and values (a saved or loaded entry shares nothing)."""
    return {
        k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in d.items()
    }


def _load_extra(t: Transform, saved: Any) -> None:
    try:
        t.load_extra_state(saved)
    except (KeyError, AttributeError, IndexError) as e:
        raise ValueError(
            f"state_dict['signify']['extra'][{t.name!r}] is not a state {type(t).__name__} "
            f"saved ({type(e).__name__}: {e})"
        ) from e
