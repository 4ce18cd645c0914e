"""Training data as batches: windows of a token stream, and padded batches of examples.

    windows = TokenWindows(ids, block_size=128, batch_size=32, seed=0)
    x, y = windows.batch(step=0)       # x: (32, 128) inputs; y: the same windows shifted by one

    examples = encode_records(tokenizer, records, "chat", max_length=128)   # fine-tuning examples
    x, y = collate(examples[:4], pad_id=tokenizer.eot_id, mask_prompt=True)
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")       # [[5, 6, 7], [0, 0, 8]], [[1, 1, 1], [0, 0, 1]]
    batches = ExampleBatches(examples, 16, 1, make_batch=my_collate, seed=0)  # epoch after epoch

Pretraining: the targets are the inputs shifted one to the left, so at every position the model
learns to predict the next token. Fine-tuning: each example is a prompt and an answer; the
targets are -100 (IGNORE, no loss) on the prompt and on padding, and padding is found by each
row's *length*, never by its id (the pad id is the end-of-text id, which the model must learn).
Batch number `step` is always a fixed function of (seed, step), so a resumed run sees exactly
the batches an uninterrupted run would have seen. batch_size is the global batch: under torchrun
each process keeps its own share of it (distributed.share), so the same flags draw the same
batches whatever the number of processes.
"""

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gpt_scratch import distributed
from gpt_scratch.templates import encode_example
from gpt_scratch.tokenizer import Tokenizer

IGNORE = -100  # targets with this value add nothing to the loss (lm_loss's ignore_index)


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
        """Random windows for one (micro) step; the same step always gives the same batch.

        Under torchrun: this process's share of the batch (every process draws the same starts).
        """
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 101 + micro_step)
        n_starts = len(self.ids) - self.block_size
        starts = torch.randint(0, n_starts, (self.batch_size,), generator=generator)
        return self.windows_at(distributed.share(starts))

    def evenly_spaced_batches(self, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed set of windows spread over the whole stream: the validation set."""
        n_starts = len(self.ids) - self.block_size
        count = min(n_batches * self.batch_size, n_starts)
        starts = torch.linspace(0, n_starts - 1, count).long()
        return [self.windows_at(chunk) for chunk in starts.split(self.batch_size)]


@dataclass
class Encoded:
    ids: list[int]
    trained: list[bool]  # True for answer tokens (and the end-of-text after each answer)


def encode_records(tokenizer: Tokenizer, records: list[dict], template: str, max_length: int,
                   quiet: bool = False) -> list[Encoded]:
    """Encode every record; cut those longer than max_length tokens and say how many were cut."""
    encoded, cut = [], 0
    for record in records:
        ids, trained = encode_example(tokenizer, record, template)
        if len(ids) > max_length:
            ids, trained, cut = ids[:max_length], trained[:max_length], cut + 1
        encoded.append(Encoded(ids, trained))
    if cut and not quiet:
        print(f"note: {cut} of {len(records)} examples were longer than {max_length} tokens and were cut "
              f"(their end-of-text is lost); raise --max-length or shorten the data", file=sys.stderr)
    return encoded


def collate(batch: list[Encoded], pad_id: int, mask_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch on the right to its longest example; return inputs x and targets y (B, T).

    y is x shifted left by one (predict the next token). Padding targets are IGNORE, decided by
    each row's length. With mask_prompt, prompt targets are IGNORE too: the loss then comes
    from the answer tokens alone.
    """
    longest = max(len(e.ids) for e in batch) - 1  # inputs drop the last token, targets the first
    x = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    y = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.ids) - 1
        x[row, :n] = torch.tensor(example.ids[:-1])
        targets = torch.tensor(example.ids[1:])
        if mask_prompt:
            is_answer = torch.tensor(example.trained[1:])
            targets = targets.masked_fill(~is_answer, IGNORE)
        y[row, :n] = targets
    return x, y


def pad_batch(sequences: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad sequences to one length on the left or right; return ids (B, T) and mask (B, T), 1 = real token."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        where = slice(longest - len(sequence), longest) if side == "left" else slice(0, len(sequence))
        ids[row, where] = torch.tensor(sequence, dtype=torch.long)
        mask[row, where] = 1
    return ids, mask


class ExampleBatches:
    """Shuffled batches of examples, epoch after epoch; batch(step, micro_step) depends only on (seed, step).

    make_batch turns a list of examples into the tensors a step trains on (e.g. collate for SFT,
    chosen/rejected pairs for a reward model).
    """

    def __init__(self, examples: list, batch_size: int, grad_accum: int, make_batch: Callable[[list], tuple],
                 seed: int = 0) -> None:
        self.examples, self.batch_size, self.grad_accum = examples, batch_size, grad_accum
        self.make_batch, self.seed = make_batch, seed
        self.orders: dict[int, list[int]] = {}  # epoch -> shuffled order, made once per epoch

    def order(self, epoch: int) -> list[int]:
        if epoch not in self.orders:
            order = list(range(len(self.examples)))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self.orders[epoch] = order
        return self.orders[epoch]

    def batch(self, step: int, micro_step: int = 0) -> tuple:
        """The (micro) step's examples made into a batch; under torchrun, this process's share of them.

        The share is taken from the list of examples, before make_batch: a batch of pairs puts all
        chosen rows before all rejected ones, and cutting its rows would split pairs apart.
        """
        first = (step * self.grad_accum + micro_step) * self.batch_size
        chosen = []
        for position in distributed.share(range(first, first + self.batch_size)):
            epoch, index = divmod(position, len(self.examples))
            chosen.append(self.examples[self.order(epoch)[index]])
        return self.make_batch(chosen)

    def steps_per_epoch(self) -> float:
        return len(self.examples) / (self.batch_size * self.grad_accum)
