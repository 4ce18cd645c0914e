"""Chapter 7's LoRA study at full size: which rank, learning rate, targets and LoRA+ ratio bring LoRA closest
to full fine-tuning, and what limits it.

    python chapters/ch07_lora/lora_study.py --list                                  # the variants, grouped
    python chapters/ch07_lora/lora_study.py                                         # all of them (~4 min each)
    python chapters/ch07_lora/lora_study.py --variants r16-lr3e-3 full-lr1e-3       # some of them
    python chapters/ch07_lora/lora_study.py --groups ranks targets                  # some groups

Every variant fine-tunes the main job's pretrained model (--run/pretrain) on the main job's instructions
exactly as its LoRA stage does (the preset's "lora" training settings: 3200 steps of 16 on the default
preset, 2 replay windows per step), with one or two settings changed, and the judge scores it on the same
held-out questions. "full-*" variants train every weight as the SFT stage does (the preset's "sft"
settings). A LoRA variant trains without weight decay.

Each variant trains in its own folder under --out (a finished one is reused, an interrupted one resumes);
--out/results.json keeps the rows, the command and the machine. After training, each variant's merged
model is also scored on the pretraining text it was not trained on (the pretraining stage's validation
windows): "learns less, forgets less" in numbers; and on the end-of-text that closes each answer, with the
share of answers sampled at temperature 1 that end: whether it learned to stop. --plots FOLDER draws the
chapter's figures there.
"""

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.ablation import check_run_folder, markdown_table, run_ablation  # noqa: E402
from gpt_scratch.args import OneLineParser  # noqa: E402
from gpt_scratch.checkpoint import load_stage_checkpoint  # noqa: E402
from gpt_scratch.data import IGNORE, TokenWindows, collate, encode_records, split_train_val  # noqa: E402
from gpt_scratch.evaluate import answer_with_ends, evaluate, load_split  # noqa: E402
from gpt_scratch.formats import write_json  # noqa: E402
from gpt_scratch.lora import lora_scale, target_names  # noqa: E402
from gpt_scratch.measured import command_line  # noqa: E402
from gpt_scratch.hardware import measured_on  # noqa: E402
from gpt_scratch.pipeline import stage_train_config  # noqa: E402
from gpt_scratch.plots import plot_curves  # noqa: E402
from gpt_scratch.presets import PRESETS  # noqa: E402
from gpt_scratch.sft import Tuning, sft  # noqa: E402
from gpt_scratch.train import TrainConfig, evaluate_loss  # noqa: E402


def lora(rank: int, lr: float, **changes) -> dict:
    """A LoRA variant's settings: rank and learning rate, plus any other change (a Tuning or TrainConfig field,
    "replay" or "n_train")."""
    return {"lora_rank": rank, "lr": lr, **changes}


