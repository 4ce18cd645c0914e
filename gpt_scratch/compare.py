"""Chapters 6 and 7: fine-tune the same base model in many ways and compare them in one table.

    python -m gpt_scratch compare --base runs/default/pretrain --data runs/default/data --out runs/compare
    python -m gpt_scratch compare --methods full head lora:8 --max-steps 200

Each method is one `python -m gpt_scratch sft` run in its own process (so that its peak memory
is its own), written to OUT/<method>/; a method whose metrics.json exists is not run again.
The result: OUT/compare.md (trainable parameters, step time, peak memory, held-out accuracy
for each method), OUT/compare.json and OUT/accuracy_vs_trainable.png.

Methods: full, last_blocks:N, head, norms_biases, embeddings_frozen (freeze.py) and lora:R
(LoRA of rank R, lora.py). LoRA runs use the rest of the preset's LoRA stage: its targets, LoRA+
ratio, learning rate, weight decay and steps (chapter 7's study measured them).
"""

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from gpt_scratch.args import UsageError
from gpt_scratch.checkpoint import find_checkpoint, read_config
from gpt_scratch.evaluate import HeldOut
from gpt_scratch.formats import write_json, write_text
from gpt_scratch.freeze import STRATEGIES
from gpt_scratch.plots import plot_labelled_points
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.sft import preset_lora
from gpt_scratch.train import TrainConfig

DEFAULT_METHODS = ("full", "last_blocks:1", "last_blocks:2", "head", "norms_biases", "embeddings_frozen",
                   "lora:1", "lora:2", "lora:4", "lora:8", "lora:16")


def method_type(text: str) -> str:
    """argparse type: 'full', 'last_blocks:2', 'lora:8', ... (checked, returned unchanged)."""
    name, _, number = text.partition(":")
    if name in STRATEGIES and name != "last_blocks" and not number:
        return text
    if name in ("last_blocks", "lora") and number.isdigit() and (name == "last_blocks" or int(number) > 0):
        return text
    raise argparse.ArgumentTypeError(f"unknown method {text!r}; use one of {', '.join(s for s in STRATEGIES if s != 'last_blocks')}, "
                                     f"last_blocks:N or lora:R (R > 0)")


def method_flags(method: str, preset: str) -> list[str]:
    """The sft flags of a method: 'lora:8' -> ['--lora-rank', '8', and the rest of the preset's LoRA stage:
    '--lora-targets', 'attn', 'mlp', '--lora-plus-ratio', ..., '--lr', ..., '--weight-decay', ..., '--max-steps', ...]."""
    name, _, number = method.partition(":")
    if name == "lora":
        tuning, lora = preset_lora(preset), PRESETS[preset]["lora"]
        training = [(f"--{key.replace('_', '-')}", str(lora[key])) for key in ("lr", "weight_decay", "max_steps")
                    if key in lora]
        return ["--lora-rank", number, "--lora-targets", *tuning.lora_targets,
                "--lora-plus-ratio", str(tuning.lora_plus_ratio), *(part for flag in training for part in flag)]
    if name == "last_blocks":
        return ["--freeze", "last_blocks", "--trainable-blocks", number]
    return ["--freeze", name]


def run_in_process(stage: str, flags: list[str], folder: Path, quiet: bool) -> dict:
    """`python -m gpt_scratch <stage> <flags> --out folder` in its own process, unless folder/metrics.json
    exists; returns the metrics. Its own process: so that its peak memory is its own. The wall time of
    the process is kept in folder/wall_seconds.json, so that a reused run still reports it.
    """
    metrics_file, wall_file = folder / "metrics.json", folder / "wall_seconds.json"
    if not metrics_file.is_file():
        command = [sys.executable, "-m", "gpt_scratch", stage, *flags, "--out", str(folder)]
        if not quiet:
            print(f"[{folder.name}] {' '.join(command[3:])}", flush=True)
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{stage} in {folder} failed (exit {done.returncode}): {last}")
        write_json(wall_file, {"wall_seconds": round(time.perf_counter() - began, 1)})
    metrics = json.loads(metrics_file.read_text())
    if wall_file.is_file():
        metrics["wall_seconds"] = json.loads(wall_file.read_text())["wall_seconds"]
    return metrics


