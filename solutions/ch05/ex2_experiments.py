"""Chapter 5 experiments: fine-tune a small pretrained GPT on the world's tasks, one setting changed at a time.

    Exercise 5.5  steps_for_epochs         how many optimizer steps make the epochs you ask for
    Exercise 5.6  prompt_and_answer_loss   the loss on prompt tokens and on answer tokens, apart
    Exercise 5.7  family_gains             before/after accuracy per family, biggest gain first

Run it: it pretrains a small GPT (4 blocks, 64 channels, ~0.2M parameters) on the embedded
corpus, or reuses the one in --base, fine-tunes it with gpt_scratch.sft.sft and prints what
changed: accuracy per family before and after, the loss on prompt and on answer tokens, and a
few answers. With the defaults it takes a minute or two on a laptop CPU. The numbers are small
next to the main pipeline's (`python -m gpt_scratch run`): compare settings with each other.
    python exercises/ch05/ex2_experiments.py --base runs/ch05/base          # pretrains once, then reuses
    python exercises/ch05/ex2_experiments.py --base runs/ch05/base --loss-on all
    python exercises/ch05/ex2_experiments.py --base runs/ch05/base --template alpaca --epochs 4
    python exercises/ch05/ex2_experiments.py --help
Grade it:  python -m gpt_scratch grade --chapter 5
"""

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

PROG = Path(__file__).name  # error lines start with it: "<PROG>: error: ..."
REPO = Path(__file__).resolve().parents[2]
if (REPO / "gpt_scratch").is_dir():  # run from a clone: import the package without installing it
    sys.path.insert(0, str(REPO))

from gpt_scratch.args import OneLineParser, exercise_not_done, float_range, int_range, non_negative_int  # noqa: E402
from gpt_scratch.checkpoint import find_checkpoint, load_checkpoint, load_train_state, read_config  # noqa: E402
from gpt_scratch.formats import write_json, write_text  # noqa: E402
from gpt_scratch.pretrain import pretrain  # noqa: E402
from gpt_scratch.sft import IGNORE, answer, collate, encode_records, load_split, sft  # noqa: E402
from gpt_scratch.templates import encode_example  # noqa: E402
from gpt_scratch.train import TrainConfig  # noqa: E402
from gpt_scratch.world import build_world, generate_corpus, make_tasks  # noqa: E402

MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 64, "block_size": 96}  # alpaca examples are up to ~80 tokens
VOCAB_SIZE = 512
CORPUS_BYTES = 300_000
BATCH_SIZE = 16
DEFAULT_PRETRAIN_STEPS = 300


def steps_for_epochs(n_examples: int, batch_size: int, epochs: float) -> int:
    """Optimizer steps that show the model `epochs` passes over n_examples, batch_size at a time.

    Examples seen = round(n_examples * epochs) (epochs may be a fraction); steps = that number
    divided by batch_size, rounded *up* (a last, partial batch is still a step), and at least 1.
    Examples: (100, 32, 1) -> 4;  (100, 32, 2.5) -> 8;  (64, 16, 1) -> 4;  (10, 16, 0.01) -> 1.
    """
    seen = round(n_examples * epochs)
    return max(1, math.ceil(seen / batch_size))


def prompt_and_answer_loss(logits: torch.Tensor, y_all: torch.Tensor, y_answer: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy over the prompt targets and over the answer targets, as two floats.

    logits (B, T, V) come from the model on a batch x; y_all (B, T) are its targets with only the
    padding set to -100 (collate with mask_prompt=False); y_answer (B, T) the same targets with
    the prompt also set to -100 (mask_prompt=True). A position is an answer target where
    y_answer != -100, and a prompt target where y_all != -100 but y_answer == -100. Return
    (mean loss over prompt targets, mean loss over answer targets); a group with no targets
    gives float("nan").
    Example: targets all [5, 6, 9, -100], answer [-100, 6, 9, -100] -> the prompt loss averages
    position 0, the answer loss positions 1 and 2.
    """
    losses = F.cross_entropy(logits.flatten(0, 1).float(), y_all.flatten().clamp(min=0), reduction="none")
    is_answer = y_answer.flatten() != IGNORE
    is_prompt = (y_all.flatten() != IGNORE) & ~is_answer

    def mean(selected: torch.Tensor) -> float:
        return losses[selected].mean().item() if selected.any() else float("nan")

    return mean(is_prompt), mean(is_answer)


def family_gains(before: dict, after: dict) -> list[tuple[str, float, float]]:
    """(family, accuracy before, accuracy after) for every family of after, biggest gain first.

    before and after are the judge's score dicts (gpt_scratch.world.judge.score): each has
    "families": {family: {"accuracy": ..., ...}}. A family missing from before counts as 0.0.
    Sort by after - before, largest first; equal gains in alphabetical order of the family.
    Example: before {add 0.0, facts 0.5}, after {add 0.4, facts 0.6} -> [("add", 0.0, 0.4), ("facts", 0.5, 0.6)].
    """
    rows = []
    for family, scores in after["families"].items():
        was = before["families"].get(family, {}).get("accuracy", 0.0)
        rows.append((family, was, scores["accuracy"]))
    return sorted(rows, key=lambda row: (-(row[2] - row[1]), row[0]))


def base_folder(text: str) -> Path:
    """argparse type for --base: a folder with a checkpoint (reused), or a new or empty one (pretrained into)."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder (a pretrained stage folder, or a new one)")
    if path.is_dir() and any(path.iterdir()):
        try:
            find_checkpoint(path)
        except FileNotFoundError:
            raise argparse.ArgumentTypeError(f"{text} holds no checkpoint; give a stage folder written by "
                                             f"pretraining, or a new folder to pretrain into") from None
    return path


