"""Chapter 11 exercises: GRPO's arithmetic in three small pieces, then one GRPO update of a GPT.

    Exercise 11.1  group_advantages  each answer's reward minus its group's mean, over the group's std
    Exercise 11.2  grpo_loss         the clipped loss with one advantage per answer, aggregated three ways
    Exercise 11.3  pass_at_k         the unbiased estimate of "at least one of k answers is right"
    Exercise 11.4  grpo_update       one GRPO update of a GPT policy from groups of its own answers

Run it: a toy task with a verifiable reward. Each of --prompts prompts has a target answer of 1 to
3 letters from {a, b, c}; a toy policy (a table of logits: one distribution over the tokens <end>,
a, b, c per prompt and position, its only parameter) writes an answer token by token until <end>.
The reward is a program: 1 if the letters before <end> are the target, else 0. Your group_advantages
scores one group of --group-size answers per prompt; then --steps GRPO steps (each: a fresh group per
prompt, --epochs gradient steps of plain gradient descent with your grpo_loss) raise the reward;
then your pass_at_k estimates pass@1 and pass@G from --samples answers per prompt, before and
after, next to their exact values (the policy is a table: the chance of the right answer is known).
Last, a tiny GPT answers the same prompts (each prompt is one token) in groups, the same program
checks the answers, and your grpo_update trains the GPT on them (--epochs passes, --aggregation,
--scale); gpt_scratch.grpo.grpo_step, handed the same groups, must end with the same weights.
    python exercises/ch11/ex1_grpo.py --aggregation token-mean --scale none
    python exercises/ch11/ex1_grpo.py --help
Grade it:  python -m gpt_scratch grade --chapter 11
"""

import argparse
import copy
import math
import sys
from pathlib import Path
from unittest import mock

import torch

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch import grpo, ppo_math  # noqa: E402
from gpt_scratch.args import OneLineParser, exercise_not_done, float_range, int_range, non_negative_int  # noqa: E402
from gpt_scratch.data import IGNORE, Encoded, collate  # noqa: E402
from gpt_scratch.generate import generate  # noqa: E402
from gpt_scratch.logprobs import token_logprobs  # noqa: E402
from gpt_scratch.model import GPT, GPTConfig, lm_loss  # noqa: E402
from gpt_scratch.rollout import collated  # noqa: E402

TOKENS = ["<end>", "a", "b", "c"]  # token 0 ends the answer
LENGTH = 4  # positions: up to 3 letters, then <end>
BONUS = 1.5  # the start policy's extra logit on the target's tokens, so that some answers are right
AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
EPS = 1e-4
# The last step's GPT: the tokens <end>, a, b, c, then one token per prompt; plain gradient descent (with Adam, a
# gradient that is 0 up to rounding, e.g. that of the attention's key bias, to which the softmax is blind, would
# become a full step of either sign, and two correct updates that round differently would end apart).
GPT_LR, SFT_STEPS = 0.5, 40


