"""Variants of an ablation study: which optimizer, which transforms, which learning rates.

A variant is one row of the study's table. It names an optimizer (a ``torch.optim`` class, a
signify preset such as ``Signum``, or ``"module:Class"``), the options given to `signify()`
(``stochastic``, ``blocks``, ``stepsize``, ``vote``, ...), the constructor's keyword arguments
(``momentum``, ``weight_decay``, ``betas``, ...) and either one learning rate or a grid of
them (the study then tunes it: see `signify.ablate.runner`).

``signify = false`` uses the optimizer unconverted (the torch baseline). A ``grid`` expands one
variant into the Cartesian product of its axes, so a study toggles transforms without writing
every combination out.

A transform option may be a table instead of a name: ``blocks = {rule = "depth", outside =
"own"}`` builds ``signify.transforms.Blocks(rule="depth", outside="own")``; for any option,
``{class = "module:Class", ...}`` builds that class with the other keys. Dotted keys say the
same (``blocks.outside = "own"`` in TOML or on the command line).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import itertools
import json
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

#: Keywords of `signify()` that define the chain (a variant's "transform toggles").
SIGNIFY_OPTIONS = (
    "sign",
    "stochastic",
    "blocks",
    "stepsize",
    "vote",
    "scale_beta",
    "state_dtype",
    "nonfinite",
    "compile_chunk",
    "max_grad_norm",
)
#: Fields of a variant that are not optimizer arguments.
_META = ("name", "optimizer", "signify", "lr", "grid", "schedule", "warmup")
#: Values that mean "this option off" (TOML has no null).
_NONE = ("none", "off", "null")
_PRESETS = ("Signum", "StoSignSGD", "SignAdamax")


def _none(v: Any) -> Any:
    return None if isinstance(v, str) and v.lower() in _NONE else v


#: The class a table value of an option builds when it names none.
_TABLE_CLASS = {"blocks": "signify.transforms.blocks:Blocks"}


def _fmt(v: Any) -> str:
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}={_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    return str(v)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One optimizer configuration of a study (its learning rate may still be a grid)."""

    name: str
    optimizer: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # signify() keywords
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # constructor keywords
    lrs: tuple[float, ...] | None = None  # None: the class default (or an oracle's 1)
    plain: bool = False  # the optimizer itself, not converted
    schedule: str | None = None  # overrides the study's lr schedule (e.g. oracles: constant)
    warmup: float | None = None  # overrides the study's warmup fraction

    @property
    def tuned(self) -> bool:
        return self.lrs is not None and len(self.lrs) > 1

    @property
    def needs_names(self) -> bool:
        """Block schedules find layers by parameter name."""
        return self.options.get("blocks") is not None

    def spec(self) -> dict[str, Any]:
        """Everything that determines the runs, JSON-serialisable (hashed into run keys)."""
        out = {
            "optimizer": self.optimizer,
            "plain": self.plain,
            "options": {k: _jsonable(v) for k, v in sorted(self.options.items())},
            "kwargs": {k: _jsonable(v) for k, v in sorted(self.kwargs.items())},
        }
        if self.schedule is not None or self.warmup is not None:
            out["schedule"] = [self.schedule, self.warmup]
        return out

    def call(self, lr: float | None = None) -> str:
        """The Python a user writes to build this optimizer (shown in the report)."""
        kwargs = dict(self.kwargs)
        if lr is not None:
            kwargs = {"lr": lr, **kwargs}
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        cls = self._class_expr()
        if self.plain or self.optimizer in _PRESETS:
            return f"{cls}(params{', ' + args if args else ''})"
        opts = ", ".join(f"{k}={_option_expr(k, v)}" for k, v in self.options.items())
        head = f"signify.signify({cls}{', ' + opts if opts else ''})"
        return f"{head}(params{', ' + args if args else ''})"

    def _class_expr(self) -> str:
        if self.optimizer in _PRESETS:
            return f"signify.{self.optimizer}"
        if ":" in self.optimizer:
            return self.optimizer.replace(":", ".")
        return f"torch.optim.{self.optimizer}"

    def check(self) -> None:
        """Build what can be built without parameters (the optimizer class, signify's class
        with the options): a dry run's errors are then the ones the run would meet."""
        cls = resolve_optimizer(self.optimizer)
        if not (self.plain or self.optimizer in _PRESETS):
            import signify

            signify.signify(cls, **{k: build_option(k, v) for k, v in self.options.items()})
        # The constructor too, on a throwaway parameter: a misspelt keyword (momentun=0.9) or
        # a bad value must fail the dry run, not every run later. Blocks find layers by
        # parameter name, which the throwaway has none of: they were checked just above.
        from .runner import _process_group  # vote= needs a (one-process) group to build

        v = self
        if self.needs_names:
            v = dataclasses.replace(self, options={**self.options, "blocks": None})
        with _process_group(v):
            v.build(
                [("w", torch.nn.Parameter(torch.zeros(2)))],
                self.lrs[0] if self.lrs else None,
                seed=0,
                compile=False,
                device=torch.device("cpu"),
            )

    def build(
        self,
        named_params: Sequence[tuple[str, torch.nn.Parameter]],
        lr: float | None,
        *,
        seed: int,
        compile: bool | None,
        device: torch.device,
    ) -> torch.optim.Optimizer:
        """Construct the optimizer over ``named_params``.

        Errors (a keyword a branch does not implement yet, a bad value) propagate: the runner
        records them in the report.
        """
        cls = resolve_optimizer(self.optimizer)
        kwargs = dict(self.kwargs)
        if lr is not None:
            kwargs["lr"] = lr
        if self.plain:
            if (
                device.type == "cuda"
                and self.optimizer in ("Adam", "AdamW")
                and not ({"fused", "foreach"} & set(kwargs))
            ):
                kwargs["fused"] = True  # the fastest torch baseline on a GPU
            return cls([p for _, p in named_params], **kwargs)
        runtime: dict[str, Any] = {"seed": seed}
        if compile is not None:
            runtime["compile"] = compile
        params: Any = list(named_params) if self.needs_names else [p for _, p in named_params]
        if self.optimizer in _PRESETS:
            return cls(params, **kwargs, **self.options, **runtime)
        import signify

        options = {k: build_option(k, v) for k, v in self.options.items()}
        made = signify.signify(cls, **options, **runtime)
        return made(params, **kwargs)


