"""Instruction fine-tuning (SFT): teach a pretrained GPT to answer, then measure it with the judge.

    python -m gpt_scratch sft --base runs/default/pretrain --data runs/default/data --out runs/default/sft

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
"""

import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt_scratch.checkpoint import load_checkpoint, save_checkpoint, write_json
from gpt_scratch.data import TokenWindows, read_corpus
from gpt_scratch.formats import load_instructions
from gpt_scratch.freeze import apply_freezing, count_parameters, trainable_table
from gpt_scratch.generate import generate
from gpt_scratch.lora import add_lora, remove_lora, save_adapter
from gpt_scratch.model import GPT
from gpt_scratch.plots import plot_bars
from gpt_scratch.templates import encode_example, encode_prompt
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.train import TrainConfig, pick_device, train
from gpt_scratch.world.judge import format_table, score

IGNORE = -100  # targets with this value add nothing to the loss (lm_loss's ignore_index)


@dataclass
class Tuning:
    """Which parameters fine-tuning may change (chapters 6 and 7); the default trains them all.

    freeze: a strategy of freeze.py (full, last_blocks, head, norms_biases, embeddings_frozen);
    lora_rank: if set, the base model is frozen and LoRA adapters are trained instead.
    """
    freeze: str = "full"
    trainable_blocks: int | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None  # default 2 * rank: the same scale (alpha / rank = 2) for every rank
    lora_targets: tuple[str, ...] = field(default_factory=lambda: ("attn", "mlp"))
    lora_dropout: float = 0.0

    def apply(self, model: GPT) -> None:
        if self.lora_rank is not None:
            add_lora(model, self.lora_rank, self.lora_alpha or 2.0 * self.lora_rank, self.lora_targets,
                     self.lora_dropout)
        else:
            apply_freezing(model, self.freeze, self.trainable_blocks)

    def describe(self) -> str:
        if self.lora_rank is not None:
            return f"LoRA rank {self.lora_rank} on {'+'.join(self.lora_targets)}"
        return self.freeze + (f" {self.trainable_blocks}" if self.freeze == "last_blocks" else "")


@dataclass
class Encoded:
    ids: list[int]
    trained: list[bool]  # True for answer tokens (and the end-of-text after each answer)


def encode_records(tokenizer: Tokenizer, records: list[dict], template: str, max_length: int,
                   quiet: bool = False) -> list[Encoded]:
    """Encode every record; cut those longer than max_length tokens and say how many were cut."""
    encoded, cut = [], 0
    for record in records:
        ids, trained = encode_example(tokenizer, record, template)
        if len(ids) > max_length:
            ids, trained, cut = ids[:max_length], trained[:max_length], cut + 1
        encoded.append(Encoded(ids, trained))
    if cut and not quiet:
        print(f"note: {cut} of {len(records)} examples were longer than {max_length} tokens and were cut "
              f"(their end-of-text is lost); raise --max-length or shorten the data", file=sys.stderr)
    return encoded


