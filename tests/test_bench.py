"""bench/step.py --cpu: the smoke mode runs, writes its JSON and prints the table."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_step_bench_cpu_smoke(tmp_path):
    out = tmp_path / "step.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "bench/step.py", "--cpu", "--dtypes", "fp32", "--no-variants"]
    names = "Signum,Signum @check=graph,SignAdam stochastic,SignAdamax stochastic"
    cmd += ["--rows", names, "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    payload = json.loads(out.read_text())
    rows = {row["row"]: row for row in payload["rows"]}
    assert set(rows) == set(names.split(","))
    for row in rows.values():
        assert row["ms"] > 0 and row["recompiles"] == 0, row
    assert rows["Signum"]["B_param"] == 20 and rows["SignAdam stochastic"]["B_param"] == 28
    assert rows["SignAdamax stochastic"]["adapter"] in ("traced", "adamax")  # not run-and-read
    assert "| workload | dtype | row |" in r.stdout.splitlines()[-len(rows) - 2]


def test_clip_bench_cpu_smoke(tmp_path):
    """bench/clip.py --cpu: every row (clip outside and inside, per tensor and flat) steps
    and stays finite, with the bytes each must move."""
    out = tmp_path / "clip.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "bench/clip.py", "--cpu", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["row"]: row for row in json.loads(out.read_text())["rows"]}
    assert len(rows) == 6 and all(row["ms"] > 0 and row["finite"] for row in rows.values())
    assert rows["SignAdam stochastic, max_grad_norm"]["B_param"] == 32
    assert rows["SignAdam stochastic + clip_grad_norm_"]["B_param"] == 44


def test_alias_fusion_bench_cpu_smoke(tmp_path):
    """bench/alias_fusion.py --cpu: every formulation of ALIAS's passes computes what the
    plain one does (applied and skipped steps), and each pass is timed."""
    out = tmp_path / "fusion.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "bench/alias_fusion.py", "--cpu", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert payload["agree"] and all(payload["agree"].values()), payload["agree"]
    names = {row["pass"] for row in payload["rows"]}
    assert {"check", "signum", "pre_flat", "upd_measure", "upd_unit_gather"} <= names
    assert all(row["ms"] > 0 for row in payload["rows"])
