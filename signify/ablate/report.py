"""The study's report: ``summary.md`` (tables) and PNG plots, made to be opened as they are."""

from __future__ import annotations

import json
import math
import pathlib
import statistics
from typing import Any

TASK_TEXT = {
    "gpt": "character-level GPT on the Python documentation text (`pydoc_data`, no download); "
    "val loss = cross-entropy (nats/char) on fixed held-out batches",
    "logreg": "logistic regression on scikit-learn's breast_cancer (standardised), full "
    "gradients; val loss = the training objective",
    "nonsmooth": "f(x) = |x1+x2| + 2|x1-x2| from x0 = (0.731, 2.142), exact subgradients; "
    "val loss = f at the running average of the iterates (StoSignSGD's theorem)",
    "mlp": "3-layer MLP on scikit-learn's digits (1400 train / 397 test), batch 128; "
    "val loss = test cross-entropy",
}
PLOTS = ("loss_vs_step.png", "loss_vs_time.png", "stepsize.png", "lr_tuning.png")


def _bytes(n: float) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{n:.0f} B"


def _rate(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.1f} k" if x >= 1e3 else f"{x:.1f}"


def _spread(values: list[float], digits: int = 4) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "diverged"
    mean = statistics.fmean(vals)
    text = f"{mean:.{digits}g}"
    if len(vals) > 1:
        text += f" ± {(max(vals) - min(vals)) / 2:.2g}"
    if len(vals) < len(values):
        text += f" ({len(values) - len(vals)} diverged)"
    return text


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else float("nan")


def _lr_cell(v: dict[str, Any]) -> str:
    if v["lr"] is None:
        # A grid whose every lr failed chose none (the class default never ran either).
        return f"none of {len(v['lrs'])}" if v["lrs"] and len(v["lrs"]) > 1 else "default"
    text = f"{v['lr']:g}"
    if v["lrs"] and len(v["lrs"]) > 1:
        text += f" (best of {len(v['lrs'])})"
        if v["lr"] in (min(v["lrs"]), max(v["lrs"])):
            text += " ⚠ grid edge"
    return text


