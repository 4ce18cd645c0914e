"""The main job: every stage of the course, one after another, ending in a report card.

    python -m gpt_scratch run                   # runs/default; preset auto: default, or fast on a float32 CPU
    python -m gpt_scratch run --preset default  # the course's reference model, on any machine
    python -m gpt_scratch run --preset tiny     # seconds: a smoke test of the whole path
    python -m gpt_scratch run --preset gpt2 --corpus my_text.txt   # a GPU: GPT-2 small, GPT-2's tokenizer

Each stage writes its own folder under the run folder and reads only the previous stage's
folder. A stage whose metrics.json exists is done and skipped; a stage that was interrupted
resumes from its last checkpoint. At the end the run folder gets report.md (a table of each
stage's metrics, with its plots) and summary.json (the command, the machine it was measured on,
the preset, the stages' total time and each stage's metrics): the file a README's figures are
checked against. Run the same command on a finished folder and it rewrites both in seconds.

The preset "auto" (run's default) is "default" wherever training computes in bf16 (a CPU with
AVX-512 BF16 or AMX, a GPU) and "fast" on a CPU without bf16 hardware, where training runs in
float32 and each training step takes about twice as long. The run folder records the preset it
was started with (run.json), so a resumed run carries on with the same one.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gpt_scratch.args import UsageError, non_negative_int
from gpt_scratch.files import write_atomic
from gpt_scratch.formats import write_json
from gpt_scratch.hardware import check_device, measured_on, native_bf16, pick_device
from gpt_scratch.measured import shown_path
from gpt_scratch.model import Architecture
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.tokenizer import GPT2Vocabulary
from gpt_scratch.train import RunSettings, TrainConfig


REPORT_TABLES = ("table", "best_of_n_table")  # metrics that are markdown tables, shown below a stage's metrics


def run_stage(name: str, stage_dir: Path, work: Callable[[], dict], quiet: bool) -> dict:
    """Run one stage unless its metrics.json says it is already done. The stage's time (stage_seconds)
    is added to its metrics.json, so that a later command on the finished folder still reports it."""
    metrics_file = stage_dir / "metrics.json"
    if metrics_file.is_file():
        if not quiet:
            print(f"[{name}] done already ({metrics_file}); skipping")
        return json.loads(metrics_file.read_text())
    if not quiet:
        print(f"[{name}] running -> {stage_dir}")
    began = time.perf_counter()
    metrics = work()
    if "stage_seconds" not in metrics:
        metrics["stage_seconds"] = round(time.perf_counter() - began, 1)
        if metrics_file.is_file():
            write_json(metrics_file, metrics)
    return metrics


def trains_in_float32(device: str) -> bool:
    """Is the device a CPU without bf16 hardware, so that training runs in float32?"""
    chosen = pick_device(device)
    return chosen.type == "cpu" and not native_bf16(chosen)


def choose_preset(asked: str, device: str, run_dir: Path) -> str:
    """The preset a run uses: the run folder's own (run.json) if it has one, else the one asked for,
    with "auto" -> "fast" on a CPU that trains in float32 and "default" elsewhere.

    A folder started with one preset and resumed with another would mix two models' stages, so
    an explicit preset other than the folder's is refused.
    """
    record = run_dir / "run.json"
    if record.is_file():
        try:
            started_with = json.loads(record.read_text())["preset"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{record} is damaged (it should be {{\"preset\": NAME}}); delete it if you know "
                             f"the preset the run was started with and pass --preset NAME") from None
        if started_with not in PRESETS:
            raise ValueError(f"{record} names an unknown preset {started_with!r}; known: {', '.join(sorted(PRESETS))}")
        if asked not in ("auto", started_with):
            raise ValueError(f"{run_dir} was started with --preset {started_with}; resume it with --preset "
                             f"{started_with} (or auto), or give a new --out for --preset {asked}")
        return started_with
    if asked != "auto":
        return asked
    return "fast" if trains_in_float32(device) else "default"


def check_arch(arch: str, run_dir: Path) -> None:
    """A run folder holds one layout's models: resuming it in another layout (run.json's "arch", gpt2 for a
    folder that does not say) is refused, as another preset is."""
    record = run_dir / "run.json"
    started_with = json.loads(record.read_text()).get("arch", "gpt2") if record.is_file() else arch
    if started_with != arch:
        raise ValueError(f"{run_dir} was started with --arch {started_with}; resume it with --arch {started_with}, "
                         f"or give a new --out for --arch {arch}")


def preset_note(asked: str, preset: str, device: str) -> str | None:
    """One line on the preset chosen for a CPU that trains in float32, else None.

    There each training step takes about twice as long as under bf16 autocast, so "auto" picks the
    fast preset, a narrower model trained for fewer steps. Measured times: docs/benchmarks.md.
    """
    if preset not in ("default", "fast") or not trains_in_float32(device):
        return None
    times = ("each training step takes about twice as long as with bf16 (measured times: docs/benchmarks.md); "
             "the fast preset trains a narrower model for fewer steps")
    if preset == "fast" and asked == "auto":
        return (f"preset auto -> fast: this CPU has no bf16 hardware, so training runs in float32: {times}; "
                f"--preset default runs the course's reference model")
    if preset == "default":
        return f"note: this CPU has no bf16 hardware, so training runs in float32: {times}"
    return None


def stage_train_config(preset: str, stage: str, seed: int, device: str) -> TrainConfig:
    """The preset's training settings of a stage (its other settings, such as a LoRA rank, left out)."""
    return from_flags(TrainConfig, None, PRESETS[preset][stage], preset, seed=seed, device=device)


