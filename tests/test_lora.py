import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from tiny import layout_config, tiny_config
from gpt_scratch.checkpoint import load_checkpoint, save_checkpoint
from gpt_scratch import lora
from gpt_scratch.freeze import count_parameters
from gpt_scratch.lora import (TARGETS, LoRALinear, adapters_off, add_lora, load_adapter, lora_layers,
                              lora_parameter_count, merge_lora, remove_lora, save_adapter, unmerge_lora)
from gpt_scratch.model import GPT, lm_loss
from gpt_scratch.train import TrainConfig, make_optimizer

ALL = ("attn", "mlp", "head")
IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(7))


def fresh_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config(**overrides)).eval()


def train_a_few_steps(model: GPT, steps: int = 3) -> None:
    """AdamW (with weight decay) at a high learning rate on a real loss."""
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 64, (2, 9), generator=generator)
        lm_loss(model(ids[:, :-1]), ids[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def randomise_B(model: GPT) -> None:
    """Give every lora_B non-zero values: a stand-in for training that is fast and certain."""
    torch.manual_seed(3)
    for _, layer in lora_layers(model):
        nn.init.normal_(layer.lora_B, std=0.1)


def snapshot(model: GPT) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in model.state_dict().items()}


@pytest.mark.parametrize("targets", [("attn",), ("mlp",), ("head",), ALL])
def test_zero_B_leaves_outputs_unchanged(targets):
    model = fresh_model()
    base = copy.deepcopy(model)
    names = add_lora(model, rank=4, alpha=8, targets=targets)
    assert names and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(model(IDS), base(IDS))


def test_the_output_is_W_x_plus_b_plus_alpha_over_rank_B_A_x_on_known_numbers():
    base = nn.Linear(3, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]]))
        base.bias.copy_(torch.tensor([0.5, -0.5]))
    layer = LoRALinear(base, rank=2, alpha=8)  # scale = alpha / rank = 4
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # W x + b = [7.5, 1.5];  A x = [1, 5];  B A x = [1, 10];  times 8 / 2 = [4, 40]
    expected = torch.tensor([[11.5, 41.5]])
    assert torch.equal(layer(x), expected)
    layer.merge()  # the same numbers from the merged weight W + 4 B A
    assert torch.equal(layer(x), expected)


def test_targets_pick_the_right_layers_and_keep_state_dict_names():
    model = fresh_model()
    base_names = set(model.state_dict())
    names = add_lora(model, rank=2, alpha=2, targets=("attn",))
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                     "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"]
    assert type(model.transformer.h[0].mlp.c_proj) is nn.Linear  # mlp.c_proj is not attn.c_proj
    new_names = set(model.state_dict()) - base_names
    assert base_names <= set(model.state_dict())  # transformer.h.0.attn.c_attn.weight is still there
    assert new_names == {f"{n}.lora_{m}" for n in names for m in "AB"}


def test_only_lora_parameters_move_during_training():
    model = fresh_model().train()
    add_lora(model, rank=2, alpha=4, targets=("attn", "mlp"), dropout=0.1)
    before = snapshot(model)
    train_a_few_steps(model)
    after = model.state_dict()
    lora_names = [n for n in after if ".lora_" in n]
    assert len(lora_names) == 2 * 4 * 2  # A and B, 4 layers per block, 2 blocks
    for name in after:
        if ".lora_" in name:
            assert not torch.equal(after[name], before[name]), f"{name} did not train"
        else:
            assert torch.equal(after[name], before[name]), f"frozen {name} moved"


def test_merged_equals_unmerged_and_unmerge_restores_the_base():
    model = fresh_model()
    base = snapshot(model)
    add_lora(model, rank=4, alpha=8, targets=ALL)
    randomise_B(model)
    unmerged = model(IDS)
    assert not torch.allclose(unmerged, fresh_model()(IDS), atol=1e-3)  # the update really does something
    merge_lora(model)
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.transformer.h[0].attn.c_attn.weight, base["transformer.h.0.attn.c_attn.weight"])
    merge_lora(model)  # merging twice must not add the update twice
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)
    for name, tensor in model.state_dict().items():
        if ".lora_" not in name:
            torch.testing.assert_close(tensor, base[name], atol=1e-6, rtol=0)
    assert torch.equal(model.transformer.wte.weight, base["transformer.wte.weight"])  # the head was untied