def out_folder(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder for the run's files")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Pretrain a small GPT on the embedded corpus (or reuse --base), fine-tune it on the "
                    "world's instruction tasks with gpt_scratch.sft, and print accuracy per family before and "
                    "after, the loss on prompt vs answer tokens, and sample answers. Change one flag at a time.")
    parser.add_argument("--template", choices=["alpaca", "chat"], default="chat",
                        help="prompt template: chat (<|user|> ... <|assistant|>, default) or alpaca "
                             "(### Instruction: ... ### Response:), which needs about twice the tokens")
    parser.add_argument("--loss-on", choices=["answer", "all"], default="answer",
                        help="tokens in the loss: answer only (prompt masked with -100, default) or all tokens")
    parser.add_argument("--n-train", type=int_range(1, 20_000), default=2000,
                        help="training tasks, 1 to 20000 (default 2000)")
    parser.add_argument("--epochs", type=float_range(0.01, 100.0), default=2.0,
                        help=f"passes over the training tasks, 0.01 to 100; steps = epochs x n-train / "
                             f"{BATCH_SIZE} (batch size), rounded up (default 2)")
    parser.add_argument("--lr", type=float_range(1e-6, 1.0), default=3e-3,
                        help="peak fine-tuning learning rate, after a short warmup (default 0.003)")
    parser.add_argument("--max-length", type=int_range(8, 100_000), default=None,
                        help="cut examples to this many tokens; at most the model's block size "
                             f"({MODEL['block_size']} here, or --base's) (default: the block size)")
    parser.add_argument("--n-test", type=int_range(1, 1000), default=200,
                        help="held-out test tasks the judge scores, at most; 1 to 1000 (default 200)")
    parser.add_argument("--pretrain-steps", type=int_range(1, 100_000), default=None,
                        help=f"pretraining steps of the base model (default {DEFAULT_PRETRAIN_STEPS}); with a "
                             f"--base that holds a model already, they must match its steps")
    parser.add_argument("--base", type=base_folder, default=None,
                        help="stage folder of the base model: reused if it holds a checkpoint, else the script "
                             "pretrains into it, so later runs skip pretraining (default: pretrain into --out)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the world (corpus and tasks) and of training; with --base, use the "
                             "seed its corpus was made with (default 0)")
    parser.add_argument("--out", type=out_folder, default=None,
                        help="folder for the run's data/, pretrain/ and sft/ (overwritten); "
                             "default: a temporary folder, deleted at the end")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    block_size = MODEL["block_size"]
    if args.base is not None and args.base.is_dir() and any(args.base.iterdir()):
        config, meta = read_config(find_checkpoint(args.base))
        block_size = config.block_size
        steps = meta.get("train_config", {}).get("max_steps")
        if args.pretrain_steps is not None and steps is not None and steps != args.pretrain_steps:
            parser.error(f"--pretrain-steps {args.pretrain_steps} differs from the {steps} steps of the model "
                         f"in --base {args.base}; leave --pretrain-steps out to reuse it, or name a new --base folder")
    if args.max_length is not None and args.max_length > block_size:
        parser.error(f"--max-length {args.max_length} is longer than the model's block size ({block_size})")
    return args


def write_data(folder: Path, seed: int, n_train: int, n_test: int) -> None:
    """The corpus and the task splits that gpt_scratch.sft reads (sft_train/val/test.json)."""
    world = build_world(seed)
    write_text(folder / "corpus.txt", generate_corpus(world, CORPUS_BYTES, seed))
    for name, records in make_tasks(world, seed, n_train=n_train, n_val=64, n_test=n_test).items():
        write_json(folder / f"sft_{name}.json", records)


def loss_split(model, tokenizer, records: list[dict], template: str, max_length: int) -> tuple[float, float]:
    """(prompt loss, answer loss) of model on the records, with your prompt_and_answer_loss."""
    examples = encode_records(tokenizer, records, template, max_length, quiet=True)
    x, y_all = collate(examples, tokenizer.eot_id, mask_prompt=False)
    _, y_answer = collate(examples, tokenizer.eot_id, mask_prompt=True)
    model.eval()
    with torch.no_grad():
        return prompt_and_answer_loss(model(x), y_all, y_answer)


