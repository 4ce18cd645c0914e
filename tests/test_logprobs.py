"""Completion log-probabilities (logprobs.py), checked against a slow one-example-at-a-time reference."""

import math

import pytest
import torch

from gpt_scratch.data import IGNORE, collate
from gpt_scratch.logprobs import completion_logprobs, encode_completions, token_logprobs
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.templates import encode_example
from gpt_scratch.tokenizer import Tokenizer

PROMPTS = ["What is 3 plus 4?", "Say yes.", "Reverse the letters.\n\nc a t"]
COMPLETIONS = ["The answer is 7.", "yes", "t a c"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train("What is 3 plus 4? The answer is 7. Say yes. Reverse the letters: c a t -> t a c. " * 20, 290)


@pytest.fixture(scope="module")
def model(tokenizer) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tokenizer.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=16)).eval()


def slow_logprob(model: GPT, tokenizer: Tokenizer, prompt: str, completion: str) -> float:
    """The reference: one example, no padding, one forward pass per completion token."""
    ids, trained = encode_example(tokenizer, {"prompt": prompt, "completion": completion}, "chat")
    total = 0.0
    for t in range(1, len(ids)):
        if not trained[t]:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids[:t]]))[0, -1]
        total += torch.log_softmax(logits.double(), dim=-1)[ids[t]].item()
    return total


def test_batched_logprobs_equal_the_slow_reference(model, tokenizer):
    examples = encode_completions(tokenizer, PROMPTS, COMPLETIONS)
    x, y = collate(examples, pad_id=tokenizer.eot_id)
    with torch.no_grad():
        per_token, total = completion_logprobs(model, x, y)
    expected = [slow_logprob(model, tokenizer, p, c) for p, c in zip(PROMPTS, COMPLETIONS)]
    torch.testing.assert_close(total.double(), torch.tensor(expected, dtype=torch.double), atol=1e-4, rtol=1e-5)
    assert per_token.shape == y.shape
    assert torch.equal(per_token.sum(dim=1), total)


def test_only_the_completion_and_its_one_eot_are_scored_even_though_pad_is_eot(model, tokenizer):
    examples = encode_completions(tokenizer, PROMPTS, COMPLETIONS)
    x, y = collate(examples, pad_id=tokenizer.eot_id)
    with torch.no_grad():
        per_token, _ = completion_logprobs(model, x, y)
    for row, completion in enumerate(COMPLETIONS):
        n_scored = len(tokenizer.encode(completion)) + 1  # the completion and its end-of-text
        assert int((y[row] != IGNORE).sum()) == n_scored
        assert int((per_token[row] != 0).sum()) == n_scored  # log p < 0 for every scored token
        assert torch.all(per_token[row][y[row] == IGNORE] == 0)
        # The last scored target is the row's end-of-text, though the padding after it has the same id.
        last = int((y[row] != IGNORE).nonzero().max())
        assert int(y[row, last]) == tokenizer.eot_id


def test_padding_and_batch_neighbours_do_not_change_a_row(model, tokenizer):
    examples = encode_completions(tokenizer, PROMPTS, COMPLETIONS)
    with torch.no_grad():
        _, alone = completion_logprobs(model, *collate(examples[1:2], tokenizer.eot_id))
        _, together = completion_logprobs(model, *collate(examples, tokenizer.eot_id))
    torch.testing.assert_close(together[1:2], alone)


def test_token_logprobs_on_hand_made_logits():
    # Two equally likely tokens: every scored token has log p = ln(1/2); ignored targets give exactly 0.
    logits = torch.zeros(1, 3, 2)
    targets = torch.tensor([[1, IGNORE, 0]])
    torch.testing.assert_close(token_logprobs(logits, targets), torch.tensor([[math.log(0.5), 0.0, math.log(0.5)]]))


def test_gradients_reach_the_model_only_through_scored_tokens(model, tokenizer):
    examples = encode_completions(tokenizer, PROMPTS[:1], COMPLETIONS[:1])
    x, y = collate(examples, tokenizer.eot_id)
    trained = GPT(model.config)
    trained.load_state_dict(model.state_dict())
    _, total = completion_logprobs(trained, x, y)
    total.sum().backward()
    assert trained.transformer.wte.weight.grad.abs().sum() > 0


def test_mismatched_lengths_are_one_clear_error(tokenizer):
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        encode_completions(tokenizer, PROMPTS[:2], COMPLETIONS[:1])


def test_a_conversation_as_the_prompt_scores_only_the_last_answer(model, tokenizer):
    history = [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"},
               {"role": "user", "content": "What is 3 plus 4?"}]
    example, = encode_completions(tokenizer, [history], ["The answer is 7."])
    whole, _ = encode_example(tokenizer, {"messages": history + [{"role": "assistant", "content": "The answer is 7."}]},
                              "chat")
    assert example.ids == whole  # the same tokens as the whole conversation in the template
    n_scored = len(tokenizer.encode("The answer is 7.")) + 1
    assert example.trained == [False] * (len(whole) - n_scored) + [True] * n_scored  # not the earlier "yes"
    single, = encode_completions(tokenizer, [[history[-1]]], ["The answer is 7."])
    assert single == encode_completions(tokenizer, [history[-1]["content"]], ["The answer is 7."])[0]