def test_remove_lora_gives_a_plain_gpt_that_checkpoints(tmp_path):
    model = fresh_model()
    plain_names = set(model.state_dict())
    add_lora(model, rank=2, alpha=4, targets=ALL)
    randomise_B(model)
    with torch.no_grad():
        expected = model(IDS)
    replaced = remove_lora(model)
    assert len(replaced) == 2 * 4 + 1
    assert not lora_layers(model)
    assert all(type(model.get_submodule(n)) is nn.Linear for n in replaced)
    assert set(model.state_dict()) == plain_names
    assert all(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(model(IDS), expected, atol=1e-5, rtol=1e-5)
    # LoRA on the tied head untied it, so the merged head is saved as its own tensor.
    assert model.config.tie_weights is False
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(loaded.eval()(IDS), model(IDS))


def test_adapter_round_trip_is_exact_and_small(tmp_path):
    model = fresh_model()
    base = copy.deepcopy(model)
    save_checkpoint(tmp_path / "base", base)
    add_lora(model, rank=1, alpha=2, targets=("attn", "mlp"))
    randomise_B(model)
    save_adapter(model, tmp_path / "adapter", base=str(tmp_path / "base"))

    settings = json.loads((tmp_path / "adapter" / "adapter.json").read_text())
    assert settings == {"rank": 1, "alpha": 2, "dropout": 0.0, "targets": ["attn", "mlp"],
                        "train_head": False, "base": "../base"}  # relative to the adapter: no machine path
    adapter_bytes = (tmp_path / "adapter" / "adapter.safetensors").stat().st_size
    model_bytes = (tmp_path / "base" / "model.safetensors").stat().st_size
    assert adapter_bytes < model_bytes / 4
    assert not list((tmp_path / "adapter").glob("*.tmp"))

    restored, _, _ = load_checkpoint(tmp_path / "adapter" / settings["base"])
    assert load_adapter(restored.eval(), tmp_path / "adapter")["base"] == str(tmp_path / "base")
    assert torch.equal(restored(IDS), model(IDS))
    assert count_parameters(restored) == count_parameters(model)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_train_head_keeps_the_head_trainable_and_in_the_adapter(tmp_path, tied):
    model = fresh_model(tie_weights=tied)
    add_lora(model, rank=2, alpha=2, targets=("attn",), train_head=True)
    c = model.config
    assert model.lm_head.weight.requires_grad
    assert count_parameters(model)[0] == lora_parameter_count(c, 2, ("attn",)) + c.vocab_size * c.n_embd
    head_before = model.lm_head.weight.detach().clone()
    train_a_few_steps(model)
    assert not torch.equal(model.lm_head.weight, head_before)
    save_adapter(model, tmp_path)
    restored = fresh_model(tie_weights=tied)
    load_adapter(restored, tmp_path)
    assert restored.lm_head.weight.requires_grad
    assert torch.equal(restored(IDS), model(IDS))


def test_lora_on_the_tied_head_leaves_the_token_embedding_alone():
    model = fresh_model()
    wte = model.transformer.wte.weight.detach().clone()
    add_lora(model, rank=2, alpha=4, targets=("head",))
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert count_parameters(model)[0] == lora_parameter_count(model.config, 2, ("head",))
    head_logits = model(IDS)
    train_a_few_steps(model)
    assert torch.equal(model.transformer.wte.weight, wte)
    assert not torch.equal(model.lm_head.lora_B, torch.zeros_like(model.lm_head.lora_B))
    merge_lora(model)
    assert torch.equal(model.transformer.wte.weight, wte)
    assert not torch.allclose(model(IDS), head_logits)


@pytest.mark.parametrize("targets", [("attn",), ("mlp",), ("head",), ("attn", "mlp"), ALL])
@pytest.mark.parametrize("rank", [1, 2, 4, 8])
def test_trainable_count_matches_the_formula(rank, targets):
    model = GPT(tiny_config())
    total_before = count_parameters(model)[1]
    add_lora(model, rank=rank, alpha=16, targets=targets)
    trainable, total = count_parameters(model)
    assert trainable == lora_parameter_count(model.config, rank, targets) > 0
    copied_head = 64 * 16 if "head" in targets else 0  # the untied head's own frozen matrix
    assert total == total_before + trainable + copied_head


@pytest.mark.parametrize("targets", [("attn",), ("mlp",), ALL])
def test_the_modern_layout_wraps_the_gate_too_and_merged_equals_unmerged(targets):
    """SwiGLU's three matrices (c_gate, c_fc, c_proj) are all "mlp"; c_attn holds fewer k, v rows with GQA."""
    torch.manual_seed(0)
    model = GPT(layout_config("llama", vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=16)).eval()
    names = add_lora(model, rank=2, alpha=4, targets=targets)
    layers = {"attn": ["attn.c_attn", "attn.c_proj"], "mlp": ["mlp.c_gate", "mlp.c_fc", "mlp.c_proj"]}
    expected = [f"transformer.h.{i}.{name}" for i in range(2) for t in targets if t in layers for name in layers[t]]
    assert sorted(names) == sorted(expected + (["lm_head"] if "head" in targets else []))
    assert count_parameters(model)[0] == lora_parameter_count(model.config, 2, targets)
    randomise_B(model)
    unmerged = model(IDS)
    merge_lora(model)
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)


