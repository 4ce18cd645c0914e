"""Instruction fine-tuning (SFT): teach a pretrained GPT to answer, then measure it with the judge.

    python -m gpt_scratch sft --base runs/default/pretrain --data runs/default/data --out runs/default/sft
    python -m gpt_scratch sft --base runs/gpt2/base --data alpaca.json --template alpaca --out runs/gpt2/sft

    examples = encode_records(tokenizer, records, "chat", max_length=128)
    x, y = collate(examples[:4], pad_id=tokenizer.eot_id, mask_prompt=True)
    scores = evaluate(model, tokenizer, test_records, "chat")      # accuracy per task family

The ideas of the chapter:
1. A template (templates.py) turns each record into prompt ids + answer ids + one end-of-text.
2. Loss masking: the targets y are -100 (ignored by the loss) on the prompt, so the model is
   trained only to write answers; and on padding, found by *length*, never by id: the pad id is
   the end-of-text id, and masking "every end-of-text" would also hide the real one the model
   must learn to stop with.
3. Replay: a few windows of the pretraining text are trained on at every step as well. Without
   them, fine-tuning on a narrow set of tasks makes a small model forget what it read: the test
   asks facts and sums that no training task showed, so the answer must come from pretraining.
4. Evaluation generates an answer for every held-out task and lets the judge score it.
   Only the embedded world's data folder has the judge's answers. Any other instruction file
   (Alpaca, say, with an imported GPT-2) is trained on except for a held-out slice, and the
   stage reports that slice's loss and the model's first answers to it, with no judge.

Under torchrun (distributed.py) every process trains on its share of each batch (and of the
replayed windows); rank 0 alone judges the model and writes the files.
"""

import argparse
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from gpt_scratch import distributed
from gpt_scratch.args import UsageError, int_range, non_negative_int, positive_int
from gpt_scratch.checkpoint import find_checkpoint, load_stage_checkpoint, read_config, save_checkpoint
# encode_records, collate (data.py) and answer, evaluate (evaluate.py) are imported here for the chapter too
from gpt_scratch.data import (IGNORE, Encoded, ExampleBatches, TokenWindows, collate, encode_records,  # noqa: F401
                              read_corpus)
from gpt_scratch.evaluate import HeldOut, answer, check_judgeable, evaluate, load_split, peak_memory_mb
from gpt_scratch.formats import load_instructions, write_json, write_text
from gpt_scratch.freeze import STRATEGIES, apply_freezing, count_parameters, trainable_table
from gpt_scratch.hardware import pick_device
from gpt_scratch.lora import LoRASettings, remove_lora, save_adapter
from gpt_scratch.model import GPT
from gpt_scratch.plots import plot_bars
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.templates import encode_prompt, to_messages
from gpt_scratch.tokenizer import ASSISTANT, USER, Tokenizer
from gpt_scratch.train import TrainConfig, add_training_flags, train, training_settings
from gpt_scratch.world.judge import format_table, majority_baseline

HELD_OUT_SHARE = 0.05  # of a plain instruction file: the validation slice (at least one record)


