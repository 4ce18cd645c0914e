"""Run exercise tests in a pytest process of their own, watched, and read back each test's outcome.

    outcomes, broken = run_tests(Path("solutions"), [(Path("tests/exercises/test_ch01.py"), False)], timeout=60)
    outcomes[Path("tests/exercises/test_ch01.py"), "test_ex_1_2_merge"]      # ("pass", "")

The test files are copied, with the helpers beside them (conftest.py, checks.py, guard.py), into a
temporary folder that is pytest's rootdir: the tests that run are always the course's own (an
instructor's extra tests join them under a "hidden_" prefix), whatever the graded folder holds.
pytest runs there in a new process with GPT_SCRATCH_EXERCISES=<folder> (the tests import the
student's scripts from it by path), pytest's own plugins only (no plugin installed beside it changes
a grade), and writes a JUnit XML report. Each test has a time limit (conftest.py's alarm); a test
that goes on past twice that limit (it caught the alarm's error, say) or ends the process is
stopped, fails, and the other tests run again without it.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "exercises"  # the course's exercise tests and their helpers
TEST_NAME = re.compile(r"test_ex_(\d+)_(\d+)_(\w+)")  # one test per exercise; its name says which
HIDDEN = "hidden_"  # the prefix an extra test file gets in the folder pytest runs
STARTUP = 300  # seconds pytest may take to import the tests before the first one starts

Outcomes = dict[tuple[Path, str], tuple[str, str]]  # (test file, test name) -> (status, reason)


def first_line(text: str, limit: int = 200) -> str:
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def outcome(testcase: ET.Element) -> tuple[str, str]:
    """(status, reason) of one <testcase> of the JUnit report."""
    problem = next((child for child in testcase if child.tag in ("failure", "error", "skipped")), None)
    if problem is None:
        return "pass", ""
    message = first_line(problem.get("message") or problem.text or problem.tag)
    for stage in ("setup", "teardown"):  # a fixture failed, e.g. the import, or the check of the course's code
        message = message.removeprefix(f'failed on {stage} with "').removesuffix('"')
    if "NotImplementedError" in message:
        return "unfinished", message.split("NotImplementedError: ", 1)[-1]
    if problem.tag == "skipped":
        return "fail", f"skipped: {message}"
    # a failed check (assert, pytest.fail) or import (conftest's "could not import ..."): its message says it all
    message = message.removeprefix("AssertionError: ").removeprefix("Failed: ")
    if message.startswith("ImportError: could not import"):
        message = message.removeprefix("ImportError: ")
    return "fail", message


def read_report(path: Path) -> tuple[dict[tuple[str, str], tuple[str, str]], dict[str, str]]:
    """Outcomes by (test module, test name), and collection errors by test module (a test file that
    failed to import)."""
    outcomes, broken_modules = {}, {}
    for testcase in ET.parse(path).getroot().iter("testcase"):
        name, module = testcase.get("name", ""), testcase.get("classname", "").rsplit(".", 1)[-1]
        if TEST_NAME.fullmatch(name):
            outcomes[module, name] = outcome(testcase)
        else:  # pytest reports a test file that cannot be imported as a testcase named after the file
            error = next(iter(testcase), None)
            details = (error.text or "") if error is not None else ""
            last_error = [line[1:].strip() for line in details.splitlines() if line.startswith("E ")]
            broken_modules[name.rsplit(".", 1)[-1]] = first_line(last_error[-1]) if last_error else "collection failed"
    return outcomes, broken_modules


def copy_tests(where: Path, test_files: list[tuple[Path, bool]]) -> dict[str, Path]:
    """Copy the course's test helpers and the test files ((path, whether an extra test)) into
    where/tests; returns {module name in where: the test file it came from}."""
    tests = where / "tests"
    tests.mkdir()
    (where / "pytest.ini").write_text("[pytest]\n")  # this folder is pytest's rootdir: no other settings apply
    for helper in TESTS.glob("*.py"):
        if not helper.name.startswith("test_"):
            shutil.copy(helper, tests)
    modules = {}
    for path, hidden in test_files:
        module = HIDDEN + path.stem if hidden else path.stem
        shutil.copy(path, tests / f"{module}.py")
        modules[module] = path
    return modules


def stop(process: subprocess.Popen) -> None:
    """Kill pytest and whatever the student's code started."""
    if hasattr(os, "killpg"):
        os.killpg(process.pid, signal.SIGKILL)  # the process group: start_new_session made one
    else:
        process.kill()
    process.wait()


