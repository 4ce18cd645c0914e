"""Chapter 9 exercises: the arithmetic of PPO for RLHF in three small pieces, then one PPO update of a GPT.

    Exercise 9.1  gae                  advantages and returns, backwards in time; padding ignored
    Exercise 9.2  clipped_policy_loss  the masked mean of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))
    Exercise 9.3  kl_estimates         k1 and k3, two per-token estimates of KL(policy || reference)
    Exercise 9.4  ppo_update           one PPO update of a GPT policy and its value model from a rollout batch

Run it: it makes a toy batch of episodes (--batch rows of 1 to --length response tokens, a small
penalty on every token and a score at the last real one, random value guesses, garbage on the
padding), runs your gae on it and compares it with gpt_scratch.ppo_math. Then a toy policy, a
table of logits (one next-token distribution per position, its only parameter), samples one
token per position and does --epochs PPO epochs of plain gradient descent on that one fixed batch
with your clipped loss: the first epoch's ratio is exactly 1; later ones leave [1 - clip, 1 + clip],
and a token that has left gets no gradient. Then your kl_estimates measure, on tokens the moved
policy samples, how far it has drifted from where it started. Last, a tiny GPT answers --batch
prompts, a program scores the answers, and your ppo_update trains the GPT and a value model on that
rollout (--epochs passes, each in two minibatches if --batch is even); gpt_scratch.ppo.ppo_step,
handed the same rollout and scores, must compute the same numbers and end with the same weights.
    python exercises/ch09/ex1_ppo.py --epochs 8 --clip 0.1
    python exercises/ch09/ex1_ppo.py --help
Grade it:  python -m gpt_scratch grade --chapter 9
"""

import argparse
import copy
import sys
from pathlib import Path
from unittest import mock

import torch

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch import ppo, ppo_math  # noqa: E402
from gpt_scratch.args import OneLineParser, exercise_not_done, float_range, int_range, non_negative_int  # noqa: E402
from gpt_scratch.data import IGNORE, Encoded  # noqa: E402
from gpt_scratch.generate import generate  # noqa: E402
from gpt_scratch.heads import GPTWithHead  # noqa: E402
from gpt_scratch.logprobs import token_logprobs  # noqa: E402
from gpt_scratch.model import GPT, GPTConfig  # noqa: E402
from gpt_scratch.rollout import collated  # noqa: E402

