"""Grading a class, and the files an instructor keeps: the gradebook, a report per student, a
summary, Gradescope's results.json and the points file.

    python -m gpt_scratch grade --class ~/submissions --chapter 1 3 --out grades

~/submissions holds one folder per student: a copy of exercises/, only the chapters handed in, or
the scripts alone (without their chNN/ folder). Each student is graded by a pytest process of
their own (grade.grade), so that one student's crash, endless loop or sys.exit cannot touch
another's grade; a problem with one student's files is written in their row and the run goes on.
Written into grades/:
    gradebook.csv       one row per student: points per test, total, out of, notes (a chapter not
                        handed in, a file that does not import, a test stopped, ...)
    reports/NAME.txt    what the student may see: the score table with each failing check's first
                        line (an extra test's checks stay hidden)
    summary.txt         the mean, min and max points of each test and of the total (also printed)

The points file (--points) has one line for each test worth other than 1 point, by name
(# starts a comment):
    test_ex_3_1_block_forward = 2
    test_ex_3_2_gpt2_sizes = 0.5          # an extra test (--extra-tests), by its own name
"""

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from gpt_scratch.files import write_atomic
from gpt_scratch.grade import Result, chapters_with_exercises, format_report, grade, test_files_of, tests_in


def read_points(path: Path, extra_tests: Path | None) -> dict[str, float]:
    """{test name: points} from a points file (lines `test_ex_3_1_block_forward = 2`, # comments);
    ValueError naming the first bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"--points {path}: {err.strerror}") from None
    known = {f"test_ex_{c}_{n}_{task}" for chapter in chapters_with_exercises()
             for file, _ in test_files_of(chapter, extra_tests) for c, n, task in tests_in(file)}
    points = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, value = (part.strip() for part in line.partition("="))
        where = f"--points {path}, line {number}"
        if name not in known:
            raise ValueError(f"{where}: {name!r} is not the name of a test (write e.g. test_ex_1_2_merge = 2)")
        try:
            points[name] = float(value)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not a number of points") from None
        if not 0 <= points[name] < float("inf"):
            raise ValueError(f"{where}: {value} points; give a number >= 0")
    return points


def students_in(class_dir: Path, out: Path) -> list[Path]:
    """The student folders of class_dir, by name (hidden folders and the output folder left out)."""
    return sorted(path for path in class_dir.iterdir()
                  if path.is_dir() and not path.name.startswith(".") and path.resolve() != out.resolve())


def ungraded(chapters: list[int], extra_tests: Path | None, points: dict[str, float], reason: str) -> list[Result]:
    """Every test of the chapters, failed for one reason: grading could not run at all."""
    return [Result(c, n, task, "fail", reason, hidden, points.get(f"test_ex_{c}_{n}_{task}", 1.0))
            for chapter in chapters for path, hidden in test_files_of(chapter, extra_tests)
            for c, n, task in tests_in(path)]


def notes_of(results: list[Result]) -> str:
    """The problems an instructor should know of, beyond failed checks, each once:
    'ch01 not handed in; could not import ch03/ex1_gpt.py: SyntaxError: ...; 3.4: took longer than 60 s ...'."""
    notes = []
    for r in results:
        if r.status == "missing":
            note = f"ch{r.chapter:02d} not handed in"
        elif r.reason.startswith(("could not import", "the tests could not be imported", "not graded")):
            note = r.reason  # the same for every test of the file
        elif any(words in r.reason for words in ("took longer than", "the test process ended", "your code changed")):
            note = f"{r.label}: {r.reason}"
        else:
            continue
        if note not in notes:
            notes.append(note)
    return "; ".join(notes)


def gradebook_csv(rows: list[tuple[str, list[Result]]]) -> str:
    """One row per student: points per test, total, out of, notes."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["student", *[r.name for r in rows[0][1]], "total", "out of", "notes"])
    for student, results in rows:
        writer.writerow([student, *[f"{r.points:g}" for r in results], f"{sum(r.points for r in results):g}",
                         f"{sum(r.worth for r in results):g}", notes_of(results)])
    return text.getvalue()


