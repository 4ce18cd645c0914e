"""Grades chapter 2 (exercises/ch02/ex1_attention.py): one test per exercise.

The reference is gpt_scratch itself: the student's layer must give CausalSelfAttention's output
on the same weights, and attend() must agree with PyTorch's scaled_dot_product_attention.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from gpt_scratch.model import CausalSelfAttention, GPTConfig

from checks import call, check, close, expect_close

SCRIPT = "ch02/ex1_attention.py"


@pytest.fixture
def attn(load_exercise):
    return load_exercise(SCRIPT)


def reference_attend(scores, v, mask=None):
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def reference_split(x, n_head):
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def with_reference_helpers(module, monkeypatch):
    monkeypatch.setattr(module, "attention_scores", lambda q, k: q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))
    monkeypatch.setattr(module, "causal_mask", lambda T: torch.ones(T, T, dtype=torch.bool).tril())
    monkeypatch.setattr(module, "attend", reference_attend)
    monkeypatch.setattr(module, "split_heads", reference_split)
    monkeypatch.setattr(module, "merge_heads", lambda x: x.transpose(1, 2).flatten(2))


def test_ex_2_1_attention_scores(attn):
    eye = torch.eye(2)
    expect_close(attn.attention_scores, eye, eye, equals=eye / math.sqrt(2), why="divide by sqrt(head size)")
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 5, 8)
    expect_close(attn.attention_scores, q, k, equals=torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(8))


def test_ex_2_2_causal_mask(attn):
    mask, what = call(attn.causal_mask, 3)
    check(what, mask, torch.ones(3, 3, dtype=torch.bool).tril(), "the mask should be a boolean tensor",
          same=isinstance(mask, torch.Tensor) and mask.dtype == torch.bool)
    check(what, mask.tolist(), [[True, False, False], [True, True, False], [True, True, True]])
    check("causal_mask(1)", attn.causal_mask(1).tolist(), [[True]])
    mask, what = call(attn.causal_mask, 5)
    check(what, mask.tolist(), torch.ones(5, 5, dtype=torch.bool).tril().tolist())


def test_ex_2_3_attend(attn):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 8).unbind(0)  # (2 heads, 4 tokens, 8 dims) each
    scores = q @ k.transpose(-2, -1) / math.sqrt(8)
    mask = torch.ones(4, 4, dtype=torch.bool).tril()

    (out, weights), what = call(attn.attend, scores, v, mask)
    close(f"{what}'s output", out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    close(f"{what}'s weights summed over the keys", weights.sum(-1), torch.ones(2, 4), "each row sums to 1")
    assert (weights[:, ~mask] == 0).all(), f"{what}: masked positions must get weight exactly 0"

    (out, weights), what = call(attn.attend, scores, v)  # no mask: every key allowed
    close(f"{what}'s output", out, F.scaled_dot_product_attention(q, k, v), "no mask: every key allowed")
    close(f"{what}'s weights", weights, scores.softmax(-1), "no mask: every key allowed")


def test_ex_2_4_split_and_merge_heads(attn):
    x = torch.arange(8.0).view(1, 2, 4)  # 2 tokens, 4 channels
    expect_close(attn.split_heads, x, 2, equals=torch.tensor([[[[0.0, 1.0], [4.0, 5.0]], [[2.0, 3.0], [6.0, 7.0]]]]),
                 why="head 1 gets channels 2 and 3 of every token")
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12)
    layer = CausalSelfAttention(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=3, n_embd=12))
    heads = expect_close(attn.split_heads, x, 3, equals=layer.split_heads(x))
    expect_close(attn.merge_heads, heads, equals=x, why="merge_heads undoes split_heads")


def test_ex_2_5_multi_head_attention(attn, monkeypatch):
    with_reference_helpers(attn, monkeypatch)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_embd=16)
    layer = CausalSelfAttention(config).eval()
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        (y, weights), what = call(attn.multi_head_attention, x, layer)
        expected = layer(x)
    check(f"{what}'s weights' shape", tuple(weights.shape), (2, 4, 6, 6), "(batch, n_head, T, T)")
    close(f"{what}'s output", y, expected, "differs from gpt_scratch.model.CausalSelfAttention")
    assert (weights.triu(diagonal=1) == 0).all(), f"{what}: with causal=True no token may look ahead"

    with torch.no_grad():
        (y_all, weights_all), what = call(attn.multi_head_attention, x, layer, causal=False)
        q, k, v = layer.c_attn(x).split(16, dim=2)
        q, k, v = reference_split(q, 4), reference_split(k, 4), reference_split(v, 4)
        expected = layer.c_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
    close(f"{what}'s output", y_all, expected, "causal=False should let every token see every token")
    assert (weights_all > 0).all(), f"{what}: with causal=False every weight should be above 0"
