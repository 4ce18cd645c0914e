"""Chapter 12, measured: each change from GPT-2's layout to the modern one, alone and all together.

    python chapters/ch12_modern/side_by_side.py                          # every variant, seed 0 (about 1 h)
    python chapters/ch12_modern/side_by_side.py --variants gpt2 llama --seeds 0 1 2
    python chapters/ch12_modern/side_by_side.py --variants swiglu llama --pretrain-lr 3e-3 --out runs/ch12_lr_3e-3
    python chapters/ch12_modern/side_by_side.py --help

Every variant pretrains a model of the run's preset (the default preset: 4 layers of width 128) on the
main job's corpus with the same steps, batches and learning rate, then fine-tunes it on the main job's
instructions as the main job's SFT stage does, and is judged on the same held-out questions. Only the
layout changes: one switch of GPTConfig (model.py), or all of them (llama). Each row also has the
model's parameters, the KV cache's bytes per token (bf16) and greedy generation speed with the cache.
Each variant trains in its own folder under --out (a finished one is reused); --out/results.json keeps
the rows, the command and the machine, --out/families.json each variant's accuracy per task family, and
the chapter's README tables are checked against them.
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.ablation import check_run_folder, markdown_table, run_ablation  # noqa: E402
from gpt_scratch.args import OneLineParser, int_range, non_negative_int, positive_float  # noqa: E402
from gpt_scratch.bench import measure_generation  # noqa: E402
from gpt_scratch.checkpoint import load_stage_checkpoint  # noqa: E402
from gpt_scratch.formats import write_json  # noqa: E402
from gpt_scratch.measured import command_line  # noqa: E402
from gpt_scratch.model import GPTConfig, layout  # noqa: E402
from gpt_scratch.pipeline import stage_train_config  # noqa: E402
from gpt_scratch.presets import PRESETS  # noqa: E402
from gpt_scratch.pretrain import pretrain  # noqa: E402
from gpt_scratch.sft import sft  # noqa: E402
from gpt_scratch.train import TrainConfig  # noqa: E402

LLAMA = tuple(layout("llama", 4))  # the switches of chapter 12's layout: norm, position, mlp, bias, ...
VARIANTS = {  # name -> the switches of the llama layout it turns on (GPT-2's layout: none)
    "gpt2": (),
    "rmsnorm": ("norm",),
    "rope": ("position",),
    "swiglu": ("mlp",),
    "gqa": ("n_kv_head",),  # two query heads per key/value head
    "no-bias": ("bias",),
    "untied": ("tie_weights",),
    "llama": LLAMA,
}
COLUMNS = [("variant", "variant", "{}"), ("seed", "seed", "{}"), ("parameters", "parameters", "{:,}"),
           ("val_loss", "validation loss after pretraining", "{:.4f}"),
           ("accuracy", "held-out accuracy after SFT", "{:.1%}"),
           ("pretrain_seconds", "pretraining s", "{:.0f}"), ("sft_seconds", "SFT s", "{:.0f}"),
           ("kv_bytes_per_token", "KV cache bytes per token (bf16)", "{:,}"),
           ("tokens_per_second", "greedy tokens/s (cache)", "{:.0f}")]
GENERATED = 64  # new tokens per generation measurement


def switches(variant: str, n_head: int) -> dict:
    """The GPTConfig settings of a variant: its switches as the llama layout sets them (model.layout).

    Example: switches("gqa", 4) -> {"n_kv_head": 2};  switches("llama", 4) -> the whole layout
    """
    llama = layout("llama", n_head)
    return {name: llama[name] for name in VARIANTS[variant]}


def kv_bytes_per_token(config: GPTConfig) -> int:
    """What the KV cache stores per token in bf16: a key and a value per layer and key/value head, 2 bytes each."""
    return 2 * config.n_layer * config.kv_heads * config.head_dim * 2


def with_steps(cfg: TrainConfig, steps: int) -> TrainConfig:
    """cfg trained for steps steps: warmup, evaluation and checkpoints kept within the shorter run."""
    return replace(cfg, max_steps=steps, warmup_steps=min(cfg.warmup_steps, steps), eval_every=min(cfg.eval_every, steps),
                   save_every=min(cfg.save_every, steps))


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, str]:
    parser = OneLineParser(prog=Path(__file__).name,
                           description="Pretrain and fine-tune the run's model in GPT-2's layout, with each "
                                       "chapter-12 change alone, and with all of them; prints a table and writes "
                                       "--out/results.json.")
    parser.add_argument("--run", default="runs/default",
                        help="the main job's run folder: its corpus, instructions and preset (default runs/default)")
    parser.add_argument("--out", default="runs/ch12_side_by_side",
                        help="one folder per variant and seed, and results.json (default runs/ch12_side_by_side)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="the variants to run, in this order (default: all)")
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0],
                        help="train every variant once per seed (default 0)")
    parser.add_argument("--pretrain-steps", type=int_range(1, 1_000_000),
                        help="pretraining steps of every variant (default: the preset's)")
    parser.add_argument("--sft-steps", type=int_range(1, 1_000_000),
                        help="SFT steps of every variant (default: the preset's)")
    parser.add_argument("--pretrain-lr", type=positive_float,
                        help="pretraining learning rate of every variant (default: the preset's)")
    parser.add_argument("--sft-lr", type=positive_float, help="SFT learning rate of every variant (default: the preset's)")
    parser.add_argument("--quiet", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds):
        parser.error("--seeds names a seed twice; give each once")
    return args, check_run_folder(parser, args, ("sft",))


def train_variant(variant: str, seed: int, preset: str, args: argparse.Namespace, folder: Path) -> dict:
    """Pretrain and fine-tune one variant into folder; return (and write) its row's figures."""
    run, settings = Path(args.run), PRESETS[preset]
    pretrain_cfg = stage_train_config(preset, "pretrain", seed, "auto")
    sft_cfg = stage_train_config(preset, "sft", seed, "auto")
    if args.pretrain_steps:
        pretrain_cfg = with_steps(pretrain_cfg, args.pretrain_steps)
    if args.sft_steps:
        sft_cfg = with_steps(sft_cfg, args.sft_steps)
    pretrain_cfg = replace(pretrain_cfg, lr=args.pretrain_lr or pretrain_cfg.lr)
    sft_cfg = replace(sft_cfg, lr=args.sft_lr or sft_cfg.lr)
    model_settings = {**settings["model"], **switches(variant, settings["model"]["n_head"])}
    corpus = run / "data" / "corpus.txt"
    base = pretrain(corpus, folder / "pretrain", model_settings, pretrain_cfg, settings["vocab_size"], resume=True,
                    quiet=args.quiet)
    tuned = sft(folder / "pretrain", run / "data", folder / "sft", sft_cfg, resume=True, quiet=args.quiet,
                score_before=False, replay=settings["sft"]["replay"], replay_corpus=corpus)
    model, tokenizer, _ = load_stage_checkpoint(folder / "sft", device=torch.device("cpu"))
    speed = measure_generation(model.eval(), tokenizer.encode("What is 3 plus 4?"), GENERATED, torch.device("cpu"))
    row = {"pretrain_lr": pretrain_cfg.lr, "sft_lr": sft_cfg.lr, "parameters": base["parameters"], "val_loss": base["final_val_loss"], "accuracy": tuned["accuracy_after"],
           "pretrain_seconds": base["train_seconds"], "sft_seconds": tuned["train_seconds"],
           "kv_bytes_per_token": kv_bytes_per_token(model.config), "tokens_per_second": speed["cached"]}
    write_json(folder / "metrics.json", row)
    return row


def write_families(runs: dict, out: Path) -> None:
    """out/families.json: each variant's held-out accuracy per task family after SFT (its SFT stage's table)."""
    tables = {name: json.loads((out / name / "sft" / "metrics.json").read_text())["table"] for name in runs}
    write_json(out / "families.json", {"command": command_line(), "tables": tables})


def main(argv: list[str] | None = None) -> int:
    args, preset = parse_args(argv)
    runs = {f"{variant}-seed{seed}": {"variant": variant, "seed": seed}
            for variant in args.variants for seed in args.seeds}
    rows = run_ablation(runs, lambda changes, folder: train_variant(changes["variant"], changes["seed"], preset,
                                                                    args, folder), Path(args.out), quiet=args.quiet)
    rows = [{**row, "variant": row["changes"]["variant"], "seed": row["changes"]["seed"]} for row in rows]
    write_families(runs, Path(args.out))
    pretrain_cfg, sft_cfg = (stage_train_config(preset, stage, 0, "auto") for stage in ("pretrain", "sft"))
    print(f"preset {preset}; pretraining lr {args.pretrain_lr or pretrain_cfg.lr:g}, SFT lr {args.sft_lr or sft_cfg.lr:g}")
    print(markdown_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
