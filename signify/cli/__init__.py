"""The ``signify`` command line. One subcommand for now: ``signify ablate``.

``signify ablate`` with no arguments runs the embedded default study (a small character-level
GPT on CPU, seven optimizers, two seeds) and writes ``runs/ablate/gpt-demo/summary.md``.
``signify ablate --device cuda`` runs the same study at a GPU size.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

_EPILOG = """\
variants on the command line (repeat --variant; they replace the default list):
  OPTIMIZER key=value ...   OPTIMIZER: a torch.optim class (Adam, SGD, ...), a signify preset
                            (Signum, StoSignSGD, SignAdamax) or module:Class
  a|b|c                     alternatives: for lr an lr grid to tune, for other keys a grid axis
  a,b                       a tuple (betas=0.9,0.99);  none: option off (blocks=none)
  signify=false             the optimizer itself, unconverted (the baseline)
  name="..."                the row's name in the report

examples:
  signify ablate                                   # the default study, under 4 min on 2 CPU cores
  signify ablate --device cuda                     # the same study at GPU size (preset small)
  signify ablate --device cuda --preset 350m --steps 500
  signify ablate --task logreg                     # ALIAS vs a tuned sign-descent grid
  signify ablate --task nonsmooth --steps 5000     # signSGD stalls, StoSignSGD converges
  signify ablate --task mlp --variant "Adam stochastic=false|true blocks=none|depth lr=1e-3|3e-3"
  signify ablate --print-default > study.toml && signify ablate --config study.toml
"""


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        msg = f"--seeds takes ints separated by commas, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds needs at least one seed")
    return seeds


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    from ..ablate.config import DTYPES, SCHEDULES
    from ..ablate.tasks import TASKS

    p = sub.add_parser(
        "ablate",
        help="run an ablation study of optimizers and transforms, write a report",
        description="Run an ablation study end to end: tune each variant's learning rate, "
        "train every seed, write per-run metrics, summary.md and plots. Finished runs are "
        "read back, never redone (delete the output folder or pass --fresh to redo).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="a TOML file with [study] and [[variant]]")
    p.add_argument("--task", choices=TASKS, help="the problem (default gpt)")
    p.add_argument(
        "--preset",
        help="model size: gpt demo|tiny|small|medium|350m (default demo on CPU, small on "
        "CUDA); mlp default|wide",
    )
    p.add_argument("--steps", type=int, help="training steps per run (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="batch size (default: the preset's)")
    p.add_argument(
        "--seeds",
        type=_seeds,
        help="seeds, comma-separated (default: the task's study: 0,1; logreg 0)",
    )
    p.add_argument("--device", help="cpu (default), cuda or cuda:N")
    p.add_argument("--dtype", choices=DTYPES, help="autocast: auto = bf16 for gpt on CUDA")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile signified steps (default: on CUDA when Triton is there)",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="lr schedule (default: the task's study, cosine for gpt, inv_sqrt for "
        "nonsmooth, else constant)",
    )
    p.add_argument("--warmup", type=float, help="warmup as a fraction of the steps")
    p.add_argument("--eval-every", type=int, help="steps between evaluations")
    p.add_argument("--tune-steps", type=int, help="length of lr-tuning runs (default: full length)")
    p.add_argument(
        "--variant", action="append", metavar="SPEC", help="a variant (see below); repeatable"
    )
    p.add_argument(
        "--only",
        action="append",
        metavar="TEXT",
        help="run only the variants whose name contains TEXT (repeatable)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="variants run at once in worker processes, single-threaded (default: one per "
        "CPU core on a CPU, 1 on a GPU; --jobs 1 gives timings of a whole machine)",
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy machine)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/ablate/TASK-PRESET)")
    p.add_argument("--fresh", action="store_true", help="redo finished runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="no PNG plots")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument(
        "--print-default",
        action="store_true",
        help="print the task's embedded default study as TOML and exit",
    )
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any variant failed")
    p.set_defaults(func=_ablate)


def _ablate(args: argparse.Namespace) -> int:
    from ..ablate import config, runner, study
    from ..ablate.variants import parse_spec

    if args.print_default:
        sys.stdout.write(config.default_text(args.task or "gpt"))
        return 0
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    variants = []
    for spec in args.variant or []:
        variants.extend(parse_spec(spec))
    overrides = {
        "preset": args.preset,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seeds": args.seeds,
        "device": args.device,
        "dtype": args.dtype,
        "compile": args.compile,
        "schedule": args.schedule,
        "warmup": args.warmup,
        "eval_every": args.eval_every,
        "tune_steps": args.tune_steps,
        "out": args.out,
    }
    cfg, chosen = config.load(args.task, args.config, overrides, variants or None)
    if args.only:
        wanted = [w.lower() for w in args.only]
        chosen = [v for v in chosen if any(w in v.name.lower() for w in wanted)]
        if not chosen:
            raise ValueError(f"--only {args.only} matches no variant")
    if args.dry_run:
        print(
            f"task {cfg.task} ({cfg.preset}), {cfg.steps} steps, seeds {list(cfg.seeds)}, "
            f"device {cfg.device}, output {cfg.out}"
        )
        bad = 0
        for v in chosen:
            grid = f"  lr grid {list(v.lrs)}" if v.tuned and v.lrs else ""
            print(f"  {v.name}: {v.call(v.lrs[0] if v.lrs and not v.tuned else None)}{grid}")
            try:
                v.check()
            except Exception as e:  # what the run would record as this variant's error
                bad += 1
                print(f"    error: {type(e).__name__}: {e}")
        print(f"{runner.plan_size(cfg, chosen)} runs at most")
        return 2 if bad else 0
    record = study.run_study(
        cfg,
        chosen,
        progress=not args.no_progress,
        fresh=args.fresh,
        plots=not args.no_plots,
        jobs=args.jobs,
    )
    failed = [v["name"] for v in record["variants"] if v["error"] or not v["runs"]]
    failed += [
        v["name"]
        for v in record["variants"]
        if v["name"] not in failed and any(r["status"] == "error" for r in v["runs"])
    ]
    print(f"\nReport: {cfg.out}/summary.md  (plots and per-run metrics in {cfg.out}/)")
    print(f"Took {record['wall_time_s']:.0f} s ({record['runs_computed']} runs computed).")
    if failed:
        print(f"Failed variants ({len(failed)}): {', '.join(failed)} (see summary.md)")
    return 1 if failed and args.strict else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signify", description="signify: sign-based optimizers from any torch optimizer."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_ablate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    # OSError, not only FileNotFoundError: `--out` naming a file or an unwritable folder is a
    # user error to report in one line, not a traceback.
    except (ValueError, TypeError, OSError, RuntimeError) as e:
        print(f"signify {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished runs are kept and will be read back", file=sys.stderr)
        return 130
