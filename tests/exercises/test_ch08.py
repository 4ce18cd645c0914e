"""Grades chapter 8 (exercises/ch08/ex1_reward.py): one test per exercise.

The reference is gpt_scratch.reward: bradley_terry_loss, last_token_index (with gather_last and
reward_scores) and pairwise_accuracy. Each test calls only its own exercise, so an unfinished
one fails alone.
"""

import math
import random

import pytest
import torch

from gpt_scratch import reward
from gpt_scratch.data import pad_batch
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.model import GPT, GPTConfig

from checks import call, check, check_type, close, expect, expect_close

SCRIPT = "ch08/ex1_reward.py"


@pytest.fixture
def rm(load_exercise):
    return load_exercise(SCRIPT)


def random_sequences(n: int, longest: int, seed: int) -> list[list[int]]:
    """n random token sequences of 1 to longest tokens, at least one of each extreme length."""
    rng = random.Random(seed)
    lengths = [1, longest] + [rng.randint(1, longest) for _ in range(n - 2)]
    return [[rng.randrange(1, 50) for _ in range(length)] for length in lengths]


def test_ex_8_1_bradley_terry_loss(rm):
    loss, what = call(rm.bradley_terry_loss, torch.zeros(4), torch.zeros(4))
    check_type(what, loss, torch.Tensor, "return a scalar (0-dimensional) tensor")
    close(what, loss, torch.tensor(math.log(2)), "equal scores: -log sigmoid(0) = ln 2, as a 0-dimensional tensor",
          atol=1e-6, rtol=0, check_dtype=False)
    expect_close(rm.bradley_terry_loss, torch.tensor([2.0]), torch.tensor([0.0]), equals=torch.tensor(0.126928),
                 tolerance=dict(atol=1e-5, rtol=0, check_dtype=False))
    expect_close(rm.bradley_terry_loss, torch.tensor([2.0]), torch.tensor([0.0]), margin=2.0,
                 equals=torch.tensor(math.log(2)), why="the margin is subtracted from the difference",
                 tolerance=dict(atol=1e-6, rtol=0, check_dtype=False))
    expect_close(rm.bradley_terry_loss, torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0]),
                 equals=torch.tensor((math.log(2) + 0.126928) / 2), why="the mean over pairs, not the sum",
                 tolerance=dict(atol=1e-5, rtol=0, check_dtype=False))
    # Numerically stable: a huge wrong-way difference gives a large finite loss, not inf or nan.
    expect_close(rm.bradley_terry_loss, torch.tensor([-100.0, 60.0]), torch.tensor([100.0, -60.0]),
                 equals=torch.tensor(100.0), why="use F.logsigmoid: log(sigmoid(-200)) is log(0) = -inf",
                 tolerance=dict(rtol=1e-5, atol=0, check_dtype=False))
    # Random scores, with and without a margin: the value and the gradients of the reference.
    for seed, n, margin in ((0, 8, 0.0), (1, 33, 0.5), (2, 1, 2.0), (3, 100, 0.0)):
        generator = torch.Generator().manual_seed(seed)
        chosen = (3 * torch.randn(n, generator=generator)).requires_grad_()
        rejected = (3 * torch.randn(n, generator=generator)).requires_grad_()
        got, what = call(rm.bradley_terry_loss, chosen, rejected, margin)
        got.backward()
        got_grads = chosen.grad.clone(), rejected.grad.clone()
        chosen.grad, rejected.grad = None, None
        expected = reward.bradley_terry_loss(chosen, rejected, margin)
        expected.backward()
        close(what, got.detach(), expected.detach(), "differs from gpt_scratch.reward")
        close(f"the gradients of {what}", got_grads, (chosen.grad, rejected.grad), "differ from gpt_scratch.reward's")
    # The default margin is 0.
    chosen, rejected = torch.randn(5), torch.randn(5)
    expect_close(rm.bradley_terry_loss, chosen, rejected, equals=reward.bradley_terry_loss(chosen, rejected),
                 why="the default margin is 0")