def group_advantages(rewards: torch.Tensor, group_size: int, std: bool = True, eps: float = EPS) -> torch.Tensor:
    """GRPO's advantages (N,): each answer's reward minus its group's mean, divided by the group's std + eps.

    rewards (N,) hold N / group_size groups one after another: [the first prompt's group_size answers,
    the second prompt's, ...] (a view(-1, group_size) puts one group in each row). The std is the
    group's sample std, as DeepSeekMath and TRL take it (torch.std's default: divide by G - 1). With std=False
    (Dr. GRPO) do not divide: the advantage is reward - mean. A group whose rewards are all equal
    gets exactly 0 for every answer: it teaches nothing (and there would be 0 / 0 or, with float
    rewards such as 1.1, a tiny rounding residue / eps).
    Example (G = 4): [1, 0, 0, 0, 1, 1, 1, 1]
        group 1: mean 0.25, std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5 -> [1.5, -0.5, -0.5, -0.5]
        group 2: all equal -> [0, 0, 0, 0]
    with std=False: [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]. Return float values, shape (N,).
    """
    raise NotImplementedError("Exercise 11.1: return one advantage per answer, a tensor (N,), 0 for a group whose rewards are "
                              "all equal (ch11.ipynb, section 3: Group advantages)")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_range: float, aggregation: str, norm_length: int) -> torch.Tensor:
    """The clipped GRPO loss: a scalar (0-dimensional) tensor that gradients flow through.

    logp, old_logp (B, T): the sampled tokens' log-probabilities under the policy now (with gradient)
    and under the policy that sampled them; advantages (B,): one per answer, shared by all its
    tokens; mask (B, T): 1 (True) on each answer's real tokens (its <end> included), 0 after. The
    entries after an answer's end hold garbage: keep it out with torch.where (mask.bool()).
    Per token, as in PPO (eps = clip_range):
        ratio = exp(logp - old_logp)
        loss  = max(-A * ratio, -A * clamp(ratio, 1 - eps, 1 + eps))
    then one number, by aggregation:
        "token-mean"               the sum over every real token / their count (DAPO)
        "seq-mean-token-mean"      each answer's mean over its real tokens, then the mean over answers (GRPO)
        "seq-mean-token-sum-norm"  each answer's sum / norm_length, then the mean over answers (Dr. GRPO)
    Example, ratio 1 everywhere (a fresh rollout: the per-token loss is -A), A = [1, -1],
    mask [[1, 1, 1], [1, 0, 0]]: token losses [[-1, -1, -1], [1, pad, pad]]
        token-mean (-3 + 1) / 4 = -0.5;  seq-mean-token-mean (-1 + 1) / 2 = 0;
        seq-mean-token-sum-norm with norm_length 4: (-3/4 + 1/4) / 2 = -0.25.
    So with token-mean the long answer's 3 tokens outvote the short one; per answer they count alike.
    """
    raise NotImplementedError("Exercise 11.2: return the loss, a scalar tensor gradients flow through, aggregated as asked "
                              "(ch11.ipynb, section 7)")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate, from n sampled answers of which c are correct, of the chance that at
    least one of k answers is correct (1 <= k <= n):

        pass@k = 1 - C(n - c, k) / C(n, k)

    C(n, k) counts the ways to pick k of the n samples, C(n - c, k) the ways to pick k wrong ones, so
    the fraction is the chance that k samples drawn (without replacement) from the n are all wrong.
    Use math.comb; C(n - c, k) is 0 when fewer than k answers are wrong (then pass@k = 1). Return a float.
    Example: n = 4, c = 1: pass@1 = 1 - C(3,1)/C(4,1) = 1 - 3/4 = 0.25 (the share correct, c / n);
    pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; pass@4 = 1 - C(3,4)/C(4,4) = 1 - 0/1 = 1.
    (1 - (1 - c/n)^k, the obvious plug-in, is biased: for n = 4, c = 1, k = 2 it gives 0.4375.)
    """
    raise NotImplementedError("Exercise 11.3: return the unbiased pass@k estimate, a float in [0, 1] (ch11.ipynb, section 4)")


def grpo_update(policy: GPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                rewards: torch.Tensor, group_size: int, minibatches: list[torch.Tensor], clip_range: float = 0.2,
                aggregation: str = "seq-mean-token-mean", norm_length: int = 24, std: bool = True,
                temperature: float = 1.0, grad_clip: float = 1.0) -> dict[str, torch.Tensor]:
    """One GRPO update of a GPT policy from groups of its own answers; returns the advantages and the losses.

    x, y (N, T), long: the rollout as gpt_scratch.rollout.Rollout holds it (right-padded): x the inputs,
    prompt then the sampled answer; y the targets, which are the answer's sampled tokens (its
    end-of-text included, if it ended) and IGNORE (-100) everywhere else, so y != IGNORE is the
    answer mask. The rows come in N / group_size groups of group_size answers to one prompt, one group
    after another. rewards (N,): each answer's reward from the checker. minibatches: LongTensors of row
    indices, one gradient step each, in this order (the epochs are already in the list). optimizer
    holds the policy's parameters. Everything is float32 on the CPU; the policy has no dropout.
    Before the first gradient step, without gradient: the sampled tokens' log-probabilities under the
    policy at the rollout temperature (softmax(logits / temperature): gpt_scratch.logprobs.token_logprobs
    does it), and each answer's advantage (your group_advantages with std; with std, the group's sample
    std, Bessel-corrected, as DeepSeekMath and TRL). Then for each minibatch: the clipped loss of those
    rows (your grpo_loss with clip_range, aggregation and norm_length), every token of an answer
    sharing the answer's advantage; one backward; the gradient norm clipped to grad_clip (0: no
    clipping); one optimizer step; no gradient left over from an earlier minibatch.
    Return a dict of tensors: "advantages" (N,) and "loss" (len(minibatches),), each minibatch's loss
    before its step. The course's version is gpt_scratch.grpo.grpo_step with kl_coef 0 (its default:
    no KL term in the loss), which also samples the groups and checks the answers.
    Taught in chapter 11's notebook, sections "Group advantages" and "The course's GRPO stage".
    """
    raise NotImplementedError("Exercise 11.4: make one GRPO update and return its advantages and losses")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="A toy task with a verifiable reward: your group advantages, "
                                                  "your clipped GRPO loss in a few training steps of a toy "
                                                  "policy, and your pass@k before and after, each compared "
                                                  "with gpt_scratch.")
    parser.add_argument("--prompts", type=int_range(1, 32), default=6, help="prompts, 1 to 32 (default 6)")
    parser.add_argument("--group-size", type=int_range(2, 16), default=4,
                        help="answers per prompt and step, G, 2 to 16 (default 4)")
    parser.add_argument("--steps", type=int_range(1, 100), default=15,
                        help="GRPO steps, each on fresh groups, 1 to 100 (default 15)")
    parser.add_argument("--epochs", type=int_range(1, 10), default=2,
                        help="gradient steps on each step's groups, 1 to 10 (default 2: from the second on, "
                             "the ratio leaves 1 and clipping can act)")
    parser.add_argument("--lr", type=float_range(0.0, 100.0, include_low=False), default=10.0,
                        help="plain gradient descent's learning rate, >0 to 100 (default 10: the loss is a mean "
                             "over many tokens, so each logit gets a small share of the gradient)")
    parser.add_argument("--clip", type=float_range(0.0, 1.0, include_low=False, include_high=False), default=0.2,
                        help="the ratio is clipped to [1 - clip, 1 + clip], >0 to <1 (default 0.2)")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="seq-mean-token-mean",
                        help="how the token losses become one number (default seq-mean-token-mean, GRPO's)")
    parser.add_argument("--scale", choices=["std", "none"], default="std",
                        help="std: divide by the group's std (GRPO, default); none: reward - mean (Dr. GRPO)")
    parser.add_argument("--samples", type=int_range(1, 64), default=16,
                        help="answers sampled per prompt for pass@k, at least --group-size, up to 64 (default 16)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the targets, the start policy and the samples (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples < args.group_size:
        parser.error(f"--samples {args.samples} is fewer than --group-size {args.group_size}: pass@G needs at least "
                     f"G samples per prompt")
    return args


def make_task(n_prompts: int, generator: torch.Generator) -> tuple[list[list[int]], torch.Tensor]:
    """(targets, start logits (P, LENGTH, 4)): each target 1 to 3 letter tokens; the start policy leans
    towards the target's letters and its <end> by BONUS, plus noise."""
    targets = []
    logits = 0.5 * torch.randn(n_prompts, LENGTH, len(TOKENS), generator=generator)
    for p in range(n_prompts):
        length = int(torch.randint(1, LENGTH, (1,), generator=generator))
        target = torch.randint(1, len(TOKENS), (length,), generator=generator).tolist()
        targets.append(target)
        for position, token in enumerate(target + [0]):
            logits[p, position, token] += BONUS
    return targets, logits


