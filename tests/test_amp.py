"""Mixed precision: ``torch.amp.GradScaler`` with fp16 autocast, and bf16 autocast, on CPU.

signify does not set ``_step_supports_amp_scaling`` (that would make GradScaler hand it the
scale instead of unscaling, and makes Lightning refuse gradient clipping), so GradScaler
unscales the gradients itself, checks them for inf/NaN, and does not call ``step()`` when it
finds any: the optimizer never sees that step. The references below replay what GradScaler
does by hand: scale the loss, skip when a gradient is not finite, multiply by the inverse
scale (a power of two: exact).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import signify

STEPS = 6
OVERFLOW_STEP = 3  # the loss is multiplied by 1e30 here: fp16 gradients overflow


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleDict(
        {"layers": nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Linear(8, 1))}
    )


def forward(m: nn.Module, k: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(k)
    x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen)
    with torch.autocast("cpu", dtype=dtype):
        out = m["layers"](x)
    loss = (out.float() - y).square().mean()
    return loss * 1e30 if k == OVERFLOW_STEP else loss


CHAINS = {
    "stochastic_adamw": lambda: signify.signify(torch.optim.AdamW, stochastic=True),
    "alias_blocks": lambda: signify.signify(
        torch.optim.SGD, stochastic=True, stepsize="alias", blocks="cyclic"
    ),
    "signum": lambda: signify.Signum,
}
KW = {"stochastic_adamw": {"lr": 1e-2}, "alias_blocks": {"momentum": 0.9}, "signum": {"lr": 1e-2}}


def build(name: str, m: nn.Module):
    params = m.named_parameters() if name == "alias_blocks" else m.parameters()
    return CHAINS[name]()(params, **KW[name], seed=4)


@pytest.mark.parametrize("explicit_unscale", [True, False])
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_gradscaler_fp16(name, explicit_unscale):
    m, twin = model(), model()
    opt, ref = build(name, m), build(name, twin)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    assert not getattr(opt, "_step_supports_amp_scaling", False)
    skipped_by_scaler = []
    for k in range(STEPS):
        scale = scaler.get_scale()
        opt.zero_grad()
        scaler.scale(forward(m, k, torch.float16)).backward()
        if explicit_unscale:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        skipped_by_scaler.append(scaler.get_scale() < scale)

        ref.zero_grad()
        (forward(twin, k, torch.float16) * scale).backward()
        grads = [p.grad for p in twin.parameters() if p.grad is not None]
        if all(torch.isfinite(g).all() for g in grads):
            for g in grads:
                g.mul_(torch.tensor(1.0 / scale))
            if explicit_unscale:
                torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
            ref.step()
        for p, q in zip(m.parameters(), twin.parameters()):
            assert torch.equal(p, q), k
            assert p.requires_grad == q.requires_grad
    assert skipped_by_scaler[OVERFLOW_STEP] and sum(skipped_by_scaler) >= 1
    # GradScaler skipped the step before the optimizer saw it: signify counted nothing, and
    # its noise counter, block clock and stepsize scalars are the reference's
    assert opt.skipped_steps == 0
    shared, ref_shared = opt.state_dict()["signify"], ref.state_dict()["signify"]
    assert shared["extra"] == ref_shared["extra"]
    for name_, d in shared["shared"].items():
        for key, v in d.items():
            assert torch.equal(v, ref_shared["shared"][name_][key]), (name_, key)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_step_inside_autocast_equals_step_outside(name, dtype):
    """Loops that call ``opt.step()`` inside the autocast region get the same step: nothing
    in a step is autocast to low precision."""
    m, twin = model(), model()
    opt, ref = build(name, m), build(name, twin)
    for k in range(STEPS):
        if k == OVERFLOW_STEP:
            continue
        for mm, oo, inside in ((m, opt, True), (twin, ref, False)):
            oo.zero_grad()
            forward(mm, k, dtype).backward()
            if inside:
                with torch.autocast("cpu", dtype=dtype):
                    oo.step()
            else:
                oo.step()
        for p, q in zip(m.parameters(), twin.parameters()):
            assert torch.equal(p, q)


def test_bf16_autocast_training_learns():
    """bf16 autocast forward, fp32 master parameters, every transform on: the loss falls and
    everything stays finite."""
    m = model()
    opt = signify.signify(torch.optim.AdamW, stochastic=True, stepsize="alias", blocks="cyclic")(
        m.named_parameters(), seed=0
    )
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    y = torch.sin(x.sum(1, keepdim=True))
    losses = []
    for _ in range(90):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = (m["layers"](x).float() - y).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])


def test_fp16_parameters_round_to_nearest():
    """Pure fp16 parameters (no master copy; GradScaler refuses fp16 gradients): the step is
    computed in float32 and rounded to nearest into fp16."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(300).half())
    q = p.detach().float().clone()
    opt = signify.signify(torch.optim.SGD)([p], lr=1e-2, momentum=0.9)
    m = torch.zeros(300)
    for _ in range(4):
        g = torch.randn(300).half()
        p.grad = g.clone()
        opt.step()
        m = 0.9 * m + g.float() if _ else g.float()
        q = (q.half().float() - 1e-2 * torch.sign(m)).half().float()
    assert p.dtype == torch.float16 and torch.equal(p.detach().float(), q)
    assert copy.deepcopy(opt).skipped_steps == 0
