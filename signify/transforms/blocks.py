"""Block-coordinate updates: each step trains one block (a transformer layer) of the model.

ABSignSGD (Zhou & Pu, "Asynchronous Block Sign SGD", ICLR 2026) updates a single block
``pi_{i_k}`` per step, ``x_{i_k} <- x_{i_k} - lr * sign(g_{i_k})``, choosing ``i_k`` with a
depth-biased clock (`signify.transforms.block_rules`). It pays off only when the other
blocks cost nothing, which takes three things (peers.md Sec. 2.8, the BAdam / LISA lessons):

1. **Backward truncation.** Before each forward pass exactly the parameters the next step
   updates have ``requires_grad=True``, so autograd neither computes nor stores anything below
   the shallowest of them, and frozen parameters get no ``.grad``. The flags are set at
   construction and after every ``step()`` (and restored by ``load_state_dict``).
2. **No idle state.** Optimizer state of inactive blocks is dropped on a switch (default, as
   BAdam does), kept, or offloaded to (pinned) CPU memory and brought back when the block
   becomes active again.
3. **Ownership.** The optimizer owns every parameter from construction: the schedule covers
   all blocks, whatever their ``requires_grad`` was before (a layer frozen earlier is still
   trained in its turn, unlike LISA's callback, ms-swift #10140). Freezing is a mask.

Parameters outside the numbered layers (embeddings, final norm, head) follow ``outside``:
``"never"`` trained (the default, as in ABSignSGD's code: training the input embedding at any
step means back-propagating through the whole network, and an always-on embedding and head
keep gradients and state resident: docs/blocks.md measures this), ``"always"`` trained, or
``"own"``: the input-side ones form a block shallower than layer 1, the output-side ones a
block deeper than layer N.

The transform's ``update`` is a no-op; it works through the optimizer-level hooks:
``select`` filters the stepped parameters to the active block(s) plus the always-trained
ones (what a majority vote then communicates), ``after_step`` advances the schedule and moves
flags and state. The schedule (clock, pick counter) is saved in ``state_dict``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import sharding, zero
from . import block_partition
from .base import Transform
from .block_rules import RULES, CallableRule, DepthClock, Rule

if TYPE_CHECKING:
    from ..optimizer import SignifiedOptimizer

OUTSIDE = ("never", "always", "own")
INACTIVE = ("drop", "keep", "offload")


class Blocks(Transform):
    """Train one block of parameters per step (block-coordinate descent).

    Args:
        rule: ``"depth"`` (ABSignSGD's depth-biased clock), ``"cyclic"``, ``"random"``
            (i.i.d. uniform, seeded by the optimizer's seed), ``"shuffle"`` (a random
            permutation per pass), or a callable ``rule(k, n)`` returning the 0-based block
            index (0 = shallowest), or several, of pick ``k`` among ``n`` blocks.
        partition: how parameters form blocks (see `signify.transforms.block_partition`):
            ``None`` finds the numbered layers in the names (``layers.3.``, ``h.3.``), or a
            list of name prefixes, a callable ``(name, param) -> block id``, or lists of
            parameters. Names come from ``model.named_parameters()``.
        outside: parameters in no block: ``"never"`` trained, ``"always"`` trained, or
            ``"own"`` blocks (input side first, output side last).
        depth_bias: ``c`` of the depth clock, ``tau_i = N + c (N - i + 1)`` (default 10).
        switch_every: keep each pick for this many steps (BAdam's ``switch_block_every``).
        inactive: state of blocks that stop being trained: ``"drop"``, ``"keep"`` or
            ``"offload"`` (to CPU, pinned, brought back when the block is picked again).
    """

    name = "blocks"

    def __init__(
        self,
        rule: str | Callable[[int, int], int | Sequence[int]] | Rule = "depth",
        *,
        partition: Any = None,
        outside: str = "never",
        depth_bias: float | None = None,
        switch_every: int = 1,
        inactive: str = "drop",
    ) -> None:
        self._config = dict(
            rule=rule,
            partition=partition,
            outside=outside,
            depth_bias=depth_bias,
            switch_every=switch_every,
            inactive=inactive,
        )
        self._rule = _make_rule(rule, depth_bias)
        if outside not in OUTSIDE:
            raise ValueError(f"blocks: outside must be one of {OUTSIDE}, got {outside!r}")
        if inactive not in INACTIVE:
            raise ValueError(f"blocks: inactive must be one of {INACTIVE}, got {inactive!r}")
        if isinstance(switch_every, bool) or not isinstance(switch_every, int):
            raise TypeError(f"blocks: switch_every must be an int >= 1, got {switch_every!r}")
        if switch_every < 1:
            raise ValueError(f"blocks: switch_every must be >= 1, got {switch_every}")
        if partition is not None and not (
            callable(partition) or (isinstance(partition, Sequence) and partition)
        ):
            raise TypeError(
                "blocks: partition must be None, a list of name prefixes, a callable "
                f"(name, param) -> block id, or lists of parameters; got {partition!r}"
            )
        self.partition = partition
        self.outside = outside
        self.inactive = inactive
        self.switch_every = switch_every
        self._bound = False
        self.blocks: list[list[Tensor]] = []
        self.labels: list[str] = []
        self._always: list[Tensor] = []
        self._never: list[Tensor] = []
        self._block_of: dict[Tensor, int] = {}
        self._scheduled: set[Tensor] = set()
        self._active: tuple[int, ...] = ()
        self._stepping: set[Tensor] = set()
        self._held = 0
        self._pending = False
        self._offload_event: Any = None  # CUDA event after the latest offload copies

    # ------------------------------------------------------------------ copies
    def clone(self) -> Blocks:
        """An unbound copy with the same settings (partition tensors are shared, not copied)."""
        return Blocks(**self._config)

    def __deepcopy__(self, memo: dict[int, Any]) -> Blocks:
        if not self._bound:
            return self.clone()
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = v if k == "_config" else copy.deepcopy(v, memo)
        return new

    # ------------------------------------------------------------------ introspection
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def active(self) -> tuple[int, ...]:
        """0-based indices of the block(s) the next step updates (0 = shallowest)."""
        return self._active

    def active_params(self) -> list[Tensor]:
        """The parameters the next step updates: the active block(s) and always-trained ones."""
        return [p for i in self._active for p in self.blocks[i]] + list(self._always)

    def extra_repr(self) -> str:
        rule = self._rule.name
        if isinstance(self._rule, DepthClock):
            rule += f", depth_bias={self._rule.depth_bias:g}"
        n = f", {self.num_blocks} blocks" if self._bound else ""
        every = f", switch_every={self.switch_every}" if self.switch_every != 1 else ""
        return f"{rule}{n}, outside={self.outside}, inactive={self.inactive}{every}"

    # ------------------------------------------------------------------ hooks
    def bind(self, opt: SignifiedOptimizer) -> None:
        sharding.refuse(
            opt,
            "blocks=",
            "FSDP2 gathers and reduces whole modules with hooks set up when fully_shard "
            "runs, and the per-step requires_grad switching that makes a block step cheap "
            "is not part of its contract (untested there); train sharded models without "
            "blocks=, or with DDP/no data parallelism",
        )
        zero.refuse(
            opt,
            "blocks=",
            "each rank would run a block schedule of its own over its partition (as many "
            "blocks a step as ranks, not one); train without ZeRO (DDP) to use blocks=",
        )
        params = opt.all_params()
        names: list[str] | None = []
        for g in opt.param_groups:
            gn = g.get("param_names")
            if gn is None or names is None:
                names = None
            else:
                names.extend(gn)
        part = block_partition.resolve(params, names, self.partition)
        blocks, labels = list(part.blocks), list(part.labels)
        outside = part.outside_in + part.outside_out
        if self.outside == "own":
            if part.outside_in:
                blocks.insert(0, part.outside_in)
                labels.insert(0, "(input side)")
            if part.outside_out:
                blocks.append(part.outside_out)
                labels.append("(output side)")
            outside = []
        self.blocks, self.labels = blocks, labels
        self._always = outside if self.outside == "always" else []
        self._never = outside if self.outside == "never" else []
        self._block_of = {p: b for b, ps in enumerate(blocks) for p in ps}
        self._scheduled = {*self._block_of, *outside}
        self._rule.reset(len(blocks), int(opt._seed or 0))
        self._active = self._rule.next()
        self._held = 0
        self._bound = True
        self._enforce(opt)
        self.register_hooks(opt)

    def register_hooks(self, opt: SignifiedOptimizer) -> None:
        """A step in which no parameter had a gradient returns before ``after_step``; the
        clock must still advance, or an unused block would be picked forever. Called at
        ``bind`` and again when a pickled optimizer is restored (torch keeps no hooks)."""
        opt.register_step_post_hook(self._post_step)

    def select(self, group_index: int, params: list[Tensor]) -> list[Tensor]:
        self._pending = True
        # parameters of groups added after construction are not scheduled: always stepped
        return [p for p in params if p in self._stepping or p not in self._scheduled]

    def after_step(self, opt: SignifiedOptimizer) -> None:
        self._pending = False
        if self._skipped(opt):
            return  # a skipped step changes nothing, the schedule included
        self._advance(opt)

    @staticmethod
    def _skipped(opt: SignifiedOptimizer) -> bool:
        """Whether the executor skipped this step for non-finite gradients. The flag lives
        on the device; reading it is the one host sync that ``blocks=`` adds to a step
        (its schedule is host state that must stay in step with the parameters). Under a
        majority vote the step is the group's and happened even where this rank abstained,
        so every rank advances (their schedules must agree)."""
        ok = opt._executor.ok
        if ok is None or any(t.is_barrier for t in opt._chain):
            return False
        return not bool(ok)

    def _post_step(self, opt: Any, args: Any, kwargs: Any) -> None:
        if self._pending:
            self._pending = False
            self._advance(opt)

    def extra_state(self) -> dict[str, Any] | None:
        self._wait_offload()  # the caller will read the offloaded CPU tensors
        return {
            "rule": self._rule.name,
            "num_blocks": self.num_blocks,
            "rule_state": self._rule.state(),
            "seed": self._rule.seed,
            "active": list(self._active),
            "held": self._held,
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("num_blocks") != self.num_blocks or state.get("rule") != self._rule.name:
            raise ValueError(
                f"blocks: the state_dict was saved with rule {state.get('rule')!r} over "
                f"{state.get('num_blocks')} blocks, this optimizer has rule "
                f"{self._rule.name!r} over {self.num_blocks}"
            )
        self._rule.seed = int(state["seed"])
        self._rule.load_state(state["rule_state"])
        self._active = tuple(int(i) for i in state["active"])
        self._held = int(state["held"])

    def after_load(self, opt: SignifiedOptimizer) -> None:
        self._enforce(opt)

    # ------------------------------------------------------------------ mechanics
    def _advance(self, opt: SignifiedOptimizer) -> None:
        self._held += 1
        if self._held >= self.switch_every:
            self._held = 0
            self._active = self._rule.next()
        self._enforce(opt)

    def _enforce(self, opt: SignifiedOptimizer) -> None:
        """Flags, gradients and state of every scheduled parameter, for the next step."""
        stepping = set(self.active_params())
        self._stepping = stepping
        changed = False
        offloaded = False
        for p in self._scheduled:
            train = p in stepping
            if p.requires_grad != train:
                p.requires_grad_(train)
            if not train and p.grad is not None:
                p.grad = None  # frees the memory now rather than at the next zero_grad
            st = opt.state.get(p)
            if not st:
                continue
            if train:
                changed |= _move_state(st, p.device, non_blocking=True)
            elif self.inactive == "drop":
                del opt.state[p]
                changed = True
            elif self.inactive == "offload" and p.device.type != "cpu":
                moved = _move_state(st, torch.device("cpu"), non_blocking=True)
                changed |= moved
                offloaded |= moved
        if offloaded and torch.cuda.is_available():
            # copies on one stream complete in order: waiting for the latest is enough
            self._offload_event = torch.cuda.Event()
            self._offload_event.record()
        if changed:
            executor = getattr(opt, "_executor", None)
            if executor is not None:
                executor.invalidate()  # the cached plan holds views of the moved state

    def _wait_offload(self) -> None:
        if self._offload_event is not None:
            self._offload_event.synchronize()
            self._offload_event = None


def _move_state(st: dict[str, Any], device: torch.device, non_blocking: bool) -> bool:
    moved = False
    for k, v in st.items():
        if isinstance(v, Tensor) and v.device != device:
            st[k] = v.to(device, non_blocking=non_blocking)
            moved = True
    return moved


def _make_rule(rule: Any, depth_bias: float | None) -> Rule:
    if depth_bias is not None:
        if isinstance(depth_bias, bool) or not isinstance(depth_bias, (int, float)):
            raise TypeError(f"blocks: depth_bias must be a number >= 0, got {depth_bias!r}")
        if not (math.isfinite(depth_bias) and depth_bias >= 0):
            raise ValueError(f"blocks: depth_bias must be finite and >= 0, got {depth_bias}")
        if rule != "depth":
            raise ValueError(f"blocks: depth_bias applies to rule='depth' only, not {rule!r}")
        return DepthClock(depth_bias)
    if isinstance(rule, Rule):
        return copy.deepcopy(rule)
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"blocks: unknown rule {rule!r}; expected one of {sorted(RULES)}")
        return RULES[rule]()
    if callable(rule):
        return CallableRule(rule)
    raise TypeError(
        f"blocks: rule must be one of {sorted(RULES)} or a callable (k, n) -> block index, "
        f"got {rule!r}"
    )


def make_blocks(spec: Any) -> Blocks:
    """The `Blocks` transform for ``signify(..., blocks=spec)``: a rule name or a `Blocks`."""
    if isinstance(spec, Blocks):
        return spec.clone()
    if isinstance(spec, str):
        return Blocks(spec)
    raise TypeError(
        f"blocks= must be a rule name ({', '.join(sorted(RULES))}) or a "
        f"signify.transforms.Blocks(...) (for prefixes, callables, explicit blocks), got {spec!r}"
    )
