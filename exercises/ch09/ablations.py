"""Chapter 9 ablations: PPO from the main job's SFT and reward models, one setting changed at a time.

    python exercises/ch09/ablations.py                                  # every variant, about 1-2 minutes each
    python exercises/ch09/ablations.py --variants default no-kl
    python exercises/ch09/ablations.py --help

It needs the main job's run folder (`python -m gpt_scratch run`, or `--run` another one): its SFT
model (the policy, the reference and the value model start from it), its reward model and its
data. Every variant trains with the PPO settings of the run's preset except the one it names, in
its own folder under --out (a finished one is reused). The questions are in exercises/README.md
(chapter 9).
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
from gpt_scratch.ppo import PPOConfig, ppo_stage  # noqa: E402
from gpt_scratch.presets import PRESETS  # noqa: E402

VARIANTS = {  # name -> the PPOConfig fields it changes
    "default": {},  # the preset's PPO: KL coefficient 0.05 (k1), the value model as GAE's baseline, 4 epochs
    "no-kl": {"kl_coef": 0.0},  # nothing holds the policy near the SFT model
    "kl-0.2": {"kl_coef": 0.2},  # four times the default's pull towards it
    "no-value-baseline": {"value_baseline": False},  # a token's advantage is the reward still to come, whitened
    "one-epoch": {"epochs": 1},  # each rollout batch used once
    # LoRA of rank 1 on the policy (the reference: its adapters off; the value model trains fully), at two rates
    "lora-r1-lr3e-4": {"lora_rank": 1, "lr": 3e-4},
    "lora-r1-lr1e-3": {"lora_rank": 1, "lr": 1e-3},
}
COLUMNS = [("variant", "variant", "{}"), ("accuracy_before", "accuracy before", "{:.1%}"),
           ("accuracy_after", "accuracy after", "{:.1%}"), ("sentence_rate_after", "preferred style", "{:.1%}"),
           ("win_rate_vs_sft", "win-rate vs SFT", "{:.1%}"), ("kl_vs_sft", "KL from SFT (nats)", "{:.2f}"),
           ("train_seconds", "train seconds", "{:.0f}")]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, str]:
    parser = OneLineParser(prog=Path(__file__).name,
                           description="PPO from the main job's SFT and reward models, one setting changed per "
                                       "variant; prints a table and writes --out/results.json.")
    add_ablation_arguments(parser, VARIANTS, chapter=9)
    parser.add_argument("--steps", type=int_range(1, 10_000),
                        help="PPO steps of every variant (default: the preset's, 40 for the default preset)")
    parser.add_argument("--n-eval", type=int_range(8, 100_000), help="held-out questions judged (default: all)")
    args = parser.parse_args(argv)
    return args, check_run_folder(parser, args, ("sft", "reward"))


def main(argv: list[str] | None = None) -> int:
    args, preset = parse_args(argv)
    run = Path(args.run)
    settings = {key: value for key, value in PRESETS[preset]["ppo"].items() if key != "n_eval"}
    base = replace(PPOConfig(**settings), seed=args.seed)
    base = replace(base, steps=args.steps or base.steps)
    base = replace(base, eval_every=base.steps, save_every=base.steps)  # judged before and after only

    def train_variant(changes: dict, folder: Path) -> dict:
        return ppo_stage(run / "sft", run / "reward", run / "data", folder, replace(base, **changes),
                         n_eval=args.n_eval, quiet=True)

    if not args.quiet:
        print(f"PPO from {run / 'sft'} against {run / 'reward'} ({preset} preset: {base.steps} steps of "
              f"{base.batch_size} rollouts), {len(args.variants)} variant(s) -> {args.out}")
    rows = run_ablation({name: VARIANTS[name] for name in args.variants}, train_variant, Path(args.out), args.quiet)
    print(markdown_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
