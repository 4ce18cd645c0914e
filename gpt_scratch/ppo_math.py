"""The arithmetic of PPO for RLHF (chapter 9), one small function per idea, with no model in sight.

    kl = kl_per_token(logp, ref_logp, mask)                       # how far the policy has drifted, per token
    rewards, non_score = rlhf_rewards(score, kl, mask, kl_coef)   # -kl_coef * kl everywhere, + score at the end
    advantages, returns = gae(rewards, values, mask, gamma, lam)  # credit for each token, backwards in time
    advantages = masked_whiten(advantages, mask)                  # mean 0, variance 1 over the real tokens
    policy_loss, stats = clipped_policy_loss(new_logp, logp, advantages, mask, clip_range)
    value_loss, value_clip_fraction = clipped_value_loss(new_values, values, returns, mask, clip_range)
    kl_ctl.update(mean_kl, n_steps)                               # adaptive KL: steer the drift to a target

Every tensor is (B, T) over the *response* positions (the prompt is not an action), with a mask
(B, T), float or bool, that is 1 on the response's real tokens (its end-of-text included) and 0
on padding. Padding never changes a result: every function replaces the masked entries by 0
with torch.where *before* doing arithmetic on them (x * mask is not enough: inf * 0 is NaN),
and returns 0 there.

The pieces, in the order one PPO step uses them:
1. Masked statistics (masked_mean, masked_var, masked_whiten): means and variances over the real
   tokens only. Example: x = [1, 2, 3, pad] -> mean 2, variance 2/3 (the population variance,
   dividing by N, not N - 1), whitened [-1.22, 0, 1.22, 0].
2. The KL penalty per token, between the policy and the frozen reference (the SFT model), from the
   log-probabilities of the sampled tokens: k1 = logp - ref_logp (unbiased, but negative on some
   tokens), or k3 = (r - 1) - log r with r = p_ref / p (Schulman's estimator: also unbiased for
   KL(policy || ref) when the tokens are sampled from the policy, and never negative).
   Example: logp = -1, ref_logp = -2 -> k1 = 1, k3 = e^-1 = 0.368.
3. The rewards: the reward model scores the whole response once, so its score is added at the
   response's last real token (its end-of-text); every token also pays -kl_coef * kl for drifting.
   Example: kl = [0.1, 0.2, 0.3, pad], kl_coef 0.5, score 2 -> rewards [-0.05, -0.1, 1.85, 0].
4. Generalized advantage estimation (GAE): the value head guesses, at each token, the reward still
   to come; delta_t = r_t + gamma * V_{t+1} - V_t says how much better token t did than guessed, and
   A_t = delta_t + gamma * lam * A_{t+1} adds up the later surprises, discounted. The episode ends
   at the end-of-text: the value after it is 0. returns = advantages + values is the value head's target.
5. The clipped policy loss: ratio = p_new / p_old of each sampled token; the loss is
   -A * ratio, except that once the ratio has left [1 - eps, 1 + eps] in the direction the
   advantage pushes, the clipped term takes over and that token's gradient is 0. So one batch of
   samples can be reused for several gradient steps without moving the policy far from the one
   that sampled them. How the per-token losses become one number (aggregate_loss) is a choice:
   the mean over every real token of the batch (PPO here, DAPO), each answer's mean then the mean
   over answers (the original GRPO), or each answer's sum over a constant length (Dr. GRPO).
6. The clipped value loss: the same idea for the value head, 0.5 * (V - return)^2, with the new
   value kept within eps of the value at sampling time.
7. The KL controllers: a fixed kl_coef, or Ziegler et al. (2019)'s adaptive one, which raises the
   coefficient while the measured KL is above a target and lowers it while below.
8. The entropy of the policy's next-token distribution: not part of the loss here, but the number
   to watch for a policy that collapses onto one answer (its entropy falls towards 0).
"""

import torch

from gpt_scratch.reward import last_token_index

KL_ESTIMATORS = ("k1", "k3")
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# 1. Masked statistics ------------------------------------------------------------------------------------------

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over the entries where mask is 1, over all of them (dim=None) or along dim.

    Example: x = [[1, 2, 3, 100]], mask = [[1, 1, 1, 0]] -> 2 (the 100 is padding).
    An empty mask (or a row with no real token, along dim) gives 0 rather than 0 / 0 = NaN.
    """
    mask = mask.bool()
    total = torch.where(mask, x, 0).sum(dim=dim)
    count = mask.sum(dim=dim).clamp(min=1)
    return total / count


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance (unbiased=False: divides by N) of x over the entries where mask is 1.

    Example: x = [1, 2, 3] (plus any padding) -> ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3.
    """
    centred = x - masked_mean(x, mask)
    return masked_mean(centred * centred, mask)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the real entries, 0 on padding.

    With shift_mean=False the mean is added back: only the scale changes (used for rewards, whose
    sign means something). Advantages are whitened so that the policy loss has the same size
    whatever the scale of the reward model's scores.
    Example: [1, 2, 3, pad] -> [-1.2247, 0, 1.2247, 0] (1 / sqrt(2/3) = 1.2247).
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0)


