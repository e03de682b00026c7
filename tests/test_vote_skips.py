"""A majority vote where one rank skips its own step, on 3 gloo ranks (one spawn, CPU).

Under ``vote=`` a rank whose gradient is not finite skips its own step and abstains, while the
vote's parameter write happens on every rank (docs/vote.md). Two things must still agree
across ranks for the parameters to stay identical, and did not before 2026-12-07:

* the stepsize of an oracle after the vote (ALIAS, ALIAS-lowmem, ALIAS-Adam): the bad rank
  kept its scalars while the others committed NaN-poisoned ones (ALIAS then stayed frozen on
  those ranks), and the bad rank stored its NaN gradient as the previous gradient;
* the random stream of bf16 parameters' stochastic rounding: the bad rank's counter did not
  advance, so from then on it rounded its writes with other bits than its peers.

References are float64 simulations written from the algorithm (tests/_vote_skip_workers.py).
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
import _vote_skip_workers as dw
from _gloo import free_port


@pytest.fixture(scope="module")
def ranks():
    mp.set_forkserver_preload(
        ["torch", "torch.distributed", "torch._dynamo", "signify", "_vote_skip_workers"]
    )
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            dw.worker,
            args=(dw.WORLD, free_port(), out),
            nprocs=dw.WORLD,
            join=True,
            start_method="forkserver",
        )
        results = [
            torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False)
            for r in range(dw.WORLD)
        ]
    for r in results:
        assert "error" not in r, r.get("error")
    return results


def _identical(ranks, name):
    first = ranks[0][name]
    for r in ranks[1:]:
        for a, b in zip(first["params"], r[name]["params"]):
            assert torch.equal(a, b), f"{name}: the ranks' parameters differ"
        assert r[name]["gammas"] == first["gammas"], f"{name}: the ranks' stepsizes differ"
    for p in first["params"]:
        assert torch.isfinite(p).all()


def test_vote_alias_with_a_skipping_rank_equals_the_simulation(ranks):
    """signSGD-MV + ALIAS, rank 1's gradient NaN at step 2: every rank takes the same
    stepsize and ends with the same parameters, those of the float64 simulation (in which
    no rank commits the poisoned step's estimate and the bad rank keeps its previous
    gradient); only the bad rank counts a skipped step."""
    _identical(ranks, "alias")
    want_x, want_gamma = dw.simulate_vote_alias()
    got = ranks[0]["alias"]
    torch.testing.assert_close(
        torch.tensor(got["gammas"], dtype=torch.float64),
        torch.tensor(want_gamma, dtype=torch.float64),
        rtol=1e-5,
        atol=0,
    )
    for a, b in zip(got["params"], want_x):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    # the estimate kept moving after the bad step (it did not freeze on NaN)
    g = [x[0] for x in got["gammas"]]
    assert g[dw.BAD_STEP] == g[dw.BAD_STEP - 1]
    assert len({*g[dw.BAD_STEP + 1 :]}) > 1 and g[-1] != g[dw.BAD_STEP]
    skipped = [r["alias"]["skipped"] for r in ranks]
    assert skipped == [int(i == dw.BAD_RANK) for i in range(dw.WORLD)]


@pytest.mark.parametrize("name", ["alias_momentum", "alias_lowmem", "alias_adam"])
def test_vote_stepsizes_with_a_skipping_rank_stay_identical(ranks, name):
    """The other oracles after a vote: the same stepsize on every rank, bit-identical
    parameters, and an estimate that still changes after the bad step."""
    _identical(ranks, name)
    g = ranks[0][name]["gammas"]
    if name != "alias_adam":  # its d grows only on long agreement: it stays at d_0 here
        assert g[-1] != g[dw.BAD_STEP]


@pytest.mark.parametrize("name", ["bf16", "bf16_stochastic"])
def test_vote_bf16_parameters_with_a_skipping_rank_stay_identical(ranks, name):
    """bf16 parameters are written with stochastic rounding from the step's random keys,
    which must stay the same on every rank after one rank skipped its own step. The
    deterministic sign stays within one bf16 rounding per step of the float64 Signum-MV."""
    _identical(ranks, name)
    if name == "bf16":
        for a, b in zip(ranks[0][name]["params"], dw.simulate_vote_sign()):
            ulp = torch.finfo(torch.bfloat16).eps * b.abs().clamp_min(1e-2)
            assert ((a.double() - b).abs() <= dw.STEPS * ulp).all()