def test_ex_8_2_last_token_index(rm):
    expect_close(rm.last_token_index, torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]), equals=torch.tensor([2, 3]),
                 why="return a LongTensor (it indexes the positions)")
    # One real token (right and left padding), a full row, and a single column.
    expect_close(rm.last_token_index, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]]),
                 equals=torch.tensor([0, 3, 3]))
    expect_close(rm.last_token_index, torch.tensor([[1], [1]]), equals=torch.tensor([0, 0]))
    # Random batches from pad_batch, both sides: the reference, and each sequence's own last position.
    for seed, n, longest in ((0, 6, 5), (1, 17, 16), (2, 2, 1), (3, 40, 9)):
        sequences = random_sequences(n, longest, seed)
        for side in ("right", "left"):
            _, mask = pad_batch(sequences, 0, side=side)
            before = mask.clone()
            got, what = call(rm.last_token_index, mask)
            what = f"{what} ({side} padding)"
            assert torch.equal(mask, before), f"{what} changed the mask; do not change it"
            if side == "right":
                check(what, got.tolist(), [len(s) - 1 for s in sequences],
                      "right padding: the last real token is at length - 1, not in the last column")
            else:
                check(what, got.tolist(), [mask.shape[1] - 1] * n, "left padding: the last column")
            close(what, got, reward.last_token_index(mask), "differs from gpt_scratch.reward", rtol=0, atol=0)
    # Read at those positions, a reward model scores every padded row as it scores the sequence alone.
    torch.manual_seed(0)
    model = GPTWithHead(GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)), "reward").eval()
    with torch.no_grad():
        model.head.weight.normal_()
        model.head.bias.fill_(0.3)
        sequences = random_sequences(7, 12, seed=4)
        alone = torch.stack([model(torch.tensor([s]))[0, -1] for s in sequences])
        for side in ("right", "left"):
            ids, mask = pad_batch(sequences, 0, side=side)
            per_position = model(ids, mask)
            index, what = call(rm.last_token_index, mask)
            got = per_position[torch.arange(len(sequences)), index]
            what = f"the scores read at {what} ({side} padding)"
            close(what, got, reward.reward_scores(model, ids, mask), "differ from gpt_scratch.reward.reward_scores")
            close(what, got, alone, "the scores must be read at the last real tokens", atol=1e-5, rtol=1e-5)


def test_ex_8_3_pairwise_accuracy(rm):
    got, what = call(rm.pairwise_accuracy, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0]))
    check_type(what, got, float, "return a Python float (.item())")
    check(what, got, pytest.approx(1 / 3), "1 of 3 pairs is strictly right (a tie counts as wrong)")
    expect(rm.pairwise_accuracy, torch.zeros(5), torch.zeros(5), equals=0.0,
           why="all ties (a new zero-head reward model) -> 0.0, not 0.5")
    expect(rm.pairwise_accuracy, torch.tensor([2.0]), torch.tensor([1.0]), equals=1.0)
    expect(rm.pairwise_accuracy, torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0]), equals=0.0)
    # Random scores, some with many ties (small whole numbers): the reference.
    for seed, n, whole in ((0, 10, False), (1, 257, False), (2, 64, True), (3, 1, True), (4, 1000, True)):
        generator = torch.Generator().manual_seed(seed)
        chosen, rejected = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
        if whole:
            chosen, rejected = chosen.round(), rejected.round()
        got, what = call(rm.pairwise_accuracy, chosen, rejected)
        check_type(what, got, float)
        check(what, got, pytest.approx(reward.pairwise_accuracy(chosen, rejected), abs=1e-6),
              "differs from gpt_scratch.reward")
    # Gradients are irrelevant here: scores that require grad still give a float.
    chosen = torch.randn(6, requires_grad=True)
    expect(rm.pairwise_accuracy, chosen, chosen.detach() - 1, equals=1.0,
           why="scores that require grad still give a float (.item())")
