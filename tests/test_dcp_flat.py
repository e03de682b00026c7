"""Resume through torch.distributed.checkpoint with a flattened optimizer state.

``StateDictOptions(flatten_optimizer_state_dict=True)`` (torchtitan's setting) keys every
value by parameter name (``"param_groups.<fqn>.signify"`` for signify's entry), and
``set_optimizer_state_dict`` rebuilds the groups from the keys the live groups have: signify's
entry (seed, noise counter, stepsize scalars, block clock) must still come through. And a
save must not move the run: torch's ``_init_optim_state`` steps an optimizer whose state is
empty, which signify turns into a step that steps nothing (`signify.dcp`).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import signify

MAKERS = {
    "stochastic-alias": lambda m, s: signify.signify(
        torch.optim.AdamW, stochastic=True, stepsize="alias", seed=s
    )(m.named_parameters(), lr=1e-2),
    "stochastic": lambda m, s: signify.signify(torch.optim.Adam, stochastic=True)(
        m.named_parameters(), lr=1e-2, seed=s
    ),
    "blocks": lambda m, s: signify.signify(torch.optim.Adam, blocks="cyclic")(
        m.named_parameters(), lr=1e-2, seed=s
    ),
    "blocks-depth": lambda m, s: signify.signify(torch.optim.Adam, blocks="depth")(
        m.named_parameters(), lr=1e-2, seed=s
    ),
}


def _model() -> torch.nn.Module:
    torch.manual_seed(1)
    layers = [torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)]
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("through_files", [False, True], ids=["in-memory", "dcp-files"])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_resume_through_a_flattened_optimizer_state_is_exact(kind, through_files, tmp_path):
    """Train 3 steps, save flattened (and, torchtitan's way, through dcp.save, then dcp.load
    into a fresh optimizer's own flattened state), load into a fresh model and optimizer of
    another seed, train 5 more: bit for bit the uninterrupted run, no key left in the groups."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    make = MAKERS[kind]
    torch.manual_seed(0)
    xs = torch.randn(8, 16, 8)

    def step(m, o, k):  # type: ignore[no-untyped-def]
        o.zero_grad()
        m(xs[k]).square().mean().backward()
        o.step()

    m, m2 = _model(), _model()
    opt = make(m, 3)
    for k in range(3):
        step(m, opt, k)
    sd = get_optimizer_state_dict(m, opt, options=flat)
    assert "state" not in sd and any(k.endswith(".signify") for k in sd)
    m2.load_state_dict(m.state_dict())
    opt2 = make(m2, 99)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP without a process group
        if through_files:
            dcp.save({"optim": sd}, checkpoint_id=tmp_path)
            loaded = {"optim": get_optimizer_state_dict(m2, opt2, options=flat)}
            dcp.load(loaded, checkpoint_id=tmp_path)
            sd = loaded["optim"]
        else:
            sd = copy.deepcopy(sd)  # the moments are the live tensors
    set_optimizer_state_dict(m2, opt2, sd, options=flat)
    assert all("signify" not in g for g in opt2.param_groups)
    assert opt2.state_dict()["signify"]["seed"] == 3
    for k in range(3, 8):
        step(m, opt, k)
        step(m2, opt2, k)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b), (a - b).abs().max().item()


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
@pytest.mark.parametrize("kind", list(MAKERS))
def test_saving_through_dcp_does_not_move_the_run(kind, flatten):
    """get_optimizer_state_dict steps an optimizer whose state is empty (torch's
    _init_optim_state: zero gradients, lr 0, step()): a fresh one, and a block schedule's
    between any two steps. Saving at step 0 and after 2 steps, then training 5 more, must be
    bit for bit the run that never saved; and a fresh optimizer resumed from the second save
    (its own state made by that init) must be too."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    make = MAKERS[kind]
    torch.manual_seed(0)
    xs = torch.randn(7, 16, 8)

    def step(m, o, k):  # type: ignore[no-untyped-def]
        o.zero_grad()
        m(xs[k]).square().mean().backward()
        o.step()

    ref, saved, resumed = _model(), _model(), _model()
    opt_ref, opt = make(ref, 3), make(saved, 3)
    get_optimizer_state_dict(saved, opt, options=options)  # fresh: step 0
    for k in range(2):
        step(ref, opt_ref, k)
        step(saved, opt, k)
    sd = copy.deepcopy(get_optimizer_state_dict(saved, opt, options=options))
    resumed.load_state_dict(saved.state_dict())
    opt2 = make(resumed, 99)
    set_optimizer_state_dict(resumed, opt2, sd, options=options)
    for k in range(2, 7):
        for m, o in ((ref, opt_ref), (saved, opt), (resumed, opt2)):
            step(m, o, k)
    for name, m in (("saved", saved), ("resumed", resumed)):
        for a, b in zip(ref.parameters(), m.parameters()):
            assert torch.equal(a, b), (name, (a - b).abs().max().item())
