"""compare-alignment (chapter 10): every method from one SFT model and the same pairs, at two noise levels."""

import json
import subprocess

import pytest

from gpt_scratch.cli import main
from gpt_scratch.compare import run_in_process
from gpt_scratch.compare_alignment import format_table
from tiny import cli_in_a_forked_process


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """What compare-alignment starts from, as the tiny main job makes it: its data and its SFT model."""
    run = tmp_path_factory.mktemp("alignment") / "run"
    assert main(["data", "--out", str(run / "data"), "--corpus-mb", "0.1", "--n-train", "2000", "--n-val", "100",
                 "--n-test", "200"]) == 0
    assert main(["pretrain", "--corpus", str(run / "data" / "corpus.txt"), "--out", str(run / "pretrain"),
                 "--preset", "tiny", "--quiet"]) == 0
    assert main(["sft", "--base", str(run / "pretrain"), "--data", str(run / "data"), "--out", str(run / "sft"),
                 "--preset", "tiny", "--quiet"]) == 0
    return run


def test_methods_at_two_noise_levels_in_one_table(tiny_run, tmp_path, capsys, monkeypatch):
    # Each method's process forked from one that has imported torch (the command line is the same;
    # the test below runs a real new Python).
    monkeypatch.setattr(subprocess, "run", cli_in_a_forked_process)
    out = tmp_path / "compare"
    common = ["compare-alignment", "--sft", str(tiny_run / "sft"), "--data", str(tiny_run / "data"), "--out", str(out),
              "--preset", "tiny"]
    assert main(common + ["--methods", "robust", "--noise", "0", "0.2"]) == 0
    rows = json.loads((out / "alignment.json").read_text())
    assert [(r["method"], r["noise"]) for r in rows] == [("sft (the start)", 0.0), ("robust", 0.0), ("robust", 0.2)]
    for row in rows[1:]:
        assert row["wall_seconds"] > 0 and row["peak_memory_mb"] > 0 and 0 <= row["win_rate"] <= 1, row
        assert row["reward_seconds"] is None  # DPO's losses need no reward model
    # The noisy copy: same questions, the given share of training labels flipped, the held-out pairs clean.
    manifest = json.loads((out / "data_noise_0.2" / "manifest.json").read_text())
    assert manifest["settings"]["label_noise"] == 0.2
    for name in ("sft_test.json", "preferences_test.jsonl"):
        assert (out / "data_noise_0.2" / name).read_bytes() == (tiny_run / "data" / name).read_bytes(), name
    flipped = [json.loads(line)["flipped"] for line in (out / "data_noise_0.2" / "preferences_train.jsonl").open()]
    assert 0.1 < sum(flipped) / len(flipped) < 0.3
    robust = json.loads((out / "noise_0.2" / "robust" / "metrics.json").read_text())
    assert robust["loss"] == "robust" and robust["label_smoothing"] > 0
    for name in ("alignment.md", "alignment.png"):
        assert (out / name).is_file()
    assert "| 20% | robust |" in (out / "alignment.md").read_text()

    # PPO added at noise 0: its reward model first; the robust run there is done and reused.
    capsys.readouterr()
    mtime = (out / "noise_0" / "robust" / "metrics.json").stat().st_mtime_ns
    assert main(common + ["--methods", "ppo", "robust", "--noise", "0"]) == 0
    again = json.loads((out / "alignment.json").read_text())
    assert [(r["method"], r["noise"]) for r in again] == [("sft (the start)", 0.0), ("ppo", 0.0), ("robust", 0.0)]
    assert again[1]["reward_seconds"] > 0 and 0 <= again[1]["win_rate"] <= 1  # PPO pays for its reward model
    assert (out / "noise_0" / "robust" / "metrics.json").stat().st_mtime_ns == mtime  # done runs are reused
    assert again[2]["wall_seconds"] == rows[1]["wall_seconds"]


def test_a_method_runs_as_python_m_gpt_scratch_and_its_failure_is_one_line(tmp_path):
    """run_in_process for real, in a new Python: a stage that fails is named with its folder, its exit
    code and the last line it printed; nothing is written for it."""
    folder = tmp_path / "noise_0" / "dpo"
    flags = ["--sft", str(tmp_path / "missing"), "--data", str(tmp_path), "--preset", "tiny", "--quiet"]
    with pytest.raises(RuntimeError) as failure:
        run_in_process("dpo", flags, folder, quiet=True)
    assert str(failure.value).startswith(f"dpo in {folder} failed (exit 2): python -m gpt_scratch dpo: error: "
                                         f"no checkpoint in {tmp_path / 'missing'}"), failure.value
    assert not (folder / "wall_seconds.json").exists()


def test_the_table_by_hand():
    rows = [{"method": "sft (the start)", "noise": 0.0, "accuracy": 0.9, "sentence_rate": 0.7, "win_rate": None,
             "tie_share": None, "kl": 0.0, "wall_seconds": None, "reward_seconds": None, "peak_memory_mb": None},
            {"method": "ppo", "noise": 0.2, "accuracy": 0.91, "sentence_rate": 1.0, "win_rate": 0.95, "tie_share": 0.7,
             "kl": 0.84, "wall_seconds": 45.7, "reward_seconds": 52.0, "peak_memory_mb": 665.0}]
    table = format_table(rows)
    assert "| 0% | sft (the start) | 90.0% | 70.0% | - | 0.00 | - | - |" in table
    assert "| 20% | ppo | 91.0% | 100.0% | 95.0% (70%) | 0.84 | 46 (+ 52 reward model) | 665 |" in table


@pytest.mark.parametrize("argv, flag", [
    (["--methods", "dpo", "dpo"], "--methods"), (["--methods", "kto"], "--methods"), (["--noise", "0.5"], "--noise"),
    (["--noise", "0", "0"], "--noise"), (["--preset", "huge"], "--preset"), (["--sft", "/nonexistent"], "--sft")])
def test_bad_flags_exit_2_with_one_line(capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["compare-alignment", *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err
