"""The grade command: one copy of the exercises (grade.py), a whole class (gradebook.py) or Gradescope's file.

    python -m gpt_scratch grade                       every chapter of exercises/ in this clone
    python -m gpt_scratch grade --chapter 3           chapter 3 only (--chapter 1 3: several)
    python -m gpt_scratch grade --dir ~/hw/alice      a student's copy: the folder that holds ch01/, ch02/, ...
    python -m gpt_scratch grade --solutions           the reference solutions (full marks)
    python -m gpt_scratch grade --class ~/hw --chapter 3 --out grades     every student folder in ~/hw
    python -m gpt_scratch grade --dir SUBMISSION --chapter 3 --format gradescope --out RESULTS_FOLDER

The exit status is 0 whenever grading worked, whatever the score; otherwise one line,
`prog: error: message`, says why (2: a bad flag, folder or file, 1: pytest could not run).
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

from gpt_scratch import gradebook
from gpt_scratch.args import OneLineParser, int_range, print_error
from gpt_scratch.grade import (REPO, chapters_with_exercises, check_extra_tests, format_report, grade, handed_in,
                               scripts_of)
from gpt_scratch.settings import add_flags, from_flags, setting


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


def run(args: argparse.Namespace) -> int:
    """Grade as the flags say: print the table (or write Gradescope's file, or a class's
    gradebook); 0 when grading worked, whatever the score, else one error line
    (`prog: error: message`) and 2 (a bad flag, folder or file) or 1."""
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


def main(argv: list[str] | None = None, prog: str = "python -m gpt_scratch grade") -> int:
    """The command in this process, as a script or a test calls it: main(["--chapter", "3"])."""
    parser = OneLineParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
