"""Grading a class in one command, Gradescope's results.json, hidden tests and the points file.

The class: five generated submissions of chapters 1 and 3 (one correct, one partial, one whose
file does not import, one with endless loops, one that changes the code it is compared with) and
a sixth folder without any exercise file, graded with a time limit of 2 s per exercise so that
the loops cost little.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_scratch.gradebook import gradescope_results
from gpt_scratch.grade import REPO, format_report, grade

BPE = (REPO / "solutions" / "ch01" / "ex1_bpe.py").read_text()
GPT = (REPO / "solutions" / "ch03" / "ex1_gpt.py").read_text()
GPT_TODO = (REPO / "exercises" / "ch03" / "ex1_gpt.py").read_text()

# Functions defined again at the end of a script replace the solution's (each is looked up when called).
OVERLAPPING_MERGE = '''
def merge(ids, pair, new_id):  # steps one id after a merge: overlapping pairs merge twice
    out, i = [], 0
    while i < len(ids):
        out.append(new_id if ids[i:i + 2] == list(pair) else ids[i])
        i += 1
    return out
'''
ENDLESS = '''
import os, time


def get_pair_counts(ids):
    os._exit(3)


def train_bpe(text, vocab_size):
    while True:  # catches the time limit's error and goes on
        try:
            time.sleep(0.1)
        except BaseException:
            pass


def encode(text, merges):
    while True:
        pass
'''
CHANGES_CHECKS = '''
def get_pair_counts(ids):
    import checks  # from now on every check would pass
    checks.check = lambda *args, **kwargs: None
    return {}


def merge(ids, pair, new_id):
    return []


def train_bpe(text, vocab_size):
    return {}


def encode(text, merges):
    return []
'''
CHANGES_BLOCK = '''
def block_forward(block, x):
    return x


Block.forward = lambda self, x: block_forward(self, x)  # the reference would agree
'''
TEXT_MERGE = '''
def merge(ids, pair, new_id):  # merges the ids as text: "1,2,3" -> "9,3"
    if not ids:
        return []
    text = ",".join(map(str, ids)).replace(f"{pair[0]},{pair[1]}", str(new_id))
    return [int(part) for part in text.split(",")]
'''
HIDDEN_TEST = '''from checks import expect


def test_ex_1_2_ids_of_several_digits(load_exercise):
    bpe = load_exercise("ch01/ex1_bpe.py")
    expect(bpe.merge, [11, 2], (1, 2), 9, equals=[11, 2], why="11 is one id, not the digits 1 and 1")
    expect(bpe.merge, [300, 12, 3], (12, 3), 301, equals=[300, 301])
'''


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def function(script: str, name: str) -> str:
    """The source of one function of a script."""
    start = script.index(f"def {name}(")
    return script[start:script.index("\ndef ", start)]


def make_class(root: Path) -> None:
    write(root / "ada" / "ch01" / "ex1_bpe.py", BPE)  # correct
    write(root / "ada" / "ch03" / "ex1_gpt.py", GPT)
    write(root / "ben" / "ch01" / "ex1_bpe.py", BPE + OVERLAPPING_MERGE)  # partial
    write(root / "ben" / "ch03" / "ex1_gpt.py", GPT_TODO + "\n" + function(GPT, "count_parameters")
          + "\n\ndef greedy_generate(model, prompt, max_new_tokens):\n    sys.exit(0)\n")
    write(root / "cy" / "ch01" / "ex1_bpe.py", BPE.replace("def merge(ids", "def merge(ids,,", 1))  # does not import
    write(root / "cy" / "ch03" / "ex1_gpt.py", GPT)
    write(root / "dee" / "ex1_bpe.py", BPE + ENDLESS)  # endless loops; chapter 1 alone, without its folder
    write(root / "eve" / "ch01" / "ex1_bpe.py", BPE + CHANGES_CHECKS)  # changes the code it is compared with
    write(root / "eve" / "ch03" / "ex1_gpt.py", GPT + CHANGES_BLOCK)
    write(root / "fay" / "README.txt", "my answers are in my head")  # no exercise file at all
    (root / "fay" / "ch03").mkdir()


# Run as `python -m gpt_scratch grade ...`, then report whether that process imported torch.
COMMAND_AND_TORCH = ("import runpy, sys\nsys.argv[0] = 'gpt_scratch'\ntry:\n"
                     "    runpy.run_module('gpt_scratch', run_name='__main__', alter_sys=True)\n"
                     "finally:\n    print('torch imported:', 'torch' in sys.modules)")


def test_a_class_grades_in_one_command(tmp_path):
    make_class(tmp_path / "class")
    (tmp_path / "class" / "notes.txt").write_text("not a student")  # a stray file: no row
    out = tmp_path / "grades"
    done = subprocess.run([sys.executable, "-c", COMMAND_AND_TORCH, "grade", "--class", str(tmp_path / "class"),
                           "--chapter", "1", "3", "--timeout", "2", "--jobs", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "torch imported: False" in done.stdout, "the grading process stays light: torch only in each student's"
    assert "grading: 100%" in done.stderr and "6/6" in done.stderr, "a progress bar"

    with open(out / "gradebook.csv", newline="") as file:
        rows = {row["student"]: row for row in csv.DictReader(file)}
    columns = ["1.1 get_pair_counts", "1.2 merge", "1.3 train_bpe", "1.4 encode", "3.1 block_forward",
               "3.2 count_parameters", "3.3 top_k_filter", "3.4 greedy_generate"]
    assert list(next(iter(rows.values()))) == ["student", *columns, "total", "out of", "notes"]
    points = {student: [row[c] for c in columns] + [row["total"], row["out of"]] for student, row in rows.items()}
    assert points == {"ada": ["1", "1", "1", "1", "1", "1", "1", "1", "8", "8"],
                      "ben": ["1", "0", "1", "1", "0", "1", "0", "0", "4", "8"],  # 3.1 and 3.3 unfinished
                      "cy": ["0", "0", "0", "0", "1", "1", "1", "1", "4", "8"],
                      "dee": ["0", "1", "0", "0", "0", "0", "0", "0", "1", "8"],  # merge alone works
                      "eve": ["0", "0", "0", "0", "0", "0", "0", "0", "0", "8"],
                      "fay": ["0", "0", "0", "0", "0", "0", "0", "0", "0", "8"]}
    notes = {student: row["notes"] for student, row in rows.items()}
    assert notes["ada"] == notes["ben"] == ""
    assert notes["cy"].startswith("could not import ch01/ex1_bpe.py: SyntaxError")
    assert "1.1: the test process ended (exit 3)" in notes["dee"]
    assert "1.3: took longer than 2 s and went on after the time limit; stopped" in notes["dee"]
    assert "1.4: encode(" in notes["dee"] and "took longer than 2 s" in notes["dee"]
    assert "ch03 not handed in" in notes["dee"]
    assert "1.1: your code changed checks.check" in notes["eve"]
    assert "could not import ch03/ex1_gpt.py: importing it changes gpt_scratch.model.Block.forward" in notes["eve"]
    assert notes["fay"] == "ch01 not handed in; ch03 not handed in"

    reports = {path.stem: path.read_text() for path in (out / "reports").glob("*.txt")}
    assert sorted(reports) == ["ada", "ben", "cy", "dee", "eve", "fay"]
    assert re.search(r"^total\s+8/8$", reports["ada"], re.M)
    overlapping = "merge([1, 2, 3, 1, 2], (1, 2), 9) returned [9, 2, 3, 9, 2], expected [9, 3, 9]"
    assert f"  1.2   fail: {overlapping}" in reports["ben"]
    assert "  3.4   fail: SystemExit: 0" in reports["ben"]
    assert "  3.1   missing: no ch03/ex1_gpt.py handed in" in reports["dee"]
    # eve's 1.2 to 1.4 ran against the real checks again: each says what it got.
    assert "  1.2   fail: merge([1, 2, 3, 1, 2], (1, 2), 9) returned [], expected [9, 3, 9]" in reports["eve"]

    summary = (out / "summary.txt").read_text()
    assert summary in done.stdout
    assert re.search(r"^1\.2 merge\s+1\s+0\.33\s+0\s+1$", summary, re.M), summary
    assert re.search(r"^total\s+8\s+2\.83\s+0\s+8$", summary, re.M), summary
    assert "6 students graded; 4 with notes in the gradebook" in summary
    assert not list((tmp_path / "class").rglob("__pycache__")), "grading leaves the submissions as they were"


@pytest.fixture(scope="module")
def text_merge(tmp_path_factory):
    """Two students of chapter 1, graded with a hidden test: one right, one with a plausible wrong merge."""
    root = tmp_path_factory.mktemp("hidden")
    write(root / "hidden" / "test_ch01_hidden.py", HIDDEN_TEST)
    write(root / "right" / "ch01" / "ex1_bpe.py", BPE)
    write(root / "wrong" / "ch01" / "ex1_bpe.py", BPE + TEXT_MERGE)
    return {who: grade(root / who, [1], extra_tests=root / "hidden") for who in ("right", "wrong")}


def test_hidden_tests_count_and_show_only_pass_or_fail(text_merge):
    right, wrong = text_merge["right"], text_merge["wrong"]
    assert [r.name for r in right][-1] == "1.2 ids_of_several_digits (hidden)"
    assert [r.status for r in right] == ["pass"] * 5
    assert [r.status for r in wrong] == ["pass"] * 4 + ["fail"], "every visible test passes: only the hidden one fails"
    assert wrong[-1].reason.startswith("merge([11, 2], (1, 2), 9) returned [19]"), "the instructor's record"
    for text in (format_report(Path("wrong"), wrong), json.dumps(gradescope_results(wrong, [1]))):
        assert "a hidden test (its checks are not shown)" in text
        assert "[11, 2]" not in text and "several digits" not in text, "what the student sees hides the checks"
    assert "4/5" in format_report(Path("wrong"), wrong)


GRADESCOPE_TOP = {"score", "output", "visibility", "stdout_visibility", "tests"}
GRADESCOPE_TEST = {"name", "score", "max_score", "output", "visibility"}
VISIBILITY = {"hidden", "after_due_date", "after_published", "visible"}


def check_gradescope(results: dict) -> None:
    """results.json has Gradescope's documented fields, with their types, and nothing else."""
    assert set(results) <= GRADESCOPE_TOP and {"score", "tests"} <= set(results), set(results)
    number = (int, float)
    assert isinstance(results["score"], number) and not isinstance(results["score"], bool)
    assert isinstance(results["output"], str) and results["visibility"] in VISIBILITY
    assert results["stdout_visibility"] in VISIBILITY
    assert isinstance(results["tests"], list) and results["tests"]
    for test in results["tests"]:
        assert set(test) == GRADESCOPE_TEST, test
        assert isinstance(test["name"], str) and isinstance(test["output"], str) and test["visibility"] in VISIBILITY
        assert all(isinstance(test[k], number) and not isinstance(test[k], bool) for k in ("score", "max_score"))
        assert 0 <= test["score"] <= test["max_score"]
    assert results["score"] == sum(test["score"] for test in results["tests"])


