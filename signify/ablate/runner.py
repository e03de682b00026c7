"""Running a study: tune each variant's learning rate, run every seed, resume what is done.

A run is one (variant, lr, seed, length) under the study's settings. Its folder
``<out>/runs/<name>-lr<lr>-s<seed>-n<steps>-<hash>`` holds ``metrics.jsonl`` (one line per
logged step) and ``result.json``; the hash covers everything that determines the run, so a
finished run (``result.json`` with status ``ok`` or ``diverged``) is read back, never redone.
Runs that failed with an error are retried on the next invocation.

Tuning. A variant with an lr grid runs every lr on the first seed; the lr with the lowest
final validation loss wins and every seed runs with it. By default tuning runs are full
length, so the winner's tuning run *is* its first-seed run (no extra cost, no short-horizon
bias; the first seed is then the best of the grid, which the seed spread makes visible).
``tune_steps`` < ``steps`` tunes on shorter runs instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import re
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from . import probes
from .config import StudyConfig
from .tasks import make_task
from .variants import Variant

FINISHED = ("ok", "diverged")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:48] or "variant"


def _lr_text(lr: float | None) -> str:
    return "default" if lr is None else f"{lr:g}"


def run_dir(
    out: pathlib.Path, study: StudyConfig, v: Variant, lr: float | None, seed: int, steps: int
) -> pathlib.Path:
    key = study.run_hash(v, lr, seed, steps)
    return out / "runs" / f"{_slug(v.name)}-lr{_lr_text(lr)}-s{seed}-n{steps}-{key}"


def lr_factor(schedule: str, warmup_steps: int, horizon: int) -> Any:
    """The multiplier of the initial lr at step ``t`` (a LambdaLR function)."""

    def f(t: int) -> float:
        if warmup_steps and t < warmup_steps:
            return (t + 1) / warmup_steps
        if schedule == "cosine":
            progress = min(1.0, (t - warmup_steps) / max(1, horizon - warmup_steps))
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "inv_sqrt":
            return 1.0 / math.sqrt(t + 1 - warmup_steps)
        return 1.0

    return f


@contextlib.contextmanager
def _process_group(variant: Variant) -> Iterator[None]:
    """A one-process gloo group for ``vote=`` variants run outside torchrun (nothing travels:
    the bytes communicated are those of a world of one)."""
    import torch.distributed as dist

    if variant.options.get("vote") is None or not dist.is_available() or dist.is_initialized():
        yield
        return
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_one(
    study: StudyConfig,
    variant: Variant,
    lr: float | None,
    seed: int,
    steps: int,
    out: pathlib.Path,
    *,
    bar: Any = None,
    fresh: bool = False,
) -> dict[str, Any]:
    """Run (or read back) one run; never raises for an optimizer's failure (see ``status``)."""
    folder = run_dir(out, study, variant, lr, seed, steps)
    result_path = folder / "result.json"
    if not fresh and result_path.exists():
        cached = json.loads(result_path.read_text())
        if cached.get("status") in FINISHED:
            cached["cached"] = True
            return cached
    folder.mkdir(parents=True, exist_ok=True)
    device = torch.device(study.device)
    result: dict[str, Any] = {
        "variant": variant.name,
        "lr": lr,
        "seed": seed,
        "steps": steps,
        "folder": folder.name,
        "status": "error",
        "error": None,
        "stage": "build",
        "call": variant.call(lr),
    }
    rows: list[dict[str, Any]] = []
    try:
        with _process_group(variant):
            _train(study, variant, lr, seed, steps, device, result, rows, bar)
    except Exception as e:  # reported in the summary, never silently dropped
        result["status"] = "error"
        result["error"] = f"{type(e).__name__}: {e}"
        (folder / "error.txt").write_text(traceback.format_exc())
    tmp = folder / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, folder / "metrics.jsonl")
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, result_path)
    result["cached"] = False
    return result


