"""Grades chapter 8 (exercises/ch08/ex1_reward.py and ex2_reward_step.py): one test per exercise.

The reference is gpt_scratch: reward.bradley_terry_loss, reward.last_token_index (with gather_last
and reward_scores) and reward.pairwise_accuracy; for the steps on a GPT, logprobs.completion_logprobs
(on data.collate's x, y), reward.reward_scores and one optimizer step of reward.pair_loss, on tiny
GPTs of fixed seeds. Each test calls only its own exercise (an exercise that calls an earlier one
gets the package's version of it), so an unfinished one fails alone.
"""

import copy
import math
import random

import pytest
import torch

from gpt_scratch import reward
from gpt_scratch.data import IGNORE, Encoded, collate, pad_batch
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.logprobs import completion_logprobs
from gpt_scratch.model import GPT, GPTConfig

from checks import call, check, check_type, close, close_parameters, expect, expect_close

SCRIPT = "ch08/ex1_reward.py"
STEP_SCRIPT = "ch08/ex2_reward_step.py"
EOT = 0  # the end-of-text id of the batches below, which is also their pad id


@pytest.fixture
def rm(load_exercise):
    return load_exercise(SCRIPT)


@pytest.fixture
def ex(load_exercise):
    return load_exercise(STEP_SCRIPT)


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



# Exercises 8.4 to 8.6: answer log-probabilities and a reward model's step, on a GPT -----------------------------

def tiny_gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()


def answer_batch(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Encoded]]:
    """(ids, prompt_lengths, lengths, examples) of n prompt + answer rows, right-padded with EOT.

    Prompts of 1 to 5 tokens, answers of 0 to 4 tokens and their end-of-text; row 0 is the longest
    (no padding), row 1 an answer that is only the end-of-text, row 2 a one-token prompt."""
    rng = random.Random(seed)
    shapes = [(5, 4), (3, 0), (1, 2)] + [(rng.randint(1, 5), rng.randint(0, 4)) for _ in range(n - 3)]
    examples = []
    for n_prompt, n_answer in shapes:
        prompt = [rng.randrange(1, 16) for _ in range(n_prompt)]
        answer = [rng.randrange(1, 16) for _ in range(n_answer)] + [EOT]
        examples.append(Encoded(prompt + answer, [False] * n_prompt + [True] * len(answer)))
    ids, prompt_lengths, lengths = ids_and_lengths(examples)
    return ids, prompt_lengths, lengths, examples


