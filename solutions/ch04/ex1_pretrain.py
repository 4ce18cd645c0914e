"""Chapter 4 exercises: the pieces of a pretraining loop.

    Exercise 4.1  next_token_batch   input windows and their targets, shifted by one token
    Exercise 4.2  learning_rate      linear warmup, then cosine decay
    Exercise 4.3  cross_entropy      the next-token loss, written out, with an ignore index
    Exercise 4.4  evaluate           mean loss over fixed batches, in eval mode, without gradients

Run it: a tiny GPT learns a built-in text byte by byte for a few dozen steps with your
functions; it prints the learning rate and loss as it goes, the validation loss before and
after, and a greedy sample. A few dozen steps only take the loss from ln 256 = 5.5 (a uniform
guess) to about 2.3 (knowing which bytes are common); for words, try --steps 300 --lr 0.02.
    python exercises/ch04/ex1_pretrain.py --steps 100 --text counting
    python exercises/ch04/ex1_pretrain.py --help
Grade it:  python -m gpt_scratch grade --chapter 4
"""

import argparse
import math
import sys
from pathlib import Path

import torch

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.args import (OneLineParser, exercise_not_done, float_range, int_range,  # noqa: E402
                              non_negative_int, positive_int)
from gpt_scratch.generate import generate  # noqa: E402
from gpt_scratch.model import GPT, GPTConfig  # noqa: E402

TEXTS = {
    "rhymes": "a cat in a hat sat on a mat. a dog on a log ate a bun in the sun. " * 12,
    "counting": "one two three four five six seven eight nine ten. ten nine eight seven six five four "
                "three two one. " * 8,
}


def next_token_batch(ids: torch.Tensor, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut windows of block_size tokens out of ids (N,) at starts (B,); return inputs x and targets y.

    Both are (B, block_size); y is x shifted one to the left: y[b, t] = ids[starts[b] + t + 1],
    the token that follows x[b, t]. So every position of every window is a training example.
    Example: ids [10, 11, 12, 13, 14], starts [0, 2], block_size 2 -> x [[10, 11], [12, 13]],
    y [[11, 12], [13, 14]].
    """
    offsets = torch.arange(block_size + 1)
    chunks = ids[starts[:, None] + offsets]  # (B, block_size + 1)
    return chunks[:, :-1], chunks[:, 1:]


def learning_rate(step: int, max_lr: float, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.1) -> float:
    """The learning rate of a step (counted from 0): linear warmup, then cosine decay.

    Warmup: step s < warmup_steps gets max_lr * (s + 1) / warmup_steps (small steps while
    Adam's statistics are still noisy). After it, a half cosine falls from max_lr at
    step = warmup_steps to max_lr * min_lr_ratio at step = max_steps, and stays there after.
    Example: max_lr 1, warmup 2, max_steps 4, min_lr_ratio 0.1: steps 0..5 -> 0.5, 1, 1, 0.55, 0.1, 0.1.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))  # 1 -> 0
    return max_lr * (min_lr_ratio + (1 - min_lr_ratio) * cosine)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Mean of -log p(target) over the rows whose target is not ignore_index; a 0-dim tensor.

    logits (N, V), targets (N,). Write it out without F.cross_entropy: the log-probabilities
    are logits - logsumexp(logits) (logsumexp keeps it stable for large logits). Rows with
    target == ignore_index count neither in the sum nor in the number averaged over.
    """
    keep = targets != ignore_index
    logits, targets = logits[keep], targets[keep]
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -log_probs[torch.arange(len(targets)), targets].mean()


def evaluate(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean of your cross_entropy over the (x, y) batches, as a float.

    Evaluate in eval mode (dropout off) and without gradients (torch.no_grad()), then put the
    model back in the mode it was in: evaluation must not change how training goes on.
    """
    was_training = model.training
    model.eval()
    losses = []
    with torch.no_grad():
        for x, y in batches:
            losses.append(cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    model.train(was_training)
    return sum(losses) / len(losses)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Pretrain a tiny GPT on a built-in text, byte by byte, "
                                                  "with your batches, schedule, loss and evaluation.")
    parser.add_argument("--text", choices=sorted(TEXTS), default="rhymes", help="text to learn (default rhymes)")
    parser.add_argument("--steps", type=int_range(1, 1000), default=60, help="optimizer steps (default 60)")
    parser.add_argument("--warmup-steps", type=non_negative_int, default=5,
                        help="linear warmup steps; at most --steps (default 5)")
    parser.add_argument("--lr", type=float_range(1e-6, 1.0), default=5e-3, help="peak learning rate (default 0.005)")
    parser.add_argument("--batch-size", type=int_range(1, 64), default=16, help="windows per step (default 16)")
    parser.add_argument("--block-size", type=int_range(2, 64), default=32, help="window length in bytes (default 32)")
    parser.add_argument("--n-layer", type=int_range(1, 4), default=2, help="transformer blocks (default 2)")
    parser.add_argument("--n-head", type=int_range(1, 8), default=2, help="attention heads; must divide --n-embd (default 2)")
    parser.add_argument("--n-embd", type=int_range(1, 128), default=32, help="embedding width (default 32)")
    parser.add_argument("--print-every", type=positive_int, default=10, help="print the loss every N steps (default 10)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of weights and batches (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.warmup_steps > args.steps:
        parser.error(f"--warmup-steps {args.warmup_steps} must be at most --steps {args.steps}")
    if args.n_embd % args.n_head != 0:
        parser.error(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")
    return args


def pretrain(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    ids = torch.tensor(list(TEXTS[args.text].encode("utf-8")))  # bytes are the tokens: vocab 256
    n_val = len(ids) // 10
    train_ids, val_ids = ids[:-n_val], ids[-n_val:]
    val_starts = torch.arange(0, len(val_ids) - args.block_size, max(1, args.block_size // 2))
    val_batches = [next_token_batch(val_ids, val_starts, args.block_size)]

    config = GPTConfig(vocab_size=256, block_size=args.block_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    heads = model.transformer.h[0].attn
    print(f"model: {config.n_layer} blocks, {heads.n_head} heads of {heads.head_dim} dims each, "
          f"{model.num_parameters():,} parameters; {len(train_ids)} training bytes")
    print(f"val loss before training: {evaluate(model, val_batches):.4f} (ln 256 = {math.log(256):.4f})")

    batch_rng = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        starts = torch.randint(0, len(train_ids) - args.block_size, (args.batch_size,), generator=batch_rng)
        x, y = next_token_batch(train_ids, starts, args.block_size)
        lr = learning_rate(step, args.lr, args.warmup_steps, args.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % args.print_every == 0 or step == args.steps - 1:
            print(f"step {step:4d}  lr {lr:.6f}  loss {loss.item():.4f}")

    print(f"val loss after {args.steps} steps: {evaluate(model, val_batches):.4f}")
    prompt = list(TEXTS[args.text].encode("utf-8"))[: min(8, args.block_size)]
    sample = generate(model, [prompt], max_new_tokens=40)[0]  # stops when the context (block size) is full
    print(f"greedy sample: {bytes(prompt + sample).decode('utf-8', errors='replace')!r}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pretrain(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
