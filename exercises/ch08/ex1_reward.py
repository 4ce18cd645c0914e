"""Chapter 8 exercises: the reward model's three small pieces, the loss, the index and the score.

    Exercise 8.1  bradley_terry_loss  mean of -log sigmoid(r_chosen - r_rejected - margin)
    Exercise 8.2  last_token_index    where each row's last real token is, for left or right padding
    Exercise 8.3  pairwise_accuracy   the share of pairs whose chosen answer scores strictly higher

Run it: it builds a tiny random GPT with a zero-initialised scalar head (gpt_scratch.heads),
makes toy preference pairs of random token sequences (the chosen one always ends with token
7, the rejected one with token 3), pads them, reads each row's score at the last real token
your last_token_index finds, shows that the untrained model's loss is exactly ln 2 and its
accuracy 0, trains a few AdamW steps with your loss, measures held-out pairs, and compares
your three functions with gpt_scratch.reward.
    python exercises/ch08/ex1_reward.py --padding left --margin 1
    python exercises/ch08/ex1_reward.py --help
Grade it:  python -m gpt_scratch grade --chapter 8
"""

import argparse
import math
import random
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch import reward  # noqa: E402
from gpt_scratch.args import OneLineParser, exercise_not_done, float_range, int_range, non_negative_int  # noqa: E402
from gpt_scratch.data import pad_batch  # noqa: E402
from gpt_scratch.heads import GPTWithHead  # noqa: E402
from gpt_scratch.model import GPT, GPTConfig  # noqa: E402

