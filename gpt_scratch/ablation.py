"""Ablations (chapters 8-11): a stage run again with one setting changed at a time, side by side.

    rows = run_ablation(VARIANTS, train_variant, out, quiet=False)   # one folder per variant, resumable
    print(markdown_table(rows, COLUMNS))

VARIANTS maps a variant's name to the settings it changes ({} for the stage as the preset runs it);
train_variant(changes, folder) trains one variant into its folder and returns its metrics. A
variant whose folder holds metrics.json is done and is not run again (pipeline.run_stage), so an
interrupted ablation goes on where it stopped and a finished one only prints its table.
out/results.json keeps every row, the command that made them and the machine they were measured
on (gpt_scratch.measured), so that a chapter's table can be checked against the file.
"""

import argparse
import json
from pathlib import Path
from typing import Callable

from gpt_scratch.args import non_negative_int
from gpt_scratch.formats import write_json
from gpt_scratch.hardware import measured_on
from gpt_scratch.measured import command_line
from gpt_scratch.pipeline import run_stage


def add_ablation_arguments(parser: argparse.ArgumentParser, variants: dict[str, dict], chapter: int) -> None:
    """The flags every chapter's ablation script shares: --run, --out, --variants, --seed, --quiet."""
    parser.add_argument("--run", default="runs/default",
                        help="the main job's run folder, whose stages the variants start from (default runs/default)")
    parser.add_argument("--out", default=f"runs/ablations/ch{chapter:02d}",
                        help=f"one folder per variant, and results.json (default runs/ablations/ch{chapter:02d})")
    parser.add_argument("--variants", nargs="+", choices=list(variants), default=list(variants),
                        help="the variants to run, in this order (default: all)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="seed of every variant (default 0)")
    parser.add_argument("--quiet", action="store_true", help="print the table only")


def check_run_folder(parser: argparse.ArgumentParser, args: argparse.Namespace, stages: tuple[str, ...]) -> str:
    """The run folder's preset, once it is known to hold the stages the variants start from (else exit 2);
    --variants must name each variant once."""
    run = Path(args.run)
    needed = [run / "run.json", run / "data" / "manifest.json", *(run / stage / "metrics.json" for stage in stages)]
    missing = next((path for path in needed if not path.is_file()), None)
    if missing is not None:
        parser.error(f"--run {run}: {missing} not found; run the main job first (python -m gpt_scratch run)")
    repeated = sorted({v for v in args.variants if args.variants.count(v) > 1})
    if repeated:
        parser.error(f"--variants names {repeated[0]} twice; give each once")
    return json.loads((run / "run.json").read_text())["preset"]


def run_ablation(variants: dict[str, dict], train_variant: Callable[[dict, Path], dict], out: Path,
                 quiet: bool = False) -> list[dict]:
    """Train every variant (or reuse its finished folder); return one row per variant: its name, the
    settings it changed and its metrics. Writes out/results.json."""
    rows = []
    for name, changes in variants.items():
        folder = out / name
        metrics = run_stage(name, folder, lambda: train_variant(changes, folder), quiet)
        rows.append({"variant": name, "changes": changes, **metrics})
    write_json(out / "results.json", {"command": command_line(), "measured_on": measured_on(), "rows": rows})
    return rows


def lookup(row: dict, key: str):
    """row[key], where a dotted key goes into nested dicts: "families.add.accuracy_after"; None if absent."""
    value = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table: one line per row, one column per (key, header, format) such as
    ("accuracy_after", "accuracy", "{:.1%}"); the key may be dotted (lookup). A missing value shows as "-".

    Example: markdown_table([{"variant": "a", "kl": 0.123}], [("variant", "variant", "{}"), ("kl", "KL", "{:.2f}")])
    -> "| variant | KL |\\n|---|---:|\\n| a | 0.12 |"
    """
    header = "| " + " | ".join(title for _, title, _ in columns) + " |"
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"
    lines = [header, rule]
    for row in rows:
        cells = ["-" if lookup(row, key) is None else form.format(lookup(row, key)) for key, _, form in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
