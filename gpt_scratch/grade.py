"""The exercise grader: run the exercise tests on a folder of exercises and print a score table.

    python -m gpt_scratch grade                       every chapter of exercises/ in this clone
    python -m gpt_scratch grade --chapter 3           chapter 3 only
    python -m gpt_scratch grade --dir ~/hw/alice      a student's copy: the folder that holds ch01/, ch02/, ...
    python -m gpt_scratch grade --solutions           the reference solutions (full marks)
    python -m gpt_scratch.grade --chapter 3           the same, without the main command line

Each exercise has one test in tests/exercises/test_chNN.py, named test_ex_<chapter>_<number>_<task>
and worth one point. The grader runs pytest on those files in a subprocess with
GPT_SCRATCH_EXERCISES=<folder> (the tests import the student's scripts from there by path) and
pytest's own plugins only (no plugin installed beside it changes a grade), reads each test's
outcome from pytest's JUnit XML report and prints one row per exercise: pass, fail (with the
first line of the reason) or unfinished (the function still raises NotImplementedError).
Tracebacks stay hidden unless you ask for them with --verbose.
An exercise that runs longer than --timeout seconds fails on its own; the others still count.
The exit status is 0 whenever grading worked, whatever the score; otherwise one line,
`prog: error: message`, says why (2: a bad flag or folder, 1: pytest could not run).
"""

import argparse
import ast
import os
import re
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from gpt_scratch.args import OneLineParser, int_range, print_error

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "exercises"
TEST_NAME = re.compile(r"test_ex_(\d+)_(\d+)_(\w+)")


@dataclass
class Result:
    chapter: int
    number: int
    task: str
    status: str  # "pass", "fail" or "unfinished"
    reason: str = ""  # one line: what failed, or what is left to do

    @property
    def label(self) -> str:
        return f"{self.chapter}.{self.number}"

    @property
    def points(self) -> int:
        return 1 if self.status == "pass" else 0


def chapters_with_exercises() -> list[int]:
    """The chapters that have a tests/exercises/test_chNN.py."""
    return sorted(int(path.stem.removeprefix("test_ch")) for path in TESTS.glob("test_ch[0-9][0-9].py"))


def test_file(chapter: int) -> Path:
    return TESTS / f"test_ch{chapter:02d}.py"


def exercises_of(chapter: int) -> list[tuple[int, int, str]]:
    """(chapter, number, task) for each test function of the chapter, read without importing it,
    so that a chapter whose tests cannot even be imported still lists its exercises."""
    tree = ast.parse(test_file(chapter).read_text(encoding="utf-8"))
    found = []
    for node in tree.body:
        match = TEST_NAME.fullmatch(node.name) if isinstance(node, ast.FunctionDef) else None
        if match:
            found.append((int(match[1]), int(match[2]), match[3]))
    return found


def existing_folder(text: str) -> Path:
    """argparse type for --dir: a folder that exists."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder; give the folder that holds ch01/, ch02/, ...")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    chapters = [str(chapter) for chapter in chapters_with_exercises()]
    parser.add_argument("--chapter", choices=chapters + ["all"], default="all",
                        help="the chapter to grade, or all (default all)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--solutions", action="store_true", help="grade solutions/ (the reference: full marks)")
    source.add_argument("--dir", type=existing_folder,
                        help="grade this folder (the one holding ch01/, ch02/, ...) instead of exercises/")
    parser.add_argument("--timeout", type=int_range(1, 3600), default=60,
                        help="seconds one exercise's test may run before it fails (default 60)")
    parser.add_argument("--verbose", action="store_true", help="also print pytest's full output, tracebacks included")
    parser.set_defaults(grade_prog=parser.prog)  # run() names the command in its error lines


def first_line(text: str, limit: int = 200) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def outcome(testcase: ET.Element) -> tuple[str, str]:
    """(status, reason) of one <testcase> of the JUnit report."""
    problem = next((child for child in testcase if child.tag in ("failure", "error", "skipped")), None)
    if problem is None:
        return "pass", ""
    message = first_line(problem.get("message") or problem.text or problem.tag)
    message = message.removeprefix('failed on setup with "').removesuffix('"')  # a fixture failed, e.g. the import
    if "NotImplementedError" in message:
        return "unfinished", message.split("NotImplementedError: ", 1)[-1]
    if problem.tag == "skipped":
        return "fail", f"skipped: {message}"
    if problem.tag == "failure":  # a failed check (assert, pytest.fail): its own message says what went wrong
        message = message.removeprefix("AssertionError: ").removeprefix("Failed: ")
    return "fail", message


def read_report(path: Path) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Outcomes by test name, and collection errors by test module (a test file that failed to import)."""
    outcomes, broken_modules = {}, {}
    for testcase in ET.parse(path).getroot().iter("testcase"):
        name = testcase.get("name", "")
        if TEST_NAME.fullmatch(name):
            outcomes[name] = outcome(testcase)
        else:  # pytest reports a test file that cannot be imported as a testcase named after the file
            error = next(iter(testcase), None)
            details = (error.text or "") if error is not None else ""
            last_error = [line[1:].strip() for line in details.splitlines() if line.startswith("E ")]
            broken_modules[name.rsplit(".", 1)[-1]] = first_line(last_error[-1]) if last_error else "collection failed"
    return outcomes, broken_modules


