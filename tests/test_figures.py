"""Every figure in a results table is a value of the committed file that a command wrote.

The convention: the line just above a results table in tracked Markdown is

    <!-- source: PATH -->

with PATH relative to that Markdown file: a JSON file a command wrote (a run's summary.json, a
stage's metrics.json, an ablation's results.json) or a notebook (.ipynb), whose saved outputs are
what it printed. The file must be tracked by git.

The rule, strict about the figure and lenient only about how it is written:
- The first column names the row (a stage, a setting, a family) and is not checked. Every number
  in every other cell of the body is; the header row is not. Code in backticks and link targets
  are names, not figures, and are skipped; so is a word that holds digits (bf16, pass@1, GPT-2).
- The file's values: every number of the JSON file (not booleans, not digits inside strings); for
  a notebook, every number printed in the saved outputs of its code cells.
- A number shown with d decimals matches a value that, rounded to d decimals, is that number:
  "0.72" matches 0.72 and 0.7189, "1,240" matches 1240 and 1239.6, "6.0e-07" matches 6.04e-07.
- A percentage "93.4%" matches a fraction (0.934, or 0.9336) or a value that is already a
  percentage (93.4).
- A time "20 min 40 s" is 1240 seconds and matches a value of seconds to the second; "21 min" or
  "20.6 min" matches a value of seconds, divided by 60, at the decimals shown.
- A range "0.083-0.090" or a list "1.00 / 2.38" is several numbers, each checked.
A figure typed by hand, or left behind when its file was replaced by a new run's, matches no
value and is reported with its file, line, row and column.
"""

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from test_committed_files import tracked_files
from tiny import REPO

SOURCE = re.compile(r"^\s*<!--\s*source:\s*(\S+)\s*-->\s*$")
MINUTES_SECONDS = re.compile(r"(?<![\w.])(\d+)\s*min\s+(\d+(?:\.\d+)?)\s*s\b")
MINUTES = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*min\b")
# A number: not part of a word (bf16, pass@1, ch05), an optional sign, digits with optional thousands
# commas, decimals and exponent, and an optional percent sign; a ratio "5.2x" is the number 5.2.
NUMBER = re.compile(r"(?<![\w@.])(?<!\w-)([-+\u2212]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:[eE]([-+]?\d+))?"
                    r"(?!(?!x)[\w@]|\.\d|,\d)(\s*%)?")  # "5.2x" is a figure; "3B" or "x86" are not
SKIPPED = re.compile(r"`[^`]*`|\]\([^)]*\)|<!--.*?-->|<[^>]*>")  # code, link targets, comments, HTML tags


@dataclass
class Shown:
    """A number as a table shows it: value, decimals shown, and how it is meant."""
    text: str
    value: float
    decimals: int
    kind: str = "plain"  # "plain", "percent" or "minutes"

    def matches(self, candidate: float) -> bool:
        targets = {"plain": [candidate], "percent": [candidate * 100, candidate], "minutes": [candidate / 60]}
        half_step = 0.5 * 10.0 ** -self.decimals * (1 + 1e-9)
        return any(abs(target - self.value) <= half_step + 1e-12 for target in targets[self.kind])


def parse_number(sign: str, whole: str, fraction: str | None, exponent: str | None) -> tuple[float, int]:
    """('', '1,240', None, None) -> (1240.0, 0); ('', '6', '.0', '-07') -> (6e-07, 8): the value and the
    decimals it is shown with (for an exponent, those of the mantissa, shifted by the exponent)."""
    value = float(whole.replace(",", "") + (fraction or ""))
    decimals = len(fraction) - 1 if fraction else 0
    if exponent:
        value *= 10.0 ** int(exponent)
        decimals -= int(exponent)
    return (-value if sign in ("-", "\u2212") else value), decimals


def shown_numbers(cell: str) -> list[Shown]:
    """Every figure a cell shows. "20 min 40 s" -> one time of 1240 s; "0.083-0.090" -> two numbers."""
    text = SKIPPED.sub(" ", cell)
    found = []
    for match in MINUTES_SECONDS.finditer(text):
        found.append(Shown(match.group(0), float(match.group(1)) * 60 + float(match.group(2)),
                           len(match.group(2).partition(".")[2])))
    text = MINUTES_SECONDS.sub(" ", text)
    for match in MINUTES.finditer(text):
        found.append(Shown(match.group(0), float(match.group(1)), len(match.group(1).partition(".")[2]), "minutes"))
    text = MINUTES.sub(" ", text)
    text = re.sub(r"(?<=\d)-(?=\d)", " - ", text)  # a range: 0.083-0.090 is two numbers
    for match in NUMBER.finditer(text):
        sign, whole, fraction, exponent, percent = match.groups()
        value, decimals = parse_number(sign, whole, fraction, exponent)
        found.append(Shown(match.group(0).strip(), value, decimals, "percent" if percent else "plain"))
    return found


def is_markdown_table(text: str) -> bool:
    """A stage's per-family table, written into its metrics.json as Markdown ('| a | b |\n|---|...')."""
    return text.startswith("|") and "\n|---" in text