@dataclass
class Tuning(LoRASettings):
    """Which parameters fine-tuning may change (chapters 6 and 7); the default trains them all.

    freeze: a strategy of freeze.py (full, last_blocks, head, norms_biases, embeddings_frozen); with a
    lora_rank (Tuning is also a LoRASettings: lora_rank, lora_alpha, lora_targets, lora_dropout, lora_rslora,
    lora_plus_ratio) the base model is frozen and LoRA adapters are trained instead.
    """
    freeze: str = setting("full", "freezing strategy (last_blocks needs --trainable-blocks; full = nothing frozen)",
                          choices=STRATEGIES, preset=False)
    trainable_blocks: int | None = setting(None, "with --freeze last_blocks: how many of the last blocks train "
                                                 "(0..n_layer of the base)", type=non_negative_int, preset=False)

    def validate(self, given: set[str]) -> None:
        super().validate(given)
        if self.lora_rank is not None and (self.freeze != "full" or self.trainable_blocks is not None):
            raise ValueError("--lora-rank cannot be combined with --freeze/--trainable-blocks: LoRA freezes the whole "
                             "base model itself")
        if self.freeze == "last_blocks" and self.trainable_blocks is None:
            raise ValueError("--freeze last_blocks needs --trainable-blocks N")
        if self.trainable_blocks is not None and self.freeze != "last_blocks":
            raise ValueError(f"--trainable-blocks only works with --freeze last_blocks, not --freeze {self.freeze}")

    def apply(self, model: GPT) -> None:
        if self.lora_rank is not None:
            self.add_to(model)
        else:
            apply_freezing(model, self.freeze, self.trainable_blocks)

    def describe(self) -> str:
        if self.lora_rank is not None:
            return (f"LoRA rank {self.lora_rank} on {'+'.join(self.lora_targets)}"
                    + (", rsLoRA" if self.lora_rslora else "")
                    + (f", LoRA+ ratio {self.lora_plus_ratio:g}" if self.lora_plus_ratio != 1 else ""))
        return self.freeze + (f" {self.trainable_blocks}" if self.freeze == "last_blocks" else "")


def preset_lora(preset: str) -> Tuning:
    """The LoRA stage of a preset (PRESETS[preset]["lora"]: its rank, targets and LoRA+ ratio) as a Tuning."""
    lora = PRESETS[preset]["lora"]
    return Tuning(lora_rank=lora["rank"], lora_targets=list(lora["targets"]),
                  lora_plus_ratio=lora.get("plus_ratio", 1.0))


def replay_windows(tokenizer: Tokenizer, corpus: str | Path | None, block_size: int, per_step: int,
                   seed: int) -> TokenWindows:
    """per_step random windows of the pretraining text for every fine-tuning step."""
    if corpus is None:
        raise ValueError("replay needs the pretraining corpus, and the base checkpoint does not name one; "
                         "give it with --replay-corpus, or turn replay off with --replay 0")
    if not Path(corpus).is_file():
        raise FileNotFoundError(f"replay corpus {corpus} not found; give the pretraining text with --replay-corpus, "
                                f"or turn replay off with --replay 0")
    ids = torch.tensor(tokenizer.encode(read_corpus(corpus)), dtype=torch.long)
    return TokenWindows(ids, block_size, per_step, seed=seed + 1)


def load_sft_data(data: Path, n_train: int | None,
                  n_eval: int | None) -> tuple[list[dict], list[dict], list[dict] | None]:
    """(train, validation, test) records. test is None for a plain file: nothing the judge can score.

    A folder from `python -m gpt_scratch data` holds the three splits, and its test records carry
    the judge's answers. A single instruction file is shuffled once with a fixed seed (the same
    held-out slice for every run) and HELD_OUT_SHARE of it is kept for validation.
    """
    if not data.exists():
        raise FileNotFoundError(f"{data} not found; give a folder with sft_train.json, sft_val.json, sft_test.json "
                                f"(python -m gpt_scratch data) or one instruction file (.json or .jsonl)")
    if data.is_file():
        records = load_instructions(data)
        if len(records) < 2:
            raise ValueError(f"{data} holds {len(records)} record; fine-tuning needs at least 2 (one is held out)")
        order = list(range(len(records)))
        random.Random(0).shuffle(order)
        n_val = max(1, round(len(records) * HELD_OUT_SHARE))
        val = [records[i] for i in sorted(order[:n_val])]
        train = [records[i] for i in sorted(order[n_val:])]
        return train[:n_train] if n_train else train, val, None
    train, val, test = load_split(data, "train", n_train), load_split(data, "val"), load_split(data, "test", n_eval)
    check_judgeable(test, data / "sft_test.json")
    return train, val, test


def check_template(tokenizer: Tokenizer, template: str) -> None:
    """The chat template needs <|user|> and <|assistant|>; GPT-2's own tokenizer has neither."""
    absent = [token for token in (USER, ASSISTANT) if token not in tokenizer.special_tokens]
    if template == "chat" and absent:
        raise ValueError(f"the chat template needs {' and '.join(absent)}, which the base's tokenizer "
                         f"({tokenizer.name!r}) lacks; use --template alpaca")


