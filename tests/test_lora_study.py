"""Chapter 7's LoRA study (chapters/ch07_lora/lora_study.py): its variants, its flags, a tiny run, the truncation."""

import json

import pytest
import torch

from tiny import load_script

study = load_script("chapters/ch07_lora/lora_study.py")


def test_every_variant_is_named_once_and_lora_variants_train_without_weight_decay():
    names = [name for group in study.GROUPS.values() for name in group]
    assert len(names) == len(set(names)) == len(study.VARIANTS)
    lora_cfg = study.train_config(study.VARIANTS["r16-lr3e-3"], "default")
    full_cfg = study.train_config(study.VARIANTS["full-lr1e-3"], "default")
    assert (lora_cfg.lr, lora_cfg.weight_decay, lora_cfg.max_steps) == (3e-3, 0.0, 3200)
    assert (full_cfg.lr, full_cfg.weight_decay) == (1e-3, 0.1)  # the SFT stage's own settings
    plus = study.VARIANTS["r16-plus16"]
    assert (plus["lora_plus_ratio"], study.train_config(plus, "default").lr) == (16.0, 7.5e-4)  # the LoRA stage's


def test_batch_64_sees_the_same_examples_and_the_alpha_rules_meet_at_rank_16():
    lora_16 = study.train_config(study.VARIANTS["r16-lr3e-3"], "default")
    for name in study.GROUPS["batch"]:
        cfg = study.train_config(study.VARIANTS[name], "default")
        assert cfg.batch_size == 64 and cfg.batch_size * cfg.max_steps == lora_16.batch_size * lora_16.max_steps
        assert cfg.eval_every <= cfg.max_steps and cfg.save_every <= cfg.max_steps

    scales = {name: study.lora_scale_of(changes) for name, changes in study.GROUPS["alpha"].items()}
    assert (scales["r4-rslora-lr3e-3"], scales["r64-rslora-lr1e-3"]) == (4.0, 1.0)  # 8 / sqrt(r)
    assert (scales["r4-alpha32-lr1e-3"], scales["r64-alpha32-lr3e-3"]) == (8.0, 0.5)  # 32 / r
    at_rank_16 = [{**study.VARIANTS[name], "lora_rank": 16} for name in ("r4-rslora-lr3e-3", "r4-alpha32-lr1e-3")]
    r16 = study.lora_scale_of(study.VARIANTS["r16-lr3e-3"])
    assert [study.lora_scale_of(changes) for changes in at_rank_16] == [r16, r16] == [2.0, 2.0]
    rules = {study.alpha_rule(changes) for changes in study.GROUPS["alpha"].values()}
    assert rules == {"rsLoRA, alpha 8", "alpha 32"} and study.alpha_rule(study.VARIANTS["r4-lr1e-2"]) == "alpha = 2r"


def test_truncated_keeps_the_top_singular_directions():
    matrix = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert torch.equal(study.truncated(matrix, 1), torch.diag(torch.tensor([3.0, 0.0, 0.0])))
    assert torch.allclose(study.truncated(matrix, 3), matrix)


