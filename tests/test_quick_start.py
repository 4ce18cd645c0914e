"""The README's quick start: exactly two commands, the main job and the tests, and CI runs the second."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands(readme: str) -> list[str]:
    """The commands of the first code block after the line that says **Quick start** (comments dropped)."""
    after = readme.split("**Quick start**", 1)[1]
    block = re.search(r"```bash\n(.*?)```", after, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.split("#", 1)[0].strip()]


def test_the_quick_start_is_the_main_job_and_the_tests():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "**Quick start**" in readme.split("## Chapters", 1)[0], "the quick start belongs on the first screen"
    assert quick_start_commands(readme) == ["python -m gpt_scratch run", "python -m pytest"]


def test_ci_runs_the_quick_starts_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^pip install -r requirements.txt && python -m pytest$", ci, re.M), ci