def ids_and_lengths(examples: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    longest = max(len(e.ids) for e in examples)
    ids = torch.tensor([e.ids + [EOT] * (longest - len(e.ids)) for e in examples])
    return ids, torch.tensor([e.trained.index(True) for e in examples]), torch.tensor([len(e.ids) for e in examples])


def package_answer_logprobs(model: GPT, ids: torch.Tensor, prompt_lengths: torch.Tensor,
                            lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 8.4 done by the package: completion_logprobs on the (x, y) that data.collate makes of the rows,
    padded further to T - 1 columns where ids has more padding than its longest row needs."""
    examples = [Encoded(row[:n].tolist(), [False] * p + [True] * (n - p))
                for row, p, n in zip(ids, prompt_lengths.tolist(), lengths.tolist())]
    x, y = collate(examples, pad_id=EOT)
    extra = ids.shape[1] - 1 - x.shape[1]
    x = torch.cat([x, torch.full((len(ids), extra), EOT)], dim=1)
    y = torch.cat([y, torch.full((len(ids), extra), IGNORE)], dim=1)
    return completion_logprobs(model, x, y)


def package_batch(ids: torch.Tensor, prompt_lengths: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """ids, attention mask and answer mask (B, T): the rows as gpt_scratch.reward takes them."""
    positions = torch.arange(ids.shape[1])
    mask = (positions < lengths[:, None]).long()
    return ids, mask, (mask.bool() & (positions >= prompt_lengths[:, None])).long()


def why_scored_wrong(got: list[int], n_prompt: int, length: int) -> str:
    """What a wrong set of scored positions t (per_token[b, t] != 0) says about the mistake."""
    if any(t < n_prompt - 1 for t in got):
        return "scored the prompt"
    if length - 2 not in got:
        return "dropped the end-of-text (pad id = end-of-text id: find padding by length)"
    if any(t > length - 2 for t in got):
        return "scored padding"
    if n_prompt - 1 not in got:
        return "missed the first answer token (predicted at t = prompt_length - 1)"
    return "scored other targets than the answer's"


def check_answer_logprobs(what: str, got, model: GPT, ids: torch.Tensor, prompt_lengths: torch.Tensor,
                          lengths: torch.Tensor) -> None:
    """(per_token, total) of answer_logprobs: its shapes, which positions it scores (row by row, with what a
    wrong set says), its values against the package's, its gradient."""
    check_type(what, got, tuple, "return (per_token, total)")
    check(what, len(got), 2, "return two tensors, (per_token, total)", verb="returned a tuple of length")
    per_token, total = got
    B, T = ids.shape
    check(what, tuple(per_token.shape), (B, T - 1), "per_token is (B, T - 1): one entry per position that predicts "
          "a next token", verb="returned a per_token of shape")
    check(what, tuple(total.shape), (B,), "total is (B,): one sum per row", verb="returned a total of shape")
    expected, expected_total = package_answer_logprobs(model, ids, prompt_lengths, lengths)
    for b in range(B):
        scored, wanted = per_token[b].nonzero().flatten().tolist(), expected[b].nonzero().flatten().tolist()
        if scored != wanted:
            p, length = int(prompt_lengths[b]), int(lengths[b])
            raise AssertionError(f"{what} {why_scored_wrong(scored, p, length)}: t = {scored} in row {b}, expected "
                                 f"{wanted} (row {b}: {p} prompt tokens, {length - p} answer tokens, {T - length} pad)")
    close(what, per_token, expected, "differs from gpt_scratch.logprobs.completion_logprobs on data.collate's (x, y)",
          atol=1e-5, rtol=1e-5)
    close(f"the total of {what}", total, expected_total, "total is per_token summed over t", atol=1e-5, rtol=1e-5)
    check(what, per_token.dtype, torch.float32, "float32 log-probabilities", verb="returned a per_token of dtype")
    assert total.requires_grad, (f"{what} returned a total without gradient; keep the graph (no .detach(), no "
                                 f"torch.no_grad()): the training steps backpropagate through it")


def test_ex_8_4_answer_logprobs(ex):
    model = tiny_gpt(0)
    # The docstring's example (prompt 5 6, answer 7 <eot>, one pad), then random batches with every edge case.
    batches = [(torch.tensor([[5, 6, 7, EOT, EOT]]), torch.tensor([2]), torch.tensor([4]))]
    batches += [answer_batch(seed, n)[:3] for seed, n in ((0, 6), (1, 12), (2, 3))]
    for ids, prompt_lengths, lengths in batches:
        before = ids.clone()
        got, what = call(ex.answer_logprobs, model, ids, prompt_lengths, lengths)
        assert torch.equal(ids, before), f"{what} changed ids; do not change its arguments"
        check_answer_logprobs(what, got, model, ids, prompt_lengths, lengths)


def test_ex_8_5_reward_scores(ex, monkeypatch):
    monkeypatch.setattr(ex, "answer_logprobs", package_answer_logprobs)  # exercise 8.4 done by the package
    for seed, with_logprob in ((0, False), (1, True)):
        model = GPTWithHead(tiny_gpt(seed), "reward", with_logprob=with_logprob).eval()
        with torch.no_grad():  # a trained head: the scores differ from position to position
            model.head.weight.normal_()
            model.head.bias.fill_(0.3)
            if with_logprob:
                model.head.logprob_weight.fill_(0.7)
        ids, prompt_lengths, lengths, _ = answer_batch(seed + 5, 8)
        got, _ = call(ex.reward_scores, model, ids, prompt_lengths, lengths)
        kind = "head + log-p weight" if with_logprob else "head only"
        what = (f"reward_scores(<GPTWithHead, {kind}>, ids {ids.shape[0]}x{ids.shape[1]}, prompt_lengths, "
                f"lengths {lengths.tolist()})")
        check_type(what, got, torch.Tensor, "return one score per row, a tensor (B,)")
        check(what, tuple(got.shape), (8,), "one score per row, (B,)", verb="returned a tensor of shape")
        batch = package_batch(ids, prompt_lengths, lengths)
        expected = reward.reward_scores(model, *batch)
        with torch.no_grad():
            head = model(ids, batch[1])  # the head at every position
            at_last_real = head[torch.arange(8), lengths - 1]
            logprob_term = expected - at_last_real
            if torch.allclose(got, head[:, -1] + logprob_term, atol=1e-5):
                raise AssertionError(f"{what} read the scores in the last column, padding in "
                                     f"{int((lengths < ids.shape[1]).sum())} of 8 rows; read each row's last real "
                                     f"token")
            if with_logprob and torch.allclose(got, at_last_real, atol=1e-5):
                raise AssertionError(f"{what} left out the log-p term: this head has model.head.logprob_weight; add "
                                     f"it times the answer's log-probability")
        close(what, got, expected, "differs from gpt_scratch.reward.reward_scores", atol=1e-5, rtol=1e-5)
        got.sum().backward()
        assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0, \
            f"{what} returned scores whose gradient does not reach the head; keep the graph (no .detach())"
        if with_logprob:
            assert model.head.logprob_weight.grad is not None, \
                f"{what} returned scores whose gradient does not reach model.head.logprob_weight"


def test_ex_8_6_reward_model_step(ex, monkeypatch):
    monkeypatch.setattr(ex, "answer_logprobs", package_answer_logprobs)  # exercises 8.4 and 8.5 done by the package
    monkeypatch.setattr(ex, "reward_scores", lambda model, *batch: reward.reward_scores(model, *package_batch(*batch)))
    for seed, score, body, margin in ((0, "head", "trained", 0.0), (1, "head+logprob", "frozen", 0.5)):
        model = GPTWithHead(tiny_gpt(seed), "reward", with_logprob=score == "head+logprob").train()
        with torch.no_grad():  # a head that is not zero: the body's gradient is not zero either
            model.head.weight.normal_(std=0.5)
        if body == "frozen":
            model.gpt.requires_grad_(False)
        expected_model = copy.deepcopy(model)
        # Plain SGD: Adam would turn a gradient that is 0 up to rounding (the attention's key bias) into a full step.
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        expected_optimizer = torch.optim.SGD([p for p in expected_model.parameters() if p.requires_grad], lr=0.5)
        frozen = copy.deepcopy(model.gpt) if body == "frozen" else None
        for step, batch_seed in enumerate((seed + 10, seed + 20), start=1):
            chosen = answer_batch(batch_seed, 6)[3]
            rejected = answer_batch(batch_seed + 1, 6)[3]
            batch = ids_and_lengths(chosen + rejected)
            got, _ = call(ex.reward_model_step, model, optimizer, *batch, margin=margin)
            ids = batch[0]
            what = (f"reward_model_step(<GPTWithHead, {score}, body {body}>, <SGD>, ids {ids.shape[0]}x{ids.shape[1]}, "
                    f"..., margin={margin}) at step {step}")
            check_type(what, got, float, "return the loss as a Python float (.item())")
            expected_loss = reward.pair_loss(expected_model, package_batch(*batch), margin)
            expected_optimizer.zero_grad(set_to_none=True)
            expected_loss.backward()
            expected_optimizer.step()
            check(what, got, pytest.approx(expected_loss.item(), abs=1e-5),
                  "the Bradley-Terry loss of the pairs (chosen rows first, then the rejected) before the step, "
                  "as gpt_scratch.reward.pair_loss gives it")
            why = "differs from one optimizer step of gpt_scratch.reward.pair_loss (zero the gradients, backward, step)"
            if step > 1:
                why = "step 1 matched: a gradient left over from it? " + why
            close_parameters(f"after {what}", model, expected_model, why)
        if frozen is not None:
            close_parameters(f"after {what}, with a frozen body", model.gpt, frozen, "a frozen body does not change",
                             atol=0, rtol=0)
