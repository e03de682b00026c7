"""The smallest useful signify program: a sign-based Adam on a regression problem.

    python examples/minimal.py            # 300 steps, a second on a CPU
    python examples/minimal.py --steps 20

`signify(torch.optim.Adam, stochastic=True)` is a torch optimizer class, constructed like Adam.
Its step is ``x <- x - lr * sign(m_hat + (sqrt(v_hat) + eps) * u)``, ``u ~ U[-1, 1]``: in
expectation Adam's own direction, clipped to [-1, 1] (StoSignSGD, arXiv 2604.15416).
"""

from __future__ import annotations

import argparse

import torch

import signify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.randn(512, 16)
    y = x @ torch.randn(16, 1) + 0.01 * torch.randn(512, 1)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    SignAdam = signify.signify(torch.optim.Adam, stochastic=True)
    opt = SignAdam(model.parameters(), lr=3e-3, seed=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    print(opt)

    for step in range(args.steps + 1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if step % max(1, args.steps // 5) == 0:
            print(f"step {step:4d}  loss {loss.item():.5f}")
        if step == args.steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    # Checkpoints are ordinary torch state dicts (the noise generator and counters included).
    restored = SignAdam(model.parameters(), lr=3e-3)
    restored.load_state_dict(opt.state_dict())


if __name__ == "__main__":
    main()
