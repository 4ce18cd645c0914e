"""`python -m gpt_scratch sft` flags: every accepted value changes what is trained (counted
against the formulas of freeze.py and lora.py), every bad or contradictory one exits 2."""

import json

import pytest
import torch

from gpt_scratch.checkpoint import load_checkpoint, load_train_state, save_checkpoint
from gpt_scratch.cli import main
from gpt_scratch.freeze import STRATEGIES, expected_trainable
from gpt_scratch.lora import lora_parameter_count
from gpt_scratch.model import GPT
from gpt_scratch.tokenizer import Tokenizer
from tiny import layout_config, write_yes_data

N_LAYER = 2


@pytest.fixture(scope="module")
def setup(request, tmp_path_factory):
    """A tiny base (GPT-2's layout unless a test asks for another), its corpus and data."""
    root = tmp_path_factory.mktemp("sft_flags")
    text = "Is 3 a number? yes. Is 12 a number? yes. " * 20
    (root / "corpus.txt").write_text(text)  # the base's pretraining text: what replay rehearses
    tokenizer = Tokenizer.train(text, 270)
    torch.manual_seed(0)
    config = layout_config(getattr(request, "param", "gpt2"), vocab_size=tokenizer.n_vocab, block_size=48,
                           n_layer=N_LAYER, n_head=2, n_embd=16)
    base = save_checkpoint(root / "base" / "checkpoint", GPT(config), tokenizer,
                           {"stage": "pretrain", "corpus": str(root / "corpus.txt")})
    return {"root": root, "base": base.parent, "data": write_yes_data(root / "data", n_train=16, n_test=4),
            "config": config}


def run_sft(setup, name, *flags):
    out = setup["root"] / name
    argv = ["sft", "--base", str(setup["base"]), "--data", str(setup["data"]), "--out", str(out), "--preset", "tiny",
            "--max-steps", "2", "--warmup-steps", "1", "--batch-size", "4", "--n-eval", "4", "--quiet", *flags]
    assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text()), out


FREEZE_CASES = [(s, None) for s in STRATEGIES if s != "last_blocks"] + [("last_blocks", n) for n in range(N_LAYER + 1)]


@pytest.mark.parametrize("strategy,blocks", FREEZE_CASES)
def test_every_freeze_value_trains_what_the_formula_says(setup, strategy, blocks):
    flags = ["--freeze", strategy] + (["--trainable-blocks", str(blocks)] if blocks is not None else [])
    metrics, _ = run_sft(setup, f"freeze_{strategy}_{blocks}", *flags)
    assert metrics["trainable_parameters"] == expected_trainable(setup["config"], strategy, blocks)
    assert metrics["tuning"].startswith(strategy)


def test_trainable_counts_differ_between_strategies(setup):
    counts = {expected_trainable(setup["config"], s, b) for s, b in FREEZE_CASES}
    assert len(counts) >= len(FREEZE_CASES) - 2  # (head and last_blocks 0 coincide when the head is tied)


@pytest.mark.parametrize("setup, rank", [("gpt2", 1), ("gpt2", 2), ("gpt2", 4), ("llama", 2)], indirect=["setup"])
def test_every_lora_rank_trains_the_formula_count_and_writes_an_adapter(setup, rank):
    metrics, out = run_sft(setup, f"lora_{rank}", "--lora-rank", str(rank))
    assert metrics["trainable_parameters"] == lora_parameter_count(setup["config"], rank, ("attn", "mlp"))
    assert (out / "adapter" / "adapter.safetensors").is_file()
    model, _, meta = load_checkpoint(out)  # the merged model: a plain GPT
    assert meta["merged_lora"] and not any("lora" in name for name in model.state_dict())
    history = load_train_state(out)[0]["history"]  # the loss curve survives the merge
    assert len(history["train_loss"]) == metrics["steps"]


