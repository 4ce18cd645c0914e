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
from gpt_scratch.cli import command_parser, main
from gpt_scratch.lora import (ALL_TARGETS, TARGETS, LoRAEmbedding, LoRALinear, adapters_off, add_lora, load_adapter,
                              lora_layers, lora_parameter_count, merge_lora, remove_lora, save_adapter, unmerge_lora)
from gpt_scratch.model import GPT, lm_loss
from gpt_scratch.rl import adamw
from gpt_scratch.train import TrainConfig, learning_rate, make_optimizer, next_token_loss, train_step

ALL = ("attn", "mlp", "head")
EVERY = ("attn", "mlp", "head", "emb")  # the Linear layers and the token embedding
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
    """Give every update B A non-zero values: a stand-in for training that is fast and certain. (A Linear's
    lora_B starts at zero; the embedding's lora_B starts random and its lora_A at zero.)"""
    torch.manual_seed(3)
    for _, layer in lora_layers(model):
        nn.init.normal_(layer.lora_A if isinstance(layer, LoRAEmbedding) else layer.lora_B, std=0.1)


def snapshot(model: GPT) -> dict[str, torch.Tensor]:
    return {name: t.clone() for name, t in model.state_dict().items()}


@pytest.mark.parametrize("targets", [("attn",), ("mlp",), ("head",), ("emb",), ALL, EVERY])
def test_zero_B_leaves_outputs_unchanged(targets):
    """B = 0 for a Linear (A = 0 for the embedding): the model starts as its base, bit for bit."""
    model = fresh_model()
    base = copy.deepcopy(model)
    names = add_lora(model, rank=4, alpha=8, targets=targets)
    assert names and all(isinstance(model.get_submodule(n), (LoRALinear, LoRAEmbedding)) for n in names)
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
                        "train_head": False, "rslora": False, "base": "../base"}  # relative: no machine path
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


@pytest.mark.parametrize("targets", [("attn",), ("mlp",), ("head",), ("emb",), ("attn", "mlp"), ALL, EVERY])
@pytest.mark.parametrize("rank", [1, 2, 4, 8])
def test_trainable_count_matches_the_formula(rank, targets):
    model = GPT(tiny_config())
    total_before = count_parameters(model)[1]
    add_lora(model, rank=rank, alpha=16, targets=targets)
    trainable, total = count_parameters(model)
    assert trainable == lora_parameter_count(model.config, rank, targets) > 0
    copied_head = 64 * 16 if {"head", "emb"} & set(targets) else 0  # the untied head's own frozen matrix
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
    assert lora_parameter_count(c, 4, ("emb",)) == 4 * 64 + 16 * 4  # A (4, vocab 64), B (n_embd 16, 4)
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
    with pytest.raises(ValueError, match="non-empty subset of attn, mlp, head, emb; got \\[\\]"):
        add_lora(model, rank=2, alpha=1, targets=())
    with pytest.raises(ValueError, match="got \\['attn', 'ffn'\\]"):
        add_lora(model, rank=2, alpha=1, targets=("attn", "ffn"))
    with pytest.raises(ValueError, match="train_head=True"):
        add_lora(model, rank=2, alpha=1, targets=("head",), train_head=True)
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # untouched
    add_lora(model, rank=2, alpha=1)
    with pytest.raises(ValueError, match="already has LoRA layers"):
        add_lora(model, rank=2, alpha=1)
    with pytest.raises(ValueError, match="LoRA\\+ ratio must be a positive number, got 0"):
        add_lora(fresh_model(), rank=2, alpha=1, plus_ratio=0)
    with pytest.raises(ValueError, match="rslora must be True or False"):
        add_lora(fresh_model(), rank=2, alpha=1, rslora="yes")
    assert set(TARGETS) == {"attn", "mlp", "head"}  # the Linear targets
    assert ALL_TARGETS == ("attn", "mlp", "head", "emb")


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


# ---- rsLoRA: the scale alpha / sqrt(rank) ----

def one_by_one(rank: int, alpha: float, rslora: bool) -> LoRALinear:
    """A 1 -> 1 layer, W = 1, b = 0, with A and B all ones: B A = rank, so the output is x * (1 + scale * rank)."""
    base = nn.Linear(1, 1)
    with torch.no_grad():
        base.weight.fill_(1.0)
        base.bias.zero_()
    layer = LoRALinear(base, rank, alpha, rslora=rslora)
    with torch.no_grad():
        layer.lora_A.fill_(1.0)
        layer.lora_B.fill_(1.0)
    return layer


