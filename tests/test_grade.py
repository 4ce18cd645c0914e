"""The grader: full marks for solutions/, a clean zero for the untouched exercises/, and a
student's broken or half-done copy graded exercise by exercise, never a traceback. A failed
check's reason names the call that failed; the closing hint names the graded folder's script;
every error is one line, `prog: error: message`."""

import ast
import functools
import importlib.util
import shutil
import subprocess
import sys
import types

import pytest

from gpt_scratch import grade as grade_module
from gpt_scratch import grade_command
from gpt_scratch.cli import main as cli_main
from gpt_scratch.grade import REPO, Result, chapters_with_exercises, exercises_of, format_report, grade


@pytest.fixture(scope="module")
def solution_results():
    return grade(REPO / "solutions", chapters_with_exercises())


@pytest.fixture(scope="module")
def exercise_results():
    return grade(REPO / "exercises", chapters_with_exercises())


def test_every_chapter_has_at_least_three_exercises():
    chapters = chapters_with_exercises()
    assert chapters[:4] == [1, 2, 3, 4]
    for chapter in chapters:
        assert len(exercises_of(chapter)) >= 3, chapter


def test_solutions_get_full_marks(solution_results):
    failed = [(r.label, r.reason) for r in solution_results if r.status != "pass"]
    assert not failed
    assert len(solution_results) == sum(len(exercises_of(c)) for c in chapters_with_exercises())


def test_untouched_exercises_are_all_unfinished_with_their_number(exercise_results):
    assert {r.status for r in exercise_results} == {"unfinished"}
    for r in exercise_results:
        assert "Traceback" not in r.reason and r.reason, r.label
    report = format_report(REPO / "exercises", exercise_results)
    assert f"0/{len(exercise_results)}" in report and "Not passed yet:" in report


def hint(report: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("Run a chapter's script"))


def test_the_hint_names_the_script_of_the_graded_folder(tmp_path, monkeypatch):
    """Not always exercises/ch01/ex1_bpe.py: the first exercise not passed, in the folder graded,
    relative to the working folder when inside it (as a student types it), else absolute."""
    monkeypatch.chdir(REPO)
    results = [Result(1, 1, "get_pair_counts", "pass"), Result(5, 6, "prompt_and_answer_loss", "fail", "wrong")]
    assert "(python exercises/ch05/ex2_experiments.py)" in hint(format_report(REPO / "exercises", results))
    assert "(python solutions/ch05/ex2_experiments.py)" in hint(format_report(REPO / "solutions", results))
    results[1] = Result(5, 2, "encode_example", "unfinished", "to do")
    assert "(python solutions/ch05/ex1_sft.py)" in hint(format_report(REPO / "solutions", results))
    student = tmp_path / "hw alice"  # outside the working folder, with a space: absolute and quoted
    shutil.copytree(REPO / "exercises" / "ch05", student / "ch05")
    assert f"(python '{student.resolve() / 'ch05' / 'ex1_sft.py'}')" in hint(format_report(student, results))
    monkeypatch.chdir(tmp_path)
    assert "(python 'hw alice/ch05/ex1_sft.py')" in hint(format_report(student, results))
    assert "exercises/" not in hint(format_report(student, results))


def test_a_students_copy_is_graded_exercise_by_exercise(tmp_path):
    """Chapter 3 copy: 3.2 solved, 3.3 wrong, the rest untouched; then a syntax error."""
    student = tmp_path / "alice"
    shutil.copytree(REPO / "exercises" / "ch03", student / "ch03")
    script = student / "ch03" / "ex1_gpt.py"
    solution = (REPO / "solutions" / "ch03" / "ex1_gpt.py").read_text()
    text = script.read_text()
    start = solution.index("def count_parameters")
    end = solution.index("\ndef ", start + 1)
    text = text.replace(text[text.index("def count_parameters"):text.index("\ndef ", text.index("def count_parameters") + 1)],
                        solution[start:end])
    text = text.replace('raise NotImplementedError("Exercise 3.3: set all but the k largest logits to -inf in top_k_filter")',
                        "return logits")
    script.write_text(text)
    results = {r.label: r for r in grade(student, [3])}
    assert results["3.2"].status == "pass"
    assert results["3.3"].status == "fail"
    # The reason (the failed check's first line) names the call, what it returned and what was expected.
    assert results["3.3"].reason == ("top_k_filter(tensor([[1.0, 3.0, 2.0]]), 2) returned tensor([[1.0, 3.0, 2.0]]), "
                                     "expected tensor([[-inf, 3.0, 2.0]])")
    assert results["3.1"].status == "unfinished" and results["3.4"].status == "unfinished"
    report = format_report(student, list(results.values()))
    assert f"  3.3   fail: {results['3.3'].reason}" in report.splitlines()
    assert f"(python {student.resolve() / 'ch03' / 'ex1_gpt.py'})" in hint(report)

    script.write_text("def broken(:\n")
    results = grade(student, [3])
    assert {r.status for r in results} == {"fail"}
    assert all("SyntaxError" in r.reason or "could not import" in r.reason for r in results)


