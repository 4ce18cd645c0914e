"""Chapter 10: every alignment method from one SFT model and the same preference pairs, side by side.

    python -m gpt_scratch compare-alignment --sft runs/default/sft --data runs/default/data --out runs/alignment
    python -m gpt_scratch compare-alignment --methods dpo ipo --noise 0 0.2 --preset tiny

For each label-noise level the methods learn from the same preference pairs: at noise 0 those of
--data, otherwise a copy of the data made by the data stage with the data folder's own settings
and seed, so that the questions, the answers and the held-out split are the same and only the
given share of the training labels is flipped (data_noise_<level>/ in OUT).

Methods (each one process, `python -m gpt_scratch <stage>`, so that its wall time and peak memory
are its own; a method whose folder has metrics.json is not run again):
- ppo: a reward model is trained on the pairs first (`reward`, its time in its own column), then
  PPO against it (`ppo`);
- dpo, ipo, hinge, cdpo, robust: `dpo --loss <method>` (dpo is `--loss sigmoid`; cdpo, conservative
  DPO, and robust, Chowdhury et al.'s robust DPO, take their eps from the preset's label_smoothing).
The SFT model itself is the first row: what every method starts from.

Every row is measured the same way on the held-out questions: the judge's accuracy and
preferred-style rate, the win-rate against the SFT model's answers (ties left out, their share
beside it), the KL from the SFT model per answer on held-out prompts, wall time and peak memory.
Writes OUT/alignment.md, OUT/alignment.json and OUT/alignment.png.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from gpt_scratch.args import UsageError, float_range
from gpt_scratch.compare import run_in_process
from gpt_scratch.formats import write_json, write_text
from gpt_scratch.plots import new_figure, save
from gpt_scratch.presets import StageOptions
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.world.command import write_dataset

METHODS = ("ppo", "dpo", "ipo", "hinge", "cdpo", "robust")
DEFAULT_METHODS = ("ppo", "dpo", "ipo", "cdpo", "robust")


def data_with_noise(data: Path, out: Path, noise: float, quiet: bool) -> Path:
    """The preference data at this label-noise level: data itself at 0, else a copy with flipped labels."""
    if noise == 0:
        return data
    folder = out / f"data_noise_{noise:g}"
    if not (folder / "manifest.json").is_file():
        settings = json.loads((data / "manifest.json").read_text())["settings"]
        if not quiet:
            print(f"[data] the same data with {noise:.0%} of the training labels flipped -> {folder}", flush=True)
        write_dataset(folder, **{**settings, "label_noise": noise})
    return folder


def sft_row(sft: Path) -> dict:
    """The SFT model's own figures: the starting point of every method."""
    metrics = json.loads((sft / "metrics.json").read_text())
    return {"method": "sft (the start)", "accuracy": metrics["accuracy_after"],
            "sentence_rate": metrics["sentence_rate_after"], "win_rate": None, "tie_share": None, "kl": 0.0,
            "wall_seconds": None, "reward_seconds": None, "peak_memory_mb": None}


def run_alignment_method(method: str, sft: Path, data: Path, folder: Path, preset: str, quiet: bool) -> dict:
    """One method at one noise level -> its row of the table."""
    common = ["--sft", str(sft), "--data", str(data), "--preset", preset, "--quiet", "--resume"]
    reward_seconds = None
    if method == "ppo":
        reward = run_in_process("reward", common + ["--best-of", "0"], folder / "reward", quiet)
        reward_seconds = reward["wall_seconds"]
        flags = ["--sft", str(sft), "--reward", str(folder / "reward"), "--data", str(data), "--preset", preset,
                 "--quiet", "--resume"]
        metrics = run_in_process("ppo", flags, folder / "ppo", quiet)
    else:
        metrics = run_in_process("dpo", common + ["--loss", "sigmoid" if method == "dpo" else method],
                                 folder / method, quiet)
    return {"method": method, "accuracy": metrics["accuracy_after"], "sentence_rate": metrics["sentence_rate_after"],
            "win_rate": metrics["win_rate_vs_sft"], "tie_share": metrics["tie_share_vs_sft"],
            "kl": metrics["kl_vs_sft"], "wall_seconds": metrics["wall_seconds"], "reward_seconds": reward_seconds,
            "peak_memory_mb": metrics["peak_memory_mb"]}


