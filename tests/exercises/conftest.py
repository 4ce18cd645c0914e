"""Shared pieces of the exercise tests, which grade a folder of exercise scripts.

These tests run only when GPT_SCRATCH_EXERCISES names the folder to grade (the one holding
ch01/, ch02/, ...); the grader sets it:
    python -m gpt_scratch grade --chapter 1            (or by hand:)
    GPT_SCRATCH_EXERCISES=solutions python -m pytest tests/exercises/test_ch01.py
The normal test run (`python -m pytest`) does not collect them: untouched exercises fail on
purpose. Each test function grades one exercise: test_ex_<chapter>_<number>_<task>.

A script is found as <folder>/chNN/<script>.py, or as <folder>/<script>.py when the files were
handed in without their chapter folder (as an autograder receives an upload). The student's code
runs in this process, beside the code it is compared with: guard.py notices when it changes that
code, and the exercise concerned fails.
"""

import importlib.util
import os
import signal
from pathlib import Path

import pytest

from guard import Snapshot

FOLDER = os.environ.get("GPT_SCRATCH_EXERCISES")
TIME_LIMIT = int(os.environ.get("GPT_SCRATCH_EXERCISE_TIMEOUT", "60"))  # seconds per exercise
PROGRESS = os.environ.get("GPT_SCRATCH_PROGRESS")  # a file the grader reads: the test now running

if not FOLDER:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def course_code() -> Snapshot:
    """The code the tests compare with, as it was before any student's code ran."""
    return Snapshot()


@pytest.fixture(scope="session")
def load_exercise(course_code):
    """load_exercise("ch01/ex1_bpe.py") -> the module imported from the graded folder, by path."""
    loaded = {}

    def load(relative_path: str):
        if not FOLDER:
            pytest.skip("set GPT_SCRATCH_EXERCISES to the folder to grade (or use python -m gpt_scratch grade)")
        path = Path(FOLDER) / relative_path
        if not path.is_file() and (Path(FOLDER) / path.name).is_file():  # handed in without its chNN/ folder
            path = Path(FOLDER) / path.name
        if relative_path not in loaded:
            if not path.is_file():
                raise FileNotFoundError(f"no {relative_path} in {FOLDER}")
            name = "graded_" + relative_path.replace("/", "_").removesuffix(".py")
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as err:  # e.g. a syntax error: one line that names the file and the problem
                raise ImportError(f"could not import {relative_path}: {type(err).__name__}: {err}") from err
            changed = course_code.changes()
            if changed:  # every exercise of the script fails: each test imports it again, and fails again
                course_code.restore()
                raise ImportError(f"could not import {relative_path}: importing it changes {changed[0]}, "
                                  "which the tests compare your code with; leave the course's code as it is")
            loaded[relative_path] = module
        return loaded[relative_path]

    return load


@pytest.fixture(autouse=True)
def time_limit(request):
    """Fail an exercise that runs longer than TIME_LIMIT seconds (an endless loop) instead of hanging.
    The grader also stops the whole run when a test ignores this limit (it catches the error, say):
    the progress file tells it which test that was."""
    if PROGRESS:
        with open(PROGRESS, "a", encoding="utf-8") as progress:
            progress.write(request.node.nodeid + "\n")
    if not hasattr(signal, "SIGALRM"):  # Windows has no alarm signal; the grader's overall timeout remains
        yield
        return

    def too_slow(signum, frame):
        raise TimeoutError(f"took longer than {TIME_LIMIT} s; is there an endless loop?")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(TIME_LIMIT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def course_code_unchanged(course_code):
    """Fail the exercise during whose test the student's code changed the code the tests compare
    with (and put that code back, for the next test)."""
    yield
    changed = course_code.changes()
    if changed:
        course_code.restore()
        pytest.fail(f"your code changed {changed[0]}, which the tests compare your code with; leave the "
                    "course's code as it is", pytrace=False)