@pytest.mark.parametrize("targets", [["attn"], ["mlp"], ["head"], ["emb"], ["attn", "mlp", "head"]])
def test_every_lora_target_set_changes_the_count(setup, targets):
    metrics, _ = run_sft(setup, "lora_t_" + "_".join(targets), "--lora-rank", "2", "--lora-targets", *targets)
    assert metrics["trainable_parameters"] == lora_parameter_count(setup["config"], 2, tuple(targets))


def test_lora_alpha_and_dropout_take_effect(setup):
    _, a = run_sft(setup, "alpha_4", "--lora-rank", "2", "--lora-alpha", "4")
    _, b = run_sft(setup, "alpha_64", "--lora-rank", "2", "--lora-alpha", "64")
    assert json.loads((a / "adapter" / "adapter.json").read_text())["alpha"] == 4
    assert json.loads((b / "adapter" / "adapter.json").read_text())["alpha"] == 64
    wa, wb = (load_checkpoint(p)[0].transformer.h[0].attn.c_attn.weight for p in (a, b))
    assert not torch.equal(wa, wb)  # a different scale gives a different merged model
    _, d = run_sft(setup, "dropout", "--lora-rank", "2", "--lora-dropout", "0.5")
    assert json.loads((d / "adapter" / "adapter.json").read_text())["dropout"] == 0.5


def test_lora_rslora_plus_ratio_and_the_embedding_target_take_effect(setup):
    lora = ["--lora-rank", "2", "--lora-targets", "attn", "emb"]
    plain, p = run_sft(setup, "knobs_plain", *lora)
    rs, r = run_sft(setup, "knobs_rslora", *lora, "--lora-rslora")
    plus, q = run_sft(setup, "knobs_plus", *lora, "--lora-plus-ratio", "16")
    settings = [json.loads((out / "adapter" / "adapter.json").read_text()) for out in (p, r, q)]
    assert [s["rslora"] for s in settings] == [False, True, False]
    assert all(s["targets"] == ["attn", "emb"] for s in settings)
    assert plain["trainable_parameters"] == lora_parameter_count(setup["config"], 2, ("attn", "emb"))
    assert (plain["tuning"], rs["tuning"], plus["tuning"]) == (
        "LoRA rank 2 on attn+emb", "LoRA rank 2 on attn+emb, rsLoRA", "LoRA rank 2 on attn+emb, LoRA+ ratio 16")
    weights = [load_checkpoint(out)[0].transformer.wte.weight for out in (p, r, q)]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])  # each: another model


@pytest.mark.parametrize("flags,message", [
    (["--freeze", "some"], "--freeze"),
    (["--freeze", "last_blocks"], "--trainable-blocks"),
    (["--trainable-blocks", "1"], "--trainable-blocks only works with --freeze last_blocks"),
    (["--freeze", "head", "--trainable-blocks", "1"], "--trainable-blocks only works"),
    (["--freeze", "last_blocks", "--trainable-blocks", str(N_LAYER + 1)], f"use 0..{N_LAYER}"),
    (["--freeze", "last_blocks", "--trainable-blocks", "-1"], "--trainable-blocks"),
    (["--lora-rank", "0"], "--lora-rank"),
    (["--lora-rank", "2", "--lora-alpha", "0"], "--lora-alpha"),
    (["--lora-alpha", "8"], "--lora-alpha needs --lora-rank"),
    (["--lora-targets", "attn"], "--lora-targets needs --lora-rank"),
    (["--lora-rank", "2", "--lora-targets", "ffn"], "--lora-targets"),
    (["--lora-rank", "2", "--freeze", "head"], "cannot be combined"),
    (["--template", "vicuna"], "--template"),
    (["--loss-on", "prompt"], "--loss-on"),
    (["--max-length", "49"], "longer than the base model's context"),
    (["--n-train", "0"], "--n-train"),
    (["--replay", "-1"], "--replay"),
    (["--replay", "0", "--replay-corpus", "corpus.txt"], "--replay-corpus needs replay"),
])
def test_bad_flags_exit_2_with_one_line(setup, flags, message, capsys):
    argv = ["sft", "--base", str(setup["base"]), "--data", str(setup["data"]), "--out",
            str(setup["root"] / "never"), "--quiet", *flags]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (setup["root"] / "never").exists()


