"""Chapter 6 exercises: freeze part of a GPT, count what still trains, and prove the rest stood still.

    Exercise 6.1  freeze_all_then_unfreeze  freeze every parameter first, then unfreeze what the names select
    Exercise 6.2  count_trainable           (trainable, total) parameters, a shared (tied) tensor counted once
    Exercise 6.3  last_blocks_names         the names that strategy last_blocks unfreezes
    Exercise 6.4  expected_last_blocks      how many parameters last_blocks trains, from the config alone
    Exercise 6.5  changed_parameters        which tensors an optimizer step changed, compared bit for bit

Run it: it builds a tiny random GPT whose requires_grad flags start in a random mix (as if some
other code had frozen and unfrozen parts of it before), applies a freezing strategy with your
functions, prints the trainable-parameter table, checks your flags and counts against
gpt_scratch.freeze, then trains a few AdamW steps and shows that the frozen tensors are bitwise
unchanged.
    python exercises/ch06/ex1_freezing.py --strategy last_blocks --trainable-blocks 2 --n-layer 3
    python exercises/ch06/ex1_freezing.py --strategy head
    python exercises/ch06/ex1_freezing.py --help
Grade it:  python -m gpt_scratch grade --chapter 6
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn as nn

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.args import OneLineParser, exercise_not_done, float_range, int_range, non_negative_int  # noqa: E402
from gpt_scratch.freeze import (STRATEGIES, apply_freezing, count_parameters, expected_trainable,  # noqa: E402
                                head_is_tied, trainable_table)
from gpt_scratch.model import GPT, GPTConfig, lm_loss  # noqa: E402

VOCAB_SIZE, BLOCK_SIZE, N_HEAD = 64, 16, 2


def freeze_all_then_unfreeze(model: nn.Module, names: list[str]) -> None:
    """Freeze every parameter of model, then unfreeze exactly the parameters that names select.

    A name selects a parameter when it is the parameter's full name, or a prefix of it that ends
    at a dot: "transformer.h.1" selects every parameter of block 1 ("transformer.h.1.attn.c_attn.weight",
    ...), "transformer.h.1.attn.c_attn.bias" that one bias, "lm_head" the head's weight; but
    "transformer.h.1" does not select "transformer.h.10.ln_1.weight".
    Freeze first: whatever requires_grad flags the model had before, afterwards exactly the
    selected parameters train. (Only setting requires_grad=False on the layers to freeze leaves
    anything that was trainable before trainable.)
    Mind the tied head: model.named_parameters() lists a shared tensor once, under its first name
    (transformer.wte.weight), so "lm_head" would select nothing there;
    model.named_parameters(remove_duplicate=False) lists every name of every tensor.
    Check every name before touching the model: a name that selects nothing (a typo) raises
    ValueError and leaves every flag as it was.
    Example: names ["transformer.ln_f"] -> only ln_f's weight and bias have requires_grad=True.
    """
    raise NotImplementedError("Exercise 6.1: freeze everything, then unfreeze what the names select")


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters of model; a tensor that two modules share counts once.

    With a tied head, lm_head.weight and transformer.wte.weight are one tensor: counting it twice
    would report more parameters than the model has (and more than the optimizer updates).
    Example: GPT(GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=2)) with
    everything trainable -> (106, 106).
    """
    raise NotImplementedError("Exercise 6.2: count trainable and total parameters (a shared tensor once)")


def last_blocks_names(n_layer: int, n: int) -> list[str]:
    """The names that strategy last_blocks unfreezes: the last n blocks, the final norm, the head.

    ["transformer.h.<i>" for the last n of n_layer blocks, in order] + ["transformer.ln_f", "lm_head"].
    Careful with n = 0: a slice like blocks[-0:] is the *whole* list, not an empty one.
    Raise ValueError unless 0 <= n <= n_layer.
    Example: last_blocks_names(4, 2) -> ["transformer.h.2", "transformer.h.3", "transformer.ln_f", "lm_head"].
    """
    raise NotImplementedError("Exercise 6.3: name the last n blocks, the final norm and the head")


