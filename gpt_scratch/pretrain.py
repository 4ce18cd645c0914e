"""The pretraining stage: text file -> tokenizer -> token windows -> trained GPT.

    python -m gpt_scratch pretrain --corpus data/corpus.txt --out runs/default/pretrain
    python -m gpt_scratch pretrain --corpus my_text.txt --preset gpt2 --gpt2-vocab gpt2.tiktoken

The tokenizer is trained on the corpus (--tokenizer train), or it is GPT-2's own (--tokenizer
gpt2, the gpt2 preset's choice), loaded before anything else so that a missing vocabulary stops
the stage at once.

Writes into the stage folder:
    tokenizer.tiktoken, tokenizer.json   the tokenizer (trained on the corpus, or GPT-2's)
    checkpoint/                          the model (see checkpoint.py), resumable
    loss.png, samples.txt, metrics.json  metrics.json is written last: it marks the stage done

Under torchrun (distributed.py) every process trains on its share of each batch and rank 0
alone writes these files.
"""

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt_scratch import distributed
from gpt_scratch.args import UsageError, float_range, int_range
from gpt_scratch.data import TokenWindows, read_corpus, split_train_val
from gpt_scratch.formats import write_json, write_text
from gpt_scratch.generate import generate_text
from gpt_scratch.hardware import pick_device
from gpt_scratch.model import GPT, Architecture, GPTConfig, layout
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.settings import add_flags, from_flags, given, setting
from gpt_scratch.tokenizer import GPT2Vocabulary, Tokenizer, gpt2_tokenizer
from gpt_scratch.train import TrainConfig, add_training_flags, train, training_settings

SAMPLE_PROMPTS = ["Once upon a time", "The cat", "3 plus 4 is"]


def tokenizer_for(text: str, out_dir: Path, vocab_size: int, resume: bool, quiet: bool) -> Tokenizer:
    """The stage's BPE tokenizer (see train_or_reuse_tokenizer). Under torchrun rank 0 makes and saves
    it, and the other ranks load its files."""
    if not distributed.is_main():
        distributed.barrier()  # until rank 0 has saved it
        return Tokenizer.load(out_dir)
    tokenizer = train_or_reuse_tokenizer(text, out_dir, vocab_size, resume, quiet)
    distributed.barrier()
    return tokenizer


def train_or_reuse_tokenizer(text: str, out_dir: Path, vocab_size: int, resume: bool, quiet: bool) -> Tokenizer:
    """Train a BPE tokenizer on the corpus, or, when resuming, reuse the one the interrupted run saved."""
    if resume and (out_dir / "tokenizer.tiktoken").is_file():
        tokenizer = Tokenizer.load(out_dir)
        if tokenizer.n_vocab == vocab_size:
            return tokenizer
    began = time.perf_counter()
    tokenizer = Tokenizer.train(text, vocab_size)
    tokenizer.save(out_dir)
    if not quiet:
        print(f"trained a {vocab_size}-token BPE tokenizer in {time.perf_counter() - began:.1f} s")
    return tokenizer


def pretrain(corpus: str | Path, out_dir: str | Path, model_settings: dict, train_cfg: TrainConfig,
             vocab_size: int | None, val_fraction: float = 0.05, resume: bool = False, quiet: bool = False,
             tokenizer: Tokenizer | None = None) -> dict:
    """Run the whole stage; return its metrics (also written to out_dir/metrics.json; under torchrun
    by rank 0, and the other ranks return {}).

    tokenizer: a ready tokenizer (GPT-2's) to use as it is; without one, a BPE tokenizer of
    vocab_size tokens is trained on the corpus.
    """
    if train_cfg.max_steps < 1:
        raise ValueError(f"max_steps is {train_cfg.max_steps}; pretraining needs at least 1 step")
    out_dir = Path(out_dir)
    text = read_corpus(corpus)
    out_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer is None:
        tokenizer = tokenizer_for(text, out_dir, vocab_size, resume, quiet)
    elif distributed.is_main():
        tokenizer.save(out_dir)  # beside the checkpoint's copy, as a trained one is
    train_ids, val_ids = split_train_val(tokenizer.encode(text), val_fraction)
    config = GPTConfig(vocab_size=tokenizer.n_vocab, **model_settings)
    for split, ids in (("training", train_ids), ("validation", val_ids)):
        if len(ids) < config.block_size + 1:
            raise ValueError(f"the {split} part of {corpus} is only {len(ids)} tokens, but one window needs "
                             f"block_size + 1 = {config.block_size + 1}; use more text, a smaller block size "
                             f"or a larger validation fraction")
    train_windows = TokenWindows(train_ids, config.block_size, train_cfg.batch_size, seed=train_cfg.seed)
    val_windows = TokenWindows(val_ids, config.block_size, train_cfg.batch_size, seed=train_cfg.seed)
    torch.manual_seed(train_cfg.seed)  # the same seed, the same initial weights
    model = GPT(config)
    if not quiet:
        print(f"corpus: {len(text):,} characters -> {len(train_ids):,} train / {len(val_ids):,} val tokens; "
              f"model: {model.num_parameters():,} parameters")

    history = train(model, tokenizer, train_windows.batch, val_windows.evenly_spaced_batches(8), train_cfg,
                    out_dir, meta={"stage": "pretrain", "corpus": str(corpus)}, resume=resume, quiet=quiet)
    if not distributed.is_main():  # rank 0 writes the samples and the metrics
        return {}

    samples = generate_text(model, tokenizer, SAMPLE_PROMPTS, max_new_tokens=40, temperature=0.8, top_k=40,
                            seed=train_cfg.seed)
    write_text(out_dir / "samples.txt", "".join(f"{p}|{s}\n\n" for p, s in zip(SAMPLE_PROMPTS, samples)))
    metrics = {
        "parameters": model.num_parameters(),
        "train_tokens": len(train_ids),
        "steps": train_cfg.max_steps,
        "final_train_loss": round(sum(history["train_loss"][-20:]) / len(history["train_loss"][-20:]), 4),
        "final_val_loss": round(history["val_loss"][-1], 4),
        "train_seconds": round(history["seconds"], 1),
        "tokens_per_second": round(history["tokens"] / max(history["seconds"], 1e-9)),
        "sample": SAMPLE_PROMPTS[0] + samples[0],
    }
    write_json(out_dir / "metrics.json", metrics)
    if not quiet:
        print(json.dumps(metrics, indent=2))
    return metrics


