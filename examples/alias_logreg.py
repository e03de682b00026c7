"""ALIAS and SOS against grid-tuned constant-step sign descent on the ALIAS paper's small
deterministic problems (algorithms.md 3.11): logistic regression and non-linear least squares,
each on synthetic data and on scikit-learn's breast-cancer set, full gradients, 1000 steps.

For each problem: constant-step sign descent over a grid of 9 steps (1e-4 ... 1, half
decades), ALIAS options I and II (f~ = 0), memory-efficient ALIAS, SOS (a constant step found
by bisection, then run), and, with momentum 0.9, ALIAS(beta) against grid-tuned Signum.
Nothing is tuned for ALIAS. Writes docs/img/alias_logistic.png and docs/img/alias_nllsq.png
(loss and stepsize against steps), prints a Markdown table and writes
docs/img/alias_convex.json.

    PYTHONPATH=. python examples/alias_logreg.py     # about a minute on a laptop CPU
"""

from __future__ import annotations

import json
import pathlib
import time

import numpy as np
import torch

import signify
from signify import sos
from signify.tasks import convex
from signify.transforms.stepsize_alias import Alias, AliasLowMem

STEPS = 1000
GRID = [float(10.0**k) for k in np.linspace(-4, 0, 9)]
OUT = pathlib.Path(__file__).resolve().parent.parent / "docs" / "img"


def run_signify(problem: convex.Problem, stepsize, momentum: float = 0.0, steps: int = STEPS):
    """Losses [steps + 1] and steps taken [steps] of signified SGD with a stepsize oracle."""
    x = problem.x0().requires_grad_(True)
    opt = signify.signify(torch.optim.SGD, stepsize=stepsize)([x], momentum=momentum)
    losses, gammas = [], []
    for _ in range(steps):
        f, g = problem.loss_grad(x.detach())
        losses.append(f.item())
        x.grad = g
        opt.set_loss(f)
        opt.step()
        gammas.append(opt.stepsizes()[0].item())
    losses.append(problem.loss_grad(x.detach())[0].item())
    return np.array(losses), np.array(gammas)


def run_problem(problem: convex.Problem) -> dict:
    t0 = time.perf_counter()
    out: dict = {"name": problem.name, "n": problem.a.shape[0], "d": problem.dim}
    hist = convex.sign_descent_grid(problem, GRID, STEPS, history=True).numpy()
    best = int(hist[-1].argmin())
    out["grid_final"] = hist[-1].tolist()
    out["best_gamma"], out["best_loss"] = GRID[best], float(hist[-1, best])
    out["curves"] = {f"best constant ({GRID[best]:.1e})": (hist[:, best], None)}
    runs = {
        "ALIAS I": Alias(),
        "ALIAS II (f~=0)": Alias(f_lower=0.0),
        "ALIAS-lowmem I": AliasLowMem(),
        "ALIAS-lowmem II": AliasLowMem(f_lower=0.0),
    }
    for name, oracle in runs.items():
        losses, gammas = run_signify(problem, oracle)
        out["curves"][name] = (losses, gammas)
        out[name] = float(losses[-1])
    x = problem.x0().requires_grad_(True)

    def closure():
        f, g = problem.loss_grad(x.detach())
        x.grad = g
        return f

    res = sos.sos([x], closure, STEPS)
    sos_hist = convex.sign_descent_grid(problem, [res.gamma], STEPS, history=True)[:, 0]
    out["SOS"], out["sos_gamma"], out["sos_probes"] = (
        float(sos_hist[-1]),
        res.gamma,
        len(res.probes),
    )
    out["curves"][f"SOS ({res.gamma:.1e}, {len(res.probes)} probes)"] = (sos_hist.numpy(), None)
    # with momentum 0.9: ALIAS(beta) against grid-tuned Signum
    sg = convex.sign_descent_grid(problem, GRID, STEPS, momentum=0.9, history=True).numpy()
    bm = int(sg[-1].argmin())
    out["signum_best_gamma"], out["signum_best_loss"] = GRID[bm], float(sg[-1, bm])
    losses, gammas = run_signify(problem, Alias(), momentum=0.9)
    out["ALIAS(beta) I"] = float(losses[-1])
    out["curves"][f"best Signum ({GRID[bm]:.1e})"] = (sg[:, bm], None)
    out["curves"]["ALIAS(beta=0.9) I"] = (losses, gammas)
    out["seconds"] = time.perf_counter() - t0
    return out


def plot(results: list[dict], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 7.5), sharex=True)
    for col, r in enumerate(results):
        ax_l, ax_g = axes[0, col], axes[1, col]
        for i, (name, (losses, gammas)) in enumerate(r["curves"].items()):
            style = "--" if gammas is None else "-"
            color = f"C{i}"
            ax_l.plot(losses, style, color=color, label=name, lw=1.3)
            if gammas is not None:
                ax_g.plot(np.arange(1, len(gammas) + 1), gammas, color=color, label=name, lw=1.3)
            elif name.startswith(("best", "SOS")):
                g = float(name.split("(")[1].split(",")[0].rstrip(")"))
                ax_g.axhline(g, ls="--", color=color, lw=1.0, label=name)
        ax_l.set_yscale("log")
        ax_l.set_title(f"{r['name']} (n={r['n']}, d={r['d']})")
        ax_l.set_ylabel("loss f(x_t)")
        ax_g.set_yscale("log")
        ax_g.set_xscale("log")
        ax_g.set_ylabel("step gamma_t * lr")
        ax_g.set_xlabel("step t")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: list[dict]) -> str:
    cols = ["ALIAS I", "ALIAS II (f~=0)", "ALIAS-lowmem I", "ALIAS-lowmem II", "SOS"]
    head = "| problem | best constant step (loss) | " + " | ".join(cols)
    head += " | best Signum (loss) | ALIAS(beta) I |"
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for r in results:
        cells = [f"{r[c]:.4f} ({r[c] / r['best_loss']:.3f}x)" for c in cols]
        sig = f"{r['signum_best_gamma']:.1e} ({r['signum_best_loss']:.4f})"
        ab = f"{r['ALIAS(beta) I']:.4f} ({r['ALIAS(beta) I'] / r['signum_best_loss']:.3f}x)"
        lines.append(
            f"| {r['name']} | {r['best_gamma']:.1e} ({r['best_loss']:.4f}) | "
            + " | ".join(cells)
            + f" | {sig} | {ab} |"
        )
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    families = {
        "logistic": [convex.synthetic("logistic"), convex.breast_cancer("logistic")],
        "nllsq": [convex.synthetic("nllsq"), convex.breast_cancer("nllsq")],
    }
    everything = []
    for kind, problems in families.items():
        results = [run_problem(p) for p in problems]
        plot(
            results,
            OUT / f"alias_{kind}.png",
            f"{kind}: sign descent, {STEPS} full-gradient steps; ALIAS untuned",
        )
        everything += results
    print(table(everything))
    slim = [{k: v for k, v in r.items() if k != "curves"} for r in everything]
    (OUT / "alias_convex.json").write_text(json.dumps(slim, indent=1))


if __name__ == "__main__":
    main()