def test_a_failed_check_names_its_input(tmp_path):
    """Chapter 1 with a merge that overlaps and counts that are off: each reason shows the input."""
    student = tmp_path / "bob"
    shutil.copytree(REPO / "solutions" / "ch01", student / "ch01")
    script = student / "ch01" / "ex1_bpe.py"
    text = script.read_text()
    text = text.replace("            merged.append(new_id)\n            i += 2", "            merged.append(new_id)\n            i += 1")
    text = text.replace("counts[pair] = counts.get(pair, 0) + 1", "counts[pair] = 1")
    script.write_text(text)
    results = {r.label: r for r in grade(student, [1])}
    assert results["1.1"].reason == ("get_pair_counts([1, 2, 3, 1, 2]) returned {(1, 2): 1, (2, 3): 1, (3, 1): 1}, "
                                     "expected {(1, 2): 2, (2, 3): 1, (3, 1): 1}")
    assert results["1.2"].reason == "merge([1, 2, 3, 1, 2], (1, 2), 9) returned [9, 2, 3, 9, 2], expected [9, 3, 9]"
    assert results["1.3"].status == results["1.4"].status == "pass", "graded with the reference helpers"


def test_an_answer_that_equals_anything_fails(tmp_path):
    """A merge that returns an object whose == is always True does not pass for the right list."""
    student = tmp_path / "eve"
    shutil.copytree(REPO / "solutions" / "ch01", student / "ch01")
    script = student / "ch01" / "ex1_bpe.py"
    text = script.read_text()
    cheat = ("class Anything(list):\n    def __eq__(self, other):\n        return True\n\n\n"
             "def merge(")
    script.write_text(text.replace("def merge(", cheat, 1).replace("    return merged\n", "    return Anything(merged)\n", 1))
    results = {r.label: r for r in grade(student, [1])}
    assert results["1.2"].status == "fail" and "merge([1, 2, 3, 1, 2], (1, 2), 9) returned" in results["1.2"].reason
    assert results["1.1"].status == "pass"


def test_exercise_checks_name_their_input():
    """The grader shows a failed check's first line, so every check in tests/exercises says what
    it called: checks.py's helpers (expect, check, close, ...) or an assert with a message; never
    a bare assert, torch.testing.assert_close or pytest.raises, whose first line shows only values."""
    for chapter in chapters_with_exercises():
        path = grade_module.test_file(chapter)  # (imported by name, pytest would collect it as a test)
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Assert):
                assert node.msg is not None, f"{where}: give the assert a message that names the call"
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                assert name not in ("torch.testing.assert_close", "pytest.raises"), \
                    f"{where}: use checks.close / checks.expect_raises, which name the call"


