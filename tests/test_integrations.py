"""The training stacks users run, at tiny sizes: Hugging Face Trainer (both ways of passing an
optimizer, and its checkpoint resume), Accelerate's ``prepare``, PyTorch Lightning's
``configure_optimizers`` with bf16-mixed precision and gradient clipping, and an outer
``torch.compile`` of a whole training step.

Each run is compared bit for bit with a hand-written loop doing what the stack does (the same
batches, autocast, clipping), with every transform on: stochastic sign, ALIAS, blocks.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import signify

STEPS = 5


class Tiny(nn.Module):
    """Two numbered layers (blocks find them); ``forward(x, labels)`` returns a loss dict."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList([nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 1)])

    def forward(self, x, labels=None):
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        out = self.layers[-1](x).float()
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Every step sees the same batch, so that a stack's data order cannot matter."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 4, generator=gen), torch.randn(1, 1, generator=gen)
    return x.expand(4, 4).clone(), y.expand(4, 1).clone()


def optimizer_class():
    return signify.signify(torch.optim.AdamW, stochastic=True, stepsize="alias", blocks="cyclic")


def reference(steps: int, groups=None, clip: float | None = 1.0, autocast=None) -> Tiny:
    """The loop a stack runs: zero_grad, forward (autocast), backward, clip, step."""
    m = Tiny()
    params = groups(m) if groups else m.named_parameters()
    opt = optimizer_class()(params, weight_decay=0.0, seed=3)
    x, y = batch()
    for _ in range(steps):
        opt.zero_grad()
        if autocast is None:
            loss = m(x, y)["loss"]
        else:
            with torch.autocast("cpu", dtype=autocast):
                loss = m(x, y)["loss"]
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([p for p in m.parameters()], clip)
        opt.step()
    return m


def assert_same_params(a: nn.Module, b: nn.Module) -> None:
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p.detach(), q.detach()), n
        assert p.requires_grad == q.requires_grad, n


# --------------------------------------------------------------------- Hugging Face Trainer
def _trainer(tmp_path, model, steps, **kw):
    transformers = pytest.importorskip("transformers")
    Trainer, TrainingArguments = transformers.Trainer, transformers.TrainingArguments

    x, y = batch()
    data = [{"x": x[0], "labels": y[0]} for _ in range(64)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        save_strategy=kw.pop("save_strategy", "no"),
        save_steps=kw.pop("save_steps", 500),
        save_only_model=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Trainer(model=model, args=args, train_dataset=data, **kw)


def test_hf_trainer_optimizer_cls_and_kwargs(tmp_path):
    """Trainer builds the optimizer from the class: two param groups (decay / no decay)."""
    model = Tiny()
    trainer = _trainer(
        tmp_path,
        model,
        STEPS,
        optimizer_cls_and_kwargs=(
            signify.signify(torch.optim.AdamW, stochastic=True, stepsize="alias"),
            {"lr": 1.0, "seed": 3},
        ),
    )
    decay = set(trainer.get_decay_parameter_names(model))
    trainer.train()
    inner = trainer.optimizer.optimizer  # Accelerate's wrapper around ours
    assert isinstance(inner, signify.SignifiedOptimizer) and len(inner.param_groups) == 2

    ref = Tiny()
    named = list(ref.named_parameters())
    opt = signify.signify(torch.optim.AdamW, stochastic=True, stepsize="alias")(
        [
            {"params": [p for n, p in named if n in decay], "weight_decay": 0.0},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
        ],
        lr=1.0,
        seed=3,
    )
    x, y = batch()
    for _ in range(STEPS):
        opt.zero_grad()
        ref(x, y)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), 1.0)
        opt.step()
    assert_same_params(model, ref)


def test_hf_trainer_optimizers_and_checkpoint_resume(tmp_path):
    """``optimizers=(opt, None)`` with every transform on; Trainer saves optimizer.pt at step
    2 and a fresh Trainer resumes from it: the result equals the uninterrupted run."""
    model = Tiny()
    opt = optimizer_class()(model.named_parameters(), weight_decay=0.0, seed=3)
    trainer = _trainer(
        tmp_path / "a",
        model,
        STEPS,
        optimizers=(opt, None),
        save_strategy="steps",
        save_steps=2,
    )
    trainer.train()
    assert_same_params(model, reference(STEPS))

    fresh = Tiny(seed=9)
    opt2 = optimizer_class()(fresh.named_parameters(), weight_decay=0.0, seed=99)
    resumed = _trainer(tmp_path / "b", fresh, STEPS, optimizers=(opt2, None))
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert_same_params(fresh, reference(STEPS))


