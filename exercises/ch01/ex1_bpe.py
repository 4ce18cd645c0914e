"""Chapter 1 exercises: a byte-level BPE tokenizer, from counting pairs to encoding new text.

    Exercise 1.1  get_pair_counts   how often each pair of neighbouring ids occurs
    Exercise 1.2  merge             replace every occurrence of a pair by one new id
    Exercise 1.3  train_bpe         learn merges: count, take the most frequent pair, merge, repeat
    Exercise 1.4  encode            cut new text into tokens with the learned merges

Run it: it trains a tiny BPE on a built-in sample text, prints the first merges it learned and
encodes a sentence with them.
    python exercises/ch01/ex1_bpe.py --vocab-size 300 --encode "the cat sat"
    python exercises/ch01/ex1_bpe.py --help
Grade it:  python -m gpt_scratch grade --chapter 1
"""

import argparse
import sys
from pathlib import Path

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.args import OneLineParser, exercise_not_done, int_range  # noqa: E402

SAMPLES = {
    "story": (
        "the cat sat on the mat. the cat saw a rat. the rat ran to the hat, and the cat ran after the rat. "
        "then the cat sat in the hat and the rat sat on the mat. that is the end of the tale of the cat, "
        "the rat, the hat and the mat. the next day the cat and the rat met at the gate; the rat said that "
        "the cat was fat, and the cat said that the rat was thin. they ate the same bread and sat in the sun."
    ),
    "numbers": (
        "1 + 1 = 2. 2 + 2 = 4. 4 + 4 = 8. 8 + 8 = 16. 16 + 16 = 32. 32 + 32 = 64. 10 + 10 = 20. "
        "20 + 20 = 40. 11 + 11 = 22. 12 + 12 = 24. 100 + 100 = 200. 2 * 2 = 4. 2 * 4 = 8. 4 * 4 = 16. "
        "3 + 3 = 6. 6 + 6 = 12. 12 + 12 = 24. 24 + 24 = 48. 5 + 5 = 10. 10 + 10 = 20. 50 + 50 = 100."
    ),
}

Pair = tuple[int, int]


def get_pair_counts(ids: list[int]) -> dict[Pair, int]:
    """How often each pair of neighbouring ids occurs, in order of first appearance.

    Example: get_pair_counts([1, 2, 3, 1, 2]) -> {(1, 2): 2, (2, 3): 1, (3, 1): 1}.
    """
    raise NotImplementedError("Exercise 1.1: count each pair of neighbouring ids in get_pair_counts")


def merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of pair by new_id, scanning left to right (no overlaps).

    Examples: merge([1, 2, 3, 1, 2], (1, 2), 9) -> [9, 3, 9]; merge([5, 5, 5], (5, 5), 9) -> [9, 5].
    """
    raise NotImplementedError("Exercise 1.2: replace every occurrence of pair by new_id in merge")


def train_bpe(text: str, vocab_size: int) -> dict[Pair, int]:
    """Learn vocab_size - 256 merges from text; return {pair: new id} in the order learned.

    Start from the text's UTF-8 bytes (ids 0-255). Each round: count the pairs, take the most
    frequent one (on a tie, the one that appears first in the text: max() over get_pair_counts'
    dict does exactly that), give it the next free id (256, 257, ...) and merge it everywhere.
    Stop early if fewer than two ids are left.
    Example: train_bpe("aaab", 257) -> {(97, 97): 256}.
    """
    raise NotImplementedError("Exercise 1.3: learn vocab_size - 256 merges in train_bpe")


def encode(text: str, merges: dict[Pair, int]) -> list[int]:
    """Encode text with learned merges: start from its bytes, then merge pairs in learned order.

    Each round: among the neighbouring pairs present, take the one that was learned first (the
    lowest new id) and merge it; stop when no pair present is in merges.
    Example: with merges {(97, 97): 256, (256, 98): 257}, encode("aab") -> [257] and
    encode("aaab") -> [256, 97, 98] (the first two a's merge first, so no (256, 98) pair forms).
    """
    raise NotImplementedError("Exercise 1.4: apply the learned merges to new text in encode")


def vocab_bytes(merges: dict[Pair, int]) -> dict[int, bytes]:
    """The bytes each id stands for: the 256 single bytes, then each merge's two parts joined."""
    vocab = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in merges.items():
        vocab[new_id] = vocab[a] + vocab[b]
    return vocab


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Train a tiny BPE tokenizer with your functions on a "
                                                  "built-in sample text and encode a sentence with it.")
    parser.add_argument("--text", choices=sorted(SAMPLES), default="story", help="sample text to train on (default story)")
    parser.add_argument("--vocab-size", type=int_range(257, 512), default=300,
                        help="256 bytes + the number of merges to learn, 257 to 512 (default 300)")
    parser.add_argument("--show", type=int_range(1, 256), default=10,
                        help="how many of the first merges to print; at most --vocab-size - 256 (default 10)")
    parser.add_argument("--encode", default="the cat sat on the mat", help="text to encode with the merges")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.show > args.vocab_size - 256:
        parser.error(f"--show {args.show} is more than the {args.vocab_size - 256} merges "
                     f"that --vocab-size {args.vocab_size} learns")
    if not args.encode:
        parser.error("--encode needs at least one character of text")
    return args


def show_bpe(args: argparse.Namespace) -> None:
    text = SAMPLES[args.text]
    ids = list(text.encode("utf-8"))
    counts = get_pair_counts(ids)
    top = sorted(counts.items(), key=lambda item: -item[1])[:3]
    print(f"the {args.text!r} text has {len(ids)} bytes; most frequent pairs: "
          + ", ".join(f"{bytes(pair)!r} x{count}" for pair, count in top))
    pair = top[0][0]
    print(f"merging {bytes(pair)!r} into id 256 shortens it to {len(merge(ids, pair, 256))} ids")

    merges = train_bpe(text, args.vocab_size)
    vocab = vocab_bytes(merges)
    print(f"train_bpe learned {len(merges)} merges; the first {min(args.show, len(merges))}:")
    for (a, b), new_id in list(merges.items())[: args.show]:
        print(f"  {new_id}: {vocab[a]!r} + {vocab[b]!r} -> {vocab[new_id]!r}")

    ids = encode(args.encode, merges)
    n_bytes = len(args.encode.encode("utf-8"))
    print(f"encode({args.encode!r}) -> {ids}")
    print(f"tokens: {[vocab[i] for i in ids]}")
    print(f"{n_bytes} bytes -> {len(ids)} tokens ({n_bytes / len(ids):.2f} bytes per token)")
    round_trip = b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")
    print(f"decodes back to the same text: {round_trip == args.encode}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_bpe(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