def headline(results: dict[str, dict]) -> list[str]:
    """The few numbers that say whether the run worked, as a short list."""
    lines = []
    if "pretrain" in results:
        m = results["pretrain"]
        lines.append(f"- pretraining: {m['parameters']:,} parameters, final validation loss {m['final_val_loss']}")
    for stage in ("sft", "lora"):
        if stage in results:
            m = results[stage]
            before = f"{m['accuracy_before']:.1%} -> " if m.get("accuracy_before") is not None else ""
            baseline = (f"; always the commonest answer: {m['majority_baseline']:.1%}" if "majority_baseline" in m
                        else "")
            lines.append(f"- {stage} ({m['tuning']}, {m['trainable_share']:.1%} of parameters trained): held-out "
                         f"accuracy {before}{m['accuracy_after']:.1%} "
                         f"(unseen questions {m['unseen_accuracy_after']:.1%}{baseline})")
    if "reward" in results:
        m = results["reward"]
        lines.append(f"- reward model: held-out pairwise accuracy against the hidden rule {m['accuracy']:.1%} "
                     f"(correctness pairs {m['accuracy_correctness']:.1%}, style pairs {m['accuracy_style']:.1%}; "
                     f"a scorer that only likes the sentence style: {m.get('style_only_baseline', float('nan')):.1%})")
    if "ppo" in results:
        m = results["ppo"]
        lines.append(f"- PPO ({m['steps']} steps): held-out accuracy {m['accuracy_before']:.1%} -> {m['accuracy_after']:.1%}, "
                     f"preferred style {m['sentence_rate_before']:.1%} -> {m['sentence_rate_after']:.1%}, win-rate vs SFT "
                     f"{m['win_rate_vs_sft']:.1%} (tie share {m['tie_share_vs_sft']:.1%})")
    if "dpo" in results:
        m = results["dpo"]
        lines.append(f"- DPO ({m['steps']} steps on the same pairs, no reward model): held-out accuracy "
                     f"{m['accuracy_before']:.1%} -> {m['accuracy_after']:.1%}, preferred style "
                     f"{m['sentence_rate_before']:.1%} -> {m['sentence_rate_after']:.1%}, win-rate vs SFT "
                     f"{m['win_rate_vs_sft']:.1%} (tie share {m['tie_share_vs_sft']:.1%})")
    if "grpo" in results:
        m = results["grpo"]
        lines.append(f"- GRPO ({m['steps']} steps, groups of {m['group_size']}, the judge as the reward): held-out "
                     f"accuracy {m['accuracy_before']:.1%} -> {m['accuracy_after']:.1%}, pass@1 "
                     f"{m['pass_at_1_before']:.1%} -> {m['pass_at_1_after']:.1%}, pass@{m['group_size']} "
                     f"{m['pass_at_g_before']:.1%} -> {m['pass_at_g_after']:.1%}")
    return lines


