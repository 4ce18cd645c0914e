"""Chapter 11 ablations: GRPO from the main job's SFT model, one setting changed at a time.

    python exercises/ch11/ablations.py                              # every variant, about 2 minutes each
    python exercises/ch11/ablations.py --variants default no-std    # two of them
    python exercises/ch11/ablations.py --steps 30 --n-eval 200      # quicker, noisier
    python exercises/ch11/ablations.py --help

It needs the main job's run folder (`python -m gpt_scratch run`, or `--run` another one): its SFT
model and its data. Every variant trains with the GRPO settings of the run's preset except the one
it names, in its own folder under --out (a finished one is reused, so an interrupted run goes on);
the table at the end compares them, and --out/results.json keeps the rows. The questions to answer
with it are in exercises/README.md (chapter 11).
"""

import argparse
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.ablation import add_ablation_arguments, check_run_folder, markdown_table, run_ablation  # noqa: E402
from gpt_scratch.args import OneLineParser, float_range, int_range  # noqa: E402
from gpt_scratch.grpo import GRPOConfig, grpo_stage  # noqa: E402
from gpt_scratch.presets import PRESETS  # noqa: E402

VARIANTS = {  # name -> the GRPOConfig fields it changes
    "default": {},  # the preset's GRPO: sample std (G - 1), each answer's token mean, no KL, temperature 1
    "population-std": {"population_std": True},  # the group's std divided by G
    "no-std": {"std": False},  # Dr. GRPO's advantages: reward minus the group's mean
    "token-mean": {"aggregation": "token-mean"},  # every token of the batch counts the same (DAPO)
    "kl-0.05": {"kl_coef": 0.05},  # the k3 KL to the SFT model in the loss, weight 0.05
    "temperature-1.5": {"temperature": 1.5},  # rollouts (and pass@k) sampled at temperature 1.5
    # LoRA of rank 1 (the reference: the policy with its adapters off), at two rates
    "lora-r1-lr5e-4": {"lora_rank": 1, "lr": 5e-4},
    "lora-r1-lr2e-3": {"lora_rank": 1, "lr": 2e-3},
}
COLUMNS = [("variant", "variant", "{}"), ("accuracy_before", "accuracy before", "{:.1%}"),
           ("accuracy_after", "accuracy after", "{:.1%}"),
           ("families.subtract.accuracy_after", "subtract after", "{:.1%}"),
           ("pass_at_1_before", "pass@1 before", "{:.1%}"), ("pass_at_1_after", "pass@1 after", "{:.1%}"),
           ("pass_at_g_after", "pass@G after", "{:.1%}"), ("sentence_rate_after", "preferred style", "{:.1%}"),
           ("final_kl", "KL (nats)", "{:.3f}"), ("seconds", "seconds", "{:.0f}")]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, str]:
    parser = OneLineParser(prog=Path(__file__).name,
                           description="GRPO from the main job's SFT model, one setting changed per variant; "
                                       "prints a table and writes --out/results.json.")
    add_ablation_arguments(parser, VARIANTS, chapter=11)
    parser.add_argument("--steps", type=int_range(1, 10_000),
                        help="GRPO steps of every variant (default: the preset's, 100 for the default preset)")
    parser.add_argument("--lr", type=float_range(0.0, 1.0, include_low=False),
                        help="learning rate of every variant (default: the preset's)")
    parser.add_argument("--n-eval", type=int_range(8, 100_000), help="held-out questions judged (default: all)")
    args = parser.parse_args(argv)
    return args, check_run_folder(parser, args, ("sft",))


def main(argv: list[str] | None = None) -> int:
    args, preset = parse_args(argv)
    run = Path(args.run)
    settings = {key: value for key, value in PRESETS[preset]["grpo"].items() if key != "n_eval"}
    base = replace(GRPOConfig(**settings), seed=args.seed)
    base = replace(base, steps=args.steps or base.steps, lr=args.lr or base.lr)
    base = replace(base, eval_every=base.steps, save_every=base.steps)  # judged before and after only

    def train_variant(changes: dict, folder: Path) -> dict:
        return grpo_stage(run / "sft", run / "data", folder, replace(base, **changes), n_eval=args.n_eval, quiet=True)

    if not args.quiet:
        print(f"GRPO from {run / 'sft'} ({preset} preset: {base.steps} steps at lr {base.lr:g}, groups of "
              f"{base.group_size}), {len(args.variants)} variant(s) -> {args.out}")
    rows = run_ablation({name: VARIANTS[name] for name in args.variants}, train_variant, Path(args.out), args.quiet)
    print(markdown_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