def model_settings(preset_model: dict, arch: str, typed: dict | None = None) -> dict:
    """The preset's model sizes in the layout arch (model.layout), the switches typed as flags left to win.

    Example: model_settings({"n_head": 4, "n_embd": 128}, "llama")
    -> {"n_head": 4, "n_embd": 128, "norm": "rmsnorm", "position": "rope", ..., "n_kv_head": 2}
    """
    n_head = (typed or {}).get("n_head", preset_model.get("n_head", GPTConfig.n_head))
    return {**preset_model, **layout(arch, n_head)}


# The command: python -m gpt_scratch pretrain ----------------------------------------------------------------

@dataclass
class PretrainOptions:
    """The pretrain command's own settings (the model's are GPTConfig's, the training's TrainConfig's)."""
    corpus: str = setting("data/corpus.txt", "UTF-8 text file", preset=False)
    out: str = setting("runs/default/pretrain", "stage folder", preset=False)
    tokenizer: str = setting("train", "train: a BPE tokenizer learnt on the corpus; gpt2: GPT-2's own",
                             choices=("train", "gpt2"))
    vocab_size: int = setting(1024, "BPE vocabulary incl. special tokens", type=int_range(260, 200_000))
    val_fraction: float = setting(0.05, "share of the corpus kept for validation",
                                  type=float_range(0.0, 0.5, include_low=False), preset=False)

    def validate(self, given: set[str]) -> None:
        if self.tokenizer == "gpt2" and "vocab_size" in given:
            raise ValueError("--vocab-size sizes a tokenizer trained on the corpus; GPT-2's has its own 50,257 tokens "
                             "(leave out --vocab-size, or give --tokenizer train)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, PretrainOptions, preset=PRESETS["default"])
    add_flags(parser, GPT2Vocabulary)
    add_flags(parser, Architecture, "model (default: from --preset)")
    add_flags(parser, GPTConfig, "model (default: from --preset)", preset=PRESETS["default"]["model"])
    add_training_flags(parser, "pretrain")


def run(args: argparse.Namespace) -> int:
    run_as = from_flags(StageOptions, args)
    preset = PRESETS[run_as.preset]
    model_preset = model_settings(preset["model"], from_flags(Architecture, args).arch, given(args, GPTConfig))
    model = from_flags(GPTConfig, args, model_preset, run_as.preset)  # checked now, before any file is read
    cfg = training_settings(args, "pretrain")
    options = from_flags(PretrainOptions, args, preset, run_as.preset)
    if options.tokenizer == "train" and args.gpt2_vocab is not None:
        raise UsageError("--gpt2-vocab needs --tokenizer gpt2 (here the tokenizer is trained on the corpus)")
    # GPT-2's tokenizer is loaded first, so that without its vocabulary the stage stops before any work.
    tokenizer = gpt2_tokenizer(args.gpt2_vocab, chat_tokens=True) if options.tokenizer == "gpt2" else None
    distributed.start(pick_device(cfg.device))
    settings = {name: getattr(model, name) for name in {**model_preset, **given(args, GPTConfig)}}
    pretrain(options.corpus, options.out, settings, cfg, options.vocab_size, options.val_fraction, resume=run_as.resume,
             quiet=run_as.quiet, tokenizer=tokenizer)
    return 0
