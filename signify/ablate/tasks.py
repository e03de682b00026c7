"""The problems an ablation study trains on. None needs a download.

* ``gpt``: a character-level GPT (`signify.tasks.gpt`) on the Python documentation text shipped
  with the standard library (`signify.tasks.text`); presets from a CPU demo to ~350M on a GPU.
* ``logreg``: logistic regression on scikit-learn's bundled breast-cancer data (standardised),
  full gradients: ALIAS's convex setting (algorithms.md 3.11).
* ``nonsmooth``: StoSignSGD's example ``f(x) = |x1 + x2| + 2 |x1 - x2|`` with exact subgradients
  (algorithms.md 2.8), where signSGD stalls and StoSignSGD converges. Its validation metric is
  ``f`` at the running average of the iterates, the quantity of the paper's theorem.
* ``mlp``: a 3-layer MLP on scikit-learn's bundled digits, minibatches of 128.

A task is built per run from a seed; ``train_step`` does forward and backward and returns the
loss as a device tensor (no host sync); ``evaluate`` returns host floats (it runs off the clock).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model size and the run length that suits it."""

    model: dict[str, Any]
    batch_size: int
    steps: int
    eval_batches: int = 8


GPT_PRESETS = {
    # CPU demo: 4 layers, d=32, context 32, ~60k parameters; 1k tokens per step.
    "demo": Preset(dict(block_size=32, n_layer=4, n_head=4, n_embd=32), 32, 300, 4),
    "tiny": Preset(dict(block_size=64, n_layer=4, n_head=4, n_embd=128), 32, 300),
    "small": Preset(dict(block_size=128, n_layer=6, n_head=6, n_embd=192), 64, 2000, 20),
    "medium": Preset(dict(block_size=256, n_layer=12, n_head=12, n_embd=768), 32, 2000, 20),
    # 24 layers, d=1024 (~300M with the character vocabulary): a GPU with bf16 autocast.
    "350m": Preset(dict(block_size=512, n_layer=24, n_head=16, n_embd=1024), 8, 1000, 20),
}
OTHER_PRESETS = {
    "logreg": {"default": Preset({}, 0, 1000, 1)},
    "nonsmooth": {"default": Preset({}, 0, 1000, 1)},
    "mlp": {
        "default": Preset({"hidden": 128}, 128, 300, 1),
        "wide": Preset({"hidden": 512}, 128, 600, 1),
    },
}
TASKS = ("gpt", "logreg", "nonsmooth", "mlp")


def presets(task: str) -> dict[str, Preset]:
    if task == "gpt":
        return GPT_PRESETS
    if task not in OTHER_PRESETS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return OTHER_PRESETS[task]


def default_preset(task: str, device: str) -> str:
    if task == "gpt":
        return "small" if device.startswith("cuda") else "demo"
    return "default"