def test_rslora_scales_by_alpha_over_the_square_root_of_the_rank_on_known_numbers():
    # rank 4, alpha 8: alpha / rank = 2, alpha / sqrt(rank) = 4. B A x = 4 x, so x = 1 gives
    # 1 + 2 * 4 = 9 (LoRA) or 1 + 4 * 4 = 17 (rsLoRA).
    plain, rs = one_by_one(4, 8, rslora=False), one_by_one(4, 8, rslora=True)
    assert (plain.scale, rs.scale) == (2.0, 4.0)
    x = torch.ones(1, 1)
    assert plain(x).item() == 9.0 and rs(x).item() == 17.0
    rs.merge()  # the merged weight holds the same scale
    assert rs.weight.item() == 17.0 and rs(x).item() == 17.0
    for rslora, scale in ((True, 4.0), (False, 2.0)):
        model = fresh_model()
        add_lora(model, rank=4, alpha=8, targets=EVERY, rslora=rslora)
        assert {layer.scale for _, layer in lora_layers(model)} == {scale}  # every layer, the embedding too


def test_an_rslora_adapter_loads_to_the_same_logits_and_an_old_adapter_loads_as_plain_lora(tmp_path):
    model = fresh_model()
    add_lora(model, rank=4, alpha=8, targets=("attn", "emb"), rslora=True)
    randomise_B(model)
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter.json").read_text())["rslora"] is True
    restored = fresh_model()
    assert load_adapter(restored, tmp_path)["rslora"] is True
    assert torch.equal(restored(IDS), model(IDS))

    # adapter.json from before rsLoRA existed has no "rslora": it scaled by alpha / rank
    settings = json.loads((tmp_path / "adapter.json").read_text())
    del settings["rslora"]
    (tmp_path / "adapter.json").write_text(json.dumps(settings))
    old = fresh_model()
    assert load_adapter(old, tmp_path)["rslora"] is False
    assert {layer.scale for _, layer in lora_layers(old)} == {2.0}
    assert not torch.allclose(old(IDS), model(IDS), atol=1e-4)
    plain = fresh_model()
    add_lora(plain, rank=4, alpha=8, targets=("attn", "emb"))
    plain.load_state_dict({n: t for n, t in model.state_dict().items() if ".lora_" in n}, strict=False)
    assert torch.equal(old(IDS), plain(IDS))  # the same tensors at alpha / rank


# ---- LoRA+: lora_B learns at ratio times the learning rate ----

