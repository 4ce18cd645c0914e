"""Reward hacking and the KL penalty (chapter 9): PPO runs that differ only in kl_coef, and two figures.

    python chapters/ch09_ppo/kl_sweep.py --run runs/default --reward runs/default/reward_classic \\
        --kl-coefs 0 0.02 0.05 0.2 0.5 --steps 100 --lr 1e-4 --out runs/default/kl_sweep

Each coefficient is one ordinary PPO stage (ppo.ppo_stage) in its own folder out/kl_<coef>/, so a
sweep that stops half-way resumes where it stopped. Then:

- hacking.png: for the run with the smallest coefficient (0 = no penalty), the reward model's
  score on the training rollouts next to the judge's truth on held-out prompts, step by step.
  The reward model is a proxy learned from pairs; the judge is the gold. Where the two curves
  part, the policy is finding what the proxy likes and the gold does not.
- gold_vs_kl.png: the judge's measures at every evaluation of every run against sqrt(KL from the
  reference), the axis of the reward over-optimisation literature (Gao et al., 2022): gold rises
  a little while the policy stays near the reference, then falls as it moves away. A larger
  kl_coef keeps a run near the left of the plot.
- samples.md: held-out questions where the no-penalty policy's answer got worse than the SFT
  model's, side by side: what the policy learned to say.
- sweep.json: one row per coefficient (its metrics.json, the reward model's score at the first and
  last step, the judge's measures at every evaluation), the command and the machine it was measured on.
"""

import argparse
import json
import math
from pathlib import Path

from gpt_scratch.ablation import command_line, measured_on
from gpt_scratch.args import OneLineParser, float_range, positive_float, positive_int
from gpt_scratch.files import write_atomic
from gpt_scratch.formats import write_json
from gpt_scratch.plots import plot_curves
from gpt_scratch.ppo import PPOConfig, ppo_stage
from gpt_scratch.presets import PRESETS
from gpt_scratch.world.preferences import preference_rank


def run_folder(out: Path, kl_coef: float) -> Path:
    return out / f"kl_{kl_coef:g}"


def run_sweep(run: Path, reward: Path, out: Path, kl_coefs: list[float], cfg: PPOConfig, n_eval: int | None,
              quiet: bool) -> dict[float, dict]:
    """One PPO stage per coefficient (skipped if its folder is finished); returns each run's history."""
    histories = {}
    for kl_coef in kl_coefs:
        folder = run_folder(out, kl_coef)
        if not (folder / "metrics.json").is_file():
            if not quiet:
                print(f"PPO with kl_coef {kl_coef:g} -> {folder}", flush=True)
            settings = {**cfg.__dict__, "kl_coef": kl_coef}
            ppo_stage(run / "sft", reward, run / "data", folder, PPOConfig(**settings), n_eval, resume=True,
                      quiet=quiet)
        histories[kl_coef] = json.loads((folder / "history.json").read_text())
    return histories


def plot_hacking(history: dict, kl_coef: float, path: Path) -> Path:
    """The proxy (reward-model score, every step) next to the gold (judge, held-out, every eval)."""
    panels = [
        {"ylabel": "reward-model score (proxy)", "ylim": (min(0.0, min(history["score"])), None),
         "lines": [("score on the rollouts", history["step"], history["score"], "-")]},
        {"ylabel": "judge on held-out prompts (gold)", "ylim": (0, 1.05),
         "lines": [("accuracy", history["eval_step"], history["eval_accuracy"], "o-"),
                   ("preferred style", history["eval_step"], history["eval_sentence_rate"], "s--"),
                   ("win-rate vs SFT", history["eval_step"], history["eval_win_rate"], "^:")]},
        {"ylabel": "KL from the reference (nats per answer)", "ylim": (min(0.0, min(history["kl"])), None),
         "lines": [("kl", history["step"], history["kl"], "-")]},
    ]
    return plot_curves(panels, path, xlabel="PPO step", title=f"Reward hacking: kl_coef {kl_coef:g}")


def kl_at_evaluations(history: dict) -> list[float]:
    """The KL at each evaluation: the mean rollout KL of the steps since the previous evaluation.

    One batch's KL is noisy (64 answers); the mean over the steps between two evaluations is a
    steadier measure of where the policy was. Step 0 is 0: the policy is still the reference.
    """
    kl_by_step = dict(zip(history["step"], history["kl"]))
    points, previous = [], 0
    for step in history["eval_step"]:
        window = [kl_by_step[s] for s in range(previous + 1, step + 1) if s in kl_by_step]
        points.append(max(sum(window) / len(window), 0.0) if window else 0.0)
        previous = step
    return points


def plot_gold_vs_kl(histories: dict[float, dict], path: Path) -> Path:
    """Each run's evaluations as a line: judge accuracy and win-rate vs SFT against sqrt(KL)."""
    accuracy, win_rate = [], []
    for index, (kl_coef, history) in enumerate(histories.items()):
        root_kl = [math.sqrt(kl) for kl in kl_at_evaluations(history)]
        style = "osD^v<>p"[index % 8] + "-"  # a marker per run: the runs' points stay told apart where they meet
        accuracy.append((f"kl_coef {kl_coef:g}", root_kl, history["eval_accuracy"], style))
        win_rate.append((f"kl_coef {kl_coef:g}", root_kl, history["eval_win_rate"], style))
    panels = [{"ylabel": "held-out accuracy (judge)", "lines": accuracy, "ylim": (0, 1.05)},
              {"ylabel": "win-rate vs SFT (hidden rule)", "lines": win_rate, "ylim": (0, 1.05)}]
    return plot_curves(panels, path, xlabel="sqrt(KL from the reference per answer, mean since the last evaluation)",
                       title="Gold measures as the policy moves away from the reference")


