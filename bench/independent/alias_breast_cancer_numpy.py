"""Independent float64 numpy ALIAS (algorithms.md 3.3) on breast cancer: no signify code.

A cross-check of docs/stepsize.md's breast-cancer rows, written from the spec alone:
constant-step sign descent over the 9-point grid (1e-4 ... 1, half decades) against ALIAS
options I and II (f~ = 0), 1000 full-gradient steps from x = 0, the data standardised with
an intercept column, as in `signify.tasks.convex`.

    python bench/independent/alias_breast_cancer_numpy.py    # needs scikit-learn; seconds
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.datasets import load_breast_cancer

Grad = Callable[[np.ndarray], tuple[float, np.ndarray]]


def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return np.hstack([x, np.ones((len(x), 1))]), y.astype(np.float64)


def problems(a: np.ndarray, y: np.ndarray) -> dict[str, Grad]:
    ypm = 2 * y - 1

    def logistic(x: np.ndarray) -> tuple[float, np.ndarray]:
        z = ypm * (a @ x)
        return float(np.mean(np.logaddexp(0, -z))), a.T @ (-ypm / (1 + np.exp(z))) / len(a)

    def nllsq(x: np.ndarray) -> tuple[float, np.ndarray]:
        p = 0.5 * (1 + np.tanh(0.5 * (a @ x)))  # the logistic function, without overflow
        r = y - p
        return float(np.mean(r**2)), a.T @ (-2 * r * p * (1 - p)) / len(a)

    return {"logistic": logistic, "nllsq": nllsq}


def sign_descent(fg: Grad, dim: int, gamma: float, steps: int = 1000) -> float:
    x = np.zeros(dim)
    for _ in range(steps):
        x = x - gamma * np.sign(fg(x)[1])
    return fg(x)[0]


def alias(
    fg: Grad, dim: int, option: str, steps: int = 1000, d_0: float = 1e-6, gamma_0: float = 1e-3
) -> tuple[float, float]:
    """Final loss and last step. eta_t += |g_t - g_{t-1}|_1 / |x_t - x_{t-1}|_inf; option I:
    d_t = max(d_{t-1}, sum_{i<t} gamma_i <g_{i+1}, sign g_i>), gamma_t = sqrt(d_t / eta_t);
    option II: gamma_t = sqrt((f(x_0) - 0) / eta_t); gamma_0 while eta is 0."""
    x = np.zeros(dim)
    f0 = fg(x)[0]
    eta, dsum, d = 0.0, 0.0, d_0
    x_prev = g_prev = s_prev = None
    gamma = gamma_0
    for _ in range(steps):
        g = fg(x)[1]
        if x_prev is not None:
            moved = np.abs(x - x_prev).max()
            if moved > 0:
                eta += np.abs(g - g_prev).sum() / moved
            dsum += gamma * (g @ s_prev)
            d = max(d, dsum)
        if eta > 0:
            gamma = np.sqrt((d if option == "I" else f0) / eta)
        x_prev, g_prev, s_prev = x.copy(), g.copy(), np.sign(g)
        x = x - gamma * s_prev
    return fg(x)[0], float(gamma)


def main() -> None:
    a, y = data()
    grid = [10.0**k for k in np.linspace(-4, 0, 9)]
    for name, fg in problems(a, y).items():
        finals = [sign_descent(fg, a.shape[1], g) for g in grid]
        best = int(np.argmin(finals))
        print(f"{name}: best grid step {grid[best]:.1e}, loss {finals[best]:.4f}")
        for option in ("I", "II"):
            f, last = alias(fg, a.shape[1], option)
            ratio = f / finals[best]
            print(f"  ALIAS {option}: loss {f:.4f} ({ratio:.3f}x best), last step {last:.2e}")


if __name__ == "__main__":
    main()