def test_a_tiny_study_writes_its_rows_with_the_forgetting_and_reuses_finished_variants(tiny_main_job, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--run", str(tiny_main_job), "--out", str(out), "--variants", "full-lr1e-3", "r1-lr1e-2", "--quiet",
            "--plots", str(tmp_path / "plots")]
    assert study.main(argv) == 0
    table = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = {row["variant"]: row for row in results["rows"]}
    assert set(rows) == {"full-lr1e-3", "r1-lr1e-2"} and {"device", "dtype", "torch", "date"} <= set(results["measured_on"])
    assert rows["r1-lr1e-2"]["trainable_parameters"] < rows["full-lr1e-3"]["trainable_parameters"]
    assert rows["r1-lr1e-2"]["lr"] == 1e-2 and rows["full-lr1e-3"]["lr"] == 1e-3
    assert (rows["r1-lr1e-2"]["lora_scale"], rows["full-lr1e-3"]["lora_scale"]) == (2.0, None)
    assert rows["r1-lr1e-2"]["batch_size"] == rows["full-lr1e-3"]["batch_size"] == 8  # the tiny preset's
    for name, row in rows.items():
        assert row["corpus_loss"] > 0 and row["base_corpus_loss"] > 0 and f"| {name} |" in table
        assert row["end_of_text_loss"] > 0 and 0 <= row["sampled_end_rate"] <= 1
    assert rows["r1-lr1e-2"]["tuning"] == "LoRA rank 1 on attn+mlp" and rows["full-lr1e-3"]["tuning"] == "full"
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"accuracy_vs_trainable.png", "lr_curves.png"}
    written = (out / "r1-lr1e-2" / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    assert study.main(argv) == 0  # finished: reused, not trained again
    assert (out / "r1-lr1e-2" / "checkpoint" / "model.safetensors").stat().st_mtime_ns == written


def test_the_whole_update_of_full_fine_tuning_gives_back_the_sft_model(tiny_main_job, tmp_path):
    rows = study.truncation_study(tiny_main_job, ranks=(1, 4))
    sft_accuracy = json.loads((tiny_main_job / "sft" / "metrics.json").read_text())["accuracy_after"]
    whole = next(r for r in rows if r["rank"] is None and r["other_changes"])
    assert whole["accuracy"] == pytest.approx(sft_accuracy, abs=1e-4) and whole["norm_share"] == 1.0
    shares = [r["norm_share"] for r in rows if r["rank"] is not None and r["other_changes"]]
    assert 0 < shares[0] < shares[1] <= 1.0 + 1e-6  # more directions hold more of the update


@pytest.mark.parametrize("argv, flag", [
    (["--variants", "r3-lr1e-2"], "--variants"), (["--groups", "nope"], "--groups"),
    (["--variants", "r1-lr1e-2", "--groups", "ranks"], "--groups"),
    (["--variants", "r1-lr1e-2", "r1-lr1e-2"], "twice"), (["--run", "/nonexistent"], "/nonexistent")])
def test_bad_flags_exit_2_with_one_line(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        study.main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err


def test_the_end_of_text_loss_scores_the_token_that_closes_each_answer(tiny_main_job):
    from gpt_scratch.checkpoint import load_stage_checkpoint
    from gpt_scratch.data import encode_records
    from gpt_scratch.evaluate import load_split
    model, tokenizer, _ = load_stage_checkpoint(tiny_main_job / "sft", device=torch.device("cpu"))
    records = load_split(tiny_main_job / "data", "val", 5)
    expected = []
    for example in encode_records(tokenizer, records, "chat", model.config.block_size, quiet=True):
        assert example.ids[-1] == tokenizer.eot_id  # the answer ends with its end-of-text
        with torch.no_grad():
            logits = model.eval()(torch.tensor([example.ids[:-1]]))[0, -1]
        expected.append(-torch.log_softmax(logits.float(), -1)[tokenizer.eot_id].item())
    assert study.end_of_text_loss(model, tokenizer, records) == pytest.approx(sum(expected) / len(expected), rel=1e-5)


def test_the_alpha_rules_figure_draws_one_curve_per_rule_at_ranks_4_and_64(tmp_path, monkeypatch):
    names = [n for n in {**study.GROUPS["ranks"], **study.GROUPS["alpha"]} if n.startswith(("r4-", "r64-"))]
    rows = [{"variant": n, "changes": study.VARIANTS[n], "lr": study.VARIANTS[n]["lr"], "accuracy_after": 0.5}
            for n in names]
    drawn = []
    monkeypatch.setattr(study, "plot_curves", lambda panels, path, *args: drawn.append((panels, path)))
    study.draw_alpha_rules(rows, tmp_path)
    [(panels, path)] = drawn
    assert path == tmp_path / "alpha_rules.png"
    labels = [[label for label, *_ in panel["lines"]] for panel in panels]
    assert labels == [["alpha = 2r (scale 2)", "rsLoRA, alpha 8 (scale 4)", "alpha 32 (scale 8)"],
                      ["alpha = 2r (scale 2)", "rsLoRA, alpha 8 (scale 1)", "alpha 32 (scale 0.5)"]]
    assert [len(xs) for _, xs, _, _ in panels[0]["lines"]] == [3, 2, 3]  # rank 4's learning rates under each rule