def sample_answers(logits: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask), both (P * n, LENGTH): n answers per prompt, one prompt's after another; the mask
    is 1 up to and including the first <end>, 0 after it (an answer without <end> is all 1)."""
    probs = torch.softmax(logits, dim=-1).repeat_interleave(n, dim=0)  # (P * n, LENGTH, 4)
    tokens = torch.multinomial(probs.reshape(-1, len(TOKENS)), 1, generator=generator).view(-1, LENGTH)
    ended_before = (torch.cumsum((tokens == 0).int(), dim=1) - (tokens == 0).int()) > 0
    return tokens, ~ended_before


def rewards_of(tokens: torch.Tensor, mask: torch.Tensor, targets: list[list[int]], n: int) -> torch.Tensor:
    """The verifiable reward: 1 if an answer's letters before its <end> are its prompt's target, else 0."""
    rewards = []
    for row, (answer, real) in enumerate(zip(tokens.tolist(), mask.tolist())):
        written = [t for t, r in zip(answer, real) if r]
        rewards.append(float(written == targets[row // n] + [0]))
    return torch.tensor(rewards)


def text(answer: list[int], real: list[bool]) -> str:
    return " ".join(TOKENS[t] for t, r in zip(answer, real) if r) + ("" if 0 in answer else " ...")


def token_logp(logits: torch.Tensor, tokens: torch.Tensor, n: int) -> torch.Tensor:
    """The log-probability of each sampled token (P * n, LENGTH) under the logits (P, LENGTH, 4)."""
    return torch.log_softmax(logits, -1).repeat_interleave(n, dim=0).gather(-1, tokens[..., None]).squeeze(-1)


def exact_pass(logits: torch.Tensor, targets: list[list[int]], k: int) -> float:
    """The true pass@k averaged over the prompts: 1 - (1 - p)^k, p = the chance of the target answer."""
    probs = torch.softmax(logits, dim=-1)
    total = 0.0
    for p, target in enumerate(targets):
        chance = math.prod(probs[p, position, token].item() for position, token in enumerate(target + [0]))
        total += 1 - (1 - chance) ** k
    return total / len(targets)


def show_advantages(args: argparse.Namespace, targets: list[list[int]], logits: torch.Tensor,
                    generator: torch.Generator) -> None:
    """Step 1: one group per prompt from the start policy, its rewards and your advantages."""
    g = args.group_size
    tokens, mask = sample_answers(logits, g, generator)
    rewards = rewards_of(tokens, mask, targets, g)
    advantages = group_advantages(rewards, g, args.scale == "std")
    reference = grpo.group_advantages(rewards, g, args.scale == "std", EPS)
    print(f"1. one group of {g} answers per prompt from the start policy; the reward is 1 for the target answer; "
          f"your advantages ({'reward - mean, over the std' if args.scale == 'std' else 'reward - mean'}):")
    all_equal = (rewards.view(-1, g) == rewards.view(-1, g)[:, :1]).all(dim=1)
    shown = sorted(range(args.prompts), key=lambda p: bool(all_equal[p]))[:3]  # groups that teach something first
    for p in sorted(shown):
        rows = range(p * g, (p + 1) * g)
        print(f"   prompt {p}, target '{' '.join(TOKENS[t] for t in targets[p])}':")
        for row in rows:
            print(f"      {text(tokens[row].tolist(), mask[row].tolist()):<18} reward {rewards[row].item():.0f}  "
                  f"advantage {advantages[row].item():+.3f}")
    print(f"   groups whose rewards are all equal (advantage 0, they teach nothing): {int(all_equal.sum())} of "
          f"{args.prompts}")
    difference = (advantages - reference).abs().max().item()
    print(f"   against gpt_scratch.grpo.group_advantages, every group: largest |difference| {difference:.1e} -> "
          f"{'match' if difference < 1e-5 else 'DIFFERENT'}")


def show_training(args: argparse.Namespace, targets: list[list[int]], start_logits: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """Step 2: --steps GRPO steps with your advantages and your loss; returns the trained logits."""
    g = args.group_size
    logits = start_logits.clone().requires_grad_()
    optimizer = torch.optim.SGD([logits], lr=args.lr)
    print(f"2. {args.steps} GRPO steps ({args.epochs} gradient steps each, lr {args.lr:g}, clip {args.clip:g}, "
          f"{args.aggregation}), your loss:")
    print("    step  mean reward  all-equal groups  loss: first, last gradient step  clipped tokens")
    largest = 0.0
    for step in range(1, args.steps + 1):
        with torch.no_grad():
            tokens, mask = sample_answers(logits, g, generator)
            old_logp = token_logp(logits, tokens, g)
        rewards = rewards_of(tokens, mask, targets, g)
        advantages = group_advantages(rewards, g, args.scale == "std")
        all_equal = (rewards.view(-1, g) == rewards.view(-1, g)[:, :1]).all(dim=1)
        clipped, losses = 0.0, []
        for _ in range(args.epochs):
            logp = token_logp(logits, tokens, g)
            loss = grpo_loss(logp, old_logp, advantages, mask, args.clip, args.aggregation, LENGTH)
            reference, stats = ppo_math.clipped_policy_loss(logp.detach(), old_logp, advantages[:, None].expand_as(logp),
                                                            mask, args.clip, args.aggregation, LENGTH)
            largest = max(largest, abs(loss.item() - reference.item()))
            clipped += stats["clip_fraction"].item() / args.epochs
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step <= 3 or step % 5 == 0 or step == args.steps:
            print(f"   {step:5}  {rewards.mean().item():11.3f}  {int(all_equal.sum()):6} of {args.prompts:<6}  "
                  f"{losses[0]:+19.4f}, {losses[-1]:+.4f}  {clipped:14.1%}")
    if args.aggregation != "token-mean":
        print("   (the first loss of a step is 0 per answer: ratio 1 and a group's advantages add up to 0; its gradient "
              "is not 0)")
    print(f"   against gpt_scratch.ppo_math.clipped_policy_loss ({args.aggregation}): largest |difference| "
          f"{largest:.1e} -> {'match' if largest < 1e-5 else 'DIFFERENT'}")
    return logits.detach()


def show_pass_at_k(args: argparse.Namespace, targets: list[list[int]], start_logits: torch.Tensor,
                   logits: torch.Tensor, generator: torch.Generator) -> None:
    """Step 3: your pass@1 and pass@G from --samples answers per prompt, before and after, and the exact values."""
    n, g = args.samples, args.group_size
    print(f"3. pass@k from {n} sampled answers per prompt (your pass_at_k), and the exact value from the policy's "
          f"probabilities:")
    for name, table in (("before", start_logits), ("after", logits)):
        tokens, mask = sample_answers(table, n, generator)
        correct = rewards_of(tokens, mask, targets, n).view(-1, n).sum(dim=1).int().tolist()
        estimates = {k: sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in (1, g)}
        reference = {k: sum(grpo.pass_at_k(n, c, k) for c in correct) / len(correct) for k in (1, g)}
        same = all(abs(estimates[k] - reference[k]) < 1e-9 for k in (1, g))
        print(f"   {name:6}  pass@1 {estimates[1]:.3f} (exact {exact_pass(table, targets, 1):.3f})   pass@{g} "
              f"{estimates[g]:.3f} (exact {exact_pass(table, targets, g):.3f})   "
              f"{'matches' if same else 'DIFFERS from'} gpt_scratch.grpo.pass_at_k")


def gpt_groups(policy: GPT, targets: list[list[int]], group_size: int, seed: int):
    """The last step's rollout: group_size answers of the GPT to each prompt (the prompt is the one token
    len(TOKENS) + p), collated as gpt_scratch.rollout does, and the checker's rewards."""
    prompts = [[len(TOKENS) + p] for p in range(len(targets)) for _ in range(group_size)]
    answers = generate(policy, prompts, LENGTH, temperature=1.0, eos_id=0, seed=seed)
    examples = [Encoded(p + a, [False] * len(p) + [True] * len(a)) for p, a in zip(prompts, answers)]
    ended = [bool(a) and a[-1] == 0 for a in answers]
    rollout = collated(["prompt"] * len(prompts), examples, [""] * len(prompts), ended, pad_id=0)
    rewards = torch.tensor([float(a == targets[row // group_size] + [0]) for row, a in enumerate(answers)])
    return rollout, rewards


def sft_model(targets: list[list[int]], seed: int) -> GPT:
    """A tiny GPT after SFT_STEPS steps of supervised fine-tuning on each prompt's target answer: a start from
    which some sampled answers are right, as GRPO starts from the SFT model."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=len(TOKENS) + len(targets), block_size=8, n_layer=2, n_head=2, n_embd=16))
    sequences = [[len(TOKENS) + p] + target + [0] for p, target in enumerate(targets)]
    examples = [Encoded(s, [False] + [True] * (len(s) - 1)) for s in sequences]
    x, y = collate(examples, pad_id=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(SFT_STEPS):
        loss = lm_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def show_gpt_update(args: argparse.Namespace, targets: list[list[int]]) -> None:
    """The last step: your grpo_update on a tiny GPT's groups, against gpt_scratch.grpo.grpo_step on the same groups."""
    g, n = args.group_size, args.prompts * args.group_size
    policy = sft_model(targets, args.seed)
    package_policy = copy.deepcopy(policy)
    rollout, rewards = gpt_groups(policy, targets, g, args.seed)
    minibatch_size = n // 2 if n % 2 == 0 else n
    order = torch.Generator().manual_seed(args.seed * 7919)  # the order grpo_step draws at step 0
    minibatches = [rows for _ in range(args.epochs)
                   for rows in torch.randperm(n, generator=order).split(minibatch_size)]
    got = grpo_update(policy, torch.optim.SGD(policy.parameters(), lr=GPT_LR), rollout.x, rollout.y, rewards, g,
                      minibatches, args.clip, args.aggregation, LENGTH, args.scale == "std")

    cfg = grpo.GRPOConfig(batch_size=n, group_size=g, minibatch_size=minibatch_size, epochs=args.epochs, lr=GPT_LR,
                          clip_range=args.clip, std=args.scale == "std", aggregation=args.aggregation,
                          max_new_tokens=LENGTH, eval_samples=max(8, g), seed=args.seed, device="cpu",
                          dtype="float32")
    losses = []

    def keeping(*arguments, **options):
        loss, stats = ppo_math.clipped_policy_loss(*arguments, **options)
        losses.append(loss.item())
        return loss, stats

    # grpo_step samples its own groups and checks them: here it is handed the same ones (mock.patch).
    with mock.patch.object(grpo, "collect_groups", return_value=(rollout, [], rewards, {"answers_sampled": n})), \
            mock.patch.object(grpo, "clipped_policy_loss", keeping):
        grpo.grpo_step(package_policy, copy.deepcopy(package_policy), None, {}, None, cfg,
                       torch.optim.SGD(package_policy.parameters(), lr=GPT_LR), 0, torch.device("cpu"))
    print(f"4. a tiny GPT ({len(TOKENS) + args.prompts} tokens: <end>, a, b, c and one per prompt; {SFT_STEPS} "
          f"steps of fine-tuning on the targets) answered each "
          f"prompt {g} times, {int(rewards.sum())} of {n} answers right; your grpo_update ({len(minibatches)} "
          f"minibatches of {minibatch_size}, {args.aggregation}, scale {args.scale}, plain gradient descent, lr "
          f"{GPT_LR:g})")
    groups = rewards.view(-1, g)
    mixed = [p for p in range(args.prompts) if not (groups[p] == groups[p, 0]).all()]  # groups that teach something
    if mixed:
        p = mixed[0]
        print(f"   prompt {p}'s group: rewards {' '.join(f'{r:.0f}' for r in groups[p].tolist())}, your advantages "
              f"{' '.join(f'{a:+.3f}' for a in got['advantages'][p * g:(p + 1) * g].tolist())}")
    print(f"   groups whose answers are all right or all wrong (advantage 0): {args.prompts - len(mixed)} of "
          f"{args.prompts}")
    print("   step  loss (yours, grpo_step's)")
    for i in range(len(minibatches)):
        print(f"   {i + 1:4}  {got['loss'][i].item():+.5f}, {losses[i]:+.5f}")
    difference = max((a - b).abs().max().item() for a, b in zip(policy.parameters(), package_policy.parameters()))
    print(f"   the weights after the update, yours against grpo_step's: largest |difference| {difference:.1e} "
          f"-> {'match' if difference < 1e-4 else 'DIFFERENT'}")


def show_grpo(args: argparse.Namespace) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    targets, start_logits = make_task(args.prompts, generator)
    show_advantages(args, targets, start_logits, generator)
    logits = show_training(args, targets, start_logits, generator)
    show_pass_at_k(args, targets, start_logits, logits, generator)
    show_gpt_update(args, targets)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_grpo(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
