"""Chapter 12's side-by-side script (chapters/ch12_modern/side_by_side.py): its layouts, its flags, a tiny run."""

import json

import pytest

from gpt_scratch.model import GPTConfig
from tiny import load_script, write_world_corpus, write_yes_data

side_by_side = load_script("chapters/ch12_modern/side_by_side.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of the tiny preset: a corpus, instructions, and the marks of a finished SFT stage."""
    root = tmp_path_factory.mktemp("side_by_side") / "run"
    data = write_yes_data(root / "data", n_train=16, n_test=6)
    write_world_corpus(data)
    (data / "manifest.json").write_text("{}")
    (root / "sft").mkdir(parents=True)
    (root / "sft" / "metrics.json").write_text("{}")
    (root / "run.json").write_text(json.dumps({"preset": "tiny"}))
    return root


def test_each_variant_turns_on_its_switch_and_llama_all_of_them():
    assert side_by_side.switches("gpt2", 4) == {}
    assert side_by_side.switches("gqa", 4) == {"n_kv_head": 2}
    assert GPTConfig(**side_by_side.switches("llama", 4)) == GPTConfig(
        norm="rmsnorm", position="rope", mlp="swiglu", bias=False, tie_weights=False, n_kv_head=2)
    every_switch = {}
    for name, switches in side_by_side.VARIANTS.items():
        if name not in ("gpt2", "llama"):
            every_switch.update(side_by_side.switches(name, 4))
    assert every_switch == side_by_side.switches("llama", 4), "each part of llama is measured alone"


def test_kv_bytes_per_token_count_keys_and_values_of_the_kv_heads_in_bf16():
    config = GPTConfig(n_layer=4, n_head=4, n_embd=128)  # head_dim 32
    assert side_by_side.kv_bytes_per_token(config) == 2 * 4 * 4 * 32 * 2 == 2048
    assert side_by_side.kv_bytes_per_token(GPTConfig(n_layer=4, n_head=4, n_embd=128, n_kv_head=1)) == 512


def test_a_tiny_side_by_side_writes_its_rows_and_reuses_finished_variants(run, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--run", str(run), "--out", str(out), "--variants", "gpt2", "gqa", "--pretrain-steps", "2",
            "--sft-steps", "2", "--pretrain-lr", "0.02", "--quiet"]
    assert side_by_side.main(argv) == 0
    table = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = {row["changes"]["variant"]: row for row in results["rows"]}
    assert set(rows) == {"gpt2", "gqa"} and {"device", "dtype", "torch", "date"} <= set(results["measured_on"])
    assert rows["gqa"]["kv_bytes_per_token"] * 2 == rows["gpt2"]["kv_bytes_per_token"]  # the tiny preset: 2 heads -> 1
    assert rows["gqa"]["parameters"] < rows["gpt2"]["parameters"]  # smaller key and value projections
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and row["val_loss"] > 0 and row["tokens_per_second"] > 0
        assert row["pretrain_lr"] == 0.02 and row["sft_lr"] == 3e-3  # the flag's, and the tiny preset's
        assert f"| {row['changes']['variant']} | 0 | {row['parameters']:,} |" in table
    families = json.loads((out / "families.json").read_text())["tables"]
    assert set(families) == {"gpt2-seed0", "gqa-seed0"} and "| family | n | accuracy |" in families["gqa-seed0"]
    written = (out / "gpt2-seed0" / "pretrain" / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    assert side_by_side.main(argv) == 0  # finished: reused, not trained again
    assert (out / "gpt2-seed0" / "pretrain" / "checkpoint" / "model.safetensors").stat().st_mtime_ns == written


@pytest.mark.parametrize("argv, flag", [
    (["--variants", "gpt3"], "--variants"), (["--seeds", "0", "0"], "--seeds"), (["--seeds", "-1"], "--seeds"),
    (["--pretrain-steps", "0"], "--pretrain-steps"), (["--sft-lr", "0"], "--sft-lr"),
    (["--run", "/nonexistent"], "/nonexistent")])
def test_bad_flags_exit_2_with_one_line(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        side_by_side.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err
