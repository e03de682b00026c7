"""`signify ablate`: variant specs, study config, the runner (tuning, resume, errors), the report.

The default study itself is not run here (minutes); the runner runs a 3-variant, 1-seed,
few-step study on the CPU demo GPT.
"""

from __future__ import annotations

import json
import math
import os
import sys
import types

import pytest
import torch

from signify.ablate import config, probes, report, runner, tasks
from signify.ablate.config import StudyConfig
from signify.ablate.study import run_study
from signify.ablate.variants import from_dict, from_tables, parse_spec, resolve_optimizer
from signify.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------- variants
def test_grid_expands_to_the_product_with_named_rows():
    vs = from_dict(
        {
            "optimizer": "Adam",
            "lr": [1e-3, 3e-3],
            "weight_decay": 0.1,
            "grid": {"stochastic": [False, True], "blocks": ["none", "depth"]},
        }
    )
    assert len(vs) == 4
    combos = {(v.options.get("stochastic"), v.options.get("blocks")) for v in vs}
    assert combos == {(False, None), (False, "depth"), (True, None), (True, "depth")}
    assert all(v.lrs == (1e-3, 3e-3) and v.tuned for v in vs)
    assert all(v.kwargs == {"weight_decay": 0.1} for v in vs)
    assert len({v.name for v in vs}) == 4
    assert any("blocks=depth" in v.name for v in vs)


def test_cli_spec_alternatives_tuples_and_none():
    vs = parse_spec('Adam stochastic=false|true betas=0.8,0.99 blocks=none lr=1e-3|1e-2 name="x"')
    assert len(vs) == 2
    for v in vs:
        assert v.kwargs == {"betas": (0.8, 0.99)}
        assert "blocks" not in v.options
        assert v.lrs == (1e-3, 1e-2)
        assert v.name.startswith("x [stochastic=")
    (plain,) = parse_spec("AdamW signify=false lr=3e-3")
    assert plain.plain and plain.lrs == (3e-3,) and not plain.tuned
    assert plain.call(3e-3) == "torch.optim.AdamW(params, lr=0.003)"


def test_option_tables_and_dotted_keys():
    (a,) = parse_spec("Adam stochastic=true blocks=depth blocks.outside=own")
    (b,) = from_dict(
        {"optimizer": "Adam", "stochastic": True, "blocks": {"rule": "depth", "outside": "own"}}
    )
    assert (
        a.options
        == b.options
        == {"stochastic": True, "blocks": {"rule": "depth", "outside": "own"}}
    )
    assert a.spec() == b.spec() and a.name == b.name
    assert "blocks=signify.transforms.Blocks(rule='depth', outside='own')" in a.call(1e-3)
    grid = parse_spec("SGD blocks=cyclic blocks.outside=never|own")
    assert [v.options["blocks"]["outside"] for v in grid] == ["never", "own"]
    made = parse_spec("SGD stepsize.class=collections:OrderedDict stepsize.a=1")[0]
    from signify.ablate.variants import build_option

    assert build_option("stepsize", made.options["stepsize"]) == {"a": 1}
    with pytest.raises(ValueError, match="class"):
        from_dict({"optimizer": "Adam", "vote": {"group": 1}})


@pytest.mark.parametrize(
    "table, err",
    [
        ({"optimizer": "Adam", "lr": [1e-3, -1.0]}, ValueError),
        ({"optimizer": "Adam", "lr": []}, ValueError),
        ({"lr": 1e-3}, ValueError),
        ({"optimizer": "AdamW", "signify": False, "stochastic": True}, ValueError),
        ({"optimizer": "Adam", "grid": {"stochastic": True}}, ValueError),
        ({"optimizer": "Adam", "grid": {"lr": [1e-3]}}, ValueError),
        ({"optimizer": 3}, TypeError),
        ({"optimizer": "SGD", "schedule": "step"}, ValueError),
        ({"optimizer": "SGD", "warmup": 2}, ValueError),
    ],
)
def test_bad_variants_fail_clearly(table, err):
    with pytest.raises(err):
        from_dict(table)


