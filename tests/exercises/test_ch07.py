"""Grades chapter 7 (exercises/ch07/ex1_lora.py): one test per exercise.

The reference is gpt_scratch.lora: LoRALinear's forward and merge, and lora_parameter_count.
Each test calls only its own exercise, so an unfinished one fails alone.
"""

import math

import pytest
import torch

from gpt_scratch.lora import LoRALinear, add_lora, lora_layers, lora_parameter_count
from gpt_scratch.model import GPT, GPTConfig

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
    got = lora.lora_forward(x, torch.eye(2), None, torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0], [0.0]]), 0.5)
    torch.testing.assert_close(got, torch.tensor([[2.5, 2.0]]))
    for in_features, out_features, rank, alpha, bias in ((16, 48, 4, 8.0, True), (64, 16, 1, 3.0, False),
                                                        (8, 8, 8, 1.0, True)):
        layer = random_lora_layer(in_features, out_features, rank, alpha, bias)
        x = torch.randn(3, 5, in_features)
        with torch.no_grad():
            expected = layer(x)
            got = lora.lora_forward(x, layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scale)
        assert got.shape == (3, 5, out_features)
        torch.testing.assert_close(got, expected, msg="differs from gpt_scratch.lora.LoRALinear")
    # Gradients reach A and B (and not the frozen weight).
    layer = random_lora_layer(16, 48, 4, 8.0)
    lora.lora_forward(torch.randn(2, 16), layer.weight, layer.bias, layer.lora_A, layer.lora_B, layer.scale).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_B.grad is not None and layer.weight.grad is None


def test_ex_7_2_init_lora(lora):
    torch.manual_seed(0)
    A, B = lora.init_lora(256, 48, 8)
    assert A.shape == (8, 256) and B.shape == (48, 8)
    assert torch.count_nonzero(B) == 0, "B starts at zero: the model starts as the base model"
    bound = 1 / math.sqrt(256)
    assert A.abs().max() <= bound and A.abs().max() > 0.9 * bound, "A is uniform in [-1/sqrt(in), 1/sqrt(in)]"
    assert abs(A.std().item() - bound / math.sqrt(3)) < 0.1 * bound, "A is uniform in [-1/sqrt(in), 1/sqrt(in)]"
    assert abs(A.mean().item()) < 0.1 * bound
    torch.manual_seed(0)
    again, _ = lora.init_lora(256, 48, 8)
    assert torch.equal(A, again), "draw A from torch's global generator (repeatable with torch.manual_seed)"
    assert not torch.equal(A, lora.init_lora(256, 48, 8)[0]), "a new call draws a new A"
    # Zero init leaves a layer's output unchanged, and B still gets a gradient.
    linear = torch.nn.Linear(256, 48)
    A, B = (t.requires_grad_() for t in lora.init_lora(256, 48, 8))
    x = torch.randn(4, 256)
    out = linear(x) + 2.0 * (x @ A.T) @ B.T
    assert torch.equal(out, linear(x))
    out.pow(2).sum().backward()
    assert B.grad.abs().sum() > 0


def test_ex_7_3_merge_weight(lora):
    got = lora.merge_weight(torch.eye(2), torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0], [0.0]]), 0.5)
    torch.testing.assert_close(got, torch.tensor([[1.5, 0.5], [0.0, 1.0]]))
    layer = random_lora_layer(32, 96, 4, 8.0)
    x = torch.randn(6, 32)
    with torch.no_grad():
        unmerged = layer(x)
        base_weight = layer.weight.clone()
        merged_weight = lora.merge_weight(layer.weight, layer.lora_A, layer.lora_B, layer.scale)
        assert torch.equal(layer.weight, base_weight), "merge_weight must not change the weight it is given"
        assert merged_weight.shape == layer.weight.shape
        torch.testing.assert_close(torch.nn.functional.linear(x, merged_weight, layer.bias), unmerged)
        layer.merge()  # gpt_scratch's in-place merge: the same weight
        torch.testing.assert_close(merged_weight, layer.weight)
        # Unmerge: subtracting the update with a negative scale gives the base weight back.
        torch.testing.assert_close(lora.merge_weight(merged_weight, layer.lora_A, layer.lora_B, -layer.scale),
                                   base_weight)


def test_ex_7_4_lora_param_count(lora):
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
    assert lora.lora_param_count(config, 4, ("attn",)) == 768
    configs = [config, GPTConfig(vocab_size=101, block_size=8, n_layer=3, n_head=3, n_embd=24, bias=False),
               GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=1, n_embd=8, tie_weights=False)]
    target_sets = [("attn",), ("mlp",), ("head",), ("attn", "mlp"), ("mlp", "head"), ("attn", "mlp", "head")]
    for config in configs:
        for rank in (1, 3, 8):
            for targets in target_sets:
                expected = lora_parameter_count(config, rank, targets)
                assert lora.lora_param_count(config, rank, targets) == expected, f"rank {rank}, {targets}, {config}"
                model = GPT(config)
                add_lora(model, rank, 2.0 * rank, targets)
                counted = sum(layer.lora_A.numel() + layer.lora_B.numel() for _, layer in lora_layers(model))
                assert counted == expected
    gpt2_small = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    assert lora.lora_param_count(gpt2_small, 8, ("attn", "mlp")) == 12 * 8 * (768 * 4 + 768 * 2 + 768 * 5 * 2)