def run_method(method: str, base: Path, data: Path, out: Path, preset: str, extra: list[str], quiet: bool) -> dict:
    flags = ["--base", str(base), "--data", str(data), "--preset", preset, "--skip-before", "--quiet", "--resume",
             *method_flags(method, preset), *extra]
    metrics = run_in_process("sft", flags, out / method.replace(":", "_"), quiet)
    return {"method": method, **{k: metrics[k] for k in ("trainable_parameters", "total_parameters",
                                                         "trainable_share", "step_seconds", "peak_memory_mb",
                                                         "accuracy_after", "unseen_accuracy_after")},
            "majority_baseline": metrics.get("majority_baseline")}


def format_table(rows: list[dict]) -> str:
    lines = ["| method | trainable parameters | share | step time (s) | peak memory (MB) | held-out accuracy | unseen |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['trainable_parameters']:,} | {r['trainable_share']:.1%} | "
                     f"{r['step_seconds']:.3f} | {r['peak_memory_mb']:.0f} | {r['accuracy_after']:.1%} | "
                     f"{r['unseen_accuracy_after']:.1%} |")
    baselines = {r["majority_baseline"] for r in rows if r.get("majority_baseline") is not None}
    if baselines:  # every method answers the same test questions: one yardstick for the table
        lines.append(f"\nAlways giving each family's most common training answer scores {max(baselines):.1%}.")
    return "\n".join(lines)


def plot_accuracy_vs_trainable(rows: list[dict], path: Path) -> Path:
    points = [(r["method"], r["trainable_parameters"], r["accuracy_after"], "s" if r["method"].startswith("lora") else "o")
              for r in rows]
    return plot_labelled_points(points, path, "trainable parameters (log scale)", "held-out accuracy (judge)",
                                "accuracy vs trainable parameters (squares: LoRA)", log_x=True)


def compare(base: str | Path, data: str | Path, out: str | Path, methods: list[str], preset: str = "default",
            extra: list[str] | None = None, quiet: bool = False) -> list[dict]:
    """Run (or reuse) every method; write compare.md, compare.json and the plot; return the rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_method(m, Path(base), Path(data), out, preset, extra or [], quiet) for m in methods]
    table = format_table(rows)
    write_text(out / "compare.md", table + "\n")
    write_json(out / "compare.json", rows)
    plot_accuracy_vs_trainable(rows, out / "accuracy_vs_trainable.png")
    if not quiet:
        print(table)
    return rows


# The command: python -m gpt_scratch compare ----------------------------------------------------------------

@dataclass
class CompareOptions:
    """The compare command's settings (every method is an sft run with the preset's settings)."""
    base: str = setting("runs/default/pretrain", "the checkpoint every method starts from", preset=False)
    data: str = setting("runs/default/data", "folder with the sft_*.json files", preset=False)
    out: str = setting("runs/compare", "one sub-folder per method, plus the table and plot", preset=False)
    methods: list[str] = setting(list(DEFAULT_METHODS), "full, last_blocks:N, head, norms_biases, embeddings_frozen, "
                                                         "lora:R", type=method_type, nargs="+", preset=False)

    def validate(self, given: set[str]) -> None:
        repeated = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if repeated:
            raise ValueError(f"--methods names {repeated[0]} twice; give each method once")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, CompareOptions)
    add_flags(parser, TrainConfig, only=("max_steps",), preset=PRESETS["default"]["sft"])
    add_flags(parser, HeldOut)
    add_flags(parser, StageOptions, skip=("resume",))


def run(args: argparse.Namespace) -> int:
    run_as = from_flags(StageOptions, args)
    options = from_flags(CompareOptions, args)
    warmup = PRESETS[run_as.preset]["sft"]["warmup_steps"]
    if args.max_steps is not None and args.max_steps < warmup:
        raise UsageError(f"--max-steps {args.max_steps} is smaller than the {run_as.preset} preset's {warmup} warmup "
                         f"steps, so every method would fail; use at least {warmup}")
    n_layer = read_config(find_checkpoint(options.base))[0].n_layer
    too_many = [m for m in options.methods if m.startswith("last_blocks:") and int(m.partition(":")[2]) > n_layer]
    if too_many:
        raise UsageError(f"--methods {too_many[0]}: the base model has {n_layer} blocks; use last_blocks:0..{n_layer}")
    extra = [flag for name, value in (("--max-steps", args.max_steps), ("--n-eval", args.n_eval)) if value
             for flag in (name, str(value))]
    compare(options.base, options.data, options.out, options.methods, run_as.preset, extra, run_as.quiet)
    return 0
