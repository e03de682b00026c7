"""A short CPU run: base optimizers against their signified counterparts.

Trains a small MLP on scikit-learn's bundled digits for a few hundred steps and prints the
final training loss and test accuracy of each optimizer.
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits

import signify


def data():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def run(name, make, steps=300, seed=0):
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = data()
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    opt = make(model.parameters())
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(xtr), (128,))
        loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
        full = torch.nn.functional.cross_entropy(model(xtr), ytr).item()
    print(f"{name:28s} train loss {full:.4f}  test acc {acc:.3f}  {time.perf_counter() - t0:.1f}s")


def main():
    run("AdamW (torch)", lambda p: torch.optim.AdamW(p, lr=3e-3))
    run("sign(AdamW) deterministic", lambda p: signify.signify(torch.optim.AdamW)(p, lr=1e-3))
    run(
        "sign(AdamW) stochastic",
        lambda p: signify.signify(torch.optim.AdamW, stochastic=True, seed=0)(p, lr=1e-3),
    )
    run("Signum", lambda p: signify.Signum(p, lr=1e-3))
    run("StoSignSGD", lambda p: signify.StoSignSGD(p, lr=1e-3, seed=0))


if __name__ == "__main__":
    main()
