"""``blocks=`` with real model code: Hugging Face GPT-2 / Llama built from tiny configs (no
downloads), gradient checkpointing, per-layer ``torch.compile``, routed (MoE-like) layers,
and the depth clock against an exact (rational-arithmetic) re-implementation of the rule.

Each check compares against an independent reference: a twin model that back-propagates
through everything, a hand-written ``x <- x - lr sign(g)``, the schedule from
``fractions.Fraction`` arithmetic.
"""

from __future__ import annotations

import copy
import io
import itertools
import warnings
from fractions import Fraction

import pytest
import torch
from torch import nn

import signify
from signify.transforms import Blocks
from signify.transforms.block_rules import DepthClock, depth_schedule

transformers = pytest.importorskip("transformers")


def _blocks(opt) -> Blocks:
    return next(t for t in opt.chain if isinstance(t, Blocks))


def exact_depth_schedule(n: int, c: str, steps: int) -> list[int]:
    """The documented clock in exact rationals (``c`` as the decimal written), 0-based:
    ``tau_i = N + c (N - i + 1)``, ``T_i = tau_i``, pick ``argmin T`` (ties to the
    shallowest), ``T_i += tau_i``."""
    cf = Fraction(c)
    tau = [n + cf * (n - i) for i in range(n)]
    ready = list(tau)
    picks = []
    for _ in range(steps):
        j = min(range(n), key=lambda j: (ready[j], j))
        picks.append(j)
        ready[j] += tau[j]
    return picks


# ---------------------------------------------------------------- the clock, exactly
@pytest.mark.parametrize("c", ["0.1", "0.3", "2.5", "0.05", "10"])
def test_depth_clock_breaks_ties_exactly_for_a_fractional_bias(c):
    """A float accumulation ``T_i += tau_i`` breaks the clock's exact ties by rounding when
    ``c`` is not an integer (N = 12, c = 0.1: pick 131 went to the deepest block, the rule
    gives the shallowest)."""
    for n in (3, 7, 12):
        assert depth_schedule(n, float(c), 1500) == exact_depth_schedule(n, c, 1500), n


def test_depth_clock_resumes_from_counts_and_from_a_float_clock_state():
    n, c = 12, 0.1
    want = exact_depth_schedule(n, "0.1", 400)
    clock = DepthClock(c)
    clock.reset(n, 0)
    got = [clock.next()[0] for _ in range(150)]
    saved = copy.deepcopy(clock.state())
    legacy = {"k": saved["k"], "ready": saved["ready"]}  # a checkpoint without "counts"
    for state in (saved, legacy):
        again = DepthClock(c)
        again.reset(n, 0)
        again.load_state(state)
        assert got + [again.next()[0] for _ in range(250)] == want
    bad = DepthClock(c)
    bad.reset(n - 1, 0)
    with pytest.raises(ValueError, match="saved depth clock has 12 blocks"):
        bad.load_state(saved)