def run_pytest(command: list[str], env: dict, where: Path, timeout: int, verbose: bool) -> tuple[int, str, bool]:
    """Run pytest once, watching the test it runs (conftest.py writes each test's id to a progress
    file as it starts); kill it when one test runs past twice the time limit. Returns (exit
    code, the last test started or "", whether it was killed)."""
    progress, log = where / "progress.txt", where / "pytest.log"
    progress.write_text("")
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=where, env=dict(env, GPT_SCRATCH_PROGRESS=str(progress)),
                                   stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=hasattr(os, "killpg"))
    running, since, killed = "", time.monotonic(), False
    while process.poll() is None:
        time.sleep(0.1)
        started = progress.read_text().splitlines()
        if started and started[-1] != running:
            running, since = started[-1], time.monotonic()
        if time.monotonic() - since > (2 * timeout if running else STARTUP):
            stop(process)
            killed = True
    if verbose:
        print(log.read_text(errors="replace"))
    return process.returncode, running, killed


def run_tests(folder: Path, test_files: list[tuple[Path, bool]], timeout: int = 60,
              verbose: bool = False) -> tuple[Outcomes, dict[Path, str]]:
    """Run the test files ((path, whether an extra test)) against folder: the outcome of each test
    that ran, and why each test file that could not be imported failed."""
    env = dict(os.environ, GPT_SCRATCH_EXERCISES=str(folder.resolve()), GPT_SCRATCH_EXERCISE_TIMEOUT=str(timeout),
               PYTHONDONTWRITEBYTECODE="1",  # leave no __pycache__ in the graded folder
               # pytest's own plugins only: the grade must not depend on what else is installed (and
               # loading every installed plugin costs seconds of each grading)
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),  # tiny tensors: one thread is fastest
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="gpt-scratch-grade-") as tmp:
        where = Path(tmp)
        modules = copy_tests(where, test_files)
        report, stopped = where / "report.xml", {}  # stopped: test id -> why it failed
        while True:
            command = [sys.executable, "-m", "pytest", *[f"tests/{module}.py" for module in modules],
                       f"--junitxml={report}", "--continue-on-collection-errors", "-p", "no:cacheprovider", "-q",
                       "--tb=short", *[f"--deselect={test}" for test in stopped]]
            code, running, killed = run_pytest(command, env, where, timeout, verbose)
            if report.is_file():
                break
            if not running or running in stopped:
                raise RuntimeError(f"pytest could not run the exercise tests (exit {code}): "
                                   f"{first_line((where / 'pytest.log').read_text(errors='replace'))}; "
                                   "run with --verbose to see everything")
            stopped[running] = (f"took longer than {timeout} s and went on after the time limit; stopped" if killed
                                else f"the test process ended (exit {code}) during this exercise: os._exit? a crash?")
        by_module, broken_modules = read_report(report)
    outcomes = {(modules[module], name): result for (module, name), result in by_module.items() if module in modules}
    for test, reason in stopped.items():  # "tests/test_ch03.py::test_ex_3_4_greedy_generate"
        file, _, name = test.partition("::")
        outcomes[modules[Path(file).stem], name] = ("fail", reason)
    return outcomes, {modules[module]: error for module, error in broken_modules.items() if module in modules}
