"""Block-selection rules: which block(s) the next step updates.

Blocks are numbered ``0 .. n-1`` from the shallowest (nearest the input) to the deepest
(nearest the loss); the paper's 1-indexed block ``i`` is index ``i - 1`` here.

* `DepthClock` (``"depth"``): ABSignSGD's depth-biased, event-driven clock (Zhou & Pu,
  ICLR 2026, Sec. 3 and the official code). Block ``i`` (1-indexed) has period
  ``tau_i = N + c (N - i + 1)`` and next-ready time ``T_i`` (initially ``tau_i``); each pick is
  ``argmin_i T_i`` (ties to the shallowest), then ``T_i += tau_i``. Deeper blocks have shorter
  periods, so they are picked more often (long-run share proportional to ``1 / tau_i``) and
  the average backward pass stops higher up the network. ``c = 0`` is cyclic order.
* `Cyclic` (``"cyclic"``): ``0, 1, ..., n-1, 0, 1, ...`` (ABSignSGD's "DS", BAdam's
  ``"ascending"``).
* `UniformRandom` (``"random"``): i.i.d. uniform picks (ABSignSGD's "uniform" / "UR"; LISA).
* `Shuffle` (``"shuffle"``): a fresh random permutation every ``n`` picks (BAdam's
  ``"random"``); unlike i.i.d. picks it bounds the gap between two updates of a block by
  ``2n - 1``, the window assumption of ABSignSGD's theory.
* `CallableRule`: ``rule(k, n)`` returns the block index (or a sequence of indices) of pick
  ``k``.

Rules run on the host (no device work, no sync). Random rules are counter-based: pick ``k``
is a pure function of ``(seed, k)``, so the whole rule state is a few integers (saved in
``state_dict``), every rank of a data-parallel job agrees on the pick without communicating,
and a resumed run continues bit-identically.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import torch

_M64 = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """The SplitMix64 finaliser (Steele et al. 2014): a bijective 64-bit integer hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class Rule:
    """Base class of selection rules. ``reset(n, seed)`` is called once the number of blocks
    is known; ``next()`` returns the blocks of the next pick and advances the rule."""

    name = "rule"

    def __init__(self) -> None:
        self.n = 0
        self.seed = 0
        self.k = 0  # picks made so far

    def reset(self, n: int, seed: int) -> None:
        self.n, self.seed, self.k = n, seed, 0

    def next(self) -> tuple[int, ...]:
        picks = self._pick(self.k)
        self.k += 1
        return picks

    def _pick(self, k: int) -> tuple[int, ...]:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state(self, state: dict[str, Any]) -> None:
        self.k = int(state["k"])


def depth_periods(n: int, depth_bias: float) -> list[float]:
    """``tau_i = N + c (N - i + 1)`` for the 1-indexed blocks ``i = 1..N`` (index ``i - 1``)."""
    return [n + depth_bias * (n - i + 1) for i in range(1, n + 1)]


