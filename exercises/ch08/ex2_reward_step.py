"""Chapter 8 exercises: an answer's log-probability and a reward model's training step, on a GPT.

    Exercise 8.4  answer_logprobs    log p(answer | prompt) of each row: per answer token, and summed
    Exercise 8.5  reward_scores      each row's score: the head at its last real token (+ w * log p(answer))
    Exercise 8.6  reward_model_step  one Bradley-Terry training step on a batch of preference pairs

Run it: a tiny GPT with random weights and a toy task in a vocabulary of 13 words (the digits, "+",
"=" and <eot>). Each prompt asks for a sum ("3 + 4 =" or "1 + 2 + 5 ="); the chosen answer is the
right sum, the rejected one a wrong sum, each followed by <eot>, which is also the pad id. The script
shows which targets your answer_logprobs scores in one row and compares it with
gpt_scratch.logprobs; then a reward model (the GPT with a zero-initialised scalar head, gpt_scratch.heads)
scores the pairs with your reward_scores, and --steps of your reward_model_step train it; the
same steps of the package's pair_loss on a copy must end with the same weights.
    python exercises/ch08/ex2_reward_step.py --score head --body trained
    python exercises/ch08/ex2_reward_step.py --help
Grade it:  python -m gpt_scratch grade --chapter 8
"""

import argparse
import copy
import random
import sys
from pathlib import Path

import torch

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch import reward  # noqa: E402
from gpt_scratch.args import OneLineParser, exercise_not_done, float_range, int_range, non_negative_int  # noqa: E402
from gpt_scratch.data import Encoded, collate  # noqa: E402
from gpt_scratch.heads import GPTWithHead  # noqa: E402
from gpt_scratch.logprobs import completion_logprobs  # noqa: E402
from gpt_scratch.model import GPT, GPTConfig  # noqa: E402

WORDS = ["<eot>"] + [str(digit) for digit in range(10)] + ["+", "="]
EOT = PAD_ID = 0  # the end-of-text id is also the pad id, as in the course's batches
VOCAB_SIZE, BLOCK_SIZE, N_LAYER, N_HEAD, N_EMBD = 16, 16, 2, 2, 16


