"""Grading one copy of the exercises: run the course's exercise tests on it and make a score table.

    results = grade(Path("exercises"), chapters=[3], timeout=60)   # one Result per test
    print(format_report(Path("exercises"), results))

Each exercise has one test in tests/exercises/test_chNN.py, named test_ex_<chapter>_<number>_<task>
and worth one point (a points file, --points, says otherwise). An instructor's own tests
(--extra-tests DIR: files test_chNN*.py, written like the course's) count as well; the student sees
only whether each one passed. The tests run in a pytest process of their own (grade_runner.py: the
course's copy of the tests, never one from the submission), and the table has one row per test:
pass, fail (with the first line of the reason), unfinished (the function still raises
NotImplementedError) or missing (the chapter was not handed in). Tracebacks stay hidden unless you
ask for them with --verbose. An exercise that runs longer than --timeout seconds fails; the
others still count. This process never imports torch or the student's code, so grading a class
(gradebook.py) costs one pytest process per student and little more. The command that drives both
is grade_command.py (python -m gpt_scratch grade).
"""

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from gpt_scratch.grade_runner import REPO, TEST_NAME, TESTS, run_tests


@dataclass
class Result:
    chapter: int
    number: int
    task: str
    status: str  # "pass", "fail", "unfinished" or "missing"
    reason: str = ""  # one line: what failed, or what is left to do
    hidden: bool = False  # an instructor's extra test: the student sees only pass or fail
    worth: float = 1.0  # points when passed

    @property
    def label(self) -> str:
        return f"{self.chapter}.{self.number}"

    @property
    def name(self) -> str:
        """'3.2 count_parameters', or '3.2 gpt2_sizes (hidden)' for an extra test."""
        return f"{self.label} {self.task}" + (" (hidden)" if self.hidden else "")

    @property
    def points(self) -> float:
        return self.worth if self.status == "pass" else 0.0

    @property
    def shown_reason(self) -> str:
        """The reason as the student may see it: none for a failed hidden test."""
        if self.hidden and self.status == "fail":
            return "a hidden test (its checks are not shown)"
        return self.reason


def chapters_with_exercises() -> list[int]:
    """The chapters that have a tests/exercises/test_chNN.py."""
    return sorted(int(path.stem.removeprefix("test_ch")) for path in TESTS.glob("test_ch[0-9][0-9].py"))


def test_file(chapter: int) -> Path:
    return TESTS / f"test_ch{chapter:02d}.py"


def tests_in(path: Path) -> list[tuple[int, int, str]]:
    """(chapter, number, task) for each test_ex_ function of a test file, read without importing
    it, so that a file whose tests cannot even be imported still lists them."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in tree.body:
        match = TEST_NAME.fullmatch(node.name) if isinstance(node, ast.FunctionDef) else None
        if match:
            found.append((int(match[1]), int(match[2]), match[3]))
    return found


def exercises_of(chapter: int) -> list[tuple[int, int, str]]:
    return tests_in(test_file(chapter))


def extra_test_files(folder: Path | None, chapter: int) -> list[Path]:
    """The instructor's extra tests of a chapter: folder/test_chNN*.py."""
    return sorted(folder.glob(f"test_ch{chapter:02d}*.py")) if folder is not None else []


def test_files_of(chapter: int, extra_tests: Path | None) -> list[tuple[Path, bool]]:
    """The test files that grade a chapter, each with whether it is an extra (hidden) one."""
    return [(test_file(chapter), False)] + [(path, True) for path in extra_test_files(extra_tests, chapter)]


def check_extra_tests(folder: Path) -> None:
    """ValueError naming the first problem of an extra-tests folder: a file that does not parse, or
    a test named after no exercise of its chapter or after one of the course's own tests."""
    files = sorted(folder.glob("test_ch[0-9][0-9]*.py"))
    if not files:
        raise ValueError(f"--extra-tests {folder} holds no test_chNN*.py file (e.g. test_ch03_hidden.py)")
    for path in files:
        chapter = int(path.name[7:9])
        try:
            tests = tests_in(path)
        except SyntaxError as err:
            raise ValueError(f"{path} does not parse: {err}") from None
        if not tests:
            raise ValueError(f"{path} holds no test_ex_<chapter>_<number>_<name> function")
        exercises = {(c, n): task for c, n, task in exercises_of(chapter)} if test_file(chapter).is_file() else {}
        for c, number, task in tests:
            if (c, number) not in exercises:
                raise ValueError(f"{path}: test_ex_{c}_{number}_{task} names no exercise of chapter {chapter}")
            if exercises[c, number] == task:
                raise ValueError(f"{path}: test_ex_{c}_{number}_{task} has the name of the course's own test; "
                                 "give it another")