# Each group answers one question; a variant is named by what it changes. The learning rates of each rank
# bracket its best one (the U-curves); the other groups use a rank's best measured rate.
GROUPS: dict[str, dict[str, dict]] = {
    "ranks": {
        "full-lr1e-3": {"lr": 1e-3}, "full-lr3e-3": {"lr": 3e-3}, "full-lr1e-2": {"lr": 1e-2},
        "r1-lr1e-2": lora(1, 1e-2), "r1-lr3e-2": lora(1, 3e-2),
        "r2-lr1e-2": lora(2, 1e-2), "r2-lr3e-2": lora(2, 3e-2),
        "r4-lr3e-3": lora(4, 3e-3), "r4-lr1e-2": lora(4, 1e-2), "r4-lr3e-2": lora(4, 3e-2),
        "r8-lr3e-3": lora(8, 3e-3), "r8-lr1e-2": lora(8, 1e-2), "r8-lr3e-2": lora(8, 3e-2),
        "r16-lr1e-3": lora(16, 1e-3), "r16-lr3e-3": lora(16, 3e-3), "r16-lr1e-2": lora(16, 1e-2),
        "r32-lr1e-3": lora(32, 1e-3), "r32-lr3e-3": lora(32, 3e-3),
        "r64-lr1e-3": lora(64, 1e-3), "r64-lr3e-3": lora(64, 3e-3),
    },
    "targets": {
        "r16-attn": lora(16, 3e-3, lora_targets=["attn"]),
        "r16-mlp": lora(16, 3e-3, lora_targets=["mlp"]),
        "r16-all+head": lora(16, 3e-3, lora_targets=["attn", "mlp", "head"]),
    },
    "lora+": {  # B's learning rate 16 times A's (LoRA+); A at the given rate
        "r16-plus16": lora(16, 7.5e-4, lora_plus_ratio=16.0),
        "r16-plus16-lr1.5e-3": lora(16, 1.5e-3, lora_plus_ratio=16.0),
        "r16-plus16-lr3e-3": lora(16, 3e-3, lora_plus_ratio=16.0),
        "r8-plus16": lora(8, 7.5e-4, lora_plus_ratio=16.0),
        "r16-plus16+head": lora(16, 7.5e-4, lora_plus_ratio=16.0, lora_targets=["attn", "mlp", "head"]),
    },
    "seeds": {"full-seed1": {"lr": 1e-3, "seed": 1},
              "r16-plus16-seed1": lora(16, 7.5e-4, lora_plus_ratio=16.0, seed=1)},
    "capacity": {"full-n2500": {"lr": 1e-3, "n_train": 2500}, "r1-n2500": lora(1, 1e-2, n_train=2500),
                 "r16-n2500": lora(16, 3e-3, n_train=2500)},
    "replay": {"r16-replay0": lora(16, 3e-3, replay=0), "full-replay0": {"lr": 1e-3, "replay": 0}},
    "batch": {  # 64 examples a step for a quarter of the steps: the same examples, four times fewer updates
        "full-b64-lr1e-3": {"lr": 1e-3, "batch_size": 64, "max_steps": 800},
        "full-b64-lr3e-3": {"lr": 3e-3, "batch_size": 64, "max_steps": 800},
        "full-b64-lr1e-2": {"lr": 1e-2, "batch_size": 64, "max_steps": 800},
        "r16-b64-lr3e-3": lora(16, 3e-3, batch_size=64, max_steps=800),
        "r16-b64-lr1e-2": lora(16, 1e-2, batch_size=64, max_steps=800),
        "r16-b64-lr3e-2": lora(16, 3e-2, batch_size=64, max_steps=800),
    },
    "alpha": {  # the scale of B A: alpha / r (alpha = 2r above), rsLoRA's alpha / sqrt(r), or a fixed alpha / r;
        # at rank 16 all three give 2, so the ranks group's r16 rows are every rule's rank-16 row
        "r4-rslora-lr3e-3": lora(4, 3e-3, lora_rslora=True, lora_alpha=8.0),
        "r4-rslora-lr1e-2": lora(4, 1e-2, lora_rslora=True, lora_alpha=8.0),
        "r64-rslora-lr1e-3": lora(64, 1e-3, lora_rslora=True, lora_alpha=8.0),
        "r64-rslora-lr3e-3": lora(64, 3e-3, lora_rslora=True, lora_alpha=8.0),
        "r4-alpha32-lr1e-3": lora(4, 1e-3, lora_alpha=32.0),
        "r4-alpha32-lr3e-3": lora(4, 3e-3, lora_alpha=32.0),
        "r4-alpha32-lr1e-2": lora(4, 1e-2, lora_alpha=32.0),
        "r64-alpha32-lr1e-3": lora(64, 1e-3, lora_alpha=32.0),
        "r64-alpha32-lr3e-3": lora(64, 3e-3, lora_alpha=32.0),
        "r64-alpha32-lr1e-2": lora(64, 1e-2, lora_alpha=32.0),
    },
}
VARIANTS = {name: changes for group in GROUPS.values() for name, changes in group.items()}
TUNING_FIELDS = {field.name for field in fields(Tuning)}  # what a variant may change of what trains
COLUMNS = [("variant", "variant", "{}"), ("trainable_parameters", "trainable", "{:,}"),
           ("lr", "lr", "{:g}"), ("final_val_loss", "validation loss", "{:.3f}"),
           ("accuracy_after", "held-out accuracy", "{:.1%}"), ("unseen_accuracy_after", "unseen", "{:.1%}"),
           ("end_of_text_loss", "end-of-text loss", "{:.2f}"),
           ("sampled_end_rate", "sampled answers that end", "{:.0%}"),
           ("corpus_loss", "pretraining-text loss", "{:.3f}"), ("train_seconds", "train s", "{:.0f}")]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, str]:
    parser = OneLineParser(prog=Path(__file__).name,
                           description="Fine-tune the main job's pretrained model with LoRA at many settings (and "
                                       "fully at a few), judge each, print a table and write --out/results.json.")
    parser.add_argument("--run", default="runs/default",
                        help="the main job's run folder: its pretrained model, instructions and preset "
                             "(default runs/default)")
    parser.add_argument("--out", default="runs/lora_study",
                        help="one folder per variant, and results.json (default runs/lora_study)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="the variants to run, in this order")
    parser.add_argument("--groups", nargs="+", choices=list(GROUPS), help="run these groups' variants")
    parser.add_argument("--list", action="store_true", help="print the groups and their variants, and stop")
    parser.add_argument("--plots", metavar="FOLDER", help="also draw the chapter's figures into FOLDER")
    parser.add_argument("--truncation", action="store_true",
                        help="instead of training: judge full fine-tuning's update (--run/sft) cut to each rank, "
                             "written to --out/truncation.json (under a minute)")
    parser.add_argument("--quiet", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.variants and args.groups:
        parser.error("give --variants or --groups, not both")
    if args.list:
        return args, ""
    chosen = args.variants or [name for group in (args.groups or GROUPS) for name in GROUPS[group]]
    args.variants = list(dict.fromkeys(chosen))
    if args.variants and len(args.variants) < len(chosen) and not args.groups:
        parser.error("--variants names a variant twice; give each once")
    return args, check_run_folder(parser, args, ("sft",) if args.truncation else ("pretrain",))


def train_config(changes: dict, preset: str) -> TrainConfig:
    """The preset's LoRA (or, without a rank, SFT) training settings with the variant's changes."""
    is_lora = "lora_rank" in changes
    cfg = stage_train_config(preset, "lora" if is_lora else "sft", 0, "auto")
    if is_lora:
        cfg = replace(cfg, weight_decay=0.0)
    fields = {k: v for k, v in changes.items() if k in TrainConfig.__dataclass_fields__}
    cfg = replace(cfg, **fields)
    if cfg.max_steps < cfg.eval_every or cfg.max_steps < cfg.save_every:
        cfg = replace(cfg, eval_every=min(cfg.eval_every, cfg.max_steps), save_every=min(cfg.save_every, cfg.max_steps))
    return cfg


def pretraining_text_batches(run: Path, block_size: int) -> list:
    """The pretraining stage's own validation windows (the last 5% of the corpus, as pretrain() splits it)."""
    _, tokenizer, _ = load_stage_checkpoint(run / "pretrain", device=torch.device("cpu"))
    _, val_ids = split_train_val(tokenizer.encode((run / "data" / "corpus.txt").read_text()), 0.05)
    return TokenWindows(val_ids, block_size, 16).evenly_spaced_batches(8)


def tuning_of(changes: dict) -> Tuning:
    """The Tuning (LoRA's settings, or full fine-tuning) of a variant."""
    return Tuning(**{k: v for k, v in changes.items() if k in TUNING_FIELDS})


def train_variant(changes: dict, folder: Path, run: Path, preset: str, quiet: bool) -> dict:
    tuning = tuning_of(changes)
    replay = changes.get("replay", PRESETS[preset]["sft"]["replay"])
    return sft(run / "pretrain", run / "data", folder, train_config(changes, preset), resume=True, quiet=quiet,
               tuning=tuning, score_before=False, n_train=changes.get("n_train"), replay=replay,
               replay_corpus=run / "data" / "corpus.txt" if replay else None)


@torch.no_grad()
def end_of_text_loss(model, tokenizer, records: list[dict]) -> float:
    """The mean loss on the end-of-text that closes each answer: how well the model has learned to stop."""
    model.eval()
    losses = []
    for example in encode_records(tokenizer, records, "chat", model.config.block_size, quiet=True):
        x, y = collate([example], tokenizer.eot_id)
        last = int((y[0] != IGNORE).nonzero()[-1])  # the answer's last target: its end-of-text
        losses.append(F.cross_entropy(model(x)[0, last], y[0, last]).item())
    return sum(losses) / len(losses)


def add_forgetting_and_stopping(folder: Path, run: Path, batches: list, base_loss: float) -> dict:
    """The variant's metrics with its loss on the pretraining text, its loss on the answers' end-of-text and the
    share of its answers sampled at temperature 1 that end (200 validation prompts): computed once, kept in its
    metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    if not {"corpus_loss", "end_of_text_loss", "sampled_end_rate"} <= set(metrics):
        model, tokenizer, _ = load_stage_checkpoint(folder, device=torch.device("cpu"))
        records = load_split(run / "data", "val", 200)
        metrics["corpus_loss"] = round(evaluate_loss(model, batches, torch.device("cpu")), 4)
        metrics["end_of_text_loss"] = round(end_of_text_loss(model, tokenizer, records), 4)
        ended = answer_with_ends(model, tokenizer, records, "chat", temperature=1.0, seed=0)[1]
        metrics["sampled_end_rate"] = round(sum(ended) / len(ended), 4)
        write_json(folder / "metrics.json", metrics)
    return {**metrics, "base_corpus_loss": round(base_loss, 4)}


def truncated(update: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-`rank` approximation of a matrix (its top singular directions, Eckart-Young)."""
    U, S, Vh = torch.linalg.svd(update.float(), full_matrices=False)
    return (U[:, :rank] * S[:rank]) @ Vh[:rank]


def truncation_study(run: Path, ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> list[dict]:
    """Does full fine-tuning's own update fit in rank r? For each rank: keep the top r directions of its change to
    every attention and MLP matrix (the layers LoRA targets), with its other changes (embeddings, norms, biases)
    kept or not, and judge that model. Also the share of the change's squared norm in those directions."""
    base, tokenizer, _ = load_stage_checkpoint(run / "pretrain", device=torch.device("cpu"))
    tuned, _, _ = load_stage_checkpoint(run / "sft", device=torch.device("cpu"))
    # Copies: base.state_dict() shares its tensors with the model, which load_state_dict overwrites below.
    before = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    after = tuned.state_dict()
    test = load_split(run / "data", "test")
    rows = []
    for rank in (None, *ranks):  # None: the whole change
        for rest in ("base", "sft"):
            state = dict(before if rest == "base" else after)  # the targeted weights are replaced, not edited
            shares = []
            for name in target_names(base, ("attn", "mlp")):
                update = after[f"{name}.weight"] - before[f"{name}.weight"]
                if rank is not None:
                    squared = torch.linalg.svdvals(update.float()) ** 2
                    shares.append(float(squared[:rank].sum() / squared.sum()))
                    update = truncated(update, rank)
                state[f"{name}.weight"] = before[f"{name}.weight"] + update
            base.load_state_dict(state)
            rows.append({"rank": rank, "other_changes": rest == "sft", "accuracy": evaluate(base, tokenizer, test, "chat")[0]["accuracy"],
                         "norm_share": sum(shares) / len(shares) if shares else 1.0})
    return rows


def method(row: dict) -> str:
    """"full", "r16", ...: the part of a variant's name before its first "-"."""
    return row["variant"].split("-")[0]


def rank_order(name: str) -> tuple[bool, int]:
    return name != "full", int(name[1:]) if name != "full" else 0


def best_rows(rows: list[dict]) -> dict[str, dict]:
    """Per method (full, or LoRA of a rank) of the "ranks" group: the row with the highest accuracy."""
    best = {}
    for row in rows:
        if row["variant"] in GROUPS["ranks"]:
            if method(row) not in best or row["accuracy_after"] > best[method(row)]["accuracy_after"]:
                best[method(row)] = row
    return dict(sorted(best.items(), key=lambda item: rank_order(item[0])))


def alpha_rule(changes: dict) -> str:
    """How a LoRA variant scales B A: "alpha = 2r" (the course's rule), "rsLoRA, alpha 8" or "alpha 32"."""
    if changes.get("lora_rslora"):
        return f"rsLoRA, alpha {changes['lora_alpha']:g}"
    return f"alpha {changes['lora_alpha']:g}" if "lora_alpha" in changes else "alpha = 2r"


def draw_alpha_rules(rows: list[dict], folder: Path) -> None:
    """alpha_rules.png: accuracy against the learning rate at ranks 4 and 64 under each rule for alpha."""
    panels = []
    for rank in (4, 64):
        curves = {}
        for row in rows:
            if row["changes"].get("lora_rank") == rank and row["variant"] in {**GROUPS["ranks"], **GROUPS["alpha"]}:
                rule = f"{alpha_rule(row['changes'])} (scale {lora_scale_of(row['changes']):g})"
                curves.setdefault(rule, []).append((row["lr"], row["accuracy_after"]))
        lines = [(rule, [lr for lr, _ in sorted(points)],
                  [acc for _, acc in sorted(points)], "o-") for rule, points in curves.items()]
        panels.append({"ylabel": f"held-out accuracy, rank {rank}", "lines": lines, "ylim": (0, 1.05), "xscale": "log"})
    plot_curves(panels, folder / "alpha_rules.png", "peak learning rate (log)",
                "the rule for alpha moves the best learning rate")


def lora_scale_of(changes: dict) -> float:
    """The scale of B A in a LoRA variant: alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
    tuning = tuning_of(changes)
    return lora_scale(tuning.lora_rank, tuning.alpha, tuning.lora_rslora)


def draw(rows: list[dict], folder: Path) -> None:
    """accuracy_vs_trainable.png (with the capacity panel), lr_curves.png and, with the alpha group's rows,
    alpha_rules.png from the study's rows."""
    folder.mkdir(parents=True, exist_ok=True)
    best = best_rows(rows)
    lora_best = [row for name, row in best.items() if name != "full"]
    panels = [{"ylabel": "held-out accuracy", "xscale": "log", "ylim": (0, 1.05), "lines": [
        ("LoRA, the best lr of each rank", [r["trainable_parameters"] for r in lora_best],
         [r["accuracy_after"] for r in lora_best], "o-")]}]
    plus = sorted((r for r in rows if r["variant"] in GROUPS["lora+"]), key=lambda r: r["trainable_parameters"])
    if plus:
        panels[0]["lines"].append(("LoRA+ (B's lr 16x A's)", [r["trainable_parameters"] for r in plus],
                                   [r["accuracy_after"] for r in plus], "s"))
    if "full" in best and lora_best:
        span = [min(r["trainable_parameters"] for r in lora_best), best["full"]["trainable_parameters"]]
        panels[0]["lines"].append((f"full fine-tuning (lr {best['full']['lr']:g})", span,
                                   [best["full"]["accuracy_after"]] * 2, "k--"))
    capacity = {}  # method -> (examples, accuracy) of each capacity row, and of its ranks row at the same lr
    for row in rows:
        if row["variant"] in GROUPS["capacity"]:
            same = [r for r in rows if r["variant"] in GROUPS["ranks"] and method(r) == method(row) and r["lr"] == row["lr"]]
            capacity.setdefault(method(row), []).extend((r["train_examples"], r["accuracy_after"]) for r in [row, *same])
    lines = [(name, [n for n, _ in sorted(points)], [a for _, a in sorted(points)], "o-")
             for name, points in sorted(capacity.items(), key=lambda item: rank_order(item[0])) if len(points) > 1]
    if lines:
        panels.append({"ylabel": "held-out accuracy", "xscale": "log", "ylim": (0, 1.05), "lines": lines})
    plot_curves(panels[:1], folder / "accuracy_vs_trainable.png", "trainable parameters (log)",
                "accuracy against trainable parameters")
    if len(panels) > 1:
        plot_curves(panels[1:], folder / "capacity.png", "SFT examples (log)", "accuracy against the data's size")
    lr_lines, forgetting = [], []
    for name in best:
        tried = sorted((r for r in rows if method(r) == name and r["variant"] in GROUPS["ranks"]), key=lambda r: r["lr"])
        lr_lines.append((name, [r["lr"] for r in tried], [r["accuracy_after"] for r in tried], "o-"))
        forgetting.append((name, [r["lr"] for r in tried], [r["corpus_loss"] for r in tried], "o-"))
    plot_curves([{"ylabel": "held-out accuracy", "lines": lr_lines, "ylim": (0, 1.05), "xscale": "log"},
                 {"ylabel": "loss on the pretraining text", "lines": forgetting, "xscale": "log", "ylim": (0, None)}],
                folder / "lr_curves.png", "peak learning rate (log)", "accuracy and forgetting against the learning rate")
    if any(row["variant"] in GROUPS["alpha"] for row in rows):
        draw_alpha_rules(rows, folder)


def settings_shown(changes: dict, preset: str) -> dict:
    """The settings a variant trained with that its tables show: learning rate, batch size, LoRA's scale."""
    cfg = train_config(changes, preset)
    scale = lora_scale_of(changes) if "lora_rank" in changes else None
    return {"lr": cfg.lr, "batch_size": cfg.batch_size, "lora_scale": scale}


def main(argv: list[str] | None = None) -> int:
    args, preset = parse_args(argv)
    if args.list:
        for group, variants in GROUPS.items():
            print(f"{group}: {' '.join(variants)}")
        return 0
    run, out = Path(args.run), Path(args.out)
    if args.truncation:
        rows = truncation_study(run)
        write_json(out / "truncation.json", {"command": command_line(), "measured_on": measured_on(), "rows": rows})
        print(markdown_table(rows, [("rank", "rank kept", "{}"), ("other_changes", "other changes of SFT kept", "{}"),
                                    ("norm_share", "share of the squared norm", "{:.1%}"),
                                    ("accuracy", "held-out accuracy", "{:.1%}")]))
        return 0
    batches = pretraining_text_batches(run, PRESETS[preset]["model"]["block_size"])
    base_model, _, _ = load_stage_checkpoint(run / "pretrain", device=torch.device("cpu"))
    base_loss = evaluate_loss(base_model, batches, torch.device("cpu"))
    chosen = {name: VARIANTS[name] for name in args.variants}
    rows = run_ablation(chosen, lambda changes, folder: train_variant(changes, folder, run, preset, args.quiet), out,
                        quiet=args.quiet)
    rows = [{**row, **add_forgetting_and_stopping(out / row["variant"], run, batches, base_loss),
             **settings_shown(row["changes"], preset)} for row in rows]
    write_json(out / "results.json", {**json.loads((out / "results.json").read_text()), "rows": rows})
    print(f"preset {preset}; loss on the pretraining text before fine-tuning: {base_loss:.3f}")
    print(markdown_table(rows, COLUMNS))
    if args.plots:
        draw(rows, Path(args.plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
