"""Chapter 10 exercises: direct preference optimisation, three small pieces on a toy policy, then a DPO step of a GPT.

    Exercise 10.1  dpo_loss          the mean of -log sigmoid(beta * h) over the pairs
    Exercise 10.2  implicit_rewards  beta * log(pi / pi_ref) of the chosen and the rejected answers, and the
                                     share of pairs the policy ranks strictly the right way round
    Exercise 10.3  ipo_loss          the mean of (h - 1 / (2 beta))^2: a target margin instead of "ever larger"
    Exercise 10.4  dpo_step          one DPO training step of a GPT on a batch of preference pairs

with h = (log pi(chosen) - log pi_ref(chosen)) - (log pi(rejected) - log pi_ref(rejected)) for each pair.

Run it: a toy policy answers --prompts prompts, each with one of --answers answers, from a table of
logits (its only parameter; the reference is the table it starts from). A hidden ranking orders the
answers of each prompt, and every two answers of a prompt make a preference pair (with --noise, each
pair's label is swapped with that probability). --steps steps of plain gradient descent with your
loss (--loss dpo or ipo) move the table; every --print-every steps the script prints your loss, your
implicit rewards' accuracy and margin, the mean h, how likely the policy now is to give each prompt's
best answer, and its KL from the reference. At step 0 the policy is its reference: every implicit
reward is 0, the DPO loss ln 2, the IPO loss 1 / (4 beta^2), and no pair is ranked right yet (a tie is
not a win). Your functions are then compared with gpt_scratch.dpo. Last, a tiny GPT learns from
--prompts pairs of token sequences by a few steps of your dpo_step (with --beta), next to the same
steps of gpt_scratch.dpo.batch_loss on a copy, which must end with the same weights.
    python exercises/ch10/ex1_dpo.py --loss ipo --noise 0.2
    python exercises/ch10/ex1_dpo.py --help
Grade it:  python -m gpt_scratch grade --chapter 10
"""

import argparse
import copy
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

from gpt_scratch import dpo  # noqa: E402
from gpt_scratch.args import OneLineParser, exercise_not_done, float_range, int_range, non_negative_int  # noqa: E402
from gpt_scratch.data import Encoded  # noqa: E402
from gpt_scratch.logprobs import completion_logprobs  # noqa: E402
from gpt_scratch.model import GPT, GPTConfig  # noqa: E402

# The last step: a GPT of 8 tokens (0 the end-of-text, also the pad id), a few steps of plain gradient descent.
# (With Adam, a gradient that is 0 up to rounding, e.g. that of the attention's key bias, to which the softmax
# is blind, would become a full step of either sign, and two correct steps that round differently would end apart.)
GPT_VOCAB, EOT, GPT_STEPS, GPT_LR = 8, 0, 5, 0.5


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's loss: a scalar (0-dimensional) tensor that gradients flow through.

    Each argument is (B,): the log-probability of each pair's chosen or rejected answer under the
    policy (with gradient) or under the frozen reference. For each pair
        h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    and the loss is the mean over the pairs of -log sigmoid(beta * h): the reward model's
    Bradley-Terry loss, with beta * log(pi / pi_ref) as the reward. Compute -log sigmoid(z) as
    -F.logsigmoid(z): log(torch.sigmoid(z)) gives -inf once sigmoid(z) rounds to 0 (z below about -100).
    Example: policy -1 and -3, reference -2 and -2, beta 0.5: h = 1 - (-1) = 2,
             loss = -log sigmoid(1) = log(1 + e^-1) = 0.3133. Policy = reference: h = 0, loss ln 2 = 0.6931.
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * h).mean()