def readme_block(starting_with: str) -> str:
    """The fenced code block of exercises/README.md whose second line is starting_with."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "exercises" / "README.md").read_text(), re.S)
    return next(block for block in blocks if block.splitlines()[1] == starting_with)


def test_the_documented_run_autograder_writes_gradescope_results(tmp_path):
    """exercises/README.md's run_autograder, with /autograder moved into tmp_path: an upload of the
    script alone (as Gradescope receives it), the hidden test and the points file."""
    autograder = tmp_path / "autograder"
    (autograder / "source").mkdir(parents=True)
    (autograder / "source" / "gpt-scratch").symlink_to(REPO)
    write(autograder / "source" / "hidden" / "test_ch01_hidden.py", HIDDEN_TEST)
    write(autograder / "source" / "points.txt", "# points\ntest_ex_1_1_get_pair_counts = 2\n"
                                                "test_ex_1_2_ids_of_several_digits = 0.5  # hidden\n")
    write(autograder / "submission" / "ex1_bpe.py", BPE + TEXT_MERGE)
    (autograder / "results").mkdir()
    script = autograder / "run_autograder"
    script.write_text(readme_block("# run_autograder").replace("/autograder", str(autograder)))
    script.chmod(0o755)
    bin_folder = tmp_path / "bin"  # python3 is this Python, as setup.sh installs the course for it
    bin_folder.mkdir()
    (bin_folder / "python3").symlink_to(sys.executable)
    env = dict(os.environ, PATH=f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr

    results = json.loads((autograder / "results" / "results.json").read_text())
    check_gradescope(results)
    tests = {test["name"]: test for test in results["tests"]}
    assert list(tests) == ["1.1 get_pair_counts", "1.2 merge", "1.3 train_bpe", "1.4 encode",
                           "1.2 ids_of_several_digits (hidden)"]
    assert tests["1.1 get_pair_counts"]["max_score"] == 2 and tests["1.1 get_pair_counts"]["score"] == 2
    assert tests["1.2 merge"]["output"] == "passed"
    hidden = tests["1.2 ids_of_several_digits (hidden)"]
    assert (hidden["score"], hidden["max_score"]) == (0, 0.5) and "[11, 2]" not in hidden["output"]
    assert results["score"] == 5 and results["output"].startswith("5/5.5 points")
    assert list((autograder / "submission").iterdir()) == [autograder / "submission" / "ex1_bpe.py"]


def test_gradescope_results_of_a_submission_without_the_chapter(tmp_path, capsys):
    """Nothing handed in: Gradescope still gets a file that says so (and the grader exits 0)."""
    from gpt_scratch.grade_command import main

    assert main(["--dir", str(tmp_path), "--chapter", "1", "--format", "gradescope", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    check_gradescope(results)
    assert results["score"] == 0
    assert {test["output"] for test in results["tests"]} == {"missing: no ch01/ex1_bpe.py handed in"}


def test_the_course_tests_run_not_the_submissions(tmp_path):
    """A copy of exercises/ch01 (nothing done) that brings its own tests, conftest.py and checks.py,
    each of which would pass everything: the grade is still 0."""
    student = tmp_path / "mallory"
    shutil.copytree(REPO / "exercises" / "ch01", student / "ch01")
    passing = "def test_ex_1_1_get_pair_counts():\n    pass\n"
    write(student / "tests" / "exercises" / "test_ch01.py", passing)
    write(student / "ch01" / "test_ch01.py", passing)
    hook = ("import pytest\n\n\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
            "    outcome = yield\n    outcome.get_result().outcome = 'passed'\n")
    for folder in (student, student / "ch01", student / "tests" / "exercises"):
        write(folder / "conftest.py", hook)
        write(folder / "checks.py", "def expect(*args, **kwargs):\n    pass\n\n\n"
                                    "def check(*args, **kwargs):\n    pass\n")
    results = grade(student, [1])
    assert [r.status for r in results] == ["unfinished"] * 4
