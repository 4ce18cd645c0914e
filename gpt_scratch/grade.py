"""The exercise grader: run the course's exercise tests on a student's exercises and print a score table.

    python -m gpt_scratch grade                       every chapter of exercises/ in this clone
    python -m gpt_scratch grade --chapter 3           chapter 3 only (--chapter 1 3: several)
    python -m gpt_scratch grade --dir ~/hw/alice      a student's copy: the folder that holds ch01/, ch02/, ...
    python -m gpt_scratch grade --solutions           the reference solutions (full marks)
    python -m gpt_scratch grade --class ~/hw --chapter 3 --out grades     every student folder in ~/hw
    python -m gpt_scratch grade --dir SUBMISSION --chapter 3 --format gradescope --out RESULTS_FOLDER
    python -m gpt_scratch.grade --chapter 3           the same, without the main command line

Each exercise has one test in tests/exercises/test_chNN.py, named test_ex_<chapter>_<number>_<task>
and worth one point (a points file, --points, says otherwise). An instructor's own tests
(--extra-tests DIR: files test_chNN*.py, written like the course's) count as well; the student sees
only whether each one passed. The tests run in a pytest process of their own (grade_runner.py: the
course's copy of the tests, never one from the submission), and the table has one row per test:
pass, fail (with the first line of the reason), unfinished (the function still raises
NotImplementedError) or missing (the chapter was not handed in). Tracebacks stay hidden unless you
ask for them with --verbose. An exercise that runs longer than --timeout seconds fails; the
others still count. This process never imports torch or the student's code, so grading a class
(gradebook.py) costs one pytest process per student and little more.
The exit status is 0 whenever grading worked, whatever the score; otherwise one line,
`prog: error: message`, says why (2: a bad flag, folder or file, 1: pytest could not run).
"""

import argparse
import ast
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from gpt_scratch.args import OneLineParser, int_range, print_error
from gpt_scratch.grade_runner import REPO, TEST_NAME, TESTS, run_tests
from gpt_scratch.settings import add_flags, from_flags, setting


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


def existing_folder(text: str) -> Path:
    """argparse type for --dir, --class and --extra-tests: a folder that exists."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return path


CHAPTERS = [str(chapter) for chapter in chapters_with_exercises()]


@dataclass
class GradeOptions:
    """What the grader grades (one copy of exercises/, the solutions, or a class) and how it reports."""
    chapter: list[str] = setting(["all"], f"the chapters to grade ({CHAPTERS[0]} to {CHAPTERS[-1]}), or all",
                                 choices=CHAPTERS + ["all"], nargs="+", metavar="N", preset=False)
    solutions: bool = setting(False, "grade solutions/ (the reference: full marks)", exclusive="source", preset=False)
    dir: Path | None = setting(None, "grade this folder (the one holding ch01/, ch02/, ...) instead of exercises/",
                               type=existing_folder, exclusive="source", preset=False)
    class_dir: Path | None = setting(None, "grade every student folder in SUBMISSIONS (each like --dir's) and write "
                                           "a gradebook", type=existing_folder, flag="--class", metavar="SUBMISSIONS",
                                     exclusive="source", preset=False)
    extra_tests: Path | None = setting(None, "also run the instructor's tests in DIR (test_chNN*.py); students see "
                                             "only pass/fail", type=existing_folder, metavar="DIR", preset=False)
    points: Path | None = setting(None, "a file of points per test, lines like test_ex_3_1_block_forward = 2 "
                                        "(default: 1 each)", type=Path, metavar="FILE", preset=False)
    format: str = setting("table", "table: print the score table; gradescope: write results.json for Gradescope's "
                                   "autograder", choices=("table", "gradescope"), preset=False)
    out: Path | None = setting(None, "where --class writes the gradebook (default grades) and --format gradescope "
                                     "its results.json (default: the working folder)", type=Path, metavar="DIR",
                               preset=False)
    timeout: int = setting(60, "seconds one exercise's test may run before it fails", type=int_range(1, 3600),
                           preset=False)
    jobs: int | None = setting(None, "with --class: grade this many students at once (default 1)",
                               type=int_range(1, 256), preset=False)
    verbose: bool = setting(False, "also print pytest's full output, tracebacks included", preset=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, GradeOptions)
    parser.set_defaults(grade_prog=parser.prog)  # run() names the command in its error lines


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


def run(args: argparse.Namespace) -> int:
    """Grade as the flags say: print the table (or write Gradescope's file, or a class's
    gradebook); 0 when grading worked, whatever the score, else one error line
    (`prog: error: message`) and 2 (a bad flag, folder or file) or 1."""
    from gpt_scratch import gradebook  # (it imports this module)

    prog = getattr(args, "grade_prog", "python -m gpt_scratch grade")
    options = from_flags(GradeOptions, args)
    chapters = chapters_with_exercises() if "all" in options.chapter else sorted({int(c) for c in options.chapter})
    folder = options.dir or REPO / ("solutions" if options.solutions else "exercises")
    try:
        if options.class_dir is not None and options.format == "gradescope":
            raise ValueError("--format gradescope grades one submission (Gradescope runs the autograder once "
                             "per student): use it with --dir")
        if options.out is not None and options.class_dir is None and options.format != "gradescope":
            raise ValueError("--out is for --class or --format gradescope; the table is printed")
        if options.jobs is not None and options.class_dir is None:
            raise ValueError("--jobs is for --class (one student is graded by one process)")
        if options.extra_tests is not None:
            check_extra_tests(options.extra_tests)
        points = gradebook.read_points(options.points, options.extra_tests) if options.points else {}
        missing = [c for c in chapters if not handed_in(folder, c)]
        if options.class_dir is None and options.format == "table" and missing:  # a typing error, most likely
            what = (f"has no ch{missing[0]:02d}/ folder" if not (folder / f"ch{missing[0]:02d}").is_dir()
                    else f"has no {' or '.join(scripts_of(missing[0]))} in ch{missing[0]:02d}/")
            raise ValueError(f"{folder} {what}; pass the folder that holds ch01/, ch02/, ... or choose another "
                             "--chapter")
        if options.class_dir is not None:
            return gradebook.grade_class(options.class_dir, chapters, options.out or Path("grades"), options.timeout,
                                         options.extra_tests, points, options.jobs or 1, options.verbose)
        results = grade(folder, chapters, options.timeout, options.verbose, options.extra_tests, points)
    except ValueError as err:  # a bad flag, folder or file
        print_error(prog, f"{err}; see --help")
        return 2
    except RuntimeError as err:
        print_error(prog, str(err))
        return 1
    if options.format == "gradescope":
        path = gradebook.write_gradescope(options.out or Path("."), results, chapters)
        print(f"{path}: {sum(r.points for r in results):g}/{sum(r.worth for r in results):g} points")
    else:
        print(format_report(folder, results))
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m gpt_scratch.grade") -> int:
    parser = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