def summary_markdown(record: dict[str, Any], plots: list[str]) -> str:
    study, env = record["study"], record["environment"]
    variants = record["variants"]
    ok_runs = [r for v in variants for r in v["runs"] if r["status"] in ("ok", "diverged")]
    unit = ok_runs[0].get("unit", "samples") if ok_runs else "samples"
    params = ok_runs[0].get("params") if ok_runs else None
    per_step = ok_runs[0].get("items_per_step") if ok_runs else None
    lines = [f"# signify ablate: {study['task']} ({study['preset']})", ""]
    lines.append(f"Task: {TASK_TEXT.get(study['task'], study['task'])}.")
    lines.append("")
    facts = [
        f"{params:,} parameters" if params else None,
        f"{study['steps']} steps",
        f"{per_step:,} {unit}/step" if per_step and unit != "steps" else None,
        f"seeds {', '.join(map(str, study['seeds']))}",
        f"lr schedule {study['schedule']}"
        + (f" (warmup {study['warmup']:.0%})" if study["warmup"] else ""),
        f"device {study['device']} ({study['dtype']})",
    ]
    lines.append("Setup: " + ", ".join(f for f in facts if f) + ".")
    machine = env.get("gpu") or f"{env['cpu']}, {env['cpu_count']} cores"
    lines.append(
        f"Machine: {machine}; torch {env['torch']}, "
        f"Python {env['python']}; {record.get('jobs', 1)} run(s) at a time with "
        f"{record.get('threads_per_run', env['torch_threads'])} thread(s) each. "
        f"This invocation: {record['wall_time_s']:.0f} s wall time, "
        f"{record['runs_computed']} runs computed (the others read back from `runs/`)."
    )
    lines += ["", "## Results", ""]
    has_acc = any("val_acc" in r for v in variants for r in v["runs"])
    has_peak = any("peak_mem_bytes" in r for v in variants for r in v["runs"])
    head = ["variant", "lr", "final val loss", "best val loss"]
    head += ["final val acc"] if has_acc else []
    head += ["train time (s)", f"{unit}/s", "optimizer state", "bytes sent/step"]
    head += ["peak GPU memory"] if has_peak else []
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    finals = {
        v["name"]: _mean([r.get("final_val_loss") for r in v["runs"]])
        for v in variants
        if v["runs"]
    }
    best = min((x for x in finals.values() if math.isfinite(x)), default=None)
    errors = []
    for v in variants:
        runs = [r for r in v["runs"] if r["status"] in ("ok", "diverged")]
        if not runs:
            err = v["error"] or next((r["error"] for r in v["runs"] if r.get("error")), "no run")
            errors.append((v["name"], err))
            cells = [v["name"], _lr_cell(v), f"**error**: {err}"] + [""] * (len(head) - 3)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        final = _spread([r.get("final_val_loss") for r in runs])
        if best is not None and finals.get(v["name"]) == best:
            final = f"**{final}**"
        cells = [v["name"], _lr_cell(v), final, _spread([r.get("best_val_loss") for r in runs])]
        if has_acc:
            cells.append(_spread([r.get("val_acc") for r in runs], 3))
        comm = _mean([r["comm_bytes"] / max(1, r["steps_done"]) for r in runs])
        cells += [
            f"{_mean([r['train_time'] for r in runs]):.1f}",
            _rate(_mean([r["items_per_s"] for r in runs])),
            _bytes(max(r["state_bytes"] for r in runs)),
            _bytes(comm) if comm else "0",
        ]
        if has_peak:
            cells.append(_bytes(max(r.get("peak_mem_bytes", 0) for r in runs)))
        lines.append("| " + " | ".join(cells) + " |")
        if len(runs) < len(v["runs"]) or v["error"]:
            bad = [r for r in v["runs"] if r["status"] == "error"]
            errors.append((v["name"], v["error"] or (bad[0]["error"] if bad else "")))
    lines += [
        "",
        f"Final/best val loss: mean ± half the range over {len(study['seeds'])} seed(s); the "
        "best mean final loss is bold. lr: the learning rate every seed ran with; a grid is "
        "tuned on the first seed by final val loss (⚠ grid edge: widen the grid). "
        f"Train time excludes evaluation; {unit}/s is measured after the first 10% of steps. "
        "Optimizer state: bytes of the tensors in `opt.state` (peak over log points). "
        "Bytes sent/step: what a majority vote put on the wire (0 without `vote=`).",
    ]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- **{name}**: {err}" for name, err in errors]
    tuned = [v for v in variants if v["tuning"]]
    if tuned:
        lines += ["", "## Learning-rate tuning (first seed, final val loss)", ""]
        for v in tuned:
            cells = []
            for lr, r in v["tuning"].items():
                val = r.get("final_val_loss")
                text = f"{lr}: " + (
                    f"{val:.4g}" if r["status"] == "ok" and val is not None else r["status"]
                )
                cells.append(
                    f"**{text}**" if v["lr"] is not None and float(lr) == v["lr"] else text
                )
            lines.append(f"- {v['name']}: " + ", ".join(cells))
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots]
    lines += ["", "## How each variant is built", ""]
    for v in variants:
        sched = v["spec"].get("schedule")
        note = ""
        if sched:
            parts = [
                f"lr schedule {sched[0]}" if sched[0] else "",
                f"warmup {sched[1]:.0%}" if sched[1] is not None else "",
            ]
            note = f" ({', '.join(p for p in parts if p)})"
        lines.append(f"- {v['name']}: `{v['call']}`{note}")
    lines += [
        "",
        "Per-run metrics: `runs/<variant>-lr<lr>-s<seed>-n<steps>-<hash>/metrics.jsonl` "
        "(one JSON object per logged step); the whole study: `study.json`.",
        "",
    ]
    return "\n".join(lines)


def _load_rows(out: pathlib.Path, folder: str) -> list[dict[str, Any]]:
    path = out / "runs" / folder / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _curves(
    out: pathlib.Path, v: dict[str, Any], key: str, x: str
) -> tuple[list, list, list, list]:
    """Mean, min and max of ``key`` over seeds at the steps every seed logged, against ``x``."""
    per_run = []
    for r in v["runs"]:
        if r["status"] not in ("ok", "diverged"):
            continue
        rows = [row for row in _load_rows(out, r["folder"]) if key in row]
        per_run.append({row["step"]: row for row in rows})
    if not per_run:
        return [], [], [], []
    steps = sorted(set.intersection(*(set(d) for d in per_run)))
    xs, mean, lo, hi = [], [], [], []
    for s in steps:
        vals = [d[s][key] for d in per_run]
        xs.append(statistics.fmean(d[s][x] for d in per_run) if x != "step" else s)
        mean.append(statistics.fmean(vals))
        lo.append(min(vals))
        hi.append(max(vals))
    return xs, mean, lo, hi