def scripts_of(chapter: int) -> list[str]:
    """The file names of a chapter's exercise scripts, e.g. ['ex1_gpt.py']."""
    return [path.name for path in sorted((REPO / "exercises" / f"ch{chapter:02d}").glob("*.py"))]


def handed_in(folder: Path, chapter: int) -> bool:
    """Whether folder holds one of the chapter's scripts, in chNN/ or (uploaded without it) at the top."""
    return any((folder / f"ch{chapter:02d}" / name).is_file() or (folder / name).is_file()
               for name in scripts_of(chapter))


def grade(folder: Path, chapters: list[int], timeout: int = 60, verbose: bool = False,
          extra_tests: Path | None = None, points: dict[str, float] | None = None) -> list[Result]:
    """Grade the chapters of folder; one Result per test, in order: each chapter's exercises, then
    its extra tests. A chapter not handed in is "missing" (and runs nothing)."""
    present = [chapter for chapter in chapters if handed_in(folder, chapter)]
    test_files = {chapter: test_files_of(chapter, extra_tests) for chapter in chapters}
    outcomes, broken_files = {}, {}
    if present:
        outcomes, broken_files = run_tests(folder, [file for c in present for file in test_files[c]], timeout, verbose)
    results = []
    for chapter in chapters:
        for path, hidden in test_files[chapter]:
            for ch, number, task in tests_in(path):
                name = f"test_ex_{ch}_{number}_{task}"
                if chapter not in present:
                    status, reason = "missing", f"no ch{chapter:02d}/{' or '.join(scripts_of(chapter))} handed in"
                elif (path, name) in outcomes:
                    status, reason = outcomes[path, name]
                else:
                    broken = broken_files.get(path)
                    status, reason = "fail", (f"the tests could not be imported: {broken}" if broken else "did not run")
                if status == "unfinished":  # "Exercise 1.2: merge ..." -> "merge ..." when it names this exercise
                    reason = reason.removeprefix(f"Exercise {ch}.{number}: ")
                results.append(Result(ch, number, task, status, reason, hidden, (points or {}).get(name, 1.0)))
    return results


def as_typed(path: Path) -> str:
    """path as a student would type it: relative to the working folder when inside it, else absolute."""
    path = path.resolve()
    try:
        return shlex.quote(str(path.relative_to(Path.cwd().resolve())))
    except ValueError:
        return shlex.quote(str(path))


def script_of(folder: Path, chapter: int, number: int) -> Path:
    """The graded folder's script of exercise chapter.number: the one whose text names it
    ("Exercise 3.2"), else the chapter's first script, else the chapter folder."""
    scripts = sorted((folder / f"ch{chapter:02d}").glob("*.py"))
    scripts = scripts or [folder / name for name in scripts_of(chapter) if (folder / name).is_file()]
    named = re.compile(rf"\bExercise {chapter}\.{number}\b")
    for script in scripts:
        try:
            if named.search(script.read_text(encoding="utf-8", errors="replace")):
                return script
        except OSError:
            continue
    return scripts[0] if scripts else folder / f"ch{chapter:02d}"


def format_report(folder: Path, results: list[Result]) -> str:
    """The score table, a total per chapter and overall, and one line per test not passed (a
    hidden test's reason stays hidden: this is what the student sees)."""
    width = max(len("task"), *(len(r.task) + len(" (hidden)") * r.hidden for r in results))
    lines = [f"Grading {folder}", "",
             f"{'exercise':<9} {'task':<{width}}  {'status':<10}  points",
             f"{'-' * 9} {'-' * width}  {'-' * 10}  ------"]
    for r in results:
        task = r.task + (" (hidden)" if r.hidden else "")
        lines.append(f"{r.label:<9} {task:<{width}}  {r.status:<10}  {r.points:g}/{r.worth:g}")
    total, worth = sum(r.points for r in results), sum(r.worth for r in results)
    lines.append(f"{'total':<9} {'':<{width}}  {'':<10}  {total:g}/{worth:g}")
    chapters = sorted({r.chapter for r in results})
    if len(chapters) > 1:
        per_chapter = [f"ch{c:02d} {sum(r.points for r in results if r.chapter == c):g}/"
                       f"{sum(r.worth for r in results if r.chapter == c):g}" for c in chapters]
        lines.append("by chapter: " + ", ".join(per_chapter))
    not_passed = [r for r in results if r.status != "pass"]
    if not_passed:
        lines += ["", "Not passed yet:"]
        lines += [f"  {r.label:<5} {r.status}: {r.shown_reason}" for r in not_passed]
    to_try = [r for r in not_passed if r.status != "missing"]
    if to_try:
        lines.append(f"Run a chapter's script to try your functions (python "
                     f"{as_typed(script_of(folder, to_try[0].chapter, to_try[0].number))}), "
                     "and grade with --verbose to see the full test output.")
    return "\n".join(lines)
