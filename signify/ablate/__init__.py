"""Ablation studies of signified optimizers (the engine behind ``signify ablate``).

>>> from signify.ablate import load, run_study
>>> study, variants = load("logreg")          # the embedded default of a task
>>> record = run_study(study, variants)       # writes <out>/summary.md and plots
"""

from .config import DEFAULTS, StudyConfig, default_text, load
from .study import run_study
from .variants import Variant, from_dict, parse_spec

__all__ = [
    "DEFAULTS",
    "StudyConfig",
    "Variant",
    "default_text",
    "from_dict",
    "load",
    "parse_spec",
    "run_study",
]
