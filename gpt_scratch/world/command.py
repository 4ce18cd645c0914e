"""`python -m gpt_scratch data`: write the embedded world's data files.

    python -m gpt_scratch data --out data --seed 0          # about 3 MB of corpus + tasks, seconds
    python -m gpt_scratch data --style sentence --label-noise 0.1

Files written into --out (the same seed and flags always give the same bytes):
    corpus.txt                   pretraining text
    world.json                   the world's facts and what is held out
    sft_train.json, sft_val.json, sft_test.json
                                 Alpaca records (instruction, input, output) + id, family,
                                 level, answer, unseen
    sft_train_chat.jsonl         the training tasks as chat messages (user, assistant)
    sft_train_completion.jsonl   the training tasks as prompt / completion
    preferences_train.jsonl      prompt / chosen / rejected from the training tasks (with noise)
    preferences_test.jsonl       the same from the test tasks (never noisy: it measures)
    manifest.json                the settings and per-family counts
"""

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from gpt_scratch.args import float_range, int_range, non_negative_int, positive_int
from gpt_scratch.formats import write_json, write_jsonl, write_text
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.world.corpus import build_world, generate_corpus
from gpt_scratch.world.preferences import make_preference_pairs, prompt_of
from gpt_scratch.world.tasks import family_counts, format_family_counts, make_tasks

FILES = ("corpus.txt", "world.json", "sft_train.json", "sft_val.json", "sft_test.json", "sft_train_chat.jsonl",
         "sft_train_completion.jsonl", "preferences_train.jsonl", "preferences_test.jsonl", "manifest.json")


@dataclass
class DataSettings:
    """What the world's data files are made from: a seed, and the sizes and styles of the files."""
    seed: int = setting(0, "decides the world, the corpus, the tasks and the pairs", type=non_negative_int,
                        preset=False)
    corpus_mb: float = setting(3.0, "corpus size in megabytes, 0.01 to 100", type=float_range(0.01, 100.0),
                               preset=False)
    n_train: int = setting(20_000, "training tasks", type=positive_int, preset=False)
    n_val: int = setting(500, "validation tasks, at most", type=positive_int, preset=False)
    n_test: int = setting(1_000, "test tasks, at most", type=positive_int, preset=False)
    style: str = setting("mix", "style of the training outputs: bare '82', sentence 'The answer is 82.' or a 50/50 "
                                "mix", choices=("mix", "bare", "sentence"), preset=False)
    label_noise: float = setting(0.0, "share of training preference pairs swapped, 0 to 0.5",
                                 type=float_range(0.0, 0.5), preset=False)
    max_level: int = setting(2, "hardest task level: 1 one digit / 3 letters, 2 two digits / 4-6 letters, 3 three "
                                "digits / 7+ letters", type=int_range(1, 3), preset=False)


DEFAULTS = asdict(DataSettings())


@dataclass
class DataOptions:
    out: str = setting("data", "folder for the files", preset=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, DataOptions)
    add_flags(parser, DataSettings)


def as_chat(example: dict) -> dict:
    return {"id": example["id"], "messages": [{"role": "user", "content": prompt_of(example)},
                                              {"role": "assistant", "content": example["output"]}]}


def as_completion(example: dict) -> dict:
    return {"id": example["id"], "prompt": prompt_of(example), "completion": example["output"]}


def write_dataset(out_dir: str | Path, seed: int = 0, corpus_mb: float = 3.0, n_train: int = 20_000,
                  n_val: int = 500, n_test: int = 1_000, style: str = "mix", label_noise: float = 0.0,
                  max_level: int = 2) -> dict:
    """Generate everything and write FILES into out_dir; returns the manifest plus timings."""
    out = Path(out_dir)
    settings = {"seed": seed, "corpus_mb": corpus_mb, "n_train": n_train, "n_val": n_val, "n_test": n_test,
                "style": style, "label_noise": label_noise, "max_level": max_level}
    seconds, began = {}, time.perf_counter()

    world = build_world(seed)
    write_text(out / "corpus.txt", generate_corpus(world, int(corpus_mb * 1_000_000), seed))
    write_json(out / "world.json", world.to_dict())
    seconds["corpus"], began = time.perf_counter() - began, time.perf_counter()

    splits = make_tasks(world, seed, n_train, n_val, n_test, style=style, max_level=max_level)
    for name, examples in splits.items():
        write_json(out / f"sft_{name}.json", examples)
    write_jsonl(out / "sft_train_chat.jsonl", [as_chat(e) for e in splits["train"]])
    write_jsonl(out / "sft_train_completion.jsonl", [as_completion(e) for e in splits["train"]])
    seconds["tasks"], began = time.perf_counter() - began, time.perf_counter()

    train_pairs = make_preference_pairs(splits["train"], seed, label_noise)
    test_pairs = make_preference_pairs(splits["test"], seed + 1, label_noise=0.0)
    write_jsonl(out / "preferences_train.jsonl", train_pairs)
    write_jsonl(out / "preferences_test.jsonl", test_pairs)
    seconds["preferences"] = time.perf_counter() - began

    manifest = {"settings": settings, "files": list(FILES), "family_counts": family_counts(splits),
                "preference_pairs": {"train": len(train_pairs), "train_flipped": sum(p["flipped"] for p in train_pairs),
                                     "test": len(test_pairs)}}
    write_json(out / "manifest.json", manifest)  # written last: its presence means "complete"
    return {**manifest, "seconds": seconds}


def report(summary: dict, out_dir: Path) -> str:
    pairs, seconds = summary["preference_pairs"], summary["seconds"]
    return "\n".join([
        format_family_counts(summary["family_counts"]), "",
        f"preference pairs: {pairs['train']} train ({pairs['train_flipped']} flipped by label noise), "
        f"{pairs['test']} test",
        "seconds: " + ", ".join(f"{stage} {value:.1f}" for stage, value in seconds.items())
        + f" (total {sum(seconds.values()):.1f})",
        f"wrote {len(FILES)} files to {out_dir}",
    ])


def run(args: argparse.Namespace) -> int:
    out = Path(from_flags(DataOptions, args).out)
    summary = write_dataset(out, **asdict(from_flags(DataSettings, args)))
    print(report(summary, out))
    return 0


def ensure_default_data(out_dir: str | Path, seed: int = 0, corpus_mb: float = 3.0, quiet: bool = False,
                        n_train: int = DEFAULTS["n_train"], n_val: int = DEFAULTS["n_val"],
                        n_test: int = DEFAULTS["n_test"]) -> Path:
    """The default data (with these sizes) in out_dir, generated only if it is not there yet.

    Everything is written into out_dir.partial first and renamed at the end, so an interrupted
    run never leaves half a dataset behind (the next call starts the partial folder again).
    """
    out = Path(out_dir)
    settings = {**DEFAULTS, "seed": seed, "corpus_mb": corpus_mb, "n_train": n_train, "n_val": n_val, "n_test": n_test}
    manifest = out / "manifest.json"
    if out.exists():
        if manifest.is_file() and json.loads(manifest.read_text())["settings"] == settings:
            return out
        raise ValueError(f"{out} exists but does not hold the data for seed {seed}, corpus_mb {corpus_mb} and "
                         f"{n_train}/{n_val}/{n_test} tasks; delete it or choose another folder")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    summary = write_dataset(partial, **settings)
    partial.rename(out)
    if not quiet:
        print(report(summary, out))
    return out