def json_values(data) -> list[float]:
    """Every number in a JSON document: booleans and digits inside strings left out, except the figures of
    a Markdown table that the command wrote into it."""
    if isinstance(data, str):
        return text_values([data]) if is_markdown_table(data) else []
    if isinstance(data, bool) or data is None:
        return []
    if isinstance(data, (int, float)):
        return [float(data)] if math.isfinite(data) else []
    items = data.values() if isinstance(data, dict) else data
    return [value for item in items for value in json_values(item)]


def text_values(texts: list[str]) -> list[float]:
    """Every number shown in the texts (a shown 93.4% as 0.934, minutes as seconds)."""
    values = []
    for shown in (number for text in texts for number in shown_numbers(text)):
        if shown.kind == "minutes":
            values.append(shown.value * 60)
        else:
            values.append(shown.value / 100 if shown.kind == "percent" else shown.value)
    return values


def notebook_values(notebook: dict) -> list[float]:
    """Every number printed in the saved outputs of a notebook's code cells (a printed 93.4% as 0.934)."""
    texts = []
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            texts.append("".join(output.get("text", "")))
            for kind in ("text/plain", "text/markdown", "text/html"):
                texts.append("".join(output.get("data", {}).get(kind, "")))
    return text_values(texts)


def source_values(path: Path) -> list[float]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return notebook_values(data) if path.suffix == ".ipynb" else json_values(data)


def split_row(line: str) -> list[str]:
    """'| a | b \\| c |' -> ['a', 'b \\| c']: the cells of a Markdown table row."""
    cells = re.split(r"(?<!\\)\|", line.strip())
    return [cell.strip() for cell in cells[1:-1]]


@dataclass
class SourcedTable:
    line: int  # 1-based line of the source comment
    source: str
    header: list[str]
    rows: list[tuple[int, list[str]]]  # (line, cells)


def sourced_tables(text: str) -> list[SourcedTable]:
    """The tables of a Markdown text whose line above is a source comment."""
    lines = text.splitlines()
    tables = []
    for index, line in enumerate(lines):
        match = SOURCE.match(line)
        if not match:
            continue
        body = []
        for number in range(index + 1, len(lines)):
            if not lines[number].lstrip().startswith("|"):
                break
            body.append((number + 1, split_row(lines[number])))
        header = body[0][1] if body else []
        tables.append(SourcedTable(index + 1, match.group(1), header, body[2:]))
    return tables


def table_errors(markdown: Path, sources_from: Path | None = None, shown_as: str | None = None) -> list[str]:
    """One line per figure of markdown's sourced tables that its source does not hold, and per source
    that is missing or untracked. Sources are read relative to sources_from (markdown's folder)."""
    folder = sources_from or markdown.parent
    name = shown_as or markdown.as_posix()
    errors = []
    for table in sourced_tables(markdown.read_text(encoding="utf-8")):
        where = f"{name}:{table.line}"
        source = (folder / table.source).resolve()
        if not table.rows:
            errors.append(f"{where}: the source comment is not followed by a table")
            continue
        if not source.is_file():
            errors.append(f"{where}: source {table.source} not found")
            continue
        if source.is_relative_to(REPO) and source not in set(tracked_files(source.relative_to(REPO).as_posix())):
            errors.append(f"{where}: source {table.source} is not committed (git add it)")
        values = source_values(source)
        for line, cells in table.rows:
            for column, cell in enumerate(cells[1:], start=1):
                header = table.header[column] if column < len(table.header) else f"column {column + 1}"
                for shown in shown_numbers(cell):
                    if not any(shown.matches(value) for value in values):
                        errors.append(f"{name}:{line}: row {cells[0]!r}, column {header!r}: {shown.text} "
                                      f"is no value of {table.source}")
    return errors


# Files whose every table with figures must carry a source: the front door and chapters 1-7's and the
# appendix's READMEs. (Chapters 8 and up keep the convention too; where they use it, it is checked below.)
MUST_BE_SOURCED = ["README.md", *(f"chapters/{name}/README.md" for name in (
    "ch01_tokenization", "ch02_attention", "ch03_gpt_model", "ch04_pretraining", "ch05_sft", "ch06_freezing",
    "ch07_lora", "appendix_ddp"))]


def unsourced_tables(text: str) -> list[int]:
    """Lines where a table starts whose cells (first column and header aside) hold a number, without a
    source comment above it."""
    lines, starts = text.splitlines(), []
    index = 0
    while index < len(lines):
        if not lines[index].lstrip().startswith("|"):
            index += 1
            continue
        begin = index
        while index < len(lines) and lines[index].lstrip().startswith("|"):
            index += 1
        rows = [split_row(line) for line in lines[begin + 2:index]]
        has_figures = any(shown_numbers(cell) for row in rows for cell in row[1:])
        if has_figures and not (begin > 0 and SOURCE.match(lines[begin - 1])):
            starts.append(begin + 1)
    return starts


# --- the rule on its own --------------------------------------------------------------------------

