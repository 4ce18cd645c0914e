"""The exercise scripts as programs: their flags, their errors and their "not done yet" message.

For every script in solutions/: --help works; every bad flag value exits 2 and prints exactly one
line, "<script>: error: ... --flag ...; see --help"; every accepted value of every flag changes
what the script prints. For its untouched copy in exercises/: exit 1 and exactly one line,
"<script>: error: Exercise N.M is not done yet: ...". (One format for every error line, the
grader's too: gpt_scratch.args.error_line.) And the two copies are the same file except for the
bodies of the exercise functions.
Most runs call main(argv) in-process (starting a script that imports torch takes ~2 s); a few
subprocess runs check real exit codes.
"""

import ast
import importlib.util
import os
import re
import runpy
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from gpt_scratch.args import OneLineParser
from gpt_scratch.grade import chapters_with_exercises, exercises_of

REPO = Path(__file__).resolve().parents[1]
NOT_DONE = re.compile(r"(\S+\.py): error: Exercise (\d+)\.(\d+) is not done yet: \S.*")

# For each script: small flags that keep every run quick, the values to try for each flag (each
# must change the output), and bad command lines with the flag their error must name.
SCRIPTS = {
    "ch01/ex1_bpe.py": {
        "base": [],
        "values": {"--text": ["numbers"], "--vocab-size": ["270"], "--show": ["3"], "--encode": ["a hat"]},
        "bad": [(["--text", "poems"], "--text"), (["--vocab-size", "256"], "--vocab-size"),
                (["--vocab-size", "many"], "--vocab-size"), (["--show", "0"], "--show"),
                (["--vocab-size", "260", "--show", "5"], "--show"), (["--encode", ""], "--encode")],
    },
    "ch02/ex1_attention.py": {
        "base": [],
        "values": {"--seq-len": ["3"], "--n-embd": ["8"], "--n-head": ["4"], "--head": ["1"], "--mask": ["none"],
                   "--decimals": ["3"], "--seed": ["1"]},
        "bad": [(["--seq-len", "1"], "--seq-len"), (["--seq-len", "12"], "--seq-len"), (["--n-embd", "0"], "--n-embd"),
                (["--n-head", "3"], "--n-head"), (["--n-head", "0"], "--n-head"), (["--head", "-1"], "--head"),
                (["--head", "2"], "--head"), (["--mask", "full"], "--mask"), (["--decimals", "5"], "--decimals"),
                (["--seed", "x"], "--seed")],
    },
    "ch03/ex1_gpt.py": {
        "base": ["--n-embd", "8", "--new-tokens", "3"],
        "values": {"--n-layer": ["1"], "--n-head": ["4"], "--n-embd": ["16"], "--block-size": ["8"],
                   "--vocab-size": ["20"], "--prompt-len": ["2"], "--new-tokens": ["5"], "--top-k": ["3"],
                   "--seed": ["1"]},
        "bad": [(["--n-layer", "0"], "--n-layer"), (["--n-head", "3"], "--n-head"), (["--n-embd", "200"], "--n-embd"),
                (["--block-size", "1"], "--block-size"), (["--vocab-size", "1"], "--vocab-size"),
                (["--prompt-len", "0"], "--prompt-len"), (["--block-size", "4", "--prompt-len", "5"], "--prompt-len"),
                (["--new-tokens", "0"], "--new-tokens"), (["--top-k", "0"], "--top-k"),
                (["--vocab-size", "4", "--top-k", "5"], "--top-k"), (["--seed", "-3"], "--seed")],
    },
    "ch04/ex1_pretrain.py": {
        "base": ["--steps", "3", "--warmup-steps", "1", "--print-every", "1", "--batch-size", "2",
                 "--block-size", "8", "--n-embd", "8"],
        "values": {"--text": ["counting"], "--steps": ["4"], "--warmup-steps": ["2"], "--lr": ["0.01"],
                   "--batch-size": ["3"], "--block-size": ["6"], "--n-layer": ["1"], "--n-head": ["4"],
                   "--n-embd": ["16"], "--print-every": ["2"], "--seed": ["1"]},
        "bad": [(["--text", "poems"], "--text"), (["--steps", "0"], "--steps"), (["--warmup-steps", "-1"], "--warmup-steps"),
                (["--steps", "2", "--warmup-steps", "3"], "--warmup-steps"), (["--lr", "0"], "--lr"),
                (["--lr", "nan"], "--lr"), (["--batch-size", "0"], "--batch-size"), (["--block-size", "65"], "--block-size"),
                (["--n-layer", "5"], "--n-layer"), (["--n-head", "3"], "--n-head"), (["--n-embd", "0"], "--n-embd"),
                (["--print-every", "0"], "--print-every"), (["--seed", "1.5"], "--seed")],
    },
    "ch05/ex1_sft.py": {
        "base": [],
        "values": {"--family": ["add", "subtract", "larger", "sort_numbers", "reverse", "capitals", "reverse_capitals",
                                "count_letters", "count_items", "facts"],
                   "--n-examples": ["2"], "--row": ["1"], "--loss-on": ["all"], "--vocab-size": ["400"], "--seed": ["1"]},
        "bad": [(["--family", "poems"], "--family"), (["--n-examples", "0"], "--n-examples"),
                (["--n-examples", "9"], "--n-examples"), (["--row", "-1"], "--row"),
                (["--n-examples", "2", "--row", "2"], "--row"), (["--loss-on", "prompt"], "--loss-on"),
                (["--vocab-size", "299"], "--vocab-size"), (["--vocab-size", "big"], "--vocab-size"),
                (["--seed", "-1"], "--seed")],
    },
    # ch05/ex2_experiments.py pretrains a base model and fine-tunes it; the tiny base flags keep a
    # run to a few seconds. --base pretrains into a new folder and reuses it afterwards (runs/ is
    # git-ignored); either way its output differs from the run without it.
    "ch05/ex2_experiments.py": {
        "base": ["--pretrain-steps", "2", "--n-train", "8", "--epochs", "1", "--n-test", "10"],
        "values": {"--template": ["alpaca"], "--loss-on": ["all"], "--n-train": ["20"], "--epochs": ["3"],
                   "--lr": ["0.01"], "--max-length": ["60"], "--n-test": ["20"], "--pretrain-steps": ["3"],
                   "--base": [str(REPO / "runs" / "tests" / "ch05-base")], "--seed": ["1"],
                   "--out": [str(REPO / "runs" / "tests" / "ch05-out")]},
        "bad": [(["--template", "vicuna"], "--template"), (["--loss-on", "prompt"], "--loss-on"),
                (["--n-train", "0"], "--n-train"), (["--n-train", "20001"], "--n-train"), (["--epochs", "0"], "--epochs"),
                (["--epochs", "many"], "--epochs"), (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr"),
                (["--max-length", "7"], "--max-length"), (["--max-length", "97"], "--max-length"),
                (["--n-test", "0"], "--n-test"), (["--pretrain-steps", "0"], "--pretrain-steps"),
                (["--base", str(REPO / "gpt_scratch")], "--base"), (["--base", str(REPO / "README.md")], "--base"),
                (["--seed", "-1"], "--seed"), (["--out", str(REPO / "README.md")], "--out")],
    },
    "ch06/ex1_freezing.py": {
        "base": [],
        "values": {"--strategy": ["full", "head", "norms_biases", "embeddings_frozen"], "--trainable-blocks": ["0", "2"],
                   "--n-layer": ["3"], "--n-embd": ["8"], "--steps": ["2"], "--lr": ["0.05"], "--seed": ["1"]},
        "bad": [(["--strategy", "all"], "--strategy"), (["--trainable-blocks", "-1"], "--trainable-blocks"),
                (["--trainable-blocks", "3"], "--trainable-blocks"),
                (["--strategy", "head", "--trainable-blocks", "1"], "--trainable-blocks"),
                (["--strategy", "full", "--trainable-blocks", "0"], "--trainable-blocks"),
                (["--n-layer", "0"], "--n-layer"), (["--n-layer", "9"], "--n-layer"), (["--n-embd", "7"], "--n-embd"),
                (["--n-embd", "1"], "--n-embd"), (["--steps", "0"], "--steps"), (["--lr", "0"], "--lr"),
                (["--lr", "nan"], "--lr"), (["--seed", "-1"], "--seed")],
    },
    "ch07/ex1_lora.py": {
        "base": [],
        "values": {"--rank": ["4"], "--alpha": ["8"], "--targets": ["attn", "mlp", "head"], "--n-layer": ["1"],
                   "--n-embd": ["8"], "--steps": ["2"], "--seed": ["1"]},
        "bad": [(["--rank", "0"], "--rank"), (["--rank", "17"], "--rank"), (["--n-embd", "8", "--rank", "9"], "--rank"),
                (["--alpha", "0"], "--alpha"), (["--alpha", "nan"], "--alpha"), (["--alpha", "inf"], "--alpha"),
                (["--targets", "ffn"], "--targets"), (["--targets"], "--targets"), (["--n-layer", "0"], "--n-layer"),
                (["--n-embd", "7"], "--n-embd"), (["--steps", "0"], "--steps"), (["--seed", "-1"], "--seed")],
    },
    "ch08/ex1_reward.py": {
        "base": ["--steps", "2"],
        "values": {"--pairs": ["4"], "--steps": ["3"], "--lr": ["0.05"], "--margin": ["1"], "--padding": ["left"],
                   "--min-len": ["3"], "--max-len": ["12"], "--n-embd": ["8"], "--seed": ["1"]},
        "bad": [(["--pairs", "1"], "--pairs"), (["--pairs", "257"], "--pairs"), (["--steps", "0"], "--steps"),
                (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr"), (["--margin", "-1"], "--margin"),
                (["--margin", "nan"], "--margin"), (["--padding", "both"], "--padding"),
                (["--min-len", "0"], "--min-len"), (["--min-len", "5", "--max-len", "5"], "--min-len"),
                (["--max-len", "17"], "--max-len"), (["--max-len", "1"], "--max-len"), (["--n-embd", "7"], "--n-embd"),
                (["--n-embd", "1"], "--n-embd"), (["--seed", "-1"], "--seed")],
    },
    "ch08/ex2_reward_step.py": {
        "base": ["--pairs", "4", "--steps", "2"],
        "values": {"--pairs": ["3"], "--steps": ["3"], "--lr": ["0.5"], "--score": ["head"], "--body": ["trained"],
                   "--seed": ["1"]},
        "bad": [(["--pairs", "1"], "--pairs"), (["--pairs", "65"], "--pairs"), (["--steps", "0"], "--steps"),
                (["--steps", "51"], "--steps"), (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr"),
                (["--score", "logprob"], "--score"), (["--body", "half"], "--body"), (["--seed", "-1"], "--seed")],
    },
    "ch09/ex1_ppo.py": {
        "base": [],
        "values": {"--batch": ["2"], "--length": ["3"], "--gamma": ["0.9", "0"], "--lam": ["0", "1"],
                   "--clip": ["0.1"], "--epochs": ["2"], "--lr": ["1"], "--seed": ["1"]},
        "bad": [(["--batch", "0"], "--batch"), (["--batch", "17"], "--batch"), (["--length", "0"], "--length"),
                (["--length", "13"], "--length"), (["--length", "many"], "--length"), (["--gamma", "-0.1"], "--gamma"),
                (["--gamma", "nan"], "--gamma"), (["--lam", "1.5"], "--lam"),
                (["--gamma", "0", "--lam", "0.5"], "--lam"), (["--clip", "0"], "--clip"), (["--clip", "1"], "--clip"),
                (["--epochs", "0"], "--epochs"), (["--epochs", "21"], "--epochs"), (["--lr", "0"], "--lr"),
                (["--lr", "nan"], "--lr"), (["--seed", "-1"], "--seed")],
    },
    "ch11/ex1_grpo.py": {
        "base": ["--steps", "3"],
        "values": {"--prompts": ["3"], "--group-size": ["2"], "--steps": ["5"], "--epochs": ["1"], "--lr": ["1"],
                   "--clip": ["0.1"], "--aggregation": ["token-mean", "seq-mean-token-sum-norm"], "--scale": ["none"],
                   "--samples": ["8"], "--seed": ["1"]},
        "bad": [(["--prompts", "0"], "--prompts"), (["--prompts", "33"], "--prompts"),
                (["--group-size", "1"], "--group-size"),
                (["--group-size", "17"], "--group-size"), (["--steps", "0"], "--steps"), (["--steps", "101"], "--steps"),
                (["--epochs", "0"], "--epochs"), (["--epochs", "11"], "--epochs"), (["--lr", "0"], "--lr"),
                (["--lr", "nan"], "--lr"), (["--clip", "0"], "--clip"), (["--clip", "1"], "--clip"),
                (["--aggregation", "sum"], "--aggregation"), (["--scale", "half"], "--scale"),
                (["--samples", "0"], "--samples"), (["--samples", "65"], "--samples"),
                (["--group-size", "8", "--samples", "4"], "--samples"), (["--seed", "-1"], "--seed")],
    },
    "ch12/ex1_modern.py": {
        "base": [],
        "values": {"--n-embd": ["24"], "--n-head": ["2"], "--n-kv-head": ["1", "4"], "--theta": ["50"],
                   "--seq-len": ["3"], "--shift": ["7"], "--seed": ["1"]},
        "bad": [(["--n-embd", "1"], "--n-embd"), (["--n-embd", "12"], "--n-embd"), (["--n-embd", "257"], "--n-embd"),
                (["--n-head", "0"], "--n-head"), (["--n-head", "3"], "--n-head"), (["--n-kv-head", "3"], "--n-kv-head"),
                (["--n-kv-head", "0"], "--n-kv-head"), (["--theta", "1"], "--theta"), (["--theta", "nan"], "--theta"),
                (["--seq-len", "1"], "--seq-len"), (["--seq-len", "33"], "--seq-len"), (["--shift", "0"], "--shift"),
                (["--seed", "-1"], "--seed")],
    },
    "ch10/ex1_dpo.py": {
        "base": ["--steps", "4", "--print-every", "2"],
        "values": {"--prompts": ["2"], "--answers": ["3"], "--loss": ["ipo"], "--beta": ["0.1"], "--steps": ["6"],
                   "--lr": ["1"], "--noise": ["0.3"], "--print-every": ["1"], "--seed": ["1"]},
        "bad": [(["--prompts", "0"], "--prompts"), (["--prompts", "17"], "--prompts"), (["--answers", "1"], "--answers"),
                (["--answers", "9"], "--answers"), (["--loss", "kto"], "--loss"), (["--beta", "0"], "--beta"),
                (["--beta", "nan"], "--beta"), (["--steps", "0"], "--steps"), (["--steps", "501"], "--steps"),
                (["--lr", "0"], "--lr"), (["--lr", "inf"], "--lr"), (["--noise", "0.5"], "--noise"),
                (["--noise", "-0.1"], "--noise"), (["--print-every", "0"], "--print-every"),
                (["--steps", "5", "--print-every", "6"], "--print-every"), (["--seed", "-1"], "--seed")],
    },
}


@cache
def load(folder: str, script: str):
    path = REPO / folder / script
    spec = importlib.util.spec_from_file_location(f"{folder}_{script.replace('/', '_')[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(capsys, folder: str, script: str, argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in-process -> (exit code, stdout, stderr); argparse's exits become codes."""
    capsys.readouterr()
    try:
        code = load(folder, script).main(argv)
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def option_flags(script: str) -> dict[str, object]:
    """Every --flag of the script's parser -> its argparse action."""
    parser = load("solutions", script).build_parser()
    return {action.option_strings[-1]: action for action in parser._actions if action.option_strings[-1] != "--help"}


def test_every_chapter_has_scripts_and_the_table_covers_them():
    for folder in ("solutions", "exercises"):
        # the exercise scripts, exNN_*.py (chapters 8-11's ablations.py are tested in test_ablations.py)
        found = sorted(path.relative_to(REPO / folder).as_posix() for path in (REPO / folder).glob("ch*/ex*.py"))
        assert found == sorted(SCRIPTS), f"{folder}/ holds {found}; add new scripts to SCRIPTS here"
    for script, table in SCRIPTS.items():
        flags = option_flags(script)
        assert sorted(table["values"]) == sorted(flags), f"{script}: try a value for every flag"
        assert {flag for _, flag in table["bad"]} == set(flags), f"{script}: give a bad value for every flag"
        for flag, action in flags.items():
            if action.choices:
                assert set(table["values"][flag]) == set(action.choices) - {action.default}, \
                    f"{script}: try every choice of {flag}"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_explains_every_flag(script, capsys):
    code, out, _ = run_main(capsys, "solutions", script, ["--help"])
    assert code == 0
    for flag in option_flags(script):
        assert flag in out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_uses_the_shared_one_line_parser(script):
    assert type(load("solutions", script).build_parser()) is OneLineParser, \
        "build the parser with gpt_scratch.args.OneLineParser: one error line, the format every script shares"


BAD = [(script, argv, flag) for script, table in SCRIPTS.items() for argv, flag in table["bad"]]


@pytest.mark.parametrize("script, argv, flag", BAD, ids=[f"{s[:4]}{' '.join(a)}" for s, a, _ in BAD])
def test_bad_value_exits_2_with_one_line_naming_the_flag(script, argv, flag, capsys):
    code, out, err = run_main(capsys, "solutions", script, argv)
    assert code == 2
    assert len(err.splitlines()) == 1, f"one line, no usage block:\n{err}"
    line = err.splitlines()[0]
    assert line.startswith(f"{Path(script).name}: error: ") and line.endswith("; see --help"), line
    assert flag in line, line


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_accepted_value_changes_the_output(script, capsys):
    table = SCRIPTS[script]
    code, baseline, _ = run_main(capsys, "solutions", script, table["base"])
    assert code == 0 and baseline
    assert run_main(capsys, "solutions", script, table["base"])[1] == baseline, "same flags, same output"
    for flag, values in table["values"].items():
        for value in values:
            code, out, err = run_main(capsys, "solutions", script, table["base"] + [flag, value])
            assert code == 0, err
            assert out != baseline, f"{script}: {flag} {value} printed the same as without it"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_untouched_exercise_says_which_is_not_done(script, capsys):
    code, out, err = run_main(capsys, "exercises", script, SCRIPTS[script]["base"])
    assert code == 1
    assert len(err.splitlines()) == 1 and NOT_DONE.fullmatch(err.strip()), err
    prog, chapter, _ = NOT_DONE.fullmatch(err.strip()).groups()
    assert prog == Path(script).name and int(chapter) == int(script[2:4])


def script_process(folder: str, script: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, str(REPO / folder / script), *argv], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_untouched_exercise_as_a_program_exits_1_with_one_line(script, capsys, monkeypatch):
    """Each script run as __main__ (its `sys.exit(main())` line), in this process: a new Python
    for each would spend seconds importing torch; one real process below checks the rest."""
    monkeypatch.setattr(sys, "argv", [str(REPO / "exercises" / script), *SCRIPTS[script]["base"]])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "exercises" / script), run_name="__main__")
    out, err = capsys.readouterr()
    assert stop.value.code == 1
    assert len(err.splitlines()) == 1 and NOT_DONE.fullmatch(err.strip()), err
    assert "Traceback" not in out + err


def test_an_untouched_exercise_in_its_own_process_exits_1_with_one_line():
    script = "ch03/ex1_gpt.py"  # imports torch and the package from the clone, as a student runs it
    done = script_process("exercises", script, *SCRIPTS[script]["base"])
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and NOT_DONE.fullmatch(done.stderr.strip()), done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_solution_as_a_program_exit_codes():
    assert script_process("solutions", "ch01/ex1_bpe.py", "--help").returncode == 0
    done = script_process("solutions", "ch01/ex1_bpe.py", "--vocab-size", "9999")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == ["ex1_bpe.py: error: argument --vocab-size: must be from 257 to 512, "
                                        "got 9999; see --help"]
    done = script_process("solutions", "ch01/ex1_bpe.py", "--vocab-size", "260", "--show", "5")  # two flags clash
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["ex1_bpe.py: error: --show 5 is more than the 4 merges that --vocab-size 260 "
                                        "learns; see --help"]
    done = script_process("solutions", "ch01/ex1_bpe.py", "--vocab-size", "260", "--show", "4")
    assert done.returncode == 0 and "decodes back to the same text: True" in done.stdout


def exercise_functions(tree: ast.Module) -> dict[str, str]:
    """Name -> stub message of each top-level function whose body ends in raise NotImplementedError(...)."""
    stubs = {}
    for node in tree.body:
        last = node.body[-1] if isinstance(node, ast.FunctionDef) else None
        if isinstance(last, ast.Raise) and isinstance(last.exc, ast.Call) and \
                getattr(last.exc.func, "id", None) == "NotImplementedError":
            stubs[node.name] = last.exc.args[0].value
    return stubs


def without_bodies(tree: ast.Module, names: set[str]) -> str:
    """The module with the named functions' bodies cut down to their docstrings."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            node.body = node.body[:1]
    return ast.dump(tree)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_exercise_and_solution_differ_only_in_exercise_bodies(script):
    exercise = ast.parse((REPO / "exercises" / script).read_text())
    solution = ast.parse((REPO / "solutions" / script).read_text())
    stubs = exercise_functions(exercise)
    assert len(stubs) >= 3
    assert not exercise_functions(solution), "the solution still has a stub"
    for name, message in stubs.items():
        node = next(n for n in exercise.body if isinstance(n, ast.FunctionDef) and n.name == name)
        assert len(node.body) == 2 and ast.get_docstring(node), f"{name}: a docstring, then the raise"
        assert re.fullmatch(rf"Exercise {int(script[2:4])}\.\d+: \S.*", message), message
    assert without_bodies(exercise, set(stubs)) == without_bodies(solution, set(stubs))


@pytest.mark.parametrize("chapter", chapters_with_exercises())
def test_each_chapter_has_one_test_per_exercise(chapter):
    numbers = set()
    for script in (REPO / "exercises").glob(f"ch{chapter:02d}/*.py"):
        for message in exercise_functions(ast.parse(script.read_text())).values():
            numbers.add(message.split(":")[0].removeprefix("Exercise "))
    tested = {f"{c}.{n}" for c, n, _ in exercises_of(chapter)}
    assert len(numbers) >= 3
    assert numbers == tested, "every exercise needs exactly one test_ex_<chapter>_<number>_<task>"