def test_formula_on_known_numbers():
    c = tiny_config()  # n_embd 16, vocab 64, 2 layers
    assert lora_parameter_count(c, 1, ("attn",)) == 2 * ((16 + 48) + (16 + 16))
    assert lora_parameter_count(c, 2, ("mlp",)) == 2 * 2 * ((16 + 64) + (64 + 16))
    assert lora_parameter_count(c, 4, ("head",)) == 4 * (16 + 64)
    modern = layout_config("llama", vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=16)
    assert (modern.mlp_width, modern.kv_heads, modern.head_dim) == (48, 1, 8)  # SwiGLU's c_gate, c_fc: 16 -> 48
    assert lora_parameter_count(modern, 1, ("attn",)) == 2 * ((16 + 32) + (16 + 16))
    assert lora_parameter_count(modern, 1, ("mlp",)) == 2 * (2 * (16 + 48) + (48 + 16))


def test_dropout_touches_only_the_lora_path():
    model = fresh_model()
    base = copy.deepcopy(model)
    add_lora(model, rank=2, alpha=2, targets=("attn", "mlp"), dropout=0.5)
    model.train()
    assert torch.equal(model(IDS), base(IDS))  # B = 0: dropout on the LoRA path changes nothing
    randomise_B(model)
    assert not torch.equal(model(IDS), model(IDS))  # training mode: random masks
    model.eval()
    assert torch.equal(model(IDS), model(IDS))


def test_bad_settings_raise_one_clear_error():
    model = fresh_model()
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        add_lora(model, rank=0, alpha=1)
    with pytest.raises(ValueError, match="rank must be a positive integer, got 1.5"):
        add_lora(model, rank=1.5, alpha=1)
    with pytest.raises(ValueError, match="alpha must be positive, got -1"):
        add_lora(model, rank=2, alpha=-1)
    with pytest.raises(ValueError, match="non-empty subset of attn, mlp, head; got \\[\\]"):
        add_lora(model, rank=2, alpha=1, targets=())
    with pytest.raises(ValueError, match="got \\['attn', 'ffn'\\]"):
        add_lora(model, rank=2, alpha=1, targets=("attn", "ffn"))
    with pytest.raises(ValueError, match="train_head=True"):
        add_lora(model, rank=2, alpha=1, targets=("head",), train_head=True)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # untouched
    add_lora(model, rank=2, alpha=1)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        add_lora(model, rank=2, alpha=1)
    assert set(TARGETS) == {"attn", "mlp", "head"}


