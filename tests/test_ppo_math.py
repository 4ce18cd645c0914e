"""Chapter 9: the arithmetic of PPO -- masked statistics, KL, rewards, GAE, clipped losses, KL control, entropy.

The expected numbers are worked out by hand (in the comments); the tensors are float64 so that
they can be compared to 1e-12. Padding is filled with large values (GARBAGE) wherever a result
must not depend on it.
"""

import math

import pytest
import torch

from gpt_scratch.ppo_math import (AdaptiveKLController, FixedKLController, clipped_policy_loss, clipped_value_loss,
                                  entropy_from_logits, gae, kl_per_token, masked_mean, masked_var, masked_whiten,
                                  rlhf_rewards)

GARBAGE = 1e4
TOL = 1e-12


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def with_garbage(x: torch.Tensor, mask: torch.Tensor, value: float = GARBAGE) -> torch.Tensor:
    """x with its padded entries replaced by a large value."""
    return torch.where(mask.bool(), x, value)


def close(actual: torch.Tensor, expected) -> bool:
    return torch.allclose(actual, t(expected), rtol=0, atol=TOL)


# Two rows of different lengths, right padding: 3 real tokens, then 2.
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


# 1. Masked statistics


def test_masked_mean_var_and_whiten_by_hand():
    x = t([[1, 2, 3, 0], [4, 5, 0, 0]])
    # real entries 1, 2, 3, 4, 5: mean 3, population variance (4 + 1 + 0 + 1 + 4) / 5 = 2
    assert masked_mean(x, MASK).item() == pytest.approx(3.0, abs=TOL)
    assert masked_var(x, MASK).item() == pytest.approx(2.0, abs=TOL)
    assert close(masked_mean(x, MASK, dim=1), [2.0, 4.5])
    # whitened: (x - 3) / sqrt(2 + 1e-8)
    s = 1 / math.sqrt(2 + 1e-8)
    assert close(masked_whiten(x, MASK), [[-2 * s, -s, 0, 0], [s, 2 * s, 0, 0]])
    # shift_mean=False: the scale changes, the mean stays; padding is still 0
    assert close(masked_whiten(x, MASK, shift_mean=False), [[3 - 2 * s, 3 - s, 3, 0], [3 + s, 3 + 2 * s, 0, 0]])
    # the docstring's example: [1, 2, 3, pad] -> variance 2/3, whitened +-1.2247
    one = t([[1, 2, 3, 0]])
    assert masked_var(one, MASK[:1]).item() == pytest.approx(2 / 3, abs=TOL)
    assert masked_whiten(one, MASK[:1])[0, 2].item() == pytest.approx(1 / math.sqrt(2 / 3 + 1e-8), abs=TOL)


def test_whitened_values_have_mean_0_and_variance_1_over_the_real_entries():
    torch.manual_seed(0)
    x = torch.randn(4, 7, dtype=torch.float64) * 5 + 3
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [1] * 5 + [0] * 2, [1] + [0] * 6])
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-12)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-6)  # 1e-8 in the denominator


def test_masked_statistics_ignore_padding_and_accept_bool_or_float_masks():
    torch.manual_seed(0)
    x = torch.randn(2, 4, dtype=torch.float64)
    for fn in (masked_mean, masked_var, masked_whiten):
        base = fn(x, MASK)
        assert torch.equal(fn(with_garbage(x, MASK), MASK), base)
        assert torch.equal(fn(with_garbage(x, MASK, -GARBAGE), MASK.bool()), base)
        assert torch.equal(fn(x, MASK.double()), base)
    assert torch.equal(masked_mean(with_garbage(x, MASK), MASK, dim=1), masked_mean(x, MASK, dim=1))


