"""Chapter 10 ablations: DPO from the main job's SFT model on its preference pairs, beta and the loss varied.

    python exercises/ch10/ablations.py                                  # every variant, about half a minute each
    python exercises/ch10/ablations.py --variants beta-0.1 default
    python exercises/ch10/ablations.py --help

It needs the main job's run folder (`python -m gpt_scratch run`, or `--run` another one): its SFT
model and its preference pairs. Every variant trains with the DPO settings of the run's preset
(beta 1 for the default preset) except the one it names, in its own folder under --out (a
finished one is reused). The questions are in exercises/README.md (chapter 10).
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
from gpt_scratch.dpo import dpo_stage  # noqa: E402
from gpt_scratch.pipeline import stage_train_config  # noqa: E402
from gpt_scratch.presets import PRESETS  # noqa: E402

VARIANTS = {  # name -> the dpo_stage settings it changes
    "beta-0.1": {"beta": 0.1},  # a weak pull towards the SFT model (the DPO paper's usual value)
    "beta-0.3": {"beta": 0.3},
    "default": {},  # the preset's DPO: the sigmoid loss, beta 1 for the default preset
    "beta-3": {"beta": 3.0},  # a strong pull
    "ipo": {"loss": "ipo"},  # IPO at the preset's beta: aims at the margin h = 1 / (2 beta), then stops
}
COLUMNS = [("variant", "variant", "{}"), ("beta", "beta", "{:g}"), ("loss", "loss", "{}"),
           ("accuracy_after", "accuracy after", "{:.1%}"), ("sentence_rate_after", "preferred style", "{:.1%}"),
           ("win_rate_vs_sft", "win-rate vs SFT", "{:.1%}"), ("kl_vs_sft", "KL from SFT (nats)", "{:.2f}"),
           ("held_back_accuracy", "held-back pairs ranked right", "{:.1%}"), ("train_seconds", "train seconds", "{:.0f}")]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, str]:
    parser = OneLineParser(prog=Path(__file__).name,
                           description="DPO from the main job's SFT model, beta or the loss changed per variant; "
                                       "prints a table and writes --out/results.json.")
    add_ablation_arguments(parser, VARIANTS, chapter=10)
    parser.add_argument("--steps", type=int_range(1, 100_000),
                        help="DPO steps of every variant (default: the preset's, 80 for the default preset)")
    parser.add_argument("--n-eval", type=int_range(8, 100_000), help="held-out questions judged (default: all)")
    args = parser.parse_args(argv)
    return args, check_run_folder(parser, args, ("sft",))


def main(argv: list[str] | None = None) -> int:
    args, preset = parse_args(argv)
    run, settings = Path(args.run), PRESETS[preset]["dpo"]
    base = stage_train_config(preset, "dpo", args.seed, "auto")
    base = replace(base, max_steps=args.steps or base.max_steps)
    base = replace(base, warmup_steps=min(base.warmup_steps, base.max_steps), eval_every=base.max_steps,
                   save_every=base.max_steps)  # judged before and after only

    def train_variant(changes: dict, folder: Path) -> dict:
        options = {"beta": settings["beta"], "loss": "sigmoid", **changes}
        return dpo_stage(run / "sft", run / "data", folder, base, n_train=settings["n_train"],
                         n_eval=args.n_eval or settings["n_eval"], quiet=True, **options)

    if not args.quiet:
        print(f"DPO from {run / 'sft'} ({preset} preset: {base.max_steps} steps of {base.batch_size} pairs), "
              f"{len(args.variants)} variant(s) -> {args.out}")
    rows = run_ablation({name: VARIANTS[name] for name in args.variants}, train_variant, Path(args.out), args.quiet)
    print(markdown_table(rows, COLUMNS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
