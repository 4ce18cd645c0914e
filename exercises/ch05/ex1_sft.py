"""Chapter 5 exercises: from an instruction task to the tensors that fine-tuning trains on.

    Exercise 5.1  alpaca_prompt        the Alpaca prompt layout, character for character
    Exercise 5.2  encode_example       prompt ids + answer ids + exactly one end-of-text
    Exercise 5.3  collate              pad a batch; targets -100 on the prompt and on padding (by length!)
    Exercise 5.4  accuracy_by_family   the judge's verdicts, summed up per task family

Run it: it trains a small BPE tokenizer on the embedded world's corpus, draws instruction tasks,
and shows your functions at work: one example's prompt, its tokens with the answer marked, a
padded batch with its loss targets, and the per-family accuracy of two toy "models".
    python exercises/ch05/ex1_sft.py --family reverse --n-examples 3 --row 2
    python exercises/ch05/ex1_sft.py --help
Grade it:  python -m gpt_scratch grade --chapter 5
"""

import argparse
import sys
from pathlib import Path

import torch

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.args import OneLineParser, exercise_not_done, int_range, non_negative_int  # noqa: E402
from gpt_scratch.tokenizer import EOT, Tokenizer  # noqa: E402
from gpt_scratch.world import FAMILIES, build_world, generate_corpus, is_correct, make_tasks  # noqa: E402

IGNORE = -100  # a target with this value adds nothing to the loss (cross-entropy's ignore_index)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt: the text the model reads before it writes its answer.

    Three parts, each a header line and its text, separated by a blank line; the Input part
    only when input_text is not empty; the answer will follow "### Response:\\n" directly.
    Example: alpaca_prompt("Reverse the letters.", "c a t") ->
        "### Instruction:\\nReverse the letters.\\n\\n### Input:\\nc a t\\n\\n### Response:\\n"
    and alpaca_prompt("What is 3 plus 4?") ->
        "### Instruction:\\nWhat is 3 plus 4?\\n\\n### Response:\\n"
    """
    raise NotImplementedError("Exercise 5.1: build the Alpaca prompt text in alpaca_prompt")


def encode_example(tokenizer: Tokenizer, record: dict) -> tuple[list[int], list[bool]]:
    """Token ids of an Alpaca record {"instruction", "input", "output"}, and which ids are answer.

    ids = encode(alpaca_prompt(...)) + encode(output) + [tokenizer.eot_id]: encode the prompt
    and the output separately (so we know where the answer starts), then add the end-of-text id
    *exactly once*: if the output text already ends with "<|endoftext|>" (EOT), cut that text off
    first (encode() would read it as plain characters, not as the token). trained is False for
    every prompt id and True for every answer id and for the end-of-text id, which the model
    must learn to write so that it stops.
    Example (ids depend on the tokenizer): prompt ids [a, b, c], output ids [d, e] ->
        ids [a, b, c, d, e, eot], trained [False, False, False, True, True, True].
    """
    raise NotImplementedError("Exercise 5.2: encode prompt + answer + exactly one end-of-text in encode_example")


def collate(batch: list[tuple[list[int], list[bool]]], pad_id: int,
            mask_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs x and targets y (both (B, T), dtype long) for a batch of (ids, trained) examples.

    Each example gives x_row = ids[:-1] and y_row = ids[1:] (the next token at each position).
    Pad every row on the right to T = the longest row: x with pad_id, y with IGNORE. With
    mask_prompt, also set y to IGNORE where the *target* is a prompt token (trained[1:] is False),
    so that only answer tokens (and their end-of-text) count in the loss.
    The padding must be found by each row's *length*, not by comparing ids with pad_id: the pad
    id is usually the end-of-text id, and the real end-of-text is a target the model must learn.
    Example: batch [([1, 2, 3, 9], [F, F, T, T]), ([1, 5, 9], [F, T, T])], pad_id 9 ->
        x [[1, 2, 3], [1, 5, 9]], y [[-100, 3, 9], [5, 9, -100]].
    """
    raise NotImplementedError("Exercise 5.3: pad the batch and set -100 targets (prompt, and padding by length) in collate")


def accuracy_by_family(examples: list[dict], responses: list[str], is_correct=is_correct) -> dict[str, float]:
    """The share of correct responses for each task family, and over all examples as "(all)".

    examples[i] (a task with "family" and "answer") was answered with responses[i];
    is_correct(example, response) is the judge's verdict. Families appear in sorted order,
    "(all)" last; a family without examples does not appear.
    Example: families [add, add, facts], verdicts [True, False, True] ->
        {"add": 0.5, "facts": 1.0, "(all)": 0.6666...}
    """
    raise NotImplementedError("Exercise 5.4: sum the judge's verdicts per family in accuracy_by_family")


