"""Grades chapter 10 (exercises/ch10/ex1_dpo.py): one test per exercise.

The reference is gpt_scratch.dpo: dpo_loss (whose first return value is the mean loss and whose next
two are the implicit rewards; loss="sigmoid" is DPO, loss="ipo" IPO) and pair_metrics (its
"rewards/accuracies"). The hand-computed examples are those of the docstrings: log pi(chosen) = -1,
log pi(rejected) = -3 and the reference at -2 for both give h = 2. The DPO step of a GPT (10.4) is
graded against one optimizer step of dpo.batch_loss with dpo.reference_logprobs, on tiny GPTs of
fixed seeds. Each test calls only its own exercise (10.4 gets the package's dpo_loss).
"""

import copy
import math

import pytest
import torch

from gpt_scratch import dpo
from gpt_scratch.data import Encoded
from gpt_scratch.model import GPT, GPTConfig

from checks import call, check, check_type, close, close_parameters, expect_close

SCRIPT = "ch10/ex1_dpo.py"


@pytest.fixture
def ex(load_exercise):
    return load_exercise(SCRIPT)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def random_pairs(seed: int, n: int, spread: float = 2.0) -> tuple[torch.Tensor, ...]:
    """(policy_chosen, policy_rejected, ref_chosen, ref_rejected), log-probabilities of n pairs."""
    generator = torch.Generator().manual_seed(seed)
    ref = -10 * torch.rand(2, n, generator=generator)
    policy = ref + spread * torch.randn(2, n, generator=generator)
    return policy[0], policy[1], ref[0], ref[1]


def check_scalar_with_gradient(ex_fn, name: str) -> None:
    """A 0-dimensional tensor whose gradient reaches the policy's log-probabilities."""
    policy_chosen, policy_rejected = t([-1.0]).requires_grad_(), t([-3.0]).requires_grad_()
    loss, what = call(ex_fn, policy_chosen, policy_rejected, t([-2.0]), t([-2.0]), 0.5)
    check_type(what, loss, torch.Tensor, "return a scalar (0-dimensional) tensor")
    check(what, tuple(loss.shape), (), f"return a scalar (0-dimensional) tensor: the mean of {name} over the pairs",
          verb="returned a tensor of shape")
    assert loss.requires_grad, f"{what} returned a loss without a gradient; do not detach it (or use .item())"


def check_against_reference(ex_fn, loss_name: str) -> None:
    """Random batches: the value and the gradient equal gpt_scratch.dpo.dpo_loss's; the inputs are not changed."""
    for seed, n, beta in ((0, 5, 0.1), (1, 16, 0.5), (2, 1, 2.0), (3, 33, 0.05)):
        inputs = [x.clone() for x in random_pairs(seed, n)]
        policy_chosen, policy_rejected = (x.requires_grad_() for x in inputs[:2])
        got, what = call(ex_fn, policy_chosen, policy_rejected, inputs[2], inputs[3], beta)
        what = f"{what} (beta {beta})"
        got.backward()
        got_grads = policy_chosen.grad.clone(), policy_rejected.grad.clone()
        policy_chosen.grad = policy_rejected.grad = None
        expected, _, _ = dpo.dpo_loss(policy_chosen, policy_rejected, inputs[2], inputs[3], beta, loss=loss_name)
        expected.backward()
        close(what, got.detach(), expected.detach(), f"differs from gpt_scratch.dpo.dpo_loss(..., loss={loss_name!r})",
              atol=1e-5, rtol=1e-5)
        close(f"the gradient with respect to policy_chosen of {what}", got_grads[0], policy_chosen.grad,
              "differs from gpt_scratch.dpo's", atol=1e-6, rtol=1e-5)
        close(f"the gradient with respect to policy_rejected of {what}", got_grads[1], policy_rejected.grad,
              "differs from gpt_scratch.dpo's", atol=1e-6, rtol=1e-5)
        for tensor, original in zip(inputs, random_pairs(seed, n)):
            assert torch.equal(tensor.detach(), original), f"{what} changed its arguments; do not change the inputs"


