"""What a user reads speaks of the course, never of how the course was made.

Checked: every tracked Markdown file, the markdown cells of every tracked notebook, and the prose
of the course's Python (every string literal with a space in it: docstrings, printed messages,
`--help` texts) outside tests/. Code in backticks is a name, not prose, and is skipped.

FORBIDDEN holds the phrases that belong to the making of the course: a numbered or "this / the
previous" stop, a session, an issue, done-when, a goal called a target ("the 97% target", "the
target was not reached"), a budget, a prototype, a helper engineer, "this virtual machine", a
preset or setting dated as today's / earlier / previous, "now judges", "not yet measured", "an
earlier run", the heading "What was measured and left". A result is stated as a result instead,
with its "Measured on" line.

The words have real uses too, and those stay: "target" is a training target, a target token, a KL
target, a LoRA target layer (so only a target that is a goal is forbidden); "stop" is what
generation does at the end-of-text, and early stopping; "budget" is a prompt's token budget
(ALLOWED). Add a phrase to FORBIDDEN or ALLOWED here, with a test below, when a new one appears.
"""

import ast
import json
import re
from pathlib import Path

import pytest

from test_committed_files import tracked_files
from tiny import REPO

FORBIDDEN = [
    r"\bstops? \d+",                                                      # stop 24
    r"\b(this|that|each|every|next|previous|earlier|later|last) stop('s)?\b(?! (at|when|on|generating|pulling))",
    r"\bthe (two |three )?stops? before\b",
    r"\bsessions?\b",
    r"\bissues?\b",
    r"\bdone[- ]when\b",
    r"\b\d[\d.,]*\s*(%|-?minutes?|-?min|-?seconds?|-?s) targets?\b",       # the 97% target, a 10-minute target
    r"\btargets? (was|were|is|are|has been) (not )?(reached|met|missed|hit)\b",
    r"\b(reach|reached|reaches|meet|met|meets|miss|missed|misses|hit|hits) (the|its|a|our) (\w+ )?target\b"
    r"(?! ?(kl|token|id|value|margin|layer|module))",
    r"\b(accuracy|time|speed|course's|issue's|done-when) targets?\b",
    r"\bbudgets?\b",
    r"\bprototyp\w*",
    r"\bhelper (engineers?|sessions?|branch(es)?)\b",
    r"\bvirtual machine\b",
    r"\btoday's\b",
    r"\b(earlier|previous|former|old) (preset|presets|settings|setting|design|version)\b",
    r"\bpreset now\b",
    r"\bnow judges\b",
    r"\bnot yet (measured|timed|run)\b",
    r"\ban earlier run\b",
    r"\bwhat was measured and left\b",
]
ALLOWED = [r"\b(token|prompt|context) budgets?\b"]
FORBIDDEN_RE = re.compile("|".join(f"(?:{pattern})" for pattern in FORBIDDEN), re.IGNORECASE)
ALLOWED_RE = re.compile("|".join(f"(?:{pattern})" for pattern in ALLOWED), re.IGNORECASE)
CODE = re.compile(r"`[^`\n]*`")


def forbidden_phrases(text: str) -> list[str]:
    """The forbidden phrases of a text (code in backticks and ALLOWED phrases left out)."""
    text = CODE.sub(" ", text)
    allowed = [match.span() for match in ALLOWED_RE.finditer(text)]
    return [match.group(0) for match in FORBIDDEN_RE.finditer(text)
            if not any(start <= match.start() and match.end() <= end for start, end in allowed)]


def markdown_lines(path: Path) -> list[tuple[int, str]]:
    """(line, text) of what a reader reads in a Markdown file or a notebook's markdown cells."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return [(number, f"markdown cell {number}: {''.join(cell['source'])}")
                for number, cell in enumerate(cells, start=1) if cell["cell_type"] == "markdown"]
    return list(enumerate(path.read_text(encoding="utf-8").splitlines(), start=1))


def python_prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal with a space in a Python file: its docstrings, messages and help."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and " " in node.value:
            found.append((node.lineno, node.value))
    return found


def offenders(path: Path, shown_as: str) -> list[str]:
    lines = python_prose(path) if path.suffix == ".py" else markdown_lines(path)
    return [f"{shown_as}:{number}: {phrase!r}" for number, text in lines for phrase in forbidden_phrases(text)]


def read_by_users() -> list[Path]:
    files = tracked_files("*.md", "*.ipynb", "*.py")
    return [path for path in files if path.is_file() and path.relative_to(REPO).parts[0] != "tests"
            and (path.suffix != ".py" or path.relative_to(REPO).parts[0] in ("gpt_scratch", "exercises", "solutions",
                                                                            "chapters", "docs"))]


@pytest.mark.parametrize("text", [
    "measured at stop 24", "for the stop before", "This stop's figures", "no session since", "issue 19's figures",
    "The issue asked for", "not the done-when figure", "the 97% target was not reached", "a 10-minute target",
    "The target was not reached.", "within the 3-minute budget", "measured in a prototype", "a helper session",
    "this virtual machine's speed", "today's preset", "the earlier preset", "the previous preset",
    "the preset now judges once", "not yet measured there", "an earlier run on another machine",
    "## What was measured and left"])
def test_each_phrase_of_the_making_is_found(text):
    assert forbidden_phrases(text), text


@pytest.mark.parametrize("text", [
    "early stopping", "generation stops at the end-of-text", "stop at the end-of-text token", "learns to stop",
    "the training target", "the targets y are -100", "a KL target of 6", "adaptive KL: target 6", "target token",
    "LoRA targets attn and mlp", "the prompt's token budget", "`budget` tokens", "a trailing full stop",
    "the first stop token", "IPO stops pushing", "reached the target KL"])
def test_real_uses_of_the_words_are_left_alone(text):
    assert forbidden_phrases(text) == [], text


def test_a_planted_phrase_is_reported_with_its_file_and_line(tmp_path):
    original = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    planted = original[:5] + ["Measured at stop 24 on this virtual machine."] + original[5:]
    copy = tmp_path / "README.md"
    copy.write_text("\n".join(planted) + "\n", encoding="utf-8")
    assert offenders(copy, "README.md") == ["README.md:6: 'stop 24'", "README.md:6: 'virtual machine'"]
    module = tmp_path / "module.py"
    module.write_text('"""A module."""\n\nprint("measured in the previous session")\n')
    assert offenders(module, "gpt_scratch/module.py") == ["gpt_scratch/module.py:3: 'session'"]


def test_no_user_facing_text_speaks_of_how_the_course_was_made():
    files = read_by_users()
    assert files, "git lists no file to read"
    found = [hit for path in files for hit in offenders(path, path.relative_to(REPO).as_posix())]
    assert not found, ("phrases about how the course was made, in text a user reads (state the result "
                       "and its cause instead; see FORBIDDEN in this file):\n" + "\n".join(found))