# ---------------------------------------------------------------- GPT-2: layers, tied head
def _gpt2():
    cfg = transformers.GPT2Config(
        n_layer=3,
        n_embd=32,
        n_head=2,
        vocab_size=100,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(cfg)


@pytest.mark.parametrize("outside", ["never", "own"])
def test_gpt2_blocks_updates_state_and_grads_against_a_full_backward_twin(outside):
    torch.manual_seed(0)
    model = _gpt2()
    twin = copy.deepcopy(model)  # back-propagates through everything: the reference
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    lr = 1e-2
    opt = signify.signify(torch.optim.Adam, blocks=Blocks("depth", outside=outside))(
        model.named_parameters(), lr=lr
    )
    blocks = _blocks(opt)
    layers = [f"transformer.h.{i}" for i in range(3)]
    if outside == "own":  # the tied head is the embedding: it goes with the input side
        assert blocks.labels == ["(input side)", *layers, "(output side)"]
        names = {p: n for n, p in model.named_parameters()}
        assert [names[p] for p in blocks.blocks[0]] == [
            "transformer.wte.weight",
            "transformer.wpe.weight",
        ]
        assert [names[p] for p in blocks.blocks[-1]] == [
            "transformer.ln_f.weight",
            "transformer.ln_f.bias",
        ]
    else:
        assert blocks.labels == layers
    prefixes = [lab + "." for lab in blocks.labels]
    if outside == "own":
        prefixes[0] = ("transformer.wte.", "transformer.wpe.")
        prefixes[-1] = "transformer.ln_f."
    sched = exact_depth_schedule(len(prefixes), "10", 12)
    gen = torch.Generator().manual_seed(1)
    first: dict[str, torch.Tensor] = {}
    for k, active in enumerate(sched):
        assert blocks.active == (active,)
        mine = [n for n, _ in model.named_parameters() if n.startswith(prefixes[active])]
        assert [n for n, p in model.named_parameters() if p.requires_grad] == mine
        x = torch.randint(0, 100, (2, 12), generator=gen)
        twin.zero_grad()
        twin(x, labels=x).loss.backward()
        ref_grads = {n: p.grad for n, p in twin.named_parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        model(x, labels=x).loss.backward()
        assert [n for n, p in model.named_parameters() if p.grad is not None] == mine
        for n in mine:  # the truncated backward gives the full backward's gradient
            torch.testing.assert_close(
                dict(model.named_parameters())[n].grad, ref_grads[n], rtol=1e-5, atol=1e-7
            )
        repeat = k > 0 and sched[k - 1] == active  # the same block again: not switched out
        assert bool(opt.state) == repeat, k  # "drop" kept the state only then
        opt.step()
        for n, p in model.named_parameters():
            delta = p.detach() - before[n]
            if n not in mine:
                assert torch.equal(delta, torch.zeros_like(delta)), (k, n)
                continue
            g = ref_grads[n]
            if repeat:  # Adam's second step: m = 0.1 (0.9 g1 + g) / 0.19, v likewise
                m = (0.1 * 0.9 * first[n] + 0.1 * g) / (1 - 0.9**2)
                v = (0.001 * 0.999 * first[n] ** 2 + 0.001 * g**2) / (1 - 0.999**2)
                g = m / (v.sqrt() + 1e-8)
            # a fresh activation is Adam's first step: sign(g) exactly
            sure = g.abs() > 1e-6 * g.abs().max()  # sign flips of rounding-size gradients
            torch.testing.assert_close(delta[sure], -lr * g.sign()[sure], rtol=0, atol=1e-6)
        first = {n: ref_grads[n] for n in mine}
        with torch.no_grad():
            for p, q in zip(twin.parameters(), model.parameters()):
                p.copy_(q)
        # after the step: only the next block may need a gradient, nothing else holds one
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        assert set(opt.state) <= set(blocks.active_params())
    # the depth clock picks the deepest of 3 layers twice in a row (docs/blocks.md)
    assert any(a == b for a, b in itertools.pairwise(sched)) == (outside == "never")


def test_gpt2_optimizer_state_bytes_match_the_memory_model():
    """Adam state is ``8 P_i`` bytes for the stepped block ("drop": nothing between steps of
    different blocks) and ``8 sum P_i`` over the visited blocks under "keep"."""
    torch.manual_seed(0)
    x = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    model = _gpt2()
    twin = copy.deepcopy(model)
    make = signify.signify(
        torch.optim.Adam, stochastic=True, blocks=Blocks("depth", switch_every=2)
    )
    keep = signify.signify(
        torch.optim.Adam, stochastic=True, blocks=Blocks("depth", switch_every=2, inactive="keep")
    )
    opt, opt_keep = make(model.named_parameters(), lr=1e-3), keep(twin.named_parameters(), lr=1e-3)

    def moments(o):
        return sum(
            v.numel() * v.element_size()
            for st in o.state.values()
            for key, v in st.items()
            if key in ("exp_avg", "exp_avg_sq")
        )

    visited = set()
    for k in range(8):
        for m, o in ((model, opt), (twin, opt_keep)):
            active = tuple(_blocks(o).active)
            o.zero_grad()
            m(x, labels=x).loss.backward()
            o.step()
        p_active = sum(p.numel() for i in active for p in _blocks(opt).blocks[i])
        visited.add(active[0])
        p_visited = sum(p.numel() for i in visited for p in _blocks(opt).blocks[i])
        # held for a second step: the state stays; switched: it is gone
        assert moments(opt) == (8 * p_active if k % 2 == 0 else 0), k
        assert moments(opt_keep) == 8 * p_visited, k
    assert len(visited) == 3


# ---------------------------------------------------------------- Llama + checkpointing
def _llama():
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=16,
    )
    return transformers.LlamaForCausalLM(cfg)


def test_llama_gradient_checkpointing_truncates_only_without_input_require_grads():
    """Hugging Face's ``gradient_checkpointing_enable()`` calls ``enable_input_require_grads()``
    (for models of ``input_ids``): every layer's output then requires grad and the backward
    runs to the embedding whatever the active block (docs/blocks.md, Caveats). After
    ``disable_input_require_grads()`` the (non-reentrant) checkpointed backward stops at the
    active layer and its gradients are those of a non-checkpointed twin."""
    torch.manual_seed(0)
    model = _llama()
    twin = copy.deepcopy(model)
    model.train()
    with warnings.catch_warnings():  # deprecated for activation_checkpointing_enable in 5.x
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable()
    opt = signify.signify(torch.optim.Adam, blocks="depth")(model.named_parameters(), lr=1e-2)
    twin_opt = signify.signify(torch.optim.Adam, blocks="depth")(
        twin.named_parameters(), lr=1e-2, seed=opt._seed
    )
    needs_grad: dict[int, bool] = {}
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_hook(
            lambda mod, inp, out, i=i: needs_grad.__setitem__(
                i, (out[0] if isinstance(out, tuple) else out).requires_grad
            )
        )
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 100, (2, 12), generator=gen)
    active = _blocks(opt).active[0]
    assert active == 2
    opt.zero_grad()
    model(x, labels=x).loss.backward()
    assert all(needs_grad.values())  # the hook defeats the truncation
    opt.zero_grad()
    model.disable_input_require_grads()
    for k in range(5):
        active = _blocks(opt).active[0]
        assert _blocks(twin_opt).active == (active,)
        x = torch.randint(0, 100, (2, 12), generator=gen)
        for m, o in ((model, opt), (twin, twin_opt)):
            o.zero_grad()
            m(x, labels=x).loss.backward()
        assert [needs_grad[i] for i in range(3)] == [i >= active for i in range(3)], k
        for (n, p), q in zip(model.named_parameters(), twin.parameters()):
            assert (
                (p.grad is None)
                == (q.grad is None)
                == (not n.startswith(f"model.layers.{active}."))
            ), n
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
        opt.step()
        twin_opt.step()
        with torch.no_grad():  # keep the twins equal (sign flips of rounding-size grads)
            for p, q in zip(twin.parameters(), model.parameters()):
                p.copy_(q)