def test_masked_mean_of_an_empty_mask_is_0_not_nan():
    x = t([[1, 2], [3, 4]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert masked_mean(x, torch.zeros(2, 2)).item() == 0.0
    assert close(masked_mean(x, mask, dim=1), [1.5, 0.0])


# 2. The KL penalty per token


def test_kl_estimators_by_hand():
    mask = torch.ones(1, 2)
    logp, ref = t([[-1.0, -2.0]]), t([[-2.0, -1.0]])
    assert close(kl_per_token(logp, ref, mask, "k1"), [[1.0, -1.0]])
    # k3 = (r - 1) - log r, r = exp(ref - logp): r = e^-1 -> e^-1 = 0.3679; r = e -> e - 2 = 0.7183
    assert close(kl_per_token(logp, ref, mask, "k3"), [[math.exp(-1), math.e - 2]])
    assert kl_per_token(logp, ref, mask, "k3")[0, 0].item() == pytest.approx(0.3679, abs=1e-4)


def test_kl_is_exactly_0_for_equal_logprobs_and_k3_is_never_negative():
    torch.manual_seed(0)
    logp = -torch.rand(3, 5) * 8
    mask = torch.ones(3, 5)
    for estimator in ("k1", "k3"):
        assert torch.equal(kl_per_token(logp, logp.clone(), mask, estimator), torch.zeros(3, 5))
    ref = -torch.rand(3, 5) * 8
    assert (kl_per_token(logp, ref, mask, "k3") >= 0).all()
    assert (kl_per_token(logp, ref, mask, "k1") < 0).any()  # what k3 is for


def test_kl_is_0_on_padding_whatever_is_there():
    logp, ref = t([[-1, -2, -3, 0], [-1, -1, 0, 0]]), t([[-2, -2, -1, 0], [-3, -1, 0, 0]])
    for estimator in ("k1", "k3"):
        kl = kl_per_token(logp, ref, MASK, estimator)
        # ref - logp = GARBAGE on padding would overflow exp in k3 if it were not zeroed first
        garbage = kl_per_token(with_garbage(logp, MASK, -GARBAGE), with_garbage(ref, MASK), MASK, estimator)
        assert torch.equal(garbage, kl)
        assert (kl[~MASK.bool()] == 0).all()


def test_unknown_kl_estimator_is_refused():
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), "k2")


# 3. The rewards


def test_score_lands_on_each_rows_last_real_token():
    kl = t([[0.1, 0.2, 0.3, 0.0], [0.4, 0.5, 0.0, 0.0]])
    score = t([2.0, -1.0])
    rewards, non_score = rlhf_rewards(score, kl, MASK, kl_coef=0.5)
    # row 0: -0.5 * kl, + 2 at index 2; row 1: -0.5 * kl, - 1 at index 1; padding 0
    assert close(rewards, [[-0.05, -0.1, -0.15 + 2.0, 0.0], [-0.2, -0.25 - 1.0, 0.0, 0.0]])
    assert close(non_score, [-0.3, -0.45])
    # the garbage in the padding changes nothing, and the score is not put in the last column
    garbage_rewards, garbage_non_score = rlhf_rewards(score, with_garbage(kl, MASK), MASK.bool(), kl_coef=0.5)
    assert torch.equal(garbage_rewards, rewards) and torch.equal(garbage_non_score, non_score)


def test_score_on_a_full_row_and_a_one_token_row():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards, non_score = rlhf_rewards(t([1.0, 3.0]), torch.zeros(2, 3, dtype=torch.float64), mask, kl_coef=0.1)
    assert close(rewards, [[0, 0, 1.0], [3.0, 0, 0]])
    assert close(non_score, [0.0, 0.0])


def test_a_row_without_a_real_token_is_refused():
    with pytest.raises(ValueError, match="no real token"):
        rlhf_rewards(t([1.0, 1.0]), torch.zeros(2, 3), torch.tensor([[1, 1, 0], [0, 0, 0]]), kl_coef=0.1)


# 4. Generalized advantage estimation


def test_gae_by_hand():
    rewards, values, mask = t([[0, 0, 1]]), t([[0.5, 0.6, 0.7]]), torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # A_2 = 1 + 0 - 0.7 = 0.3
    # A_1 = (0 + 0.7 - 0.6) + 0.95 * 0.3 = 0.1 + 0.285 = 0.385
    # A_0 = (0 + 0.6 - 0.5) + 0.95 * 0.385 = 0.1 + 0.36575 = 0.46575
    assert close(advantages, [[0.46575, 0.385, 0.3]])
    assert close(returns, [[0.96575, 0.985, 1.0]])


def test_gae_with_gamma_below_1():
    rewards, values, mask = t([[0, 0, 1]]), t([[0.5, 0.6, 0.7]]), torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.95)
    # gamma * lam = 0.855
    # A_2 = 1 + 0.9 * 0 - 0.7 = 0.3
    # A_1 = (0 + 0.9 * 0.7 - 0.6) + 0.855 * 0.3 = 0.03 + 0.2565 = 0.2865
    # A_0 = (0 + 0.9 * 0.6 - 0.5) + 0.855 * 0.2865 = 0.04 + 0.2449575 = 0.2849575
    assert close(advantages, [[0.2849575, 0.2865, 0.3]])
    assert close(returns, [[0.7849575, 0.8865, 1.0]])


def test_gae_limits_lam_1_and_lam_0():
    rewards, values, mask = t([[0.5, -1, 2]]), t([[0.3, 0.2, 0.1]]), torch.ones(1, 3)
    # lam = 1: returns are the discounted rewards to come, whatever the values
    # gamma 0.5: R_2 = 2, R_1 = -1 + 0.5 * 2 = 0, R_0 = 0.5 + 0.5 * 0 = 0.5
    _, returns = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    assert close(returns, [[0.5, 0.0, 2.0]])
    # lam = 0: A_t = delta_t = r_t + 0.5 * V_{t+1} - V_t
    advantages, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    assert close(advantages, [[0.5 + 0.1 - 0.3, -1 + 0.05 - 0.2, 2 - 0.1]])