VOCAB_SIZE, BLOCK_SIZE, N_LAYER, N_HEAD = 64, 16, 2, 2
PAD_ID, GOOD_END, BAD_END = 0, 7, 3  # the hidden rule: a chosen sequence ends with 7, a rejected one with 3
N_HELD_OUT = 64  # pairs never trained on, to see whether the rule was learned or the pairs memorised


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """The Bradley-Terry loss: the mean over pairs of -log sigmoid(r_chosen - r_rejected - margin).

    r_chosen and r_rejected are (N,) scores of the two answers of N pairs; return a scalar tensor
    (0-dimensional) that gradients flow through. sigmoid(r_chosen - r_rejected) is the model's
    probability that the chosen answer wins; the loss is its negative log. A margin > 0 asks for
    more: the loss stays high until r_chosen is ahead by more than the margin.
    Use F.logsigmoid(x), not torch.log(torch.sigmoid(x)): for x = -200, sigmoid rounds to 0 and
    its log is -inf, while logsigmoid computes -200 directly (numerically stable).
    Example: r_chosen = r_rejected = [0.] -> -log(1/2) = ln 2 = 0.6931 (a new reward model, whose
    head is zero, starts exactly here); r_chosen [2.], r_rejected [0.] -> -log sigmoid(2) = 0.1269;
    the same with margin 2 -> ln 2 again.
    """
    raise NotImplementedError("Exercise 8.1: return the mean loss over the pairs, a scalar tensor gradients flow through "
                              "(ch08.ipynb, section 4: Bradley-Terry on toy pairs)")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position of each row's last real token: a LongTensor (B,) from a 0/1 mask (B, T).

    The reward is read there: the last real token is the one position whose hidden state has
    read the whole sequence. Work for either padding side. Reading the last column (index -1)
    is right only for left padding: with right padding, every row shorter than the longest
    ends in padding, so column -1 would score a pad token, not the answer.
    Example: [[1, 1, 1, 0],        right padding: the last real token is at 2
              [0, 1, 1, 1]] -> [2, 3]  left padding: at 3 (the last column)
    A row with a single real token, [1, 0, 0, 0], gives 0. Hint: multiply the mask by the
    positions 0, 1, ..., T-1 and take the largest per row (or the last 1 found by argmax).
    """
    raise NotImplementedError("Exercise 8.2: return a LongTensor (B,): each row's last real position (ch08.ipynb, section 6)")


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The share of pairs whose chosen answer scores strictly higher, as a Python float in [0, 1].

    A tie counts as wrong: the model has not told the answers apart. So a new reward model,
    whose zero head scores every answer 0, has accuracy 0.0, not 0.5.
    Example: r_chosen [1., 2., 3.], r_rejected [0., 2., 4.] -> 1/3 (the tie 2 vs 2 is wrong).
    """
    raise NotImplementedError("Exercise 8.3: return a Python float in [0, 1], ties counted as wrong (ch08.ipynb, section 4)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Train a tiny reward model with your Bradley-Terry loss on toy "
                                                  "preference pairs (chosen ends with token 7, rejected with 3), "
                                                  "scored at the last real token your last_token_index finds.")
    parser.add_argument("--pairs", type=int_range(2, 256), default=16,
                        help="training pairs, 2 to 256 (default 16)")
    parser.add_argument("--steps", type=int_range(1, 100), default=6,
                        help="AdamW steps, each on all training pairs, 1 to 100 (default 6)")
    parser.add_argument("--lr", type=float_range(0.0, 1.0, include_low=False), default=1e-2,
                        help="AdamW learning rate, >0 to 1 (default 0.01)")
    parser.add_argument("--margin", type=float_range(0.0, 10.0), default=0.0,
                        help="the loss asks for r_chosen - r_rejected > margin, 0 to 10 (default 0)")
    parser.add_argument("--padding", choices=("left", "right"), default="right",
                        help="which side of the shorter sequences gets pad tokens (default right)")
    parser.add_argument("--min-len", type=int_range(1, BLOCK_SIZE), default=1,
                        help=f"shortest sequence in tokens, its end token included, 1 to {BLOCK_SIZE} (default 1)")
    parser.add_argument("--max-len", type=int_range(2, BLOCK_SIZE), default=8,
                        help=f"longest sequence in tokens, 2 to {BLOCK_SIZE} (the model's context) (default 8)")
    parser.add_argument("--n-embd", type=int_range(2, 64), default=16,
                        help=f"embedding width, even (the model has {N_HEAD} heads), 2 to 64 (default 16)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the weights and the pairs (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.n_embd % N_HEAD != 0:
        parser.error(f"--n-embd {args.n_embd} must be even: the model has {N_HEAD} attention heads")
    if args.min_len >= args.max_len:
        parser.error(f"--min-len {args.min_len} must be below --max-len {args.max_len}: sequences of different "
                     f"lengths are what make the batch need padding")
    return args


def make_pairs(n: int, min_len: int, max_len: int, rng: random.Random) -> list[tuple[list[int], list[int]]]:
    """n (chosen, rejected) pairs of random token sequences of random lengths; chosen ends with
    GOOD_END, rejected with BAD_END. Everything before the end token is noise the model must ignore."""
    def sequence(end: int) -> list[int]:
        return [rng.randrange(1, VOCAB_SIZE) for _ in range(rng.randint(min_len, max_len) - 1)] + [end]

    return [(sequence(GOOD_END), sequence(BAD_END)) for _ in range(n)]


def batch_of(pairs: list[tuple[list[int], list[int]]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """ids and mask (2N, T): the N chosen sequences, then the N rejected ones, padded on one side."""
    return pad_batch([c for c, _ in pairs] + [r for _, r in pairs], PAD_ID, side=side)


def scores_of(model: GPTWithHead, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected): the head's number at each row's last real token, found by your last_token_index."""
    per_position = model(ids, mask)  # (2N, T): the head read at every position
    scores = per_position[torch.arange(ids.shape[0]), last_token_index(mask)]
    return scores.chunk(2)


def show_row(name: str, ids: torch.Tensor, mask: torch.Tensor, index: int) -> None:
    where = "" if mask[index] else "  <- PADDING: the score would be read at a pad token"
    print(f"  {name:12} ids {' '.join(f'{t:2}' for t in ids.tolist())}   mask {' '.join(map(str, mask.tolist()))}   "
          f"last real token at {index} (id {ids[index].item()}){where}")


def show_reward(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=VOCAB_SIZE, block_size=BLOCK_SIZE, n_layer=N_LAYER, n_head=N_HEAD,
                       n_embd=args.n_embd)
    model = GPTWithHead(GPT(config), "reward")
    rng = random.Random(args.seed + 1)
    pairs = make_pairs(args.pairs, args.min_len, args.max_len, rng)
    held_out = make_pairs(N_HELD_OUT, args.min_len, args.max_len, rng)
    ids, mask = batch_of(pairs, args.padding)
    print(f"a {N_LAYER}-block GPT (n_embd {config.n_embd}) with a zero-initialised reward head, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters; {args.pairs} training pairs of "
          f"{args.min_len} to {args.max_len} tokens (chosen ends with {GOOD_END}, rejected with {BAD_END})")

    index = last_token_index(mask)
    n_padded = int((mask[:, -1] == 0).sum())
    print(f"1. batch {tuple(ids.shape)}, {args.padding} padding with id {PAD_ID}: the last column is padding in "
          f"{n_padded} of {ids.shape[0]} rows; your last_token_index:")
    show_row("chosen[0]", ids[0], mask[0], int(index[0]))
    show_row("rejected[0]", ids[args.pairs], mask[args.pairs], int(index[args.pairs]))

    r_chosen, r_rejected = scores_of(model, ids, mask)
    loss, accuracy = bradley_terry_loss(r_chosen, r_rejected, args.margin), pairwise_accuracy(r_chosen, r_rejected)
    expected = math.log1p(math.exp(args.margin))  # -log sigmoid(0 - margin) = ln(1 + e^margin)
    right = abs(loss.item() - expected) < 1e-5 and accuracy == 0.0
    print(f"2. zero head: every score is 0, so the loss is ln(1 + e^margin) = {expected:.4f} "
          f"({'ln 2' if args.margin == 0 else f'margin {args.margin:g}'}) and every pair a tie: yours say loss "
          f"{loss.item():.4f}, accuracy {accuracy:.3f} -> {'right' if right else 'WRONG'}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    print(f"3. {args.steps} AdamW steps (lr {args.lr:g}) with your loss, all {args.pairs} pairs per step:")
    print("   step    loss  accuracy  mean r_chosen - r_rejected")
    for step in range(args.steps + 1):
        r_chosen, r_rejected = scores_of(model, ids, mask)
        loss = bradley_terry_loss(r_chosen, r_rejected, args.margin)
        print(f"   {step:4}  {loss.item():.4f}  {pairwise_accuracy(r_chosen, r_rejected):8.3f}  "
              f"{(r_chosen - r_rejected).mean().item():+.4f}")
        if step < args.steps:  # the last row shows the trained model
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    with torch.no_grad():
        test_ids, test_mask = batch_of(held_out, args.padding)
        t_chosen, t_rejected = scores_of(model, test_ids, test_mask)
    print(f"4. {N_HELD_OUT} held-out pairs (never trained on): accuracy {pairwise_accuracy(t_chosen, t_rejected):.3f}, "
          f"loss {bradley_terry_loss(t_chosen, t_rejected, args.margin).item():.4f}")

    other_ids, other_mask = batch_of(held_out, "left" if args.padding == "right" else "right")
    index_ok = all(torch.equal(last_token_index(m), reward.last_token_index(m)) for m in (mask, test_mask, other_mask))
    loss_diff = abs(bradley_terry_loss(t_chosen, t_rejected, args.margin).item()
                    - reward.bradley_terry_loss(t_chosen, t_rejected, args.margin).item())
    accuracy_ok = all(pairwise_accuracy(a, b) == reward.pairwise_accuracy(a, b)
                      for a, b in ((t_chosen, t_rejected), (torch.zeros(3), torch.zeros(3))))
    print(f"5. against gpt_scratch.reward: last_token_index (left and right padding) "
          f"{'match' if index_ok else 'DIFFERENT'}; bradley_terry_loss |difference| {loss_diff:.1e} "
          f"{'match' if loss_diff < 1e-6 else 'DIFFERENT'}; "
          f"pairwise_accuracy {'match' if accuracy_ok else 'DIFFERENT'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_reward(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