def test_duplicate_names_and_unknown_optimizers_fail():
    with pytest.raises(ValueError, match="unique"):
        from_tables([{"optimizer": "Adam", "name": "a"}, {"optimizer": "SGD", "name": "a"}])
    with pytest.raises(ValueError, match=r"not a torch\.optim class"):
        resolve_optimizer("Adamm")
    with pytest.raises(ValueError, match="start with the optimizer"):
        parse_spec("lr=1e-3")
    assert resolve_optimizer("Signum").__name__ == "Signum"
    assert resolve_optimizer("torch.optim:SGD") is torch.optim.SGD


def test_variants_build_what_the_report_says():
    model = torch.nn.Linear(3, 2)
    named = list(model.named_parameters())
    kw = dict(seed=1, compile=False, device=torch.device("cpu"))
    (v,) = parse_spec("Adam stochastic=true weight_decay=0.01")
    opt = v.build(named, 1e-3, **kw)
    assert type(opt).__name__ == "SignAdam" and opt.options.stochastic
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["weight_decay"] == 0.01
    assert "stochastic=True" in v.call(1e-3)
    (p,) = parse_spec("StoSignSGD betas=0.5,1.0")
    opt = p.build(named, 2e-3, **kw)
    assert type(opt).__name__ == "StoSignSGD" and opt.param_groups[0]["momentum"] == 0.5
    (t,) = parse_spec("AdamW signify=false")
    assert type(t.build(named, 1e-3, **kw)) is torch.optim.AdamW


# ------------------------------------------------------------------------------- config
def test_embedded_default_is_the_issue_study():
    study, variants = config.load()
    assert study.task == "gpt" and study.preset == "demo" and study.seeds == (0, 1)
    by_name = {v.name: v for v in variants}
    assert by_name["AdamW (torch)"].plain and by_name["AdamW (torch)"].tuned
    assert by_name["Signum"].optimizer == "Signum"
    assert by_name["sign(Adam)"].options == {}
    assert by_name["sign(Adam) stochastic"].options == {"stochastic": True}
    assert by_name["StoSignSGD"].optimizer == "StoSignSGD"
    alias = by_name["ALIAS (sign SGD-m)"]
    assert alias.options == {"stepsize": "alias"} and alias.lrs is None
    assert by_name["sign(Adam) stochastic + depth blocks"].options == {
        "stochastic": True,
        "blocks": {"rule": "depth", "outside": "own"},
    }
    assert alias.schedule == "constant" and study.schedule == "cosine"
    assert by_name["AdamW (torch)"].lrs == (1e-3, 3e-3, 1e-2, 3e-2)
    # Full-length tuning reuses the winner's run as the first seed's run: AdamW's 4 grid
    # points, 5 other grids of 3, the second seed of those 6, ALIAS's 2 seeds.
    assert runner.plan_size(study, variants) == 4 + 5 * 3 + 6 * 1 + 2
    for task in tasks.TASKS:
        s, vs = config.load(task)
        assert s.task == task and vs


def test_file_and_flags_override_in_order(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        '[study]\ntask = "mlp"\nsteps = 40\nseeds = [3]\n\n'
        '[[variant]]\noptimizer = "SGD"\nlr = 0.1\n'
    )
    study, variants = config.load(None, str(path), {"steps": 7, "device": None})
    assert (study.task, study.steps, study.seeds) == ("mlp", 7, (3,))
    assert [v.optimizer for v in variants] == ["SGD"]
    assert study.out == "runs/ablate/mlp-default"
    cuda = StudyConfig(device="cuda").resolved()
    assert (cuda.preset, cuda.dtype) == ("small", "bf16")
    (tmp_path / "bad.toml").write_text("[study]\nstepz = 3\n")
    with pytest.raises(ValueError, match="stepz"):
        config.load(None, str(tmp_path / "bad.toml"))
    (tmp_path / "broken.toml").write_text("[study\n")
    with pytest.raises(ValueError, match="invalid TOML"):
        config.load(None, str(tmp_path / "broken.toml"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("task", "cifar"),
        ("preset", "huge"),
        ("steps", 0),
        ("seeds", ()),
        ("seeds", (1, 1)),
        ("device", "tpu"),
        ("schedule", "step"),
        ("warmup", 1.5),
        ("tune_steps", 10**6),
    ],
)
def test_bad_study_values_name_the_field(field, value):
    with pytest.raises((ValueError, TypeError), match=field.split("_")[0]):
        StudyConfig(**{field: value}).resolved()


