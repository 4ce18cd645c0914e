"""Grades chapter 9 (exercises/ch09/ex1_ppo.py): one test per exercise.

The reference is gpt_scratch.ppo_math: gae, clipped_policy_loss (whose first return value is the
loss) and kl_per_token (estimator "k1" or "k3"). The hand-computed examples are those of the
docstrings; the random ones are right-padded batches whose padding holds GARBAGE, which must
never reach a result. The PPO update of a GPT (9.4) is graded against gpt_scratch.ppo.ppo_step
handed the same rollout and scores, on tiny GPTs of fixed seeds. Each test calls only its own
exercise (9.4 gets the package's versions of 9.1 to 9.3), so an unfinished one fails alone.
"""

import copy
import math

import pytest
import torch

import gpt_scratch.ppo as ppo_module
from gpt_scratch import ppo_math
from gpt_scratch.data import Encoded
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.rollout import collated

from checks import call, check, check_type, check_losses, close, close_parameters, expect_close

SCRIPT = "ch09/ex1_ppo.py"
GARBAGE = 1e3  # what the padded entries hold


@pytest.fixture
def ppo(load_exercise):
    return load_exercise(SCRIPT)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def random_batch(seed: int, batch: int, length: int, float_mask: bool = False):
    """(generator, mask) with right padding: rows of 1 to length real tokens, one of each extreme length."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0], lengths[-1] = length, 1
    mask = torch.arange(length) < lengths[:, None]
    return generator, (mask.float() if float_mask else mask)


def with_garbage(x: torch.Tensor, mask: torch.Tensor, value: float = GARBAGE) -> torch.Tensor:
    return torch.where(mask.bool(), x, value)


def check_pair(what: str, got, n: int = 2) -> None:
    check_type(what, got, tuple, f"return a tuple of {n} tensors")
    check(what, len(got), n, f"return a tuple of {n} tensors", verb="returned a tuple of length")


def test_ex_9_1_gae(ppo):
    # The docstring's example: rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 1, lam 0.95.
    rewards, values, mask = t([[0, 0, 1]]), t([[0.5, 0.6, 0.7]]), torch.tensor([[True, True, True]])
    got, what = call(ppo.gae, rewards, values, mask, 1.0, 0.95)
    check_pair(what, got)
    close(what, got, (t([[0.46575, 0.385, 0.3]]), t([[0.96575, 0.985, 1.0]])),
          "A_2 = 1 - 0.7, A_1 = 0.1 + 0.95 * A_2, A_0 = 0.1 + 0.95 * A_1; returns = A + V", atol=1e-6, rtol=0)
    # The same episode padded (the padding holds garbage): the padding must not change anything.
    expect_close(ppo.gae, t([[0, 0, 1, GARBAGE]]), t([[0.5, 0.6, 0.7, GARBAGE]]), torch.tensor([[1, 1, 1, 0]]), 1.0,
                 0.95, equals=(t([[0.46575, 0.385, 0.3, 0]]), t([[0.96575, 0.985, 1.0, 0]])),
                 why="after the last real token V = A = 0, and padding gets 0", tolerance=dict(atol=1e-6, rtol=0))
    # gamma < 1 by hand: rewards [1, 2], values [0, 0], gamma 0.5, lam 1: A_1 = 2, A_0 = 1 + 0.5 * 2 = 2.
    expect_close(ppo.gae, t([[1, 2]]), t([[0, 0]]), torch.tensor([[True, True]]), 0.5, 1.0,
                 equals=(t([[2, 2]]), t([[2, 2]])), why="A_0 = r_0 + gamma * V_1 - V_0 + gamma * lam * A_1",
                 tolerance=dict(atol=1e-6, rtol=0))
    # lam 0: A_t = delta_t = r_t + gamma * V_{t+1} - V_t; the last real token has no V_{t+1}.
    expect_close(ppo.gae, t([[0, 0, 1]]), t([[0.5, 0.6, 0.7]]), torch.tensor([[True, True, True]]), 1.0, 0.0,
                 equals=(t([[0.1, 0.1, 0.3]]), t([[0.6, 0.7, 1.0]])), why="lam 0 gives A_t = delta_t",
                 tolerance=dict(atol=1e-6, rtol=0))
    # A row of one real token: A = r - V whatever gamma and lam.
    expect_close(ppo.gae, t([[2, GARBAGE, GARBAGE]]), t([[0.5, GARBAGE, GARBAGE]]), torch.tensor([[1, 0, 0]]), 0.9,
                 0.5, equals=(t([[1.5, 0, 0]]), t([[2, 0, 0]])), why="one real token: A = r - V, returns = r",
                 tolerance=dict(atol=1e-6, rtol=0))
    # Random right-padded batches, float and bool masks: the reference.
    for seed, batch, length, gamma, lam, float_mask in ((0, 4, 6, 1.0, 0.95, False), (1, 7, 11, 0.9, 0.8, True),
                                                        (2, 3, 5, 0.99, 0.0, False), (3, 5, 9, 1.0, 1.0, True),
                                                        (4, 2, 1, 0.5, 0.5, False), (5, 16, 20, 0.0, 0.7, False)):
        generator, mask = random_batch(seed, batch, length, float_mask)
        rewards = with_garbage(torch.randn(batch, length, generator=generator), mask)
        values = with_garbage(torch.randn(batch, length, generator=generator), mask)
        before = rewards.clone(), values.clone(), mask.clone()
        got, what = call(ppo.gae, rewards, values, mask, gamma, lam)
        what = f"{what} (gamma {gamma}, lam {lam}, {'float' if float_mask else 'bool'} mask)"
        for name, tensor, old in zip(("rewards", "values", "mask"), (rewards, values, mask), before):
            assert torch.equal(tensor, old), f"{what} changed its argument {name}; do not change the inputs"
        check_pair(what, got)
        close(what, got, ppo_math.gae(rewards, values, mask, gamma, lam), "differs from gpt_scratch.ppo_math.gae",
              atol=1e-5, rtol=1e-5)
        if gamma == 1.0 and lam == 1.0:  # then the returns are the sums of the rewards still to come
            to_come = torch.where(mask.bool(), rewards, 0).flip(1).cumsum(1).flip(1)
            close(f"the returns of {what}", got[1], torch.where(mask.bool(), to_come, 0),
                  "gamma 1 and lam 1: the returns are the sums of the rewards still to come", atol=1e-4, rtol=1e-5)


def test_ex_9_2_clipped_policy_loss(ppo):
    one = torch.tensor([[True]])

    def single(ratio: float, advantage: float, expected: float, why: str) -> None:
        expect_close(ppo.clipped_policy_loss, t([[math.log(ratio)]]), t([[0.0]]), t([[advantage]]), one, 0.2,
                     equals=torch.tensor(expected), why=why, tolerance=dict(atol=1e-6, rtol=0))

    loss, what = call(ppo.clipped_policy_loss, t([[0.0]]), t([[0.0]]), t([[1.0]]), one, 0.2)
    check_type(what, loss, torch.Tensor, "return a scalar (0-dimensional) tensor")
    check(what, tuple(loss.shape), (), "return a scalar (0-dimensional) tensor, the mean over the real tokens",
          verb="returned a tensor of shape")
    single(1.5, 1.0, -1.2, "A > 0: above 1 + eps the clipped term -A * 1.2 is the larger one")
    single(1.5, -1.0, 1.5, "A < 0: max(-A * 1.5, -A * 1.2) = 1.5, not clipped")
    single(0.5, -1.0, 0.8, "A < 0: below 1 - eps the clipped term -A * 0.8 is the larger one")
    single(0.5, 1.0, -0.5, "A > 0: max(-0.5, -0.8) = -0.5, not clipped")
    single(1.1, 2.0, -2.2, "inside [1 - eps, 1 + eps] the loss is -A * ratio")
    # The mean over the real tokens only (not the sum, not over the padding), whose garbage stays out.
    expect_close(ppo.clipped_policy_loss, t([[math.log(1.5), math.log(1.1), GARBAGE]]), t([[0.0, 0.0, -GARBAGE]]),
                 t([[1.0, 2.0, GARBAGE]]), torch.tensor([[1, 1, 0]]), 0.2, equals=torch.tensor((-1.2 - 2.2) / 2),
                 why="the mean over the 2 real tokens; the padding (garbage) must not count",
                 tolerance=dict(atol=1e-5, rtol=0))
    # Random batches, the ratio exactly 1 (a fresh rollout): the loss is -mean(A) over the real tokens.
    for seed, batch, length, clip in ((0, 4, 6, 0.2), (1, 9, 13, 0.1), (2, 1, 1, 0.3)):
        generator, mask = random_batch(seed, batch, length)
        logp = with_garbage(-3 * torch.rand(batch, length, generator=generator), mask, -GARBAGE)
        advantages = with_garbage(torch.randn(batch, length, generator=generator), mask)
        got, what = call(ppo.clipped_policy_loss, logp, logp.clone(), advantages, mask, clip)
        close(f"{what} (logp == old_logp)", got, -advantages[mask].mean(),
              "the ratio is exactly 1 on a fresh rollout, so the loss is -mean(A) over the real tokens",
              atol=1e-6, rtol=1e-6)
    # The gradient (autograd): a clipped token's is 0, an unclipped one's is -A * ratio / (number of real tokens).
    logp = t([[math.log(1.5), math.log(1.5), math.log(1.1), math.log(0.5), GARBAGE]]).requires_grad_()
    advantages = t([[1.0, -1.0, 1.0, -1.0, GARBAGE]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, what = call(ppo.clipped_policy_loss, logp, torch.zeros(1, 5), advantages, mask, 0.2)
    assert loss.requires_grad, f"{what} returned a loss without a gradient; do not detach it (or use .item())"
    loss.backward()
    close(f"the gradient with respect to logp of {what}", logp.grad, t([[0.0, 1.5 / 4, -1.1 / 4, 0.0, 0.0]]),
          "a clipped token (ratio 1.5 with A > 0, ratio 0.5 with A < 0) and the padding get gradient 0; the others "
          "-A * ratio / 4", atol=1e-6, rtol=0)
    # Random batches with moved policies: the loss and its gradient equal the reference's.
    for seed, batch, length, clip in ((3, 4, 6, 0.2), (4, 8, 16, 0.1), (5, 3, 7, 0.5), (6, 2, 1, 0.2)):
        generator, mask = random_batch(seed, batch, length, float_mask=seed % 2 == 1)
        old_logp = with_garbage(-3 * torch.rand(batch, length, generator=generator), mask, -GARBAGE)
        logp = with_garbage(old_logp + 0.3 * torch.randn(batch, length, generator=generator), mask, GARBAGE)
        advantages = with_garbage(torch.randn(batch, length, generator=generator), mask)
        logp.requires_grad_()
        got, what = call(ppo.clipped_policy_loss, logp, old_logp, advantages, mask, clip)
        got.backward()
        got_grad, logp.grad = logp.grad.clone(), None
        expected, _ = ppo_math.clipped_policy_loss(logp, old_logp, advantages, mask, clip)
        expected.backward()
        close(what, got.detach(), expected.detach(), "differs from gpt_scratch.ppo_math.clipped_policy_loss",
              atol=1e-5, rtol=1e-5)
        close(f"the gradient with respect to logp of {what}", got_grad, logp.grad,
              "differs from gpt_scratch.ppo_math's", atol=1e-6, rtol=1e-5)


def test_ex_9_3_kl_estimates(ppo):
    one = torch.tensor([[True]])
    got, what = call(ppo.kl_estimates, t([[-1.0]]), t([[-2.0]]), one)
    check_pair(what, got)
    close(what, got, (t([[1.0]]), t([[math.exp(-1)]])), "k1 = logp - ref_logp = 1, k3 = (e^-1 - 1) + 1 = e^-1",
          atol=1e-6, rtol=0)
    expect_close(ppo.kl_estimates, t([[-2.0]]), t([[-1.0]]), one, equals=(t([[-1.0]]), t([[math.e - 2]])),
                 why="the reference likes the token more: k1 is negative, k3 = (e - 1) - 1 is not",
                 tolerance=dict(atol=1e-6, rtol=0))
    # Equal log-probabilities: both exactly 0.
    logp = -4 * torch.rand(3, 5, generator=torch.Generator().manual_seed(0))
    expect_close(ppo.kl_estimates, logp, logp.clone(), torch.ones(3, 5, dtype=torch.bool),
                 equals=(torch.zeros(3, 5), torch.zeros(3, 5)), why="the policy equals the reference: both 0",
                 tolerance=dict(atol=0, rtol=0))
    # Padding holds garbage far enough apart that e^(ref_logp - logp) overflows: still 0 there, never NaN.
    expect_close(ppo.kl_estimates, t([[-1.0, -GARBAGE]]), t([[-2.0, 0.0]]), torch.tensor([[1, 0]]),
                 equals=(t([[1.0, 0.0]]), t([[math.exp(-1), 0.0]])),
                 why="0 on padding: torch.where the log-ratio to 0 before exp (inf * 0 is NaN)",
                 tolerance=dict(atol=1e-6, rtol=0))
    # Nearly equal log-probabilities: k3 is tiny but never negative (torch.expm1, not torch.exp(x) - 1).
    logp = -4 * torch.rand(4, 64, generator=torch.Generator().manual_seed(1))
    ref_logp = logp + 1e-6 * torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    (_, k3), what = call(ppo.kl_estimates, logp, ref_logp, torch.ones(4, 64, dtype=torch.bool))
    assert k3.min() >= 0, (f"{what} (log-probabilities about 1e-6 apart) returned a k3 down to "
                           f"{k3.min().item():.3g}, expected k3 >= 0; compute e^x - 1 as torch.expm1(x): "
                           f"torch.exp(x) - 1 rounds e^x for a tiny x")
    # Random right-padded batches: the reference, and k3 >= 0 everywhere.
    for seed, batch, length, spread in ((3, 4, 6, 1.0), (4, 9, 12, 0.1), (5, 2, 1, 3.0), (6, 16, 20, 0.01)):
        generator, mask = random_batch(seed, batch, length, float_mask=seed % 2 == 0)
        logp = with_garbage(-3 * torch.rand(batch, length, generator=generator), mask, -GARBAGE)
        ref_logp = with_garbage(logp + spread * torch.randn(batch, length, generator=generator), mask, 0.0)
        got, what = call(ppo.kl_estimates, logp, ref_logp, mask)
        check_pair(what, got)
        expected = (ppo_math.kl_per_token(logp, ref_logp, mask, "k1"), ppo_math.kl_per_token(logp, ref_logp, mask, "k3"))
        close(what, got, expected, "differs from gpt_scratch.ppo_math.kl_per_token (k1, k3)", atol=1e-6, rtol=1e-5)
        assert got[1].min() >= 0, f"{what} returned a k3 down to {got[1].min().item():.3g}, expected k3 >= 0"



# Exercise 9.4: one PPO update of a GPT --------------------------------------------------------------------------

EOT = 0  # the end-of-text id of the rollouts below, which is also their pad id
STEP_DIFFERS = ("a gradient step differs (zero both gradients, one backward of the sum, clip each model's gradient "
                "norm, step each), or a loss once the models have moved (the clipped terms)")


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def hand_rollout(seed: int, n: int):
    """A Rollout of n answers as gpt_scratch.rollout collates them: prompts of 2 to 4 tokens, answers of 1 to 5
    tokens and their end-of-text; row 0 the longest, the last row an answer that never ended."""
    generator = torch.Generator().manual_seed(seed)
    examples, ended = [], []
    for row in range(n):
        prompt = torch.randint(1, 16, (int(torch.randint(2, 5, (1,), generator=generator)),), generator=generator)
        n_answer = 6 if row == 0 else int(torch.randint(1, 6, (1,), generator=generator))
        answer = torch.randint(1, 16, (n_answer,), generator=generator).tolist()
        ends = row < n - 1
        answer = answer + [EOT] if ends else answer
        examples.append(Encoded(prompt.tolist() + answer, [False] * len(prompt) + [True] * len(answer)))
        ended.append(ends)
    return collated(["prompt"] * n, examples, [""] * n, ended, pad_id=EOT)


def package_ppo_step(monkeypatch, policy, value_model, reference, rollout, scores, cfg, kl_coef, optimizers) -> dict:
    """gpt_scratch.ppo.ppo_step handed this rollout and these scores; returns what it computed on the way:
    rewards, raw advantages and returns (gae), whitened advantages, and every minibatch's two losses."""
    seen = {"policy_loss": [], "value_loss": []}
    with monkeypatch.context() as patch:
        def keep(name, key=None):
            real = getattr(ppo_module, name)

            def wrapper(*args, **kwargs):
                result = real(*args, **kwargs)
                if key:  # a loss: keep every call's
                    seen[key].append(result[0].item())
                else:
                    seen.setdefault(name, result)
                return result
            patch.setattr(ppo_module, name, wrapper)

        for name in ("rlhf_rewards", "gae", "masked_whiten"):
            keep(name)
        keep("clipped_policy_loss", "policy_loss")
        keep("clipped_value_loss", "value_loss")
        patch.setattr(ppo_module, "rollout", lambda *args, **kwargs: rollout)
        patch.setattr(ppo_module, "score_texts", lambda *args, **kwargs: scores.clone())
        ppo_module.ppo_step(policy, value_model, reference, None, None, rollout.prompts, cfg, kl_coef, optimizers, 0,
                            torch.device("cpu"))
    return seen


