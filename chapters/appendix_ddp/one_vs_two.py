"""One process vs two (appendix: DDP): the same pretraining run, once in 1 process and once in 2
under torchrun, and the two loss curves side by side.

    python chapters/appendix_ddp/one_vs_two.py --out runs/ddp --preset default --steps 100 --batch-size 16

It writes a corpus of --corpus-chars characters from the embedded world into out/corpus.txt, then
    out/one/   python -m gpt_scratch pretrain ...                         (1 process)
    out/two/   torchrun --standalone --nproc_per_node=2 -m gpt_scratch pretrain ...   (2 processes, gloo on CPU)
with the same flags, --batch-size being the global batch (each process reads half of it), and
prints the train loss of both every --print-every steps, the validation losses, the largest
difference, and how long each took; out/results.json keeps the same figures, the command and the
machine they were measured on. Both run in float32: bf16 autocast would round the two
apart by more than the order of the additions does. Even so, over a few hundred steps at a high
learning rate the curves drift apart by rounding alone (the gradients are added in another
order); one process on one thread and on two drifts apart as much (see README.md).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from gpt_scratch.args import OneLineParser, int_range, positive_int, print_error
from gpt_scratch.formats import write_json, write_text
from gpt_scratch.hardware import measured_on
from gpt_scratch.presets import PRESETS
from gpt_scratch.world.corpus import build_world, generate_corpus

PROCESSES = 2


def pretrain_flags(args: argparse.Namespace, corpus: Path, out: Path) -> list[str]:
    flags = ["--corpus", str(corpus), "--out", str(out), "--preset", args.preset, "--max-steps", str(args.steps),
             "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum), "--seed", str(args.seed),
             "--eval-every", str(args.eval_every), "--save-every", str(args.steps), "--device", "cpu",
             "--dtype", "float32", "--quiet"]
    if args.warmup_steps is not None:
        flags += ["--warmup-steps", str(args.warmup_steps)]
    if args.vocab_size is not None:
        flags += ["--vocab-size", str(args.vocab_size)]
    if args.block_size is not None:
        flags += ["--block-size", str(args.block_size)]
    return flags


def run_pretraining(flags: list[str], processes: int) -> float:
    """`python -m gpt_scratch pretrain` in 1 process, or under torchrun in several; returns the wall seconds."""
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                        f"--nproc_per_node={processes}"]
    repo = Path(__file__).resolve().parents[2]  # the processes import this checkout's gpt_scratch
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    began = time.perf_counter()
    result = subprocess.run([*launcher, "-m", "gpt_scratch", "pretrain", *flags], env=env, capture_output=True,
                            text=True)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()] or ["(nothing on stderr)"]
        said = next((line for line in lines if "error:" in line), lines[-1])
        raise RuntimeError(f"pretraining in {processes} process(es) failed with: {said}")
    return time.perf_counter() - began


def history_of(folder: Path) -> dict:
    return json.loads((folder / "checkpoint" / "train_state.json").read_text())["history"]


def compared_losses(one: dict, two: dict, every: int) -> list[dict]:
    """The train loss of both runs every `every` steps (and at the first and last), then the validation
    losses: one {"step", "one", "two", "difference"} each, "step" counted from 1 ("50 (validation)")."""
    rows = []
    last = len(one["step"]) - 1
    for i, step in enumerate(one["step"]):
        if (step + 1) % every == 0 or i in (0, last):
            rows.append({"step": str(step + 1), "one": one["train_loss"][i], "two": two["train_loss"][i]})
    for step, a, b in zip(one["val_step"], one["val_loss"], two["val_loss"]):
        rows.append({"step": f"{step + 1} (validation)", "one": a, "two": b})
    return [{**row, "difference": row["two"] - row["one"]} for row in rows]


def side_by_side(rows: list[dict]) -> str:
    """Markdown: compared_losses as a table."""
    lines = ["| step | 1 process | 2 processes | difference |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['step']} | {r['one']:.6f} | {r['two']:.6f} | {r['difference']:+.1e} |" for r in rows]
    return "\n".join(lines)


def largest_difference(one: dict, two: dict) -> float:
    pairs = list(zip(one["train_loss"], two["train_loss"])) + list(zip(one["val_loss"], two["val_loss"]))
    return max(abs(a - b) for a, b in pairs)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="one_vs_two.py", description=__doc__.split("\n")[0],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/ddp", help="folder for the corpus and the two runs (default runs/ddp)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="model size (default: default)")
    parser.add_argument("--steps", type=positive_int, default=100, help="training steps (default 100)")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help=f"global batch: each of the {PROCESSES} processes reads 1/{PROCESSES} (default 16)")
    parser.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per step (default 1)")
    parser.add_argument("--warmup-steps", type=int_range(0), help="warmup steps (default: the preset's)")
    parser.add_argument("--eval-every", type=positive_int, default=25, help="validate every N steps (default 25)")
    parser.add_argument("--corpus-chars", type=int_range(10_000, 100_000_000), default=1_000_000,
                        help="size of the generated corpus in characters (default 1,000,000)")
    parser.add_argument("--vocab-size", type=int_range(260, 100_000), help="BPE vocabulary (default: the preset's)")
    parser.add_argument("--block-size", type=int_range(2, 8192), help="context length (default: the preset's)")
    parser.add_argument("--print-every", type=positive_int, default=10, help="print every N steps (default 10)")
    parser.add_argument("--seed", type=int_range(0), default=0, help="seed of the corpus and the runs (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size % PROCESSES != 0:
        parser.error(f"--batch-size {args.batch_size} cannot be split over {PROCESSES} processes: use a multiple "
                     f"of {PROCESSES}")
    warmup = args.warmup_steps if args.warmup_steps is not None else PRESETS[args.preset]["pretrain"]["warmup_steps"]
    if warmup > args.steps:
        parser.error(f"--warmup-steps {warmup} (the {args.preset} preset's unless given) is more than --steps "
                     f"{args.steps}; give --warmup-steps N with N <= --steps")
    args.warmup_steps = warmup
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    write_text(corpus, generate_corpus(build_world(args.seed), args.corpus_chars, args.seed))

    try:
        seconds = {n: run_pretraining(pretrain_flags(args, corpus, out / name), n) for n, name in ((1, "one"), (2, "two"))}
    except RuntimeError as err:
        print_error(parser.prog, str(err))
        return 1
    one, two = history_of(out / "one"), history_of(out / "two")
    rows = compared_losses(one, two, args.print_every)
    speed = {name: {"processes": n, "seconds": round(seconds[n], 1), "training_seconds": round(history["seconds"], 1),
                    "tokens_per_second": round(history["tokens"] / history["seconds"])}
             for n, name, history in ((1, "one", one), (2, "two", two))}
    print(side_by_side(rows))
    print(f"largest difference of a loss: {largest_difference(one, two):.1e}")
    for figures in speed.values():
        n = figures["processes"]
        print(f"{n} process{'es' if n > 1 else ''}: {figures['seconds']:.1f} s in all, {figures['training_seconds']:.1f} s "
              f"of training steps, {figures['tokens_per_second']:,} tokens/s")
    command = " ".join(["python chapters/appendix_ddp/one_vs_two.py", *(sys.argv[1:] if argv is None else argv)])
    write_json(out / "results.json", {"command": command, "measured_on": {**measured_on("cpu"), "dtype": "float32"},
                                      "losses": rows, "largest_difference": largest_difference(one, two),
                                      "speed": speed})
    return 0


if __name__ == "__main__":
    sys.exit(main())
