"""SOS: the bisection finds a step close to the grid-tuned one on a deterministic problem,
restores the parameters, respects its budget, and rejects bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from signify import sos
from signify.tasks import convex


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny matmuls: intra-op threads only add contention on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _closure(problem, x):
    def closure():
        f, g = problem.loss_grad(x.detach())
        x.grad = g
        return f

    return closure


def test_sos_finds_a_good_constant_step():
    problem = convex.synthetic("logistic", n=400, d=20, seed=int(torch.randint(0, 1000, ())))
    steps = 1000
    x = problem.x0().requires_grad_(True)
    res = sos.sos([x], _closure(problem, x), steps)
    assert torch.equal(x.detach(), problem.x0())  # restored
    assert res.evaluations == len(res.probes) * (steps + 1)
    lo, hi = res.bracket
    assert (lo == res.gamma and hi / lo < 1.05) or len(res.probes) == 12
    # bisection invariants: accepted probes are <= gamma, rejected ones above it
    for p in res.probes:
        assert (p.gamma <= res.gamma) == p.accepted
        assert p.accepted == (p.gamma**2 <= p.phi)
    grid = [float(10.0**k) for k in np.linspace(-4, 0, 9)]
    losses = convex.sign_descent_grid(problem, [*grid, res.gamma], steps)
    # A reconstruction that errs small. Over 200 seeds of this problem (n=400, d=20): the step
    # found is best/3.40 ... best*1.11 of the best grid step, its loss beats 8 of the 9 grid
    # points every time, and its loss is 1.00x the best grid loss at the median, 1.38x at the
    # 95th percentile, 3.36x at worst (the best grid step is 3.2x larger there and the loss
    # is small: 0.02).
    best = grid[int(losses[:-1].argmin())]
    assert best / 4 <= res.gamma <= 1.5 * best
    assert (losses[-1] < losses[:-1]).sum() >= 7
    # final_run leaves x at the end of a run with the found step
    res2 = sos.sos([x], _closure(problem, x), 100, budget=3, final_run=True)
    want = convex.sign_descent_grid(problem, [res2.gamma], 100)[0]
    assert problem.loss_grad(x.detach())[0].item() == pytest.approx(want.item(), rel=1e-9)
    assert len(res2.probes) == 3


def test_phi_of_a_quadratic():
    """f = L/2 ||x - c||^2 from 0, one step: N = gamma ||g_1||_1 ... checked in closed form."""
    c = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    lam = 2.0
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)

    def closure():
        x.grad = lam * (x.detach() - c)
        return 0.5 * lam * float(((x.detach() - c) ** 2).sum())

    gamma = 0.1
    pr = sos.probe([x], closure, gamma, steps=1)
    g0 = lam * (-c)
    g1 = lam * (gamma * torch.sign(c) - c)
    n = gamma * float((g1 * torch.sign(g0)).sum())
    d = float((g1 - g0).abs().sum()) / gamma
    assert pr.phi == pytest.approx(n / d)
    assert math.isclose(pr.loss, 0.5 * lam * float(((gamma * torch.sign(c) - c) ** 2).sum()))


def test_sos_bad_input():
    x = torch.zeros(2, requires_grad=True)
    cl = lambda: 0.0  # noqa: E731
    with pytest.raises(ValueError, match="steps"):
        sos.sos([x], cl, 0)
    with pytest.raises(ValueError, match="budget"):
        sos.sos([x], cl, 5, budget=1.5)
    with pytest.raises(ValueError, match="gamma_lo"):
        sos.sos([x], cl, 5, gamma_lo=1.0, gamma_hi=0.1)
    with pytest.raises(ValueError, match="rtol"):
        sos.sos([x], cl, 5, rtol=-1)
    with pytest.raises(TypeError, match="params"):
        sos.sos([], cl, 5)
    with pytest.raises(TypeError, match="single tensor"):
        sos.sos(x, cl, 5)
    with pytest.raises(TypeError, match="closure"):
        sos.sos([x], None, 5)


def test_a_closure_that_accumulates_gradients_finds_the_same_step():
    """A torch-style closure that calls backward() without zeroing .grad: SOS clears it."""
    problem = convex.synthetic("logistic", n=200, d=10, seed=int(torch.randint(0, 1000, ())))
    x = problem.x0().requires_grad_(True)
    ref = sos.sos([x], _closure(problem, x), 100, budget=6)

    def accumulating():
        f, g = problem.loss_grad(x.detach())
        x.grad = g if x.grad is None else x.grad + g  # what loss.backward() does
        return f

    got = sos.sos([x], accumulating, 100, budget=6)
    assert got.gamma == ref.gamma and [p.gamma for p in got.probes] == [p.gamma for p in ref.probes]