# What a comparison of two runs shows: (stage, metric, label, as a share or not)
COMPARED = (("pretrain", "parameters", "parameters", False), ("pretrain", "final_val_loss", "validation loss", False),
            ("sft", "accuracy_after", "SFT: held-out accuracy", True),
            ("lora", "accuracy_after", "LoRA: held-out accuracy", True),
            ("reward", "accuracy", "reward model: pairs ranked as the rule ranks them", True),
            ("ppo", "accuracy_after", "PPO: held-out accuracy", True),
            ("ppo", "sentence_rate_after", "PPO: preferred style", True),
            ("dpo", "accuracy_after", "DPO: held-out accuracy", True),
            ("dpo", "sentence_rate_after", "DPO: preferred style", True),
            ("grpo", "accuracy_after", "GRPO: held-out accuracy", True),
            ("grpo", "pass_at_1_after", "GRPO: pass@1", True))


def comparison(results: dict[str, dict], other: dict[str, dict], name: str, other_name: str) -> list[str]:
    """A markdown table of this run's headline figures beside another run's (its summary.json's stages)."""
    def shown(stages: dict, stage: str, key: str, share: bool) -> str:
        value = stages.get(stage, {}).get(key)
        if value is None:
            return "-"
        return f"{value:.1%}" if share else (f"{value:,}" if isinstance(value, int) else f"{value:.4f}")

    lines = [f"| measure | {name} | {other_name} |", "|---|---:|---:|"]
    for stage, key, label, share in COMPARED:
        lines.append(f"| {label} | {shown(results, stage, key, share)} | {shown(other, stage, key, share)} |")
    return lines


def format_report(results: dict[str, dict], run_dir: Path, preset: str, arch: str = "gpt2",
                  compare_with: Path | None = None) -> str:
    """A markdown report card: one table per stage, with its plots; with compare_with (another run folder),
    first a table of both runs' headline figures."""
    lines = ["# gpt-scratch run report", "", f"Run folder: `{run_dir}`, preset `{preset}`, layout `{arch}`.", ""]
    lines += headline(results) + [""]
    if compare_with is not None:
        other = json.loads((compare_with / "summary.json").read_text())
        lines += [f"## Compared with `{compare_with}`", ""]
        lines += comparison(results, other["stages"], f"this run ({arch})",
                            f"{shown_path(compare_with)} ({other.get('arch', 'gpt2')})") + [""]
    for stage, metrics in results.items():
        lines += [f"## {stage}", "", "| metric | value |", "|---|---|"]
        for key, value in metrics.items():
            if isinstance(value, (dict, list)) or key.endswith("table"):
                continue  # the tables come below the metrics
            text = str(value).replace("\n", " ").replace("|", "/")
            lines.append(f"| {key} | {text[:120]} |")
        for plot in sorted((run_dir / stage).glob("*.png")):
            lines += ["", f"![{stage} {plot.stem}]({stage}/{plot.name})"]
        for key in REPORT_TABLES:
            if key in metrics:
                lines += ["", metrics[key]]
        lines.append("")
    return "\n".join(lines)


