"""Llama import/export: our GPT in the modern layout must give transformers' LlamaForCausalLM logits, both ways.

The tiny random models have odd shapes on purpose: fewer key/value heads than query heads, a head_dim
that is not a power of 2 (12), a vocabulary that is not a multiple of 64, rope_theta other than 10,000,
an untied and a tied head, and one with biases. transformers is only the reference; gpt_scratch.llama
itself never imports it.
"""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_scratch.cli import main
from gpt_scratch.generate import generate
from gpt_scratch.llama import TOKENIZER_FOLDER, load_hf_llama, save_hf_llama
from gpt_scratch.checkpoint import load_checkpoint
from gpt_scratch.model import GPT, GPTConfig, llama_config

TOLERANCE = 1e-4  # max abs difference of the logits, float32

SHAPES = {  # name -> LlamaConfig settings
    "gqa-untied": dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, intermediate_size=100,
                       vocab_size=101, rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
    "mqa-tied": dict(hidden_size=36, num_attention_heads=3, num_key_value_heads=1, intermediate_size=70,
                     vocab_size=75, rope_theta=500000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "biases": dict(hidden_size=24, num_attention_heads=2, num_key_value_heads=1, intermediate_size=40,
                   vocab_size=67, rope_theta=1234.5, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
                   rms_norm_eps=0.1),  # an eps large enough to change the logits if it were ignored
}


@pytest.fixture(scope="module")
def hf():
    """transformers, imported by these tests only (its Llama takes seconds of CPU to import)."""
    return pytest.importorskip("transformers")


def hf_llama(hf, shape: str, seed: int = 0):
    settings = dict(num_hidden_layers=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                    **SHAPES[shape])
    rope_theta = settings.pop("rope_theta")
    config = hf.LlamaConfig(**settings, rope_parameters={"rope_type": "default", "rope_theta": rope_theta})
    torch.manual_seed(seed)
    return randomize(hf.LlamaForCausalLM(config))


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Norms start at 1 and biases at 0: noise on every tensor makes each one count."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def hf_folders(hf, tmp_path_factory):
    """shape -> (folder, transformers model), each model saved as save_pretrained writes it."""
    folders = {}
    for shape in SHAPES:
        model = hf_llama(hf, shape)
        folder = tmp_path_factory.mktemp(f"hf_llama_{shape}")
        model.save_pretrained(folder, safe_serialization=True)
        folders[shape] = folder, model
    return folders


def ids_for(vocab: int, rows: int = 2, length: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(1))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
@pytest.mark.parametrize("shape", SHAPES)
def test_imported_model_gives_transformers_logits(hf_folders, shape, attention):
    folder, hf_model = hf_folders[shape]
    model = load_hf_llama(folder, attention=attention)
    c, s = model.config, SHAPES[shape]
    assert (c.n_embd, c.n_head, c.kv_heads, c.mlp_width, c.vocab_size) == (
        s["hidden_size"], s["num_attention_heads"], s["num_key_value_heads"], s["intermediate_size"], s["vocab_size"])
    assert (c.rope_theta, c.tie_weights, c.bias, c.block_size) == (
        s["rope_theta"], s["tie_word_embeddings"], s.get("attention_bias", False), 64)
    assert c.layer_norm_eps == s.get("rms_norm_eps", 1e-6)
    assert c.head_dim == s["hidden_size"] // s["num_attention_heads"]
    assert (model.lm_head.weight is model.transformer.wte.weight) == c.tie_weights
    ids = ids_for(c.vocab_size)
    assert max_difference(logits(model, ids), logits(hf_model, ids)) <= TOLERANCE


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_continuation_with_the_kv_cache_is_transformers_one(hf_folders, shape):
    folder, hf_model = hf_folders[shape]
    model = load_hf_llama(folder)
    prompt = ids_for(model.config.vocab_size, rows=1, length=7)
    ours = generate(model, prompt.tolist(), max_new_tokens=20, use_cache=True)[0]
    with torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
    assert ours == theirs[0, 7:].tolist()
    assert ours == generate(model, prompt.tolist(), max_new_tokens=20, use_cache=False)[0]


def test_left_padded_batch_continues_as_transformers_does(hf_folders):
    """Prompts of two lengths, padded on the left: positions count real tokens in both implementations."""
    folder, hf_model = hf_folders["gqa-untied"]
    model = load_hf_llama(folder)
    prompts = [ids_for(101, 1, 9)[0].tolist(), ids_for(101, 1, 5)[0, :5].tolist()]
    ours = generate(model, prompts, max_new_tokens=10, eos_id=None)
    ids = torch.tensor([prompts[0], [0] * 4 + prompts[1]])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    with torch.no_grad():
        theirs = hf_model.generate(ids, attention_mask=mask, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                                   pad_token_id=0)
    assert ours == theirs[:, 9:].tolist()


@pytest.mark.parametrize("tie_weights", [False, True])
def test_exported_model_loads_in_transformers_with_the_same_logits(hf, tmp_path, tie_weights):
    torch.manual_seed(4)
    model = randomize(GPT(llama_config(vocab_size=99, block_size=64, n_layer=2, n_head=6, n_embd=60, n_kv_head=2,
                                       rope_theta=321.0, tie_weights=tie_weights)))
    save_hf_llama(model, tmp_path, bos_id=0, eos_id=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and saved["tie_word_embeddings"] is tie_weights
    hf_model, info = hf.LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf_model.config.num_key_value_heads == 2 and hf_model.config.head_dim == 10
    ids = ids_for(99)
    assert max_difference(logits(hf_model.eval(), ids), logits(model, ids)) <= TOLERANCE
    reloaded = load_hf_llama(tmp_path)  # ... and back again: exactly the same tensors
    assert reloaded.config == replace(model.config, mlp_hidden=160)  # swiglu_width(60), now written out
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(ours, theirs), name


@pytest.mark.parametrize("shape", ["gqa-untied", "mqa-tied"])
def test_import_then_export_on_the_command_line_gives_back_the_same_model(hf, hf_folders, tmp_path, shape, capsys):
    folder, hf_model = hf_folders[shape]
    hf_copy = tmp_path / "hf"
    hf_copy.mkdir()
    for path in folder.iterdir():
        (hf_copy / path.name).write_bytes(path.read_bytes())
    (hf_copy / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')  # stands in for a real tokenizer
    assert main(["import-llama", "--hf", str(hf_copy), "--out", str(tmp_path / "base")]) == 0
    printed = capsys.readouterr().out
    assert "no course tokenizer" in printed and "export-llama" in printed
    model, tokenizer, meta = load_checkpoint(tmp_path / "base")
    assert tokenizer is None and meta["stage"] == "import-llama"
    assert (meta["bos_token_id"], meta["eos_token_id"]) == (0, 1)
    assert (tmp_path / "base" / TOKENIZER_FOLDER / "tokenizer.json").is_file()

    assert main(["export-llama", "--checkpoint", str(tmp_path / "base"), "--out", str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "tokenizer.json").read_text() == '{"model": {"type": "BPE"}}'
    again = hf.LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert again.config.eos_token_id == 1
    ids = ids_for(model.config.vocab_size)
    assert max_difference(logits(again, ids), logits(hf_model, ids)) <= TOLERANCE


def test_a_block_size_caps_the_context(hf_folders):
    model = load_hf_llama(hf_folders["mqa-tied"][0], block_size=16)
    assert model.config.block_size == 16
    with pytest.raises(ValueError, match="longer than the model's context"):
        model(torch.zeros(1, 17, dtype=torch.long))


def copy_with(hf_folders, tmp_path, config_change=None, weights_change=None):
    folder, _ = hf_folders["gqa-untied"]
    config = json.loads((folder / "config.json").read_text())
    (config_change or (lambda c: None))(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = load_file(str(folder / "model.safetensors"))
    (weights_change or (lambda w: None))(weights)
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    return tmp_path


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}), "RoPE scaling"),
    (lambda c: c.update(head_dim=16), "head_dim 16"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act"),
    (lambda c: c.update(attention_bias=True), "mlp_bias"),
    (lambda c: c.update(model_type="gpt2"), "import-gpt2"),
    (lambda c: c.pop("num_hidden_layers"), "num_hidden_layers"),
])
def test_settings_the_course_lacks_are_refused_with_one_line(hf_folders, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        load_hf_llama(copy_with(hf_folders, tmp_path, config_change=change))


def test_missing_and_extra_tensors_are_named(hf_folders, tmp_path):
    folder = copy_with(hf_folders, tmp_path, weights_change=lambda w: w.pop("model.layers.1.mlp.gate_proj.weight"))
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.mlp.gate_proj.weight'\]"):
        load_hf_llama(folder)
    extra = lambda w: w.update({"model.layers.2.input_layernorm.weight": torch.ones(48)})  # noqa: E731
    with pytest.raises(ValueError, match=r"unexpected \['model.layers.2.input_layernorm.weight'\]"):
        load_hf_llama(copy_with(hf_folders, tmp_path, weights_change=extra))


def test_sharded_weights_load(hf_folders, tmp_path, hf):
    """Big models come in shards named by model.safetensors.index.json."""
    folder, hf_model = hf_folders["gqa-untied"]
    weights = load_file(str(folder / "model.safetensors"))
    names = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: weights[n] for n in part}, str(tmp_path / file), metadata={"format": "pt"})
    index = {"weight_map": {n: file for file, part in halves.items() for n in part}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    ids = ids_for(101)
    assert max_difference(logits(load_hf_llama(tmp_path), ids), logits(hf_model, ids)) <= TOLERANCE


def test_a_gpt2_layout_is_not_exported_as_llama(tmp_path, capsys):
    with pytest.raises(ValueError, match="a Llama has RMSNorm, RoPE and SwiGLU"):
        save_hf_llama(GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)), tmp_path)
    assert not any(tmp_path.iterdir())


def test_missing_folder_is_one_line_exit_2(tmp_path, capsys):
    assert main(["import-llama", "--hf", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere is not a folder" in capsys.readouterr().err
    assert main(["export-llama", "--checkpoint", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
