"""Grades chapter 12 (exercises/ch12/ex1_modern.py): one test per exercise.

The reference is gpt_scratch itself: RMSNorm, rope_angles + apply_rope, the SwiGLU MLP, repeat_kv and
CausalSelfAttention built with grouped key/value heads and RoPE, on random weights.
"""

import math

import pytest
import torch

from gpt_scratch.model import MLP, CausalSelfAttention, RMSNorm, apply_rope, llama_config, repeat_kv, rope_angles

from checks import call, check, close, expect_close

SCRIPT = "ch12/ex1_modern.py"


@pytest.fixture
def modern(load_exercise):
    return load_exercise(SCRIPT)


def reference_rope(x, positions, theta):
    return apply_rope(x, *rope_angles(positions[None], x.shape[-1], theta))


def noisy(module: torch.nn.Module) -> torch.nn.Module:
    """Random values in every tensor (norm gains and biases too), so that every part matters."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.5)
    return module.eval()


def test_ex_12_1_rms_norm(modern):
    x, weight = torch.tensor([3.0, -1.0, 1.0, -1.0]), torch.tensor([1.0, 1.0, 1.0, 2.0])
    expect_close(modern.rms_norm, x, weight, 0.0, equals=torch.tensor([3.0, -1.0, 1.0, -2.0]) / math.sqrt(3),
                 why="x / sqrt(mean(x^2) + eps) * weight; the mean square of x is 3")
    torch.manual_seed(0)
    norm = noisy(RMSNorm(16, eps=1e-5))
    x = torch.randn(2, 5, 16) * 3 + 1  # a mean far from 0: LayerNorm's result would differ
    with torch.no_grad():
        expect_close(modern.rms_norm, x, norm.weight, 1e-5, equals=norm(x), why="differs from gpt_scratch's RMSNorm")
    small, eps_norm = torch.full((1, 4), 0.01), RMSNorm(4, eps=0.1)
    with torch.no_grad():
        expect_close(modern.rms_norm, small, eps_norm.weight, 0.1, equals=eps_norm(small),
                     why="eps goes inside the square root, added to the mean of the squares")


def test_ex_12_2_rope(modern):
    expect_close(modern.rope, torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([1]), 10000.0,
                 equals=torch.tensor([[[[math.cos(1), math.sin(1)]]]]), why="at position 1 pair 0 turns by 1 radian")
    torch.manual_seed(0)
    x, positions = torch.randn(2, 3, 7, 12), torch.arange(5, 12)
    got = expect_close(modern.rope, x, positions, 500.0, equals=reference_rope(x, positions, 500.0),
                       why="pair i is (x[..., i], x[..., i + D/2]), turned by position * theta^(-2i/D)",
                       tolerance=dict(atol=1e-5, rtol=1e-5))
    close("the length of every pair after rope", (got[..., :6] ** 2 + got[..., 6:] ** 2),
          x[..., :6] ** 2 + x[..., 6:] ** 2, "a turn keeps lengths", atol=1e-5, rtol=1e-5)
    expect_close(modern.rope, x, torch.zeros(7, dtype=torch.long), 500.0, equals=x, why="position 0 is no turn")


def test_ex_12_3_swiglu(modern):
    for bias in (False, True):
        config = llama_config(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=bias)
        mlp = noisy(MLP(config))
        x = torch.randn(2, 5, 16)
        with torch.no_grad():
            expected = mlp(x)
            mlp.forward = lambda *args, **kwargs: pytest.fail("swiglu(x, mlp) called mlp(x); use mlp.c_gate, "
                                                              "mlp.c_fc and mlp.c_proj yourself")
            got, what = call(modern.swiglu, x, mlp)
        close(what, got, expected, "differs from gpt_scratch's SwiGLU MLP: c_proj(silu(c_gate(x)) * c_fc(x))")


def test_ex_12_4_repeat_kv(modern):
    kv = torch.arange(2.0)[None, :, None, None].expand(1, 2, 3, 4)  # head j holds the number j
    got, what = call(modern.repeat_kv, kv, 3)
    check(f"{what}'s shape", tuple(got.shape), (1, 6, 3, 4), "n_kv_head * n_rep heads")
    check(f"{what}: the number each head holds", got[0, :, 0, 0].tolist(), [0.0, 0.0, 0.0, 1.0, 1.0, 1.0],
          "query head h reads key/value head h // n_rep")
    torch.manual_seed(0)
    kv = torch.randn(2, 3, 5, 4)
    for n_rep in (1, 2):
        expect_close(modern.repeat_kv, kv, n_rep, equals=repeat_kv(kv, n_rep))


def test_ex_12_5_grouped_query_attention(modern, monkeypatch):
    monkeypatch.setattr(modern, "rope", reference_rope)  # 12.2 and 12.4 are graded on their own
    monkeypatch.setattr(modern, "repeat_kv", repeat_kv)
    for n_kv_head in (1, 2, 4):  # multi-query, grouped, every head its own (multi-head)
        config = llama_config(vocab_size=10, block_size=16, n_layer=1, n_head=4, n_embd=24, n_kv_head=n_kv_head,
                              rope_theta=300.0, bias=True)  # head_dim 6
        layer = noisy(CausalSelfAttention(config))
        x, positions = torch.randn(2, 7, 24), torch.arange(7)
        with torch.no_grad():
            expected = layer(x, rope=rope_angles(positions[None], 6, 300.0))
            layer.forward = lambda *args, **kwargs: pytest.fail("grouped_query_attention called layer(x); use "
                                                                "layer.c_attn and layer.c_proj yourself")
            got, what = call(modern.grouped_query_attention, x, layer, positions)
        close(what, got, expected, f"differs from gpt_scratch's attention with {n_kv_head} key/value heads of 4",
              atol=1e-5, rtol=1e-5)