def sft(base: str | Path, data: str | Path, out_dir: str | Path, cfg: TrainConfig, template: str = "chat",
        mask_prompt: bool = True, n_train: int | None = None, max_length: int | None = None,
        n_eval: int | None = None, resume: bool = False, quiet: bool = False,
        tuning: Tuning | None = None, score_before: bool = True, replay: int = 0,
        replay_corpus: str | Path | None = None) -> dict:
    """The whole SFT stage: load the base model, score it, fine-tune, score again; return metrics.

    data: the world's data folder (scored by the judge) or one instruction file (no judge; see
    load_sft_data).

    replay: windows of pretraining text (block_size tokens each) trained on at every step, from
    replay_corpus (default: the corpus the base model was pretrained on); 0 turns replay off.
    With LoRA, the stage folder also gets adapter/ (the small adapter file), and the checkpoint
    holds the merged model: a plain GPT that the next stage loads like any other.
    Under torchrun rank 0 returns the metrics, and the other ranks return {} once trained.
    """
    tuning = tuning or Tuning()
    data, out_dir = Path(data), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    model, tokenizer, base_meta = load_stage_checkpoint(base, device=device)
    check_template(tokenizer, template)
    max_length = max_length or model.config.block_size
    if max_length > model.config.block_size:
        raise ValueError(f"max_length {max_length} is longer than the model's context ({model.config.block_size})")

    train_records, val_records, test_records = load_sft_data(data, n_train, n_eval)
    examples = encode_records(tokenizer, train_records, template, max_length, quiet)
    val = encode_records(tokenizer, val_records, template, max_length, quiet=True)
    batches = ExampleBatches(examples, cfg.batch_size, cfg.grad_accum,
                             partial(collate, pad_id=tokenizer.eot_id, mask_prompt=mask_prompt), cfg.seed)
    val_batches = [collate(val[i:i + cfg.batch_size], tokenizer.eot_id, mask_prompt)
                   for i in range(0, min(len(val), 8 * cfg.batch_size), cfg.batch_size)]
    rehearse = None
    if replay:
        corpus = replay_corpus or base_meta.get("corpus")
        rehearse = replay_windows(tokenizer, corpus, model.config.block_size, replay, cfg.seed).batch

    main = distributed.is_main()  # the judge, the reports and the metrics: rank 0's work
    before = evaluate(model, tokenizer, test_records, template)[0] if main and score_before and test_records else None
    torch.manual_seed(cfg.seed)  # LoRA's random A matrices depend on the seed only, not on what ran before
    tuning.apply(model)
    trainable, total = count_parameters(model)
    if not quiet:
        print(trainable_table(model))
        print(f"SFT: {len(examples):,} examples ({batches.steps_per_epoch():.0f} steps per epoch), "
              f"template {template}, {'answer tokens only' if mask_prompt else 'all tokens'} in the loss, "
              f"tuning: {tuning.describe()}, replay: {replay} pretraining windows per step"
              + (f"; accuracy before: {before['accuracy']:.1%}" if before else ""))
    meta = {"stage": "sft", "base": str(base), "template": template, "mask_prompt": mask_prompt,
            "tuning": tuning.describe(), "replay": replay, "corpus": base_meta.get("corpus")}
    history = train(model, tokenizer, batches.batch, val_batches, cfg, out_dir, meta=meta, resume=resume, quiet=quiet,
                    replay=rehearse)
    if not main:
        return {}
    if tuning.lora_rank is not None:
        save_adapter(model, out_dir / "adapter", base=str(base))
        remove_lora(model)  # merge the adapters into the weights: an ordinary GPT again
        # The loss history stays with the checkpoint; the optimizer state does not (it was the adapters').
        save_checkpoint(out_dir / "checkpoint", model, tokenizer, {**meta, "merged_lora": True},
                        train_state={"step": cfg.max_steps, "history": history})

    metrics = {
        "template": template, "mask_prompt": mask_prompt, "replay": replay, "train_examples": len(examples),
        "steps": cfg.max_steps, "epochs": round(cfg.max_steps / batches.steps_per_epoch(), 2),
        "final_val_loss": round(history["val_loss"][-1], 4) if history["val_loss"] else None,
        "train_seconds": round(history["seconds"], 1),
        "tuning": tuning.describe(), "trainable_parameters": trainable, "total_parameters": total,
        "trainable_share": round(trainable / total, 4),
        "step_seconds": round(history["seconds"] / max(1, len(history["step"])), 4),
    }
    if test_records is None:  # a plain instruction file: no judge, the held-out loss says how it went
        # The model's answers to the first held-out prompts that leave it room to answer
        shown = [r for r in val_records if len(encode_prompt(tokenizer, r, template)) < model.config.block_size][:30]
        write_samples(out_dir, shown, answer(model, tokenizer, shown, template, max_new_tokens=64))
        metrics.update({"val_examples": len(val), "peak_memory_mb": round(peak_memory_mb(), 1)})
        write_json(out_dir / "metrics.json", metrics)
        if not quiet:
            print(f"{data} is not the world's data folder, so there is no judge to score answers: skipped. "
                  f"Held-out loss ({len(val)} examples): {metrics['final_val_loss']}; first answers in "
                  f"{out_dir / 'samples.txt'}")
        return metrics

    began = time.perf_counter()
    after, responses = evaluate(model, tokenizer, test_records, template)
    eval_seconds = time.perf_counter() - began
    baseline = majority_baseline(train_records, test_records)  # the accuracy of ignoring the question
    write_reports(out_dir, test_records, responses, before, after)
    metrics.update({
        "test_examples": len(test_records),
        "accuracy_before": round(before["accuracy"], 4) if before else None, "accuracy_after": round(after["accuracy"], 4),
        "majority_baseline": round(baseline["accuracy"], 4),
        "unseen_accuracy_after": round(after["unseen_accuracy"], 4),
        "sentence_rate_after": round(after["sentence_rate"], 4),
        "eval_seconds": round(eval_seconds, 1), "peak_memory_mb": round(peak_memory_mb(), 1),
        "table": format_table(after, baseline),
    })
    write_json(out_dir / "metrics.json", metrics)
    if not quiet:
        print(format_table(after, baseline))
        print((f"accuracy {before['accuracy']:.1%} before SFT -> {after['accuracy']:.1%} after" if before
               else f"accuracy after SFT: {after['accuracy']:.1%}")
              + f" (always answering the most common training answer: {baseline['accuracy']:.1%})")
    return metrics


