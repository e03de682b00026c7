"""A study's settings: the ``[study]`` table of a TOML file, the embedded defaults, CLI overrides.

Precedence: the embedded default of the task < the TOML file < command-line flags. A file or
``--variant`` flags that give variants replace the default list of variants.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from . import tasks as tasks_mod
from ._toml import load_file, loads
from .variants import Variant, check_unique, from_tables, spec_hash

SCHEDULES = ("constant", "cosine", "inv_sqrt")
DTYPES = ("auto", "fp32", "bf16")


@dataclasses.dataclass
class StudyConfig:
    """The ``[study]`` table. ``None`` fields take the preset's (or device's) default."""

    task: str = "gpt"
    preset: str | None = None
    steps: int | None = None
    batch_size: int | None = None
    seeds: tuple[int, ...] = (0, 1)
    device: str = "cpu"
    dtype: str = "auto"
    compile: bool | None = None
    schedule: str = "constant"
    warmup: float = 0.0  # fraction of the steps
    eval_every: int | None = None
    tune_steps: int | None = None  # None: tune at full length on the first seed, reuse it
    out: str | None = None

    def resolved(self) -> StudyConfig:
        """Defaults filled in and every value checked (ValueError/TypeError naming the field)."""
        c = dataclasses.replace(self)
        if c.task not in tasks_mod.TASKS:
            raise ValueError(f"task must be one of {tasks_mod.TASKS}, got {c.task!r}")
        table = tasks_mod.presets(c.task)
        if c.preset is None:
            c.preset = tasks_mod.default_preset(c.task, c.device)
        if c.preset not in table:
            raise ValueError(
                f"preset for task {c.task!r} must be one of {sorted(table)}, got {c.preset!r}"
            )
        p = table[c.preset]
        c.steps = p.steps if c.steps is None else c.steps
        c.batch_size = p.batch_size if c.batch_size is None else c.batch_size
        _positive_int("steps", c.steps)
        if c.task in ("gpt", "mlp"):
            _positive_int("batch_size", c.batch_size)
        if isinstance(c.seeds, int) or not c.seeds:
            raise ValueError(f"seeds must be a non-empty list of ints, got {c.seeds!r}")
        c.seeds = tuple(c.seeds)
        for s in c.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"seeds must be non-negative ints, got {s!r}")
        if len(set(c.seeds)) != len(c.seeds):
            raise ValueError(f"seeds must be distinct, got {c.seeds}")
        if not isinstance(c.device, str) or c.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {c.device!r}")
        if c.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {c.dtype!r}")
        if c.dtype == "auto":
            c.dtype = "bf16" if c.task == "gpt" and c.device.startswith("cuda") else "fp32"
        if c.compile is not None and not isinstance(c.compile, bool):
            raise TypeError(f"compile must be true, false or absent, got {c.compile!r}")
        if c.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {c.schedule!r}")
        if isinstance(c.warmup, bool) or not isinstance(c.warmup, (int, float)):
            raise TypeError(f"warmup must be a fraction of the steps, got {c.warmup!r}")
        if not 0 <= c.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {c.warmup}")
        if c.eval_every is None:
            # Evaluating a convex toy costs nothing: every log point gives smooth curves.
            cheap = c.task in ("logreg", "nonsmooth")
            c.eval_every = max(1, c.steps // (100 if cheap else 10))
        _positive_int("eval_every", c.eval_every)
        if c.tune_steps is None:
            c.tune_steps = c.steps
        _positive_int("tune_steps", c.tune_steps)
        if c.tune_steps > c.steps:
            raise ValueError(f"tune_steps ({c.tune_steps}) must be <= steps ({c.steps})")
        if c.out is None:
            c.out = f"runs/ablate/{c.task}-{c.preset}"
        if not isinstance(c.out, str) or not c.out:
            raise TypeError(f"out must be a folder path (a string), got {c.out!r}")
        return c

    @property
    def preset_obj(self) -> tasks_mod.Preset:
        assert self.preset is not None
        return tasks_mod.presets(self.task)[self.preset]

    def run_fields(self) -> dict[str, Any]:
        """What determines a run besides the variant, lr, seed and length (hashed into keys)."""
        return {
            "task": self.task,
            "preset": self.preset,
            "batch_size": self.batch_size,
            "device": self.device,
            "dtype": self.dtype,
            "compile": self.compile,
            "schedule": self.schedule,
            "warmup": self.warmup,
            "eval_every": self.eval_every,
        }

    def run_hash(self, variant: Variant, lr: float | None, seed: int, steps: int) -> str:
        fields = self.run_fields()
        # The schedule's horizon is the full run even for a shorter tuning run (same curve).
        fields["horizon"] = self.steps
        return spec_hash([fields, variant.spec(), lr, seed, steps])


def _positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")


_STUDY_FIELDS = {f.name for f in dataclasses.fields(StudyConfig)}


def study_from_table(table: Mapping[str, Any], base: StudyConfig | None = None) -> StudyConfig:
    unknown = set(table) - _STUDY_FIELDS
    if unknown:
        raise ValueError(f"unknown [study] keys {sorted(unknown)}; known: {sorted(_STUDY_FIELDS)}")
    values = dict(table)
    if "seeds" in values and isinstance(values["seeds"], list):
        values["seeds"] = tuple(values["seeds"])
    return dataclasses.replace(base or StudyConfig(), **values)


# ------------------------------------------------------------------------------ defaults
_GPT_DEFAULT = """
# The embedded default study: a character-level GPT on the Python docs text, 2 seeds.
[study]
task = "gpt"
seeds = [0, 1]
schedule = "cosine"
warmup = 0.1