# ---------------------------------------------------------------- routed layers
class Routed(nn.Module):
    """Three layers of two experts each; the input picks the expert of every layer, and a
    layer may be skipped altogether (LayerDrop)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.layers = nn.ModuleList(
            nn.ModuleDict({"a": nn.Linear(8, 8), "b": nn.Linear(8, 8)}) for _ in range(3)
        )
        self.head = nn.Linear(8, 1)

    def forward(self, x, route, skip=()):
        h = self.embed(x)
        for i, layer in enumerate(self.layers):
            if i not in skip:
                h = torch.tanh(layer[route](h))
        return self.head(h).square().mean()


@pytest.mark.parametrize("outside", ["never", "always"])
def test_routed_layers_unused_experts_and_skipped_blocks(outside):
    """Unused experts get no gradient, state or change; a step whose active block is skipped
    by the forward pass still advances the clock; ``zero_grad(set_to_none=False)`` leaves
    frozen parameters without gradients."""
    torch.manual_seed(0)
    model = Routed()
    lr = 1e-2
    opt = signify.signify(
        torch.optim.Adam, blocks=Blocks("depth", outside=outside, inactive="keep")
    )(model.named_parameters(), lr=lr)
    blocks = _blocks(opt)
    always = (
        ["embed.weight", "embed.bias", "head.weight", "head.bias"] if outside == "always" else []
    )
    gen = torch.Generator().manual_seed(4)
    stepped = set(always)
    for k, active in enumerate(exact_depth_schedule(3, "10", 10)):
        assert blocks.active == (active,)
        route = "ab"[k % 2]
        skip = (active,) if k in (3, 7) else ()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        # set_to_none=False keeps a zero .grad on a block held over from the step before,
        # and a zero gradient is a gradient (Adam's momentum moves it, as in torch)
        opt.zero_grad(set_to_none=bool(skip))
        loss = model(torch.randn(5, 4, generator=gen), route, skip)
        if loss.requires_grad:
            loss.backward()
        else:
            assert skip and outside == "never"
        opt.step()
        trained = (
            [] if skip else [f"layers.{active}.{route}.weight", f"layers.{active}.{route}.bias"]
        )
        changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
        assert sorted(changed) == sorted(trained + always), k
        stepped.update(trained)
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, n
    # "keep": state exactly where a step saw a gradient (used experts, always-trained ones)
    names = {p: n for n, p in model.named_parameters()}
    assert {names[p] for p, st in opt.state.items() if st} == stepped
    assert len(stepped) < len(names)  # some expert was never used while its layer was active


# ---------------------------------------------------------------- per-layer torch.compile
def test_per_layer_compile_keeps_few_graphs_and_matches_eager():
    """Compiling each layer (not the whole model) bounds the graphs by the layer's roles
    (below / at / above the active one), whatever the number of blocks; a whole-model
    ``torch.compile`` recompiles for every active block (docs/blocks.md, Caveats)."""
    from torch._dynamo.utils import counters

    from signify.tasks.gpt import GPT, GPTConfig

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=5, n_head=2, n_embd=32))
    twin = copy.deepcopy(model)
    for layer in model.transformer["h"]:
        layer.compile(backend="aot_eager")
    make = signify.signify(torch.optim.Adam, blocks="cyclic")
    opt = make(model.named_parameters(), lr=1e-2)
    twin_opt = make(twin.named_parameters(), lr=1e-2, seed=opt._seed)
    gen = torch.Generator().manual_seed(5)
    for _ in range(10):  # two passes over the five blocks
        x = torch.randint(0, 64, (2, 16), generator=gen)
        for m, o in ((model, opt), (twin, twin_opt)):
            o.zero_grad()
            m(x, x)[1].backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            assert (p.grad is None) == (q.grad is None)
            if p.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7)
        opt.step()
        twin_opt.step()
        with torch.no_grad():
            for p, q in zip(twin.parameters(), model.parameters()):
                p.copy_(q)
    assert counters["stats"]["unique_graphs"] <= 3
    torch._dynamo.reset()


def test_checkpoint_round_trip_on_gpt2_continues_the_schedule():
    torch.manual_seed(0)
    model = _gpt2()
    make = signify.signify(
        torch.optim.Adam, stochastic=True, blocks=Blocks("depth", depth_bias=0.1)
    )
    opt = make(model.named_parameters(), lr=1e-3, seed=7)
    x = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(6))
    for _ in range(4):
        opt.zero_grad()
        model(x, labels=x).loss.backward()
        opt.step()
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    again = _gpt2()
    again.load_state_dict(ck["model"])
    opt2 = make(again.named_parameters(), lr=1e-3, seed=7)
    opt2.load_state_dict(ck["opt"])
    assert [n for n, p in again.named_parameters() if p.requires_grad] == [
        n for n, p in model.named_parameters() if p.requires_grad
    ]
    want = exact_depth_schedule(3, "0.1", 12)
    assert _blocks(opt2).active == (want[4],)
    for k in range(4, 12):
        assert _blocks(opt).active == _blocks(opt2).active == (want[k],)
        for m, o in ((model, opt), (again, opt2)):
            o.zero_grad()
            m(x, labels=x).loss.backward()
            o.step()
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