def test_a_variant_may_keep_its_own_schedule():
    (v,) = from_dict({"optimizer": "SGD", "stepsize": "alias", "schedule": "constant"})
    (w,) = from_dict({"optimizer": "SGD", "stepsize": "alias"})
    assert v.schedule == "constant" and v.warmup is None and "schedule" not in v.kwargs
    assert v.spec() != w.spec() and "schedule" not in w.spec()


def test_lr_schedules():
    cos = runner.lr_factor("cosine", 10, 110)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(110) == pytest.approx(0.1)
    assert runner.lr_factor("inv_sqrt", 0, 100)(3) == pytest.approx(0.5)
    assert runner.lr_factor("constant", 0, 100)(57) == 1.0


# ------------------------------------------------------------------------------- tasks, probes
@pytest.mark.parametrize("name", ["logreg", "nonsmooth", "mlp"])
def test_tasks_train_and_evaluate(name):
    task = tasks.make_task(name, "default", 32, 0, torch.device("cpu"), "fp32")
    opt = torch.optim.SGD([p for _, p in task.named_parameters()], lr=0.01)
    before = task.evaluate()["val_loss"]
    for step in range(1, 6):
        loss = task.train_step(step)
        assert loss.dim() == 0 and math.isfinite(float(loss))
        opt.step()
        opt.zero_grad()
        task.after_step()
    assert task.evaluate()["val_loss"] < before


def test_nonsmooth_average_iterate_is_what_is_reported():
    task = tasks.make_task("nonsmooth", "default", 0, 0, torch.device("cpu"), "fp32")
    xs = [task.x.detach().clone()]
    for _ in range(3):
        with torch.no_grad():
            task.x.add_(torch.randn(2, dtype=torch.float64))
        xs.append(task.x.detach().clone())
        task.after_step()
    avg = torch.stack(xs).mean(0)
    assert task.evaluate()["val_loss"] == pytest.approx(float(task.f(avg)))