# --------------------------------------------------------------------- Accelerate
def test_accelerate_prepare_bf16():
    pytest.importorskip("accelerate")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # the HF Trainer made one
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = Tiny()
    opt = optimizer_class()(model.named_parameters(), weight_decay=0.0, seed=3)
    x, y = batch()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    for _ in range(STEPS):
        for xb, yb in loader:
            opt.zero_grad()
            accelerator.backward(model(xb, yb)["loss"])
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    assert isinstance(opt.optimizer, signify.SignifiedOptimizer)
    assert_same_params(accelerator.unwrap_model(model), reference(STEPS, autocast=torch.bfloat16))
    AcceleratorState._reset_state(reset_partial_state=True)


# --------------------------------------------------------------------- Lightning
def test_lightning_bf16_mixed_with_gradient_clipping():
    """Lightning refuses clipping for optimizers that set ``_step_supports_amp_scaling``;
    signify does not, and Lightning's closure runs inside ``step()``."""
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Tiny()

        def training_step(self, b, i):
            return self.net(*b)["loss"]

        def configure_optimizers(self):
            return optimizer_class()(self.net.named_parameters(), weight_decay=0.0, seed=3)

    module = Module()
    x, y = batch()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        precision="bf16-mixed",
        gradient_clip_val=0.5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    assert trainer.global_step == STEPS
    assert_same_params(module.net, reference(STEPS, clip=0.5, autocast=torch.bfloat16))


# --------------------------------------------------------------------- torch.compile
def _train_step(model, opt, x, y):
    opt.zero_grad()
    loss = model(x, y)["loss"]
    loss.backward()
    opt.step()
    return loss


def test_outer_compile_of_a_training_step():
    """``torch.compile`` of zero_grad + forward + backward + step. ``step`` is excluded from
    tracing (like torch.optim's own ``zero_grad``): the only graph breaks are the three
    clean ones at zero_grad, backward and step, nothing inside signify is traced, and the
    later steps recompile nothing. Given the compiled backward's gradients the step equals a
    separate optimizer bit for bit, and the whole run matches a fully eager run to rounding
    (inductor's forward may round differently). The optimizer runs eagerly here: a graph
    break hands ``step`` to plain Python, where its own compiled graphs behave as tested in
    test_compile.py (compiling them too would add ~40 s of cold CPU compile to the suite)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model, twin, eager = Tiny(), Tiny(), Tiny()
    cls = signify.signify(torch.optim.AdamW, stochastic=True, stepsize="alias")
    opt = cls(model.parameters(), seed=3)
    ref = cls(twin.parameters(), seed=3)
    opt_eager = cls(eager.parameters(), seed=3)  # eager optimizer, eager model
    step = torch.compile(_train_step)
    x, y = batch()
    frames_after_first = None
    for i in range(STEPS):
        step(model, opt, x, y)
        if i == 0:
            frames_after_first = counters["frames"]["total"]
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()  # the compiled backward's gradients
        ref.step()
        _train_step(eager, opt_eager, x, y)
        for p, q, e in zip(model.parameters(), twin.parameters(), eager.parameters()):
            assert torch.equal(p, q)
            torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-6)
    # No recompilation after the first step (the count of traced frames is stable).
    assert counters["frames"]["total"] == frames_after_first
    # Exactly the three clean breaks; none from signify's internals (plans, set_ aliases).
    breaks = list(counters["graph_break"])
    assert len(breaks) == 3, breaks
    assert sum("Optimizer.zero_grad" in b for b in breaks) == 1
    assert sum("backward" in b for b in breaks) == 1
    assert sum("SignifiedOptimizer.step" in b and "marked as skipped" in b for b in breaks) == 1
    joined = " ".join(breaks)
    assert "set_" not in joined and "storage_offset" not in joined and "executor" not in joined
