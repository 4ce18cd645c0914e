"""Grades chapter 3 (exercises/ch03/ex1_gpt.py): one test per exercise.

The reference is gpt_scratch itself: Block.forward, GPT.num_parameters, filter_top_k and
generate with temperature 0.
"""

import pytest
import torch

from gpt_scratch.generate import filter_top_k, generate
from gpt_scratch.model import GPT, Block, GPTConfig

from checks import call, check, close, expect, expect_close

SCRIPT = "ch03/ex1_gpt.py"


@pytest.fixture
def gpt(load_exercise):
    return load_exercise(SCRIPT)


def small_config(**overrides) -> GPTConfig:
    settings = dict(vocab_size=37, block_size=12, n_layer=2, n_head=2, n_embd=16)
    settings.update(overrides)
    return GPTConfig(**settings)


def test_ex_3_1_block_forward(gpt):
    for config in (small_config(), small_config(bias=False, n_head=4)):
        torch.manual_seed(0)
        block = Block(config).eval()
        for p in block.parameters():  # random values everywhere, so that every part matters
            torch.nn.init.normal_(p, std=0.5)
        x = torch.randn(2, 5, config.n_embd)
        with torch.no_grad():
            expected = block(x)
            block.forward = lambda *args, **kwargs: pytest.fail("block_forward(block, x) called block(x); wire "
                                                                "block's parts yourself")
            got, what = call(gpt.block_forward, block, x)
        close(what, got, expected, "differs from gpt_scratch.model.Block.forward "
              f"(n_head={config.n_head}, bias={config.bias})")


def test_ex_3_2_count_parameters(gpt):
    expect(gpt.count_parameters, GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=2), equals=106)
    configs = [small_config(), small_config(n_layer=3, n_embd=24, n_head=3), small_config(bias=False),
               small_config(tie_weights=False), small_config(bias=False, tie_weights=False, vocab_size=5)]
    for config in configs:
        expect(gpt.count_parameters, config, equals=GPT(config).num_parameters())
    gpt2_small = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    expect(gpt.count_parameters, gpt2_small, equals=124_439_808, why="GPT-2 small, lm_head tied")


def test_ex_3_3_top_k_filter(gpt):
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    expect_close(gpt.top_k_filter, logits, 2, equals=torch.tensor([[float("-inf"), 3.0, 2.0]]))
    torch.manual_seed(0)
    logits = torch.randn(3, 20)
    for k in (1, 5, 20):
        got, what = call(gpt.top_k_filter, logits, k)
        check(f"{what}: logits kept per row", (got > float("-inf")).sum(-1).tolist(), [k] * 3)
        close(what, got, filter_top_k(logits, k))
    assert logits.isfinite().all(), "top_k_filter should not change its input"


def test_ex_3_4_greedy_generate(gpt):
    torch.manual_seed(0)
    model = GPT(small_config()).eval()
    for p in model.parameters():  # larger weights: the argmax is clear and the tokens vary
        torch.nn.init.normal_(p, std=0.3)
    prompt = [3, 14, 15, 9]
    new = expect(gpt.greedy_generate, model, prompt, 8, equals=generate(model, [prompt], 8, temperature=0.0,
                                                                       use_cache=False)[0])
    assert prompt == [3, 14, 15, 9], f"greedy_generate(model, [3, 14, 15, 9], 8) changed the prompt list to {prompt}"
    # Past the context (block_size 12), keep going on the last block_size tokens.
    long, what = call(gpt.greedy_generate, model, prompt, 20)
    check(f"len({what})", len(long), 20)
    check(f"{what}[:8]", long[:8], new, "the first 8 tokens are those of greedy_generate(model, prompt, 8)")
    ids = prompt + long[:15]
    window = torch.tensor([ids[-12:]])
    with torch.no_grad():
        check(f"{what}[15]", long[15], int(model(window)[0, -1].argmax()),
              "past the context (block_size 12), predict from the last 12 tokens")