# 2. The KL penalty per token ----------------------------------------------------------------------------------

def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                 estimator: str = "k1") -> torch.Tensor:
    """An estimate of KL(policy || reference) at each sampled token (B, T); 0 on padding.

    logp and ref_logp are the log-probabilities of the same sampled tokens under the policy (which
    sampled them) and the reference. With log_ratio = ref_logp - logp and r = exp(log_ratio):
        k1 = -log_ratio = logp - ref_logp      its mean is the KL, but a token can give a negative value
        k3 = (r - 1) - log_ratio               same mean (E[r] = 1 under the policy), and >= 0 always
    Both are exactly 0 where logp == ref_logp.
    Example: logp = -1, ref_logp = -2 -> k1 = 1, k3 = (e^-1 - 1) + 1 = e^-1 = 0.3679.
    "Unbiased" is about the KL's *value*: averaged over tokens sampled from the policy, both give the
    KL. It is not a statement about gradients: used as a per-token reward (PPO here) or as a loss
    term (GRPO's kl_coef), each estimator pushes the policy in its own way, and k3's gradient is not
    an unbiased estimate of the KL's gradient. Both are estimates for tokens the policy sampled,
    under the distribution that sampled them (at the rollout temperature: logprobs.token_logprobs).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, not {estimator!r}")
    mask = mask.bool()
    log_ratio = torch.where(mask, ref_logp - logp, 0)  # zeroed first: exp of padding's garbage could overflow
    if estimator == "k1":
        return -log_ratio
    # expm1(x) = e^x - 1 computed without the rounding of e^x near 1 (small KLs are the usual ones)
    return torch.expm1(log_ratio) - log_ratio


# 3. The rewards ------------------------------------------------------------------------------------------------

def rlhf_rewards(score: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                 kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards (B, T) and each row's total KL penalty (B,).

    Every real token gets -kl_coef * kl; the reward model's score (B,) is added at the row's last
    real token, found from the mask (reward.last_token_index), never assumed to be the last column.
    Example: kl = [[0.1, 0.2, 0.3, 0]], mask = [[1, 1, 1, 0]], kl_coef = 0.5, score = [2]
        -> rewards [[-0.05, -0.1, 1.85, 0]], non_score_reward [-0.3].
    """
    if not mask.bool().any(dim=1).all():
        raise ValueError("a row of the response mask has no real token: every response has at least its end-of-text")
    non_score = torch.where(mask.bool(), -kl_coef * kl, 0)
    rows = torch.arange(score.shape[0], device=score.device)
    rewards = non_score.clone()
    rewards[rows, last_token_index(mask)] += score.to(rewards.dtype)
    return rewards, non_score.sum(dim=1)


# 4. Generalized advantage estimation ---------------------------------------------------------------------------