def test_adapter_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter.json is missing"):
        load_adapter(fresh_model(), tmp_path / "nowhere")

    model = fresh_model()
    add_lora(model, rank=2, alpha=2)
    save_adapter(model, tmp_path / "good")

    corrupt = tmp_path / "corrupt"
    save_adapter(model, corrupt)
    (corrupt / "adapter.safetensors").write_bytes(b"\x07not a safetensors file")
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        load_adapter(fresh_model(), corrupt)

    wider = fresh_model(n_embd=32)
    with pytest.raises(ValueError, match="does not fit this model.*shapes \\['transformer.h.0.attn.c_attn.lora_A"):
        load_adapter(wider, tmp_path / "good")
    assert not lora_layers(wider)  # checked before the model was touched

    deeper = fresh_model(n_layer=3)
    with pytest.raises(ValueError, match="missing \\['transformer.h.2"):
        load_adapter(deeper, tmp_path / "good")

    (tmp_path / "good" / "adapter.json").write_text('{"rank": 2}')
    with pytest.raises(ValueError, match="not a valid adapter config"):
        load_adapter(fresh_model(), tmp_path / "good")


def test_adapter_base_is_stored_relative_and_survives_moving_both_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint("runs/a/sft/checkpoint", fresh_model())
    model = fresh_model()
    add_lora(model, rank=1, alpha=2)
    save_adapter(model, "runs/a/lora/adapter", base="runs/a/sft")  # relative to the working folder, as sft gets it
    text = (tmp_path / "runs/a/lora/adapter/adapter.json").read_text()
    assert json.loads(text)["base"] == "../../sft" and str(tmp_path) not in text
    assert load_adapter(fresh_model(), "runs/a/lora/adapter")["base"] == str(Path("runs/a/sft"))

    save_adapter(model, "runs/a/lora/adapter", base=tmp_path / "runs/a/sft")  # an absolute path: the same file
    assert (tmp_path / "runs/a/lora/adapter/adapter.json").read_text() == text
    shutil.copytree("runs/a", "moved/b")  # copied elsewhere together: the adapter still finds its base
    base = load_adapter(fresh_model(), tmp_path / "moved/b/lora/adapter")["base"]
    assert base == str(tmp_path / "moved/b/sft") and load_checkpoint(base)


def test_adapter_written_before_relative_bases_still_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint("runs/sft/checkpoint", fresh_model())
    model = fresh_model()
    add_lora(model, rank=1, alpha=2)
    for old_base in (str(tmp_path / "runs/sft"), "runs/sft"):  # absolute, or relative to the working folder
        save_adapter(model, "runs/lora/adapter")
        path = tmp_path / "runs/lora/adapter/adapter.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "base": old_base}))
        assert load_adapter(fresh_model(), "runs/lora/adapter")["base"] == old_base


def test_a_failed_adapter_save_keeps_the_old_adapter(tmp_path, monkeypatch):
    model = fresh_model()
    add_lora(model, rank=1, alpha=2)
    randomise_B(model)
    save_adapter(model, tmp_path / "adapter")
    before = {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()}

    def crash_halfway(tensors, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a safetensors file")
        raise KeyboardInterrupt  # the run is stopped mid-save
    monkeypatch.setattr(lora, "save_file", crash_halfway)
    with torch.no_grad():
        lora_layers(model)[0][1].lora_B.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(model, tmp_path / "adapter")
    assert {p.name: p.read_bytes() for p in (tmp_path / "adapter").iterdir()} == before  # old files, no temp file


def test_adapters_off_gives_the_frozen_base_exactly_and_switches_back_on():
    model = fresh_model()
    base_logits = model(IDS).detach()
    add_lora(model, rank=4, alpha=8, targets=ALL)
    randomise_B(model)  # a trained adapter: the model no longer equals its base
    tuned = model(IDS).detach()
    assert not torch.allclose(tuned, base_logits, atol=1e-3)
    with adapters_off(model):
        assert torch.equal(model(IDS), base_logits)  # the reference model, with no second copy
    assert torch.equal(model(IDS), tuned)
    with pytest.raises(RuntimeError, match="boom"), adapters_off(model):
        raise RuntimeError("boom")
    assert torch.equal(model(IDS), tuned)  # back on after an error inside the block too


def test_adapters_off_refuses_merged_adapters():
    model = fresh_model()
    add_lora(model, rank=2, alpha=4)
    merge_lora(model)
    with pytest.raises(ValueError, match="call unmerge_lora"):
        with adapters_off(model):
            pass
