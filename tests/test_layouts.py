"""The modern layout's switches (chapter 12): RMSNorm, RoPE, SwiGLU, grouped-query attention, no biases,
an untied head. Each alone and all together: shapes, parameter counts, cached = uncached, SDPA = written
out, RoPE's relative positions, GQA's head grouping, and GPT-2's layout and old checkpoints unchanged."""

import json
import math

import pytest
import torch

from gpt_scratch.checkpoint import load_checkpoint, save_checkpoint
from gpt_scratch.freeze import expected_trainable
from gpt_scratch.model import (GPT, GPTConfig, KVCache, RMSNorm, apply_rope, llama_config, repeat_kv, rope_angles,
                               swiglu_width)

BASE = dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32)  # head_dim 8

SWITCHES = {
    "gpt2": {},
    "rmsnorm": dict(norm="rmsnorm"),
    "rope": dict(position="rope"),
    "rope-theta-500": dict(position="rope", rope_theta=500.0),
    "swiglu": dict(mlp="swiglu"),
    "mqa": dict(n_kv_head=1),
    "gqa-2": dict(n_kv_head=2),
    "no-bias": dict(bias=False),
    "untied": dict(tie_weights=False),
    "llama": dict(norm="rmsnorm", position="rope", mlp="swiglu", n_kv_head=2, bias=False, tie_weights=False),
}


def config_for(switch: str, **more) -> GPTConfig:
    return GPTConfig(**BASE, **SWITCHES[switch], **more)


