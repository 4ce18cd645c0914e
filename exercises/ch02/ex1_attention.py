"""Chapter 2 exercises: causal self-attention, written out by hand.

    Exercise 2.1  attention_scores       how well each query matches each key
    Exercise 2.2  causal_mask            a token may look at itself and the past, never the future
    Exercise 2.3  attend                 softmax over the allowed keys, then mix the values
    Exercise 2.4  split_heads, merge_heads   (B, T, C) <-> (B, n_head, T, head_dim)
    Exercise 2.5  multi_head_attention   the whole layer, with the weights of gpt_scratch's attention

Run it: it embeds a sample sentence, runs a random attention layer with your functions and
prints one head's attention map as numbers.
    python exercises/ch02/ex1_attention.py --seq-len 6 --head 1
    python exercises/ch02/ex1_attention.py --help
Grade it:  python -m gpt_scratch grade --chapter 2
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

from gpt_scratch.args import OneLineParser, exercise_not_done, int_range, non_negative_int  # noqa: E402
from gpt_scratch.model import CausalSelfAttention, GPTConfig  # noqa: E402

SENTENCE = "the cat sat on the mat because the cat was tired".split()


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled dot products: q (..., T_q, d) and k (..., T_k, d) -> scores (..., T_q, T_k).

    scores[i, j] = q[i] . k[j] / sqrt(d). Dividing by sqrt(d) keeps the scores' spread near 1
    whatever d is, so that the softmax does not saturate.
    Example: q = k = [[1., 0.], [0., 1.]] -> [[0.7071, 0.], [0., 0.7071]].
    """
    raise NotImplementedError("Exercise 2.1: return q @ k^T / sqrt(head_dim) in attention_scores")


def causal_mask(T: int) -> torch.Tensor:
    """Boolean (T, T) matrix: True where query i may look at key j, that is where j <= i.

    Example: causal_mask(3) -> [[True, False, False], [True, True, False], [True, True, True]].
    """
    raise NotImplementedError("Exercise 2.2: return the (T, T) lower-triangular boolean mask in causal_mask")


def attend(scores: torch.Tensor, v: torch.Tensor,
           mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax each row of scores over the allowed keys, then take the weighted sum of the values.

    scores (..., T_q, T_k), v (..., T_k, d), mask (T_q, T_k) of bools or None (all allowed).
    Returns (output (..., T_q, d), weights (..., T_q, T_k)): each row of weights sums to 1 and
    is exactly 0 where the mask is False. Hint: a score of -inf becomes a weight of 0.
    """
    raise NotImplementedError("Exercise 2.3: softmax the allowed scores and mix the values in attend")


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, n_head, T, C // n_head): head h gets channels h*hd to (h+1)*hd - 1.

    Example: x of shape (1, 2, 4) with n_head=2: head 0 sees x[0, :, 0:2], head 1 x[0, :, 2:4].
    """
    raise NotImplementedError("Exercise 2.4: reshape (B, T, C) to (B, n_head, T, head_dim) in split_heads")


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, n_head, T, head_dim) -> (B, T, n_head * head_dim): the inverse of split_heads."""
    raise NotImplementedError("Exercise 2.4: undo split_heads in merge_heads")


def multi_head_attention(x: torch.Tensor, layer: CausalSelfAttention,
                         causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole attention layer, using layer's weights (layer.c_attn, layer.c_proj, layer.n_head).

    1. q, k, v: layer.c_attn(x) has shape (B, T, 3C); cut it into three (B, T, C) parts.
    2. split each into heads; 3. scores, causal mask (if causal), attend;
    4. merge the heads and project with layer.c_proj.
    Returns (output (B, T, C), weights (B, n_head, T, T)). With causal=True the output equals
    layer(x), gpt_scratch's own CausalSelfAttention (dropout 0).
    """
    raise NotImplementedError("Exercise 2.5: run the whole attention layer in multi_head_attention")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Print one head's attention map over a sample sentence, "
                                                  "computed with your functions (random weights).")
    parser.add_argument("--seq-len", type=int_range(2, len(SENTENCE)), default=6,
                        help=f"words of the sample sentence to use, 2 to {len(SENTENCE)} (default 6)")
    parser.add_argument("--n-embd", type=int_range(1, 256), default=16, help="embedding width (default 16)")
    parser.add_argument("--n-head", type=int_range(1, 16), default=2,
                        help="attention heads; must divide --n-embd (default 2)")
    parser.add_argument("--head", type=non_negative_int, default=0,
                        help="which head's map to print; less than --n-head (default 0)")
    parser.add_argument("--mask", choices=["causal", "none"], default="causal",
                        help="causal: a word sees only itself and earlier words; none: it sees all (default causal)")
    parser.add_argument("--decimals", type=int_range(1, 4), default=2, help="digits after the point (default 2)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random weights (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n_embd % args.n_head != 0:
        parser.error(f"--n-embd {args.n_embd} must be divisible by --n-head {args.n_head}")
    if args.head >= args.n_head:
        parser.error(f"--head {args.head} must be below --n-head {args.n_head} (heads count from 0)")
    return args


def show_attention(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    words = SENTENCE[: args.seq_len]
    vocab = sorted(set(SENTENCE))
    embedding = torch.nn.Embedding(len(vocab), args.n_embd)  # the same word gets the same vector
    x = embedding(torch.tensor([[vocab.index(word) for word in words]]))  # (1, T, C)
    config = GPTConfig(vocab_size=len(vocab), block_size=len(SENTENCE), n_layer=1,
                       n_head=args.n_head, n_embd=args.n_embd)
    layer = CausalSelfAttention(config)
    with torch.no_grad():
        y, weights = multi_head_attention(x, layer, causal=args.mask == "causal")

    mask_name = "causal mask" if args.mask == "causal" else "no mask"
    print(f"attention weights of head {args.head} of {args.n_head} ({mask_name}); "
          "row: a word, columns: the words it looks at")
    width = max(max(len(word) for word in words), args.decimals + 3) + 1
    print(" " * width + "".join(f"{word:>{width}}" for word in words))
    for word, row in zip(words, weights[0, args.head].tolist()):
        print(f"{word:<{width}}" + "".join(f"{w:>{width}.{args.decimals}f}" for w in row))
    print(f"output shape: {tuple(y.shape)}")
    if args.mask == "causal":
        with torch.no_grad():
            same = torch.allclose(y, layer(x), atol=1e-5)
        print(f"same output as gpt_scratch.model.CausalSelfAttention: {same}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_attention(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