def run_pipeline(out: str | Path, preset: str = "auto", seed: int = 0, corpus: str | None = None,
                 device: str = "auto", quiet: bool = False, gpt2_vocab: str | None = None, arch: str = "gpt2",
                 compare_with: str | Path | None = None) -> dict[str, dict]:
    from gpt_scratch.dpo import dpo_stage
    from gpt_scratch.grpo import GRPOConfig, grpo_stage
    from gpt_scratch.ppo import PPOConfig, ppo_stage
    from gpt_scratch.pretrain import model_settings, pretrain
    from gpt_scratch.reward import reward_stage
    from gpt_scratch.sft import preset_lora, sft
    from gpt_scratch.tokenizer import gpt2_tokenizer
    from gpt_scratch.world.command import ensure_default_data

    run_dir = Path(out)
    asked, preset = preset, choose_preset(preset, device, run_dir)
    check_arch(arch, run_dir)
    settings = PRESETS[preset]
    # The gpt2 preset pretrains with GPT-2's tokenizer (plus the chat tokens the later stages use).
    # It is loaded first: without its vocabulary the run stops here, before anything is written.
    tokenizer = gpt2_tokenizer(gpt2_vocab, chat_tokens=True) if settings["tokenizer"] == "gpt2" else None
    note = preset_note(asked, preset, device)
    if note and not quiet:
        print(note, flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "run.json", json.dumps({"preset": preset, "arch": arch}) + "\n")
    results: dict[str, dict] = {}
    began = time.perf_counter()

    data_dir = ensure_default_data(run_dir / "data", seed=seed, corpus_mb=settings["corpus_mb"], quiet=quiet,
                                   **settings["tasks"])
    corpus_path = Path(corpus) if corpus else data_dir / "corpus.txt"

    results["pretrain"] = run_stage("pretrain", run_dir / "pretrain", lambda: pretrain(
        corpus_path, run_dir / "pretrain", model_settings(settings["model"], arch),
        stage_train_config(preset, "pretrain", seed, device),
        settings["vocab_size"], resume=True, quiet=quiet, tokenizer=tokenizer), quiet)
    replay = {"replay": settings["sft"]["replay"], "replay_corpus": corpus_path}  # rehearse the pretraining text
    results["sft"] = run_stage("sft", run_dir / "sft", lambda: sft(
        run_dir / "pretrain", data_dir, run_dir / "sft", stage_train_config(preset, "sft", seed, device),
        resume=True, quiet=quiet, **replay), quiet)
    # Chapter 7: the same fine-tuning with the base frozen and LoRA adapters trained instead.
    results["lora"] = run_stage("lora", run_dir / "lora", lambda: sft(
        run_dir / "pretrain", data_dir, run_dir / "lora", stage_train_config(preset, "lora", seed, device),
        resume=True, quiet=quiet, tuning=preset_lora(preset), **replay), quiet)
    # Chapter 8: a reward model from the SFT model, trained on the preference pairs.
    reward = settings["reward"]
    results["reward"] = run_stage("reward", run_dir / "reward", lambda: reward_stage(
        run_dir / "sft", data_dir, run_dir / "reward", stage_train_config(preset, "reward", seed, device),
        best_of=reward["best_of"], best_of_prompts=reward["best_of_prompts"], resume=True, quiet=quiet), quiet)
    # Chapter 9: RLHF with PPO against that reward model.
    ppo = {k: v for k, v in settings["ppo"].items() if k != "n_eval"}
    results["ppo"] = run_stage("ppo", run_dir / "ppo", lambda: ppo_stage(
        run_dir / "sft", run_dir / "reward", data_dir, run_dir / "ppo", PPOConfig(**ppo, seed=seed, device=device),
        n_eval=settings["ppo"]["n_eval"], resume=True, quiet=quiet), quiet)
    # Chapter 10: DPO, from the SFT model and the same preference pairs, without a reward model.
    dpo = settings["dpo"]
    results["dpo"] = run_stage("dpo", run_dir / "dpo", lambda: dpo_stage(
        run_dir / "sft", data_dir, run_dir / "dpo", stage_train_config(preset, "dpo", seed, device), beta=dpo["beta"],
        n_train=dpo["n_train"], n_eval=dpo["n_eval"], resume=True, quiet=quiet), quiet)
    # Chapter 11: RL with a verifiable reward: GRPO from the SFT model, the judge as the reward.
    grpo = {k: v for k, v in settings["grpo"].items() if k != "n_eval"}
    results["grpo"] = run_stage("grpo", run_dir / "grpo", lambda: grpo_stage(
        run_dir / "sft", data_dir, run_dir / "grpo", GRPOConfig(**grpo, seed=seed, device=device),
        n_eval=settings["grpo"]["n_eval"], resume=True, quiet=quiet), quiet)

    compare_with = Path(compare_with) if compare_with is not None else None
    report = format_report(results, run_dir, preset, arch, compare_with)
    write_atomic(run_dir / "report.md", report)
    command = run_command(run_dir, asked, seed, corpus, device, quiet, gpt2_vocab, arch, compare_with)
    write_json(run_dir / "summary.json", summary(results, command, preset, device, arch))
    if not quiet:
        print(report)
        print(f"this command: {time.perf_counter() - began:.0f} s; the stages: "
              f"{stages_seconds(results):.0f} s; report: {run_dir / 'report.md'}, figures: {run_dir / 'summary.json'}")
    return results


