"""The papers' named methods, built from the same pieces as everything else.

* `Signum` (Bernstein et al. 2018): ``m = beta m + (1 - beta) g``, ``x -= lr (sign(m) + wd x)``.
* `StoSignSGD` (arXiv 2604.15416, Alg. 3): Signum's momentum, the running max
  ``G = max(beta2 G, |m|)`` and ``x -= lr (sign(m + G n) + wd x)``.
* `SignAdamax` (the sign conversion of AdaMax, Alg. 9): torch's Adamax moments,
  ``x -= lr (sign(m_hat + u n) + wd x)``.

Each is a `signify` class with its own signature; weight decay is decoupled, as in the papers.
The momentum starts at ``m_1 = g_1``, torch SGD's convention and StoSignSGD's (Alg. 5);
Bernstein et al. and MXNet start from ``m_0 = 0``, which differs only in the weight of the first
gradient in later momenta (a factor ``1 / (1 - beta)`` that decays as ``beta^t``).
Runtime options (``seed``, ``compile``, ``state_dtype``, ``nonfinite``, ``compile_chunk``,
``flatten``, ``max_grad_norm``) are accepted as keywords.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any

import torch

from .factory import signify
from .transforms import DecoupledWeightDecay, Sign, StochasticSign
from .validation import _number

_SignumBase = signify(torch.optim.SGD, [Sign(), DecoupledWeightDecay()])
_StoSignBase = signify(torch.optim.SGD, [StochasticSign(), DecoupledWeightDecay()])
_SignAdamaxBase = signify(torch.optim.Adamax, [StochasticSign(), DecoupledWeightDecay()])


def _pair(name: str, betas: Any) -> tuple[float, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{name} must be a pair of floats, got {betas!r}")
    return _number(f"{name}[0]", betas[0]), _number(f"{name}[1]", betas[1])


def _betas(betas: Any) -> tuple[float, float]:
    """StoSignSGD's ``(beta1, beta2)``: momentum in [0, 1), the running max's decay in (0, 1]."""
    b1, b2 = _pair("betas", betas)
    _in("betas[0]", b1, 0.0, 1.0, open_lo=False, open_hi=True)
    _in("betas[1]", b2, 0.0, 1.0, open_lo=True, open_hi=False)
    return b1, b2


def _in(name: str, x: Any, lo: float, hi: float, *, open_lo: bool, open_hi: bool) -> float:
    """``x`` in the interval, else a ValueError naming the preset's own argument."""
    v = _number(name, x)
    if not math.isfinite(v) or v < lo or v > hi or (open_lo and v == lo) or (open_hi and v == hi):
        bound = ("(" if open_lo else "[") + f"{lo}, {hi}" + (")" if open_hi else "]")
        raise ValueError(f"{name} must be in {bound}, got {v}")
    return v


def _buffer_scale(old: dict[str, Any], new: dict[str, Any]) -> float:
    """SGD's buffer ``b = momentum b + (1 - dampening) g`` averages ``(1 - dampening) /
    (1 - momentum)`` times the gradients; the presets' EMA (dampening = momentum) averages them
    once."""
    if "dampening" not in old or "momentum" not in new:
        return 1.0
    d, m = float(old["dampening"]), float(new["momentum"])
    return (1.0 - m) / (1.0 - d) if d < 1.0 else 1.0


def _weight_decay(wd: Any) -> float:
    return _in("weight_decay", wd, 0.0, math.inf, open_lo=False, open_hi=True)


