"""Majority vote (signify.transforms.vote, signify.bitvote, signify.distributed).

The distributed checks share one spawn of 7 gloo ranks (tests/_vote_workers.py); each rank's
final parameters are compared bit for bit with a single-process simulation of the vote.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import signify
from signify import bitvote
from signify.transforms.vote import MajorityVote, make_vote

sys.path.insert(0, os.path.dirname(__file__))
import _vote_workers as vw
from _gloo import free_port


def start(fn, args, nprocs):
    """torch.multiprocessing with a fork server that imported torch once: 7 ranks start in
    seconds instead of each importing torch again (about 40 s on 2 cores)."""
    mp.set_forkserver_preload(
        ["torch", "torch.distributed", "torch._dynamo", "signify", "_vote_workers"]
    )
    mp.start_processes(fn, args=args, nprocs=nprocs, join=True, start_method="forkserver")


@pytest.fixture(scope="module")
def ranks():
    """Per-rank results of every distributed scenario (one start of 7 processes)."""
    world = 7
    with tempfile.TemporaryDirectory() as out:
        start(vw.worker, (world, free_port(), out), world)
        yield [
            torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(world)
        ]


# ------------------------------------------------------------------------- wire format
@pytest.mark.parametrize("bits", [1, 2])
@pytest.mark.parametrize("n", [1, 7, 8, 13, 64])
def test_pack_roundtrip(bits, n):
    codes = torch.randint(0, 2 if bits == 1 else 3, (n,))
    data = bitvote.pack(codes, bits)
    assert data.dtype == torch.uint8 and data.numel() == bitvote.coded_bytes(n, bits)
    assert torch.equal(bitvote.unpack_codes(data, bits)[:n].long(), codes)
    # bit k of byte j holds coordinate 8j + k (1 bit), bits 2k, 2k+1 coordinate 4j + k (2 bits)
    j, k = (n - 1) // (8 // bits), (n - 1) % (8 // bits)
    assert (int(data[j]) >> (bits * k)) & ((1 << bits) - 1) == int(codes[-1])


@pytest.mark.parametrize("world", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("bits_in", [1, 2])
def test_tally_is_sign_of_sum(world, bits_in):
    n = 8 * 6
    votes = (
        torch.randint(-1, 2, (world, n))
        if bits_in == 2
        else torch.randint(0, 2, (world, n)) * 2 - 1
    )
    codes = (
        votes.clamp(min=0) if bits_in == 1 else (votes == 1).long() | ((votes == -1).long() << 1)
    )
    rows = torch.stack([bitvote.pack(c, bits_in) for c in codes])
    bits_out = bitvote.result_bits(bits_in, world)
    out = bitvote.tally(rows, bits_in, bits_out)
    assert out.numel() == rows.shape[1] * bits_out // bits_in
    assert torch.equal(bitvote.decode(out, bits_out, n), torch.sign(votes.sum(0)).float())


def test_majority_examples():
    # algorithms.md §7.5: (+,+,-) -> +; (+,-) -> 0 (a tie).
    for votes, expected in (([1, 1, -1], 1.0), ([1, -1], 0.0)):
        rows = torch.stack([bitvote.pack(torch.tensor([int(v > 0)]), 1) for v in votes])
        bits_out = bitvote.result_bits(1, len(votes))
        assert bitvote.decode(bitvote.tally(rows, 1, bits_out), bits_out, 1).item() == expected


def test_auto_layout_rule():
    assert bitvote.choose_layout("auto", 2, 1) == "allgather"  # GPUs: fewer bytes
    assert bitvote.choose_layout("auto", 2, 2) == "allgather"
    for w in (3, 4, 8, 64):
        assert bitvote.choose_layout("auto", w, 1) == "alltoall"
    for w in (2, 3):  # CPUs: the local count dominates
        assert bitvote.choose_layout("auto", w, 1, "cpu") == "alltoall"
    assert bitvote.choose_layout("allgather", 5, 1, "cpu") == "allgather"
    # all-to-all sends about 2 (W - 1) / W * N / 8 bytes for N coordinates (odd W, 1 bit)
    n = 8 * 7 * 1000
    assert bitvote.bytes_sent(n // 8, 7, "alltoall", 1) == 2 * 6 * n // 8 // 7


def test_compiled_wire_functions_match_eager():
    """The compiled forms (one graph, dynamic sizes) of packing with dither bits, counting and
    unpacking give the eager bytes: the GPU runs them compiled, the CPU tests eagerly."""

    def pipeline(d, g, e, parity):
        rows = torch.stack(
            [
                bitvote.vote_bytes(d, g, None, 1, parity),
                bitvote.vote_bytes(e, g, None, 1, parity + 1),
            ]
        )
        return bitvote.decode(bitvote.tally(rows, 1, 2), 2, d.numel())

    compiled = torch.compile(pipeline, dynamic=True, fullgraph=True)
    d, e, g = torch.sign(torch.randn(21)), torch.sign(torch.randn(21)), torch.randn(21)
    d[:4] = 0.0
    d[5:9], e[5:9], g[5:9] = 1.0, 1.0, float("nan")  # both abstain: the dither bits cancel
    parity = torch.tensor(1)
    expected = pipeline(d, g, e, parity)
    assert torch.equal(expected[5:9], torch.zeros(4))
    # (a compiler folding a finiteness test `g * 0 == 0` to True once made these +1)
    assert torch.equal(compiled(d, g, e, parity), expected)


# ------------------------------------------------------------------------- validation
def test_vote_spec_validation():
    assert isinstance(make_vote("majority"), MajorityVote)
    with pytest.raises(ValueError, match="vote"):
        make_vote("minority")
    with pytest.raises(TypeError, match="vote"):
        make_vote(3)
    with pytest.raises(ValueError, match="zeros"):
        MajorityVote(zeros="random")
    with pytest.raises(ValueError, match="layout"):
        MajorityVote(layout="ring")
    with pytest.raises(TypeError, match="group"):
        MajorityVote("world")
    with pytest.raises(ValueError, match="vote"):
        signify.signify(torch.optim.SGD, vote="yes")
    vote = MajorityVote(zeros="exact")
    copy = make_vote(vote)
    assert copy is not vote and copy.zeros_mode == "exact"


@pytest.mark.skipif(dist.is_initialized(), reason="needs no process group")
def test_vote_needs_an_initialised_process_group():
    cls = signify.signify(torch.optim.SGD, vote="majority")
    with pytest.raises(RuntimeError, match="init_process_group"):
        cls([torch.nn.Parameter(torch.randn(3))], lr=0.1)


def test_single_rank_compiled_matches_eager_and_sign():
    """W = 1 in this process: the packed pass (eager and compiled) is plain signSGD."""
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
        try:
            results = []
            init = [torch.randn(13)]
            grads = [torch.randn(13)]
            grads[0][4] = 0.0
            for compile_ in (False, True):
                ps = [torch.nn.Parameter(t.clone()) for t in init]
                opt = signify.signify(
                    torch.optim.SGD, vote="majority", compile=compile_, compile_chunk=1
                )(ps, lr=0.1)
                for p, g in zip(ps, grads):
                    p.grad = g.clone()
                opt.step()
                results.append([p.detach().clone() for p in ps])
            for eager, compiled, x0, g in zip(*results, init, grads):
                assert torch.equal(eager, compiled)
                assert torch.equal(eager, x0 - torch.tensor(0.1) * torch.sign(g))
        finally:
            dist.destroy_process_group()


# ------------------------------------------------------------------------- distributed
@pytest.mark.parametrize("world", [2, 3, 4])
def test_vote_equals_simulation_bit_for_bit(ranks, world):
    for zeros, layout, nonfinite in vw.CONFIGS:
        lay = vw.other_layout(world) if layout == "other" else layout
        expected = vw.simulate(world, zeros, nonfinite, seed=world)
        for r in range(world):
            got = ranks[r][("exact", world, zeros, lay, nonfinite)]["params"]
            for g, e in zip(got, expected):
                assert torch.equal(g, e), (world, zeros, lay, r)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_vote_with_clipping_equals_simulation(ranks, world):
    """max_grad_norm under a vote: each rank clips its own gradients before its momentum and
    sign (the simulation clips per worker); the bad step still skips on the bad rank."""
    expected = vw.simulate(world, "exact", "skip", seed=world, max_grad_norm=vw.CLIP)
    for r in range(world):
        for g, e in zip(ranks[r][("clip", world)]["params"], expected):
            assert torch.equal(g, e), (world, r)


def test_vote_clipping_scenario_is_sensitive():
    """The clipping scenario's simulations differ from unclipped ones (for 2 and 4 workers;
    with 3 the vote happens to absorb it), so the comparison above covers the option."""
    differ = []
    for world in (2, 3, 4):
        clipped = vw.simulate(world, "exact", "skip", seed=world, max_grad_norm=vw.CLIP)
        plain = vw.simulate(world, "exact", "skip", seed=world)
        differ.append(any(not torch.equal(a, b) for a, b in zip(clipped, plain)))
    assert differ[0] and differ[2], differ


@pytest.mark.parametrize("world", [2, 3, 4])
def test_bytes_match_layout_formula(ranks, world):
    for zeros, layout, nonfinite in vw.CONFIGS:
        lay = vw.other_layout(world) if layout == "other" else layout
        stats = ranks[0][("exact", world, zeros, lay, nonfinite)]["stats"]
        chosen = lay if lay != "auto" else "alltoall"  # auto on a CPU
        for step, s in enumerate(stats, start=1):
            sizes = [
                sz for i, sz in enumerate(vw.SIZES) if not (step == vw.INACTIVE_STEP and i == 2)
            ]
            assert s["layout"] == chosen
            assert s["bytes_sent"] == vw.expected_bytes(world, zeros, chosen, sizes)
            assert s["coords"] == sum(math.prod(sz) for sz in sizes)
        assert stats[-1]["total_bytes_sent"] == sum(s["bytes_sent"] for s in stats)


def sent_votes(send: torch.Tensor) -> torch.Tensor:
    """The 1-bit votes of every real coordinate of vw.SIZES in a send buffer (no padding)."""
    out, at = [], 0
    for size in vw.SIZES:
        n = math.prod(size)
        out.append(bitvote.decode(send[at : at + bitvote.coded_bytes(n, 1)], 1, n))
        at += bitvote.coded_bytes(n, 1)
    return torch.cat(out)


def test_compiled_vote_equals_eager_on_every_rank(ranks):
    """compile=True on 2 ranks: rank 1's graphs fold its rank key in (a rank traced as a
    symbolic int once failed to compile there, and rank 0 then waited in the collective)."""
    for r in (0, 1):
        eager, compiled = ranks[r]["compiled"][False], ranks[r]["compiled"][True]
        for e, c in zip(eager, compiled):
            assert torch.equal(e, c)
    for a, b in zip(ranks[0]["compiled"][True], ranks[1]["compiled"][True]):
        assert torch.equal(a, b)
    assert not torch.equal(ranks[0]["compiled"][True][0], vw.initial(5)[0])


@pytest.mark.parametrize("run", ["stochastic", "stochastic_bf16"])
def test_stochastic_noise_is_independent_per_rank(ranks, run):
    """The sign noise differs between ranks; the parameters do not, bf16 ones included
    (their stochastic rounding draws the same bits on every rank)."""
    votes = [[sent_votes(s) for s in ranks[r][run]["sends"][:2]] for r in range(3)]
    # step 1 is deterministic (|m| = G); then identical gradients give different signs
    assert torch.equal(votes[0][0], votes[1][0]) and torch.equal(votes[0][0], votes[2][0])
    assert not torch.equal(votes[0][1], votes[1][1])
    assert not torch.equal(votes[1][1], votes[2][1])
    after = [ranks[r][run]["params"] for r in range(3)]
    for p0, p1, p2 in zip(*after):
        assert torch.equal(p0, p1) and torch.equal(p0, p2)
    assert any(not torch.equal(p, t.to(p.dtype)) for p, t in zip(after[0], vw.initial(7)))
    want = torch.bfloat16 if run.endswith("bf16") else torch.float32
    assert ranks[0][run]["params"][0].dtype == want


def test_ranks_agree_on_the_seed(ranks):
    """Random block picks and bf16 rounding follow the seed: the group takes rank 0's, with
    a warning (on rank 0) when the ranks were given different ones."""
    assert ranks[0]["seed"]["unseeded"] == ranks[1]["seed"]["unseeded"]
    assert ranks[0]["seed"]["per_rank"] == ranks[1]["seed"]["per_rank"] == 7
    assert any("different seed=" in w for w in ranks[0]["seed"]["warnings"])
    assert not ranks[1]["seed"]["warnings"]
    for r in range(2):  # seeds that differ after a load fail the next step's check
        assert "disagree" in ranks[r]["seed"]["reload"]
        assert f"with seed {100 + r}" in ranks[r]["seed"]["reload"]


def test_mismatched_shapes_raise_on_every_rank(ranks):
    for r in range(2):
        assert len(ranks[r]["mismatch"]) == 2
        for msg in ranks[r]["mismatch"]:
            assert msg.startswith("ValueError unchanged=True"), msg
            assert "disagree" in msg and "shape" in msg


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_hook_gives_voted_signs(ranks, world):
    for r in range(world):
        assert all(ranks[r][("hook", world)]["agree"])
        for p, q in zip(ranks[0][("hook", world)]["params"], ranks[r][("hook", world)]["params"]):
            assert torch.equal(p, q)
    stats = ranks[0][("hook", world)]["stats"]
    numel = 5 * 7 + 7 + 7 * 3 + 3
    zeros = "exact" if world == 4 else "dither"
    layout = "alltoall"  # auto on a CPU
    assert sum(stats["bytes_sent"].values()) == vw.expected_bytes(world, zeros, layout, [(numel,)])


def test_robust_to_three_of_seven_inverted(ranks):
    losses = [ranks[r]["robust"] for r in range(7)]
    assert all(x == losses[0] for x in losses)  # identical parameters on every rank
    first, honest = losses[0]["honest"]
    _, adversarial = losses[0]["adversarial"]
    assert honest < 0.1 * first
    assert adversarial <= 1.10 * honest, (honest, adversarial)


def test_a_missing_rank_times_out_instead_of_hanging(ranks):
    msg = ranks[0]["timeout"]
    print(msg)
    assert not msg.startswith("no error"), msg
    elapsed = float(msg.split(" after ")[1].split("s:")[0])
    assert vw.TIMEOUT - 0.5 <= elapsed < 10 * vw.TIMEOUT, msg


def test_bench_cpu_smoke(tmp_path):
    """bench/vote.py --cpu: 2 gloo ranks, every case runs and the JSON holds the table."""
    import json

    from bench import vote as bench_vote

    bench_vote.main(["--cpu", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "vote_w2_cpu.json").read_text())
    cases = {r["case"]: r for r in payload["rows"]}
    assert payload["world_size"] == 2
    for name in ("all_reduce fp32", "signSGD-MV step [alltoall]", "gpt vote_signum"):
        assert name in cases
    mv = cases["signSGD-MV step [alltoall]"]
    assert mv["auto"] and 0 < mv["MB_sent"] < cases["all_reduce fp32"]["MB_sent"] / 16
    assert all(math.isfinite(cases[f"gpt {n}"]["train_loss"]) for n in ("ddp_adamw", "vote_signum"))