def run_tests(folder: Path, chapters: list[int], timeout: int, verbose: bool, report: Path) -> None:
    """Run pytest on the chapters' exercise tests against folder, writing a JUnit XML report."""
    command = [sys.executable, "-m", "pytest", *[str(test_file(chapter)) for chapter in chapters],
               f"--junitxml={report}", "--continue-on-collection-errors", "-p", "no:cacheprovider",
               "-o", "addopts=", "-q", "--tb=short", "--rootdir", str(REPO)]
    env = dict(os.environ, GPT_SCRATCH_EXERCISES=str(folder.resolve()), GPT_SCRATCH_EXERCISE_TIMEOUT=str(timeout),
               PYTHONDONTWRITEBYTECODE="1",  # leave no __pycache__ in the graded folder
               # pytest's own plugins only: the grade must not depend on what else is installed (and
               # loading every installed plugin costs seconds of each grading)
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),  # tiny tensors: one thread is fastest
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    n_tests = sum(len(exercises_of(chapter)) for chapter in chapters)
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout * n_tests + 120)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the exercise tests did not finish within {timeout * n_tests + 120} s") from None
    if verbose:
        print(done.stdout + done.stderr)
    if not report.is_file():
        raise RuntimeError(f"pytest could not run the exercise tests (exit {done.returncode}): "
                           f"{first_line(done.stderr or done.stdout)}; run with --verbose to see everything")


def grade(folder: Path, chapters: list[int], timeout: int = 60, verbose: bool = False) -> list[Result]:
    """Grade the chapters of folder; one Result per exercise, in order."""
    missing = [chapter for chapter in chapters if not (folder / f"ch{chapter:02d}").is_dir()]
    if missing:
        raise FileNotFoundError(f"{folder} has no ch{missing[0]:02d}/ folder; pass the folder that holds "
                                f"ch01/, ch02/, ... or choose another --chapter")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        run_tests(folder, chapters, timeout, verbose, report)
        outcomes, broken_modules = read_report(report)
    results = []
    for chapter in chapters:
        for ch, number, task in exercises_of(chapter):
            name = f"test_ex_{ch}_{number}_{task}"
            if name in outcomes:
                status, reason = outcomes[name]
            else:
                broken = broken_modules.get(test_file(chapter).stem)
                status, reason = "fail", (f"the tests could not be imported: {broken}" if broken else "did not run")
            if status == "unfinished":  # "Exercise 1.2: merge ..." -> "merge ..." when it names this exercise
                reason = reason.removeprefix(f"Exercise {ch}.{number}: ")
            results.append(Result(ch, number, task, status, reason))
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
    named = re.compile(rf"\bExercise {chapter}\.{number}\b")
    for script in scripts:
        try:
            if named.search(script.read_text(encoding="utf-8", errors="replace")):
                return script
        except OSError:
            continue
    return scripts[0] if scripts else folder / f"ch{chapter:02d}"


def format_report(folder: Path, results: list[Result]) -> str:
    """The score table, a total per chapter and overall, and one line per exercise not passed."""
    width = max(len("task"), *(len(r.task) for r in results))
    lines = [f"Grading {folder}", "",
             f"{'exercise':<9} {'task':<{width}}  {'status':<10}  points",
             f"{'-' * 9} {'-' * width}  {'-' * 10}  ------"]
    for r in results:
        lines.append(f"{r.label:<9} {r.task:<{width}}  {r.status:<10}  {r.points}/1")
    total = sum(r.points for r in results)
    lines.append(f"{'total':<9} {'':<{width}}  {'':<10}  {total}/{len(results)}")
    chapters = sorted({r.chapter for r in results})
    if len(chapters) > 1:
        per_chapter = [f"ch{c:02d} {sum(r.points for r in results if r.chapter == c)}/"
                       f"{sum(1 for r in results if r.chapter == c)}" for c in chapters]
        lines.append("by chapter: " + ", ".join(per_chapter))
    not_passed = [r for r in results if r.status != "pass"]
    if not_passed:
        lines += ["", "Not passed yet:"]
        lines += [f"  {r.label:<5} {r.status}: {r.reason}" for r in not_passed]
        first = not_passed[0]
        lines.append(f"Run a chapter's script to try your functions (python "
                     f"{as_typed(script_of(folder, first.chapter, first.number))}), "
                     "and grade with --verbose to see the full test output.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Grade as the flags say and print the table; 0 when grading worked, whatever the score,
    else one error line (`prog: error: message`) and 2 (a folder without the chapter) or 1."""
    prog = getattr(args, "grade_prog", "python -m gpt_scratch grade")
    if args.dir is not None:
        folder = args.dir
    else:
        folder = REPO / ("solutions" if args.solutions else "exercises")
    chapters = chapters_with_exercises() if args.chapter == "all" else [int(args.chapter)]
    try:
        results = grade(folder, chapters, args.timeout, args.verbose)
    except FileNotFoundError as err:  # the folder given does not hold the chapter: a bad flag
        print_error(prog, f"{err}; see --help")
        return 2
    except RuntimeError as err:
        print_error(prog, str(err))
        return 1
    print(format_report(folder, results))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m gpt_scratch.grade", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