[[variant]]
name = "AdamW (torch)"
optimizer = "AdamW"
signify = false
lr = [1e-3, 3e-3, 1e-2, 3e-2]   # 3e-3 and 1e-2 tie within seed noise: both kept inside

[[variant]]
name = "Signum"
optimizer = "Signum"
lr = [3e-4, 1e-3, 3e-3]

[[variant]]
name = "sign(Adam)"
optimizer = "Adam"
lr = [3e-4, 1e-3, 3e-3]

[[variant]]
name = "sign(Adam) stochastic"
optimizer = "Adam"
stochastic = true
lr = [1e-3, 3e-3, 1e-2]

[[variant]]
name = "StoSignSGD"
optimizer = "StoSignSGD"
lr = [3e-3, 1e-2, 3e-2]

[[variant]]
name = "ALIAS (sign SGD-m)"
optimizer = "SGD"
momentum = 0.9
stepsize = "alias"      # parameter-free: no lr grid (lr is a multiplier, 1)
schedule = "constant"   # a warmup would shrink the steps its estimate is made from
warmup = 0.0

[[variant]]
name = "sign(Adam) stochastic + depth blocks"
optimizer = "Adam"
stochastic = true
# ABSignSGD's schedule over the 4 layers; from scratch the embeddings and head must train
# too: "own" makes them blocks of their own (the default "never" is for fine-tuning).
blocks = { rule = "depth", outside = "own" }
lr = [1e-3, 3e-3, 1e-2]
"""

_LOGREG_DEFAULT = """
# ALIAS's convex check: full-gradient logistic regression, tuned sign descent vs parameter-free.
[study]
task = "logreg"
seeds = [0]

[[variant]]
name = "sign GD (tuned)"
optimizer = "SGD"
lr = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]

[[variant]]
name = "ALIAS"
optimizer = "SGD"
stepsize = "alias"

[[variant]]
name = "Adam (torch)"
optimizer = "Adam"
signify = false
lr = [1e-3, 1e-2, 1e-1]

