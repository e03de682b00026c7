"""`signify ablate` as a demanding user drives it: malformed configs, dry runs, output paths,
diverged runs in the report, report numbers against the raw logs, reproducibility.

Every study here is a few steps of the MLP or the nonsmooth toy, run in-process (``--jobs 1``).
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import types

import numpy as np
import pytest
import torch

from signify.cli import main

CLI = ["ablate", "--no-progress", "--jobs", "1"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; also makes runs comparable within the file
    yield
    torch.set_num_threads(threads)


def _fails_cleanly(capsys, argv, *needles):
    """Exit status 2, one error line naming the problem, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "signify ablate: error:" in err
    for n in needles:
        assert n in err, err
    return err


# ------------------------------------------------------------------- malformed input
@pytest.mark.parametrize(
    "text, needle",
    [
        ("study = 3\n", "study must be a table"),  # was an AttributeError traceback
        ("variant = 3\n", "variant must be [[variant]] tables"),  # was "'int' ... iterable"
        ("variant = []\n", "variant is an empty list"),  # silently ran the 7 defaults
        ("[study]\nout = 3\n", "out must be a folder path"),  # dry run printed "output 3"
        ('[[variant]]\noptimizer = "Adam"\nsignify = "no"\n', "signify must be true or false"),
        ('[[variant]]\noptimizer = "Adam"\nlr = [1e-3, 1e-3]\n', "lr grid repeats a value"),
    ],
)
def test_malformed_config_names_the_field(capsys, tmp_path, text, needle):
    path = tmp_path / "study.toml"
    path.write_text(text)
    _fails_cleanly(capsys, [*CLI, "--config", str(path), "--dry-run"], needle)


def test_binary_config_names_the_file(capsys, tmp_path):
    path = tmp_path / "study.toml"
    path.write_bytes(b"\xff\xfe[study]")
    _fails_cleanly(capsys, [*CLI, "--config", str(path), "--dry-run"], str(path), "UTF-8")


def test_cli_variants_with_the_same_auto_name_are_refused(capsys):
    # Both are named "sign(Adam)": the report keys rows and the bold best by name.
    _fails_cleanly(
        capsys,
        [*CLI, "--dry-run", "--variant", "Adam lr=1e-3", "--variant", "Adam lr=1e-2"],
        "unique",
        "sign(Adam)",
    )
    _fails_cleanly(capsys, [*CLI, "--dry-run", "--variant", "Adam stochastic=true|true"], "unique")
    # Named, they are fine.
    argv = [*CLI, "--dry-run", "--task", "mlp"]
    argv += ["--variant", "Adam lr=1e-3 name=a", "--variant", "Adam lr=1e-2 name=b"]
    assert main(argv) == 0


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("SGD momentun=0.9", "unexpected keyword argument 'momentun'"),  # a typo
        ("Adam momentum=0.9", "unexpected keyword argument 'momentum'"),  # not Adam's
        ("Signum stochastic=true", "unexpected keyword argument 'stochastic'"),  # a preset's
        ("AdamW signify=false nesterov=true", "nesterov"),  # the torch baseline too
    ],
)
def test_dry_run_checks_constructor_keywords(capsys, spec, needle):
    """The docs: the dry run exits 2 if a variant fails to build. A misspelt constructor
    keyword used to pass it (exit 0) and then fail every run of the study."""
    assert main([*CLI, "--dry-run", "--task", "mlp", "--variant", spec]) == 2
    out = capsys.readouterr().out
    assert "error: TypeError" in out and needle in out


@pytest.mark.parametrize("task", ["gpt", "logreg", "nonsmooth", "mlp"])
def test_dry_run_of_every_default_study_passes(capsys, task):
    # The constructor check must not reject what runs (blocks, stepsize oracles, presets).
    assert main([*CLI, "--dry-run", "--task", task]) == 0
    assert "error" not in capsys.readouterr().out


def test_dry_run_builds_vote_and_block_variants(capsys):
    argv = [*CLI, "--dry-run", "--task", "mlp", "--variant", "SGD vote=majority name=v"]
    argv += ["--variant", "Adam blocks=depth blocks.outside=own lr=1e-3|3e-3"]
    assert main(argv) == 0, capsys.readouterr().out


def test_out_that_is_a_file_is_a_clean_error(capsys, tmp_path):
    target = tmp_path / "taken"
    target.write_text("not a folder")
    argv = [*CLI, "--task", "nonsmooth", "--steps", "2", "--seeds", "0", "--out", str(target)]
    _fails_cleanly(capsys, argv, "File exists")


# ------------------------------------------------------------------- diverged runs
class _NaNOpt(torch.optim.SGD):
    """Writes NaN into the parameters: every run diverges at its first step."""

    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                p.data.fill_(float("nan"))


@pytest.fixture
def nan_module(monkeypatch):
    mod = types.ModuleType("cli_explore_opts")
    mod.NaNOpt = _NaNOpt
    monkeypatch.setitem(sys.modules, "cli_explore_opts", mod)