def implicit_rewards(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                     ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(rewards of the chosen answers (B,), rewards of the rejected answers (B,), accuracy).

    The policy DPO trains is its own reward model: its implicit reward of an answer is
    beta * (log pi(answer) - log pi_ref(answer)). Return both reward tensors detached (.detach():
    they are for logging, and must not carry the graph along), and the accuracy as a Python float:
    the share of pairs whose chosen reward is *strictly* higher than the rejected one. A tie is
    not a win, so at step 0, when the policy is the reference and every reward is 0, the accuracy
    is 0, not 0.5.
    Example, beta 0.5: policy [-1, -2], reference [-2, -2] for the chosen answers and policy [-3, -2],
             reference [-2, -2] for the rejected ones -> chosen rewards [0.5, 0.0], rejected [-0.5, 0.0],
             accuracy 0.5 (the second pair is a tie).
    """
    chosen = beta * (policy_chosen - ref_chosen).detach()
    rejected = beta * (policy_rejected - ref_rejected).detach()
    return chosen, rejected, (chosen > rejected).float().mean().item()


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO's loss: the mean over the pairs of (h - 1 / (2 beta))^2, a scalar tensor with gradient.

    h as in dpo_loss. DPO's loss falls for ever as h grows, so on pairs it already ranks right it
    keeps pushing the two answers apart, as far from the reference as it likes; IPO's is a squared
    distance to the target margin 1 / (2 beta), and stops pulling once h gets there (and pushes
    back beyond it). A larger beta asks for a smaller margin: beta still says how close to the
    reference the policy stays.
    Example, beta 0.5 (target 1): h = 2 -> (2 - 1)^2 = 1; h = 1 -> 0, and the gradient is 0 too;
             h = 0 with beta 0.1 (the start) -> (0 - 5)^2 = 25.
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return ((h - 1 / (2 * beta)) ** 2).mean()


def dpo_step(policy: GPT, reference: GPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
             beta: float) -> float:
    """One DPO training step of a GPT on a batch of N preference pairs; returns the loss before the step, a float.

    x, y (2N, T), long: the pairs as gpt_scratch.dpo.pair_batch collates them (data.collate, right
    padding): rows 0 to N - 1 hold the chosen answers, rows N to 2N - 1 the rejected answers of the
    same pairs, in the same order; x is prompt + answer as inputs, y the targets: the answer's tokens
    (its end-of-text included) and IGNORE (-100) everywhere else. An answer's log-probability is the
    sum over its tokens (gpt_scratch.logprobs.completion_logprobs(model, x, y) gives it: exercise 8.4).
    reference is the frozen reference model, the SFT model the policy started from; it may be the
    policy object itself (at the first step of a run the reference is the policy, as
    gpt_scratch.dpo.reference_logprobs computes it before training). Its log-probabilities are
    constants: no gradient may reach its parameters or flow back through its numbers.
    optimizer holds the policy's parameters. The loss is DPO's with beta (your dpo_loss, exercise
    10.1); the step makes one optimizer step from that loss's gradient alone (nothing left over from
    an earlier step). Everything is float32 on the CPU; the models have no dropout.
    The course's version: gpt_scratch.dpo.batch_loss (the loss) with dpo.reference_logprobs (computed
    once, before training) in train.py's loop. Taught in chapter 10's notebook, sections "From PPO's
    objective to a loss on pairs" and "DPO on the course's GPT" (its "One DPO step, written out").
    """
    with torch.no_grad():  # the reference's numbers are constants of the loss
        _, reference_logps = completion_logprobs(reference, x, y)
    _, policy_logps = completion_logprobs(policy, x, y)
    policy_chosen, policy_rejected = policy_logps.chunk(2)
    ref_chosen, ref_rejected = reference_logps.chunk(2)
    loss = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Your DPO (or IPO) loss trains a toy policy, a table of logits, "
                                                  "on preference pairs from a hidden ranking; your implicit rewards "
                                                  "measure it; all three are compared with gpt_scratch.dpo.")
    parser.add_argument("--prompts", type=int_range(1, 16), default=4, help="prompts, 1 to 16 (default 4)")
    parser.add_argument("--answers", type=int_range(2, 8), default=4,
                        help="answers each prompt can get, 2 to 8; every two of them make a pair (default 4)")
    parser.add_argument("--loss", choices=["dpo", "ipo"], default="dpo", help="your loss to train with (default dpo)")
    parser.add_argument("--beta", type=float_range(0.0, 10.0, include_low=False), default=0.5,
                        help="beta, >0 to 10: the implicit reward is beta log(pi / pi_ref), and IPO's target margin "
                             "1 / (2 beta) (default 0.5)")
    parser.add_argument("--steps", type=int_range(1, 500), default=40, help="gradient steps, 1 to 500 (default 40)")
    parser.add_argument("--lr", type=float_range(0.0, 100.0, include_low=False), default=5.0,
                        help="plain gradient descent's learning rate, >0 to 100 (default 5: the loss is a mean over "
                             "the pairs, so each logit gets a small share of the gradient; IPO's squared loss "
                             "diverges from about 10)")
    parser.add_argument("--noise", type=float_range(0.0, 0.5, include_high=False), default=0.0,
                        help="the probability that a pair's label is swapped, 0 to <0.5 (default 0)")
    parser.add_argument("--print-every", type=int_range(1, 500), default=10,
                        help="print the measures every N steps, at most --steps (default 10)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the hidden ranking, the swapped labels and the starting table (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.print_every > args.steps:
        parser.error(f"--print-every {args.print_every} is more than the {args.steps} --steps: nothing would be "
                     f"printed after step 0")
    return args


def make_pairs(args: argparse.Namespace, rng: random.Random) -> tuple[list[tuple[int, int, int]], list[int], int]:
    """([(prompt, chosen answer, rejected answer)], each prompt's best answer, how many labels were swapped)
    from a hidden ranking of each prompt's answers."""
    pairs, best, swapped = [], [], 0
    for prompt in range(args.prompts):
        ranking = list(range(args.answers))
        rng.shuffle(ranking)  # ranking[0] is the best answer to this prompt, ranking[-1] the worst
        best.append(ranking[0])
        for i in range(args.answers):
            for j in range(i + 1, args.answers):
                better, worse = ranking[i], ranking[j]
                swap = rng.random() < args.noise
                pairs.append((prompt, worse, better) if swap else (prompt, better, worse))
                swapped += swap
    return pairs, best, swapped


def pair_logps(logits: torch.Tensor, pairs: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(chosen) and log pi(rejected) of every pair (B,) under a table of logits (prompts, answers)."""
    logp = torch.log_softmax(logits, dim=-1)
    prompts, chosen, rejected = (torch.tensor(column) for column in zip(*pairs))
    return logp[prompts, chosen], logp[prompts, rejected]


def show_training(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    pairs, best, swapped = make_pairs(args, rng)
    generator = torch.Generator().manual_seed(args.seed)
    start = 0.5 * torch.randn(args.prompts, args.answers, generator=generator)  # the reference: where the policy starts
    ref_chosen, ref_rejected = pair_logps(start, pairs)
    logits = start.clone().requires_grad_()
    optimizer = torch.optim.SGD([logits], lr=args.lr)
    loss_fn = dpo_loss if args.loss == "dpo" else ipo_loss
    print(f"{len(pairs)} preference pairs ({args.prompts} prompts x {args.answers * (args.answers - 1) // 2} pairs each"
          + (f", {swapped} labels swapped at noise {args.noise:g}" if args.noise else "") + f"); your {args.loss} "
          f"loss, beta {args.beta:g}, {args.steps} steps of gradient descent at lr {args.lr:g}")
    print("   step     loss  accuracy  margin  mean h  P(best answer)  KL(pi || ref)")
    for step in range(args.steps + 1):
        policy_chosen, policy_rejected = pair_logps(logits, pairs)
        loss = loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, args.beta)
        if step % args.print_every == 0 or step == args.steps:
            chosen, rejected, accuracy = implicit_rewards(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                                          args.beta)
            with torch.no_grad():
                h = ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)).mean().item()
                p, log_p, log_ref = logits.softmax(-1), logits.log_softmax(-1), start.log_softmax(-1)
                p_best = p[torch.arange(args.prompts), torch.tensor(best)].mean().item()
                kl = (p * (log_p - log_ref)).sum(-1).mean().item()
            print(f"   {step:4}  {loss.item():7.4f}  {accuracy:8.1%}  {(chosen - rejected).mean().item():6.3f}  "
                  f"{h:6.3f}  {p_best:14.3f}  {kl:13.4f}")
        if step < args.steps:
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    if args.loss == "ipo":
        print(f"IPO aims at h = 1 / (2 beta) = {1 / (2 * args.beta):.3f} for every pair; DPO would push h up for ever")
    else:
        print(f"(at step 0 the policy is the reference: DPO's loss is ln 2 = {math.log(2):.4f})")
    compare(policy_chosen.detach(), policy_rejected.detach(), ref_chosen, ref_rejected, args.beta)


def compare(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
            ref_rejected: torch.Tensor, beta: float) -> None:
    """Your three functions against gpt_scratch.dpo on the trained policy's pairs."""
    inputs = (policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    dpo_value, dpo_chosen, dpo_rejected = dpo.dpo_loss(*inputs, loss="sigmoid")
    ipo_value, _, _ = dpo.dpo_loss(*inputs, loss="ipo")
    chosen, rejected, accuracy = implicit_rewards(*inputs)
    reference_accuracy = dpo.pair_metrics(dpo_chosen, dpo_rejected, policy_chosen, policy_rejected)["rewards/accuracies"]
    differences = {"dpo_loss": abs(dpo_loss(*inputs).item() - dpo_value.item()),
                   "ipo_loss": abs(ipo_loss(*inputs).item() - ipo_value.item()),
                   "implicit_rewards": max((chosen - dpo_chosen).abs().max().item(),
                                           (rejected - dpo_rejected).abs().max().item(),
                                           abs(accuracy - reference_accuracy))}
    for name, difference in differences.items():
        print(f"against gpt_scratch.dpo, your {name}: largest |difference| {difference:.1e} -> "
              f"{'match' if difference < 1e-5 else 'DIFFERENT'}")


def gpt_pairs(n: int, generator: torch.Generator) -> list[tuple[Encoded, Encoded]]:
    """n (chosen, rejected) pairs of token sequences: a prompt of 2 or 3 tokens, then an answer of 1 to 4 tokens
    and the end-of-text; the chosen answers are made of even tokens, the rejected ones of odd tokens."""
    pairs = []
    for _ in range(n):
        prompt = torch.randint(1, GPT_VOCAB, (int(torch.randint(2, 4, (1,), generator=generator)),),
                               generator=generator).tolist()
        pair = []
        for parity in (0, 1):
            length = int(torch.randint(1, 5, (1,), generator=generator))
            answer = (2 * torch.randint(1 - parity, GPT_VOCAB // 2, (length,), generator=generator) + parity).tolist()
            pair.append(Encoded(prompt + answer + [EOT], [False] * len(prompt) + [True] * (length + 1)))
        pairs.append(tuple(pair))
    return pairs


def show_gpt_step(args: argparse.Namespace) -> None:
    """The last step: your dpo_step on a tiny GPT, next to gpt_scratch.dpo's loss on a copy."""
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    policy = GPT(GPTConfig(vocab_size=GPT_VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=16))
    reference = copy.deepcopy(policy).requires_grad_(False)  # the SFT model: where the policy starts
    package_policy = copy.deepcopy(policy)
    x, y = dpo.pair_batch(gpt_pairs(args.prompts, generator), pad_id=EOT)
    ref = dpo.reference_logprobs(reference, [(x, y)], torch.device("cpu"), "float32")[0]
    optimizer = torch.optim.SGD(policy.parameters(), lr=GPT_LR)
    package_optimizer = torch.optim.SGD(package_policy.parameters(), lr=GPT_LR)
    print(f"a tiny GPT ({GPT_VOCAB} tokens, {EOT} the end-of-text) and {args.prompts} pairs of token sequences "
          f"(chosen answers: even tokens, rejected: odd); {GPT_STEPS} steps of your dpo_step (beta {args.beta:g}, "
          f"plain gradient descent, lr {GPT_LR:g}) and of gpt_scratch.dpo.batch_loss on a copy:")
    print("   step  your loss  package's  rewards/accuracies")
    for step in range(1, GPT_STEPS + 1):
        loss = dpo_step(policy, reference, optimizer, x, y, args.beta)
        package_loss, metrics = dpo.batch_loss(package_policy, (x, y, ref), args.beta)
        package_optimizer.zero_grad(set_to_none=True)
        package_loss.backward()
        package_optimizer.step()
        print(f"   {step:4}  {loss:9.4f}  {package_loss.item():9.4f}  {metrics['rewards/accuracies']:18.1%}")
    difference = max((a - b).abs().max().item() for a, b in zip(policy.parameters(), package_policy.parameters()))
    print(f"   (step 1: the policy is the reference, the loss ln 2 = {math.log(2):.4f}); the weights after "
          f"{GPT_STEPS} steps, yours against the package's: largest |difference| {difference:.1e} "
          f"-> {'match' if difference < 1e-4 else 'DIFFERENT'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_training(args)
        show_gpt_step(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
