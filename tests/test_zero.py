"""Signified optimizers under ``torch.distributed.optim.ZeroRedundancyOptimizer`` (ZeRO-1:
each rank steps its own partition of whole tensors, then ZeRO broadcasts them), 3 gloo
ranks, one spawn (tests/_zero_workers.py). References: the same chain in one process over
every parameter on the ranks' mean gradient, and for ALIAS the float64 reimplementation of
tests/alias_reference.py. See docs/stepsize.md ("ZeroRedundancyOptimizer").
"""

from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
import _zero_workers as zw
from _gloo import free_port
from alias_reference import RefAlias

WORLD = zw.WORLD


@pytest.fixture(scope="module")
def ranks():
    # torch._dynamo: imported by the first step (torch.compile's skip marker): once, here.
    # Not signify: the fork server imports its preloads from the working directory, and the
    # ranks must import the signify of this process's path (PYTHONPATH=an/older/copy works)
    preload = ["torch", "torch.distributed.optim", "torch._dynamo"]
    mp.set_forkserver_preload(preload)
    died = None
    with tempfile.TemporaryDirectory() as out:
        try:
            mp.start_processes(
                zw.worker,
                args=(WORLD, free_port(), out),
                nprocs=WORLD,
                join=True,
                start_method="forkserver",
            )
        except Exception as e:  # a rank that died still reports the scenarios it finished
            died = f"{type(e).__name__}: {e}"
        files = [os.path.join(out, f"rank{r}.pt") for r in range(WORLD)]
        results = [torch.load(f, weights_only=False) if os.path.exists(f) else {} for f in files]
    return results, died


def scenario(ranks, name):
    """Every rank's result of one scenario (failing when a rank did not finish it)."""
    results, died = ranks
    out = []
    for r, res in enumerate(results):
        assert name in res, f"rank {r} did not finish scenario {name!r} ({died})"
        got = res[name]
        assert not (isinstance(got, dict) and "error" in got), f"rank {r}: {got['error']}"
        out.append(got)
    return out


def equal(xs, ys):
    return all(torch.equal(a, b) for a, b in zip(xs, ys, strict=True))


def close(xs, ys, rtol=1e-9, atol=0.0):
    for a, b in zip(xs, ys, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["signum", "sign_adamw"])
def test_deterministic_sign_equals_single_process(ranks, name):
    """Signum and sign AdamW (two param groups, one empty on two ranks): bit for bit."""
    ref = zw.reference(name)
    for r in scenario(ranks, "det"):
        assert equal(r[name]["params"], ref["params"])


def test_a_nonfinite_gradient_skips_the_step_on_every_rank(ranks):
    """A NaN in one tensor's gradient (rank 2's partition): every rank skips, as one
    process does; the others do not step their partitions alone."""
    ref = zw.reference("nan")
    assert ref["skipped"] == 1
    for r in scenario(ranks, "nan"):
        assert r["skipped"] == 1
        assert equal(r["params"], ref["params"])


def test_the_clipping_norm_spans_every_partition(ranks):
    """max_grad_norm below the norm: the clipping coefficient of the whole model's norm
    (the ranks' squares are summed in float32: to its rounding)."""
    ref = zw.reference("clip")
    for r in scenario(ranks, "clip"):
        close(r["params"], ref["params"], rtol=1e-6, atol=1e-9)


def test_stochastic_sign_draws_the_noise_of_one_process(ranks):
    """Each tensor's noise is keyed by its place among all parameters: the same seed gives
    the single-process run bit for bit (so tensors on different ranks draw apart)."""
    ref = zw.reference("stochastic")
    for r in scenario(ranks, "stochastic"):
        assert equal(r["params"], ref["params"])


def _ref_alias(name, slots, option):
    """Float64 ALIAS on the ranks' mean gradient (tests/alias_reference.py)."""
    ps = zw.params()
    xs = [p.detach().numpy().copy() for p in ps]
    ref = RefAlias(slots, option=option, f_lower=0.0 if option == 2 else None)
    gammas = []
    for _ in range(zw.STEPS):
        qs = [torch.from_numpy(x).requires_grad_() for x in xs]
        out = [zw.grads_of(qs, r) for r in range(WORLD)]
        f = float(sum(o[0] for o in out) / WORLD)
        gs = [sum(o[1][i] for o in out).numpy() / WORLD for i in range(len(xs))]
        gammas.append(ref.step(xs, gs, f0=f))
    return gammas, [torch.from_numpy(x) for x in xs]