def collate(batch: list[Encoded], pad_id: int, mask_prompt: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch on the right to its longest example; return inputs x and targets y (B, T).

    y is x shifted left by one (predict the next token). Padding targets are IGNORE, decided by
    each row's length. With mask_prompt, prompt targets are IGNORE too: the loss then comes
    from the answer tokens alone.
    """
    longest = max(len(e.ids) for e in batch) - 1  # inputs drop the last token, targets the first
    x = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    y = torch.full((len(batch), longest), IGNORE, dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.ids) - 1
        x[row, :n] = torch.tensor(example.ids[:-1])
        targets = torch.tensor(example.ids[1:])
        if mask_prompt:
            is_answer = torch.tensor(example.trained[1:])
            targets = targets.masked_fill(~is_answer, IGNORE)
        y[row, :n] = targets
    return x, y


class ExampleBatches:
    """Shuffled batches, epoch after epoch; batch(step, micro_step) depends only on (seed, step)."""

    def __init__(self, examples: list[Encoded], batch_size: int, grad_accum: int, pad_id: int,
                 mask_prompt: bool, seed: int = 0) -> None:
        self.examples, self.batch_size, self.grad_accum = examples, batch_size, grad_accum
        self.pad_id, self.mask_prompt, self.seed = pad_id, mask_prompt, seed
        self.orders: dict[int, list[int]] = {}  # epoch -> shuffled order, made once per epoch

    def order(self, epoch: int) -> list[int]:
        if epoch not in self.orders:
            order = list(range(len(self.examples)))
            random.Random(f"{self.seed}:{epoch}").shuffle(order)
            self.orders[epoch] = order
        return self.orders[epoch]

    def batch(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        first = (step * self.grad_accum + micro_step) * self.batch_size
        chosen = []
        for position in range(first, first + self.batch_size):
            epoch, index = divmod(position, len(self.examples))
            chosen.append(self.examples[self.order(epoch)[index]])
        return collate(chosen, self.pad_id, self.mask_prompt)

    def steps_per_epoch(self) -> float:
        return len(self.examples) / (self.batch_size * self.grad_accum)


@torch.no_grad()
def answer(model: GPT, tokenizer: Tokenizer, records: list[dict], template: str, max_new_tokens: int = 24,
           batch_size: int = 64) -> list[str]:
    """Greedy answers to the records' prompts (batched, each row stops at its end-of-text)."""
    responses = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        prompts = [encode_prompt(tokenizer, record, template) for record in chunk]
        for ids in generate(model, prompts, max_new_tokens, eos_id=tokenizer.eot_id):
            if ids and ids[-1] == tokenizer.eot_id:
                ids = ids[:-1]
            responses.append(tokenizer.decode(ids))
    return responses


def evaluate(model: GPT, tokenizer: Tokenizer, records: list[dict], template: str,
             max_new_tokens: int = 24) -> tuple[dict, list[str]]:
    """(judge scores, responses) for records that carry the judge's fields (family, answer)."""
    responses = answer(model, tokenizer, records, template, max_new_tokens)
    return score(records, responses), responses


def load_split(data_dir: Path, name: str, limit: int | None = None) -> list[dict]:
    records = load_instructions(data_dir / f"sft_{name}.json")
    return records[:limit] if limit else records


def check_judgeable(records: list[dict], path: Path) -> None:
    if not all("family" in r and "answer" in r for r in records):
        raise ValueError(f"{path}: evaluation records need 'family' and 'answer' fields for the judge "
                         f"(the files of `python -m gpt_scratch data` have them)")


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


def sft(base: str | Path, data_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, template: str = "chat",
        mask_prompt: bool = True, n_train: int | None = None, max_length: int | None = None,
        n_eval: int | None = None, resume: bool = False, quiet: bool = False,
        tuning: Tuning | None = None, score_before: bool = True, replay: int = 0,
        replay_corpus: str | Path | None = None) -> dict:
    """The whole SFT stage: load the base model, score it, fine-tune, score again; return metrics.

    replay: windows of pretraining text (block_size tokens each) trained on at every step, from
    replay_corpus (default: the corpus the base model was pretrained on); 0 turns replay off.
    With LoRA, the stage folder also gets adapter/ (the small adapter file), and the checkpoint
    holds the merged model: a plain GPT that the next stage loads like any other.
    """
    tuning = tuning or Tuning()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    model, tokenizer, base_meta = load_checkpoint(base, device=device)
    if tokenizer is None:
        raise FileNotFoundError(f"{base} has no tokenizer files; fine-tune a checkpoint written by a stage")
    max_length = max_length or model.config.block_size
    if max_length > model.config.block_size:
        raise ValueError(f"max_length {max_length} is longer than the model's context ({model.config.block_size})")

    train_records = load_split(data_dir, "train", n_train)
    test_records = load_split(data_dir, "test", n_eval)
    check_judgeable(test_records, data_dir / "sft_test.json")
    examples = encode_records(tokenizer, train_records, template, max_length, quiet)
    val = encode_records(tokenizer, load_split(data_dir, "val"), template, max_length, quiet=True)
    batches = ExampleBatches(examples, cfg.batch_size, cfg.grad_accum, tokenizer.eot_id, mask_prompt, cfg.seed)
    val_batches = [collate(val[i:i + cfg.batch_size], tokenizer.eot_id, mask_prompt)
                   for i in range(0, min(len(val), 8 * cfg.batch_size), cfg.batch_size)]
    rehearse = None
    if replay:
        corpus = replay_corpus or base_meta.get("corpus")
        rehearse = replay_windows(tokenizer, corpus, model.config.block_size, replay, cfg.seed).batch

    before = evaluate(model, tokenizer, test_records, template)[0] if score_before else None
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
    if tuning.lora_rank is not None:
        save_adapter(model, out_dir / "adapter", base=str(base))
        remove_lora(model)  # merge the adapters into the weights: an ordinary GPT again
        # The loss history stays with the checkpoint; the optimizer state does not (it was the adapters').
        save_checkpoint(out_dir / "checkpoint", model, tokenizer, {**meta, "merged_lora": True},
                        train_state={"step": cfg.max_steps, "history": history})

    began = time.perf_counter()
    after, responses = evaluate(model, tokenizer, test_records, template)
    eval_seconds = time.perf_counter() - began
    write_reports(out_dir, test_records, responses, before, after)
    metrics = {
        "template": template, "mask_prompt": mask_prompt, "replay": replay, "train_examples": len(examples),
        "steps": cfg.max_steps, "epochs": round(cfg.max_steps / batches.steps_per_epoch(), 2),
        "test_examples": len(test_records),
        "accuracy_before": round(before["accuracy"], 4) if before else None, "accuracy_after": round(after["accuracy"], 4),
        "unseen_accuracy_after": round(after["unseen_accuracy"], 4),
        "sentence_rate_after": round(after["sentence_rate"], 4),
        "final_val_loss": round(history["val_loss"][-1], 4) if history["val_loss"] else None,
        "train_seconds": round(history["seconds"], 1), "eval_seconds": round(eval_seconds, 1),
        "tuning": tuning.describe(), "trainable_parameters": trainable, "total_parameters": total,
        "trainable_share": round(trainable / total, 4),
        "step_seconds": round(history["seconds"] / max(1, len(history["step"])), 4),
        "peak_memory_mb": round(peak_memory_mb(), 1),
        "table": format_table(after),
    }
    write_json(out_dir / "metrics.json", metrics)
    if not quiet:
        print(format_table(after))
        print(f"accuracy {before['accuracy']:.1%} before SFT -> {after['accuracy']:.1%} after" if before
              else f"accuracy after SFT: {after['accuracy']:.1%}")
    return metrics


def peak_memory_mb() -> float:
    """The process's peak resident memory (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 1024**2


def write_reports(out_dir: Path, records: list[dict], responses: list[str], before: dict | None, after: dict) -> None:
    """samples.txt (first answers), scores.json (both tables), accuracy.png (per family)."""
    lines = []
    for record, response in list(zip(records, responses))[:30]:
        prompt = record["instruction"] + (f" [{record['input']}]" if record.get("input") else "")
        lines.append(f"{prompt}\n  model: {response!r}\n  truth: {record['answer']!r}\n")
    (out_dir / "samples.txt").write_text("\n".join(lines))
    write_json(out_dir / "scores.json", {"before": before, "after": after})
    families = list(after["families"])
    plot_bars(families, [after["families"][f]["accuracy"] for f in families], out_dir / "accuracy.png",
              ylabel="held-out accuracy", title="accuracy per task family after SFT")