def _train(
    study: StudyConfig,
    variant: Variant,
    lr: float | None,
    seed: int,
    steps: int,
    device: torch.device,
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    bar: Any,
) -> None:
    assert study.preset is not None and study.batch_size is not None
    assert study.steps is not None and study.eval_every is not None
    task = make_task(study.task, study.preset, study.batch_size, seed, device, study.dtype)
    named = task.named_parameters()
    opt = variant.build(named, lr, seed=seed, compile=study.compile, device=device)
    result["stage"] = "train"
    schedule = variant.schedule or study.schedule
    warm = int((study.warmup if variant.warmup is None else variant.warmup) * study.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule, warm, study.steps))
    result["params"] = task.n_params
    result["unit"] = task.unit
    result["items_per_step"] = task.items_per_step
    log_every = max(1, steps // 100)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def log(step: int, train_loss: float | None, clock: float, evaluate: bool) -> dict[str, Any]:
        row: dict[str, Any] = {"step": step, "time": clock}
        if train_loss is not None:
            row["train_loss"] = train_loss
        row["lr"] = float(opt.param_groups[0]["lr"])
        if evaluate:
            row.update(task.evaluate())
        trace = probes.stepsize_trace(opt)
        if trace:
            row["trace"] = trace
        row["state_bytes"] = probes.state_bytes(opt)
        row["comm_bytes"] = probes.comm_bytes(opt)
        rows.append(row)
        return row

    log(0, None, 0.0, True)
    clock = 0.0
    acc = torch.zeros((), device=device)
    count = 0
    t0 = time.perf_counter()
    status = "ok"
    for step in range(1, steps + 1):
        loss = task.train_step(step)
        if hasattr(opt, "set_loss"):
            opt.set_loss(loss)  # ALIAS option II reads f(x_0), the first step's loss
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        task.after_step()
        acc += loss
        count += 1
        evaluate = step % study.eval_every == 0 or step == steps
        if step % log_every == 0 or evaluate:
            _sync(device)
            clock += time.perf_counter() - t0
            train_loss = float(acc) / count
            acc.zero_()
            count = 0
            row = log(step, train_loss, clock, evaluate)
            if bar is not None:
                bar.update(step - bar.n)
                bar.set_postfix(loss=f"{train_loss:.4g}", refresh=False)
            if not math.isfinite(train_loss) or not math.isfinite(row.get("val_loss", 0.0)):
                status = "diverged"
                break
            t0 = time.perf_counter()
    _summarise(result, rows, status, task.items_per_step, steps, device)


def _summarise(
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    status: str,
    items_per_step: int,
    steps: int,
    device: torch.device,
) -> None:
    evals = [r for r in rows if "val_loss" in r]
    last = rows[-1]
    vals = [r["val_loss"] for r in evals if math.isfinite(r["val_loss"])]
    result.update(
        status=status,
        stage="done",
        final_val_loss=evals[-1]["val_loss"] if status == "ok" else float("nan"),
        best_val_loss=min(vals) if vals else float("nan"),
        final_train_loss=last.get("train_loss"),
        train_time=last["time"],
        state_bytes=max(r["state_bytes"] for r in rows),
        comm_bytes=last["comm_bytes"],
        steps_done=last["step"],
    )
    for k in ("val_acc", "f_last"):
        if k in evals[-1]:
            # Like final_val_loss: a diverged run's last evaluation (NaN weights) is no result.
            result[k] = evals[-1][k] if status == "ok" else float("nan")
    # Throughput after the first 10% of the steps: excludes compilation and warm-up.
    start = next((r for r in rows if r["step"] >= max(1, steps // 10)), rows[0])
    dt, ds = last["time"] - start["time"], last["step"] - start["step"]
    if dt <= 0 or ds <= 0:
        dt, ds = last["time"], last["step"]
    result["items_per_s"] = items_per_step * ds / dt if dt > 0 else float("nan")
    if device.type == "cuda":
        result["peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)


@dataclasses.dataclass
class VariantOutcome:
    variant: Variant
    tuning: dict[float, dict[str, Any]]  # lr -> the tuning run's result (tuned variants only)
    lr: float | None  # the lr every seed ran with
    runs: list[dict[str, Any]]  # one per seed
    error: str | None = None  # why nothing (or not everything) ran


def plan_size(study: StudyConfig, variants: Sequence[Variant]) -> int:
    """Runs the study needs at most (a tuning run reused as a seed run counts once)."""
    n = 0
    for v in variants:
        tuning = len(v.lrs) if v.tuned and v.lrs else 0
        reuse = 1 if tuning and study.tune_steps == study.steps else 0
        n += tuning + len(study.seeds) - reuse
    return n


def run_variant(
    study: StudyConfig,
    v: Variant,
    out: pathlib.Path,
    run: Any,
) -> VariantOutcome:
    """Tune (if the variant has an lr grid), then run every seed. ``run(v, lr, seed, steps)``."""
    assert study.tune_steps is not None and study.steps is not None
    outcome = VariantOutcome(v, {}, v.lrs[0] if v.lrs else None, [])
    if v.tuned:
        assert v.lrs is not None
        for lr in v.lrs:
            r = run(v, lr, study.seeds[0], study.tune_steps)
            outcome.tuning[lr] = r
            if r["status"] == "error" and r.get("stage") == "build":
                outcome.error = r["error"]  # every lr would fail the same way
                return outcome
        ok = {lr: r for lr, r in outcome.tuning.items() if r["status"] == "ok"}
        if not ok:
            errors = {r.get("error") for r in outcome.tuning.values() if r.get("error")}
            outcome.error = "; ".join(sorted(e for e in errors if e)) or "every lr diverged"
            outcome.lr = None  # no lr won: the report must not mark the first one as chosen
            return outcome
        outcome.lr = min(ok, key=lambda lr: ok[lr]["final_val_loss"])
    for seed in study.seeds:
        r = run(v, outcome.lr, seed, study.steps)
        outcome.runs.append(r)
        if r["status"] == "error" and r.get("stage") == "build":
            outcome.error = r["error"]
            break
    return outcome