def model_for(switch: str, seed: int = 0, **more) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config_for(switch, **more)).eval()
    with torch.no_grad():  # norms start at 1 and biases at 0: noise makes every tensor count
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def parameters_written_out(c: GPTConfig) -> int:
    """Every tensor of the model, counted by hand from the config."""
    E, V, T, L = c.n_embd, c.vocab_size, c.block_size, c.n_layer
    kv = (c.n_kv_head or c.n_head) * (E // c.n_head)  # the width of k and of v
    hidden = c.mlp_hidden or (swiglu_width(E) if c.mlp == "swiglu" else 4 * E)
    norm = E * (2 if c.norm == "layernorm" and c.bias else 1)  # gain (+ LayerNorm's bias)
    attention = E * (E + 2 * kv) + E * E + (E + 2 * kv + E) * c.bias  # c_attn, c_proj
    if c.mlp == "swiglu":
        mlp = 3 * E * hidden + (2 * hidden + E) * c.bias  # c_gate, c_fc, c_proj
    else:
        mlp = 2 * E * hidden + (hidden + E) * c.bias  # c_fc, c_proj
    positions = T * E if c.position == "learned" else 0
    head = 0 if c.tie_weights else V * E
    return V * E + positions + L * (2 * norm + attention + mlp) + norm + head


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_gives_the_right_shapes_and_parameter_count(switch):
    model = model_for(switch)
    ids = torch.randint(0, 64, (3, 10))
    assert model(ids).shape == (3, 10, 64) and model.body(ids).shape == (3, 10, 32)
    expected = parameters_written_out(model.config)
    assert model.num_parameters() == expected == expected_trainable(model.config, "full")


def test_parameter_counts_on_known_numbers():
    # gpt2: wte 64*32, wpe 32*32; per block: two LayerNorms 2*64, c_attn 32*96+96, c_proj 32*32+32, c_fc 32*128+128,
    # mlp c_proj 128*32+32; final LayerNorm 64; the head is wte.
    per_block = 128 + 3168 + 1056 + 4224 + 4128
    assert GPT(config_for("gpt2")).num_parameters() == 2048 + 1024 + 2 * per_block + 64 == 28_544
    # llama: wte 64*32; per block: two RMSNorms 2*32, c_attn 32*(32+2*16), c_proj 32*32, SwiGLU 3*32*88;
    # final norm 32; untied head 64*32. swiglu_width(32) = 88 (2/3 of 128 is 85.3, up to a multiple of 8).
    assert swiglu_width(32) == 88
    per_block = 64 + 32 * 64 + 32 * 32 + 3 * 32 * 88
    assert GPT(config_for("llama")).num_parameters() == 2048 + 2 * per_block + 32 + 2048 == 27_296


@pytest.mark.parametrize("n_embd", [128, 768, 4096])
def test_swiglu_keeps_the_mlp_parameter_count(n_embd):
    gelu, swiglu = 2 * n_embd * 4 * n_embd, 3 * n_embd * swiglu_width(n_embd)
    assert swiglu_width(n_embd) % 8 == 0 and gelu <= swiglu < 1.01 * gelu
    assert swiglu_width(768) == 2048  # exactly 2/3 of 4 * 768


def test_gpt2_layout_keeps_gpt2_parameter_names():
    names = list(GPT(GPTConfig(**{**BASE, "n_layer": 1})).state_dict())
    assert names == ["transformer.wte.weight", "transformer.wpe.weight",
                     "transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
                     "transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.c_attn.bias",
                     "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_proj.bias",
                     "transformer.h.0.ln_2.weight", "transformer.h.0.ln_2.bias",
                     "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias",
                     "transformer.h.0.mlp.c_proj.weight", "transformer.h.0.mlp.c_proj.bias",
                     "transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"]
    modern = list(GPT(llama_config(**{**BASE, "n_layer": 1})).state_dict())
    assert modern == ["transformer.wte.weight", "transformer.h.0.ln_1.weight", "transformer.h.0.attn.c_attn.weight",
                      "transformer.h.0.attn.c_proj.weight", "transformer.h.0.ln_2.weight",
                      "transformer.h.0.mlp.c_gate.weight", "transformer.h.0.mlp.c_fc.weight",
                      "transformer.h.0.mlp.c_proj.weight", "transformer.ln_f.weight", "lm_head.weight"]


def test_llama_config_turns_every_switch_on_and_settings_win():
    c = llama_config(**BASE)
    assert (c.norm, c.position, c.mlp, c.n_kv_head, c.bias, c.tie_weights) == ("rmsnorm", "rope", "swiglu", 2, False,
                                                                               False)
    assert llama_config(n_head=3, n_embd=24).n_kv_head == 1  # odd n_head: multi-query
    assert llama_config(**BASE, n_kv_head=4, tie_weights=True).n_kv_head == 4
    assert GPTConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("bad, match", [
    (dict(n_kv_head=3), "must divide --n-head"), (dict(n_kv_head=0), "must divide --n-head"),
    (dict(n_kv_head=8), "must divide --n-head"), (dict(norm="batchnorm"), "norm must be"),
    (dict(position="alibi"), "position must be"), (dict(mlp="relu"), "mlp must be"),
    (dict(position="rope", n_embd=36, n_head=4), "even"), (dict(position="rope", rope_theta=0.0), "positive"),
    (dict(mlp_hidden=0), "mlp_hidden"),
])
def test_bad_switches_are_one_clear_error(bad, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**{**BASE, **bad})


def test_rmsnorm_is_x_over_its_root_mean_square_times_the_gain():
    norm = RMSNorm(4, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 1.0, 0.5]))
    x = torch.tensor([[3.0, -1.0, 1.0, -1.0]])  # mean square (9 + 1 + 1 + 1) / 4 = 3
    expected = x / math.sqrt(3 + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    assert norm(x.to(torch.bfloat16)).dtype == torch.float32  # a float32 gain times bf16: float32, as in Llama


@pytest.mark.parametrize("switch", ["rope", "rope-theta-500", "mqa", "gqa-2", "swiglu", "rmsnorm", "llama"])
@pytest.mark.parametrize("attention", ["manual", "sdpa"])
@pytest.mark.parametrize("max_length", [None, 32])
def test_kv_cache_gives_the_same_logits_as_a_full_forward(switch, attention, max_length):
    model = model_for(switch, attention=attention)
    ids = torch.randint(0, 64, (2, 15), generator=torch.Generator().manual_seed(1))
    cache = KVCache(model.config.n_layer, max_length=max_length)
    with torch.no_grad():
        full = model(ids)
        pieces = [model(ids[:, :9], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(9, 15)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    kv_heads = model.config.n_kv_head or model.config.n_head
    assert cache.keys[0].shape[:2] == (2, kv_heads) and cache.values[1].shape[:2] == (2, kv_heads)


@pytest.mark.parametrize("switch", ["rope", "mqa", "gqa-2", "llama"])
def test_sdpa_equals_written_out_attention_with_and_without_padding(switch):
    model = model_for(switch)
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :5] = 0
    with torch.no_grad():
        manual, manual_masked = model(ids), model(ids, attention_mask=mask)
        model.config.attention = "sdpa"
        torch.testing.assert_close(model(ids), manual, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(ids, attention_mask=mask), manual_masked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("switch", ["rope", "llama"])
def test_left_padding_with_mask_equals_the_unpadded_sequence(switch):
    """Positions count real tokens only, so the rotation of a padded row's tokens is the unpadded one's."""
    model = model_for(switch)
    seq = torch.randint(1, 64, (1, 7), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), seq], dim=1)
    mask = torch.tensor([[0] * 4 + [1] * 7])
    with torch.no_grad():
        torch.testing.assert_close(model(padded, attention_mask=mask)[:, 4:], model(seq), atol=1e-5, rtol=1e-5)


def test_rope_dot_products_depend_only_on_the_distance():
    """q at position m and k at position n, both turned: q.k depends on m - n only."""
    generator = torch.Generator().manual_seed(4)
    q, k = torch.randn(1, 2, 6, 8, generator=generator), torch.randn(1, 2, 6, 8, generator=generator)
    positions = torch.arange(6)[None]

    def scores(shift: int) -> torch.Tensor:
        cos, sin = rope_angles(positions + shift, head_dim=8, theta=100.0)
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-2, -1)

    torch.testing.assert_close(scores(0), scores(17), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores(0), scores(1000), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-2, -1), atol=1e-3)  # it does turn them
    # A turn keeps lengths, and at position 0 it is no turn at all.
    cos, sin = rope_angles(positions + 5, head_dim=8, theta=100.0)
    torch.testing.assert_close(apply_rope(q, cos, sin).norm(dim=-1), q.norm(dim=-1))
    cos0, sin0 = rope_angles(torch.zeros(1, 6), head_dim=8, theta=100.0)
    torch.testing.assert_close(apply_rope(q, cos0, sin0), q)


