"""StoSignSGD's convex non-smooth example (arXiv 2604.15416, Fig. 1; algorithms.md 2.8):
f(x) = |x1 + x2| + 2 |x1 - x2|, exact subgradients, minimum 0 at the origin.

Sign descent cannot converge: whenever x1 != x2 the sign of the subgradient is (s, -s), which
never changes x1 + x2, so f >= |x1 + x2| at the start forever. The unbiased stochastic sign
moves along g / G in expectation, a scaled subgradient step, and converges."""

import torch

import signify

START = (0.7310585786, 2.1415926535)


def f(x):
    return (x[0] + x[1]).abs() + 2 * (x[0] - x[1]).abs()


def subgradient(x):
    s1, s2 = torch.sign(x[0] + x[1]), torch.sign(x[0] - x[1])
    return torch.stack([s1 + 2 * s2, s1 - 2 * s2])


def test_sign_descent_keeps_x1_plus_x2_fixed():
    """From START the iterates reach the line x1 = x2 at step 70 and then repeat exactly with
    period 2 (same floats, same subgradient signs), so 1000 steps check every state a longer
    run would visit."""
    x = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    opt = signify.signify(torch.optim.SGD)([x], lr=0.01)
    total = (x[0] + x[1]).item()
    for _ in range(1000):
        x.grad = subgradient(x.detach())
        opt.step()
        assert abs((x[0] + x[1]).item() - total) < 1e-9
    assert f(x.detach()).item() >= abs(total) - 1e-9


def test_stochastic_sign_converges_with_decreasing_steps():
    x = torch.tensor(START, dtype=torch.float64, requires_grad=True)
    opt = signify.signify(torch.optim.SGD, stochastic=True, seed=int(torch.randint(0, 2**31, ())))(
        [x], lr=1.0
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (t + 1) ** 0.5)
    steps = 5000
    avg = torch.zeros(2, dtype=torch.float64)
    for t in range(steps):
        x.grad = subgradient(x.detach())
        opt.step()
        sched.step()
        avg += (x.detach() - avg) / (t + 1)
    assert f(avg).item() < 0.05
    # the deterministic sign from the same start stays far away
    assert f(torch.tensor(START, dtype=torch.float64)).item() > 2.8
