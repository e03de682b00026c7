import torch

import signify


def test_signified_adam_trains_a_linear_model():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    w_true = torch.randn(8, 1)
    y = x @ w_true
    model = torch.nn.Linear(8, 1)
    opt = signify.signify(torch.optim.Adam, stochastic=True, seed=0)(model.parameters(), lr=1e-2)
    first = None
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first