def stages_seconds(results: dict[str, dict]) -> float:
    """The time every stage took, whichever command ran it (a resumed stage counts its last part only)."""
    return round(sum(metrics.get("stage_seconds", 0.0) for metrics in results.values()), 1)


def run_command(out: Path, preset: str, seed: int, corpus: str | None, device: str, quiet: bool,
                gpt2_vocab: str | None, arch: str = "gpt2", compare_with: Path | None = None) -> str:
    """The command line of this run as a user types it, the options left at their defaults left out.

    Example: run_command(Path("runs/default"), "auto", 0, None, "auto", False, None)
    -> "python -m gpt_scratch run --out runs/default"
    """
    words = ["python -m gpt_scratch run", "--out", shown_path(out)]
    for flag, value, default in (("--preset", preset, "auto"), ("--seed", seed, 0), ("--device", device, "auto"),
                                 ("--arch", arch, "gpt2")):
        if value != default:
            words += [flag, str(value)]
    for flag, path in (("--corpus", corpus), ("--gpt2-vocab", gpt2_vocab), ("--compare-with", compare_with)):
        if path is not None:
            words += [flag, shown_path(path)]
    return " ".join(words + (["--quiet"] if quiet else []))


def summary(results: dict[str, dict], command: str, preset: str, device: str, arch: str = "gpt2") -> dict:
    """What summary.json holds: the command, where it was measured (hardware.measured_on), the preset, the layout,
    the stages' total time (wall_seconds: the sum of their stage_seconds, the data files' few seconds
    not counted) and each stage's metrics.json without its markdown tables (report.md shows those)."""
    stages = {stage: {key: value for key, value in metrics.items() if key not in REPORT_TABLES}
              for stage, metrics in results.items()}
    return {"command": command, "measured_on": measured_on(device), "preset": preset, "arch": arch,
            "wall_seconds": stages_seconds(results), "stages": stages}


# The command: python -m gpt_scratch run --------------------------------------------------------------------

@dataclass
class RunOptions:
    """The main job's settings: one knob for the sizes (--preset), the rest where it runs."""
    out: str = setting("runs/default", "run folder", preset=False)
    preset: str = setting("auto", "size of everything; auto: default, or fast on a CPU without bf16 hardware "
                                  "(float32)", choices=("auto", *sorted(PRESETS)), preset=False)
    seed: int = setting(0, "seed for data and training", type=non_negative_int, preset=False)
    corpus: str | None = setting(None, "train on this text file instead of the generated corpus", preset=False)
    compare_with: str | None = setting(None, "a finished run folder (e.g. runs/default): the report puts its "
                                             "headline figures beside this run's", metavar="RUN", preset=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, RunOptions)
    add_flags(parser, Architecture)
    add_flags(parser, RunSettings, only=("device",))
    add_flags(parser, StageOptions, only=("quiet",))
    add_flags(parser, GPT2Vocabulary)


def run(args: argparse.Namespace) -> int:
    options, device = from_flags(RunOptions, args), from_flags(RunSettings, args).device
    check_device(device)
    if args.gpt2_vocab is not None and (options.preset == "auto" or PRESETS[options.preset]["tokenizer"] != "gpt2"):
        raise UsageError(f"--gpt2-vocab is for --preset gpt2; the {options.preset} preset trains its tokenizer")
    if options.corpus is not None and not Path(options.corpus).is_file():  # found now, not after the data stage
        raise FileNotFoundError(f"corpus file {options.corpus} not found; give a UTF-8 text file or leave out "
                                f"--corpus to use the generated one")
    if options.compare_with is not None and not (Path(options.compare_with) / "summary.json").is_file():
        raise UsageError(f"--compare-with {options.compare_with} has no summary.json: give a run folder that a finished "
                         f"`python -m gpt_scratch run` wrote")
    run_pipeline(options.out, options.preset, options.seed, options.corpus, device, from_flags(StageOptions, args).quiet,
                 args.gpt2_vocab, from_flags(Architecture, args).arch, options.compare_with)
    return 0