def test_ex_10_1_dpo_loss(ex):
    check_scalar_with_gradient(ex.dpo_loss, "-log sigmoid(beta h)")
    expect_close(ex.dpo_loss, t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]), 0.5, equals=torch.tensor(0.3132617),
                 why="h = 1 - (-1) = 2, beta h = 1: -log sigmoid(1) = log(1 + e^-1)", tolerance=dict(atol=1e-6, rtol=0))
    expect_close(ex.dpo_loss, t([-4.0, -1.5]), t([-6.0, -2.5]), t([-4.0, -1.5]), t([-6.0, -2.5]), 0.1,
                 equals=torch.tensor(math.log(2)), why="the policy is the reference: h = 0 and the loss is ln 2",
                 tolerance=dict(atol=1e-6, rtol=0))
    expect_close(ex.dpo_loss, t([-1.0, -2.0]), t([-3.0, -2.0]), t([-2.0, -2.0]), t([-2.0, -2.0]), 0.5,
                 equals=torch.tensor((0.3132617 + math.log(2)) / 2), why="the mean over the pairs, not the sum",
                 tolerance=dict(atol=1e-6, rtol=0))
    # The rejected answer is far more likely than the reference thinks: beta h = -500. log(sigmoid) would be -inf.
    expect_close(ex.dpo_loss, t([0.0]), t([0.0]), t([0.0]), t([-500.0]), 1.0, equals=torch.tensor(500.0),
                 why="-log sigmoid(-500) = 500: use F.logsigmoid, log(torch.sigmoid(z)) gives inf",
                 tolerance=dict(atol=1e-3, rtol=0))
    # The gradient by hand: d/d log pi(chosen) = -beta (1 - sigmoid(beta h)) = -0.5 * 0.2689414.
    policy_chosen, policy_rejected = t([-1.0]).requires_grad_(), t([-3.0]).requires_grad_()
    loss, what = call(ex.dpo_loss, policy_chosen, policy_rejected, t([-2.0]), t([-2.0]), 0.5)
    loss.backward()
    close(f"the gradient with respect to policy_chosen of {what}", policy_chosen.grad, t([-0.1344707]),
          "-beta (1 - sigmoid(beta h)): the chosen answer is pushed up", atol=1e-6, rtol=0)
    close(f"the gradient with respect to policy_rejected of {what}", policy_rejected.grad, t([0.1344707]),
          "+beta (1 - sigmoid(beta h)): the rejected answer is pushed down", atol=1e-6, rtol=0)
    check_against_reference(ex.dpo_loss, "sigmoid")


