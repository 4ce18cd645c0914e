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
    loss = rm.bradley_terry_loss(torch.zeros(4), torch.zeros(4))
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, "return a scalar (0-dimensional) tensor"
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6), "equal scores: -log sigmoid(0) = ln 2"
    assert rm.bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(0.126928, abs=1e-5)
    assert rm.bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]), margin=2.0).item() == \
        pytest.approx(math.log(2), abs=1e-6), "the margin is subtracted from the difference"
    # The mean over pairs, not the sum: [0 vs 0, 2 vs 0] -> (ln 2 + 0.1269) / 2.
    assert rm.bradley_terry_loss(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.0])).item() == \
        pytest.approx((math.log(2) + 0.126928) / 2, abs=1e-5)
    # Numerically stable: a huge wrong-way difference gives a large finite loss, not inf or nan.
    far = rm.bradley_terry_loss(torch.tensor([-100.0, 60.0]), torch.tensor([100.0, -60.0]))
    assert torch.isfinite(far), "use F.logsigmoid: log(sigmoid(-200)) is log(0) = -inf"
    assert far.item() == pytest.approx(100.0, rel=1e-5)
    # Random scores, with and without a margin: the value and the gradients of the reference.
    for seed, n, margin in ((0, 8, 0.0), (1, 33, 0.5), (2, 1, 2.0), (3, 100, 0.0)):
        generator = torch.Generator().manual_seed(seed)
        chosen = (3 * torch.randn(n, generator=generator)).requires_grad_()
        rejected = (3 * torch.randn(n, generator=generator)).requires_grad_()
        got = rm.bradley_terry_loss(chosen, rejected, margin)
        got.backward()
        got_grads = chosen.grad.clone(), rejected.grad.clone()
        chosen.grad, rejected.grad = None, None
        expected = reward.bradley_terry_loss(chosen, rejected, margin)
        expected.backward()
        torch.testing.assert_close(got.detach(), expected.detach(), msg=f"differs from gpt_scratch.reward ({n} pairs, "
                                                                        f"margin {margin})")
        torch.testing.assert_close(got_grads, (chosen.grad, rejected.grad), msg="the gradients differ")
    # The default margin is 0.
    chosen, rejected = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(rm.bradley_terry_loss(chosen, rejected), reward.bradley_terry_loss(chosen, rejected))


def test_ex_8_2_last_token_index(rm):
    got = rm.last_token_index(torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.long, "return a LongTensor (it indexes the positions)"
    assert got.tolist() == [2, 3]
    # One real token (right and left padding), a full row, and a single column.
    assert rm.last_token_index(torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]])).tolist() == [0, 3, 3]
    assert rm.last_token_index(torch.tensor([[1], [1]])).tolist() == [0, 0]
    # Random batches from pad_batch, both sides: the reference, and each sequence's own last position.
    for seed, n, longest in ((0, 6, 5), (1, 17, 16), (2, 2, 1), (3, 40, 9)):
        sequences = random_sequences(n, longest, seed)
        for side in ("right", "left"):
            _, mask = pad_batch(sequences, 0, side=side)
            before = mask.clone()
            got = rm.last_token_index(mask)
            assert torch.equal(mask, before), "do not change the mask"
            assert got.shape == (n,)
            assert torch.equal(got, reward.last_token_index(mask)), f"{side} padding: differs from gpt_scratch.reward"
            if side == "right":
                assert got.tolist() == [len(s) - 1 for s in sequences], "right padding: the last real token is at " \
                                                                          "length - 1, not in the last column"
            else:
                assert got.tolist() == [mask.shape[1] - 1] * n
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
            got = per_position[torch.arange(len(sequences)), rm.last_token_index(mask)]
            torch.testing.assert_close(got, reward.reward_scores(model, ids, mask))
            torch.testing.assert_close(got, alone, atol=1e-5, rtol=1e-5,
                                       msg=f"{side} padding: the scores must be read at the last real tokens")


def test_ex_8_3_pairwise_accuracy(rm):
    got = rm.pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0]))
    assert isinstance(got, float), "return a Python float (.item())"
    assert got == pytest.approx(1 / 3), "1 of 3 pairs is strictly right (a tie counts as wrong)"
    assert rm.pairwise_accuracy(torch.zeros(5), torch.zeros(5)) == 0.0, \
        "all ties (a new zero-head reward model) -> 0.0, not 0.5"
    assert rm.pairwise_accuracy(torch.tensor([2.0]), torch.tensor([1.0])) == 1.0
    assert rm.pairwise_accuracy(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.0])) == 0.0
    # Random scores, some with many ties (small whole numbers): the reference.
    for seed, n, whole in ((0, 10, False), (1, 257, False), (2, 64, True), (3, 1, True), (4, 1000, True)):
        generator = torch.Generator().manual_seed(seed)
        chosen, rejected = torch.randn(n, generator=generator), torch.randn(n, generator=generator)
        if whole:
            chosen, rejected = chosen.round(), rejected.round()
        got = rm.pairwise_accuracy(chosen, rejected)
        assert isinstance(got, float)
        assert got == pytest.approx(reward.pairwise_accuracy(chosen, rejected), abs=1e-6), \
            f"{n} pairs: differs from gpt_scratch.reward"
    # Gradients are irrelevant here: scores that require grad still give a float.
    chosen = torch.randn(6, requires_grad=True)
    assert rm.pairwise_accuracy(chosen, chosen.detach() - 1) == 1.0
