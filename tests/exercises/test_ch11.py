"""Grades chapter 11 (exercises/ch11/ex1_grpo.py): one test per exercise.

The reference is gpt_scratch: grpo.group_advantages and grpo.pass_at_k, and for the loss
ppo_math.clipped_policy_loss (whose first return value is the loss) with each answer's advantage
spread over its tokens. The hand-computed examples are those of the docstrings; the random ones are
right-padded batches whose entries after each answer's end hold GARBAGE, which must never reach a
result. The GRPO update of a GPT (11.4) is graded against gpt_scratch.grpo.grpo_step handed the same
groups, on tiny GPTs of fixed seeds. Each test calls only its own exercise (11.4 gets the package's
versions of 11.1 and 11.2), so an unfinished one fails alone.
"""

import copy
import math

import pytest
import torch

from gpt_scratch import grpo, ppo_math
from gpt_scratch.data import Encoded
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.rollout import collated

from checks import call, check, check_type, check_losses, close, close_parameters, expect, expect_close

SCRIPT = "ch11/ex1_grpo.py"
GARBAGE = 1e3  # what the entries after an answer's end hold
AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@pytest.fixture
def ex(load_exercise):
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


def test_ex_11_1_group_advantages(ex):
    s = math.sqrt(3)
    got, what = call(ex.group_advantages, t([1, 0, 0, 0, 1, 1, 1, 1]), 4)
    check_type(what, got, torch.Tensor, "return a tensor of one advantage per answer")
    check(what, tuple(got.shape), (8,), "one advantage per answer, shape (N,)", verb="returned a tensor of shape")
    # The docstring's example, eps 0 so that the values are exact.
    expect_close(ex.group_advantages, t([1, 0, 0, 0, 1, 1, 1, 1]), 4, True, 0.0,
                 equals=t([1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0]),
                 why="(r - 0.25) / 0.5: the sample std, divided by G - 1 (torch.std's default); an all-equal "
                     "group gets 0", tolerance=dict(atol=1e-5, rtol=0))
    expect_close(ex.group_advantages, t([1, 1, 0, 0]), 4, True, 0.0, equals=t([s / 2, s / 2, -s / 2, -s / 2]),
                 why="(r - 0.5) / sqrt(1 / 3), not / 0.5 (the population std)", tolerance=dict(atol=1e-5, rtol=0))
    expect_close(ex.group_advantages, t([1, 0, 0, 0, 1, 1, 1, 1]), 4, False,
                 equals=t([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]), why="std=False: reward - the group's mean",
                 tolerance=dict(atol=1e-6, rtol=0))
    # eps is added to the std: [1, 0, 0, 0] has std 0.5 -> (0.75, -0.25, ...) / (0.5 + eps).
    expect_close(ex.group_advantages, t([1, 0, 0, 0]), 4, True, 0.5, equals=t([0.75, -0.25, -0.25, -0.25]),
                 why="divide by (std + eps) = 0.5 + 0.5", tolerance=dict(atol=1e-6, rtol=0))
    # Groups of 2: each row of view(-1, 2) is one group.
    expect_close(ex.group_advantages, t([2, 0, 0.5, 0.5, 0, 3]), 2, False, equals=t([1, -1, 0, 0, -1.5, 1.5]),
                 why="groups are consecutive: [2, 0], [0.5, 0.5], [0, 3]", tolerance=dict(atol=1e-6, rtol=0))
    # All-equal groups: exactly 0 and no NaN, even for float rewards whose mean rounds (1.1 * 8 / 8 != 1.1).
    for std in (True, False):
        rewards = torch.tensor([1.1] * 8 + [0.0] * 8 + [1.0] * 7 + [0.0])
        got, what = call(ex.group_advantages, rewards, 8, std)
        assert not torch.isnan(got).any(), f"{what} returned NaN; an all-equal group must give 0, not 0 / 0"
        check(what, got[:16].tolist(), [0.0] * 16, "a group whose rewards are all equal teaches nothing: exactly 0 "
              "(check for it; the mean's rounding residue / eps is not 0)")
    # Random groups: the reference, and each group's advantages add up to 0.
    for seed, n_groups, size, std in ((0, 5, 4, True), (1, 3, 8, False), (2, 7, 2, True), (3, 4, 16, True)):
        generator = torch.Generator().manual_seed(seed)
        rewards = (torch.rand(n_groups * size, generator=generator) < 0.5).float()
        rewards[:size] = 1.0  # one all-equal group
        before = rewards.clone()
        got, what = call(ex.group_advantages, rewards, size, std)
        assert torch.equal(rewards, before), f"{what} changed its argument rewards; do not change the inputs"
        close(what, got, grpo.group_advantages(rewards, size, std), "differs from gpt_scratch.grpo.group_advantages",
              atol=1e-5, rtol=1e-5)