def test_ex_10_2_implicit_rewards(ex):
    got, what = call(ex.implicit_rewards, t([-1.0, -2.0]), t([-3.0, -2.0]), t([-2.0, -2.0]), t([-2.0, -2.0]), 0.5)
    check_type(what, got, tuple, "return a tuple (rewards of the chosen, rewards of the rejected, accuracy)")
    check(what, len(got), 3, "return a tuple (rewards of the chosen, rewards of the rejected, accuracy)",
          verb="returned a tuple of length")
    chosen, rejected, accuracy = got
    close(f"the chosen rewards of {what}", chosen, t([0.5, 0.0]), "beta * (log pi - log pi_ref) = 0.5 * [1, 0]",
          atol=1e-6, rtol=0)
    close(f"the rejected rewards of {what}", rejected, t([-0.5, 0.0]), "beta * (log pi - log pi_ref) = 0.5 * [-1, 0]",
          atol=1e-6, rtol=0)
    check_type(f"the accuracy of {what}", accuracy, float, "return the accuracy as a Python float (.item())")
    check(f"the accuracy of {what}", accuracy, pytest.approx(0.5),
          "one pair ranked right, one a tie (0 = 0): a tie is not a win")
    # At the start the policy is the reference: every reward 0, no pair ranked right.
    logps = random_pairs(4, 6, spread=0.0)
    (chosen, rejected, accuracy), what = call(ex.implicit_rewards, *logps, 0.1)
    close(what, (chosen, rejected), (torch.zeros(6), torch.zeros(6)), "policy = reference: every reward is 0",
          atol=0, rtol=0)
    check(f"the accuracy of {what}", accuracy, 0.0, "policy = reference: every pair is a tie, and a tie is not a "
                                                    "win (0, not 0.5)")
    # Detached: the rewards are for logging and must not carry the graph.
    policy_chosen, policy_rejected = t([-1.0, -4.0]).requires_grad_(), t([-3.0, -2.0]).requires_grad_()
    (chosen, rejected, accuracy), what = call(ex.implicit_rewards, policy_chosen, policy_rejected, t([-2.0, -2.0]),
                                              t([-2.0, -2.0]), 0.5)
    assert not chosen.requires_grad and not rejected.requires_grad, \
        f"{what} returned rewards that require grad; return them detached (.detach())"
    check(f"the accuracy of {what}", accuracy, pytest.approx(0.5), "the second pair is ranked the wrong way round")
    # Random batches: gpt_scratch.dpo's rewards and its rewards/accuracies.
    for seed, n, beta in ((5, 7, 0.1), (6, 32, 1.0), (7, 1, 0.5)):
        logps = random_pairs(seed, n)
        (chosen, rejected, accuracy), what = call(ex.implicit_rewards, *logps, beta)
        _, expected_chosen, expected_rejected = dpo.dpo_loss(*logps, beta)
        expected_accuracy = dpo.pair_metrics(expected_chosen, expected_rejected, logps[0], logps[1])["rewards/accuracies"]
        close(what, (chosen, rejected), (expected_chosen, expected_rejected), "differs from gpt_scratch.dpo.dpo_loss's "
              "rewards", atol=1e-6, rtol=1e-5)
        check(f"the accuracy of {what}", accuracy, pytest.approx(expected_accuracy),
              "differs from gpt_scratch.dpo.pair_metrics' rewards/accuracies")


def test_ex_10_3_ipo_loss(ex):
    check_scalar_with_gradient(ex.ipo_loss, "(h - 1/(2 beta))^2")
    expect_close(ex.ipo_loss, t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]), 0.5, equals=torch.tensor(1.0),
                 why="h = 2, the target 1 / (2 * 0.5) = 1: (2 - 1)^2", tolerance=dict(atol=1e-6, rtol=0))
    expect_close(ex.ipo_loss, t([-4.0, -1.5]), t([-6.0, -2.5]), t([-4.0, -1.5]), t([-6.0, -2.5]), 0.1,
                 equals=torch.tensor(25.0), why="at the start h = 0: (0 - 1 / 0.2)^2 = 25",
                 tolerance=dict(atol=1e-4, rtol=0))
    expect_close(ex.ipo_loss, t([-1.0, -1.0]), t([-3.0, -2.0]), t([-2.0, -2.0]), t([-2.0, -2.0]), 0.5,
                 equals=torch.tensor(0.5), why="h = 2 and 1: the mean of (2 - 1)^2 and (1 - 1)^2",
                 tolerance=dict(atol=1e-6, rtol=0))
    # The gradient by hand: 2 (h - 1/(2 beta)) / B on log pi(chosen); 0 where the target margin is reached.
    policy_chosen, policy_rejected = t([-1.0, -1.0]).requires_grad_(), t([-3.0, -2.0]).requires_grad_()
    loss, what = call(ex.ipo_loss, policy_chosen, policy_rejected, t([-2.0, -2.0]), t([-2.0, -2.0]), 0.5)
    loss.backward()
    close(f"the gradient with respect to policy_chosen of {what}", policy_chosen.grad, t([1.0, 0.0]),
          "2 (h - 1) / 2 pairs: 1 for h = 2, and 0 where h is already the target 1", atol=1e-6, rtol=0)
    close(f"the gradient with respect to policy_rejected of {what}", policy_rejected.grad, t([-1.0, 0.0]),
          "the opposite of the chosen answer's", atol=1e-6, rtol=0)
    check_against_reference(ex.ipo_loss, "ipo")



# Exercise 10.4: a DPO step of a GPT -----------------------------------------------------------------------------

EOT = 0  # the end-of-text id of the pairs below, which is also their pad id


def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=16)).train()