def _table_class(key: str, table: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    path = table.get("class", _TABLE_CLASS.get(key))
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(
            f"option {key!r} given as a table needs class = 'module:Class', got {dict(table)}"
        )
    return path, {k: v for k, v in table.items() if k != "class"}


def build_option(key: str, value: Any) -> Any:
    """An option's value for `signify()`: tables become transform objects."""
    if not isinstance(value, Mapping):
        return value
    path, kwargs = _table_class(key, value)
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)(**kwargs)


def _option_expr(key: str, value: Any) -> str:
    if not isinstance(value, Mapping):
        return repr(value)
    path, kwargs = _table_class(key, value)
    module, _, attr = path.partition(":")
    module = "signify.transforms" if module.startswith("signify.transforms") else module
    return f"{module}.{attr}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def _set(table: dict[str, Any], key: str, value: Any) -> None:
    """``table[key] = value`` with dotted keys (``blocks.outside``) as nested tables; a name
    already there becomes the table's ``rule`` (``blocks=depth blocks.outside=own``)."""
    head, dot, rest = key.partition(".")
    if not dot:
        if isinstance(table.get(key), dict) and not isinstance(value, Mapping):
            table[key]["rule"] = value
        else:
            table[key] = value
        return
    current = table.get(head)
    if not isinstance(current, dict):
        current = {} if current is None else {"rule": current}
        table[head] = current
    _set(current, rest, value)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Mapping):
        return {k: _jsonable(x) for k, x in sorted(v.items())}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return repr(v)