def worse_than_sft(answers: list[dict], records: list[dict], n: int) -> list[dict]:
    """The first n held-out answers that the hidden preference rule ranks below the SFT model's."""
    worse = [a for a, r in zip(answers, records) if preference_rank(r, a["ppo"]) < preference_rank(r, a["sft"])]
    return worse[:n]


def write_samples(folder: Path, data: Path, path: Path, n: int = 12) -> Path:
    answers = json.loads((folder / "answers.json").read_text())
    records = json.loads((data / "sft_test.json").read_text())[:len(answers)]
    lines = [f"# Held-out answers the policy of {folder.name} made worse than the SFT model's", "",
             "| family | question | SFT answer | PPO answer |", "|---|---|---|---|"]
    for a in worse_than_sft(answers, records, n):
        cells = [a["family"], a["prompt"], a["sft"], a["ppo"]]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    write_atomic(path, "\n".join(lines) + "\n")
    return path


def write_summary(out: Path, histories: dict[float, dict]) -> Path:
    """sweep.json: each run's metrics.json, its reward-model score at the first and last step and the
    judge's measures at every evaluation, with the command and the machine (a chapter's table comes from it)."""
    rows = []
    for kl_coef, history in histories.items():
        metrics = json.loads((run_folder(out, kl_coef) / "metrics.json").read_text())
        metrics.pop("table")
        rows.append({"kl_coef": kl_coef, **metrics, "score_first": round(history["score"][0], 4),
                     "score_last": round(history["score"][-1], 4), "eval_step": history["eval_step"],
                     **{name: [round(v, 4) for v in history[name]]
                        for name in ("eval_accuracy", "eval_sentence_rate", "eval_win_rate")}})
    path = out / "sweep.json"
    write_json(path, {"command": command_line(), "measured_on": measured_on(), "rows": rows})
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="kl_sweep.py", description=__doc__.split("\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/default", help="a run folder with sft/ and data/ (default runs/default)")
    parser.add_argument("--reward", default="runs/default/reward",
                        help="the reward stage folder the policy is optimised against (the proxy)")
    parser.add_argument("--out", default="runs/default/kl_sweep", help="folder for the runs and the figures")
    parser.add_argument("--kl-coefs", nargs="+", type=float_range(0.0, 100.0), default=[0.0, 0.02, 0.05, 0.2, 0.5],
                        help="one PPO run per coefficient (default 0 0.02 0.05 0.2 0.5)")
    parser.add_argument("--steps", type=positive_int, default=100, help="PPO steps per run (default 100)")
    parser.add_argument("--lr", type=positive_float, default=1e-4, help="policy learning rate (default 1e-4)")
    parser.add_argument("--eval-every", type=positive_int, default=10, help="judge every N steps (default 10)")
    parser.add_argument("--n-eval", type=positive_int, help="judge only the first N test questions")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="the other PPO settings (default: the default preset's)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(set(args.kl_coefs)) != len(args.kl_coefs):
        parser.error(f"--kl-coefs {' '.join(f'{c:g}' for c in args.kl_coefs)} repeats a value; give each once")
    if args.eval_every > args.steps:
        parser.error(f"--eval-every {args.eval_every} is more than --steps {args.steps}; the runs would be judged "
                     f"only at the end")
    settings = {k: v for k, v in PRESETS[args.preset]["ppo"].items() if k != "n_eval"}
    settings.update(steps=args.steps, lr=args.lr, eval_every=args.eval_every, save_every=args.eval_every)
    run, out = Path(args.run), Path(args.out)
    for needed in (run / "sft", run / "data", Path(args.reward)):
        if not needed.is_dir():
            parser.error(f"{needed} not found; run `python -m gpt_scratch run --out {run}` first (and train the "
                         f"reward model given with --reward)")
    histories = run_sweep(run, Path(args.reward), out, sorted(args.kl_coefs), PPOConfig(**settings),
                          args.n_eval, args.quiet)
    weakest = min(histories)
    written = [plot_hacking(histories[weakest], weakest, out / "hacking.png"),
               plot_gold_vs_kl(histories, out / "gold_vs_kl.png"),
               write_samples(run_folder(out, weakest), run / "data", out / "samples.md"),
               write_summary(out, histories)]
    print("kl_coef | RM score first -> last | accuracy | win-rate vs SFT | KL at the end")
    for kl_coef, h in histories.items():
        print(f"{kl_coef:g} | {h['score'][0]:.2f} -> {h['score'][-1]:.2f} | {h['eval_accuracy'][0]:.1%} -> "
              f"{h['eval_accuracy'][-1]:.1%} | {h['eval_win_rate'][-1]:.1%} | {h['kl'][-1]:.2f}")
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