def test_a_grid_where_every_lr_diverged_chose_no_lr(capsys, tmp_path, nan_module):
    out = tmp_path / "div"
    argv = [*CLI, "--task", "mlp", "--steps", "4", "--seeds", "0,1", "--out", str(out)]
    argv += ["--no-plots", "--variant", "cli_explore_opts:NaNOpt signify=false lr=1|2 name=nan"]
    argv += ["--variant", "SGD signify=false lr=0.1 name=sgd"]
    assert main(argv) == 0
    capsys.readouterr()
    (nan, _) = json.loads((out / "study.json").read_text())["variants"]
    assert nan["error"] == "every lr diverged" and nan["runs"] == []
    assert nan["lr"] is None  # was 1.0: the first grid point, shown as chosen
    text = (out / "summary.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| nan |"))
    assert "none of 2" in row and "best of" not in row and "grid edge" not in row
    tuning = next(line for line in text.splitlines() if line.startswith("- nan:"))
    assert "**" not in tuning  # nothing bold: no lr won
    assert "1: diverged" in tuning and "2: diverged" in tuning


def test_a_diverged_run_reports_no_accuracy(capsys, tmp_path, nan_module):
    out = tmp_path / "acc"
    argv = [*CLI, "--task", "mlp", "--steps", "4", "--seeds", "0", "--out", str(out)]
    argv += ["--no-plots", "--variant", "cli_explore_opts:NaNOpt signify=false lr=1 name=nan"]
    assert main(argv) == 0
    capsys.readouterr()
    (run,) = json.loads((out / "study.json").read_text())["variants"][0]["runs"]
    assert run["status"] == "diverged" and math.isnan(run["final_val_loss"])
    # The accuracy of NaN logits (argmax of NaNs) was reported as the run's accuracy.
    assert math.isnan(run["val_acc"])
    row = next(line for line in (out / "summary.md").read_text().splitlines() if "| nan |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "diverged" and cells[4] == "diverged"  # final val loss, final val acc


# ------------------------------------------------------------------- report and reproducibility
def _rows(out: pathlib.Path, folder: str) -> list[dict]:
    text = (out / "runs" / folder / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def _study(out: pathlib.Path, seeds: str, *variants: str, fresh: bool = False) -> int:
    argv = [*CLI, "--task", "mlp", "--steps", "12", "--eval-every", "4", "--seeds", seeds]
    argv += ["--out", str(out), "--no-plots"] + ["--fresh"] * fresh
    for v in variants:
        argv += ["--variant", v]
    return main(argv)


VARIANTS = ("AdamW signify=false lr=1e-3|1e-2 name=adamw", "Adam stochastic=true lr=1e-3 name=sto")


def test_report_cells_match_the_raw_logs(capsys, tmp_path):
    out = tmp_path / "with space" / "rep"  # a path with a space, created with its parents
    assert _study(out, "0,1,2", *VARIANTS) == 0
    capsys.readouterr()
    record = json.loads((out / "study.json").read_text())
    lines = (out / "summary.md").read_text().splitlines()
    for v in record["variants"]:
        finals, bests, accs = [], [], []
        for r in v["runs"]:
            evals = [row for row in _rows(out, r["folder"]) if "val_loss" in row]
            assert [row["step"] for row in evals] == [0, 4, 8, 12]
            finals.append(evals[-1]["val_loss"])
            bests.append(min(row["val_loss"] for row in evals))
            accs.append(evals[-1]["val_acc"])
        row = next(line for line in lines if line.startswith(f"| {v['name']} |"))
        cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
        expected = ((cells[2], finals, 4), (cells[3], bests, 4), (cells[4], accs, 3))
        for cell, vals, digits in expected:
            arr = np.array(vals)
            assert cell == f"{arr.mean():.{digits}g} ± {np.ptp(arr) / 2:.2g}"
    # The tuned winner is the lowest final val loss of the first seed's tuning runs.
    adamw = record["variants"][0]
    tuning = adamw["tuning"].items()
    first = {float(lr): _rows(out, r["folder"])[-1]["val_loss"] for lr, r in tuning}
    assert adamw["lr"] == min(first, key=first.get)


def _curves(out: pathlib.Path) -> dict[str, list]:
    keep = ("step", "train_loss", "val_loss", "val_acc", "lr")
    return {
        f.name: [{k: row[k] for k in keep if k in row} for row in _rows(out, f.name)]
        for f in (out / "runs").iterdir()
    }


def test_same_seed_is_bit_identical_and_order_free(capsys, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert _study(a, "0,1", *VARIANTS) == 0
    assert _study(b, "0,1", *reversed(VARIANTS)) == 0  # listed the other way round
    assert _study(c, "1,2", *VARIANTS) == 0
    capsys.readouterr()
    ca, cb, cc = _curves(a), _curves(b), _curves(c)
    assert ca == cb and len(ca) == 5  # 2 AdamW tuning runs (one reused) + 1 + 2 stochastic
    shared = set(ca) & set(cc)  # seed 1 ran in both: the same folders, the same numbers
    assert shared and all(ca[k] == cc[k] for k in shared)
    s0 = next(k for k in ca if k.startswith("sto-") and "-s0-" in k)
    s2 = next(k for k in cc if k.startswith("sto-") and "-s2-" in k)
    assert ca[s0][0]["val_loss"] != cc[s2][0]["val_loss"]  # another seed, another init
    # Re-running with --fresh recomputes and reproduces every number.
    assert _study(a, "0,1", *VARIANTS, fresh=True) == 0
    assert _curves(a) == cb