def groups_before_lora_plus(model: GPT, cfg: TrainConfig) -> list[dict]:
    """make_optimizer's param groups as they were written before LoRA+: the reference for ratio 1."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=True).param_groups


def same_groups(now: list[dict], before: list[dict]) -> None:
    """The same groups with the same parameters in the same order and the same settings, plus lr_ratio 1."""
    assert len(now) == len(before)
    for new, old in zip(now, before):
        assert [id(p) for p in new["params"]] == [id(p) for p in old["params"]]
        assert set(new) == set(old) | {"lr_ratio"} and new["lr_ratio"] == 1.0
        assert all(new[key] == old[key] for key in old if key != "params"), [(k, new[k], old[k]) for k in old]


@pytest.mark.parametrize("lora", [None, {}, {"plus_ratio": 1.0}], ids=["plain", "lora", "ratio-1"])
def test_at_ratio_1_the_optimizers_are_those_of_before(lora):
    model = fresh_model()
    if lora is not None:
        add_lora(model, rank=2, alpha=4, targets=EVERY, **lora)
    cfg = TrainConfig(lr=3e-3, weight_decay=0.1)
    same_groups(make_optimizer(model, cfg).param_groups, groups_before_lora_plus(model, cfg))
    before_rl = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5, betas=(0.9, 0.95),
                                  weight_decay=0.0).param_groups
    same_groups(adamw(model, 2e-5).param_groups, before_rl)


def test_lora_plus_puts_every_B_at_ratio_times_the_learning_rate():
    model = fresh_model()
    add_lora(model, rank=2, alpha=4, targets=EVERY, plus_ratio=16)
    layers = lora_layers(model)
    cfg = TrainConfig(lr=1e-3, weight_decay=0.1, warmup_steps=10, max_steps=100)
    for optimizer, lr, decay in ((make_optimizer(model, cfg), 1e-3, 0.1), (adamw(model, 2e-5), 2e-5, 0.0)):
        group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        assert len(group_of) == 2 * len(layers)  # every A and B, nothing else trains
        for name, layer in layers:
            a, b = group_of[id(layer.lora_A)], group_of[id(layer.lora_B)]
            assert (a["lr"], a["lr_ratio"]) == (lr, 1.0), name
            assert (b["lr"], b["lr_ratio"]) == (16 * lr, 16), name
            assert a["weight_decay"] == b["weight_decay"] == decay  # the decay grouping is untouched
    optimizer = make_optimizer(model, cfg)
    x = IDS[:, :-1]
    for step in (0, 5, 60):  # the schedule: warmup, then cosine; every group at its ratio
        train_step(model, optimizer, lambda s, m: (x, IDS[:, 1:]), step, cfg, torch.device("cpu"))
        for group in optimizer.param_groups:
            assert group["lr"] == learning_rate(step, cfg) * group["lr_ratio"]


def first_step_moves(plus_ratio: float, cfg: TrainConfig) -> tuple[dict, dict]:
    """(how far each lora_A, each lora_B moved) in one train_step of a fresh LoRA model."""
    model = fresh_model()
    add_lora(model, rank=2, alpha=4, targets=("attn", "mlp"), plus_ratio=plus_ratio)
    before = snapshot(model)
    batch = (IDS[:, :-1], IDS[:, 1:])
    train_step(model, make_optimizer(model, cfg), lambda s, m: batch, 0, cfg, torch.device("cpu"))
    after = model.state_dict()
    return ({n: after[n] - before[n] for n in after if n.endswith("lora_A")},
            {n: after[n] - before[n] for n in after if n.endswith("lora_B")})


def test_lora_plus_moves_B_ratio_times_as_far_on_the_first_adam_step():
    """Adam's first step moves a weight by lr * g / (|g| + eps) (m and v are g and g^2 after the bias
    correction): about lr * sign(g), whatever the gradient's size. B starts at 0, so weight decay does
    not touch it, and every B moves by exactly ratio times what it moves at ratio 1. A's gradient is 0
    (B = 0): A only decays, alike at both ratios."""
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1, warmup_steps=0, grad_clip=0.0, dtype="float32", device="cpu")
    a1, b1 = first_step_moves(1.0, cfg)
    a16, b16 = first_step_moves(16.0, cfg)
    model = fresh_model()
    add_lora(model, rank=2, alpha=4, targets=("attn", "mlp"))
    next_token_loss(model, (IDS[:, :-1], IDS[:, 1:])).backward()
    for name, layer in lora_layers(model):
        g = layer.lora_B.grad
        assert g.abs().max() > 0, name
        torch.testing.assert_close(b1[f"{name}.lora_B"], -1e-2 * g / (g.abs() + 1e-8), rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(b16[f"{name}.lora_B"], 16 * b1[f"{name}.lora_B"], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(a16[f"{name}.lora_A"], a1[f"{name}.lora_A"], rtol=0, atol=0)
        torch.testing.assert_close(a1[f"{name}.lora_A"], -1e-2 * 0.1 * layer.lora_A.detach(), rtol=1e-4, atol=1e-9)


# ---- "emb": LoRA on the token embedding ----

def test_the_embedding_update_on_known_numbers():
    # vocab 3, width 2, rank 1, alpha 2: scale 2. A = [[1, 0, 2]], B = [[1], [3]]:
    # B A = [[1, 0, 2], [3, 0, 6]], (B A)^T = [[1, 3], [0, 0], [2, 6]], times 2: token 0 -> [2, 6], token 2 -> [4, 12]
    base = nn.Embedding(3, 2)
    with torch.no_grad():
        base.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, 0.5]]))
    layer = LoRAEmbedding(base, rank=1, alpha=2)
    assert torch.equal(layer.lora_A, torch.zeros(1, 3)) and layer.lora_B.abs().min() > 0  # A zero, B random
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 0.0, 2.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0], [3.0]]))
    ids = torch.tensor([[2, 0, 1]])
    expected = torch.tensor([[[3.0, 12.5], [3.0, 7.0], [0.0, 0.0]]])
    assert torch.equal(layer.delta(), torch.tensor([[2.0, 6.0], [0.0, 0.0], [4.0, 12.0]]))
    assert torch.equal(layer(ids), expected)
    layer.merge()
    assert torch.equal(layer(ids), expected)
    layer.unmerge()
    assert torch.equal(layer.weight, torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, 0.5]]))


def test_the_embedding_starts_with_a_gradient_on_A_only_for_the_tokens_seen():
    """A = 0 and B random: B's gradient goes through A (zero at the start), A's through B (not zero), so
    training starts through A; only the columns of tokens in the batch get a gradient."""
    model = fresh_model()
    add_lora(model, rank=2, alpha=4, targets=("emb",))
    next_token_loss(model, (IDS[:, :-1], IDS[:, 1:])).backward()
    wte = model.transformer.wte
    assert torch.equal(wte.lora_B.grad, torch.zeros_like(wte.lora_B))
    seen = torch.zeros(64, dtype=torch.bool)
    seen[IDS[:, :-1].flatten()] = True
    column_moves = wte.lora_A.grad.abs().sum(dim=0) > 0
    assert torch.equal(column_moves, seen)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_merging_the_embedding_update_leaves_the_head_alone_and_remove_lora_gives_a_plain_gpt(tmp_path, tied):
    model = fresh_model(tie_weights=tied)
    plain_names = set(model.state_dict())
    head = model.lm_head.weight.detach().clone()
    wte = model.transformer.wte.weight.detach().clone()
    add_lora(model, rank=2, alpha=4, targets=("attn", "emb"))
    assert model.lm_head.weight is not model.transformer.wte.weight  # tied: untied first, as for "head"
    assert model.config.tie_weights is False
    randomise_B(model)
    unmerged = model(IDS)
    with adapters_off(model):
        assert torch.equal(model(IDS), fresh_model(tie_weights=tied)(IDS))
    merge_lora(model)
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.transformer.wte.weight, wte)  # the update is in the table
    assert torch.equal(model.lm_head.weight, head)  # and not in the head
    replaced = remove_lora(model)
    assert replaced[0] == "transformer.wte" and type(model.transformer.wte) is nn.Embedding
    assert set(model.state_dict()) == plain_names and all(p.requires_grad for p in model.parameters())
    assert model.lm_head.weight is not model.transformer.wte.weight and torch.equal(model.lm_head.weight, head)
    torch.testing.assert_close(model(IDS), unmerged, atol=1e-5, rtol=1e-5)
    save_checkpoint(tmp_path / "ckpt", model)
    loaded, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config.tie_weights is False and torch.equal(loaded.eval()(IDS), model(IDS))


def test_an_embedding_adapter_round_trip_is_exact(tmp_path):
    model = fresh_model()
    add_lora(model, rank=3, alpha=6, targets=("mlp", "emb"))
    randomise_B(model)
    save_adapter(model, tmp_path)
    assert json.loads((tmp_path / "adapter.json").read_text())["targets"] == ["mlp", "emb"]
    tensors = lora.read_adapter_tensors(tmp_path)
    assert tensors["transformer.wte.lora_A"].shape == (3, 64) and tensors["transformer.wte.lora_B"].shape == (16, 3)
    restored = fresh_model()  # a tied base: load_adapter unties it as add_lora did
    load_adapter(restored, tmp_path)
    assert isinstance(restored.transformer.wte, LoRAEmbedding)
    assert torch.equal(restored(IDS), model(IDS))
    assert count_parameters(restored) == count_parameters(model)
    with pytest.raises(ValueError, match="does not fit this model.*shapes \\['transformer.wte.lora_A"):
        load_adapter(fresh_model(vocab_size=80), tmp_path)


# ---- the flags, on every command that trains LoRA ----

COMMANDS = {"sft": ["--base", "/nonexistent", "--data", "/nonexistent"],
            "dpo": ["--sft", "/nonexistent", "--data", "/nonexistent"],
            "ppo": ["--sft", "/nonexistent", "--reward", "/nonexistent", "--data", "/nonexistent"],
            "grpo": ["--sft", "/nonexistent", "--data", "/nonexistent"]}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("argv, message", [
    (["--lora-rank", "2", "--lora-plus-ratio", "0"], "--lora-plus-ratio: must be in (0.0"),
    (["--lora-rank", "2", "--lora-plus-ratio", "abc"], "--lora-plus-ratio: expected a number, got 'abc'"),
    (["--lora-rank", "2", "--lora-plus-ratio", "nan"], "--lora-plus-ratio"),
    (["--lora-rslora"], "--lora-rslora needs --lora-rank"),
    (["--lora-plus-ratio", "16"], "--lora-plus-ratio needs --lora-rank")])
def test_bad_lora_flags_exit_2_with_one_line_before_reading_anything(capsys, command, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([command, *COMMANDS[command], *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_lora_command_takes_the_embedding_as_a_target(command):
    targets = next(a for a in command_parser(command)._actions if a.dest == "lora_targets")
    assert sorted(targets.choices) == sorted(ALL_TARGETS)
    args = command_parser(command).parse_args([*COMMANDS[command], "--lora-rank", "2", "--lora-targets", "attn", "emb",
                                               "--lora-rslora", "--lora-plus-ratio", "16"])
    assert (args.lora_targets, args.lora_rslora, args.lora_plus_ratio) == (["attn", "emb"], True, 16.0)