def expected_last_blocks(config: GPTConfig, n: int) -> int:
    """How many parameters strategy last_blocks with n blocks trains, from the config alone.

    n blocks (each: two LayerNorms, c_attn C x 3C, attention c_proj C x C, mlp c_fc C x 4C,
    mlp c_proj 4C x C, with a bias for each Linear and LayerNorm when config.bias), the final
    LayerNorm, and the head's vocab_size x C matrix (no bias). Tied or not, the head's matrix
    trains once: tied, it *is* the token embedding, so that one matrix moves.
    Example: vocab 10, block 4, 1 layer, C=2, n=1 -> 74 (the block) + 4 (ln_f) + 20 (head) = 98.
    """
    raise NotImplementedError("Exercise 6.4: count what last_blocks trains, from the config alone")


def changed_parameters(before: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Names of model's parameters whose values differ from before[name], bit for bit, in model order.

    before maps every name of model.named_parameters() to a copy of that tensor taken earlier,
    e.g. {name: p.detach().clone() for name, p in model.named_parameters()}. Compare exactly
    (torch.equal), not with a tolerance: "frozen" means not one bit moved, and a tiny update of
    a frozen layer (weight decay, a stray gradient) is exactly the bug to catch.
    Example: after an optimizer step with only the head trainable -> ["transformer.wte.weight"]
    (the tied head's one name in named_parameters()).
    """
    raise NotImplementedError("Exercise 6.5: name the parameters whose values moved, bit for bit")


def strategy_names(model: GPT, strategy: str, trainable_blocks: int | None) -> list[str]:
    """The parameter / module names each strategy of gpt_scratch.freeze unfreezes, for freeze_all_then_unfreeze."""
    if strategy == "full":
        return ["transformer", "lm_head"]
    if strategy == "last_blocks":
        return last_blocks_names(model.config.n_layer, trainable_blocks)
    if strategy == "head":
        return ["lm_head"]  # tied: the token embedding's matrix
    if strategy == "norms_biases":
        return [f"{name}.bias" if isinstance(module, nn.Linear) else name for name, module in model.named_modules()
                if isinstance(module, nn.LayerNorm) or (isinstance(module, nn.Linear) and module.bias is not None)]
    if strategy == "embeddings_frozen":  # a tied head is the token embedding: it stays frozen with it
        return ["transformer.h", "transformer.ln_f"] + ([] if head_is_tied(model) else ["lm_head"])
    raise AssertionError(f"no names for strategy {strategy!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Freeze a tiny random GPT with your functions, print its "
                                                  "trainable-parameter table, check it against gpt_scratch.freeze "
                                                  "and show that training leaves the frozen tensors bitwise unchanged.")
    parser.add_argument("--strategy", choices=STRATEGIES, default="last_blocks",
                        help="what stays trainable: full (everything), last_blocks (the last --trainable-blocks "
                             "blocks + final norm + head), head (the output head only), norms_biases (LayerNorms "
                             "and biases), embeddings_frozen (all but the embeddings) (default last_blocks)")
    parser.add_argument("--trainable-blocks", type=non_negative_int, default=None,
                        help="with --strategy last_blocks only: how many of the last blocks train, "
                             "0 to --n-layer (default 1)")
    parser.add_argument("--n-layer", type=int_range(1, 8), default=2, help="transformer blocks, 1 to 8 (default 2)")
    parser.add_argument("--n-embd", type=int_range(2, 64), default=16,
                        help=f"embedding width, even (the model has {N_HEAD} heads), 2 to 64 (default 16)")
    parser.add_argument("--steps", type=int_range(1, 100), default=3,
                        help="AdamW steps on random tokens after freezing, 1 to 100 (default 3)")
    parser.add_argument("--lr", type=float_range(1e-6, 1.0), default=1e-2, help="AdamW learning rate (default 0.01)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the weights, the random starting flags and the tokens (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.trainable_blocks is not None and args.strategy != "last_blocks":
        parser.error(f"--trainable-blocks only applies to --strategy last_blocks, not --strategy {args.strategy}")
    if args.trainable_blocks is not None and args.trainable_blocks > args.n_layer:
        parser.error(f"--trainable-blocks {args.trainable_blocks} is more than the model's --n-layer {args.n_layer}; "
                     f"use 0 to {args.n_layer}")
    if args.n_embd % N_HEAD != 0:
        parser.error(f"--n-embd {args.n_embd} must be even: the model has {N_HEAD} attention heads")
    if args.strategy == "last_blocks" and args.trainable_blocks is None:
        args.trainable_blocks = 1
    return args


def verdict(ok: bool) -> str:
    return "match" if ok else "DIFFERENT"


def show_freezing(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=VOCAB_SIZE, block_size=BLOCK_SIZE, n_layer=args.n_layer, n_head=N_HEAD,
                       n_embd=args.n_embd)
    model = GPT(config)
    # Start from a random mix of flags, as if other code had frozen and unfrozen parts already.
    flags = torch.randint(0, 2, (len(list(model.parameters())),), generator=torch.Generator().manual_seed(args.seed))
    for p, flag in zip(model.parameters(), flags.tolist()):
        p.requires_grad_(bool(flag))
    print(f"a {config.n_layer}-block GPT, n_embd {config.n_embd}, {model.num_parameters():,} parameters; "
          f"before freezing {int(flags.sum())} of {len(flags)} tensors are trainable (a random mix)")

    blocks = args.trainable_blocks
    names = strategy_names(model, args.strategy, blocks)
    freeze_all_then_unfreeze(model, names)
    shown = names if len(names) <= 6 else names[:5] + [f"... ({len(names) - 5} more)"]
    print(f"strategy {args.strategy}" + (f" ({blocks} blocks)" if blocks is not None else "") + f": unfreeze {shown}")
    print(trainable_table(model))

    reference = GPT(config)
    apply_freezing(reference, args.strategy, blocks)
    wrong = [name for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters())
             if p.requires_grad != q.requires_grad]
    print(f"requires_grad flags vs gpt_scratch.freeze.apply_freezing: "
          + ("the same" if not wrong else f"DIFFERENT for {len(wrong)} tensors, e.g. {wrong[:3]}"))
    trainable, total = count_trainable(model)
    reference_counts, expected = count_parameters(model), expected_trainable(config, args.strategy, blocks)
    print(f"count_trainable: {trainable:,} trainable of {total:,} ({trainable / total:.1%}); "
          f"freeze.count_parameters {reference_counts} -> {verdict((trainable, total) == reference_counts)}; "
          f"freeze.expected_trainable {expected:,} -> {verdict(trainable == expected)}")
    if args.strategy == "last_blocks":
        formula = expected_last_blocks(config, blocks)
        print(f"expected_last_blocks(config, {blocks}) = {formula:,} -> {verdict(formula == expected)}")

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    data = torch.randint(0, VOCAB_SIZE, (4, BLOCK_SIZE + 1), generator=torch.Generator().manual_seed(args.seed + 1))
    losses = []
    for _ in range(args.steps):
        loss = lm_loss(model(data[:, :-1]), data[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    print(f"{args.steps} AdamW steps (lr {args.lr:g}) on random tokens, loss: " + " ".join(f"{x:.4f}" for x in losses))
    changed = changed_parameters(before, model)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    moved_frozen = [name for name in frozen if name in changed]
    n_trainable = sum(p.requires_grad for p in model.parameters())
    print(f"tensors changed: {len(changed)} of {n_trainable} trainable; frozen tensors changed: "
          + (f"{len(moved_frozen)} of {len(frozen)}: {moved_frozen[:3]} (BUG)" if moved_frozen
             else f"none of {len(frozen)} (bitwise equal)"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_freezing(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
