"""Pretraining data: one long stream of token ids, cut into random windows.

    windows = TokenWindows(ids, block_size=128, batch_size=32, seed=0)
    x, y = windows.batch(step=0)       # x: (32, 128) inputs; y: the same windows shifted by one

The targets are the inputs shifted one to the left: at every position the model learns to
predict the next token. Batch number `step` is a fixed function of (seed, step), so a resumed
run sees exactly the batches an uninterrupted run would have seen.
"""

from pathlib import Path

import torch


def read_corpus(path: str | Path) -> str:
    """Read a UTF-8 text file, with one clear error for the usual mistakes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} not found; pass an existing text file "
                                f"(or run `python -m gpt_scratch data` to generate one)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise ValueError(f"corpus file {path} is empty; give it some text to train on")
    return text


def split_train_val(ids: list[int], val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the last val_fraction of the stream for validation (no window crosses the border)."""
    ids = torch.tensor(ids, dtype=torch.long)
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val:]


class TokenWindows:
    """Random (input, target) windows from a token stream, reproducible per step."""

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, seed: int = 0) -> None:
        if len(ids) < block_size + 1:
            raise ValueError(f"only {len(ids)} tokens, but one window needs block_size + 1 = "
                             f"{block_size + 1}; use more text or a smaller block size")
        self.ids, self.block_size, self.batch_size, self.seed = ids, block_size, batch_size, seed

    def windows_at(self, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.arange(self.block_size + 1)
        chunks = self.ids[starts[:, None] + offsets]  # (B, block_size + 1)
        return chunks[:, :-1], chunks[:, 1:]

    def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows for one (micro) step; the same step always gives the same batch."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 101 + micro_step)
        n_starts = len(self.ids) - self.block_size
        starts = torch.randint(0, n_starts, (self.batch_size,), generator=generator)
        return self.windows_at(starts)

    def evenly_spaced_batches(self, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of windows spread over the whole stream: the validation set."""
        n_starts = len(self.ids) - self.block_size
        count = min(n_batches * self.batch_size, n_starts)
        starts = torch.linspace(0, n_starts - 1, count).long()
        return [self.windows_at(chunk) for chunk in starts.split(self.batch_size)]