class _PresetGroups:
    """Param groups in the preset's own terms: a group's ``weight_decay`` (and ``momentum``
    or ``betas``) means what the constructor's does, as in the "decay / no decay" groups
    training scripts build. `_translate` maps them onto the base's and the chain's keys."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group, dict):
            param_group = dict(param_group)
            if "weight_decay" in param_group and "decoupled_wd" not in param_group:
                param_group["decoupled_wd"] = _weight_decay(param_group.pop("weight_decay"))
                param_group["weight_decay"] = 0.0  # the base's L2 term stays off
            self._translate(param_group)
        super().add_param_group(param_group)  # type: ignore[misc]

    def _translate(self, group: dict[str, Any]) -> None:
        pass

    _ema_momentum = False  # the group's momentum is an EMA's beta (dampening follows it)

    def step(self, closure: Any = None) -> Any:
        if self._ema_momentum:
            # a scheduler that cycles momentum (OneCycleLR, CyclicLR) writes only "momentum"
            for group in self.param_groups:  # type: ignore[attr-defined]
                if group["dampening"] != group["momentum"]:
                    group["dampening"] = group["momentum"]
        return super().step(closure)  # type: ignore[misc]

    @classmethod
    def from_optimizer(cls, opt: torch.optim.Optimizer) -> Any:
        """The preset built from a torch optimizer of its base (``SGD`` for `Signum` and
        `StoSignSGD`, ``Adamax`` for `SignAdamax`): its groups, hyperparameters and state.
        A group's ``weight_decay`` becomes the preset's decoupled decay, as in the preset's own
        groups; SGD's ``momentum`` becomes the EMA momentum, and a momentum buffer is rescaled
        by ``(1 - momentum) / (1 - dampening)`` so that it holds the same average of gradients
        an EMA of that momentum holds (SGD's buffer sums them)."""
        base = cls.base  # type: ignore[attr-defined]
        if not isinstance(opt, base):
            raise TypeError(
                f"opt must be a {base.__name__} (the base of {cls.__name__}), got "
                f"{type(opt).__name__}"
            )
        if any(g.get("nesterov") for g in opt.param_groups):
            # torch refuses Nesterov with a nonzero dampening, which the EMA momentum is
            raise ValueError(f"opt uses nesterov=True, which {cls.__name__}'s EMA momentum lacks")
        keep = set(cls._base_params) - {"dampening"}  # type: ignore[attr-defined]
        groups = [
            {k: v for k, v in g.items() if k in keep or k in ("params", "param_names")}
            for g in opt.param_groups
        ]
        own = inspect.signature(cls.__init__).parameters  # groups carry the rest
        kwargs = {k: v for k, v in opt.defaults.items() if k in own and k != "params"}
        new: Any = cls(groups, **kwargs)  # type: ignore[call-arg]
        if opt.state:
            sd = copy.deepcopy(opt.state_dict())
            for old, g in zip(sd["param_groups"], new.param_groups):
                scale = _buffer_scale(old, g)
                for i in old["params"]:
                    buf = sd["state"].get(i, {}).get("momentum_buffer")
                    if scale != 1.0 and isinstance(buf, torch.Tensor):
                        buf.mul_(scale)
            sd["param_groups"] = [  # the preset's translated settings, the saved indices
                {**{k: v for k, v in g.items() if k != "params"}, "params": old["params"]}
                for old, g in zip(sd["param_groups"], new.param_groups)
            ]
            new.load_state_dict(sd)
        return new


class Signum(_PresetGroups, _SignumBase):  # type: ignore[misc, valid-type]
    """Signum: sign of an EMA momentum, decoupled weight decay. ``momentum=0`` is signSGD.
    A param group may set its own ``lr``, ``momentum`` and (decoupled) ``weight_decay``."""

    _ema_momentum = True

    def _translate(self, group: dict[str, Any]) -> None:
        if "momentum" in group:
            m = _in("momentum", group["momentum"], 0.0, 1.0, open_lo=False, open_hi=True)
            group["momentum"] = group["dampening"] = m

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        **options: Any,
    ) -> None:
        # momentum = 1 would freeze m at its first value
        momentum = _in("momentum", momentum, 0.0, 1.0, open_lo=False, open_hi=True)
        super().__init__(
            params,
            lr=lr,
            momentum=momentum,
            dampening=momentum,
            decoupled_wd=_weight_decay(weight_decay),
            **options,
        )


class StoSignSGD(_PresetGroups, _StoSignBase):  # type: ignore[misc, valid-type]
    """StoSignSGD (Alg. 3). ``betas = (beta1, beta2)``: momentum and running-max decay
    (``beta2 = 1``, the default, is the pure running max of the paper's theory). A param
    group may set its own ``lr``, ``betas`` and (decoupled) ``weight_decay``."""

    _ema_momentum = True

    def _translate(self, group: dict[str, Any]) -> None:
        if "betas" in group:
            b1, b2 = _betas(group.pop("betas"))
            group.update(momentum=b1, dampening=b1, scale_beta=b2)
        elif "momentum" in group:  # the base's name for beta1: still an EMA
            m = _in("momentum", group["momentum"], 0.0, 1.0, open_lo=False, open_hi=True)
            group["momentum"] = group["dampening"] = m

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 1.0),
        weight_decay: float = 0.0,
        **options: Any,
    ) -> None:
        b1, b2 = _betas(betas)
        super().__init__(
            params,
            lr=lr,
            momentum=b1,
            dampening=b1,
            scale_beta=b2,
            decoupled_wd=_weight_decay(weight_decay),
            **options,
        )


class SignAdamax(_PresetGroups, _SignAdamaxBase):  # type: ignore[misc, valid-type]
    """Sign-converted AdaMax (Alg. 9): unbiased for torch Adamax's ``m_hat / u``. A param
    group may set its own ``lr``, ``betas``, ``eps`` and (decoupled) ``weight_decay``."""

    def __init__(
        self,
        params: Any,
        lr: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=_pair("betas", betas),
            eps=eps,
            decoupled_wd=_weight_decay(weight_decay),
            **options,
        )