class Task:
    """Base class: a model, a loss, an evaluation."""

    unit = "samples"
    items_per_step = 1
    model: nn.Module

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.model.named_parameters())

    @property
    def n_params(self) -> int:
        return sum(p.numel() for _, p in self.named_parameters())

    def train_step(self, step: int) -> Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimizer step (running averages)."""

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------ GPT
@functools.lru_cache(maxsize=1)
def _char_data() -> Any:
    from ..tasks.text import CharData

    return CharData()


class GPTTask(Task):
    unit = "tokens"

    def __init__(
        self, preset: Preset, batch_size: int, seed: int, device: torch.device, dtype: str
    ) -> None:
        from ..tasks.gpt import GPT, GPTConfig

        self.data = _char_data()
        cfg = GPTConfig(vocab_size=self.data.vocab_size, **preset.model)
        torch.manual_seed(seed)
        self.model = GPT(cfg).to(device)
        self.cfg, self.batch_size, self.device = cfg, batch_size, device
        self.items_per_step = batch_size * cfg.block_size
        self.gen = torch.Generator().manual_seed(seed)
        val_gen = torch.Generator().manual_seed(10_000)  # the same batches for every run
        self.val = [
            self.data.batch("val", batch_size, cfg.block_size, val_gen, device)
            for _ in range(preset.eval_batches)
        ]
        self.bf16 = dtype == "bf16"

    def _ctx(self) -> Any:
        if self.bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, step: int) -> Tensor:
        x, y = self.data.batch("train", self.batch_size, self.cfg.block_size, self.gen, self.device)
        with self._ctx():
            _, loss = self.model(x, y)
        loss.backward()
        return loss.detach().float()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with self._ctx():
            losses = torch.stack([self.model(x, y)[1].float() for x, y in self.val])
        self.model.train()
        return {"val_loss": float(losses.mean())}


# ------------------------------------------------------------------------------------ convex
class LogRegTask(Task):
    """Mean logistic loss ``(1/n) sum log(1 + exp(-y_i (a_i^T w + b)))``, full batch."""

    def __init__(self, seed: int, device: torch.device) -> None:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        x = (x - x.mean(0)) / x.std(0)
        self.x = torch.tensor(x, dtype=torch.float32, device=device)
        self.y = torch.tensor(2.0 * y - 1.0, dtype=torch.float32, device=device)
        self.items_per_step = len(y)
        torch.manual_seed(seed)
        self.model = nn.Linear(x.shape[1], 1)
        nn.init.normal_(self.model.weight, std=0.01)
        nn.init.zeros_(self.model.bias)
        self.model.to(device)

    def _loss(self) -> Tensor:
        return F.softplus(-self.y * self.model(self.x).squeeze(1)).mean()

    def train_step(self, step: int) -> Tensor:
        loss = self._loss()
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        loss = self._loss()
        acc = ((self.model(self.x).squeeze(1) > 0).float() * 2 - 1 == self.y).float().mean()
        return {"val_loss": float(loss), "val_acc": float(acc)}


class NonSmoothTask(Task):
    """``f(x) = |x1 + x2| + 2 |x1 - x2|`` from ``x0 = (0.7310585786, 2.1415926535)``, float64.

    The seed does not change the problem (only a stochastic sign's noise)."""

    unit = "steps"
    X0 = (0.7310585786, 2.1415926535)

    def __init__(self, seed: int, device: torch.device) -> None:
        self.x = nn.Parameter(torch.tensor(self.X0, dtype=torch.float64, device=device))
        self.avg = self.x.detach().clone()
        self.t = 1

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [("x", self.x)]

    @staticmethod
    def f(x: Tensor) -> Tensor:
        return (x[0] + x[1]).abs() + 2 * (x[0] - x[1]).abs()

    def train_step(self, step: int) -> Tensor:
        loss = self.f(self.x)
        loss.backward()
        return loss.detach()

    def after_step(self) -> None:
        self.t += 1
        self.avg.add_((self.x.detach() - self.avg) / self.t)

    def evaluate(self) -> dict[str, float]:
        return {"val_loss": float(self.f(self.avg)), "f_last": float(self.f(self.x.detach()))}


class MLP(nn.Module):
    """Layers under ``layers.{i}``, so ``blocks="depth"`` finds them by name."""

    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MLPTask(Task):
    def __init__(self, preset: Preset, batch_size: int, seed: int, device: torch.device) -> None:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        xt = torch.tensor(x, dtype=torch.float32, device=device) / 16.0
        yt = torch.tensor(y, device=device)
        self.xtr, self.ytr, self.xte, self.yte = xt[:1400], yt[:1400], xt[1400:], yt[1400:]
        hidden = preset.model["hidden"]
        torch.manual_seed(seed)
        self.model = MLP([64, hidden, hidden, 10]).to(device)
        self.batch_size = self.items_per_step = batch_size
        self.gen = torch.Generator().manual_seed(seed)

    def train_step(self, step: int) -> Tensor:
        idx = torch.randint(0, len(self.xtr), (self.batch_size,), generator=self.gen)
        idx = idx.to(self.xtr.device)
        loss = F.cross_entropy(self.model(self.xtr[idx]), self.ytr[idx])
        loss.backward()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        logits = self.model(self.xte)
        return {
            "val_loss": float(F.cross_entropy(logits, self.yte)),
            "val_acc": float((logits.argmax(1) == self.yte).float().mean()),
        }


def make_task(
    task: str, preset: str, batch_size: int, seed: int, device: torch.device, dtype: str
) -> Task:
    table = presets(task)
    if preset not in table:
        raise ValueError(f"preset for task {task!r} must be one of {sorted(table)}, got {preset!r}")
    p = table[preset]
    if task == "gpt":
        return GPTTask(p, batch_size, seed, device, dtype)
    if task == "logreg":
        return LogRegTask(seed, device)
    if task == "nonsmooth":
        return NonSmoothTask(seed, device)
    return MLPTask(p, batch_size, seed, device)
