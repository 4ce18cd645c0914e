"""GPT-2 import/export: our GPT must give Hugging Face's logits, in both directions.

transformers is only the reference here; gpt_scratch.gpt2 itself never imports it.
"""

import json
import urllib.error
import urllib.request

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt_scratch import gpt2
from gpt_scratch.gpt2 import GPT2_SIZES, download_gpt2, load_hf_gpt2, save_hf_gpt2
from gpt_scratch.model import GPT, GPTConfig

VOCAB = 100


@pytest.fixture(scope="module")
def hf():
    """transformers, imported by the tests that compare with it: its GPT-2 classes take ~4 s of CPU to
    import, which a module-level import would make every pytest worker pay while collecting."""
    return pytest.importorskip("transformers")


def tiny_hf_config(hf, **overrides):
    settings = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB,
                    bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    return hf.GPT2Config(**{**settings, **overrides})


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    """Fresh models have zero biases and unit LayerNorms; noise everywhere makes every tensor count."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def our_logits(model: GPT, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


@pytest.fixture(scope="module")
def hf_folder(hf, tmp_path_factory):
    """A tiny random GPT2LMHeadModel saved the way the hub stores GPT-2."""
    torch.manual_seed(0)
    model = randomize(hf.GPT2LMHeadModel(tiny_hf_config(hf)))
    folder = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attention", ["manual", "sdpa"])
def test_imported_model_gives_hugging_face_logits(hf_folder, ids, attention):
    folder, hf_model = hf_folder
    model = load_hf_gpt2(folder, attention=attention)
    assert model.config.attention == attention
    assert (model.config.n_embd, model.config.n_layer, model.config.n_head) == (32, 2, 4)
    assert (model.config.block_size, model.config.vocab_size, model.config.tie_weights) == (64, VOCAB, True)
    torch.testing.assert_close(our_logits(model, ids), hf_logits(hf_model, ids), atol=1e-5, rtol=1e-5)


def test_conv1d_weights_are_transposed_and_lm_head_tied(hf_folder):
    folder, hf_model = hf_folder
    model = load_hf_gpt2(folder)
    hf_attn = hf_model.transformer.h[1].attn.c_attn.weight  # Conv1D: (in, out) = (32, 96)
    assert hf_attn.shape == (32, 96)
    assert model.transformer.h[1].attn.c_attn.weight.shape == (96, 32)
    assert torch.equal(model.transformer.h[1].attn.c_attn.weight, hf_attn.t())
    assert torch.equal(model.transformer.h[0].mlp.c_fc.weight, hf_model.transformer.h[0].mlp.c_fc.weight.t())
    assert model.lm_head.weight is model.transformer.wte.weight


def test_weights_without_transformer_prefix_load(hf, tmp_path, ids):
    """GPT2Model (no LM head) saves 'h.0.attn...' instead of 'transformer.h.0.attn...'."""
    torch.manual_seed(2)
    hf_body = randomize(hf.GPT2Model(tiny_hf_config(hf)))
    hf_body.save_pretrained(tmp_path, safe_serialization=True)
    assert not any(k.startswith("transformer.") for k in load_file(str(tmp_path / "model.safetensors")))
    model = load_hf_gpt2(tmp_path)
    with torch.no_grad():
        expected = hf_body(ids).last_hidden_state
        torch.testing.assert_close(model.body(ids), expected, atol=1e-5, rtol=1e-5)


def test_untied_lm_head_loads(hf, tmp_path, ids):
    torch.manual_seed(3)
    hf_model = randomize(hf.GPT2LMHeadModel(tiny_hf_config(hf, tie_word_embeddings=False)))
    assert not torch.equal(hf_model.lm_head.weight, hf_model.transformer.wte.weight)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    model = load_hf_gpt2(tmp_path)
    assert model.config.tie_weights is False
    assert model.lm_head.weight is not model.transformer.wte.weight
    torch.testing.assert_close(our_logits(model, ids), hf_logits(hf_model, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tie_weights", [True, False])
def test_saved_model_loads_in_transformers_with_same_logits(hf, tmp_path, ids, tie_weights):
    torch.manual_seed(4)
    config = GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_embd=32, tie_weights=tie_weights)
    model = randomize(GPT(config))
    save_hf_gpt2(model, tmp_path, eos_id=VOCAB - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]  # no temp files
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "gpt2" and saved["architectures"] == ["GPT2LMHeadModel"]
    assert saved["tie_word_embeddings"] is tie_weights and saved["eos_token_id"] == VOCAB - 1

    hf_model, info = hf.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    torch.testing.assert_close(hf_logits(hf_model.eval(), ids), our_logits(model, ids), atol=1e-5, rtol=1e-5)

    # ... and back again: exactly the same tensors.
    reloaded = load_hf_gpt2(tmp_path)
    for (name, ours), (_, theirs) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(ours, theirs), name


def test_a_save_stopped_halfway_keeps_the_old_files(tmp_path, monkeypatch):
    config = GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_embd=32)
    torch.manual_seed(4)
    save_hf_gpt2(randomize(GPT(config)), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash_halfway(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as file:
            file.write(b"half a safetensors file")
        raise KeyboardInterrupt
    monkeypatch.setattr(gpt2, "save_file", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_hf_gpt2(randomize(GPT(config)), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files, no temporary one


def test_missing_folder_or_config_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_hf_gpt2(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_gpt2(tmp_path)


def copy_with_changed_weights(hf_folder, tmp_path, change) -> None:
    folder, _ = hf_folder
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    change(weights)
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})


def test_missing_key_is_named(hf_folder, tmp_path):
    copy_with_changed_weights(hf_folder, tmp_path, lambda w: w.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=r"missing \['transformer.h.1.mlp.c_fc.bias'\]"):
        load_hf_gpt2(tmp_path)


def test_unexpected_key_is_named(hf_folder, tmp_path):
    copy_with_changed_weights(hf_folder, tmp_path, lambda w: w.update({"transformer.h.2.ln_1.weight": torch.ones(32)}))
    with pytest.raises(ValueError, match=r"unexpected \['transformer.h.2.ln_1.weight'\]"):
        load_hf_gpt2(tmp_path)


def test_wrong_shape_is_named(hf_folder, tmp_path):
    copy_with_changed_weights(hf_folder, tmp_path, lambda w: w.update({"transformer.wpe.weight": torch.zeros(32, 32)}))
    with pytest.raises(ValueError, match=r"transformer.wpe.weight \(32, 32\) \(ours \(64, 32\)\)"):
        load_hf_gpt2(tmp_path)


def test_buffers_in_old_checkpoints_are_skipped(hf_folder, tmp_path, ids):
    """Older GPT-2 files also hold the causal mask (attn.bias) and attn.masked_bias: not weights."""
    def add_buffers(weights):
        for layer in range(2):
            weights[f"transformer.h.{layer}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
            weights[f"transformer.h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    copy_with_changed_weights(hf_folder, tmp_path, add_buffers)
    torch.testing.assert_close(our_logits(load_hf_gpt2(tmp_path), ids), hf_logits(hf_folder[1], ids),
                               atol=1e-5, rtol=1e-5)


def test_download_rejects_unknown_size(tmp_path):
    assert GPT2_SIZES == ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
    with pytest.raises(ValueError, match="gpt2-medium"):
        download_gpt2("gpt3", cache_dir=tmp_path)


def test_download_offline_gives_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError, match=r"could not download https://huggingface.co/gpt2/resolve/main/config.json"):
        download_gpt2("gpt2", cache_dir=tmp_path)
    assert list((tmp_path / "gpt2").iterdir()) == []  # no half-written file left behind


def test_a_download_broken_halfway_leaves_no_file(tmp_path, monkeypatch):
    class BrokenResponse:
        headers = {"Content-Length": "100"}
        sent = False

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, size=-1):
            if self.sent:
                raise ConnectionResetError("connection reset")
            self.sent = True
            return b"x" * 10
    monkeypatch.setattr(urllib.request, "urlopen", lambda *args, **kwargs: BrokenResponse())
    with pytest.raises(RuntimeError, match="connection reset"):
        download_gpt2("gpt2", cache_dir=tmp_path)
    assert list((tmp_path / "gpt2").iterdir()) == []  # no half file that a second call would take as complete


def test_a_modern_layout_is_not_saved_as_gpt2(tmp_path):
    config = GPTConfig(vocab_size=VOCAB, block_size=64, n_layer=1, n_head=4, n_embd=32, position="rope")
    with pytest.raises(ValueError, match="save it as a Llama"):
        save_hf_gpt2(GPT(config), tmp_path)
    assert not any(tmp_path.iterdir())
