import pytest
import torch

from tiny import tiny_config
from gpt_scratch.model import GPT, GPTConfig, KVCache, attention_bias, lm_loss


def expected_parameters(c: GPTConfig) -> int:
    """GPT-2's parameter count, written out: embeddings + blocks + final norm (lm_head tied)."""
    per_block = (
        2 * 2 * c.n_embd  # two LayerNorms (weight + bias)
        + c.n_embd * 3 * c.n_embd + 3 * c.n_embd  # c_attn
        + c.n_embd * c.n_embd + c.n_embd  # attn c_proj
        + c.n_embd * 4 * c.n_embd + 4 * c.n_embd  # c_fc
        + 4 * c.n_embd * c.n_embd + c.n_embd  # mlp c_proj
    )
    return c.vocab_size * c.n_embd + c.block_size * c.n_embd + c.n_layer * per_block + 2 * c.n_embd


def test_parameter_count_matches_formula():
    c = tiny_config()
    assert GPT(c).num_parameters() == expected_parameters(c) == 8128
    untied = GPT(tiny_config(tie_weights=False))
    assert untied.num_parameters() == expected_parameters(c) + c.vocab_size * c.n_embd
    assert GPT(c).num_parameters(exclude_embeddings=True) == expected_parameters(c) - 64 * 16 - 32 * 16


def test_weight_tying_shares_one_tensor():
    model = GPT(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert GPT(tiny_config(tie_weights=False)).lm_head.weight is not GPT(tiny_config()).transformer.wte.weight


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_embd=64, n_layer=8, vocab_size=512))
    std_proj = model.transformer.h[0].attn.c_proj.weight.std().item()
    std_fc = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / 4) < 0.001  # 0.02 / sqrt(2 * 8)
    assert torch.all(model.transformer.h[0].attn.c_attn.bias == 0)


def test_output_shapes_and_body(tiny_model):
    idx = torch.randint(0, 64, (3, 10))
    logits = tiny_model(idx)
    hidden = tiny_model.body(idx)
    assert logits.shape == (3, 10, 64) and hidden.shape == (3, 10, 16)
    torch.testing.assert_close(tiny_model.lm_head(hidden), logits)


def test_attention_is_causal(tiny_model):
    idx = torch.randint(0, 64, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 64
    a, b = tiny_model(idx), tiny_model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_manual_attention_equals_sdpa():
    torch.manual_seed(1)
    model = GPT(tiny_config()).eval()
    idx = torch.randint(0, 64, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :5] = 0
    manual, manual_masked = model(idx), model(idx, attention_mask=mask)
    model.config.attention = "sdpa"
    torch.testing.assert_close(model(idx), manual, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(idx, attention_mask=mask), manual_masked, atol=1e-5, rtol=1e-5)


def test_attention_bias_worked_example():
    allowed = attention_bias(2, 3, None, "cpu")[0, 0]
    assert allowed.tolist() == [[True, True, False], [True, True, True]]
    padded = attention_bias(3, 3, torch.tensor([[0, 1, 1]]), "cpu")[0, 0]
    # the padding token sees only itself; real tokens never see the padding
    assert padded.tolist() == [[True, False, False], [False, True, False], [False, True, True]]


def test_kv_cache_gives_the_same_logits_as_a_full_forward(tiny_model):
    idx = torch.randint(0, 64, (2, 15))
    full = tiny_model(idx)
    cache = KVCache(tiny_model.config.n_layer)
    first = tiny_model(idx[:, :9], kv_cache=cache)
    steps = [tiny_model(idx[:, t:t + 1], kv_cache=cache) for t in range(9, 15)]
    cached = torch.cat([first] + steps, dim=1)
    assert cache.length == 15
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_left_padding_with_mask_equals_the_unpadded_sequence(tiny_model):
    seq = torch.randint(1, 64, (1, 7))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), seq], dim=1)
    mask = torch.tensor([[0] * 4 + [1] * 7])
    torch.testing.assert_close(tiny_model(padded, attention_mask=mask)[:, 4:], tiny_model(seq), atol=1e-5, rtol=1e-5)
    assert not torch.isnan(tiny_model(padded, attention_mask=mask)).any()


def test_longer_than_context_is_refused(tiny_model):
    with pytest.raises(ValueError, match="longer than the model's context"):
        tiny_model(torch.zeros(1, 33, dtype=torch.long))


def test_config_checks_and_round_trip():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="attention"):
        GPTConfig(attention="flash")
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({"n_embd": 8, "colour": "red"})
    c = tiny_config(dropout=0.1)
    assert GPTConfig.from_dict(c.to_dict()) == c


def test_lm_loss_ignores_minus_100_and_is_log_vocab_for_uniform_logits():
    logits = torch.zeros(1, 3, 64)
    targets = torch.tensor([[5, -100, 7]])
    assert lm_loss(logits, targets).item() == pytest.approx(torch.log(torch.tensor(64.0)).item())
    logits[0, 1, 0] = 100.0  # a confident wrong guess at the ignored position changes nothing
    assert lm_loss(logits, targets).item() == pytest.approx(torch.log(torch.tensor(64.0)).item())


def test_dropout_only_in_training_mode():
    torch.manual_seed(0)
    model = GPT(tiny_config(dropout=0.5))
    idx = torch.randint(0, 64, (1, 8))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert not torch.allclose(model(idx), model(idx))