def write_samples(out_dir: Path, records: list[dict], responses: list[str]) -> None:
    """samples.txt: the model's answers to the first held-out prompts, beside the file's own answers."""
    lines = []
    for record, response in zip(records, responses):
        messages = to_messages(record)
        question = [m["content"] for m in messages if m["role"] == "user"][-1]
        reply = [m["content"] for m in messages if m["role"] == "assistant"][-1]
        lines.append(f"{question}\n  model: {response!r}\n  data:  {reply!r}\n")
    write_text(out_dir / "samples.txt", "\n".join(lines))


def write_reports(out_dir: Path, records: list[dict], responses: list[str], before: dict | None, after: dict) -> None:
    """samples.txt (first answers), scores.json (both tables), accuracy.png (per family)."""
    lines = []
    for record, response in list(zip(records, responses))[:30]:
        prompt = record["instruction"] + (f" [{record['input']}]" if record.get("input") else "")
        lines.append(f"{prompt}\n  model: {response!r}\n  truth: {record['answer']!r}\n")
    write_text(out_dir / "samples.txt", "\n".join(lines))
    write_json(out_dir / "scores.json", {"before": before, "after": after})
    families = list(after["families"])
    plot_bars(families, [after["families"][f]["accuracy"] for f in families], out_dir / "accuracy.png",
              ylabel="held-out accuracy", title="accuracy per task family after SFT")