@pytest.mark.parametrize("flags,message", [
    (["--lora-rank", "4", "--freeze", "head"], "--lora-rank cannot be combined with --freeze"),
    (["--lora-rank", "4", "--trainable-blocks", "1"], "cannot be combined with --freeze/--trainable-blocks"),
    (["--lora-dropout", "0.1"], "--lora-dropout needs --lora-rank"),
    (["--freeze", "last_blocks"], "--freeze last_blocks needs --trainable-blocks"),
    (["--freeze", "head", "--trainable-blocks", "1"], "--trainable-blocks only works with --freeze last_blocks"),
    (["--replay", "0", "--replay-corpus", "corpus.txt"], "--replay-corpus needs replay"),
    (["--warmup-steps", "9", "--max-steps", "3"], "--warmup-steps 9 is larger than --max-steps 3"),
])
def test_flag_conflicts_are_found_before_the_base_is_read(setup, flags, message, capsys):
    """A missing --base is not reported while the flags contradict each other: those come first."""
    argv = ["sft", "--base", str(setup["root"] / "no_such_base"), "--data", str(setup["root"] / "no_such_data"),
            "--out", str(setup["root"] / "never"), "--quiet", *flags]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert message in err[0] and "no checkpoint" not in err[0]
    assert not (setup["root"] / "never").exists()


def test_template_loss_on_n_train_and_max_length_take_effect(setup):
    plain, _ = run_sft(setup, "plain")
    alpaca, _ = run_sft(setup, "alpaca", "--template", "alpaca")
    assert (plain["template"], alpaca["template"]) == ("chat", "alpaca")  # chat is the default
    assert plain["final_val_loss"] != alpaca["final_val_loss"]
    every, _ = run_sft(setup, "all_tokens", "--loss-on", "all")
    assert every["mask_prompt"] is False and every["final_val_loss"] != plain["final_val_loss"]
    few, _ = run_sft(setup, "few", "--n-train", "5")
    assert few["train_examples"] == 5 and plain["train_examples"] == 16
    cut, _ = run_sft(setup, "cut", "--max-length", "12")
    assert cut["final_val_loss"] != plain["final_val_loss"]


def test_replay_and_its_corpus_take_effect(setup):
    plain, plain_out = run_sft(setup, "replay_preset")  # the tiny preset replays 1 window per step
    off, off_out = run_sft(setup, "replay_off", "--replay", "0")
    more, more_out = run_sft(setup, "replay_3", "--replay", "3")
    other_text = setup["root"] / "other.txt"
    other_text.write_text("yes no yes no maybe. " * 40)
    other, other_out = run_sft(setup, "replay_other", "--replay-corpus", str(other_text))
    assert [m["replay"] for m in (plain, off, more, other)] == [1, 0, 3, 1]
    weights = [load_checkpoint(out)[0].transformer.wte.weight for out in (plain_out, off_out, more_out, other_out)]
    for i in range(len(weights)):
        for j in range(i + 1, len(weights)):
            assert not torch.equal(weights[i], weights[j]), (i, j)  # each setting trains a different model


def test_a_missing_replay_corpus_is_one_line(setup, capsys):
    argv = ["sft", "--base", str(setup["base"]), "--data", str(setup["data"]), "--out", str(setup["root"] / "z"),
            "--preset", "tiny", "--quiet", "--replay-corpus", str(setup["root"] / "gone.txt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "gone.txt not found" in err and "--replay 0" in err


def test_missing_data_or_base_is_one_line(setup, capsys):
    assert main(["sft", "--base", str(setup["root"] / "nothing"), "--data", str(setup["data"]), "--quiet",
                 "--out", str(setup["root"] / "x")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["sft", "--base", str(setup["base"]), "--data", str(setup["root"] / "nodata"), "--quiet",
                 "--out", str(setup["root"] / "y")]) == 2
    assert "sft_train.json" in capsys.readouterr().err