def test_gae_ignores_padding_and_ends_each_row_at_its_last_real_token():
    # row 0 is the hand example; row 1 is the same episode cut to 2 tokens (reward 1 at its end-of-text)
    rewards, values = t([[0, 0, 1, 0], [0, 1, 0, 0]]), t([[0.5, 0.6, 0.7, 0], [0.5, 0.6, 0, 0]])
    advantages, returns = gae(rewards, values, MASK, gamma=1.0, lam=0.95)
    # row 1: A_1 = 1 - 0.6 = 0.4 (the value after the end-of-text is 0, not the padding's),
    #        A_0 = (0 + 0.6 - 0.5) + 0.95 * 0.4 = 0.48
    assert close(advantages, [[0.46575, 0.385, 0.3, 0], [0.48, 0.4, 0, 0]])
    assert close(returns, [[0.96575, 0.985, 1.0, 0], [0.98, 1.0, 0, 0]])
    garbage = gae(with_garbage(rewards, MASK), with_garbage(values, MASK, -GARBAGE), MASK.bool(), gamma=1.0, lam=0.95)
    assert torch.equal(garbage[0], advantages) and torch.equal(garbage[1], returns)


def test_gae_skips_left_padding_too():
    rewards, values = t([[0, 0, 0, 1]]), t([[0, 0.5, 0.6, 0.7]])
    mask = torch.tensor([[0, 1, 1, 1]])
    advantages, _ = gae(with_garbage(rewards, mask), with_garbage(values, mask), mask, gamma=1.0, lam=0.95)
    assert close(advantages, [[0, 0.46575, 0.385, 0.3]])


def test_gae_gives_no_gradient_to_the_values():
    values = t([[0.5, 0.6, 0.7]]).requires_grad_()
    advantages, returns = gae(t([[0, 0, 1]]), values, torch.ones(1, 3), gamma=1.0, lam=0.95)
    assert not advantages.requires_grad and not returns.requires_grad


# 5. The clipped policy loss


def test_fresh_rollout_ratio_is_exactly_1_and_the_loss_is_the_unclipped_one():
    torch.manual_seed(0)
    old_logp = -torch.rand(2, 4) * 5
    logp = old_logp.clone().requires_grad_()
    advantages = torch.randn(2, 4)
    loss, stats = clipped_policy_loss(logp, old_logp, advantages, MASK, clip_range=0.2)
    assert torch.equal(loss, -masked_mean(advantages, MASK))
    assert stats["clip_fraction"].item() == 0.0
    assert stats["ratio_mean"].item() == 1.0
    assert stats["approx_kl"].item() == 0.0
    loss.backward()
    # d/d logp of -A * exp(logp - old) at logp = old: -A / (number of real tokens), 0 on padding
    assert torch.allclose(logp.grad, torch.where(MASK.bool(), -advantages / 5, 0))


