"""DDP, FSDP2 (``fully_shard``, DTensor parameters) and the vote with blocks, on 2 gloo ranks.

One spawn runs every scenario (tests/_dist_workers.py). References are single-process runs
on the mean of the ranks' gradients, which is what DDP's all-reduce and FSDP's
reduce-scatter hand the optimizer. Each scenario puts a NaN into one rank's gradient at one
step (rank 1's shard only under FSDP): every rank must skip that step.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
import _dist_workers as dw
from _gloo import free_port

WORLD = 2


@pytest.fixture(scope="module")
def ranks():
    mp.set_forkserver_preload(
        ["torch", "torch.distributed", "torch._dynamo", "signify", "_dist_workers"]
    )
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(
            dw.worker,
            args=(WORLD, free_port(), out),
            nprocs=WORLD,
            join=True,
            start_method="forkserver",
        )
        results = [
            torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)
        ]
    for r in results:
        assert "error" not in r, r.get("error")
    return results


def test_ddp_equals_single_process_on_the_mean_gradient(ranks):
    """stochastic sign + ALIAS + AdamW on a DDP model: bit-identical to one process on the
    averaged gradient (every rank draws the same noise; ALIAS's mean of equal sums is
    exact); the NaN one rank saw reached every rank through the all-reduce: all skip."""
    ref = dw.reference("stochastic_alias_adamw")
    for r in ranks:
        for a, b in zip(ref, r["ddp"]["params"]):
            assert torch.equal(a, b)
        assert r["ddp"]["skipped"] == 1


def test_ddp_with_flat_buckets_equals_single_process(ranks):
    """flatten=True on a DDP model (bucket copies and bucket views alike): the steps of the
    per-tensor single-process reference on the mean gradient, bit for bit."""
    ref = dw.reference("sign_adamw")
    for r in ranks:
        for view in (False, True):
            assert r["ddp_flat"][f"flat_{view}"]
            for a, b in zip(ref, r["ddp_flat"][view]):
                assert torch.equal(a, b)


@pytest.mark.parametrize(
    "name", ["sign_adamw", "alias_sgd", "alias_adam_tensor", "clip_sign_adamw", "clip_alias_sgd"]
)
def test_fsdp_deterministic_chains_equal_single_process(ranks, name):
    """Sharded parameters (5 and 3 rows over 2 ranks: uneven shards): each rank steps its
    local shard; ALIAS's norms are summed over the shards (reduce='auto' -> 'sum'). The
    gathered parameters equal the single-process run; the NaN in rank 1's shard made both
    ranks skip the step (the reference skips it too)."""
    ref = dw.reference(name)
    for r in ranks:
        got = r["fsdp"][name]
        for a, b in zip(ref, got["params"]):
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
        assert got["skipped"] == 1
    if name == "sign_adamw":  # no cross-shard reduction: bit-identical
        for a, b in zip(ref, ranks[0]["fsdp"][name]["params"]):
            assert torch.equal(a, b)


def test_clipping_chains_clip(ranks):
    """The clipping chains of the FSDP scenario differ from the same chains unclipped (the
    references), so their equality with the single-process runs covers the sharded norm."""
    for clipped, plain in (("clip_sign_adamw", "sign_adamw"), ("clip_alias_sgd", "alias_sgd")):
        a, b = dw.reference(clipped), dw.reference(plain)
        assert any(not torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["stochastic_adam", "stochastic_alias_adamw"])
def test_fsdp_stochastic_chains_skip_together_and_stay_consistent(ranks, name):
    """The stochastic chains run on shards and skip the bad step on every rank; the gathered
    parameters are one consistent, finite tensor (each rank's full_tensor is the same)."""
    a, b = ranks[0]["fsdp"][name], ranks[1]["fsdp"][name]
    assert a["skipped"] == b["skipped"] == 1
    for x, y in zip(a["params"], b["params"]):
        assert torch.equal(x, y) and torch.isfinite(x).all()
    start = list(dw.net().parameters())
    for x, s in zip(a["params"], start):
        assert not torch.equal(x, s.detach())


def test_fsdp_shards_draw_independent_noise(ranks):
    """Identical rows on both ranks (same parameter values, same gradients): the stochastic
    signs differ between the shards once the noise matters (Adam's first step has
    |a| = sigma, deterministic); identical noise would move the rows identically."""
    m0, m1 = ranks[0]["fsdp_noise"]["moves"], ranks[1]["fsdp_noise"]["moves"]
    assert torch.equal(m0[0], m1[0])
    assert not torch.equal(m0[1], m1[1]) and not torch.equal(m0[2], m1[2])


def test_hsdp_replicas_draw_the_same_noise(ranks):
    """HSDP (2 replicas x 1 shard): replicas hold the same shard and must stay identical."""
    for x, y in zip(ranks[0]["hsdp"]["local"], ranks[1]["hsdp"]["local"]):
        assert torch.equal(x, y)


def test_fsdp_exact_resume(ranks):
    """state_dict at step 2 (DTensor buffers, as torch.optim saves under FSDP2), loaded into a
    fresh sharded model and optimizer: the continued run equals the uninterrupted one."""
    for r in ranks:
        res = r["fsdp_resume"]
        assert "DTensor" in res["state_types"]
        for x, y in zip(res["straight"], res["resumed"]):
            assert torch.equal(x, y)


def test_fsdp_refuses_what_cannot_run_on_shards(ranks):
    got = ranks[0]["refusals"]
    expected = {
        "blocks": "blocks=",
        "vote": "vote=",
        "traced": "traced adapter",
        "alias_mean": "reduce='mean'",
        "mixed": "sharded",
    }
    for case, words in expected.items():
        assert got[case].startswith("ValueError") and words in got[case], (case, got[case])


def test_vote_with_blocks_skips_on_one_rank_and_schedules_agree(ranks):
    """vote + blocks + stochastic sign; rank 1's gradient is NaN at one step: rank 1 skips its
    own state update (counted), the group step still happens (rank 1 abstains), and both
    block schedules advance together, so the parameters stay identical."""
    a, b = ranks[0]["vote_blocks"], ranks[1]["vote_blocks"]
    for x, y in zip(a["params"], b["params"]):
        assert torch.equal(x, y)
    assert a["active"] == b["active"]
    assert len(set(a["active"])) == 3  # cyclic over the 3 layers
    assert (a["skipped"], b["skipped"]) == (0, 1)
