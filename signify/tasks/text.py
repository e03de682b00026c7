"""Character-level text that needs no download: the Python documentation's topic pages
shipped with the standard library (``pydoc_data.topics``, about 0.47 M characters)."""

from __future__ import annotations

import torch


def load_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


class CharData:
    """Encodes the text as byte-sized tokens and serves random (x, y) batches."""

    def __init__(self, text: str | None = None, val_fraction: float = 0.1) -> None:
        text = text if text is not None else load_text()
        chars = sorted(set(text))
        self.vocab = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        data = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        n = int(len(data) * (1 - val_fraction))
        self.train, self.val = data[:n], data[n:]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.train if split == "train" else self.val
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        x = torch.stack([data[i : i + block_size] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + block_size] for i in ix])
        return x.to(device), y.to(device)
