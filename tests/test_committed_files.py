"""Committed notebooks and Markdown hold no path of the machine they were written on.

A notebook run on one machine stores its outputs ("runs go to /home/anna/course/runs", an
adapter.json printed with "/root/..."): on every other machine those paths are wrong, and
they tell the world a user name. Paths in committed files should be relative to the course.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# An absolute path starts a "word": not after a letter, digit, '.', '~', '/' or '-' (so
# runs/tmp/x or https://host/home/x/ are not matched). In a notebook's JSON a backslash
# is written twice, so C:\Users\ appears as C:\\Users\\.
MACHINE_PATH = re.compile(r"(?<![\w.~/-])(?:/work/|/root/|/tmp/|/home/[^/\s\"'\\]+/|/Users/[^/\s\"'\\]+/)"
                          r"|(?<![\w])[A-Za-z]:\\{1,2}Users\\{1,2}")


def tracked_files(*patterns: str) -> list[Path]:
    try:
        result = subprocess.run(["git", "ls-files", "-z", "--", *patterns], cwd=ROOT, capture_output=True,
                                text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"git is not available ({err}); this test checks the files git tracks")
    if result.returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout ({result.stderr.strip()}); this test checks the files git tracks")
    return [ROOT / name for name in result.stdout.split("\0") if name]


def machine_paths(path: Path) -> list[str]:
    """'file:line: text' for each line of path that holds an absolute machine path."""
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if MACHINE_PATH.search(line):
            text = line.strip()
            found.append(f"{path.relative_to(ROOT).as_posix()}:{number}: {text[:160]}")
    return found


@pytest.mark.parametrize("text", ['"runs go to /work/main/runs"', "cd /root/.cache", "in /tmp/x", "/home/anna/x",
                                  "'/Users/anna/course'", r'"C:\\Users\\anna\\course"', r"C:\Users\anna"])
def test_the_pattern_finds_machine_paths(text):
    assert MACHINE_PATH.search(text)


@pytest.mark.parametrize("text", ["runs/tmp/x", "https://example.com/home/x/y", "~/.cache/gpt_scratch",
                                  "runs/notebooks/ch07/adapter", "../base", "tmp_path / 'work'"])
def test_the_pattern_leaves_relative_paths_and_urls_alone(text):
    assert not MACHINE_PATH.search(text)


def test_no_committed_notebook_or_markdown_holds_a_machine_path():
    files = tracked_files("*.ipynb", "*.md")
    assert files, "git lists no notebook or Markdown file"
    offenders = [hit for path in files if path.is_file() for hit in machine_paths(path)]
    assert not offenders, ("absolute machine paths in committed files (print paths relative to the course, "
                           "or re-run the notebook after fixing what printed them):\n" + "\n".join(offenders))
