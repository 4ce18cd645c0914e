"""The DDP appendix's script (chapters/appendix_ddp/one_vs_two.py): its flags and a tiny run."""

import json

import pytest

from tiny import load_script

one_vs_two = load_script("chapters/appendix_ddp/one_vs_two.py")


@pytest.mark.parametrize("argv, flag", [
    (["--batch-size", "3"], "--batch-size 3 cannot be split over 2 processes"), (["--steps", "0"], "--steps"),
    (["--preset", "huge"], "--preset"), (["--corpus-chars", "10"], "--corpus-chars"),
    (["--steps", "10", "--warmup-steps", "20"], "--warmup-steps 20"), (["--steps", "10"], "--warmup-steps 50")])
def test_bad_flags_exit_2_with_one_line(capsys, tmp_path, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        one_vs_two.main(["--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err
    assert not any(tmp_path.iterdir())  # checked before anything is written


def test_a_tiny_run_prints_both_curves_and_their_largest_difference(capsys, tmp_path):
    argv = ["--out", str(tmp_path), "--preset", "tiny", "--steps", "6", "--batch-size", "4", "--warmup-steps", "2",
            "--eval-every", "3", "--corpus-chars", "20000", "--vocab-size", "280", "--block-size", "32",
            "--print-every", "2"]
    assert one_vs_two.main(argv) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "step" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 1", "| 2", "| 4", "| 6", "| 3 (validation)", "| 6 (validation)"]
    for row in rows:  # the two runs agree to float32 rounding
        one, two = (float(cell) for cell in row.split(" | ")[1:3])
        assert abs(one - two) < 1e-4, row
    largest = float(printed.split("largest difference of a loss: ")[1].split()[0])
    assert largest < 1e-4 and "1 process:" in printed and "2 processes:" in printed
    for name in ("one", "two"):
        assert (tmp_path / name / "metrics.json").is_file()
    results = json.loads((tmp_path / "results.json").read_text())  # the printed figures, for the README's tables
    assert results["command"].startswith("python ") and results["command"].endswith("--print-every 2")
    assert results["measured_on"]["dtype"] == "float32" and {"device", "torch", "date"} <= set(results["measured_on"])
    assert [row["step"] for row in results["losses"]] == [row.split(" | ")[0][2:] for row in rows]
    assert [f"{row['one']:.6f}" for row in results["losses"]] == [row.split(" | ")[1] for row in rows]
    assert results["largest_difference"] == pytest.approx(largest, rel=0.1)
    assert f"{results['speed']['two']['tokens_per_second']:,} tokens/s" in printed
