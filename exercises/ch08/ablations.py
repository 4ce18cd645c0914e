"""Chapter 8 ablations: the reward model from the main job's SFT model, one choice changed at a time.

    python exercises/ch08/ablations.py                                  # every variant, about a minute each
    python exercises/ch08/ablations.py --variants default head-only
    python exercises/ch08/ablations.py --help

It needs the main job's run folder (`python -m gpt_scratch run`, or `--run` another one): its SFT
model and its preference pairs. Every variant trains with the reward settings of the run's preset
except the one it names, in its own folder under --out (a finished one is reused); each is scored
against the hidden rule on the held-out pairs. The questions are in exercises/README.md (chapter 8).
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.ablation import add_ablation_arguments, check_run_folder, markdown_table, run_ablation  # noqa: E402
from gpt_scratch.args import OneLineParser, int_range  # noqa: E402
from gpt_scratch.pipeline import stage_train_config  # noqa: E402
from gpt_scratch.reward import reward_stage  # noqa: E402

VARIANTS = {  # name -> the reward_stage settings it changes (lr: the training config's)
    "default": {},  # the course's reward model: a head on the frozen SFT body, plus w * log p(answer | prompt)
    "head-only": {"score": "head"},  # the head alone, at the last real token, body frozen
    "trained-body": {"score": "head", "body": "trained", "lr": 5e-4},  # the field's usual reward model
}
COLUMNS = [("variant", "variant", "{}"), ("accuracy", "pairs ranked right (hidden rule)", "{:.1%}"),
           ("accuracy_correctness", "correctness pairs", "{:.1%}"), ("accuracy_style", "style pairs", "{:.1%}"),
           ("logprob_weight", "w (log p)", "{:.2f}"), ("final_val_loss", "held-back loss", "{:.3f}"),
           ("train_seconds", "train seconds", "{:.0f}")]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, str]:
    parser = OneLineParser(prog=Path(__file__).name,
                           description="Reward models from the main job's SFT model, one choice changed per variant; "
                                       "prints a table and writes --out/results.json.")
    add_ablation_arguments(parser, VARIANTS, chapter=8)
    parser.add_argument("--steps", type=int_range(1, 100_000),
                        help="training steps of every variant (default: the preset's, 600 for the default preset)")
    parser.add_argument("--n-eval", type=int_range(1, 100_000), help="held-out pairs scored (default: all)")
    args = parser.parse_args(argv)
    return args, check_run_folder(parser, args, ("sft",))


def main(argv: list[str] | None = None) -> int:
    args, preset = parse_args(argv)
    run = Path(args.run)
    base = stage_train_config(preset, "reward", args.seed, "auto")
    base = replace(base, max_steps=args.steps or base.max_steps)
    base = replace(base, warmup_steps=min(base.warmup_steps, base.max_steps), save_every=base.max_steps)

    def train_variant(changes: dict, folder: Path) -> dict:
        settings = dict(changes)
        cfg = replace(base, lr=settings.pop("lr", base.lr))
        return reward_stage(run / "sft", run / "data", folder, cfg, n_eval=args.n_eval, best_of=0, quiet=True,
                            **settings)

    if not args.quiet:
        print(f"reward models from {run / 'sft'} ({preset} preset: {base.max_steps} steps of {base.batch_size} pairs), "
              f"{len(args.variants)} variant(s) -> {args.out}")
    rows = run_ablation({name: VARIANTS[name] for name in args.variants}, train_variant, Path(args.out), args.quiet)
    print(markdown_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
