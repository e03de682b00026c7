"""A Hugging Face ``Trainer`` with a signified optimizer, through ``optimizer_cls_and_kwargs``.

    pip install transformers accelerate
    python examples/hf_trainer.py                 # a small GPT-2 built from a config, CPU
    python examples/hf_trainer.py --tiny --steps 5

The class that `signify` returns is a ``torch.optim.Optimizer`` subclass constructed like its
base, so the Trainer builds it itself, with its own param groups (weight decay off for biases
and norms) and its own learning-rate schedule:

    SignAdamW = signify.signify(torch.optim.AdamW, stochastic=True)
    Trainer(..., optimizer_cls_and_kwargs=(SignAdamW, {"lr": 1e-3, "seed": 0}))

No download: the model is built from a ``GPT2Config`` and the text is the Python documentation
shipped with the standard library (characters as tokens).
"""

from __future__ import annotations

import argparse
import inspect
import tempfile

import torch

import signify
from signify.tasks.text import CharData


class CharChunks(torch.utils.data.Dataset):
    """Consecutive ``block``-character chunks; the model shifts labels itself."""

    def __init__(self, tokens: torch.Tensor, block: int) -> None:
        self.tokens, self.block = tokens, block

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.block

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.tokens[i * self.block : (i + 1) * self.block]
        return {"input_ids": x, "labels": x.clone()}


def main() -> None:
    p = argparse.ArgumentParser(description="HF Trainer with a signified optimizer.")
    p.add_argument("--tiny", action="store_true", help="a 2-layer d=32 GPT-2 (smoke tests)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    data = CharData()
    block = 32 if args.tiny else 128
    size = (
        dict(n_layer=2, n_head=2, n_embd=32) if args.tiny else dict(n_layer=4, n_head=4, n_embd=128)
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=data.vocab_size, n_positions=block, bos_token_id=0, eos_token_id=0, **size
        )
    )
    train, held = CharChunks(data.train, block), CharChunks(data.val, block)
    held = torch.utils.data.Subset(held, range(min(len(held), 8 * args.batch_size)))

    SignAdamW = signify.signify(torch.optim.AdamW, stochastic=True)
    out = tempfile.mkdtemp()
    targs = TrainingArguments(
        output_dir=out,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=0.01,
        logging_steps=max(1, args.steps // 5),
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    extra = {}
    if "optimizer_cls_and_kwargs" in inspect.signature(Trainer.__init__).parameters:
        extra["optimizer_cls_and_kwargs"] = (SignAdamW, {"lr": args.lr, "seed": 0})
    else:  # transformers < 4.47: hand over an instance instead
        extra["optimizers"] = (SignAdamW(model.parameters(), lr=args.lr, seed=0), None)
    trainer = Trainer(model=model, args=targs, train_dataset=train, eval_dataset=held, **extra)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # Accelerate's wrapper
    print(f"optimizer: {type(opt).__name__} with {len(opt.param_groups)} param groups")
    print(f"held-out loss: {before:.4f} -> {after:.4f} after {args.steps} steps")
    if not after < before:
        raise SystemExit("the loss did not decrease")


if __name__ == "__main__":
    main()