def test_ex_9_4_ppo_update(ppo, monkeypatch):
    cases = [dict(seed=0, n=6, minibatch=3, kl_coef=0.2, clip=0.2, value_clip=0.2, gamma=1.0, lam=0.95,
                  temperature=1.0, grad_clip=1.0, lr=0.5),
             dict(seed=1, n=6, minibatch=2, kl_coef=0.5, clip=0.05, value_clip=0.05, gamma=0.9, lam=0.8,
                  temperature=0.7, grad_clip=0.0, lr=0.05)]
    for case in cases:
        reference = tiny_gpt(case["seed"])  # the "SFT model"; the policy has drifted a little from it
        policy = copy.deepcopy(reference)
        with torch.no_grad():
            for weight in policy.parameters():
                weight.add_(0.05 * torch.randn_like(weight))
        value_model = GPTWithHead(copy.deepcopy(policy), "value")
        with torch.no_grad():  # a value head that is not zero: the values and the value loss's gradient are not 0
            value_model.head.weight.normal_(std=0.5)
        rollout = hand_rollout(case["seed"], case["n"])
        scores = torch.randn(case["n"], generator=torch.Generator().manual_seed(case["seed"] + 100))
        cfg = ppo_module.PPOConfig(batch_size=case["n"], minibatch_size=case["minibatch"], epochs=2, lr=case["lr"],
                                   value_lr=case["lr"], clip_range=case["clip"], value_clip=case["value_clip"],
                                   gamma=case["gamma"], lam=case["lam"], temperature=case["temperature"],
                                   grad_clip=case["grad_clip"], device="cpu", dtype="float32")
        expected_models = [copy.deepcopy(policy), copy.deepcopy(value_model)]
        # Plain SGD: Adam would turn a gradient that is 0 up to rounding (the attention's key bias) into a full step.
        expected = package_ppo_step(monkeypatch, *expected_models, reference, rollout, scores, cfg, case["kl_coef"],
                                    [torch.optim.SGD(m.parameters(), lr=case["lr"]) for m in expected_models])
        order = torch.Generator().manual_seed(cfg.seed * 7919)  # the minibatches ppo_step draws at step 0
        minibatches = [rows for _ in range(cfg.epochs)
                       for rows in torch.randperm(case["n"], generator=order).split(case["minibatch"])]
        given_scores = torch.where(rollout.ended, scores, cfg.no_end_penalty)  # what ppo_step's reward model says

        # Exercises 9.1 to 9.3 done by the package.
        monkeypatch.setattr(ppo, "gae", ppo_math.gae)
        monkeypatch.setattr(ppo, "clipped_policy_loss", lambda *args: ppo_math.clipped_policy_loss(*args)[0])
        monkeypatch.setattr(ppo, "kl_estimates", lambda logp, ref_logp, mask: (
            ppo_math.kl_per_token(logp, ref_logp, mask, "k1"), ppo_math.kl_per_token(logp, ref_logp, mask, "k3")))
        reference_before = copy.deepcopy(reference)
        inputs = [rollout.x.clone(), rollout.y.clone(), given_scores.clone()]
        got, _ = call(ppo.ppo_update, policy, value_model, reference, *inputs, minibatches,
                      tuple(torch.optim.SGD(m.parameters(), lr=case["lr"]) for m in (policy, value_model)),
                      case["kl_coef"], clip_range=case["clip"], value_clip=case["value_clip"], gamma=case["gamma"],
                      lam=case["lam"], temperature=case["temperature"], grad_clip=case["grad_clip"])
        mask = rollout.response_mask
        lengths = mask.sum(dim=1).tolist()
        what = (f"ppo_update(kl_coef={case['kl_coef']}, temperature={case['temperature']}, "
                f"grad_clip={case['grad_clip']}, {len(minibatches)} minibatches) on {case['n']} answers of {lengths} "
                f"tokens")
        for given, before in zip(inputs, (rollout.x, rollout.y, given_scores)):
            assert torch.equal(given, before), f"{what} changed x, y or scores; do not change its arguments"
        check_type(what, got, dict, "return a dict of tensors")
        keys = ["rewards", "advantages", "returns", "policy_loss", "value_loss"]
        check(what, sorted(got), sorted(keys), "the five tensors the docstring names", verb="returned the keys")

        rewards = expected["rlhf_rewards"][0]
        rows, last = torch.arange(case["n"]), (mask * torch.arange(mask.shape[1])).argmax(dim=1)
        on_last_column = rewards.clone()
        on_last_column[rows, last] -= given_scores
        on_last_column[:, -1] += given_scores
        on_last_column = torch.where(mask, on_last_column, 0.0)
        if not torch.allclose(got["rewards"], rewards, atol=1e-5) and \
                torch.allclose(torch.where(mask, got["rewards"], 0.0), on_last_column, atol=1e-5):
            b = next(i for i in range(case["n"]) if not mask[i, -1])  # a row whose last column is padding
            raise AssertionError(f"{what} put the scores on the last column, padding in row {b}: put each answer's "
                                 f"score on its own last answer token (row {b}: t = {int(last[b])})")
        close(f"the rewards of {what}", got["rewards"], rewards, "differ from ppo_step's: the k1 KL penalty times "
              "kl_coef on every answer token, each answer's score on its last answer token, 0 on padding",
              atol=1e-5, rtol=1e-5)
        raw, returns = expected["gae"]
        real = raw[mask]
        if torch.allclose(got["advantages"], raw, atol=1e-5):
            raise AssertionError(f"{what} returned GAE's advantages before whitening: whiten them over the answer "
                                 f"tokens (mean 0, variance 1)")
        if torch.allclose(got["advantages"], torch.where(mask, (raw - real.mean()) / real.std(), 0.0), atol=1e-5):
            raise AssertionError(f"{what} whitened the advantages with the sample variance: take the population one "
                                 f"(divided by the count of answer tokens, not count - 1), as ppo_math.masked_whiten")
        close(f"the advantages of {what}", got["advantages"], expected["masked_whiten"], "differ from ppo_step's: "
              "GAE's advantages whitened over the answer tokens, 0 on padding", atol=1e-5, rtol=1e-5)
        close(f"the returns of {what}", got["returns"], returns, "differ from ppo_step's: GAE's returns (the "
              "advantages before whitening plus the old values), 0 on padding", atol=1e-5, rtol=1e-5)
        check_losses(f"the policy_loss of {what}", got["policy_loss"], expected["policy_loss"], "ppo_step's",
                     "on the first minibatch the ratio is 1 (the old log-probabilities are the policy's, at the "
                     "rollout temperature, as the new ones)", STEP_DIFFERS)
        check_losses(f"the value_loss of {what}", got["value_loss"], expected["value_loss"], "ppo_step's",
                     "on the first minibatch the values are the old values: half the mean squared error to the returns",
                     STEP_DIFFERS)
        why = "differs from ppo_step's update (zero both gradients, one backward, clip each norm, step each)"
        close_parameters(f"the policy after {what}", policy, expected_models[0], why)
        close_parameters(f"the value model after {what}", value_model, expected_models[1], why)
        close_parameters(f"the reference after {what}", reference, reference_before, "the reference is frozen",
                         atol=0, rtol=0)
        assert all(p.grad is None for p in reference.parameters()), \
            f"{what} left gradients on the reference's parameters: its log-probabilities are computed without gradient"
