import pytest
import torch

from tiny import tiny_config
from gpt_scratch.generate import filter_top_k, filter_top_p, generate
from gpt_scratch.model import GPT

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]


def test_cached_generation_equals_uncached(tiny_model):
    for kwargs in ({}, {"temperature": 1.0, "top_k": 10, "seed": 3}, {"temperature": 0.7, "top_p": 0.9, "seed": 5}):
        assert generate(tiny_model, PROMPTS, 12, use_cache=True, **kwargs) == \
            generate(tiny_model, PROMPTS, 12, use_cache=False, **kwargs)


def test_batched_generation_equals_one_prompt_at_a_time(tiny_model):
    batched = generate(tiny_model, PROMPTS, 10)
    assert batched == [generate(tiny_model, [p], 10)[0] for p in PROMPTS]
    assert all(len(row) == 10 for row in batched)


def test_each_row_stops_at_its_own_eos(tiny_model):
    free = generate(tiny_model, PROMPTS, 10)
    eos = free[0][2]  # make a token row 0 produces the end-of-text token
    stopped = generate(tiny_model, PROMPTS, 10, eos_id=eos)
    assert stopped[0][-1] == eos and len(stopped[0]) <= 3
    assert any(len(row) == 10 for row in stopped)  # the other rows went on
    for free_row, row in zip(free, stopped):
        cut = free_row.index(eos) + 1 if eos in free_row else len(free_row)
        assert row == free_row[:cut]


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_model):
    a = generate(tiny_model, PROMPTS, 10, temperature=1.0, seed=1)
    assert a == generate(tiny_model, PROMPTS, 10, temperature=1.0, seed=1)
    assert a != generate(tiny_model, PROMPTS, 10, temperature=1.0, seed=2)
    assert generate(tiny_model, PROMPTS, 10, temperature=1.0, top_k=1, seed=4) == generate(tiny_model, PROMPTS, 10)


def test_top_p_worked_example():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_top_p(logits, 0.7))
    assert kept.tolist() == [[True, True, False, False]]
    shuffled = logits[:, [2, 0, 3, 1]]  # order of the vocabulary must not matter
    assert torch.isfinite(filter_top_p(shuffled, 0.7)).tolist() == [[False, True, False, True]]
    assert torch.isfinite(filter_top_p(logits, 0.01)).sum() == 1  # always keeps the top token
    # When the top tokens add up to exactly p they are enough: not one token more (powers of two are exact).
    exact = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125]]))
    assert torch.isfinite(filter_top_p(exact, 0.75)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(exact, 1.0)).all()
    assert torch.isfinite(filter_top_k(logits, 3)).tolist() == [[True, True, True, False]]


def test_long_prompts_are_refused_or_cropped_and_the_context_limits_output(tiny_model):
    long_prompt = list(range(1, 41))  # 40 tokens, context is 32
    with pytest.raises(ValueError, match="40 tokens but the model's context is 32"):
        generate(tiny_model, [long_prompt], 5)
    cropped = generate(tiny_model, [long_prompt], 5, crop=True)
    assert cropped == generate(tiny_model, [long_prompt[-32:]], 5)
    assert len(cropped[0]) == 1  # a full context leaves room for exactly one more token
    assert len(generate(tiny_model, [list(range(1, 31))], 10)[0]) == 3


def test_bad_arguments():
    model = GPT(tiny_config())
    for kwargs in ({"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"temperature": -1}):
        with pytest.raises(ValueError):
            generate(model, PROMPTS, 3, **kwargs)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], 3)