def test_clipping_by_hand_with_autograd():
    eps = 0.2
    old_logp = t([[-1.0, -1.0, -1.0, -1.0, -1.0]])
    # ratios 1.5, 1.5, 0.5, 0.5, and a padded position
    logp = (old_logp + t([[math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5), GARBAGE]])).requires_grad_()
    advantages = t([[1.0, -1.0, -1.0, 1.0, GARBAGE]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = clipped_policy_loss(logp, old_logp, advantages, mask, clip_range=eps)
    # token 0: ratio 1.5, A +1: max(-1.5, -1.2) = -1.2   clipped (no gain above 1 + eps)
    # token 1: ratio 1.5, A -1: max( 1.5,  1.2) =  1.5   not clipped
    # token 2: ratio 0.5, A -1: max( 0.5,  0.8) =  0.8   clipped (no gain below 1 - eps)
    # token 3: ratio 0.5, A +1: max(-0.5, -0.8) = -0.5   not clipped
    # loss = (-1.2 + 1.5 + 0.8 - 0.5) / 4 = 0.15
    assert loss.item() == pytest.approx(0.15, abs=TOL)
    assert stats["clip_fraction"].item() == pytest.approx(0.5, abs=TOL)
    assert stats["ratio_mean"].item() == pytest.approx(1.0, abs=TOL)
    # approx_kl = mean of k3 = (r - 1) - log r: 2 * (0.5 - ln 1.5) + 2 * (-0.5 + ln 2), over 4
    expected_kl = (2 * (0.5 - math.log(1.5)) + 2 * (-0.5 + math.log(2))) / 4
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, abs=TOL)
    assert expected_kl == pytest.approx(0.143841, abs=1e-6)
    loss.backward()
    # gradient of -A * ratio with respect to logp is -A * ratio, / 4 tokens; 0 where clipped or padded
    assert close(logp.grad, [[0.0, 1.5 / 4, 0.0, -0.5 / 4, 0.0]])


def test_policy_loss_ignores_padding():
    torch.manual_seed(1)
    old_logp = -torch.rand(2, 4, dtype=torch.float64) * 3
    logp = old_logp + torch.randn(2, 4, dtype=torch.float64) * 0.3
    advantages = torch.randn(2, 4, dtype=torch.float64)
    loss, stats = clipped_policy_loss(logp, old_logp, advantages, MASK, clip_range=0.2)
    garbage_loss, garbage_stats = clipped_policy_loss(with_garbage(logp, MASK), with_garbage(old_logp, MASK, -GARBAGE),
                                                      with_garbage(advantages, MASK), MASK.bool(), clip_range=0.2)
    assert torch.equal(garbage_loss, loss)
    for key in stats:
        assert torch.equal(garbage_stats[key], stats[key])


# 6. The clipped value loss


def test_clipped_value_loss_by_hand():
    old_values = t([[0.0, 0.0, 0.0, 0.0]])
    values = t([[0.5, 0.5, 0.1, GARBAGE]]).requires_grad_()
    returns = t([[1.0, 0.0, 1.0, -GARBAGE]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clip_fraction = clipped_value_loss(values, old_values, returns, mask, clip_range=0.2)
    # token 0: V 0.5 -> clipped 0.2; (0.5 - 1)^2 = 0.25, (0.2 - 1)^2 = 0.64 -> 0.64 clipped
    # token 1: V 0.5 -> clipped 0.2; (0.5 - 0)^2 = 0.25, (0.2 - 0)^2 = 0.04 -> 0.25 not clipped
    # token 2: V 0.1 inside the range; (0.1 - 1)^2 = 0.81 both -> 0.81
    # loss = 0.5 * (0.64 + 0.25 + 0.81) / 3 = 0.283333...
    assert loss.item() == pytest.approx(0.5 * 1.7 / 3, abs=TOL)
    assert clip_fraction.item() == pytest.approx(1 / 3, abs=TOL)
    loss.backward()
    # d/dV of 0.5 * (V - R)^2 / 3 = (V - R) / 3 where unclipped; 0 where clipped or padded
    assert close(values.grad, [[0.0, 0.5 / 3, -0.9 / 3, 0.0]])


# 7. The KL controllers


def test_adaptive_kl_controller_above_and_below_target():
    above = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    # KL 9: 9/6 - 1 = 0.5, clipped to 0.2 -> 0.2 * (1 + 0.2 * 256 / 10000) = 0.2 * 1.00512 = 0.201024
    assert above.update(9.0, n_steps=256) == pytest.approx(0.201024, abs=TOL)
    assert above.value == pytest.approx(0.201024, abs=TOL)
    below = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    # KL 5.4: 5.4/6 - 1 = -0.1 (inside the clip) -> 0.2 * (1 - 0.1 * 256 / 10000) = 0.2 * 0.99744 = 0.199488
    assert below.update(5.4, n_steps=256) == pytest.approx(0.199488, abs=TOL)
    at_target = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert at_target.update(6.0, n_steps=256) == 0.2
    far_below = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    # KL 0: -1 clipped to -0.2 -> 0.2 * (1 - 0.2 * 256 / 10000) = 0.198976
    assert far_below.update(0.0, n_steps=256) == pytest.approx(0.198976, abs=TOL)


def test_fixed_kl_controller_never_changes():
    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, n_steps=256) == 0.05 and fixed.update(0.0, n_steps=256) == 0.05
    assert fixed.value == 0.05


# 8. The entropy


def test_entropy_of_uniform_logits_is_log_vocab():
    vocab = 7
    logits = torch.zeros(2, 4, vocab)
    logits[~MASK.bool()] = torch.linspace(-GARBAGE, GARBAGE, vocab)  # peaked garbage on padding: entropy ~0 there
    assert entropy_from_logits(logits, MASK).item() == pytest.approx(math.log(vocab), abs=1e-6)
    # a bf16 input is computed in float32 and gives the same
    assert entropy_from_logits(logits.bfloat16(), MASK).dtype == torch.float32


def test_entropy_matches_the_definition():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 11) * 3
    expected = torch.distributions.Categorical(logits=logits).entropy()
    assert entropy_from_logits(logits, MASK).item() == pytest.approx(masked_mean(expected, MASK).item(), abs=1e-5)
    # one token: p = (0.5, 0.25, 0.25) from logits log p -> H = 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2
    one = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert entropy_from_logits(one, torch.ones(1, 1)).item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