def pair_rows(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (2n, T) of n random pairs as dpo.pair_batch collates them: a prompt of 1 to 4 tokens, two answers of
    0 to 4 tokens and their end-of-text (the chosen rows first)."""
    generator = torch.Generator().manual_seed(seed)

    def tokens(low: int, high: int) -> list[int]:
        return torch.randint(1, 16, (int(torch.randint(low, high + 1, (1,), generator=generator)),),
                             generator=generator).tolist()

    pairs = []
    for _ in range(n):
        prompt = tokens(1, 4)
        chosen, rejected = tokens(0, 4) + [EOT], tokens(0, 4) + [EOT]
        pairs.append(tuple(Encoded(prompt + answer, [False] * len(prompt) + [True] * len(answer))
                           for answer in (chosen, rejected)))
    return dpo.pair_batch(pairs, pad_id=EOT)


def test_ex_10_4_dpo_step(ex, monkeypatch):
    monkeypatch.setattr(ex, "dpo_loss", lambda *args: dpo.dpo_loss(*args)[0])  # exercise 10.1 done by the package
    # (policy seed, reference: "same" = the policy object itself, else a separate model's seed, beta)
    for seed, reference_is, beta in ((0, "separate", 0.5), (1, "same", 0.1), (2, "separate", 2.0)):
        policy = tiny_gpt(seed)
        if reference_is == "same":
            reference = policy
        else:  # the SFT model the policy started from: the policy has moved a little since
            reference = copy.deepcopy(policy)
            with torch.no_grad():
                for weight in policy.parameters():
                    weight.add_(0.05 * torch.randn_like(weight))
        expected_policy = copy.deepcopy(policy)
        expected_reference = expected_policy if reference_is == "same" else copy.deepcopy(reference)
        reference_before = copy.deepcopy(reference)
        # Plain SGD: Adam would turn a gradient that is 0 up to rounding (the attention's key bias) into a full step.
        optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
        expected_optimizer = torch.optim.SGD(expected_policy.parameters(), lr=0.5)
        for step, batch_seed in enumerate((seed + 10, seed + 20), start=1):
            x, y = pair_rows(batch_seed, 5)
            inputs = (x.clone(), y.clone())
            ref = dpo.reference_logprobs(expected_reference, [(x, y)], torch.device("cpu"), "float32")[0]
            expected_loss, _ = dpo.batch_loss(expected_policy, (x, y, ref), beta)
            expected_optimizer.zero_grad(set_to_none=True)
            expected_loss.backward()
            expected_optimizer.step()
            got, _ = call(ex.dpo_step, policy, reference, optimizer, x, y, beta)
            what = (f"dpo_step(<GPT>, reference={'the policy itself' if reference_is == 'same' else '<GPT>'}, <SGD>, "
                    f"x {x.shape[0]}x{x.shape[1]}, y, beta={beta}) at step {step}")
            assert torch.equal(x, inputs[0]) and torch.equal(y, inputs[1]), \
                f"{what} changed x or y; do not change its arguments"
            check_type(what, got, float, "return the loss as a Python float (.item())")
            if reference_is == "separate":
                assert all(p.grad is None or not p.grad.any() for p in reference.parameters()), \
                    (f"{what} left gradients on the reference's parameters: its log-probabilities are constants of "
                     f"the loss (torch.no_grad())")
                close_parameters(f"after {what}", reference, reference_before, "the reference is frozen", atol=0,
                                 rtol=0)
            check(what, got, pytest.approx(expected_loss.item(), abs=1e-5),
                  "DPO's loss of the pairs before the step, as gpt_scratch.dpo.batch_loss gives it (the chosen rows "
                  "first, then the rejected)")
            why = "differs from one optimizer step of gpt_scratch.dpo.batch_loss (zero the gradients, backward, step)"
            if reference_is == "same" and all(torch.equal(a, b) for a, b in zip(policy.parameters(),
                                                                                 reference_before.parameters())):
                why += ("; the policy did not move: with the reference = the policy, a reference that carries "
                        "gradient cancels the policy's (its log-probabilities must be constants)")
            close_parameters(f"after {what}", policy, expected_policy, why)
            if reference_is == "same":
                reference_before = copy.deepcopy(reference)