# The command: python -m gpt_scratch sft --------------------------------------------------------------------

@dataclass
class SFTOptions:
    """The sft command's own settings (what to train is a Tuning, how long a TrainConfig)."""
    base: str = setting("runs/default/pretrain", "checkpoint to start from: a stage or checkpoint folder", preset=False)
    data: str = setting("runs/default/data", "folder with sft_train.json, sft_val.json, sft_test.json (from `data`), "
                                             "or one instruction file (Alpaca, prompt/completion or chat; .json or "
                                             ".jsonl): validated on a held-out slice, no judge", preset=False)
    out: str = setting("runs/default/sft", "stage folder", preset=False)
    template: str = setting("chat", "prompt template (chat: shorter, and it carries pretraining knowledge over "
                                    "better)", choices=("alpaca", "chat"), preset=False)
    loss_on: str = setting("answer", "train on answer tokens only (prompt masked with -100) or on all tokens",
                           choices=("answer", "all"), preset=False)
    n_train: int | None = setting(None, "use only the first N training examples", type=positive_int, preset=False)
    max_length: int | None = setting(None, "longest example in tokens (longer ones are cut, with a count); at most "
                                           "the context", type=int_range(8, 8192), preset=False)
    skip_before: bool = setting(False, "do not score the base model before training", preset=False)
    replay: int = setting(0, "windows of pretraining text also trained on at every step, so that fine-tuning does not "
                             "make the model forget it (0 = off)", type=non_negative_int)
    replay_corpus: str | None = setting(None, "the text to replay (default: the corpus the base was pretrained on)",
                                        preset=False)

    def validate(self, given: set[str]) -> None:
        if self.replay_corpus is not None and self.replay == 0:
            raise ValueError("--replay-corpus needs replay: give --replay N with N > 0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, SFTOptions, preset=PRESETS["default"]["sft"])
    add_flags(parser, HeldOut)
    add_flags(parser, Tuning, "what to train (default: every parameter)")
    add_training_flags(parser, "sft")


def run(args: argparse.Namespace) -> int:
    """Checks the flags against each other, then (reading the base's config) against the base model, then trains."""
    run_as = from_flags(StageOptions, args)
    cfg = training_settings(args, "sft")
    tuning = from_flags(Tuning, args)
    options = from_flags(SFTOptions, args, PRESETS[run_as.preset]["sft"], run_as.preset)
    n_eval = from_flags(HeldOut, args).n_eval
    if n_eval is not None and Path(options.data).is_file():
        raise UsageError(f"--n-eval limits the judge's test questions, and a plain data file ({options.data}) has "
                         f"none; leave it out (the file's held-out slice is always scored by its loss)")
    config, base_meta = read_config(find_checkpoint(options.base))
    replay = options.replay
    if replay and args.replay is None and options.replay_corpus is None and not base_meta.get("corpus"):
        replay = 0  # the preset's replay, and a base that names no pretraining text to rehearse (an imported GPT-2)
        if not run_as.quiet:
            print("replay off: the base names no pretraining corpus (give --replay-corpus FILE to rehearse one)")
    distributed.check_split("--replay", replay)  # the replayed windows are shared out like the batch
    if options.max_length is not None and options.max_length > config.block_size:
        raise UsageError(f"--max-length {options.max_length} is longer than the base model's context "
                         f"(block_size {config.block_size}); use at most {config.block_size}")
    if tuning.trainable_blocks is not None and tuning.trainable_blocks > config.n_layer:
        raise UsageError(f"--trainable-blocks {tuning.trainable_blocks} is more than the base model's {config.n_layer} "
                         f"blocks; use 0..{config.n_layer}")
    distributed.start(pick_device(cfg.device))
    sft(options.base, options.data, options.out, cfg, options.template, options.loss_on == "answer", options.n_train,
        options.max_length, n_eval, resume=run_as.resume, quiet=run_as.quiet, tuning=tuning,
        score_before=not options.skip_before, replay=replay, replay_corpus=options.replay_corpus)
    return 0
