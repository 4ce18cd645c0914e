"""The grader: full marks for solutions/, a clean zero for the untouched exercises/, and a
student's broken or half-done copy graded exercise by exercise, never a traceback."""

import shutil
import subprocess
import sys

import pytest

from gpt_scratch.grade import REPO, chapters_with_exercises, exercises_of, format_report, grade


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
    assert results["3.3"].status == "fail" and results["3.3"].reason
    assert results["3.1"].status == "unfinished" and results["3.4"].status == "unfinished"

    script.write_text("def broken(:\n")
    results = grade(student, [3])
    assert {r.status for r in results} == {"fail"}
    assert all("SyntaxError" in r.reason or "could not import" in r.reason for r in results)


def test_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gpt_scratch", "grade", "--chapter", "2", "--solutions"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "total" in done.stdout and "Traceback" not in done.stdout + done.stderr
    n = len(exercises_of(2))
    assert f"{n}/{n}" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "gpt_scratch", "grade", "--chapter", "99"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--chapter" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "gpt_scratch", "grade", "--dir", str(tmp_path / "nobody")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "is not a folder" in missing.stderr