@pytest.mark.parametrize(
    "name, slots, option",
    [
        ("alias", [[0, 1, 2, 3]], 2),  # reduce="auto", scope="global", option II (f_lower=0)
        ("alias_group", [[0, 1], [2, 3]], 2),  # auto, "group" (a group empty on 2 ranks), II
        ("alias_sum", [[0, 1, 2, 3]], 2),  # reduce="sum" given
        ("alias_i", [[0, 1, 2, 3]], 1),  # auto, global, option I
    ],
)
def test_alias_sums_the_partitions_norms(ranks, name, slots, option):
    """The global and per-group estimates need the l1 norms and dots summed over the
    ranks' disjoint partitions: the stepsizes of one process and of the float64 reference,
    the same on every rank. (Averaged instead, option II's step was sqrt(3) times too large;
    option I's ratio of two sums hides the factor once d~ exceeds d_0.)"""
    ref = zw.reference(name)
    want, x = _ref_alias(name, slots, option)
    for r in scenario(ranks, "alias"):
        got = [[float(s) for s in step] for step in r[name]["stepsizes"]]
        np.testing.assert_allclose(got, [[float(s) for s in st] for st in ref["stepsizes"]], 1e-5)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        close(r[name]["params"], ref["params"], rtol=1e-5, atol=1e-7)
        close(r[name]["params"], x, rtol=1e-5, atol=1e-6)


def test_alias_tensor_scope_keeps_each_estimate_on_its_owner(ranks):
    """scope="tensor": ranks hold 1, 1 and 2 slots; each tensor's stepsize is the one of a
    single process (reduce="sum" would mix other tensors' norms: refused)."""
    ref = zw.reference("alias_tensor")
    for r in scenario(ranks, "tensor"):
        for step, want in zip(r["stepsizes"], ref["stepsizes"], strict=True):
            (got,) = step
            torch.testing.assert_close(got, want[0][r["owned"]], rtol=1e-6, atol=0.0)
        close(r["params"], ref["params"], rtol=1e-6, atol=1e-9)
        assert r["sum"].startswith("ValueError") and "reduce='sum'" in r["sum"]
        assert "ZeroRedundancyOptimizer" in r["sum"]


def test_a_rank_with_nothing_to_step_joins_the_collectives(ranks):
    """Two tensors over three ranks: rank 2 owns none. ALIAS with clipping, and Signum with
    the non-finite check (skip and raise), do not hang, and equal one process."""
    results = scenario(ranks, "empty")
    assert [len(r["signum"]["owned"]) for r in results] == [1, 1, 0]
    for name in ("alias_clip", "signum", "signum_raise"):
        ref = zw.reference(name, shapes=zw.SHAPES[:2])
        for r in results:
            close(r[name]["params"], ref["params"], rtol=1e-5, atol=1e-7)
            sizes = [[float(s) for s in st] for st in r[name]["stepsizes"]]
            np.testing.assert_allclose(
                sizes, [[float(s) for s in st] for st in ref["stepsizes"]], rtol=1e-5
            )


def test_checkpoint_through_zero_resumes_bit_for_bit(ranks):
    """consolidate_state_dict(to=0) / state_dict() / load_state_dict into a fresh ZeRO
    built with another seed: the stochastic ALIAS AdamW run continues as if uninterrupted
    (the noise counter and seed, ALIAS's estimates come back from ``"signify_zero"``)."""
    for r in scenario(ranks, "checkpoints"):
        assert "signify_zero" in r["top_keys"]
        assert equal(r["resumed"], r["straight"])


def test_a_single_process_checkpoint_loads_into_zero(ranks):
    """A signified optimizer's own state_dict (its "signify" entry at the top and in each
    group) loaded through ZeRO: its random stream and global estimates continue, and the
    entry does not become a live group key."""
    for r in scenario(ranks, "checkpoints"):
        assert all("signify" not in keys for keys in r["group_keys"])
        close(r["from_single"], r["straight"], rtol=1e-6, atol=1e-9)


def test_what_cannot_run_on_a_partition_is_refused(ranks):
    """vote= (ranks would vote on different tensors), blocks= (a schedule per partition)
    and reduce="mean" (averaging disjoint partitions' norms): a ValueError naming ZeRO."""
    for r in scenario(ranks, "refusals"):
        for name in ("vote", "blocks", "alias_mean"):
            assert r[name].startswith("ValueError"), (name, r[name])
            assert "ZeroRedundancyOptimizer" in r[name], (name, r[name])
