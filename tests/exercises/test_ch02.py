"""Grades chapter 2 (exercises/ch02/ex1_attention.py): one test per exercise.

The reference is gpt_scratch itself: the student's layer must give CausalSelfAttention's output
on the same weights, and attend() must agree with PyTorch's scaled_dot_product_attention.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from gpt_scratch.model import CausalSelfAttention, GPTConfig

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
    torch.testing.assert_close(attn.attention_scores(eye, eye), eye / math.sqrt(2))
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 5, 8)
    scores = attn.attention_scores(q, k)
    assert scores.shape == (2, 3, 4, 5)
    torch.testing.assert_close(scores, torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(8))


def test_ex_2_2_causal_mask(attn):
    mask = attn.causal_mask(3)
    assert mask.dtype == torch.bool, "the mask should be a boolean tensor"
    assert mask.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert attn.causal_mask(1).tolist() == [[True]]
    assert int(attn.causal_mask(5).sum()) == 15


def test_ex_2_3_attend(attn):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 8).unbind(0)  # (2 heads, 4 tokens, 8 dims) each
    scores = q @ k.transpose(-2, -1) / math.sqrt(8)
    mask = torch.ones(4, 4, dtype=torch.bool).tril()

    out, weights = attn.attend(scores, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))
    assert (weights[:, ~mask] == 0).all(), "masked positions must get weight exactly 0"

    out, weights = attn.attend(scores, v)  # no mask: every key allowed
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(weights, scores.softmax(-1))


def test_ex_2_4_split_and_merge_heads(attn):
    x = torch.arange(8.0).view(1, 2, 4)  # 2 tokens, 4 channels
    heads = attn.split_heads(x, 2)
    assert heads.shape == (1, 2, 2, 2)
    assert heads[0, 1].tolist() == [[2.0, 3.0], [6.0, 7.0]], "head 1 gets channels 2 and 3 of every token"
    torch.manual_seed(0)
    x = torch.randn(2, 5, 12)
    layer = CausalSelfAttention(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=3, n_embd=12))
    torch.testing.assert_close(attn.split_heads(x, 3), layer.split_heads(x))
    merged = attn.merge_heads(attn.split_heads(x, 3))
    assert merged.shape == (2, 5, 12)
    torch.testing.assert_close(merged, x)


def test_ex_2_5_multi_head_attention(attn, monkeypatch):
    with_reference_helpers(attn, monkeypatch)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_embd=16)
    layer = CausalSelfAttention(config).eval()
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        y, weights = attn.multi_head_attention(x, layer)
        expected = layer(x)
    assert y.shape == (2, 6, 16) and weights.shape == (2, 4, 6, 6)
    torch.testing.assert_close(y, expected, msg="output differs from gpt_scratch.model.CausalSelfAttention")
    assert (weights.triu(diagonal=1) == 0).all(), "with causal=True no token may look ahead"

    with torch.no_grad():
        y_all, weights_all = attn.multi_head_attention(x, layer, causal=False)
        q, k, v = layer.c_attn(x).split(16, dim=2)
        q, k, v = reference_split(q, 4), reference_split(k, 4), reference_split(v, 4)
        expected = layer.c_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
    torch.testing.assert_close(y_all, expected, msg="causal=False should let every token see every token")
    assert (weights_all > 0).all()
