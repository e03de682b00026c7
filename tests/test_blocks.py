"""Block-coordinate updates (`signify.transforms.Blocks`, ``signify(..., blocks=...)``).

The schedule is checked against a float64 re-implementation written here from the paper's
rule (algorithms.md Sec. 4.3) and its published numbers (Sec. 7.4); the updates against a
hand-written block-coordinate sign descent driven by that reference schedule.
"""

from __future__ import annotations

import copy
import gc
import io
import itertools
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import signify
from signify.tasks.gpt import GPT, GPTConfig
from signify.transforms import Blocks
from signify.transforms.block_rules import depth_schedule, depth_shares

#: a GPT with numbered layers ``transformer.h.{i}``, small enough for many eager steps
SMALL = GPTConfig(vocab_size=64, block_size=16, n_layer=4, n_head=2, n_embd=32)


# ---------------------------------------------------------------- independent reference
def reference_depth_schedule(n: int, c: float, steps: int) -> list[int]:
    """ABSignSGD's clock, 1-indexed, float64, numpy argmin (ties to the smallest index)."""
    i = np.arange(1, n + 1, dtype=np.float64)
    tau = n + c * (n - i + 1)
    ready = tau.copy()
    picks = []
    for _ in range(steps):
        j = int(np.argmin(ready))
        picks.append(j + 1)
        ready[j] += tau[j]
    return picks


def test_depth_schedule_matches_reference_and_published_numbers():
    picks = [i + 1 for i in depth_schedule(36, 10.0, 40_000)]
    assert picks == reference_depth_schedule(36, 10.0, 40_000)
    assert picks[:9] == [36, 35, 34, 33, 32, 36, 31, 30, 35]
    # algorithms.md's shares (1.1% / 9.6%) are those of a 10k-step run; the long-run
    # shares 1/tau_i / sum_j 1/tau_j are 1.11% / 9.54%
    first = np.bincount(picks[:10_000], minlength=37)[1:] / 10_000
    assert round(100 * first[0], 1) == 1.1 and round(100 * first[-1], 1) == 9.6
    shares = np.bincount(picks, minlength=37)[1:] / len(picks)
    assert np.allclose(shares, depth_shares(36, 10.0), atol=2e-4)
    where = np.flatnonzero(np.array(picks[:10_000]) == 1)
    assert np.diff(where).max() == 97  # the largest gap of the shallowest block in 10k steps
    # c = 0 is cyclic order, shallow to deep
    assert [i + 1 for i in depth_schedule(36, 0.0, 100)] == [k % 36 + 1 for k in range(100)]
    # a non-integer bias, fresh sizes
    n, c = int(torch.randint(3, 12, ())), float(torch.rand(()) * 5)
    assert [i + 1 for i in depth_schedule(n, c, 500)] == reference_depth_schedule(n, c, 500)


class Stack(nn.Module):
    """``layers.{i}`` plus an input embedding and a head outside the layers."""

    def __init__(self, widths=(5, 7, 6, 4), dtype=torch.float32):
        super().__init__()
        self.embed = nn.Linear(3, widths[0], dtype=dtype)
        self.layers = nn.ModuleList(
            nn.Linear(a, b, dtype=dtype) for a, b in itertools.pairwise(widths)
        )
        self.head = nn.Linear(widths[-1], 1, bias=False, dtype=dtype)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).square().mean()


def _step(model, opt, x):
    opt.zero_grad()
    loss = model(x, x)[1] if isinstance(model, GPT) else model(x)
    if loss.requires_grad:  # not when the active block is unused by the forward pass
        loss.backward()
    opt.step()
    return loss


def _same(a, b):
    """Equality of (nested) lists of tensors by identity."""
    return [[id(p) for p in x] for x in a] == [[id(p) for p in x] for x in b]


def _blocks(opt) -> Blocks:
    return next(t for t in opt.chain if isinstance(t, Blocks))