def format_table(rows: list[dict]) -> str:
    """One markdown table: a row per (noise, method)."""
    lines = ["| label noise | method | accuracy | preferred style | win-rate vs SFT (ties) | KL from SFT (nats) "
             "| wall s | peak MB |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        win = f"{r['win_rate']:.1%} ({r['tie_share']:.0%})" if r["win_rate"] is not None else "-"
        wall = "-" if r["wall_seconds"] is None else f"{r['wall_seconds']:.0f}"
        if r["reward_seconds"] is not None:
            wall += f" (+ {r['reward_seconds']:.0f} reward model)"
        memory = "-" if r["peak_memory_mb"] is None else f"{r['peak_memory_mb']:.0f}"
        lines.append(f"| {r['noise']:.0%} | {r['method']} | {r['accuracy']:.1%} | {r['sentence_rate']:.1%} | {win} | "
                     f"{r['kl']:.2f} | {wall} | {memory} |")
    return "\n".join(lines)


def plot_rows(rows: list[dict], path: Path) -> Path:
    """What each method buys (win-rate against SFT) and what it costs (KL from SFT, wall time): one row of
    bars per method, one bar per label-noise level, so that no two results hide each other."""
    trained = [r for r in rows if r["win_rate"] is not None]  # the SFT row is the start, not a method
    methods = list(dict.fromkeys(r["method"] for r in trained))
    noises = sorted({r["noise"] for r in trained})
    height = 0.8 / len(noises)
    panels = [("win-rate vs SFT (hidden rule)", lambda r: r["win_rate"], "{:.1%}"),
              ("KL from SFT (nats per answer)", lambda r: r["kl"], "{:.2f}"),
              ("wall seconds", lambda r: r["wall_seconds"], "{:.0f}")]
    fig, axes = new_figure(12, 0.5 * len(methods) + 1.6, ncols=len(panels))
    for ax, (xlabel, value, number) in zip(axes, panels):
        for k, noise in enumerate(noises):
            at = {r["method"]: r for r in trained if r["noise"] == noise}
            ys = [i + (k - (len(noises) - 1) / 2) * height for i, m in enumerate(methods) if m in at]
            values = [value(at[m]) for m in methods if m in at]
            ax.barh(ys, values, height=height, color=f"C{k}", label=f"label noise {noise:.0%}")
            ends, texts = values, [number.format(v) for v in values]
            if xlabel == "wall seconds":  # PPO's reward model trains first: its time is drawn after PPO's
                extra = [at[m]["reward_seconds"] or 0.0 for m in methods if m in at]
                ax.barh(ys, extra, left=values, height=height, color=f"C{k}", alpha=0.35, hatch="//",
                        label="+ its reward model" if k == len(noises) - 1 else None)
                ends = [v + e for v, e in zip(values, extra)]
                texts = [t + (f" + {e:.0f}" if e else "") for t, e in zip(texts, extra)]
            for y, text, end in zip(ys, texts, ends):
                ax.annotate(text, (end, y), xytext=(2, 0), textcoords="offset points", va="center",
                            fontsize=7)
        ax.set_yticks(range(len(methods)), methods)
        ax.invert_yaxis()  # the first method on top
        ax.set_xlabel(xlabel)
        ax.set_xlim(0, ax.get_xlim()[1] * 1.12)  # room for the numbers
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_xlim(0, 1.15)
    axes[0].set_ylabel("method")
    axes[-1].legend(fontsize=8, loc="lower right")
    fig.suptitle("What each method buys, at what cost (every axis starts at 0)")
    return save(fig, path)


def compare_alignment(sft: str | Path, data: str | Path, out: str | Path, methods: list[str], noises: list[float],
                      preset: str = "default", quiet: bool = False) -> list[dict]:
    """Run (or reuse) every method at every noise level; write the table, its JSON and the plot."""
    sft, data, out = Path(sft), Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{**sft_row(sft), "noise": 0.0}]
    for noise in noises:
        noisy = data_with_noise(data, out, noise, quiet)
        for method in methods:
            row = run_alignment_method(method, sft, noisy, out / f"noise_{noise:g}", preset, quiet)
            rows.append({**row, "noise": noise})
    table = format_table(rows)
    write_text(out / "alignment.md", table + "\n")
    write_json(out / "alignment.json", rows)
    plot_rows(rows, out / "alignment.png")
    if not quiet:
        print(table)
    return rows


# The command: python -m gpt_scratch compare-alignment -----------------------------------------------------

@dataclass
class AlignmentOptions:
    """The compare-alignment command's settings (every method runs with the preset's settings)."""
    sft: str = setting("runs/default/sft", "the SFT stage folder every method starts from", preset=False)
    data: str = setting("runs/default/data", "the data folder (preference pairs and questions)", preset=False)
    out: str = setting("runs/alignment", "one sub-folder per noise level and method", preset=False)
    methods: list[str] = setting(list(DEFAULT_METHODS), "methods to run", choices=METHODS, nargs="+", preset=False)
    noise: list[float] = setting([0.0, 0.2], "label-noise levels of the training pairs",
                                 type=float_range(0.0, 0.5, include_high=False), nargs="+", preset=False)

    def validate(self, given: set[str]) -> None:
        for flag, values in (("--methods", self.methods), ("--noise", self.noise)):
            repeated = sorted({v for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"{flag} names {repeated[0]} twice; give each once")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, AlignmentOptions)
    add_flags(parser, StageOptions, skip=("resume",))


def run(args: argparse.Namespace) -> int:
    run_as = from_flags(StageOptions, args)
    options = from_flags(AlignmentOptions, args)
    for path, what in ((Path(options.sft) / "metrics.json", "--sft: an SFT stage folder (run `python -m gpt_scratch "
                        "sft` or the main job first)"),
                       (Path(options.data) / "manifest.json", "--data: a data folder (`python -m gpt_scratch data`)")):
        if not path.is_file():
            raise UsageError(f"{path} not found; {what}")
    compare_alignment(options.sft, options.data, options.out, options.methods, options.noise, run_as.preset, run_as.quiet)
    return 0