def test_rope_turns_pair_i_and_i_plus_half_by_position_times_its_speed():
    """Pair i is (x[i], x[i + D/2]), turned by position * theta^(-2i/D): rotate_half, as transformers' Llama."""
    x = torch.randn(1, 1, 1, 8, generator=torch.Generator().manual_seed(5))
    position, theta = 3, 10.0
    cos, sin = rope_angles(torch.tensor([[position]]), head_dim=8, theta=theta)
    turned = apply_rope(x, cos, sin)[0, 0, 0]
    for i in range(4):
        angle = position * theta ** (-2 * i / 8)
        a, b = x[0, 0, 0, i], x[0, 0, 0, i + 4]
        expected = torch.stack([a * math.cos(angle) - b * math.sin(angle), b * math.cos(angle) + a * math.sin(angle)])
        torch.testing.assert_close(torch.stack([turned[i], turned[i + 4]]), expected)


def test_shifting_every_position_leaves_a_rope_attention_layer_unchanged():
    model = model_for("llama")
    attention = model.transformer.h[0].attn
    x = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(6))
    positions = torch.arange(9)[None]
    with torch.no_grad():
        at_0 = attention(x, rope=rope_angles(positions, 8, model.config.rope_theta))
        at_50 = attention(x, rope=rope_angles(positions + 50, 8, model.config.rope_theta))
        unturned = attention(x)
    torch.testing.assert_close(at_0, at_50, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(at_0, unturned, atol=1e-4)


def test_repeat_kv_gives_query_head_h_the_key_head_h_over_n_rep():
    kv = torch.arange(2)[None, :, None, None].float().expand(1, 2, 3, 4)  # head j holds the number j
    repeated = repeat_kv(kv, 3)
    assert repeated.shape == (1, 6, 3, 4)
    assert repeated[0, :, 0, 0].tolist() == [0, 0, 0, 1, 1, 1]
    assert repeat_kv(kv, 1) is kv


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_grouped_query_attention_equals_full_attention_with_shared_key_heads(n_kv_head):
    """A GQA model = the multi-head model whose key/value heads are copies: query head h reads key/value
    head h // (n_head / n_kv_head). With n_kv_head = n_head it is plain multi-head attention."""
    grouped = model_for("rope", n_kv_head=n_kv_head)
    full = model_for("rope")
    state = grouped.state_dict()
    n_rep, D, E = 4 // n_kv_head, 8, 32
    for layer in range(2):
        name = f"transformer.h.{layer}.attn.c_attn"
        for part in ("weight", "bias"):
            q, k, v = state[f"{name}.{part}"].split([E, n_kv_head * D, n_kv_head * D])
            k = k.unflatten(0, (n_kv_head, D)).repeat_interleave(n_rep, dim=0).flatten(0, 1)
            v = v.unflatten(0, (n_kv_head, D)).repeat_interleave(n_rep, dim=0).flatten(0, 1)
            state[f"{name}.{part}"] = torch.cat([q, k, v])
    full.load_state_dict(state)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(grouped(ids), full(ids), atol=1e-5, rtol=1e-5)
    assert grouped.transformer.h[0].attn.c_attn.weight.shape == (E + 2 * n_kv_head * D, E)


def test_cache_bytes_per_token_shrink_by_n_head_over_n_kv_head():
    sizes = {}
    for switch in ("gpt2", "gqa-2", "mqa"):
        model, cache = model_for(switch), KVCache(2, max_length=32)
        with torch.no_grad():
            model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
        sizes[switch] = sum(t.numel() for t in cache.keys + cache.values)
    assert sizes == {"gpt2": 2 * 2 * 4 * 32 * 8, "gqa-2": 2 * 2 * 2 * 32 * 8, "mqa": 2 * 2 * 1 * 32 * 8}


def test_a_checkpoint_saved_before_the_switches_loads_as_gpt2(tmp_path):
    """config.json written before the modern switches existed lacks them: they default to GPT-2's layout."""
    model = model_for("gpt2")
    folder = save_checkpoint(tmp_path / "checkpoint", model, meta={"stage": "pretrain"})
    config = json.loads((folder / "config.json").read_text())
    old_fields = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "tie_weights",
                  "attention", "layer_norm_eps")
    config["model"] = {key: config["model"][key] for key in old_fields}
    (folder / "config.json").write_text(json.dumps(config))
    loaded, _, meta = load_checkpoint(tmp_path)
    assert loaded.config == model.config and meta == {"stage": "pretrain"}
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_a_modern_checkpoint_round_trips(tmp_path):
    model = model_for("llama")
    save_checkpoint(tmp_path / "checkpoint", model)
    loaded, _, _ = load_checkpoint(tmp_path)
    assert loaded.config == model.config and "wpe" not in loaded.transformer
    ids = torch.randint(0, 64, (1, 10))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