def make_plots(out: pathlib.Path, record: dict[str, Any]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    variants = [v for v in record["variants"] if any(r["status"] != "error" for r in v["runs"])]
    log_y = record["study"]["task"] in ("logreg", "nonsmooth")
    colors = plt.get_cmap("tab10")
    made = []

    def style(ax: Any, xlabel: str, ylabel: str) -> None:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if log_y:
            ax.set_yscale("log")

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for i, v in enumerate(variants):
        for ax, key in zip(axes, ("train_loss", "val_loss")):
            xs, mean, lo, hi = _curves(out, v, key, "step")
            if xs:
                ax.plot(xs, mean, color=colors(i % 10), label=v["name"])
                ax.fill_between(xs, lo, hi, color=colors(i % 10), alpha=0.2)
    style(axes[0], "step", "train loss (mean over each log interval)")
    style(axes[1], "step", "val loss")
    axes[1].legend(fontsize=8)
    fig.suptitle("Loss against steps (line: mean over seeds, band: min to max)")
    fig.tight_layout()
    fig.savefig(out / "loss_vs_step.png", dpi=110)
    plt.close(fig)
    made.append("loss_vs_step.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, v in enumerate(variants):
        xs, mean, lo, hi = _curves(out, v, "val_loss", "time")
        if xs:
            ax.plot(xs, mean, color=colors(i % 10), label=v["name"], marker=".")
            ax.fill_between(xs, lo, hi, color=colors(i % 10), alpha=0.2)
    style(ax, "training wall time (s, evaluation excluded)", "val loss")
    ax.legend(fontsize=8)
    ax.set_title("Loss against wall time")
    fig.tight_layout()
    fig.savefig(out / "loss_vs_time.png", dpi=110)
    plt.close(fig)
    made.append("loss_vs_time.png")

    traced = []
    for i, v in enumerate(variants):
        run = next((r for r in v["runs"] if r["status"] != "error"), None)
        rows = _load_rows(out, run["folder"]) if run else []
        if any("trace" in row for row in rows):
            traced.append((i, v, rows))
    if traced:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, v, rows in traced:
            keys = sorted({k for row in rows for k in row.get("trace", {})})
            for j, k in enumerate(keys):
                pts = [(row["step"], row["trace"][k]) for row in rows if k in row.get("trace", {})]
                ax.plot(
                    *zip(*pts),
                    color=colors(i % 10),
                    ls=("-", "--", ":", "-.")[j % 4],
                    label=f"{v['name']}: {k}",
                )
        oracles = {v["name"] for _, v, _ in traced}
        for i, v in enumerate(variants):
            if v["name"] in oracles or v["spec"]["plain"] or not (v["lrs"] and len(v["lrs"]) > 1):
                continue
            run = next((r for r in v["runs"] if r["status"] != "error"), None)
            rows = _load_rows(out, run["folder"]) if run else []
            pts = [(row["step"], row["lr"]) for row in rows if "lr" in row]
            if pts:
                ax.plot(
                    *zip(*pts),
                    color=colors(i % 10),
                    lw=0.8,
                    alpha=0.7,
                    label=f"{v['name']}: tuned lr (scheduled)",
                )
        style(ax, "step", "step size per coordinate (first seed)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.set_title("Stepsize of oracles against the tuned (scheduled) sign steps")
        fig.tight_layout()
        fig.savefig(out / "stepsize.png", dpi=110)
        plt.close(fig)
        made.append("stepsize.png")

    tuned = [(i, v) for i, v in enumerate(variants) if v["tuning"]]
    if tuned:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, v in tuned:
            pts = sorted(
                (float(lr), r["final_val_loss"])
                for lr, r in v["tuning"].items()
                if r["status"] == "ok"
            )
            if pts:
                ax.plot(*zip(*pts), color=colors(i % 10), marker="o", label=v["name"])
            if v["lr"] is not None and v["lr"] in dict(pts):
                ax.plot([v["lr"]], [dict(pts)[v["lr"]]], color=colors(i % 10), marker="*", ms=16)
        ax.set_xscale("log")
        style(ax, "learning rate", "final val loss (first seed)")
        ax.legend(fontsize=8)
        ax.set_title("Learning-rate tuning (star: chosen)")
        fig.tight_layout()
        fig.savefig(out / "lr_tuning.png", dpi=110)
        plt.close(fig)
        made.append("lr_tuning.png")
    return made


def write(out: pathlib.Path, record: dict[str, Any], *, plots: bool = True) -> pathlib.Path:
    for name in PLOTS:  # a plot of an earlier invocation must not outlive its data
        (out / name).unlink(missing_ok=True)
    made = make_plots(out, record) if plots else []
    path = out / "summary.md"
    path.write_text(summary_markdown(record, made))
    return path