@torch.no_grad()  # advantages and returns are targets: no gradient may flow back into the values that made them
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (B, T) and 0 on padding, computed backwards in time.

        delta_t = r_t + gamma * V_{t+1} - V_t,      A_t = delta_t + gamma * lam * A_{t+1}
    where t + 1 is the row's next real token, and after its last real token V = A = 0 (the episode
    ends at the end-of-text). returns = advantages + values. lam = 1 makes the returns the
    discounted sum of the rewards to come; lam = 0 makes A_t = delta_t.
    Example: rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 1, lam 0.95:
        A_2 = 1 - 0.7 = 0.3,  A_1 = (0 + 0.7 - 0.6) + 0.95 * 0.3 = 0.385,
        A_0 = (0 + 0.6 - 0.5) + 0.95 * 0.385 = 0.46575;  returns [0.96575, 0.985, 1.0].
    """
    mask = mask.bool()
    rewards, values = torch.where(mask, rewards, 0), torch.where(mask, values, 0)
    next_value = torch.zeros_like(values[:, 0])  # the value and advantage of the next real token
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = []
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        real = mask[:, t]
        advantages.append(torch.where(real, advantage, 0))
        # A padded position is skipped: the next real token's value and advantage carry on past it.
        next_value = torch.where(real, values[:, t], next_value)
        next_advantage = torch.where(real, advantage, next_advantage)
    advantages = torch.stack(advantages[::-1], dim=1)
    returns = torch.where(mask, advantages + values, 0)
    return advantages, returns


# 5. The clipped policy loss ------------------------------------------------------------------------------------

def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, aggregation: str = "token-mean",
                   norm_length: int | None = None) -> torch.Tensor:
    """One number from per-token losses (B, T): how much each token of each answer counts.

        token-mean               sum over every real token / their count: every token counts the same, so a
                                 long answer weighs more than a short one (DAPO; PPO here)
        seq-mean-token-mean      each answer's mean over its tokens, then the mean over answers: every
                                 answer counts the same, so a token of a short answer weighs more (GRPO)
        seq-mean-token-sum-norm  each answer's sum / norm_length (a constant: the longest answer allowed),
                                 then the mean over answers: every token counts the same and no length
                                 changes the scale (Dr. GRPO)
    Example: losses [[1, 2, 3], [4, pad, pad]] -> token-mean 10/4 = 2.5; seq-mean-token-mean
    (2 + 4)/2 = 3; seq-mean-token-sum-norm with norm_length 4: (6/4 + 4/4)/2 = 1.25.
    """
    if aggregation == "token-mean":
        return masked_mean(per_token, mask)
    if aggregation == "seq-mean-token-mean":
        return masked_mean(per_token, mask, dim=1).mean()
    if aggregation == "seq-mean-token-sum-norm":
        if norm_length is None or norm_length < 1:
            raise ValueError(f"seq-mean-token-sum-norm needs a norm_length of at least 1, got {norm_length}")
        return (torch.where(mask.bool(), per_token, 0).sum(dim=1) / norm_length).mean()
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip_range: float, aggregation: str = "token-mean",
                        norm_length: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss, and a few numbers to log.

    logp: the policy now (with gradient); old_logp: the policy that sampled the tokens.
        ratio = exp(logp - old_logp)
        loss  = aggregate_loss of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps))
    (by default the masked mean over every real token; see aggregate_loss for the other choices).
    The max picks the more pessimistic term: with A > 0 the ratio gains nothing above 1 + eps, with
    A < 0 nothing below 1 - eps, and there the clipped term is a constant, so the gradient is 0.
    On the first minibatch of a fresh rollout logp == old_logp: the ratio is exactly 1 and the loss
    is -mean(A). That holds when both come from the same weights without dropout, on the same rows,
    and the kernels are deterministic for the batch's shape (a CPU); in bf16 on a GPU another batch
    shape may round differently, and the ratio can then be 1 +- a few 1e-3.
    Example (eps 0.2): ratio 1.5, A = +1 -> max(-1.5, -1.2) = -1.2, clipped (gradient 0);
                       ratio 1.5, A = -1 -> max(1.5, 1.2) = 1.5, not clipped.
    stats (detached 0-d tensors): clip_fraction, the share of real tokens where the clipped term
    won; approx_kl, the k3 estimate of KL(old || new) (the tokens were sampled by the old policy);
    ratio_mean.
    """
    mask = mask.bool()
    ratio = torch.exp(torch.where(mask, logp - old_logp, 0))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = aggregate_loss(torch.maximum(unclipped, clipped), mask, aggregation, norm_length)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).to(unclipped.dtype), mask),
            "approx_kl": masked_mean(kl_per_token(old_logp, logp, mask, "k3"), mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


# 6. The clipped value loss -------------------------------------------------------------------------------------

def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(0.5 * masked mean of max((V - R)^2, (V_clipped - R)^2), the share of tokens where the clipped term won).

    V_clipped = old_V + clip(V - old_V, -eps, eps): the value head, like the policy, gains nothing
    by moving more than eps from its value at sampling time.
    Example (eps 0.2): old 0, V 0.5, R 1 -> V_clipped 0.2, max(0.25, 0.64) = 0.64 (clipped, gradient 0);
                       old 0, V 0.5, R 0 -> max(0.25, 0.04) = 0.25 (not clipped).
    """
    mask = mask.bool()
    values_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    unclipped = (values - returns) ** 2
    clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(unclipped.dtype), mask)
    return loss, clip_fraction


# 7. The KL controllers -----------------------------------------------------------------------------------------

class FixedKLController:
    """A kl_coef that never changes; update does nothing (the same interface as the adaptive one)."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value


class AdaptiveKLController:
    """Ziegler et al. (2019): steer the measured KL towards a target by scaling kl_coef.

        error = clip(current_kl / target - 1, -0.2, 0.2)
        kl_coef *= 1 + error * n_steps / horizon
    n_steps is the number of samples (episodes) since the last update; horizon sets how fast the
    coefficient moves. The clip keeps one noisy KL measurement from moving it far.
    Example: kl_coef 0.2, target 6, horizon 10000, 256 samples at KL 9 -> error 0.2 (clipped from
    0.5) -> 0.2 * 1.00512 = 0.201024; at KL 5.4 -> error -0.1 -> 0.2 * 0.99744 = 0.199488.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        self.value = init_kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


# 8. The entropy ------------------------------------------------------------------------------------------------

def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean entropy (nats) of the next-token distributions softmax(logits / temperature) over the real positions.

    H = -sum p log p = logsumexp(z) - sum p * z  (with p = softmax(z), since log p = z - logsumexp(z)),
    computed in float32 (bf16 would round it), with z = logits / temperature: the distribution the
    rollouts sample from. Example: uniform logits over V tokens -> log V at any temperature.
    """
    logits = logits.float() / temperature
    p = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (p * logits).sum(dim=-1)
    return masked_mean(entropy, mask)
