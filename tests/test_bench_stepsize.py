"""The stepsize benchmark's CPU smoke mode runs and reports every case."""

from __future__ import annotations

import json

from bench import stepsize


def test_bench_stepsize_cpu_smoke(tmp_path, capsys):
    result = stepsize.main(["--cpu", "--out", str(tmp_path)])
    names = [r["case"] for r in result["rows"]]
    assert names == list(stepsize.CASES)
    for r in result["rows"]:
        assert r["ms"] > 0 and r["ratio"] > 0
    saved = json.loads((tmp_path / "stepsize_cpu.json").read_text())
    assert saved["rows"][0]["case"] == "signsgd"
    assert "| alias(beta) |" in capsys.readouterr().out
