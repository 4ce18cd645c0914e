"""Evaluation (evaluate.py): the win-rate of one model's answers against another's under the hidden rule."""

import pytest
import torch

from gpt_scratch.evaluate import answer, compare_answers, win_rate
from gpt_scratch.model import GPT, GPTConfig
from gpt_scratch.tokenizer import Tokenizer

ADD = {"family": "add", "answer": "7", "instruction": "What is 3 plus 4?", "input": "", "output": "7"}
FACT = {"family": "facts", "answer": "yes", "instruction": "Is a seal an animal?", "input": "", "output": "yes"}


def test_the_rule_ranks_correctness_first_then_style():
    assert compare_answers(ADD, "7", "The answer is 8.") == 1  # right beats wrong, whatever the style
    assert compare_answers(ADD, "The answer is 7.", "7") == 1  # both right: the sentence style wins
    assert compare_answers(ADD, "8", "The answer is 7.") == -1
    assert compare_answers(ADD, "7", "7.") == 0  # both right, both bare
    assert compare_answers(ADD, "9", "8") == 0  # both wrong, same style
    assert compare_answers(ADD, "The answer is 9.", "8") == 0  # both wrong: style does not count (rule 2)


def test_win_rate_counts_wins_losses_and_ties_on_a_hand_made_example():
    records = [ADD, ADD, FACT, FACT]
    a = ["The answer is 7.", "7", "no", "yes"]
    b = ["7", "8", "yes", "yes"]
    result = win_rate(records, a, b)  # outcomes +1, +1, -1, 0
    assert (result["wins"], result["losses"], result["ties"], result["n"]) == (2, 1, 1, 4)
    assert result["win_rate"] == pytest.approx(2 / 3)
    assert result["tie_share"] == pytest.approx(1 / 4)
    assert result["families"]["add"]["win_rate"] == 1.0 and result["families"]["add"]["ties"] == 0
    assert result["families"]["facts"]["win_rate"] == 0.0 and result["families"]["facts"]["tie_share"] == 0.5
    # The same answers against themselves: all ties, no side wins.
    same = win_rate(records, a, a)
    assert same["ties"] == 4 and same["win_rate"] == 0.5 and same["tie_share"] == 1.0
    # Swapping the sides swaps wins and losses.
    swapped = win_rate(records, b, a)
    assert (swapped["wins"], swapped["losses"]) == (1, 2)


def test_win_rate_needs_one_answer_per_record():
    with pytest.raises(ValueError, match="give both models' answer to every record"):
        win_rate([ADD, FACT], ["7"], ["7", "yes"])


def test_sampled_answers_repeat_for_a_seed_and_greedy_is_the_default():
    tokenizer = Tokenizer.train("What is 3 plus 4? The answer is 7. " * 30, 275)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=16))
    records = [ADD] * 6
    greedy = answer(model, tokenizer, records, "chat", max_new_tokens=5)
    assert len(set(greedy)) == 1  # one prompt, greedy: one answer
    first = answer(model, tokenizer, records, "chat", max_new_tokens=5, temperature=1.0, seed=3)
    again = answer(model, tokenizer, records, "chat", max_new_tokens=5, temperature=1.0, seed=3)
    assert first == again and len(set(first)) > 1
