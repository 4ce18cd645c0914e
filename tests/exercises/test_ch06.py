"""Grades chapter 6 (exercises/ch06/ex1_freezing.py): one test per exercise.

The reference is gpt_scratch.freeze: apply_freezing's flags, count_parameters and
expected_trainable. Each test calls only its own exercise, so an unfinished one fails alone.
"""

import pytest
import torch

from gpt_scratch.freeze import STRATEGIES, apply_freezing, count_parameters, expected_trainable
from gpt_scratch.model import GPT, GPTConfig, lm_loss

from checks import call, check, expect, expect_raises, show

SCRIPT = "ch06/ex1_freezing.py"


@pytest.fixture
def freezing(load_exercise):
    return load_exercise(SCRIPT)


def small_config(**overrides) -> GPTConfig:
    settings = dict(vocab_size=37, block_size=12, n_layer=3, n_head=2, n_embd=16)
    settings.update(overrides)
    return GPTConfig(**settings)


def flags(model: torch.nn.Module) -> dict[str, bool]:
    return {name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)}


def trainable(model: torch.nn.Module) -> list[str]:
    """The names of the trainable parameters, shorter to read than all the flags."""
    return [name for name, flag in flags(model).items() if flag]


def random_flags(model: torch.nn.Module, seed: int) -> None:
    """A random mix of requires_grad flags: freezing must give the same result from any start."""
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(bool(torch.randint(0, 2, (1,), generator=generator)))


def test_ex_6_1_freeze_all_then_unfreeze(freezing):
    for config in (small_config(), small_config(tie_weights=False, bias=False)):
        n = config.n_layer
        cases = {  # names -> the strategy of gpt_scratch.freeze they mean
            ("transformer", "lm_head"): ("full", None),
            (f"transformer.h.{n - 1}", "transformer.ln_f", "lm_head"): ("last_blocks", 1),
            ("transformer.ln_f", "lm_head"): ("last_blocks", 0),
            ("lm_head",): ("head", None),
        }
        for start in (0, 1, 2):
            for names, (strategy, blocks) in cases.items():
                model, reference = GPT(config), GPT(config)
                random_flags(model, seed=start)
                if start == 2:  # every parameter frozen before: the names must unfreeze them
                    model.requires_grad_(False)
                _, what = call(freezing.freeze_all_then_unfreeze, model, list(names))
                apply_freezing(reference, strategy, blocks)
                check(what, trainable(model), trainable(reference), f"those names should give strategy {strategy}",
                      verb="left trainable")

    # A prefix ends at a dot: block 1 is not block 10. A single parameter can be named.
    model = GPT(small_config(n_layer=11))
    _, what = call(freezing.freeze_all_then_unfreeze, model, ["transformer.h.1", "transformer.h.0.attn.c_attn.bias"])
    check(what, trainable(model), ["transformer.h.0.attn.c_attn.bias"]
          + [name for name in flags(model) if name.startswith("transformer.h.1.")],
          "a prefix ends at a dot (block 1 is not block 10), and one parameter can be named", verb="left trainable",
          same=set(trainable(model)) == {name for name in flags(model) if name.startswith("transformer.h.1.")}
          | {"transformer.h.0.attn.c_attn.bias"})

    # The tied head: "lm_head" is found although named_parameters() lists the tensor as transformer.wte.weight.
    model = GPT(small_config())
    _, what = call(freezing.freeze_all_then_unfreeze, model, ["lm_head"])
    check(what, trainable(model), ["transformer.wte.weight", "lm_head.weight"], verb="left trainable",
          why="the tied head: named_parameters() lists its tensor as transformer.wte.weight",
          same=set(trainable(model)) == {"transformer.wte.weight", "lm_head.weight"})

    # A name that selects nothing raises ValueError before any flag changes.
    model = GPT(small_config())
    random_flags(model, seed=3)
    before = flags(model)
    expect_raises(ValueError, freezing.freeze_all_then_unfreeze, model, ["transformer.ln_f", "transformer.h.7"],
                  why="a name that selects nothing (the model has 3 blocks)")
    assert flags(model) == before, "freeze_all_then_unfreeze(model, [..., 'transformer.h.7']) changed flags before " \
                                   "raising; a bad name must leave the model untouched"
    expect_raises(ValueError, freezing.freeze_all_then_unfreeze, model, ["transformer.h.1.att"],
                  why="not a whole name: a prefix ends at a dot")
    assert flags(model) == before, "a bad name must leave the model untouched"


