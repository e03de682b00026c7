"""`run_study`: a whole study with progress bars, then its report."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import pathlib
import platform
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch

from . import report
from .config import StudyConfig
from .runner import VariantOutcome, plan_size, run_one, run_variant
from .variants import Variant


class _NoBar:
    n = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix(self, **_: Any) -> None:
        pass

    def set_description(self, _: str) -> None:
        pass

    def write(self, text: str) -> None:
        print(text)

    def close(self) -> None:
        pass


def _bar(enabled: bool, **kwargs: Any) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(**kwargs)
        except ImportError:
            pass
    return _NoBar()


@contextlib.contextmanager
def _closing(bar: Any) -> Iterator[Any]:
    try:
        yield bar
    finally:
        bar.close()


def environment(device: str) -> dict[str, Any]:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def run_study(
    study: StudyConfig,
    variants: Sequence[Variant],
    *,
    progress: bool = True,
    fresh: bool = False,
    plots: bool = True,
    jobs: int | None = None,
) -> dict[str, Any]:
    """Run every variant (tuning lrs, then all seeds), write ``study.json``, ``summary.md`` and
    the plots under ``study.out``; return the study record.

    ``jobs > 1`` runs that many variants at once in worker processes, each with
    ``cpus // jobs`` torch threads (per-run timings then share the machine). ``None``: one
    variant per CPU on a CPU device (small models run fastest single-threaded side by side),
    one at a time on a GPU."""
    if jobs is None:
        jobs = 1 if study.device.startswith("cuda") else max(1, min(len(variants), _cpus()))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a positive int, got {jobs!r}")
    study = study.resolved()
    assert study.out is not None
    if study.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {study.device!r} asked for, but torch sees no CUDA device")
    out = pathlib.Path(study.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    total = plan_size(study, variants)
    outcomes: list[VariantOutcome] = []
    computed = 0
    with _closing(_bar(progress, total=total, desc="study", unit="run", position=0)) as sbar:
        done_keys: set[str] = set()

        def run(v: Variant, lr: float | None, seed: int, steps: int) -> dict[str, Any]:
            nonlocal computed
            label = f"{v.name} lr={'default' if lr is None else f'{lr:g}'} seed={seed}"
            sbar.set_description(label[:60])
            rbar = _bar(
                progress, total=steps, desc=label[:40], unit="step", position=1, leave=False
            )
            with _closing(rbar):
                r = run_one(study, v, lr, seed, steps, out, bar=rbar, fresh=fresh)
            if r["folder"] not in done_keys:
                done_keys.add(r["folder"])
                sbar.update(1)
            if not r.get("cached"):
                computed += 1
            if r["status"] == "error":
                sbar.write(f"[error] {label}: {r['error']}")
            return r

        if jobs == 1:
            for v in variants:
                outcomes.append(run_variant(study, v, out, run))
        else:
            outcomes, computed = _run_parallel(study, variants, out, fresh, jobs, sbar, done_keys)
        for v, outcome in zip(variants, outcomes):
            if outcome.error is not None:
                # Runs the variant no longer needs still count as done in the bar.
                sbar.update(max(0, _variant_size(study, v) - _runs_of(outcome)))
    record = {
        "study": dataclasses.asdict(study),
        "environment": environment(study.device),
        "wall_time_s": time.perf_counter() - start,
        "runs_computed": computed,
        "jobs": jobs,
        "threads_per_run": torch.get_num_threads() if jobs == 1 else _threads(jobs),
        "variants": [_outcome_record(o) for o in outcomes],
    }
    (out / "study.json").write_text(json.dumps(record, indent=1, default=str))
    report.write(out, record, plots=plots)
    return record


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _threads(jobs: int) -> int:
    return max(1, _cpus() // jobs)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _variant_worker(
    study: StudyConfig, v: Variant, out: str, fresh: bool, queue: Any
) -> VariantOutcome:
    def run(v: Variant, lr: float | None, seed: int, steps: int) -> dict[str, Any]:
        r = run_one(study, v, lr, seed, steps, pathlib.Path(out), fresh=fresh)
        label = f"{v.name} lr={'default' if lr is None else f'{lr:g}'} seed={seed}"
        queue.put((r["folder"], bool(r.get("cached")), r["status"], r.get("error"), label))
        return r

    return run_variant(study, v, pathlib.Path(out), run)


def _run_parallel(
    study: StudyConfig,
    variants: Sequence[Variant],
    out: pathlib.Path,
    fresh: bool,
    jobs: int,
    sbar: Any,
    done_keys: set[str],
) -> tuple[list[VariantOutcome], int]:
    """One variant per worker process at a time (a variant's tuning decides its seed runs)."""
    ctx = multiprocessing.get_context("spawn")
    threads = _threads(jobs)
    computed = 0
    with ctx.Manager() as manager:
        queue = manager.Queue()

        def drain() -> None:
            nonlocal computed
            while not queue.empty():
                folder, cached, status, error, label = queue.get()
                if folder not in done_keys:
                    done_keys.add(folder)
                    sbar.update(1)
                computed += 0 if cached else 1
                if status == "error":
                    sbar.write(f"[error] {label}: {error}")

        with ProcessPoolExecutor(
            jobs, mp_context=ctx, initializer=_init_worker, initargs=(threads,)
        ) as pool:
            futures = [
                pool.submit(_variant_worker, study, v, str(out), fresh, queue) for v in variants
            ]
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
        drain()
        outcomes = []
        for v, f in zip(variants, futures):
            err = f.exception()
            if err is None:
                outcomes.append(f.result())
            else:
                outcomes.append(VariantOutcome(v, {}, None, [], f"{type(err).__name__}: {err}"))
    return outcomes, computed


def _variant_size(study: StudyConfig, v: Variant) -> int:
    return plan_size(study, [v])


def _runs_of(o: VariantOutcome) -> int:
    return len({r["folder"] for r in [*o.tuning.values(), *o.runs]})


def _outcome_record(o: VariantOutcome) -> dict[str, Any]:
    v = o.variant
    return {
        "name": v.name,
        "call": v.call(o.lr),
        "spec": v.spec(),
        "lrs": list(v.lrs) if v.lrs else None,
        "lr": o.lr,
        "tuning": {f"{lr:g}": _brief(r) for lr, r in o.tuning.items()},
        "runs": [_brief(r) for r in o.runs],
        "error": o.error,
    }


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "cached"}
