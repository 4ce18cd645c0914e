import pytest
import torch

from tiny import tiny_config
from gpt_scratch.freeze import (STRATEGIES, apply_freezing, count_parameters, expected_trainable,
                                head_is_tied, trainable_table)
from gpt_scratch.model import GPT, lm_loss
from gpt_scratch.train import TrainConfig, make_optimizer

N_LAYER = 3

# Every strategy, and last_blocks with every N from 0 to n_layer.
CASES = [(s, None) for s in STRATEGIES if s != "last_blocks"] + [("last_blocks", n) for n in range(N_LAYER + 1)]


def fresh_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config(n_layer=N_LAYER, **overrides))


def train_a_few_steps(model: GPT, steps: int = 2) -> None:
    """AdamW at a high learning rate on a real loss, so that every trainable tensor visibly moves."""
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2, weight_decay=0.1))
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, 64, (2, 9), generator=generator)
        lm_loss(model(ids[:, :-1]), ids[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("strategy, n", CASES)
def test_frozen_parameters_stay_bitwise_and_trainable_ones_move(strategy, n, tied):
    model = fresh_model(tie_weights=tied)
    apply_freezing(model, strategy, n)
    assert count_parameters(model)[0] == expected_trainable(model.config, strategy, n)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    train_a_few_steps(model)
    for name, p in model.named_parameters():
        if name in trainable:
            assert not torch.equal(p, before[name]), f"{strategy} {n}: trainable {name} did not move"
        else:
            assert torch.equal(p, before[name]), f"{strategy} {n}: frozen {name} moved"


def test_expected_trainable_on_known_numbers():
    # tiny_config(n_layer=3): embeddings 64*16 and 32*16, blocks of 3280, final norm 32.
    c = tiny_config(n_layer=3)
    assert expected_trainable(c, "full") == 1024 + 512 + 3 * 3280 + 32 == GPT(c).num_parameters()
    assert expected_trainable(c, "head") == 1024
    assert expected_trainable(c, "last_blocks", 0) == 32 + 1024
    assert expected_trainable(c, "last_blocks", 2) == 2 * 3280 + 32 + 1024
    assert expected_trainable(c, "norms_biases") == 3 * (2 * 32 + 9 * 16) + 32
    assert expected_trainable(c, "embeddings_frozen") == 3 * 3280 + 32  # the tied head stays frozen
    untied = tiny_config(n_layer=3, tie_weights=False)
    assert expected_trainable(untied, "embeddings_frozen") == 3 * 3280 + 32 + 1024


MODERN = dict(norm="rmsnorm", position="rope", mlp="swiglu", n_kv_head=1)


@pytest.mark.parametrize("overrides", [dict(bias=False), dict(bias=False, tie_weights=False), MODERN,
                                       dict(**MODERN, bias=False, tie_weights=False)],
                         ids=["no-bias", "no-bias-untied", "modern", "llama"])
@pytest.mark.parametrize("strategy, n", CASES)
def test_counts_match_the_formula_without_biases_and_in_the_modern_layout(strategy, n, overrides):
    model = fresh_model(**overrides)
    apply_freezing(model, strategy, n)
    assert count_parameters(model) == (expected_trainable(model.config, strategy, n), model.num_parameters())
    assert ("position embedding" in trainable_table(model)) == (model.config.position == "learned")


def test_tied_head_rule():
    tied = fresh_model()
    assert head_is_tied(tied)
    apply_freezing(tied, "head")
    assert tied.transformer.wte.weight.requires_grad and not tied.transformer.wpe.weight.requires_grad
    apply_freezing(tied, "embeddings_frozen")
    assert not tied.lm_head.weight.requires_grad and tied.transformer.ln_f.weight.requires_grad

    untied = fresh_model(tie_weights=False)
    assert not head_is_tied(untied)
    apply_freezing(untied, "head")
    assert untied.lm_head.weight.requires_grad and not untied.transformer.wte.weight.requires_grad
    apply_freezing(untied, "embeddings_frozen")
    assert untied.lm_head.weight.requires_grad and not untied.transformer.wte.weight.requires_grad


@pytest.mark.parametrize("strategy, n", CASES)
def test_freezes_first_whatever_was_trainable_before(strategy, n):
    fresh = fresh_model()
    apply_freezing(fresh, strategy, n)
    wanted = {name for name, p in fresh.named_parameters() if p.requires_grad}

    model = fresh_model()
    apply_freezing(model, "head")  # some other state first ...
    for p in model.parameters():  # ... then everything unfrozen by hand
        p.requires_grad_(True)
    apply_freezing(model, strategy, n)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == wanted
    apply_freezing(model, "full")
    assert all(p.requires_grad for p in model.parameters())


def test_bad_strategy_or_block_count_raises_a_clear_error():
    model = fresh_model()
    with pytest.raises(ValueError, match="unknown freezing strategy 'top'.*last_blocks"):
        apply_freezing(model, "top")
    with pytest.raises(ValueError, match="needs trainable_blocks"):
        apply_freezing(model, "last_blocks")
    for bad in (-1, N_LAYER + 1):
        with pytest.raises(ValueError, match=f"between 0 and n_layer={N_LAYER}, got {bad}"):
            apply_freezing(model, "last_blocks", bad)
    with pytest.raises(ValueError, match="only applies to strategy 'last_blocks'"):
        apply_freezing(model, "head", 1)
    with pytest.raises(ValueError, match="unknown freezing strategy"):
        expected_trainable(model.config, "Full")


def table_rows(table: str) -> dict[str, tuple[int, int, str]]:
    """{group: (trainable, total, percent)} parsed back from the markdown table."""
    rows = {}
    for line in table.splitlines()[2:]:
        if line.startswith("|"):
            name, trainable, total, percent = (cell.strip() for cell in line.strip("|").split("|"))
            rows[name] = (int(trainable.replace(",", "")), int(total.replace(",", "")), percent)
    return rows


def test_trainable_table_numbers_tied():
    model = fresh_model()
    apply_freezing(model, "last_blocks", 1)
    rows = table_rows(trainable_table(model))
    assert rows["token embedding"] == (1024, 1024, "100.0%")  # trained as the tied head
    assert rows["position embedding"] == (0, 512, "0.0%")
    assert rows["block 0"] == rows["block 1"] == (0, 3280, "0.0%")
    assert rows["block 2"] == (3280, 3280, "100.0%")
    assert rows["final norm"] == (32, 32, "100.0%")
    assert rows["head (tied to token embedding)"] == (0, 0, "-")  # counted once, above
    assert rows["total"] == (4336, 11408, "38.0%")
    assert sum(t for name, (t, _, _) in rows.items() if name != "total") == 4336


def test_trainable_table_numbers_untied():
    model = fresh_model(tie_weights=False)
    apply_freezing(model, "head")
    rows = table_rows(trainable_table(model))
    assert rows["token embedding"] == (0, 1024, "0.0%")
    assert rows["head"] == (1024, 1024, "100.0%")
    assert rows["total"] == (1024, 12432, f"{100 * 1024 / 12432:.1f}%")