def experiment(args: argparse.Namespace, run_dir: Path) -> None:
    steps = steps_for_epochs(args.n_train, BATCH_SIZE, args.epochs)
    print(f"settings: template {args.template}, loss on {args.loss_on} tokens, {args.n_train} training tasks x "
          f"{args.epochs:g} epochs = {steps} steps of {BATCH_SIZE}, lr {args.lr:g}, seed {args.seed}")
    print("run folder: " + (f"{args.out} (kept)" if args.out else "temporary (deleted at the end; keep it with --out)"))
    data_dir = run_dir / "data"
    write_data(data_dir, args.seed, args.n_train, args.n_test)

    base = args.base or run_dir / "pretrain"
    if args.base is not None and args.base.is_dir() and any(args.base.iterdir()):
        print(f"base model: reusing {args.base} (pretraining skipped)")
    else:
        pretrain_steps = args.pretrain_steps or DEFAULT_PRETRAIN_STEPS
        cfg = TrainConfig(max_steps=pretrain_steps, batch_size=BATCH_SIZE, lr=3e-3,
                          warmup_steps=min(30, pretrain_steps // 10), eval_every=max(1, pretrain_steps // 5),
                          save_every=pretrain_steps + 1, seed=args.seed)
        metrics = pretrain(data_dir / "corpus.txt", base, MODEL, cfg, VOCAB_SIZE, quiet=True)
        print(f"base model: pretrained {metrics['parameters']:,} parameters for {pretrain_steps} steps "
              f"-> validation loss {metrics['final_val_loss']:.4f}" + (f", saved in {args.base}" if args.base else ""))
    model, tokenizer, _ = load_checkpoint(base)
    max_length = args.max_length or model.config.block_size
    train_records = load_split(data_dir, "train")
    val_records = load_split(data_dir, "val")
    cut = sum(len(encode_example(tokenizer, record, args.template)[0]) > max_length for record in train_records)
    print(f"training examples cut to --max-length {max_length}: {cut} of {len(train_records)}"
          + (" (their end-of-text is lost: the model cannot learn to stop on them)" if cut else ""))
    base_losses = loss_split(model, tokenizer, val_records, args.template, max_length)

    mask_prompt = args.loss_on == "answer"
    cfg = TrainConfig(max_steps=steps, batch_size=BATCH_SIZE, lr=args.lr, warmup_steps=min(20, steps // 10),
                      eval_every=max(1, steps // 5), save_every=steps + 1, seed=args.seed)
    metrics = sft(base, data_dir, run_dir / "sft", cfg, template=args.template, mask_prompt=mask_prompt,
                  max_length=max_length, quiet=True)
    history = load_train_state(run_dir / "sft")[0]["history"]
    print(f"fine-tuned {steps} steps: train loss {history['train_loss'][0]:.4f} -> {history['train_loss'][-1]:.4f}, "
          f"validation loss {metrics['final_val_loss']:.4f}")

    tuned, _, _ = load_checkpoint(run_dir / "sft")
    tuned_losses = loss_split(tuned, tokenizer, val_records, args.template, max_length)
    print("\nmean loss on the validation tasks   prompt tokens   answer tokens")
    for name, (prompt_loss, answer_loss) in (("base model", base_losses), ("fine-tuned", tuned_losses)):
        print(f"  {name:33} {prompt_loss:13.4f} {answer_loss:15.4f}")

    scores = json.loads((run_dir / "sft" / "scores.json").read_text())
    print(f"\n{'family':14} {'before':>8} {'after':>8}   (held-out test tasks, biggest gain first)")
    for family, was, now in family_gains(scores["before"], scores["after"]):
        print(f"{family:14} {was:8.1%} {now:8.1%}")
    before, after = scores["before"], scores["after"]
    print(f"{'all':14} {before['accuracy']:8.1%} {after['accuracy']:8.1%}   ({after['n']} tasks; unseen ones "
          f"{before['unseen_accuracy']:.1%} -> {after['unseen_accuracy']:.1%}; answers in the preferred "
          f"'The answer is ...' style: {after['sentence_rate']:.1%})")

    test_records = load_split(data_dir, "test")[:3]
    print("\nsample answers of the fine-tuned model:")
    for record, response in zip(test_records, answer(tuned, tokenizer, test_records, args.template)):
        question = record["instruction"] + (f" [{record['input']}]" if record["input"] else "")
        print(f"  {question}\n    model: {response!r}   truth: {record['answer']!r}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    try:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            experiment(args, args.out)
        else:
            with tempfile.TemporaryDirectory(prefix="gpt-scratch-ch05-") as folder:
                experiment(args, Path(folder))
    except NotImplementedError as err:  # an exercise is still a stub: say which one, no traceback
        return exercise_not_done(PROG, err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