def test_state_bytes_counts_every_state_tensor_once():
    params = [torch.randn(7, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    opt = torch.optim.AdamW(params, lr=1e-3)
    assert probes.state_bytes(opt) == 0
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    # exp_avg and exp_avg_sq per param, fp32, plus a 0-d fp32 step per param.
    assert probes.state_bytes(opt) == 2 * 4 * (21 + 5) + 2 * 4
    assert probes.comm_bytes(opt) == 0 and probes.stepsize_trace(opt) == {}


def test_stepsize_and_comm_probes_read_transform_scalars():
    fake = types.SimpleNamespace(
        state={},
        chain=[types.SimpleNamespace(name="vote", bytes_communicated=lambda: 96)],
        _shared={
            "rng": {"counter": torch.tensor(3.0)},
            "alias": {"gamma": torch.tensor(0.25), "d": torch.tensor(2.0)},
            "sign": {"unrelated": torch.tensor(1.0)},
            "vote": {"bytes_sent": torch.tensor(5)},
        },
    )
    assert probes.stepsize_trace(fake) == {"alias.gamma": 0.25, "alias.d": 2.0}
    assert probes.comm_bytes(fake) == 96
    fake.chain = [types.SimpleNamespace(name="vote")]
    assert probes.comm_bytes(fake) == 5
    fake.chain = [types.SimpleNamespace(name="vote", stats={"total_bytes_sent": 7})]
    assert probes.comm_bytes(fake) == 7
    # The oracle API: opt.stepsizes(), per group (a 1-D tensor under scope="tensor").
    fake.chain = [types.SimpleNamespace(name="alias", stepsizes=lambda opt: None)]
    fake.stepsizes = lambda: [torch.tensor(0.5), torch.tensor([1.0, 3.0])]
    assert probes.stepsize_trace(fake) == {"step[0]": 0.5, "step[1]": 2.0}


# ------------------------------------------------------------------------------- runner
class _NaNOpt(torch.optim.SGD):
    """Writes NaN into the parameters: a diverging run."""

    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                p.data.fill_(float("nan"))


@pytest.fixture
def small_study(tmp_path, monkeypatch):
    mod = types.ModuleType("ablate_test_opts")
    mod.NaNOpt = _NaNOpt
    monkeypatch.setitem(sys.modules, "ablate_test_opts", mod)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster, and immune to a busy box
    study = StudyConfig(
        task="gpt", steps=6, batch_size=2, seeds=(0,), eval_every=3, out=str(tmp_path / "out")
    )
    variants = from_tables(
        [
            {"name": "AdamW", "optimizer": "AdamW", "signify": False, "lr": [1e-3, 1e-2]},
            {"name": "Signum", "optimizer": "Signum", "lr": 1e-3},
            # Stands in for a keyword whose module is not there yet (blocks=, stepsize=).
            {"name": "missing", "optimizer": "no_such_module_xyz:Opt", "lr": [1e-3, 1e-2]},
            {"name": "nan", "optimizer": "ablate_test_opts:NaNOpt", "signify": False, "lr": 1.0},
        ]
    )
    yield study, variants
    torch.set_num_threads(threads)


def test_study_runs_tunes_reports_and_resumes(small_study):
    study, variants = small_study
    record = run_study(study, variants, progress=False, jobs=1)
    out = study.out and __import__("pathlib").Path(study.out)
    by = {v["name"]: v for v in record["variants"]}
    # Tuning: both lrs ran on the first seed; the winner has the lower final val loss and its
    # tuning run is reused as the seed-0 run (same folder).
    adamw = by["AdamW"]
    finals = {float(lr): r["final_val_loss"] for lr, r in adamw["tuning"].items()}
    assert adamw["lr"] == min(finals, key=finals.get)
    assert adamw["runs"][0]["folder"] == adamw["tuning"][f"{adamw['lr']:g}"]["folder"]
    assert record["runs_computed"] == 2 + 1 + 1 + 1  # AdamW x2, Signum, missing (once), nan
    # Metrics: step 0 and every step logged, evaluations at 0, 3, 6.
    rows = [
        json.loads(x) for x in (out / "runs" / adamw["runs"][0]["folder"] / "metrics.jsonl").open()
    ]
    assert [r["step"] for r in rows] == list(range(7))
    assert [r["step"] for r in rows if "val_loss" in r] == [0, 3, 6]
    signum = by["Signum"]["runs"][0]
    assert signum["status"] == "ok" and signum["state_bytes"] > 0 and signum["items_per_s"] > 0
    assert signum["comm_bytes"] == 0
    # An optimizer that cannot be built is an error line, not a dropped row.
    assert by["missing"]["error"].startswith("ModuleNotFoundError")
    assert by["nan"]["runs"][0]["status"] == "diverged"
    text = (out / "summary.md").read_text()
    assert "| missing |" in text and "**error**: ModuleNotFoundError" in text
    assert "| AdamW | " in text and "(best of 2)" in text and "diverged" in text
    assert "tokens/s" in text and "signify.Signum(params, lr=0.001)" in text
    for name in ("loss_vs_step.png", "loss_vs_time.png", "lr_tuning.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    # Resume: nothing finished is redone; only the failed variant is retried.
    again = run_study(study, variants, progress=False, plots=False, jobs=1)
    assert again["runs_computed"] == 1
    for p, t in stamps.items():
        if "missing" not in p.parent.name:
            assert p.stat().st_mtime_ns == t
    assert [v["lr"] for v in again["variants"]] == [v["lr"] for v in record["variants"]]
    # Another seed count changes nothing already run; a changed setting makes new runs.
    more = run_study(
        StudyConfig(**{**study.__dict__, "steps": 4, "tune_steps": None}),
        variants[:1],
        progress=False,
        plots=False,
        jobs=1,
    )
    assert more["runs_computed"] == 2


def test_report_marks_grid_edges_and_spread():
    v = {"lr": 1e-3, "lrs": [1e-3, 3e-3]}
    assert "grid edge" in report._lr_cell(v)
    assert "grid edge" not in report._lr_cell({"lr": 3e-3, "lrs": [1e-3, 3e-3, 1e-2]})
    assert report._spread([1.0, 2.0]) == "1.5 ± 0.5"
    assert report._spread([float("nan")]) == "diverged"


# ------------------------------------------------------------------------------- CLI
def test_cli_help_dry_run_and_print_default(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["ablate", "--help"])
    assert e.value.code == 0
    assert "--variant" in capsys.readouterr().out
    assert main(["ablate", "--dry-run", "--only", "alias"]) == 0
    out = capsys.readouterr().out
    assert "ALIAS" in out and "AdamW" not in out and "runs at most" in out
    assert main(["ablate", "--print-default", "--task", "logreg"]) == 0
    assert capsys.readouterr().out == config.default_text("logreg")
    assert main(["ablate", "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err
    # a dry run builds what it can: a variant that cannot be built is an error, exit 2
    capsys.readouterr()
    assert main(["ablate", "--dry-run", "--variant", "SGD stochastic=maybe"]) == 2
    assert "error: TypeError: stochastic must be a bool" in capsys.readouterr().out
    assert main([]) == 2
    if not torch.cuda.is_available():
        assert (
            main(["ablate", "--device", "cuda", "--steps", "1", "--out", str(tmp_path / "x")]) == 2
        )
        assert "no CUDA device" in capsys.readouterr().err


def test_console_script_points_at_main():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert 'signify = "signify.cli:main"' in text
    assert callable(main)


def test_parallel_jobs_match_the_sequential_plan(tmp_path):
    study = StudyConfig(task="nonsmooth", steps=10, seeds=(0, 1), out=str(tmp_path / "par"))
    variants = from_tables(
        [
            {"name": "sign", "optimizer": "SGD", "lr": [0.1, 1.0]},
            {"name": "sto", "optimizer": "SGD", "stochastic": True, "lr": 1.0},
        ]
    )
    record = run_study(study, variants, progress=False, plots=False, jobs=2)
    assert record["runs_computed"] == runner.plan_size(study.resolved(), variants) == 5
    by = {v["name"]: v for v in record["variants"]}
    assert [r["seed"] for r in by["sign"]["runs"]] == [0, 1] and by["sto"]["error"] is None
    # signSGD from this start never changes x1 + x2, so f >= |x1 + x2| (StoSignSGD, Fig. 1).
    assert all(r["final_val_loss"] >= 2.87 for r in by["sign"]["runs"])
    with pytest.raises(ValueError, match="jobs"):
        run_study(study, variants, jobs=0)


def test_alias_option_two_runs_in_a_study(tmp_path):
    """The runner hands the training loss to the optimizer: ALIAS option II reads f(x_0)."""
    study = StudyConfig(task="nonsmooth", steps=5, seeds=(0,), out=str(tmp_path / "alias2"))
    variants = from_tables(
        [
            {
                "name": "alias2",
                "optimizer": "SGD",
                "stepsize": {"class": "signify.transforms.stepsize_alias:Alias", "f_lower": 0.0},
            }
        ]
    )
    record = run_study(study, variants, progress=False, plots=False, jobs=1)
    (alias2,) = record["variants"]
    assert alias2["error"] is None and alias2["runs"][0]["status"] == "ok"