def answer_logprobs(model: GPT, ids: torch.Tensor, prompt_lengths: torch.Tensor,
                    lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per_token (B, T - 1), total (B,)): the log-probabilities of each row's answer given its prompt.

    ids (B, T), long: row b holds prompt_lengths[b] prompt tokens, then the answer, whose last token
    is the end-of-text; that makes lengths[b] real tokens, and the rest of the row, up to T, is
    padding with the pad id, which is the end-of-text id. model(ids) gives next-token logits
    (B, T, vocab). per_token[b, t] is log p(ids[b, t + 1] | ids[b, :t + 1]) where ids[b, t + 1] is
    one of the row's answer tokens (its end-of-text included), and exactly 0 at every other t (the
    prompt's tokens and the padding are not scored); total is per_token summed over t. Both are
    float32 on ids' device and keep their gradient (the training steps of chapters 8 to 10
    backpropagate through them); do not change ids.
    The course's version is gpt_scratch.logprobs.completion_logprobs, which takes (x, y) from
    data.collate: yours must give the same numbers, from ids and the two lengths.
    Taught in chapter 8's notebook, section "Sequence log-probabilities, built by hand".
    Example: ids [[5, 6, 7, 0, 0]] with prompt_lengths [2] and lengths [4] (prompt 5 6, answer 7 <eot>,
    one pad): per_token is 0 at t = 0 and t = 3, and holds log p(7 | 5 6) at t = 1 and
    log p(<eot> | 5 6 7) at t = 2.
    """
    raise NotImplementedError("Exercise 8.4: return (per_token, total): each answer token's log-probability, their sum")


def reward_scores(model: GPTWithHead, ids: torch.Tensor, prompt_lengths: torch.Tensor,
                  lengths: torch.Tensor) -> torch.Tensor:
    """The reward model's score of each row (B,), float32, with gradient.

    ids, prompt_lengths, lengths as in answer_logprobs (right padding). model is a GPTWithHead
    (gpt_scratch.heads): model.gpt is the GPT, model.gpt.body(ids, attention_mask) its hidden
    states (B, T, n_embd) (attention_mask (B, T): 1 on real tokens, 0 on padding), and
    model.read_head(hidden) the head's number at every position (B, T). A row's score is the head's
    number at the row's last real token. If the head has a learned log-p weight
    (model.head.logprob_weight is not None: the course's default reward model), the score also
    adds that weight times the row's answer log-probability under model.gpt (your answer_logprobs).
    The course's version is gpt_scratch.reward.reward_scores (which takes an attention mask and an
    answer mask instead of the lengths).
    Taught in chapter 8's notebook, section "Where to read the score: the last *real* token" (and,
    for the log-p term, the docstring of gpt_scratch/reward.py).
    """
    raise NotImplementedError("Exercise 8.5: return each row's reward-model score, a tensor (B,)")


def reward_model_step(model: GPTWithHead, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
                      prompt_lengths: torch.Tensor, lengths: torch.Tensor, margin: float = 0.0) -> float:
    """One training step of a reward model on a batch of N preference pairs; returns the loss before the step.

    ids (2N, T), prompt_lengths and lengths (2N,) as in answer_logprobs: rows 0 to N - 1 hold the
    chosen answers, rows N to 2N - 1 the rejected answers of the same pairs, in the same order.
    optimizer holds the model's trainable parameters (a frozen body is simply not in it). The step
    scores every row (your reward_scores), takes the Bradley-Terry loss of the pairs with the
    margin (gpt_scratch.reward.bradley_terry_loss, your exercise 8.1), and makes one optimizer step
    from that loss's gradient alone (no gradient left over from an earlier step). Return the loss
    as a Python float. The package does the same step with reward.pair_loss in train.py's loop.
    Taught in chapter 8's notebook, sections "Bradley-Terry on toy pairs" and "Reward models on the
    real pairs".
    """
    raise NotImplementedError("Exercise 8.6: make one Bradley-Terry training step and return its loss as a float")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Your answer log-probabilities, reward scores and reward-model "
                                                  "training steps on a tiny GPT and toy sum questions, each "
                                                  "compared with gpt_scratch.")
    parser.add_argument("--pairs", type=int_range(2, 64), default=8,
                        help="preference pairs in the batch, 2 to 64 (default 8)")
    parser.add_argument("--steps", type=int_range(1, 50), default=5,
                        help="training steps of your reward_model_step, 1 to 50 (default 5)")
    parser.add_argument("--lr", type=float_range(0.0, 10.0, include_low=False), default=1.0,
                        help="learning rate of plain gradient descent, >0 to 10 (default 1)")
    parser.add_argument("--score", choices=reward.SCORES, default="head+logprob",
                        help="head+logprob: the head plus a learned weight times log p(answer | prompt), the "
                             "course's default; head: the head alone (default head+logprob)")
    parser.add_argument("--body", choices=reward.BODIES, default="frozen",
                        help="frozen: only the head (and the log-p weight) learn, the course's default; trained: "
                             "the whole GPT learns too (default frozen)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the weights and the questions (default 0)")
    return parser


def digits(number: int) -> list[int]:
    return [WORDS.index(d) for d in str(number)]


def make_pairs(n: int, rng: random.Random) -> list[tuple[Encoded, Encoded]]:
    """n (chosen, rejected) pairs: a sum of two or three digits; the right sum, then a wrong one, each + <eot>.
    trained marks the answer's tokens (and its <eot>), as templates.encode_example marks them."""
    pairs = []
    for _ in range(n):
        terms = [rng.randrange(10) for _ in range(rng.choice((2, 3)))]
        prompt = []
        for term in terms:
            prompt += digits(term) + [WORDS.index("+")]
        prompt[-1] = WORDS.index("=")
        wrong = sum(terms) + rng.choice((-1, 1)) * rng.randint(1, 9)
        wrong = wrong if wrong >= 0 else sum(terms) + 10
        pair = []
        for answer in (sum(terms), wrong):
            answer_ids = digits(answer) + [EOT]
            pair.append(Encoded(prompt + answer_ids, [False] * len(prompt) + [True] * len(answer_ids)))
        pairs.append(tuple(pair))
    return pairs