def summary(rows: list[tuple[str, list[Result]]]) -> str:
    """The mean, min and max points of each test and of the total, over the students."""
    names = [r.name for r in rows[0][1]] + ["total"]
    worth = [r.worth for r in rows[0][1]] + [sum(r.worth for r in rows[0][1])]
    points = [[r.points for r in results] + [sum(r.points for r in results)] for _, results in rows]
    width = max(len(name) for name in names)
    lines = [f"{'test':<{width}}  out of    mean     min     max"]
    for name, out_of, column in zip(names, worth, zip(*points)):
        lines.append(f"{name:<{width}}  {out_of:>6g}  {sum(column) / len(column):>6.2f}  {min(column):>6g}  "
                     f"{max(column):>6g}")
    with_notes = sum(1 for _, results in rows if notes_of(results))
    lines.append(f"{len(rows)} students graded; {with_notes} with notes in the gradebook")
    return "\n".join(lines)


def grade_class(class_dir: Path, chapters: list[int], out: Path, timeout: int = 60, extra_tests: Path | None = None,
                points: dict[str, float] | None = None, jobs: int = 1, verbose: bool = False) -> int:
    """Grade every student folder of class_dir and write the gradebook, the reports and the summary
    into out; prints the summary. ValueError when class_dir holds no student folder."""
    points = points or {}
    students = students_in(class_dir, out)
    if not students:
        raise ValueError(f"--class {class_dir} holds no student folder; give the folder that holds one folder "
                         "per student")

    def grade_one(folder: Path) -> list[Result]:
        try:
            return grade(folder, chapters, timeout, verbose, extra_tests, points)
        except (RuntimeError, OSError) as err:  # this student's row says so; the others are graded
            return ungraded(chapters, extra_tests, points, f"not graded: {err}")

    with ThreadPoolExecutor(jobs) as pool:  # threads only wait: each student is a pytest process
        graded = list(tqdm(pool.map(grade_one, students), total=len(students), desc="grading", unit="student"))
    rows = [(folder.name, results) for folder, results in zip(students, graded)]
    write_atomic(out / "gradebook.csv", gradebook_csv(rows))
    for folder, results in zip(students, graded):
        write_atomic(out / "reports" / f"{folder.name}.txt", format_report(folder, results) + "\n")
    text = summary(rows)
    write_atomic(out / "summary.txt", text + "\n")
    print(f"{text}\nwritten: {out / 'gradebook.csv'}, {out / 'summary.txt'}, {out / 'reports'}/ (one per student)")
    return 0


def test_output(r: Result) -> str:
    return "passed" if r.status == "pass" else f"{r.status}: {r.shown_reason}"


def gradescope_results(results: list[Result], chapters: list[int]) -> dict:
    """Gradescope's autograder results: the total "score", an "output" and its "visibility", the
    "stdout_visibility", and "tests", each with "name", "score", "max_score", "output", "visibility"."""
    score, worth = sum(r.points for r in results), sum(r.worth for r in results)
    to_run = "python -m gpt_scratch grade --chapter " + " ".join(map(str, chapters))
    hidden = " (all but the hidden tests)" if any(r.hidden for r in results) else ""
    return {"score": score,
            "output": f"{score:g}/{worth:g} points. The same checks{hidden} run on your own copy: {to_run}",
            "visibility": "visible",
            "stdout_visibility": "hidden",  # pytest's own output may show a hidden test's checks
            "tests": [{"name": r.name, "score": r.points, "max_score": r.worth, "output": test_output(r),
                       "visibility": "visible"} for r in results]}


def write_gradescope(out: Path, results: list[Result], chapters: list[int]) -> Path:
    """Write out/results.json (the file Gradescope reads from /autograder/results); returns its path."""
    return write_atomic(out / "results.json", json.dumps(gradescope_results(results, chapters), indent=2) + "\n")
