"""Grades chapter 4 (exercises/ch04/ex1_pretrain.py): one test per exercise.

The reference is gpt_scratch itself: TokenWindows, train.learning_rate, lm_loss /
F.cross_entropy and train.evaluate_loss.
"""

import pytest
import torch
import torch.nn.functional as F

from gpt_scratch.data import TokenWindows
from gpt_scratch.model import GPT, GPTConfig, lm_loss
from gpt_scratch.train import TrainConfig, evaluate_loss
from gpt_scratch.train import learning_rate as reference_learning_rate

from checks import call, check, check_type, close, expect

SCRIPT = "ch04/ex1_pretrain.py"


@pytest.fixture
def pre(load_exercise):
    return load_exercise(SCRIPT)


def test_ex_4_1_next_token_batch(pre):
    (x, y), what = call(pre.next_token_batch, torch.tensor([10, 11, 12, 13, 14]), torch.tensor([0, 2]), 2)
    check(f"{what}'s x", x.tolist(), [[10, 11], [12, 13]], "the windows that start at 0 and 2")
    check(f"{what}'s y", y.tolist(), [[11, 12], [13, 14]], "x shifted by one token")
    ids = torch.randint(0, 100, (50,), generator=torch.Generator().manual_seed(0))
    starts = torch.tensor([0, 7, 41, 7])
    (x, y), what = call(pre.next_token_batch, ids, starts, 8)
    expected_x, expected_y = TokenWindows(ids, block_size=8, batch_size=4).windows_at(starts)
    close(f"{what}'s x", x, expected_x, "differs from gpt_scratch.data.TokenWindows", rtol=0, atol=0)
    close(f"{what}'s y", y, expected_y, "differs from gpt_scratch.data.TokenWindows", rtol=0, atol=0)


def test_ex_4_2_learning_rate(pre):
    for step, expected in enumerate([0.5, 1.0, 1.0, 0.55, 0.1, 0.1]):
        expect(pre.learning_rate, step, 1.0, 2, 4, equals=pytest.approx(expected))
    for warmup, max_steps, ratio in [(10, 100, 0.1), (0, 50, 0.0), (5, 5, 0.5)]:
        cfg = TrainConfig(lr=3e-3, warmup_steps=warmup, max_steps=max_steps, min_lr_ratio=ratio)
        for step in range(max_steps + 3):
            expected = reference_learning_rate(step, cfg)
            expect(pre.learning_rate, step, 3e-3, warmup, max_steps, ratio, equals=pytest.approx(expected))


def test_ex_4_3_cross_entropy(pre):
    torch.manual_seed(0)
    logits = torch.randn(6, 11, requires_grad=True)
    targets = torch.tensor([3, -100, 0, 10, -100, 7])
    loss, what = call(pre.cross_entropy, logits, targets)
    expected = F.cross_entropy(logits, targets, ignore_index=-100)
    close(what, loss, expected, "the mean over the targets that are not -100, as one number (0-dim tensor)")
    close(what, loss, lm_loss(logits[None], targets[None]))
    loss.backward()  # the loss must stay differentiable for training
    expected_grad = torch.autograd.grad(F.cross_entropy(logits, targets), logits)[0]
    close(f"the gradient of {what}", logits.grad, expected_grad)

    big = torch.tensor([[1000.0, 0.0], [0.0, 1000.0]])
    loss, what = call(pre.cross_entropy, big, torch.tensor([1, 1]))
    check(what, loss.item(), pytest.approx(500.0), "use logsumexp: no overflow")
    plain = torch.randn(4, 5)
    loss, what = call(pre.cross_entropy, plain, torch.tensor([0, 1, 2, 0]), ignore_index=0)
    close(what, loss, F.cross_entropy(plain, torch.tensor([0, 1, 2, 0]), ignore_index=0))


def test_ex_4_4_evaluate(pre, monkeypatch):
    grad_enabled = []

    def reference_cross_entropy(logits, targets, ignore_index=-100):
        grad_enabled.append(torch.is_grad_enabled())
        return F.cross_entropy(logits, targets, ignore_index=ignore_index)

    monkeypatch.setattr(pre, "cross_entropy", reference_cross_entropy)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8, dropout=0.5))
    batches = [(torch.randint(0, 20, (3, 8)), torch.randint(0, 20, (3, 8))) for _ in range(3)]
    model.train()
    loss, _ = call(pre.evaluate, model, batches)
    what = "evaluate(model in training mode, 3 batches)"
    check_type(what, loss, float, "return a Python float (.item())")
    check(what, loss, pytest.approx(evaluate_loss(model, batches, torch.device("cpu"), "float32"), abs=1e-6),
          "evaluate in eval mode (no dropout), averaging the batches' losses")
    assert model.training, "put the model back in training mode afterwards"
    assert grad_enabled and not any(grad_enabled), "evaluate without gradients (torch.no_grad())"
    model.eval()
    pre.evaluate(model, batches)
    assert not model.training, "a model in eval mode should stay in eval mode"