@pytest.mark.parametrize("cell, value", [
    ("93.4%", 0.934), ("93.4%", 0.9336), ("93.4%", 93.4), ("100%", 1.0), ("0.72", 0.72), ("0.72", 0.7189),
    ("1,240", 1240), ("1,240", 1239.6), ("20 min 40 s", 1240), ("21 min", 1236.0), ("20.6 min", 1236.0),
    ("6.0e-07", 6.04e-07), ("-4.8e-07", -4.8e-07), ("**94.4%**", 0.9443), ("3.5x", 3.46)])
def test_a_figure_matches_the_value_it_rounds_from(cell, value):
    (shown,) = shown_numbers(cell)
    assert shown.matches(value), (cell, value)


@pytest.mark.parametrize("cell, value", [
    ("93.4%", 0.9346), ("93.4%", 0.944), ("0.72", 0.7251), ("1,240", 1241), ("20 min 40 s", 1242),
    ("21 min", 1290.1), ("6.0e-07", 6.1e-07), ("94.4%", 0.0944)])
def test_a_figure_does_not_match_another_value(cell, value):
    (shown,) = shown_numbers(cell)
    assert not shown.matches(value), (cell, value)


def test_what_counts_as_a_figure_in_a_cell():
    cell = "`--lora-rank 8` on [README](../ch05_sft/README.md#x), bf16, pass@1, GPT-2: 0.083-0.090, 1.00 / 2.38 s"
    assert [shown.value for shown in shown_numbers(cell)] == [0.083, 0.090, 1.00, 2.38]
    assert shown_numbers("not measured") == []


def test_a_notebook_source_is_what_its_code_cells_printed():
    notebook = {"cells": [
        {"cell_type": "markdown", "source": "99 red balloons"},
        {"cell_type": "code", "outputs": [{"output_type": "stream", "text": ["accuracy 93.4% of 1,240\n"]},
                                          {"output_type": "execute_result", "data": {"text/plain": ["0.72"]}}]}]}
    assert notebook_values(notebook) == pytest.approx([0.934, 1240.0, 0.72])



def test_a_json_source_counts_numbers_and_its_markdown_tables_not_other_strings():
    metrics = {"steps": 40, "ended": True, "command": "ppo --steps 50",
               "table": "| family | n | accuracy |\n|---|---:|---:|\n| add | 45 | 86.7% |"}
    assert json_values(metrics) == pytest.approx([40.0, 45.0, 0.867])

# --- the repository's tables --------------------------------------------------------------------

def test_every_sourced_table_holds_only_figures_of_its_source():
    files = [path for path in tracked_files("*.md") if path.is_file()]
    assert files, "git lists no Markdown file"
    errors = [error for path in files
              for error in table_errors(path, shown_as=path.relative_to(REPO).as_posix())]
    assert not errors, ("figures that their source file does not hold (take them from the file, or rerun the "
                        "command that writes it):\n" + "\n".join(errors))


def test_the_front_door_and_chapters_1_to_7_source_every_table_of_figures():
    offenders = [f"{name}:{line}" for name in MUST_BE_SOURCED
                 for line in unsourced_tables((REPO / name).read_text(encoding="utf-8"))]
    assert not offenders, ("tables of figures without a <!-- source: FILE --> line above them:\n"
                           + "\n".join(offenders))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(sourced_tables(readme)) >= 2, "the README's headline and time tables carry sources"


def plant(text: str, table_index: int = 0) -> tuple[str, int, str, str]:
    """text with the first figure of a sourced table's first body row changed to one no file holds;
    returns the new text, the row's line, its label and the column's header."""
    table = sourced_tables(text)[table_index]
    for line, cells in table.rows:
        for column, cell in enumerate(cells[1:], start=1):
            if shown_numbers(cell):
                lines = text.splitlines()
                first = shown_numbers(cell)[0].text
                lines[line - 1] = lines[line - 1].replace(first, "4242.42", 1)
                return "\n".join(lines) + "\n", line, cells[0], table.header[column]
    raise AssertionError("the table holds no figure")


@pytest.mark.parametrize("name", ["README.md", "chapters/ch05_sft/README.md", "chapters/ch03_gpt_model/README.md"])
def test_a_planted_figure_is_reported_with_its_file_row_and_column(name, tmp_path):
    original = REPO / name
    assert table_errors(original) == []
    planted, line, label, header = plant(original.read_text(encoding="utf-8"))
    copy = tmp_path / "README.md"
    copy.write_text(planted, encoding="utf-8")
    errors = table_errors(copy, sources_from=original.parent, shown_as=name)
    assert errors == [f"{name}:{line}: row {label!r}, column {header!r}: 4242.42 is no value of "
                      f"{sourced_tables(planted)[0].source}"], errors


def test_a_missing_source_is_reported(tmp_path):
    copy = tmp_path / "README.md"
    copy.write_text("<!-- source: results/none.json -->\n| a | b |\n|---|---|\n| x | 1 |\n")
    assert table_errors(copy, shown_as="README.md") == ["README.md:1: source results/none.json not found"]