[[variant]]
name = "StoSignSGD"
optimizer = "StoSignSGD"
lr = [1e-3, 1e-2, 1e-1]
"""

_NONSMOOTH_DEFAULT = """
# StoSignSGD's example (arXiv 2604.15416, Fig. 1): signSGD stalls, StoSignSGD converges.
[study]
task = "nonsmooth"
seeds = [0, 1]
schedule = "inv_sqrt"

[[variant]]
name = "signSGD"
optimizer = "SGD"
lr = 1.0

[[variant]]
name = "StoSignSGD (no momentum)"
optimizer = "StoSignSGD"
betas = [0.0, 1.0]
lr = 1.0

[[variant]]
name = "sign(SGD) stochastic"
optimizer = "SGD"
stochastic = true
lr = 1.0

[[variant]]
name = "SGD (torch)"
optimizer = "SGD"
signify = false
lr = 1.0
"""

_MLP_DEFAULT = """
# A 3-layer MLP on the digits.
[study]
task = "mlp"
seeds = [0, 1]

[[variant]]
name = "AdamW (torch)"
optimizer = "AdamW"
signify = false
lr = [1e-3, 3e-3, 1e-2]

[[variant]]
name = "Signum"
optimizer = "Signum"
lr = [3e-4, 1e-3, 3e-3]

[[variant]]
name = "sign(Adam) stochastic"
optimizer = "Adam"
stochastic = true
lr = [3e-4, 1e-3, 3e-3]

[[variant]]
name = "StoSignSGD"
optimizer = "StoSignSGD"
lr = [3e-4, 1e-3, 3e-3]

[[variant]]
name = "ALIAS (sign SGD-m)"
optimizer = "SGD"
momentum = 0.9
stepsize = "alias"

[[variant]]
name = "sign(Adam) stochastic + depth blocks"
optimizer = "Adam"
stochastic = true
blocks = "depth"
lr = [1e-3, 3e-3, 1e-2]
"""

DEFAULTS = {
    "gpt": _GPT_DEFAULT,
    "logreg": _LOGREG_DEFAULT,
    "nonsmooth": _NONSMOOTH_DEFAULT,
    "mlp": _MLP_DEFAULT,
}


def default_text(task: str) -> str:
    if task not in DEFAULTS:
        raise ValueError(f"task must be one of {tuple(DEFAULTS)}, got {task!r}")
    return DEFAULTS[task].lstrip()


def load(
    task: str | None = None,
    config_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    variants: Sequence[Variant] | None = None,
) -> tuple[StudyConfig, list[Variant]]:
    """The study: the task's default, then the file, then the overrides and CLI variants."""
    file_table: dict[str, Any] = load_file(config_path) if config_path else {}
    unknown = set(file_table) - {"study", "variant"}
    if unknown:
        raise ValueError(f"{config_path}: unknown top-level keys {sorted(unknown)}")
    # `study = 3` or `variant = 3` must name the field, not fail deep inside with an
    # AttributeError; `variant = []` must not silently run the default variants.
    if not isinstance(file_table.get("study", {}), dict):
        raise TypeError(
            f"{config_path}: study must be a table ([study]), got {file_table['study']!r}"
        )
    if "variant" in file_table:
        tables = file_table["variant"]
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise TypeError(f"{config_path}: variant must be [[variant]] tables, got {tables!r}")
        if not tables:
            raise ValueError(f"{config_path}: variant is an empty list; give [[variant]] tables")
    chosen = task or file_table.get("study", {}).get("task") or "gpt"
    default = loads(default_text(chosen))
    study = study_from_table(default["study"])
    study = study_from_table(file_table.get("study", {}), study)
    study = study_from_table({k: v for k, v in (overrides or {}).items() if v is not None}, study)
    study.task = chosen
    if variants:
        chosen_variants = list(variants)
        check_unique(chosen_variants)  # two `--variant "Adam lr=..."` share the auto name
    elif file_table.get("variant"):
        chosen_variants = from_tables(file_table["variant"])
    else:
        chosen_variants = from_tables(default["variant"])
    return study.resolved(), chosen_variants