def test_ex_11_2_grpo_loss(ex):
    # The docstring's example: ratio 1 everywhere, A = [1, -1], mask [[1, 1, 1], [1, 0, 0]].
    logp = t([[-1.0, -2.0, -0.5], [-1.5, GARBAGE, -GARBAGE]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    advantages = t([1.0, -1.0])
    got, what = call(ex.grpo_loss, logp, logp.clone(), advantages, mask, 0.2, "token-mean", 4)
    check_type(what, got, torch.Tensor, "return a scalar (0-dimensional) tensor")
    check(what, tuple(got.shape), (), "return a scalar (0-dimensional) tensor", verb="returned a tensor of shape")
    for aggregation, expected, why in (("token-mean", -0.5, "(-1 - 1 - 1 + 1) / 4 real tokens"),
                                       ("seq-mean-token-mean", 0.0, "(mean(-1, -1, -1) + 1) / 2 answers"),
                                       ("seq-mean-token-sum-norm", -0.25, "(-3 / 4 + 1 / 4) / 2 answers")):
        expect_close(ex.grpo_loss, logp, logp.clone(), advantages, mask, 0.2, aggregation, 4,
                     equals=torch.tensor(expected), why=why, tolerance=dict(atol=1e-6, rtol=0))
    # Clipping by hand: row 0 A = +1, ratios [1.5, 1.0, 0.5] -> [-1.2 (clipped), -1, -0.5]; row 1 A = -1, ratio 0.5
    # -> 0.8 (clipped). token-mean -0.475, seq-mean-token-mean (-2.7/3 + 0.8)/2 = -0.05, sum-norm 3 (-2.7/3 + 0.8/3)/2.
    new = t([[math.log(1.5), 0.0, math.log(0.5)], [math.log(0.5), GARBAGE, GARBAGE]])
    old = t([[0.0, 0.0, 0.0], [0.0, -GARBAGE, GARBAGE]])
    for aggregation, expected in (("token-mean", -0.475), ("seq-mean-token-mean", -0.05),
                                  ("seq-mean-token-sum-norm", -1.9 / 6)):
        expect_close(ex.grpo_loss, new, old, advantages, mask, 0.2, aggregation, 3, equals=torch.tensor(expected),
                     why="max(-A * ratio, -A * clamp(ratio, 0.8, 1.2)) per real token, then the aggregation",
                     tolerance=dict(atol=1e-5, rtol=0))
    # The gradient: a clipped token's is 0, the garbage after an answer's end gets none either.
    new = new.clone().requires_grad_()
    loss, what = call(ex.grpo_loss, new, old, advantages, mask, 0.2, "token-mean", 3)
    assert loss.requires_grad, f"{what} returned a loss without a gradient; do not detach it (or use .item())"
    loss.backward()
    close(f"the gradient with respect to logp of {what}", new.grad, t([[0.0, -0.25, -0.5 / 4], [0.0, 0.0, 0.0]]),
          "clipped tokens and the entries after an answer's end get gradient 0; the others -A * ratio / 4",
          atol=1e-6, rtol=0)
    # Random batches: the reference (ppo_math.clipped_policy_loss with the advantage on every token) and its gradient.
    for seed, batch, length, clip in ((0, 4, 6, 0.2), (1, 8, 12, 0.1), (2, 3, 1, 0.3), (3, 6, 9, 0.5)):
        generator, mask = random_batch(seed, batch, length, float_mask=seed % 2 == 1)
        old = torch.where(mask.bool(), -3 * torch.rand(batch, length, generator=generator), -GARBAGE)
        new = torch.where(mask.bool(), old + 0.3 * torch.randn(batch, length, generator=generator), GARBAGE)
        advantages = torch.randn(batch, generator=generator)
        for aggregation in AGGREGATIONS:
            logp = new.clone().requires_grad_()
            got, what = call(ex.grpo_loss, logp, old, advantages, mask, clip, aggregation, length + 2)
            got.backward()
            got_grad, logp.grad = logp.grad.clone(), None
            expected, _ = ppo_math.clipped_policy_loss(logp, old, advantages[:, None].expand(batch, length), mask, clip,
                                                       aggregation, length + 2)
            expected.backward()
            close(what, got.detach(), expected.detach(),
                  f"differs from gpt_scratch.ppo_math.clipped_policy_loss ({aggregation})", atol=1e-5, rtol=1e-5)
            close(f"the gradient with respect to logp of {what}", got_grad, logp.grad,
                  f"differs from gpt_scratch.ppo_math's ({aggregation})", atol=1e-6, rtol=1e-5)


def test_ex_11_3_pass_at_k(ex):
    got, what = call(ex.pass_at_k, 4, 1, 1)
    check_type(what, got, float, "return a float")
    expect(ex.pass_at_k, 4, 1, 1, equals=pytest.approx(0.25), why="pass@1 = c / n")
    expect(ex.pass_at_k, 4, 1, 2, equals=pytest.approx(0.5), why="1 - C(3,2)/C(4,2) = 1 - 3/6")
    expect(ex.pass_at_k, 4, 1, 4, equals=pytest.approx(1.0), why="every 4 of 4 samples hold the correct one")
    expect(ex.pass_at_k, 5, 2, 3, equals=pytest.approx(0.9), why="1 - C(3,3)/C(5,3) = 1 - 1/10")
    expect(ex.pass_at_k, 8, 0, 8, equals=pytest.approx(0.0), why="no correct sample: 0")
    expect(ex.pass_at_k, 8, 8, 1, equals=pytest.approx(1.0), why="every sample correct: 1")
    expect(ex.pass_at_k, 10, 3, 9, equals=pytest.approx(1.0),
           why="only 7 wrong samples: every 9 of them hold a correct one (C(7, 9) = 0)")
    expect(ex.pass_at_k, 4, 1, 2, equals=pytest.approx(0.5), why="the unbiased estimate, not 1 - (1 - c/n)^k = 0.4375")
    for n in (1, 2, 5, 16, 40):
        for c in range(n + 1):
            for k in sorted({1, max(1, n // 2), n}):
                expect(ex.pass_at_k, n, c, k, equals=pytest.approx(grpo.pass_at_k(n, c, k), abs=1e-12),
                       why="differs from gpt_scratch.grpo.pass_at_k")



# Exercise 11.4: one GRPO update of a GPT ------------------------------------------------------------------------

EOT = 0  # the end-of-text id of the rollouts below, which is also their pad id


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=16)).train()


def group_rollout(seed: int, n_prompts: int, group_size: int):
    """(Rollout, rewards): group_size answers of 1 to 5 tokens (and their end-of-text, but for one answer that
    never ended) to each of n_prompts prompts of 2 to 4 tokens, one group after another, collated as
    gpt_scratch.rollout does; rewards in {0, 0.1, 1, 1.1} (right or not, plus a style bonus), the first group's
    all equal."""
    generator = torch.Generator().manual_seed(seed)
    examples, ended = [], []
    for p in range(n_prompts):
        prompt = torch.randint(1, 16, (int(torch.randint(2, 5, (1,), generator=generator)),), generator=generator)
        for i in range(group_size):
            answer = torch.randint(1, 16, (int(torch.randint(1, 6, (1,), generator=generator)),),
                                   generator=generator).tolist()
            ends = not (p == n_prompts - 1 and i == 0)
            answer = answer + [EOT] if ends else answer
            examples.append(Encoded(prompt.tolist() + answer, [False] * len(prompt) + [True] * len(answer)))
            ended.append(ends)
    n = n_prompts * group_size
    rewards = torch.tensor([0.0, 0.1, 1.0, 1.1])[torch.randint(0, 4, (n,), generator=generator)]
    rewards[:group_size] = 1.0
    return collated(["prompt"] * n, examples, [""] * n, ended, pad_id=EOT), rewards


def package_grpo_step(monkeypatch, policy, rollout, rewards, cfg, optimizer) -> list[float]:
    """gpt_scratch.grpo.grpo_step handed these groups (and their rewards); returns every minibatch's loss."""
    losses = []
    with monkeypatch.context() as patch:
        def keeping(*args, **kwargs):
            loss, stats = ppo_math.clipped_policy_loss(*args, **kwargs)
            losses.append(loss.item())
            return loss, stats

        patch.setattr(grpo, "clipped_policy_loss", keeping)
        patch.setattr(grpo, "collect_groups",
                      lambda *args, **kwargs: (rollout, [], rewards.clone(), {"answers_sampled": len(rewards)}))
        grpo.grpo_step(policy, copy.deepcopy(policy), None, {}, None, cfg, optimizer, 0, torch.device("cpu"))
    return losses


def test_ex_11_4_grpo_update(ex, monkeypatch):
    cases = [dict(seed=0, prompts=3, group=4, minibatch=6, clip=0.2, aggregation="seq-mean-token-mean", std=True,
                  temperature=1.0, grad_clip=1.0, lr=0.5),
             dict(seed=1, prompts=2, group=3, minibatch=3, clip=0.05, aggregation="token-mean", std=True,
                  temperature=0.7, grad_clip=0.0, lr=0.1),
             dict(seed=2, prompts=2, group=4, minibatch=4, clip=0.2, aggregation="seq-mean-token-sum-norm", std=False,
                  temperature=1.0, grad_clip=0.5, lr=0.5)]
    for case in cases:
        policy = tiny_gpt(case["seed"])
        rollout, rewards = group_rollout(case["seed"], case["prompts"], case["group"])
        n = len(rewards)
        cfg = grpo.GRPOConfig(batch_size=n, group_size=case["group"], minibatch_size=case["minibatch"], epochs=2,
                              lr=case["lr"], clip_range=case["clip"], std=case["std"], aggregation=case["aggregation"],
                              max_new_tokens=6, temperature=case["temperature"], grad_clip=case["grad_clip"],
                              eval_samples=8, device="cpu", dtype="float32")
        expected_policy = copy.deepcopy(policy)
        # Plain SGD: Adam would turn a gradient that is 0 up to rounding (the attention's key bias) into a full step.
        expected_losses = package_grpo_step(monkeypatch, expected_policy, rollout, rewards, cfg,
                                            torch.optim.SGD(expected_policy.parameters(), lr=case["lr"]))
        order = torch.Generator().manual_seed(cfg.seed * 7919)  # the minibatches grpo_step draws at step 0
        minibatches = [rows for _ in range(cfg.epochs) for rows in torch.randperm(n, generator=order).split(
            case["minibatch"])]

        # Exercises 11.1 and 11.2 done by the package.
        monkeypatch.setattr(ex, "group_advantages", lambda rewards, group_size, std=True, eps=grpo.STD_EPS:
                            grpo.group_advantages(rewards, group_size, std, eps))
        monkeypatch.setattr(ex, "grpo_loss", lambda logp, old_logp, advantages, mask, *args:
                            ppo_math.clipped_policy_loss(logp, old_logp, advantages[:, None].expand_as(logp), mask,
                                                         *args)[0])
        inputs = [rollout.x.clone(), rollout.y.clone(), rewards.clone()]
        got, _ = call(ex.grpo_update, policy, torch.optim.SGD(policy.parameters(), lr=case["lr"]), *inputs,
                      case["group"], minibatches, case["clip"], case["aggregation"], cfg.max_new_tokens,
                      case["std"], case["temperature"], case["grad_clip"])
        what = (f"grpo_update(group_size={case['group']}, {len(minibatches)} minibatches, {case['aggregation']}, "
                f"std={case['std']}, temperature={case['temperature']}, grad_clip={case['grad_clip']})")
        for given, before in zip(inputs, (rollout.x, rollout.y, rewards)):
            assert torch.equal(given, before), f"{what} changed x, y or rewards; do not change its arguments"
        check_type(what, got, dict, "return a dict of tensors")
        check(what, sorted(got), ["advantages", "loss"], "the two tensors the docstring names",
              verb="returned the keys")
        advantages = grpo.group_advantages(rewards, case["group"], case["std"])
        if case["std"] and torch.allclose(got["advantages"], grpo.group_advantages(rewards, case["group"],
                                                                                   population_std=True), atol=1e-5):
            raise AssertionError(f"{what} took the population std (divided by G): GRPO's group std is the sample "
                                 f"std, Bessel-corrected (divided by G - 1), as DeepSeekMath and TRL; rewards "
                                 f"{[round(r, 1) for r in rewards.tolist()]}")
        close(f"the advantages of {what}", got["advantages"], advantages,
              "differ from gpt_scratch.grpo.group_advantages" + (" (std=True: over the group's sample std + 1e-4)"
                                                                 if case["std"] else " (std=False: reward - mean)"),
              atol=1e-5, rtol=1e-5)
        check_losses(f"the loss of {what}", got["loss"], expected_losses, "grpo_step's",
                     "on the first minibatch the ratio is 1 (the old log-probabilities are the policy's, at the "
                     "rollout temperature, as the new ones)", "a gradient step differs (zero the gradient, backward, "
                     "clip its norm, step), or the loss once the policy has moved (the old log-probabilities are "
                     "fixed before the first step; the clipped term)")
        close_parameters(f"the policy after {what}", policy, expected_policy, "differs from grpo_step's update "
                         "(zero the gradient, backward, clip its norm, step)")