def resolve_optimizer(name: str) -> type[torch.optim.Optimizer]:
    """A preset (``Signum``), a ``torch.optim`` class name, or ``"module:Class"``."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"optimizer must be a non-empty string, got {name!r}")
    if name in _PRESETS:
        import signify

        return getattr(signify, name)  # type: ignore[no-any-return]
    if ":" in name:
        module, _, attr = name.partition(":")
        obj = getattr(importlib.import_module(module), attr)
    else:
        obj = getattr(torch.optim, name, None)
        if obj is None:
            raise ValueError(
                f"optimizer {name!r} is not a torch.optim class nor a signify preset "
                f"({', '.join(_PRESETS)}); use 'module:Class' for others"
            )
    if not (isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer)):
        raise TypeError(f"optimizer {name!r} is not a torch.optim.Optimizer subclass")
    return obj


def _lrs(value: Any, where: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ValueError(f"{where}: lr grid is empty")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{where}: lr must be positive numbers, got {v!r}")
        out.append(float(v))
    if len(set(out)) < len(out):  # tuning results are keyed by lr: a repeat would vanish
        raise ValueError(f"{where}: lr grid repeats a value: {list(out)}")
    return tuple(out)


def _auto_name(optimizer: str, plain: bool, options: Mapping[str, Any]) -> str:
    if plain or optimizer in _PRESETS:
        return optimizer + (" (torch)" if plain else "")
    parts = [f"sign({optimizer})"]
    for k, v in options.items():
        parts.append(k if v is True else f"{k}={_fmt(v)}")
    return " ".join(parts)


def from_dict(table: Mapping[str, Any]) -> list[Variant]:
    """Variants from one ``[[variant]]`` table (several when it has a ``grid``)."""
    if not isinstance(table, Mapping):
        raise TypeError(f"a variant must be a table, got {table!r}")
    where = f"variant {table.get('name', table.get('optimizer', '?'))!r}"
    if "optimizer" not in table:
        raise ValueError(f"{where}: missing 'optimizer'")
    grid = table.get("grid", {}) or {}
    if not isinstance(grid, Mapping):
        raise TypeError(f"{where}: grid must be a table of lists")
    axes = []
    for key, values in grid.items():
        if key.partition(".")[0] in _META:
            raise ValueError(f"{where}: grid cannot vary {key!r} (lr is tuned by an lr list)")
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{where}: grid.{key} must be a non-empty list")
        axes.append([(key, v) for v in values])
    out = []
    for combo in itertools.product(*axes) if axes else [()]:
        fields: dict[str, Any] = {}
        for k, v in table.items():
            if k != "grid":
                _set(fields, k, dict(v) if isinstance(v, Mapping) else v)
        for k, v in combo:
            _set(fields, k, v)
        v = _one(fields, where)
        if combo and table.get("name"):  # auto names already spell the options out
            suffix = ", ".join(f"{k}={_fmt(x)}" for k, x in combo)
            v = dataclasses.replace(v, name=f"{v.name} [{suffix}]")
        out.append(v)
    return out


def _one(fields: Mapping[str, Any], where: str) -> Variant:
    optimizer = fields["optimizer"]
    if not isinstance(optimizer, str):
        raise TypeError(f"{where}: optimizer must be a string, got {optimizer!r}")
    plain = fields.get("signify", True) is False
    if not isinstance(fields.get("signify", True), bool):  # "no" would silently mean true
        raise TypeError(f"{where}: signify must be true or false, got {fields['signify']!r}")
    options: dict[str, Any] = {}
    kwargs: dict[str, Any] = {}
    for k, v in fields.items():
        if k in _META:
            continue
        v = _none(v)
        if k in SIGNIFY_OPTIONS:
            if plain:
                raise ValueError(f"{where}: {k!r} is a signify option but signify = false")
            if isinstance(v, Mapping):
                _table_class(k, v)  # a table must say what it builds
                v = dict(v)
            if v is not None:
                options[k] = v
        else:
            kwargs[k] = tuple(v) if isinstance(v, list) else v
    if optimizer in _PRESETS:
        # Presets are already signified: their toggles are constructor options.
        kwargs.update(options)
        options = {}
    name = fields.get("name") or _auto_name(optimizer, plain, options)
    return Variant(
        name=str(name),
        optimizer=optimizer,
        options=options,
        kwargs=kwargs,
        lrs=_lrs(fields.get("lr"), where),
        plain=plain,
        schedule=_check_schedule(fields.get("schedule"), where),
        warmup=_check_warmup(fields.get("warmup"), where),
    )


def _check_schedule(v: Any, where: str) -> str | None:
    from .config import SCHEDULES

    if v is not None and v not in SCHEDULES:
        raise ValueError(f"{where}: schedule must be one of {SCHEDULES}, got {v!r}")
    return v  # type: ignore[no-any-return]


def _check_warmup(v: Any, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ValueError(f"{where}: warmup must be a fraction in [0, 1), got {v!r}")
    return float(v)


def parse_value(text: str) -> Any:
    """A CLI value: TOML scalar syntax (``true``, ``1e-3``, ``"x"``), else a bare string."""
    from ._toml import loads

    try:
        return loads(f"v = {text}")["v"]
    except Exception:
        return text


def parse_spec(spec: str) -> list[Variant]:
    """A variant from the command line: ``OPTIMIZER key=value ...``.

    ``a|b|c`` gives alternatives: for ``lr`` an lr grid to tune, for any other key a grid
    axis. ``,`` builds a tuple (``betas=0.9,0.99``). ``name="..."`` names the row.
    Example: ``"Adam stochastic=false|true blocks=none|depth lr=1e-3|3e-3"``.
    """
    tokens = shlex.split(spec)
    if not tokens or "=" in tokens[0]:
        raise ValueError(f"--variant {spec!r}: start with the optimizer name, e.g. 'Adam lr=1e-3'")
    table: dict[str, Any] = {"optimizer": tokens[0]}
    grid: dict[str, Any] = {}
    for tok in tokens[1:]:
        key, eq, raw = tok.partition("=")
        if not eq or not key:
            raise ValueError(f"--variant {spec!r}: expected key=value, got {tok!r}")
        alts = [_cli_value(a) for a in raw.split("|")]
        if key == "lr":
            table["lr"] = alts if len(alts) > 1 else alts[0]
        elif key == "name":
            table["name"] = raw
        elif len(alts) > 1:
            grid[key] = alts
        else:
            _set(table, key, alts[0])
    if grid:
        table["grid"] = grid
    return from_dict(table)


def _cli_value(raw: str) -> Any:
    if "," in raw:
        return [parse_value(x) for x in raw.split(",")]
    return parse_value(raw)


def from_tables(tables: Iterable[Mapping[str, Any]]) -> list[Variant]:
    out: list[Variant] = []
    for t in tables:
        out.extend(from_dict(t))
    check_unique(out)
    return out


def check_unique(out: Sequence[Variant]) -> None:
    """Rows, plots and the bold best are keyed by name: two variants must not share one."""
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(
            f'variant names must be unique, repeated: {dup} (give each a name: name="...")'
        )


def spec_hash(obj: Any) -> str:
    """A short stable hash of a JSON-serialisable object (run keys)."""
    text = json.dumps(obj, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:10]
