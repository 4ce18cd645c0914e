"""The ablation scripts of chapters 8-11 (exercises/chNN/ablations.py) on a tiny main-job run: every variant
reaches its stage with the setting it names, finished variants are reused, bad flags exit 2 with one line."""

import json

import pytest

from gpt_scratch.ablation import lookup, markdown_table
from tiny import load_script

SCRIPTS = {8: "ch08/ablations.py", 9: "ch09/ablations.py", 10: "ch10/ablations.py", 11: "ch11/ablations.py"}


def load(chapter: int):
    return load_script(f"exercises/{SCRIPTS[chapter]}", f"ablations_ch{chapter:02d}")


def test_a_markdown_table_reads_nested_keys_and_shows_missing_values_as_a_dash():
    rows = [{"variant": "a", "kl": 0.123, "families": {"add": {"accuracy_after": 0.5}}}, {"variant": "b"}]
    columns = [("variant", "variant", "{}"), ("kl", "KL", "{:.2f}"), ("families.add.accuracy_after", "add", "{:.0%}")]
    assert markdown_table(rows, columns).splitlines() == ["| variant | KL | add |", "|---|---:|---:|",
                                                          "| a | 0.12 | 50% |", "| b | - | - |"]
    assert lookup(rows[0], "families.add.accuracy_after") == 0.5 and lookup(rows[0], "families.x.y") is None


# chapter -> (two variants to run, the config key each changes in its stage's saved settings, and their values)
CHANGED = {
    8: (["default", "head-only"], lambda meta: meta["score"], ["head+logprob", "head"]),
    9: (["default", "no-value-baseline"], lambda meta: meta["ppo_config"]["value_baseline"], [True, False]),
    10: (["default", "beta-3"], lambda meta: meta["beta"], [0.1, 3.0]),  # the tiny preset's beta is 0.1
    11: (["default", "population-std"], lambda meta: meta["grpo_config"]["population_std"], [False, True]),
}


@pytest.mark.parametrize("chapter", sorted(SCRIPTS))
def test_each_variant_trains_its_setting_and_a_finished_variant_is_reused(chapter, tiny_main_job, tmp_path, capsys):
    variants, read, expected = CHANGED[chapter]
    script, out = load(chapter), tmp_path / "out"
    argv = ["--run", str(tiny_main_job), "--out", str(out), "--variants", *variants, "--steps", "1", "--quiet"]
    argv += [] if chapter == 8 else ["--n-eval", "8"]
    assert script.main(argv) == 0
    table = capsys.readouterr().out
    assert table.startswith("| variant |") and all(f"| {name} |" in table for name in variants)
    results = json.loads((out / "results.json").read_text())
    assert [row["variant"] for row in results["rows"]] == variants
    assert results["rows"][1]["changes"] == script.VARIANTS[variants[1]]
    assert {"device", "dtype", "torch", "date"} <= set(results["measured_on"])
    for name, value in zip(variants, expected):
        meta = json.loads((out / name / "checkpoint" / "config.json").read_text())["meta"]
        assert read(meta) == value, name
    done = (out / variants[0] / "metrics.json").stat().st_mtime_ns
    assert script.main(argv) == 0  # finished: reused, not trained again
    assert (out / variants[0] / "metrics.json").stat().st_mtime_ns == done


@pytest.mark.parametrize("chapter", sorted(SCRIPTS))
def test_bad_flags_exit_2_with_one_line(chapter, tiny_main_job, tmp_path, capsys):
    script = load(chapter)
    for argv, flag in ((["--run", str(tmp_path / "nowhere")], "--run"), (["--variants", "default", "default"], "--variants"),
                       (["--variants", "nonsense"], "--variants"), (["--steps", "0"], "--steps"),
                       (["--seed", "-1"], "--seed")):
        with pytest.raises(SystemExit) as exit_info:
            script.main(["--run", str(tiny_main_job), *argv] if argv[0] != "--run" else argv)
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, (argv, err)
        assert err.startswith("ablations.py: error: "), err