class DepthClock(Rule):
    """ABSignSGD's depth-biased clock (see the module docstring).

    The clock runs in exact integer arithmetic: with ``c = p / q`` (the decimal written,
    ``0.1`` is ``1/10``), ``q tau_i`` is an integer and block ``i``'s next-ready time is
    ``(m_i + 1) tau_i`` after ``m_i`` picks. Accumulating ``T_i += tau_i`` in floats (the
    official code) breaks exact ties by rounding when ``c`` is not an integer (``N = 12``,
    ``c = 0.1``: pick 131 goes to the deepest block instead of the shallowest); integer
    ``c``, the default 10 included, gives the same picks either way."""

    name = "depth"

    def __init__(self, depth_bias: float = 10.0) -> None:
        super().__init__()
        self.depth_bias = float(depth_bias)
        self.tau: list[float] = []
        self.counts: list[int] = []  # picks of each block so far
        self._periods: list[int] = []  # q tau_i, exact

    def reset(self, n: int, seed: int) -> None:
        super().reset(n, seed)
        self.tau = depth_periods(n, self.depth_bias)
        c = Fraction(repr(self.depth_bias))
        self._periods = [n * c.denominator + c.numerator * (n - i + 1) for i in range(1, n + 1)]
        self.counts = [0] * n

    @property
    def ready(self) -> list[float]:
        """The next-ready times ``T_i`` (as floats)."""
        return [(m + 1) * t for m, t in zip(self.counts, self.tau)]

    def _pick(self, k: int) -> tuple[int, ...]:
        # argmin with ties to the smallest index (numpy's argmin, as in the official code)
        per, counts = self._periods, self.counts
        i = min(range(self.n), key=lambda j: ((counts[j] + 1) * per[j], j))
        counts[i] += 1
        return (i,)

    def state(self) -> dict[str, Any]:
        return {"k": self.k, "ready": self.ready, "counts": list(self.counts)}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        if "counts" in state:
            counts = [int(x) for x in state["counts"]]
        else:  # a checkpoint of the float clock: T_i = (m_i + 1) tau_i up to rounding
            counts = [max(0, round(float(r) / t) - 1) for r, t in zip(state["ready"], self.tau)]
            counts += [0] * (len(state["ready"]) - len(counts))
        if len(counts) != self.n:
            raise ValueError(f"blocks: saved depth clock has {len(counts)} blocks, not {self.n}")
        self.counts = counts


class Cyclic(Rule):
    name = "cyclic"

    def _pick(self, k: int) -> tuple[int, ...]:
        return (k % self.n,)


class UniformRandom(Rule):
    name = "random"

    def _pick(self, k: int) -> tuple[int, ...]:
        # the modulo bias of a 64-bit hash reduced mod n is below n / 2**64: negligible
        return (splitmix64(splitmix64(self.seed) ^ k) % self.n,)


class Shuffle(Rule):
    name = "shuffle"

    def __init__(self) -> None:
        super().__init__()
        self._cycle = -1
        self._perm: list[int] = []

    def _pick(self, k: int) -> tuple[int, ...]:
        cycle, pos = divmod(k, self.n)
        if cycle != self._cycle:
            g = torch.Generator().manual_seed(splitmix64(self.seed ^ splitmix64(cycle)) >> 1)
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._cycle = cycle
        return (self._perm[pos],)

    # The cached permutation belongs to (seed, n): a reset or a loaded state (whose seed
    # replaces the constructor's) must not reuse it, or a resumed run follows another order.
    def reset(self, n: int, seed: int) -> None:
        super().reset(n, seed)
        self._cycle, self._perm = -1, []

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self._cycle, self._perm = -1, []


class CallableRule(Rule):
    """Wraps ``rule(k, n) -> int | Sequence[int]`` (0-based block indices, 0 = shallowest)."""

    def __init__(self, fn: Callable[[int, int], int | Sequence[int]]) -> None:
        super().__init__()
        self.fn = fn
        self.name = getattr(fn, "__name__", "callable")

    def _pick(self, k: int) -> tuple[int, ...]:
        out = self.fn(k, self.n)
        picks = (out,) if isinstance(out, int) else tuple(out)
        if not picks:
            raise ValueError(f"blocks: the rule returned no block for pick {k}")
        for i in picks:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n:
                raise ValueError(
                    f"blocks: the rule must return block indices in [0, {self.n}), got {out!r}"
                )
        return tuple(sorted(set(picks)))


RULES: dict[str, Callable[..., Rule]] = {
    "depth": DepthClock,
    "cyclic": Cyclic,
    "random": UniformRandom,
    "shuffle": Shuffle,
}


def depth_schedule(n: int, depth_bias: float = 10.0, steps: int = 100) -> list[int]:
    """The first ``steps`` picks of `DepthClock` over ``n`` blocks (0-based indices)."""
    rule = DepthClock(depth_bias)
    rule.reset(n, 0)
    return [rule.next()[0] for _ in range(steps)]


def depth_shares(n: int, depth_bias: float = 10.0) -> list[float]:
    """Long-run fraction of steps that update each block under `DepthClock`:
    ``(1 / tau_i) / sum_j (1 / tau_j)``."""
    inv = [1.0 / t for t in depth_periods(n, depth_bias)]
    total = sum(inv)
    return [x / total for x in inv]