def compact(values: list[int]) -> str:
    """A list with runs of 3 or more equal values written once: compact([7, -100, -100, -100, 5]) -> '[7, -100 x3, 5]'."""
    parts, i = [], 0
    while i < len(values):
        j = i
        while j < len(values) and values[j] == values[i]:
            j += 1
        parts += [f"{values[i]} x{j - i}"] if j - i >= 3 else [str(v) for v in values[i:j]]
        i = j
    return "[" + ", ".join(parts) + "]"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Turn the embedded world's instruction tasks into training "
                                                  "tensors with your template, end-of-text and collate functions, "
                                                  "then score two toy answerers per task family.")
    parser.add_argument("--family", choices=["all", *FAMILIES], default="all",
                        help="task family to draw the demo batch from, or all (default all)")
    parser.add_argument("--n-examples", type=int_range(1, 8), default=3,
                        help="examples in the demo batch, 1 to 8 (default 3)")
    parser.add_argument("--row", type=non_negative_int, default=0,
                        help="which example of the batch to show token by token; below --n-examples (default 0)")
    parser.add_argument("--loss-on", choices=["answer", "all"], default="answer",
                        help="targets kept in the loss: the answer tokens only (prompt masked, default) or all")
    parser.add_argument("--vocab-size", type=int_range(300, 4096), default=512,
                        help="BPE vocabulary of the tokenizer trained here, 300 to 4096 (default 512)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the world, its corpus and the tasks (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.row >= args.n_examples:
        parser.error(f"--row {args.row} must be below --n-examples {args.n_examples} (rows count from 0)")
    return args


def show_sft_data(args: argparse.Namespace) -> None:
    world = build_world(args.seed)
    tokenizer = Tokenizer.train(generate_corpus(world, 200_000, args.seed), args.vocab_size)
    tasks = make_tasks(world, args.seed, n_train=200, n_val=10, n_test=100)
    pool = [t for t in tasks["train"] if args.family in ("all", t["family"])]
    batch_records = pool[: args.n_examples]
    record = batch_records[args.row]
    print(f"tokenizer: {tokenizer.n_vocab} tokens, end-of-text id {tokenizer.eot_id}; "
          f"{len(pool)} training tasks of family {args.family}")

    prompt = alpaca_prompt(record["instruction"], record["input"])
    print(f"\n[5.1] the prompt of row {args.row} ({record['family']}), then its output:")
    print(prompt + record["output"])

    ids, trained = encode_example(tokenizer, record)
    print(f"\n[5.2] {len(ids)} ids, {sum(trained)} of them answer (trained); "
          f"end-of-text ids: {ids.count(tokenizer.eot_id)} (must be 1, the last)")
    for token_id, is_answer in list(zip(ids, trained))[-(sum(trained) + 3):]:  # the prompt's end, then the answer
        print(f"  {token_id:5d} {tokenizer.decode([token_id])!r:>18}  {'answer' if is_answer else 'prompt'}")
    again = encode_example(tokenizer, {**record, "output": record["output"] + EOT})
    print(f"  an output that already ends with {EOT!r} gives the same ids: {again == (ids, trained)}")

    encoded = [encode_example(tokenizer, r) for r in batch_records]
    mask_prompt = args.loss_on == "answer"
    x, y = collate(encoded, tokenizer.eot_id, mask_prompt)
    print(f"\n[5.3] collate of {len(encoded)} examples (lengths {[len(e[0]) for e in encoded]}), "
          f"pad id = end-of-text id {tokenizer.eot_id}: x {tuple(x.shape)}, y {tuple(y.shape)}")
    print(f"  x[{args.row}] = {compact(x[args.row].tolist())}")
    print(f"  y[{args.row}] = {compact(y[args.row].tolist())}")
    kept = y != IGNORE
    print(f"  targets in the loss: {int(kept.sum())} of {y.numel()} ({args.loss_on} tokens); "
          f"real end-of-text targets kept: {int((y == tokenizer.eot_id).sum())} of {len(encoded)} rows")

    test = tasks["test"]
    answerers = {"always 'yes'": ["yes"] * len(test),
                 "the truth, every other one wrong": [t["output"] if i % 2 else "I do not know." for i, t in
                                                      enumerate(test)]}
    print(f"\n[5.4] accuracy per family on {len(test)} test tasks")
    tables = {name: accuracy_by_family(test, responses) for name, responses in answerers.items()}
    families = list(next(iter(tables.values())))
    print(f"  {'family':14}" + "".join(f"{name:>34}" for name in tables))
    for family in families:
        print(f"  {family:14}" + "".join(f"{table.get(family, 0.0):>34.1%}" for table in tables.values()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_sft_data(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