def test_ex_6_2_count_trainable(freezing):
    tiny = GPT(GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=2))
    check("count_trainable(GPT(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=2))",
          freezing.count_trainable(tiny), (106, 106), "(trainable, total), the tied head counted once")
    for config in (small_config(), small_config(tie_weights=False), small_config(bias=False)):
        for strategy in STRATEGIES:
            model = GPT(config)
            blocks = 2 if strategy == "last_blocks" else None
            apply_freezing(model, strategy, blocks)
            expected = count_parameters(model)
            assert expected[0] == expected_trainable(config, strategy, blocks), "gpt_scratch.freeze disagrees"
            got, _ = call(freezing.count_trainable, model)
            check(f"count_trainable(GPT({show(config)}) frozen with {strategy})", got, expected)
    # A tensor shared by two modules counts once, trainable or not.
    shared = torch.nn.Linear(3, 3)
    pair = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, torch.nn.Linear(3, 2, bias=False))
    what = "count_trainable(Sequential(shared Linear(3, 3), ReLU, the same Linear, Linear(3, 2, bias=False)))"
    check(what, freezing.count_trainable(pair), (18, 18), "a tensor shared by two modules counts once")
    pair[0].weight.requires_grad_(False)
    check(f"{what} with the shared weight frozen", freezing.count_trainable(pair), (9, 18))


def test_ex_6_3_last_blocks_names(freezing):
    expect(freezing.last_blocks_names, 4, 2,
           equals=["transformer.h.2", "transformer.h.3", "transformer.ln_f", "lm_head"])
    expect(freezing.last_blocks_names, 4, 0, equals=["transformer.ln_f", "lm_head"], why="n=0: no block trains")
    expect(freezing.last_blocks_names, 3, 3,
           equals=["transformer.h.0", "transformer.h.1", "transformer.h.2", "transformer.ln_f", "lm_head"])
    expect(freezing.last_blocks_names, 1, 1, equals=["transformer.h.0", "transformer.ln_f", "lm_head"])
    expect(freezing.last_blocks_names, 12, 1, equals=["transformer.h.11", "transformer.ln_f", "lm_head"])
    for bad in (-1, 5):
        expect_raises(ValueError, freezing.last_blocks_names, 4, bad, why="n must be from 0 to n_layer")
    # The names, unfrozen, are exactly gpt_scratch's last_blocks strategy (checked by hand here).
    for config in (small_config(), small_config(tie_weights=False)):
        for n in range(config.n_layer + 1):
            model, reference = GPT(config), GPT(config)
            names, what = call(freezing.last_blocks_names, config.n_layer, n)
            model.requires_grad_(False)
            for name, p in model.named_parameters(remove_duplicate=False):
                if any(name == prefix or name.startswith(prefix + ".") for prefix in names):
                    p.requires_grad_(True)
            apply_freezing(reference, "last_blocks", n)
            check(f"{what}, unfrozen,", trainable(model), trainable(reference),
                  "differs from gpt_scratch.freeze's last_blocks strategy", verb="trains")


def test_ex_6_4_expected_last_blocks(freezing):
    expect(freezing.expected_last_blocks, GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=2), 1,
           equals=98)
    configs = [small_config(), small_config(tie_weights=False), small_config(bias=False),
               small_config(n_layer=5, n_embd=24, n_head=3, vocab_size=101), small_config(bias=False, tie_weights=False)]
    for config in configs:
        for n in range(config.n_layer + 1):
            expected = expected_trainable(config, "last_blocks", n)
            expect(freezing.expected_last_blocks, config, n, equals=expected)
            model = GPT(config)
            apply_freezing(model, "last_blocks", n)
            assert count_parameters(model)[0] == expected, "gpt_scratch.freeze disagrees with itself"
    gpt2_small = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768)
    expect(freezing.expected_last_blocks, gpt2_small, 2, equals=2 * 7_087_872 + 1536 + 50257 * 768,
           why="GPT-2 small, lm_head tied")


def test_ex_6_5_changed_parameters(freezing):
    torch.manual_seed(0)
    model = GPT(small_config())
    snapshot = lambda: {name: p.detach().clone() for name, p in model.named_parameters()}  # noqa: E731
    before = snapshot()
    check("changed_parameters(before, model) with nothing changed", freezing.changed_parameters(before, model), [])

    # One float step (one ulp) in one element: a tolerance would miss it, bit-for-bit does not.
    with torch.no_grad():
        w = model.transformer.h[1].mlp.c_fc.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))
        model.transformer.h[0].ln_1.bias[3] = torch.nextafter(torch.tensor(0.0), torch.tensor(1.0))
    check("changed_parameters(before, model) after one-ulp changes to two tensors",
          freezing.changed_parameters(before, model), ["transformer.h.0.ln_1.bias", "transformer.h.1.mlp.c_fc.weight"],
          "compare bit for bit (torch.equal), names in sorted order")

    # After real AdamW steps with the head only: the tied matrix moves (as transformer.wte.weight), nothing else.
    apply_freezing(model, "head")
    before = snapshot()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    data = torch.randint(0, 37, (4, 9), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        lm_loss(model(data[:, :-1]), data[:, 1:]).backward()
        optimizer.step()
        optimizer.zero_grad()
    check("changed_parameters(before, model) after 2 AdamW steps on the tied head",
          freezing.changed_parameters(before, model), ["transformer.wte.weight"])
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters()
               if name != "transformer.wte.weight"), "gpt_scratch.freeze's head strategy trained more than the head"
