"""The small deterministic problems of the ALIAS paper's CPU experiments (algorithms.md 3.11),
re-created: logistic regression and non-linear least squares with full gradients.

The paper's data sets (probably LIBSVM) are not shipped by any package, so the data are a
synthetic linear-separator problem and scikit-learn's bundled breast-cancer set, standardised,
with an intercept column. Gradients are written out (no autograd), in float64.

* logistic:  ``f(x) = mean_i log(1 + exp(-y_i a_i^T x))``, ``y in {-1, +1}``
* nllsq:     ``f(x) = mean_i (b_i - sigmoid(a_i^T x))^2``, ``b in {0, 1}``
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor


@dataclasses.dataclass
class Problem:
    """A loss of one parameter vector ``x`` (``d`` entries), from ``x0 = 0``."""

    name: str
    kind: str  # "logistic" or "nllsq"
    a: Tensor  # [n, d] features (with an intercept column)
    y: Tensor  # [n] labels in {-1, +1}

    @property
    def dim(self) -> int:
        return self.a.shape[1]

    def x0(self, columns: int | None = None) -> Tensor:
        shape = (self.dim,) if columns is None else (self.dim, columns)
        return torch.zeros(shape, dtype=self.a.dtype)

    def loss_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Loss and gradient at ``x`` ([d], or [d, k] for k points at once: losses [k])."""
        z = self.a @ x
        y = self.y if x.dim() == 1 else self.y[:, None]
        n = self.a.shape[0]
        if self.kind == "logistic":
            m = -y * z
            loss = torch.nn.functional.softplus(m).mean(0)
            grad = self.a.T @ (-y * torch.sigmoid(m)) / n
        else:
            b = (y + 1) / 2
            s = torch.sigmoid(z)
            r = s - b
            loss = (r * r).mean(0)
            grad = self.a.T @ (2 * r * s * (1 - s)) / n
        return loss, grad


def _standardise(a: Tensor) -> Tensor:
    a = (a - a.mean(0)) / a.std(0).clamp_min(1e-12)
    return torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)


def synthetic(kind: str = "logistic", n: int = 2000, d: int = 50, seed: int = 0) -> Problem:
    """Gaussian features, labels from a random separator with label noise (algorithms.md
    3.11's sanity run: n = 2000, d = 50)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, generator=g, dtype=torch.float64)
    y = torch.sign(a @ w + 0.5 * torch.randn(n, generator=g, dtype=torch.float64))
    y[y == 0] = 1
    return Problem(f"{kind}/synthetic", kind, a, y)


def breast_cancer(kind: str = "logistic") -> Problem:
    """scikit-learn's bundled breast-cancer set (569 x 30), standardised, plus an intercept."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    a = _standardise(torch.tensor(x, dtype=torch.float64))
    return Problem(f"{kind}/breast_cancer", kind, a, torch.tensor(y, dtype=torch.float64) * 2 - 1)


def sign_descent_grid(
    problem: Problem,
    gammas: Sequence[float],
    steps: int,
    momentum: float = 0.0,
    history: bool = False,
) -> Tensor:
    """Constant-step sign descent ``x -= gamma sign(g)`` (with ``momentum``: Signum,
    ``buf = momentum buf + g`` as torch SGD, ``x -= gamma sign(buf)``), one column per step
    size, all run at once. Returns the final losses ``[k]``, or every loss ``[steps + 1, k]``
    with ``history``."""
    g = torch.tensor(list(gammas), dtype=problem.a.dtype)
    x = problem.x0(len(g))
    buf: Tensor | None = None
    losses = []
    for _ in range(steps):
        loss, grad = problem.loss_grad(x)
        losses.append(loss)
        if momentum:
            buf = grad.clone() if buf is None else momentum * buf + grad
            grad = buf
        x -= g * torch.sign(grad)
    losses.append(problem.loss_grad(x)[0])
    return torch.stack(losses) if history else losses[-1]