def as_batch(examples: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids (B, T) right-padded with PAD_ID, prompt_lengths (B,), lengths (B,)."""
    longest = max(len(e.ids) for e in examples)
    ids = torch.tensor([e.ids + [PAD_ID] * (longest - len(e.ids)) for e in examples])
    prompt_lengths = torch.tensor([e.trained.index(True) for e in examples])
    return ids, prompt_lengths, torch.tensor([len(e.ids) for e in examples])


def text(ids: list[int]) -> str:
    return " ".join(WORDS[i] for i in ids)


def show_logprobs(gpt: GPT, examples: list[Encoded]) -> None:
    """Step 1: which targets your answer_logprobs scores in the first row, and the package's numbers."""
    ids, prompt_lengths, lengths = as_batch(examples)
    per_token, total = answer_logprobs(gpt, ids, prompt_lengths, lengths)
    row = int(lengths.argmin())  # the shortest row: it has the most padding
    n, p = int(lengths[row]), int(prompt_lengths[row])
    print(f"1. a batch {tuple(ids.shape)} of chosen and rejected answers, right-padded with <eot> (id {PAD_ID}); "
          f"row {row}: prompt '{text(examples[row].ids[:p])}' ({p} tokens), answer '{text(examples[row].ids[p:])}', "
          f"{ids.shape[1] - n} pad; your per_token:")
    print("      t  reads          predicts  per_token")
    for t in range(ids.shape[1] - 1):
        kind = "prompt" if t + 1 < p else "answer" if t + 1 < n else "pad"
        print(f"   {t:4}  {WORDS[ids[row, t]]:>5} ({'pad' if t >= n else 'real'})  {WORDS[ids[row, t + 1]]:>5} "
              f"({kind:6})  {per_token[row, t].item():+.4f}")
    x, y = collate(examples, pad_id=PAD_ID)
    _, expected = completion_logprobs(gpt, x, y)
    difference = (total - expected).abs().max().item()
    print(f"   row {row}'s total {total[row].item():.4f}; against gpt_scratch.logprobs.completion_logprobs on "
          f"data.collate's (x, y), every row: largest |difference| {difference:.1e} "
          f"-> {'match' if difference < 1e-4 else 'DIFFERENT'}")


def package_batch(ids: torch.Tensor, prompt_lengths: torch.Tensor,
                  lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same rows as gpt_scratch.reward takes them: ids, attention mask, answer mask (B, T)."""
    positions = torch.arange(ids.shape[1])
    mask = (positions < lengths[:, None]).long()
    return ids, mask, (mask.bool() & (positions >= prompt_lengths[:, None])).long()


def show_training(args: argparse.Namespace, gpt: GPT, pairs: list[tuple[Encoded, Encoded]]) -> None:
    """Steps 2 and 3: your reward_scores at the start, then --steps of your reward_model_step, against the package's."""
    model = GPTWithHead(gpt, "reward", with_logprob=args.score == "head+logprob")
    if args.body == "frozen":
        model.gpt.requires_grad_(False)
    package_model = copy.deepcopy(model)
    batch = as_batch([c for c, _ in pairs] + [r for _, r in pairs])
    scores = reward_scores(model, *batch)
    difference = (scores - reward.reward_scores(model, *package_batch(*batch))).abs().max().item()
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"2. a reward model: the GPT and a zero-initialised head, score {args.score}, body {args.body} "
          f"({sum(p.numel() for p in trainable):,} of {sum(p.numel() for p in model.parameters()):,} parameters "
          f"learn); your first scores {' '.join(f'{s:+.3f}' for s in scores[:4].tolist())} ... (all 0 at the start: "
          f"the loss is ln 2); against gpt_scratch.reward.reward_scores: largest |difference| {difference:.1e} "
          f"-> {'match' if difference < 1e-4 else 'DIFFERENT'}")

    # Plain gradient descent: with Adam, a gradient that is 0 up to rounding (e.g. that of the attention's key bias,
    # to which the softmax is blind) would become a full step of either sign, and two correct steps that round
    # differently would end apart.
    optimizer = torch.optim.SGD(trainable, lr=args.lr)
    package_optimizer = torch.optim.SGD([p for p in package_model.parameters() if p.requires_grad], lr=args.lr)
    print(f"3. {args.steps} steps of your reward_model_step on the {args.pairs} pairs (plain gradient descent, lr "
          f"{args.lr:g}), and the same steps of gpt_scratch.reward.pair_loss on a copy:")
    print("   step  your loss  package's  accuracy after" + ("  log-p weight" if args.score == "head+logprob" else ""))
    for step in range(args.steps):
        loss = reward_model_step(model, optimizer, *batch)
        package_loss = reward.pair_loss(package_model, package_batch(*batch))
        package_optimizer.zero_grad(set_to_none=True)
        package_loss.backward()
        package_optimizer.step()
        with torch.no_grad():
            accuracy = reward.pairwise_accuracy(*reward.reward_scores(model, *package_batch(*batch)).chunk(2))
        weight = f"  {model.head.logprob_weight.item():+12.4f}" if args.score == "head+logprob" else ""
        print(f"   {step + 1:4}  {loss:9.4f}  {package_loss.item():9.4f}  {accuracy:14.3f}{weight}")
    difference = max((a - b).abs().max().item() for a, b in zip(model.parameters(), package_model.parameters()))
    print(f"   the weights after {args.steps} steps, yours against the package's: largest |difference| "
          f"{difference:.1e} -> {'match' if difference < 1e-4 else 'DIFFERENT'}")


def show_reward_step(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    gpt = GPT(GPTConfig(vocab_size=VOCAB_SIZE, block_size=BLOCK_SIZE, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD))
    pairs = make_pairs(args.pairs, random.Random(args.seed))
    show_logprobs(gpt, [c for c, _ in pairs] + [r for _, r in pairs])
    show_training(args, gpt, pairs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        show_reward_step(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