VOCAB_SIZE = 6  # the toy policy chooses one of 6 tokens at every position
GARBAGE = 100.0  # what the padded entries hold: a correct function never lets it into a result
KL_SAMPLES = 200  # tokens sampled per position to estimate the KL in step 3
GPT_VOCAB, EOT = 8, 0  # step 4's GPT: 8 tokens, 0 the end-of-text (and the pad id)
# Step 4's GPT learns by plain gradient descent: with Adam, a gradient that is 0 up to rounding (e.g. that of the
# attention's key bias, to which the softmax is blind) would become a full step of either sign, and two correct
# updates that round differently would end apart.
GPT_LR, NO_END_PENALTY = 0.5, -2.0  # step 4: SGD's learning rate; the score of an answer that never ended


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation: (advantages, returns), both (B, T), 0 on padding.

    rewards and values are (B, T) over the response tokens; mask (B, T) is 1 (or True) on each
    row's real tokens, which come first, and 0 (False) on the padding after them. The padded
    entries of rewards and values hold garbage: never let it into a result (mask.bool() gives the
    bool tensor torch.where needs). Go backwards in time, t = T-1 down to 0:
        delta_t = r_t + gamma * V_{t+1} - V_t       how much better token t did than the value head guessed
        A_t     = delta_t + gamma * lam * A_{t+1}   the later surprises added on, discounted
    where V_{t+1} = A_{t+1} = 0 after a row's last real token (the episode ends at its end-of-text).
    returns = advantages + values (the value head's target). lam = 0 gives A_t = delta_t; lam = 1
    makes the returns the discounted sum of the rewards still to come.
    Example: rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 1, lam 0.95:
        A_2 = 1 + 0 - 0.7 = 0.3
        A_1 = (0 + 0.7 - 0.6) + 0.95 * 0.3   = 0.385
        A_0 = (0 + 0.6 - 0.5) + 0.95 * 0.385 = 0.46575
    -> advantages [0.46575, 0.385, 0.3], returns [0.96575, 0.985, 1.0].
    Hint: keep next_value and next_advantage (B,), both 0 to start; at each t compute the row's
    advantage, then keep it (and V_t) only where mask[:, t] is real, 0 on padding.
    """
    raise NotImplementedError("Exercise 9.1: return (advantages, returns), both (B, T) and 0 on padding (ch09.ipynb, "
                              "section 5: Advantages with GAE)")


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip_range: float) -> torch.Tensor:
    """PPO's clipped surrogate loss: a scalar (0-dimensional) tensor that gradients flow through.

    logp (B, T): the log-probabilities of the sampled tokens under the policy now (with gradient);
    old_logp: under the policy that sampled them; advantages: gae's; mask as in gae; eps = clip_range.
        ratio = exp(logp - old_logp)                                     p_new / p_old of each token
        loss  = masked mean of max(-A * ratio, -A * clamp(ratio, 1 - eps, 1 + eps))
    The mean is over the real tokens only (their sum / their count); padding holds garbage, so
    zero it with torch.where before exp (exp(100) * 0 is fine, but exp(1000) is inf and inf * 0 NaN).
    The max takes the more pessimistic term. With A > 0 a ratio above 1 + eps gains nothing more,
    with A < 0 a ratio below 1 - eps: there the clipped term wins, it is a constant, and so that
    token's gradient is exactly 0 -- one batch can be reused for several gradient steps without
    the policy running away from the one that sampled it.
    On the first minibatch of a fresh rollout the policy has not moved since it sampled the
    tokens: logp == old_logp, every ratio is exactly 1, nothing is clipped and the loss is -mean(A).
    Example (eps 0.2): ratio 1.5, A = +1 -> max(-1.5, -1.2) = -1.2 (clipped, gradient 0);
                       ratio 1.5, A = -1 -> max(1.5, 1.2) = 1.5 (not clipped).
    """
    raise NotImplementedError("Exercise 9.2: return the loss over the real tokens, a scalar tensor gradients flow through "
                              "(ch09.ipynb, section 6: The clipped objective)")


def kl_estimates(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(k1, k3), both (B, T) and 0 on padding: two estimates, one per sampled token, of KL(policy || reference).

    logp and ref_logp are the log-probabilities of the same sampled tokens under the policy (which
    sampled them) and under the frozen reference; mask as in gae (padding holds garbage: torch.where
    it to 0 before any exp). With log_ratio = ref_logp - logp and r = exp(log_ratio) = p_ref / p:
        k1 = -log_ratio = logp - ref_logp    averages to the KL, but is negative where p_ref > p
        k3 = (r - 1) - log_ratio             the same average (E[r] = 1 under the policy), never negative
    k3 is never negative because e^x >= 1 + x for every x (the line 1 + x touches the convex e^x
    at x = 0 only), so (e^x - 1) - x >= 0, with 0 exactly where logp == ref_logp. Compute e^x - 1
    as torch.expm1(x): with torch.exp(x) - 1 a tiny x rounds e^x to 1 and k3 to -x, below 0.
    Example: logp -1, ref_logp -2 -> k1 = 1, k3 = (e^-1 - 1) + 1 = e^-1 = 0.3679;
             logp -2, ref_logp -1 -> k1 = -1, k3 = (e - 1) - 1 = 0.7183.
    """
    raise NotImplementedError("Exercise 9.3: return (k1, k3), both (B, T) and 0 on padding (ch09.ipynb, section 4)")


def ppo_update(policy: GPT, value_model: GPTWithHead, reference: GPT, x: torch.Tensor, y: torch.Tensor,
               scores: torch.Tensor, minibatches: list[torch.Tensor], optimizers: tuple, kl_coef: float,
               clip_range: float = 0.2, value_clip: float = 0.2, gamma: float = 1.0, lam: float = 0.95,
               temperature: float = 1.0, grad_clip: float = 1.0) -> dict[str, torch.Tensor]:
    """One PPO update of a GPT policy and its value model from one rollout batch; returns what it computed.

    x, y (B, T), long: the rollout as gpt_scratch.rollout.Rollout holds it (right-padded): x the
    inputs, prompt then the sampled answer; y the targets (x shifted by one), which are the answer's
    sampled tokens (its end-of-text included, if it ended) and IGNORE (-100) everywhere else. So
    y != IGNORE is the response mask: where rewards, values, advantages and losses live.
    scores (B,): each answer's reward, given (the reward model's score, or the penalty for an
    answer that never ended). minibatches: LongTensors of row indices, one gradient step each, in
    this order (the epochs are already in the list). optimizers: (the policy's, the value model's).
    reference: the frozen SFT model. Everything is float32 on the CPU; the models have no dropout.
    Before the first gradient step, without gradient: the sampled tokens' log-probabilities under
    the policy and under the reference, both at the rollout temperature (softmax(logits /
    temperature): gpt_scratch.logprobs.token_logprobs does it), and the value model's values
    value_model(x) (B, T), one per position, aligned with y. From them, once:
      rewards     (B, T): the per-token rewards: the k1 KL penalty (your kl_estimates) weighted by
                  kl_coef at every answer token, and each answer's score on its own last answer token
      advantages  (B, T): GAE (your gae) with gamma and lam, then whitened over the answer tokens
                  (the population variance, as gpt_scratch.ppo_math.masked_whiten)
      returns     (B, T): GAE's returns, the value model's target
    Then for each minibatch: the clipped policy loss (your clipped_policy_loss, clip_range) and the
    clipped value loss (value_clip, as gpt_scratch.ppo_math.clipped_value_loss) of those rows, one
    backward of their sum, each model's gradient norm clipped to grad_clip (0: no clipping), one
    step of each optimizer; no gradient may be left over from an earlier minibatch.
    Return a dict of tensors: "rewards", "advantages", "returns" as above (0 on padding), and
    "policy_loss", "value_loss": (len(minibatches),), each minibatch's loss before its step.
    The course's version is gpt_scratch.ppo.ppo_step, which also samples the rollout and asks the
    reward model for the scores. Taught in chapter 9's notebook, from section "Rewards: the score at
    the end, a KL penalty at every token" to "The course's PPO stage".
    """
    raise NotImplementedError("Exercise 9.4: make one PPO update; return its rewards, advantages, returns and losses")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Your GAE on a toy batch of episodes, your clipped loss in a few "
                                                  "PPO epochs of a toy policy on one fixed batch, your k1/k3 KL "
                                                  "estimates of how far it moved, each compared with "
                                                  "gpt_scratch.ppo_math, and your PPO update of a tiny GPT, "
                                                  "compared with gpt_scratch.ppo.ppo_step.")
    parser.add_argument("--batch", type=int_range(1, 16), default=4,
                        help="episodes (rows) in the batch, 1 to 16 (default 4)")
    parser.add_argument("--length", type=int_range(1, 12), default=6,
                        help="the longest response in tokens, 1 to 12; each row has 1 to this many (default 6)")
    parser.add_argument("--gamma", type=float_range(0.0, 1.0), default=1.0,
                        help="discount per token, 0 to 1 (default 1: RLHF does not discount)")
    parser.add_argument("--lam", type=float_range(0.0, 1.0), default=None,
                        help="GAE's lambda, 0 (A = delta) to 1 (A = return - value); not with --gamma 0, where it "
                             "changes nothing (default 0.95)")
    parser.add_argument("--clip", type=float_range(0.0, 1.0, include_low=False, include_high=False), default=0.2,
                        help="PPO's clip range eps: the ratio is clipped to [1 - eps, 1 + eps], >0 to <1 (default 0.2)")
    parser.add_argument("--epochs", type=int_range(1, 20), default=4,
                        help="PPO epochs (one gradient step each) on the one fixed batch, 1 to 20 (default 4)")
    parser.add_argument("--lr", type=float_range(0.0, 100.0, include_low=False), default=3.0,
                        help="plain gradient descent's learning rate, >0 to 100 (default 3: the loss is a mean "
                             "over the tokens, so each token's logits get a small share of the gradient)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the episodes, the policy and its samples (default 0)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lam is not None and args.gamma == 0:
        parser.error(f"--lam {args.lam:g} changes nothing with --gamma 0: lambda only weighs the later surprises, "
                     f"which gamma 0 discounts to nothing (A_t = r_t - V_t)")
    if args.lam is None:
        args.lam = 0.95
    return args


def make_episodes(batch: int, length: int, generator: torch.Generator):
    """(rewards, values, mask), each (batch, length): right padding after 1 to length real tokens.

    Every real token pays a small penalty (as the KL penalty would), and the last real token also
    gets the reward model's score, as in RLHF. The padded entries hold GARBAGE.
    """
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    mask = torch.arange(length) < lengths[:, None]
    rewards = -0.1 * torch.rand(batch, length, generator=generator)
    rewards[torch.arange(batch), lengths - 1] += torch.randn(batch, generator=generator)
    values = 0.5 * torch.randn(batch, length, generator=generator)
    return torch.where(mask, rewards, GARBAGE), torch.where(mask, values, GARBAGE), mask


def token_logp(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The log-probability of each chosen token under the logits: (B, T, V) and (B, T) -> (B, T)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


def sample(logits: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n tokens per position, (n, B, T), sampled from the softmax of the logits (B, T, V)."""
    probs = torch.softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
    return torch.multinomial(probs, n, replacement=True, generator=generator).T.reshape(n, *logits.shape[:2])


def show_gae(args: argparse.Namespace, rewards: torch.Tensor, values: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
    """Step 1: your gae on the episodes, the first row token by token; returns your advantages."""
    advantages, returns = gae(rewards, values, mask, args.gamma, args.lam)
    ref_advantages, ref_returns = ppo_math.gae(rewards, values, mask, args.gamma, args.lam)
    n_real = int(mask[0].sum())
    print(f"1. your gae (gamma {args.gamma:g}, lam {args.lam:g}) on {args.batch} episodes of 1 to {args.length} "
          f"tokens ({int(mask.sum())} real, padding holds {GARBAGE:g}); the first row, {n_real} real tokens:")
    print("      t   reward    value  advantage   return")
    for t in range(n_real):
        print(f"   {t:4}  {rewards[0, t].item():+7.4f}  {values[0, t].item():+7.4f}  "
              f"{advantages[0, t].item():+9.5f}  {returns[0, t].item():+7.4f}")
    if n_real < args.length:
        padding = torch.cat([advantages[0, n_real:], returns[0, n_real:]]).abs().max().item()
        print(f"   {n_real}..{args.length - 1}  padding (reward and value {GARBAGE:g}): advantages and returns "
              f"{'0' if padding == 0 else f'NOT 0 (up to {padding:g})'}")
    difference = max((advantages - ref_advantages).abs().max().item(), (returns - ref_returns).abs().max().item())
    print(f"   against ppo_math.gae, every row: largest |difference| {difference:.1e} "
          f"-> {'match' if difference < 1e-5 else 'DIFFERENT'}")
    return advantages


def show_ppo_epochs(args: argparse.Namespace, advantages: torch.Tensor, mask: torch.Tensor,
                    start_logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Step 2: --epochs PPO epochs with your loss on one fixed batch; returns the moved logits."""
    tokens = sample(start_logits, 1, generator)[0]  # the rollout: one token per position, sampled once
    old_logp = token_logp(start_logits, tokens)
    logits = start_logits.clone().requires_grad_()  # the policy: its only parameter
    optimizer = torch.optim.SGD([logits], lr=args.lr)
    n_real = int(mask.sum())
    print(f"2. a toy policy ({VOCAB_SIZE} tokens per position) sampled one token per position; {args.epochs} PPO "
          f"epochs on that one batch, plain gradient descent (lr {args.lr:g}), your loss with clip {args.clip:g}, "
          f"your advantages:")
    print("   epoch     loss  ratio mean  clipped tokens  largest |gradient|: clipped, others")
    for epoch in range(1, args.epochs + 1):
        logp = token_logp(logits, tokens)
        loss = clipped_policy_loss(logp, old_logp, advantages, mask, args.clip)
        ref_loss, stats = ppo_math.clipped_policy_loss(logp.detach(), old_logp, advantages, mask, args.clip)
        optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():  # which tokens the clipped term won, and the gradient on their logits
            ratio = torch.exp(logp - old_logp)
            unclipped = -advantages * ratio
            was_clipped = mask & (-advantages * ratio.clamp(1 - args.clip, 1 + args.clip) > unclipped)
            gradient = logits.grad.abs().amax(dim=-1)  # (B, T): per position
            on_clipped = f"{gradient[was_clipped].max().item():.1e}" if was_clipped.any() else "-"
            others = mask & ~was_clipped
            on_others = f"{gradient[others].max().item():.1e}" if others.any() else "-"
        note = ""
        if epoch == 1:
            minus_mean = -ppo_math.masked_mean(advantages, mask).item()
            note = f"   (fresh rollout: ratio 1, loss = -mean(A) = {minus_mean:+.4f})"
        if abs(loss.item() - ref_loss.item()) > 1e-5:
            note += f"   DIFFERENT from ppo_math's {ref_loss.item():+.4f}"
        print(f"   {epoch:5}  {loss.item():+.4f}  {stats['ratio_mean'].item():10.4f}  {int(was_clipped.sum()):6} of "
              f"{n_real:<3}     {on_clipped:>7}, {on_others:>7}{note}")
        optimizer.step()
    return logits.detach()


def show_kl(args: argparse.Namespace, start_logits: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor,
            generator: torch.Generator) -> None:
    """Step 3: your k1 and k3 on tokens the moved policy samples, against the exact KL from the logits."""
    n_tokens = KL_SAMPLES * args.batch
    tokens = sample(logits, KL_SAMPLES, generator).reshape(n_tokens, args.length)  # sampled by the moved policy
    logp = token_logp(logits.repeat(KL_SAMPLES, 1, 1), tokens)
    ref_logp = token_logp(start_logits.repeat(KL_SAMPLES, 1, 1), tokens)
    many_mask = mask.repeat(KL_SAMPLES, 1)
    k1, k3 = kl_estimates(logp, ref_logp, many_mask)
    ref_k1 = ppo_math.kl_per_token(logp, ref_logp, many_mask, "k1")
    ref_k3 = ppo_math.kl_per_token(logp, ref_logp, many_mask, "k3")
    p, log_p, log_start = torch.softmax(logits, -1), torch.log_softmax(logits, -1), torch.log_softmax(start_logits, -1)
    exact = ppo_math.masked_mean((p * (log_p - log_start)).sum(dim=-1), mask).item()
    real_k1, real_k3 = k1[many_mask], k3[many_mask]
    print(f"3. how far the policy moved from where it started: KL(moved || start) per token, exactly "
          f"{exact:.5f}; your estimates from {KL_SAMPLES} tokens it samples per position:")
    smallest = real_k3.min().item()
    print(f"   k1 mean {real_k1.mean().item():.5f} (negative on {(real_k1 < 0).float().mean().item():.0%} of the "
          f"tokens), k3 mean {real_k3.mean().item():.5f} (smallest {smallest:.2e}: "
          f"{'never negative' if smallest >= 0 else 'NEGATIVE, but k3 never is'})")
    difference = max((k1 - ref_k1).abs().max().item(), (k3 - ref_k3).abs().max().item())
    print(f"   against ppo_math.kl_per_token (k1 and k3): largest |difference| {difference:.1e} "
          f"-> {'match' if difference < 1e-5 else 'DIFFERENT'}")


def gpt_rollout(policy: GPT, batch: int, length: int, seed: int):
    """Step 4's rollout: the policy answers batch random prompts of 2 or 3 tokens (at most length tokens
    each, at temperature 1), collated as gpt_scratch.rollout does; and the program's score of each answer."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, GPT_VOCAB, (2 + i % 2,), generator=generator).tolist() for i in range(batch)]
    answers = generate(policy, prompts, length, temperature=1.0, eos_id=EOT, seed=seed)
    ended = [bool(a) and a[-1] == EOT for a in answers]
    examples = [Encoded(p + a, [False] * len(p) + [True] * len(a)) for p, a in zip(prompts, answers)]
    rollout = collated(["prompt"] * batch, examples, [""] * batch, ended, pad_id=EOT)
    scores = []  # the "reward model": a program that likes even tokens, and answers that end
    for answer, end in zip(answers, ended):
        words = answer[:-1] if end else answer
        scores.append(sum(1 if t % 2 == 0 else -1 for t in words) / max(1, len(words)) if end else NO_END_PENALTY)
    return rollout, torch.tensor(scores)


def package_update(policy: GPT, value_model: GPTWithHead, reference: GPT, rollout, scores: torch.Tensor,
                   args: argparse.Namespace, kl_coef: float, minibatch_size: int) -> dict[str, list[float]]:
    """gpt_scratch.ppo.ppo_step on the same rollout and scores: ppo_step samples its own rollout and asks a
    reward model, so both are handed to it here (mock.patch); returns each minibatch's two losses."""
    cfg = ppo.PPOConfig(batch_size=args.batch, minibatch_size=minibatch_size, epochs=args.epochs, lr=GPT_LR,
                        value_lr=GPT_LR, clip_range=args.clip, gamma=args.gamma, lam=args.lam,
                        no_end_penalty=NO_END_PENALTY, seed=args.seed, device="cpu", dtype="float32")
    optimizers = (torch.optim.SGD(policy.parameters(), lr=GPT_LR), torch.optim.SGD(value_model.parameters(),
                                                                                        lr=GPT_LR))
    losses = {"policy_loss": [], "value_loss": []}

    def keeping(name, real):
        def wrapper(*arguments):
            loss, stats = real(*arguments)
            losses[name].append(loss.item())
            return loss, stats
        return wrapper

    with mock.patch.object(ppo, "rollout", return_value=rollout), \
            mock.patch.object(ppo, "score_texts", return_value=scores), \
            mock.patch.object(ppo, "clipped_policy_loss", keeping("policy_loss", ppo.clipped_policy_loss)), \
            mock.patch.object(ppo, "clipped_value_loss", keeping("value_loss", ppo.clipped_value_loss)):
        ppo.ppo_step(policy, value_model, reference, None, None, rollout.prompts, cfg, kl_coef, optimizers, 0,
                     torch.device("cpu"))
    return losses


def show_gpt_update(args: argparse.Namespace) -> None:
    """Step 4: your ppo_update on a tiny GPT's rollout, against gpt_scratch.ppo.ppo_step on the same rollout."""
    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=GPT_VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=16)
    reference = GPT(config).eval()  # the "SFT model"; the policy has drifted a little from it
    policy = copy.deepcopy(reference)
    with torch.no_grad():
        for weight in policy.parameters():
            weight.add_(0.05 * torch.randn_like(weight))
    value_model = GPTWithHead(copy.deepcopy(policy), "value")
    rollout, scores = gpt_rollout(policy, args.batch, args.length, args.seed)
    minibatch_size = args.batch // 2 if args.batch % 2 == 0 else args.batch
    order = torch.Generator().manual_seed(args.seed * 7919)  # the order ppo_step draws at step 0
    minibatches = [rows for _ in range(args.epochs) for rows in torch.randperm(args.batch, generator=order).split(
        minibatch_size)]
    kl_coef = 0.1
    package = [copy.deepcopy(m) for m in (policy, value_model)]
    optimizers = (torch.optim.SGD(policy.parameters(), lr=GPT_LR), torch.optim.SGD(value_model.parameters(),
                                                                                        lr=GPT_LR))
    got = ppo_update(policy, value_model, reference, rollout.x, rollout.y, scores, minibatches, optimizers, kl_coef,
                     clip_range=args.clip, gamma=args.gamma, lam=args.lam)
    expected = package_update(*package, reference, rollout, scores, args, kl_coef, minibatch_size)

    mask = rollout.y != IGNORE
    row = int(mask.sum(dim=1).argmin())  # the shortest answer: the most padding
    print(f"4. a tiny GPT ({GPT_VOCAB} tokens, token {EOT} the end-of-text) answered {args.batch} prompts, at most "
          f"{args.length} tokens each; a program scored the answers (+1 per even token, -1 per odd one, over the "
          f"length; {NO_END_PENALTY:g} if it never ended: {int(rollout.ended.sum())} of {args.batch} ended). Your "
          f"ppo_update, kl_coef {kl_coef:g}, clip {args.clip:g}, {len(minibatches)} minibatches of {minibatch_size} "
          f"({args.epochs} epochs), SGD lr {GPT_LR:g}; row {row}, score {scores[row].item():+.3f}:")
    print("      t  target  reward   advantage  return")
    for t in mask[row].nonzero().flatten().tolist():
        print(f"   {t:4}  {rollout.y[row, t].item():6}  {got['rewards'][row, t].item():+.4f}  "
              f"{got['advantages'][row, t].item():+9.4f}  {got['returns'][row, t].item():+.4f}")
    print("   step  policy loss (yours, ppo_step's)  value loss (yours, ppo_step's)")
    for i in range(len(minibatches)):
        print(f"   {i + 1:4}  {got['policy_loss'][i].item():+.5f}, {expected['policy_loss'][i]:+.5f}"
              f"{'':15}{got['value_loss'][i].item():.5f}, {expected['value_loss'][i]:.5f}")
    difference = max((a - b).abs().max().item() for model, other in zip((policy, value_model), package)
                     for a, b in zip(model.parameters(), other.parameters()))
    print(f"   the policy's and the value model's weights after the update, yours against ppo_step's: largest "
          f"|difference| {difference:.1e} -> {'match' if difference < 1e-4 else 'DIFFERENT'}")


def show_ppo(args: argparse.Namespace) -> None:
    generator = torch.Generator().manual_seed(args.seed)
    rewards, values, mask = make_episodes(args.batch, args.length, generator)
    advantages = show_gae(args, rewards, values, mask)
    start_logits = 0.5 * torch.randn(args.batch, args.length, VOCAB_SIZE, generator=generator)
    logits = show_ppo_epochs(args, advantages, mask, start_logits, generator)
    show_kl(args, start_logits, logits, mask, generator)
    show_gpt_update(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        show_ppo(args)
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