def test_a_plugin_installed_beside_pytest_does_not_change_the_grade(tmp_path, monkeypatch):
    """An installed pytest plugin (found through its entry point, as pip installs one) that would stop
    every test run: the grader runs pytest with its own plugins only, so chapter 1 still gets full marks."""
    (tmp_path / "stop_every_run.py").write_text(
        "def pytest_configure(config):\n    raise RuntimeError('a plugin the grader should not load')\n")
    metadata = tmp_path / "stop_every_run-1.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: stop-every-run\nVersion: 1.0\n")
    (metadata / "entry_points.txt").write_text("[pytest11]\nstop_every_run = stop_every_run\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the grader's pytest finds the plugin's metadata there
    results = grade(REPO / "solutions", [1])
    assert results and {r.status for r in results} == {"pass"}, [(r.label, r.reason) for r in results]


def test_command_line(tmp_path, capsys):
    # One real process, end to end; the errors in this process (test_cli checks real exit codes).
    done = subprocess.run([sys.executable, "-m", "gpt_scratch", "grade", "--chapter", "2", "--solutions"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout and "Traceback" not in done.stdout + done.stderr
    n = len(exercises_of(2))
    assert f"{n}/{n}" in done.stdout

    def run_cli(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = cli_main(["grade", *argv])
        except SystemExit as stop:
            code = stop.code
        return (code, *capsys.readouterr())

    code, _, err = run_cli("--chapter", "99")
    assert code == 2
    assert err.splitlines() == [err.strip()], "one line"
    assert err.startswith("python -m gpt_scratch grade: error: argument --chapter: invalid choice: '99'")
    code, _, err = run_cli("--dir", str(tmp_path / "nobody"))
    assert code == 2 and "is not a folder" in err
    # A folder without the chapter: the same one-line format, from the grader itself.
    code, out, err = run_cli("--dir", str(tmp_path), "--chapter", "2")
    assert code == 2 and out == ""
    assert err.splitlines() == [f"python -m gpt_scratch grade: error: {tmp_path} has no ch02/ folder; pass "
                                "the folder that holds ch01/, ch02/, ... or choose another --chapter; see --help"]


def test_errors_share_one_format(tmp_path, capsys, monkeypatch):
    """The grade command in this process (grade_command.main): every error is one line, `prog: error: message` (no usage
    block), a bad flag, folder or file exits 2 and ends with `; see --help`, a failed pytest run
    exits 1."""
    prog = "python -m gpt_scratch grade"
    (tmp_path / "points.txt").write_text("test_ex_1_1_get_pair_count = 2\n")
    for argv, words in [(["--chapter", "99"], "argument --chapter: invalid choice"),
                        (["--class", str(tmp_path / "nobody")], "argument --class: "),
                        (["--class", str(tmp_path)], f"--class {tmp_path} holds no student folder"),
                        (["--class", str(tmp_path), "--format", "gradescope"], "--format gradescope grades one"),
                        (["--out", str(tmp_path)], "--out is for --class or --format gradescope"),
                        (["--jobs", "2"], "--jobs is for --class"),
                        (["--extra-tests", str(tmp_path)], "holds no test_chNN*.py file"),
                        (["--points", str(tmp_path / "points.txt")], "line 1: 'test_ex_1_1_get_pair_count' is not "
                                                                     "the name of a test"),
                        (["--points", str(tmp_path / "nothing.txt")], "nothing.txt: No such file"),
                        (["--timeout", "0"], "argument --timeout: must be from 1 to 3600, got 0"),
                        (["--solutions", "--dir", str(tmp_path)], "argument --dir: not allowed with argument --solutions"),
                        (["--dir", str(tmp_path / "nobody")], "is not a folder"),
                        (["--dir", str(tmp_path), "--chapter", "3"], f"{tmp_path} has no ch03/ folder")]:
        try:
            code = grade_command.main(argv)
        except SystemExit as stop:
            code = stop.code
        out, err = capsys.readouterr()
        assert code == 2 and out == "", argv
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"{prog}: error: ") and words in err and err.endswith("; see --help\n"), err

    def pytest_fails(*args, **kwargs):
        raise RuntimeError("pytest could not run the exercise tests (exit 4): no tests ran")

    monkeypatch.setattr(grade_module, "run_tests", pytest_fails)
    assert grade_command.main(["--chapter", "1", "--solutions"]) == 1
    out, err = capsys.readouterr()
    assert err == f"{prog}: error: pytest could not run the exercise tests (exit 4): no tests ran\n"


def load_guard():
    spec = importlib.util.spec_from_file_location("guard_under_test", grade_module.TESTS / "guard.py")
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    return guard


def test_the_guard_names_and_undoes_changes_to_the_code_the_tests_compare_with():
    """tests/exercises/guard.py, which fails an exercise whose code changed the course's code: a
    replaced function or method, a method added to a class, a function's code swapped, a module
    swapped in sys.modules. torch's own wrapper (torch._dynamo's, around torch.manual_seed) is no
    change; a wrapper made to look like it is."""
    import torch
    import torch.nn.functional as F

    from gpt_scratch import generate, model

    guard = load_guard()
    snapshot = guard.Snapshot()
    softmax, forward, lm_loss_code = F.softmax, model.Block.forward, model.lm_loss.__code__
    try:
        F.softmax = lambda *args, **kwargs: None
        model.Block.forward = lambda self, x: x
        model.GPT.num_parameters_of_mine = lambda self: 0
        model.lm_loss.__code__ = (lambda logits, targets: 0).__code__
        sys.modules["gpt_scratch.generate"] = types.ModuleType("gpt_scratch.generate")
        changes = snapshot.changes()
    finally:
        snapshot.restore()
    assert {"torch.nn.functional.softmax", "gpt_scratch.model.Block.forward", "gpt_scratch.model.lm_loss",
            "gpt_scratch.model.GPT.num_parameters_of_mine", "sys.modules['gpt_scratch.generate']"} <= set(changes)
    assert F.softmax is softmax and model.Block.forward is forward and model.lm_loss.__code__ is lm_loss_code
    assert not hasattr(model.GPT, "num_parameters_of_mine") and sys.modules["gpt_scratch.generate"] is generate
    assert snapshot.changes() == []
    seed = torch.manual_seed
    assert guard.torchs_own_wrapper(torch._disable_dynamo(seed), seed)
    assert not guard.torchs_own_wrapper(functools.wraps(seed)(lambda value: None), seed)
