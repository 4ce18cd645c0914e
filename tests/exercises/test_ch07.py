"""Grades chapter 7 (exercises/ch07/ex1_lora.py): one test per exercise.

The reference is gpt_scratch.lora: LoRALinear's forward and merge, and lora_parameter_count.
Each test calls only its own exercise, so an unfinished one fails alone.
"""

import math

import pytest
import torch

from gpt_scratch.lora import LoRALinear, add_lora, lora_layers, lora_parameter_count
from gpt_scratch.model import GPT, GPTConfig

from checks import call, check, close, expect, expect_close

SCRIPT = "ch07/ex1_lora.py"


@pytest.fixture
def lora(load_exercise):
    return load_exercise(SCRIPT)


def random_lora_layer(in_features: int, out_features: int, rank: int, alpha: float, bias: bool = True) -> LoRALinear:
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(in_features, out_features, bias=bias), rank, alpha)
    with torch.no_grad():
        layer.lora_B.normal_()  # a trained adapter: B is no longer zero
    return layer


def test_ex_7_1_lora_forward(lora):
    x = torch.tensor([[1.0, 2.0]])
    A, B = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0], [0.0]])
    expect_close(lora.lora_forward, x, torch.eye(2), None, A, B, 0.5, equals=torch.tensor([[2.5, 2.0]]),
                 why="W x + b + scale * B (A x)")
    for in_features, out_features, rank, alpha, bias in ((16, 48, 4, 8.0, True), (64, 16, 1, 3.0, False),
                                                        (8, 8, 8, 1.0, True)):
        layer = random_lora_layer(in_features, out_features, rank, alpha, bias)
        x = torch.randn(3, 5, in_features)
        with torch.no_grad():
            expected = layer(x)
            expect_close(lora.lora_forward, x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scale,
                         equals=expected, why="differs from gpt_scratch.lora.LoRALinear")
    # Gradients reach A and B (and not the frozen weight).
    layer = random_lora_layer(16, 48, 4, 8.0)
    out, what = call(lora.lora_forward, torch.randn(2, 16), layer.weight, layer.bias, layer.lora_A, layer.lora_B,
                     layer.scale)
    out.sum().backward()
    check(f"after {what}.sum().backward(), the tensors with a gradient",
          [name for name in ("lora_A", "lora_B", "weight") if getattr(layer, name).grad is not None],
          ["lora_A", "lora_B"], "gradients reach A and B (the base weight is frozen)", verb="are")


def test_ex_7_2_init_lora(lora):
    torch.manual_seed(0)
    (A, B), what = call(lora.init_lora, 256, 48, 8)
    check(what, (tuple(A.shape), tuple(B.shape)), ((8, 256), (48, 8)), "A is (rank, in), B is (out, rank)",
          verb="gave A and B of shapes")
    assert torch.count_nonzero(B) == 0, f"{what} gave a B with {torch.count_nonzero(B)} nonzero values; B starts at " \
                                        "zero: the model starts as the base model"
    bound = 1 / math.sqrt(256)
    uniform = "A is uniform in [-1/sqrt(in), 1/sqrt(in)] = [-0.0625, 0.0625]"
    largest, std, mean = A.abs().max().item(), A.std().item(), A.mean().item()
    assert 0.9 * bound < largest <= bound, f"{what} gave an A whose largest |value| is {largest:.4g}; {uniform}"
    assert abs(std - bound / math.sqrt(3)) < 0.1 * bound, f"{what} gave an A of standard deviation {std:.4g}, " \
                                                          f"expected about {bound / math.sqrt(3):.4g}; {uniform}"
    assert abs(mean) < 0.1 * bound, f"{what} gave an A of mean {mean:.4g}, expected about 0; {uniform}"
    torch.manual_seed(0)
    again, _ = lora.init_lora(256, 48, 8)
    assert torch.equal(A, again), f"{what} after torch.manual_seed(0) gave another A the second time: draw A from " \
                                  "torch's global generator (repeatable with torch.manual_seed)"
    assert not torch.equal(A, lora.init_lora(256, 48, 8)[0]), f"{what} gave the same A twice: a new call draws a new A"
    # Zero init leaves a layer's output unchanged, and B still gets a gradient.
    linear = torch.nn.Linear(256, 48)
    A, B = (t.requires_grad_() for t in lora.init_lora(256, 48, 8))
    x = torch.randn(4, 256)
    out = linear(x) + 2.0 * (x @ A.T) @ B.T
    assert torch.equal(out, linear(x)), f"with {what}'s A and B, the layer's output changed: B must start at zero"
    out.pow(2).sum().backward()
    assert B.grad.abs().sum() > 0, f"with {what}'s A and B, B gets no gradient: A must not be zero"


def test_ex_7_3_merge_weight(lora):
    expect_close(lora.merge_weight, torch.eye(2), torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0], [0.0]]), 0.5,
                 equals=torch.tensor([[1.5, 0.5], [0.0, 1.0]]), why="W + scale * B @ A")
    layer = random_lora_layer(32, 96, 4, 8.0)
    x = torch.randn(6, 32)
    with torch.no_grad():
        unmerged = layer(x)
        base_weight = layer.weight.clone()
        merged_weight, what = call(lora.merge_weight, layer.weight, layer.lora_A, layer.lora_B, layer.scale)
        assert torch.equal(layer.weight, base_weight), f"{what} changed the weight it was given; return a new one"
        close(f"the layer's output with {what}", torch.nn.functional.linear(x, merged_weight, layer.bias), unmerged,
              "merging must not change the outputs")
        layer.merge()  # gpt_scratch's in-place merge: the same weight
        close(what, merged_weight, layer.weight, "differs from gpt_scratch.lora.LoRALinear.merge")
        # Unmerge: subtracting the update with a negative scale gives the base weight back.
        expect_close(lora.merge_weight, merged_weight, layer.lora_A, layer.lora_B, -layer.scale, equals=base_weight,
                     why="a negative scale unmerges")


def test_ex_7_4_lora_param_count(lora):
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
    expect(lora.lora_param_count, config, 4, ("attn",), equals=768)
    configs = [config, GPTConfig(vocab_size=101, block_size=8, n_layer=3, n_head=3, n_embd=24, bias=False),
               GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8, tie_weights=False)]
    target_sets = [("attn",), ("mlp",), ("head",), ("attn", "mlp"), ("mlp", "head"), ("attn", "mlp", "head")]
    for config in configs:
        for rank in (1, 3, 8):
            for targets in target_sets:
                expected = lora_parameter_count(config, rank, targets)
                expect(lora.lora_param_count, config, rank, targets, equals=expected)
                model = GPT(config)
                add_lora(model, rank, 2.0 * rank, targets)
                counted = sum(layer.lora_A.numel() + layer.lora_B.numel() for _, layer in lora_layers(model))
                assert counted == expected, "gpt_scratch.lora's count disagrees with its adapters"
    gpt2_small = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    expect(lora.lora_param_count, gpt2_small, 8, ("attn", "mlp"), equals=12 * 8 * (768 * 4 + 768 * 2 + 768 * 5 * 2),
           why="GPT-2 small")
