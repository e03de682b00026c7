"""Exact resume with every transform on (stochastic sign, depth blocks, ALIAS), and state
dicts that must not load.

A run stopped at any step, saved with ``torch.save`` (model and optimizer), loaded into a
fresh model and optimizer and continued, equals the uninterrupted run bit for bit: the
parameters, the ``requires_grad`` flags, the noise counter, the block clock, the stepsize
scalars, the per-parameter state and the skip count. Hypothesis draws the stop point, the
base, the block rule and where a non-finite step falls.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

import signify
from signify.transforms import Blocks

TOTAL = 8


class Stack(nn.Module):
    """``layers.{i}`` between an input embedding and a head (outside the blocks)."""

    def __init__(
        self, width: int = 5, depth: int = 3, seed: int = 0, inputs: int = 3, outputs: int = 1
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.inputs = inputs
        self.embed = nn.Linear(inputs, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).square().mean()


BASES = {
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.01}),
    "sgd": (torch.optim.SGD, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, {}),
}


def make(model: nn.Module, base: str, rule: str, **options):
    cls, kw = BASES[base]
    opt_cls = signify.signify(
        cls,
        stochastic=True,
        blocks=Blocks(rule, outside="own", switch_every=2),
        stepsize="alias",
        **{"seed": 7, **options},
    )
    return opt_cls(model.named_parameters(), **kw)


def train(model: nn.Module, opt, steps: range, bad: int | None) -> None:
    for k in steps:
        gen = torch.Generator().manual_seed(k)
        x = torch.randn(6, model.inputs, generator=gen)
        opt.zero_grad()
        loss = model(x)
        if k == bad:
            loss = loss * float("inf")  # inf * 0-grad entries make NaN too
        loss.backward()
        opt.step()


def snapshot(model: nn.Module, opt) -> dict:
    """Everything a resumed run must reproduce."""
    blocks = next((t for t in opt.chain if isinstance(t, Blocks)), None)
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "flags": [p.requires_grad for p in model.parameters()],
        "state": [
            {k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else {}
            for p in model.parameters()
        ],
        "shared": {
            (name, k): v.clone()
            for name, d in opt._shared.items()
            for k, v in d.items()
            if isinstance(v, torch.Tensor)
        },
        "active": blocks and blocks.active,
        "clock": blocks and blocks.extra_state(),
        "skipped": opt.skipped_steps,
    }


def assert_same(a: dict, b: dict) -> None:
    for x, y in zip(a["params"], b["params"]):
        assert torch.equal(x, y)
    assert a["flags"] == b["flags"]
    assert a["active"] == b["active"] and a["clock"] == b["clock"]
    assert a["skipped"] == b["skipped"]
    assert a["shared"].keys() == b["shared"].keys()
    for k in a["shared"]:
        identical(a["shared"][k], b["shared"][k], k)
    for sa, sb in zip(a["state"], b["state"]):
        assert sa.keys() == sb.keys()
        for k in sa:
            identical(sa[k], sb[k], k)


def identical(x: torch.Tensor, y: torch.Tensor, what) -> None:
    """Equal values, NaN where the other has NaN: the stepsize's per-step accumulators
    (acc_sum, acc_max: zeroed at the start of every step) keep the NaN sums of a skipped
    last step, in both runs alike."""
    assert x.dtype == y.dtype and x.shape == y.shape, what
    torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def resume_matches(
    base: str, rule: str, stop: int, bad: int | None, shapes: dict | None = None, **options
) -> None:
    shapes = shapes or {}
    straight = Stack(**shapes)
    opt_a = make(straight, base, rule, **options)
    train(straight, opt_a, range(TOTAL), bad)

    first = Stack(**shapes)
    opt_b = make(first, base, rule, **options)
    train(first, opt_b, range(stop), bad)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt_b.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=False)

    fresh = Stack(seed=123, **shapes)  # other values and (below) another seed: the checkpoint's win
    fresh.load_state_dict(ckpt["model"])
    opt_c = make(fresh, base, rule, **{**options, "seed": 999})
    opt_c.load_state_dict(ckpt["opt"])
    assert_same(snapshot(first, opt_b), snapshot(fresh, opt_c))
    train(fresh, opt_c, range(stop, TOTAL), bad)
    assert_same(snapshot(straight, opt_a), snapshot(fresh, opt_c))
    assert opt_a.skipped_steps == (bad is not None and bad < TOTAL)


@settings(max_examples=12, deadline=None)
@given(
    base=st.sampled_from(sorted(BASES)),
    rule=st.sampled_from(["depth", "random", "cyclic", "shuffle"]),
    stop=st.integers(0, TOTAL),
    bad=st.one_of(st.none(), st.integers(0, TOTAL - 1)),
)
def test_exact_resume_at_any_step(base, rule, stop, bad):
    event(f"stop={stop}")  # --hypothesis-show-statistics lists the stop points tried
    resume_matches(base, rule, stop, bad)


def test_exact_resume_compiled():
    """The compiled executor (chunks of 2 tensors), stopped mid-hold after a skipped step.
    Every block has the same shapes (weight 5 x 5 and bias), so one set of graphs serves all
    five (cold compile on 2 cores: 40 s with three sets of shapes, the eager test above
    covers those)."""
    shapes = {"inputs": 5, "outputs": 5}
    resume_matches("adamw", "depth", stop=5, bad=3, shapes=shapes, compile=True, compile_chunk=2)


# ------------------------------------------------------------------------ refused loads
def _trained(**kw):
    model = Stack()
    opt = make(model, "adamw", "depth", **kw)
    train(model, opt, range(3), None)
    return model, opt


def _other_stepsize_scope(model):
    from signify.transforms.stepsize_alias import Alias

    return signify.signify(
        torch.optim.AdamW,
        stochastic=True,
        blocks=Blocks("depth", outside="own", switch_every=2),
        stepsize=Alias(scope="tensor"),
        seed=7,
    )(model.named_parameters(), weight_decay=0.01)


REFUSED = {
    # another chain: no blocks
    "chain": (
        lambda m: signify.signify(torch.optim.AdamW, stochastic=True, stepsize="alias")(
            m.parameters(), weight_decay=0.01
        ),
        "chain",
    ),
    # the same chain, another block rule
    "rule": (lambda m: make(m, "adamw", "cyclic"), "rule"),
    # the same chain, another partition (layers only: 3 blocks instead of 5)
    "partition": (
        lambda m: signify.signify(
            torch.optim.AdamW,
            stochastic=True,
            blocks=Blocks("depth", switch_every=2),
            stepsize="alias",
        )(m.named_parameters(), weight_decay=0.01),
        "blocks",
    ),
    # the same chain, ALIAS per tensor instead of global
    "scope": (_other_stepsize_scope, "scope"),
    # other shapes
    "shapes": (lambda m: make(Stack(width=4), "adamw", "depth"), "shape"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_loads_name_the_mismatch_and_change_nothing(case):
    _, opt = _trained()
    sd = copy.deepcopy(opt.state_dict())
    build, words = REFUSED[case]
    model = Stack(seed=5)
    other = build(model)
    train(model, other, range(2), None)
    before = snapshot(model, other)
    with pytest.raises(ValueError, match=words):
        other.load_state_dict(copy.deepcopy(sd))
    assert_same(before, snapshot(model, other))
    # and it trains on exactly as an untouched twin
    twin_model = Stack(seed=5)
    twin = build(twin_model)
    train(twin_model, twin, range(2), None)
    train(model, other, range(2, 5), None)
    train(twin_model, twin, range(2, 5), None)
    assert_same(snapshot(twin_model, twin), snapshot(model, other))


def test_schema_version_is_saved_and_checked():
    _, opt = _trained()
    sd = opt.state_dict()
    assert sd["signify"]["schema"] == signify.checkpoint.SCHEMA_VERSION
    assert sd["signify"]["extra"]["blocks"]["rule"] == "depth"
    assert sd["signify"]["extra"]["alias"] == {"scope": "global"}
    sd = copy.deepcopy(sd)
    sd["signify"]["schema"] = signify.checkpoint.SCHEMA_VERSION + 1
    _, fresh = _trained()
    with pytest.raises(ValueError, match="schema"):
        fresh.load_state_dict(sd)


if __name__ == "__main__":
    # The exhaustive sweep of docs/reliability.md: every base, rule, stop point and
    # non-finite step position (PYTHONPATH=. python tests/test_reliability_resume.py).
    import itertools
    import time

    t0, n = time.time(), 0
    for base, rule, stop, bad in itertools.product(
        sorted(BASES), ["depth", "cyclic", "random", "shuffle"], range(TOTAL + 1), [None, 0, 3, 7]
    ):
        resume_matches(base, rule, stop, bad)
        n += 1
    print(f"{n} resumes bit-identical in {time.time() - t0:.1f} s")