# ---------------------------------------------------------------- updates vs a reference
@pytest.mark.parametrize("inactive", ["drop", "keep"])
def test_updates_match_hand_written_block_sign_descent(inactive):
    """Deterministic sign(Adam) on the active block only: ``m`` restarts at every activation
    under "drop", persists under "keep" (switch_every=2 makes the two differ)."""
    model = Stack(dtype=torch.float64)
    ref = copy.deepcopy(model)
    lr, b1, every = 1e-2, 0.9, 2
    opt = signify.signify(
        torch.optim.Adam, blocks=Blocks("depth", switch_every=every, inactive=inactive)
    )(model.named_parameters(), lr=lr, betas=(b1, 0.999))
    layers = [list(layer.parameters()) for layer in ref.layers]
    sched = reference_depth_schedule(len(layers), 10.0, 20)
    m = {p: torch.zeros_like(p) for p in ref.parameters()}
    steps = 12
    for k in range(steps):
        x = torch.randn(8, 3, dtype=torch.float64)
        _step(model, opt, x)
        block = sched[k // every] - 1
        ref.zero_grad()
        ref(x).backward()
        with torch.no_grad():
            for p in layers[block]:
                if inactive == "drop" and k % every == 0:
                    m[p].zero_()
                m[p].mul_(b1).add_((1 - b1) * p.grad)
                p.sub_(lr * torch.sign(m[p]))
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    assert not torch.equal(model.embed.weight, Stack(dtype=torch.float64).embed.weight)


# ---------------------------------------------------------------- truncation
def test_requires_grad_and_grads_follow_the_schedule_on_a_gpt():
    model = GPT(SMALL)
    model.transformer["h"][1].requires_grad_(False)  # frozen before the optimizer is built
    opt = signify.signify(torch.optim.Adam, stochastic=True, blocks="depth", seed=1)(
        model.named_parameters(), lr=1e-3
    )
    blocks = _blocks(opt)
    assert blocks.labels == [f"transformer.h.{i}" for i in range(4)]
    outputs_need_grad = {}
    for i, layer in enumerate(model.transformer["h"]):
        layer.register_forward_hook(
            lambda mod, inp, out, i=i: outputs_need_grad.__setitem__(i, out.requires_grad)
        )
    x = torch.randint(0, 64, (2, 16))
    seen = set()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for k, want in enumerate(reference_depth_schedule(4, 10.0, 14)):
        active = want - 1
        assert blocks.active == (active,)
        prefix = f"transformer.h.{active}."
        for n, p in model.named_parameters():
            assert p.requires_grad == n.startswith(prefix), (k, n)
        opt.zero_grad()
        model(x, x)[1].backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == n.startswith(prefix), (k, n)
        # autograd stops at the active layer: nothing below it tracks gradients
        assert [outputs_need_grad[i] for i in range(4)] == [i >= active for i in range(4)]
        opt.step()
        seen.add(active)
    assert seen == {0, 1, 2, 3}
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == n.startswith("transformer.h."), n  # embeddings/head: never trained
    assert all(p.grad is None for p in model.transformer["h"][3].parameters())


@pytest.mark.parametrize("outside", ["always", "own"])
def test_outside_policies(outside):
    model = Stack()
    opt = signify.signify(torch.optim.SGD, blocks=Blocks("cyclic", outside=outside))(
        model.named_parameters(), lr=1e-2
    )
    blocks = _blocks(opt)
    outer = {*model.embed.parameters(), *model.head.parameters()}
    if outside == "always":
        assert blocks.num_blocks == 3
        for _ in range(4):
            assert all(p.requires_grad for p in outer)
            before = model.embed.weight.detach().clone()
            _step(model, opt, torch.randn(4, 3))
            assert not torch.equal(model.embed.weight, before)  # stepped every time
    else:
        assert blocks.num_blocks == 5
        assert blocks.labels[0] == "(input side)" and blocks.labels[-1] == "(output side)"
        assert _same(blocks.blocks[::4], [list(model.embed.parameters()), [model.head.weight]])
        assert blocks.active == (0,) and model.embed.weight.requires_grad
        assert not model.head.weight.requires_grad


def test_a_block_without_gradients_does_not_stall_the_clock():
    model = Stack()
    unused = nn.Linear(2, 2)
    params = [
        *model.named_parameters(),
        *(("layers.9." + n, p) for n, p in unused.named_parameters()),
    ]
    opt = signify.signify(torch.optim.SGD, blocks="cyclic")(params, lr=1e-2)
    picks = []
    for _ in range(8):
        picks.append(_blocks(opt).active[0])
        _step(model, opt, torch.randn(4, 3))
    assert picks == [0, 1, 2, 3, 0, 1, 2, 3]


# ---------------------------------------------------------------- partitions and rules
def test_partitions_from_names_prefixes_callables_and_lists():
    from signify.transforms.block_partition import resolve

    ps = [torch.zeros(1) for _ in range(7)]
    names = [
        "enc.block.1.w",
        "enc.block.0.w",
        "enc.block.0.experts.3.w",
        "dec.block.0.w",
        "emb.w",
        "enc.block.10.w",
        "norm.w",
    ]
    part = resolve(ps, names, None)
    assert part.labels == ["enc.block.0", "enc.block.1", "enc.block.10", "dec.block.0"]
    assert _same(part.blocks, [[ps[1], ps[2]], [ps[0]], [ps[5]], [ps[3]]])
    assert _same([part.outside_in, part.outside_out], [[], [ps[4], ps[6]]])
    part = resolve(ps, names, ["enc.block.1", "enc.block.0.experts", "enc.block"])
    assert _same(part.blocks, [[ps[0]], [ps[2]], [ps[1], ps[5]]])
    part = resolve(ps, names, lambda n, p: None if "block" not in n else -len(n))
    assert _same(part.blocks[:1], [[ps[2]]])
    part = resolve(ps, None, [[ps[5]], [ps[3], ps[1]]])
    assert _same(part.blocks, [[ps[5]], [ps[1], ps[3]]])
    assert _same([part.outside_in, part.outside_out], [[ps[0]], [ps[2], ps[4], ps[6]]])
    assert resolve(ps[:2], ["0.weight", "2.weight"], None).labels == ["0", "2"]
    # a ParameterList: each tensor is a layer of its own
    part = resolve(ps[:3], ["ws.1", "ws.0", "head.w"], None)
    assert part.labels == ["ws.0", "ws.1"] and _same(part.blocks, [[ps[1]], [ps[0]]])


def test_random_rules_are_seeded_and_callable_rules_are_used():
    def picks(rule, seed, steps=60):
        model = Stack(widths=(4,) * 9)
        opt = signify.signify(torch.optim.SGD, blocks=rule, seed=seed)(
            model.named_parameters(), lr=1e-3
        )
        out = []
        for _ in range(steps):
            out.append(_blocks(opt).active[0])
            opt.step()  # no gradients: the clock still advances
        return out

    a, b, c = picks("random", 5), picks("random", 5), picks("random", 6)
    assert a == b and a != c and len(set(a)) == 8
    s = picks("shuffle", 3, 64)
    assert all(sorted(s[i : i + 8]) == list(range(8)) for i in range(0, 64, 8))
    assert s[:8] != s[8:16]
    assert picks(Blocks(lambda k, n: (3 * k) % n), 0, 5) == [0, 3, 6, 1, 4]


# ---------------------------------------------------------------- state
def test_drop_frees_state_of_inactive_blocks():
    model = GPT(SMALL)
    opt = signify.signify(
        torch.optim.Adam, stochastic=True, blocks=Blocks("cyclic", switch_every=2)
    )(model.named_parameters(), lr=1e-3)
    x = torch.randint(0, 64, (2, 16))
    layer0 = list(model.transformer["h"][0].parameters())
    _step(model, opt, x)  # block 0, held for a second step
    assert list(opt.state) == layer0
    ref = weakref.ref(opt.state[layer0[2]]["exp_avg"])
    _step(model, opt, x)  # block 0 again, then the switch to block 1 drops its state
    gc.collect()
    assert len(opt.state) == 0
    assert ref() is None  # nothing (the executor's cached plan included) keeps it alive
    for _ in range(5):
        _step(model, opt, x)
        assert set(opt.state) <= set(_blocks(opt).active_params())


def test_keep_and_offload_hold_state_of_visited_blocks():
    model = Stack()
    twin = copy.deepcopy(model)
    keep = signify.signify(torch.optim.Adam, blocks=Blocks("cyclic", inactive="keep"))
    offload = signify.signify(torch.optim.Adam, blocks=Blocks("cyclic", inactive="offload"))
    opt, opt_off = (
        keep(model.named_parameters(), lr=1e-2),
        offload(twin.named_parameters(), lr=1e-2),
    )
    for _ in range(5):
        x = torch.randn(4, 3)
        _step(model, opt, x)
        _step(twin, opt_off, x)
    for o in (opt, opt_off):
        weights = o.param_groups[0]["params"][2:8:2]  # layers.{0,1,2}.weight
        steps = [int(o.state[w]["step"]) for w in weights]
        assert steps == [2, 2, 1]  # blocks 0, 1 active twice, block 2 once: counts carried
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert not opt.state[model.embed.weight]  # never trained: no state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_offload_moves_inactive_state_to_cpu_on_cuda():  # pragma: no cover - GPU only
    model = Stack().cuda()
    opt = signify.signify(torch.optim.Adam, blocks=Blocks("cyclic", inactive="offload"))(
        model.named_parameters(), lr=1e-2
    )
    for _ in range(4):
        _step(model, opt, torch.randn(4, 3, device="cuda"))
    active = set(_blocks(opt).active_params())
    for p, st in opt.state.items():
        assert st["exp_avg"].device.type == ("cuda" if p in active else "cpu")


# ---------------------------------------------------------------- resume
@pytest.mark.parametrize("rule", ["depth", "random"])
def test_resume_is_bit_identical(rule):
    torch.manual_seed(0)
    model = GPT(SMALL)
    data = [torch.randint(0, 64, (2, 16)) for _ in range(10)]
    spec = Blocks(rule, switch_every=3)
    make = signify.signify(torch.optim.Adam, stochastic=True, blocks=spec, seed=11)
    a = copy.deepcopy(model)
    opt_a = make(a.named_parameters(), lr=1e-2)
    for x in data:
        opt_a.zero_grad()
        a(x, x)[1].backward()
        opt_a.step()
    b = copy.deepcopy(model)
    opt_b = make(b.named_parameters(), lr=1e-2)
    for x in data[:5]:  # stop in the middle of a hold
        opt_b.zero_grad()
        b(x, x)[1].backward()
        opt_b.step()
    buf = io.BytesIO()
    torch.save({"model": b.state_dict(), "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)
    c = GPT(SMALL)
    c.load_state_dict(ck["model"])
    opt_c = make(c.named_parameters(), lr=1e-2)
    opt_c.load_state_dict(ck["opt"])
    assert [p.requires_grad for p in c.parameters()] == [p.requires_grad for p in b.parameters()]
    for x in data[5:]:
        opt_c.zero_grad()
        c(x, x)[1].backward()
        opt_c.step()
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)
        assert p.requires_grad == q.requires_grad
    trained = {
        n.split(".")[2] if n.startswith("transformer.h.") else n
        for (n, p), q in zip(a.named_parameters(), model.parameters())
        if not torch.equal(p, q)
    }
    assert len(trained) >= 3 and trained <= {"0", "1", "2", "3"}  # layers only, several
    assert _blocks(opt_a).active == _blocks(opt_c).active


# ---------------------------------------------------------------- compile
def test_compiled_blocks_do_not_recompile_once_warm():
    from torch._dynamo.utils import counters

    class Uneven(nn.Module):  # blocks of 2, 1, 4 and 3 tensors of different sizes
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(
                [
                    nn.Linear(6, 10),
                    nn.Linear(10, 12, bias=False),
                    nn.Sequential(nn.Linear(12, 9), nn.LayerNorm(9)),
                    nn.Sequential(nn.Linear(9, 7), nn.Linear(7, 5, bias=False)),
                ]
            )

        def forward(self, x):
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return x.square().sum()

    torch.manual_seed(0)
    model = Uneven()
    twin = copy.deepcopy(model)
    kw = dict(blocks="cyclic", nonfinite="ignore")
    opt = signify.signify(torch.optim.SGD, compile=True, compile_chunk=2, **kw)(
        model.named_parameters(), lr=1e-2
    )
    eager = signify.signify(torch.optim.SGD, compile=False, **kw)(twin.named_parameters(), lr=1e-2)
    torch._dynamo.reset()
    counters.clear()
    xs = [torch.randn(4, 6) for _ in range(12)]
    for x in xs[:4]:  # one pass over the 4 blocks
        _step(model, opt, x)
        _step(twin, eager, x)
    warm = counters["stats"]["unique_graphs"]
    assert 1 <= warm <= 4
    for x in xs[4:]:
        _step(model, opt, x)
        _step(twin, eager, x)
    assert counters["stats"]["unique_graphs"] == warm
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    model = Stack()
    with pytest.raises(ValueError, match="blocks: unknown rule"):
        signify.signify(torch.optim.SGD, blocks="deep")
    with pytest.raises(TypeError, match="blocks="):
        signify.signify(torch.optim.SGD, blocks=3)
    with pytest.raises(ValueError, match="depth_bias applies"):
        Blocks("cyclic", depth_bias=3.0)
    with pytest.raises(ValueError, match="depth_bias"):
        Blocks("depth", depth_bias=-1.0)
    with pytest.raises(ValueError, match="outside"):
        Blocks(outside="sometimes")
    with pytest.raises(ValueError, match="inactive"):
        Blocks(inactive="forget")
    with pytest.raises(ValueError, match="switch_every"):
        Blocks(switch_every=0)
    make = signify.signify(torch.optim.SGD, blocks="depth")
    with pytest.raises(ValueError, match="named_parameters"):
        make(model.parameters(), lr=1e-2)
    flat = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="blocks= found no numbered layer"):
        make(flat.named_parameters(), lr=1e-2)
    with pytest.raises(ValueError, match=r"prefix\(es\) \['decoder'\] match no"):
        signify.signify(torch.optim.SGD, blocks=Blocks(partition=["layers.0", "decoder"]))(
            model.named_parameters(), lr=1e-2
        )
    with pytest.raises(ValueError, match="matches no parameter"):
        signify.signify(torch.optim.SGD, blocks=Blocks(partition=lambda n, p: None))(
            model.named_parameters(), lr=1e-2
        )
    with pytest.raises(ValueError, match="does not own"):
        signify.signify(torch.optim.SGD, blocks=Blocks(partition=[[torch.zeros(2)]]))(
            model.parameters(), lr=1e-2
        )
    with pytest.raises(ValueError, match="block indices"):
        signify.signify(torch.optim.SGD, blocks=Blocks(lambda k, n: n))(
            model.named_parameters(), lr=1e-2
        )
    before = [p.requires_grad for p in model.parameters()]
    assert before == [True] * len(before)  # the failed constructions changed no flag
    opt = make(model.named_parameters(), lr=1e-2)
    other = signify.signify(torch.optim.SGD, blocks="cyclic")(Stack().named_parameters(), lr=1)
    with pytest.raises(ValueError, match="blocks: the state_dict was saved with rule"):
        opt.load_state_dict(other.state_dict())


# ---------------------------------------------------------------- benchmark smoke test
def test_bench_blocks_cpu_smoke(tmp_path):
    from bench import blocks as bench_blocks

    threads = torch.get_num_threads()
    try:
        payload = bench_blocks.main(["--cpu", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    rows = {r["row"]: r for r in payload["rows"]}
    assert list(rows) == ["adamw_fused", "signum_full", "signum_blocks", "stoadam_blocks"]
    for name in ("signum_blocks", "stoadam_blocks"):
        assert [r["block"] for r in rows[name]["per_layer"]] == [1, 2, 3, 4]
        assert rows[name]["ms_per_iter"] > 0 and rows[name]["targets"] in ("met", "missed")
    assert (tmp_path / "blocks_cpu.json").exists()
