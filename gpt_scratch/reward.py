"""The reward model (chapter 8): a GPT that reads a prompt and an answer and scores the answer.

    python -m gpt_scratch reward --sft runs/default/sft --data runs/default/data --out runs/default/reward

    model = GPTWithHead(sft_model, "reward", with_logprob=True)   # the SFT body, a zero-initialised head
    ids, mask, scored = pair_batch([(chosen, rejected), ...], pad_id)  # chosen rows first, then rejected
    r_chosen, r_rejected = reward_scores(model, ids, mask, scored).chunk(2)
    loss = bradley_terry_loss(r_chosen, r_rejected)   # -log sigmoid(r_chosen - r_rejected), mean

The ideas of the chapter:
1. The score is the head's number at the *last real token* of prompt + answer (its end-of-text),
   the one position whose hidden state has read the whole answer. In a padded batch that
   position is found from the attention mask, never assumed to be the last column: with right
   padding the last column is padding, and reading it scores the padding.
2. Bradley-Terry: P(chosen beats rejected) = sigmoid(r_chosen - r_rejected); the loss is its
   negative log. The head starts at zero, so every score is 0 and the loss is exactly ln 2.
   An optional margin asks for r_chosen - r_rejected > margin; an optional centering term
   (coefficient * mean of (r_chosen + r_rejected)^2) keeps the scores near 0, since only their
   differences are learned.
3. The model learns from the pairs' labels, which may be noisy, but is measured against the
   hidden rule itself (world/preferences.py): pairwise accuracy on held-out pairs, per kind
   (correctness or style) and per family.
4. What the head alone cannot do at this size: a 4-block model that *writes* the right answer
   94% of the time does not learn, from pairs, to *check* an answer from its last hidden state
   (measured: 84% of held-out pairs after one epoch, 86% after five; near misses like "t c a"
   for "t a c" pass). The SFT model checks answers another way: its own probability of the
   answer, log p(answer | prompt), which compares every answer token with its prediction through
   the output layer, and ranks 98% of the held-out correctness pairs right before any training.
   So by default the score is
       score = head(last hidden state) + logprob_weight * log p(answer | prompt)
   with logprob_weight a second learned number (starting at 0: the loss still starts at ln 2),
   and the SFT body frozen, so that log p stays the SFT model's. The head learns what the
   likelihood does not know (the preferred style); logprob_weight learns how much to trust the
   likelihood. `--score head --body trained` is the classic reward model, for comparison.

Under torchrun (distributed.py) every process trains on its share of each batch of pairs; rank 0
alone measures the model and writes the files.
"""

import argparse
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from gpt_scratch import distributed
from gpt_scratch.args import float_range, int_range, positive_int
from gpt_scratch.best_of_n import best_of_n_curves, plot_best_of_n
from gpt_scratch.checkpoint import load_checkpoint, load_stage_checkpoint
from gpt_scratch.data import IGNORE, Encoded, ExampleBatches, pad_batch
from gpt_scratch.evaluate import check_judgeable, load_split, peak_memory_mb
from gpt_scratch.formats import load_preferences, write_json
from gpt_scratch.hardware import autocast_for, pick_device
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.logprobs import encode_completions, token_logprobs
from gpt_scratch.model import disable_dropout
from gpt_scratch.plots import plot_histograms
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.train import TrainConfig, add_training_flags, train, training_settings
from gpt_scratch.world.judge import style_of
from gpt_scratch.world.preferences import preference_rank

TEMPLATE = "chat"  # the template SFT trained with: the reward model reads answers as the policy writes them
SCORES = ("head+logprob", "head")
BODIES = ("frozen", "trained")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position of each row's last real token (mask 1), for left or right padding.

    Example: [[1, 1, 1, 0], [0, 1, 1, 1]] -> [2, 3].
    """
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)  # the largest position that is real


def gather_last(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """values (B, T, ...) at each row's last real token -> (B, ...)."""
    rows = torch.arange(values.shape[0], device=values.device)
    return values[rows, last_token_index(attention_mask)]


def answer_logprob(logits: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """log p(answer | prompt) of each row (B,): logits (B, T, vocab) of ids (B, T), scored (B, T) = 1 on
    the answer's tokens (its end-of-text included). Position t's logits predict token t + 1."""
    targets = ids[:, 1:].masked_fill(scored[:, 1:] == 0, IGNORE)
    return token_logprobs(logits[:, :-1], targets).sum(dim=1)


def reward_scores(model: GPTWithHead, ids: torch.Tensor, attention_mask: torch.Tensor,
                  scored: torch.Tensor | None = None) -> torch.Tensor:
    """One score per row (B,): the head at the row's last real token, plus, for a head with a
    logprob_weight, that weight times log p(answer | prompt) (scored marks the answer's tokens)."""
    hidden = model.gpt.body(ids, attention_mask)
    score = gather_last(model.read_head(hidden), attention_mask)
    if model.head.logprob_weight is not None:
        if scored is None:
            raise ValueError("this reward model also scores log p(answer | prompt): give the answer mask (scored)")
        score = score + model.head.logprob_weight * answer_logprob(model.gpt.lm_head(hidden), ids, scored)
    return score


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: float = 0.0,
                       center_coef: float = 0.0) -> torch.Tensor:
    """Mean of -log sigmoid(r_chosen - r_rejected - margin) (+ center_coef * mean (r_chosen + r_rejected)^2).

    Example: r_chosen = r_rejected = 0 -> ln 2 = 0.693; r_chosen - r_rejected = 2 -> 0.127.
    logsigmoid is used instead of log(sigmoid(...)), which gives -inf once sigmoid rounds to 0.
    """
    loss = -F.logsigmoid(r_chosen - r_rejected - margin).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Share of pairs whose chosen answer scores strictly higher (a tie counts as wrong)."""
    return (r_chosen > r_rejected).float().mean().item()


def pad_examples(examples: list[Encoded], pad_id: int, side: str = "right") -> tuple[torch.Tensor, ...]:
    """Encoded prompt + answer sequences -> ids, attention mask and answer mask (B, T), padded on one side."""
    ids, mask = pad_batch([e.ids for e in examples], pad_id, side)
    scored, _ = pad_batch([[int(t) for t in e.trained] for e in examples], 0, side)
    return ids, mask, scored


def pair_batch(pairs: list[tuple[Encoded, Encoded]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Pairs -> ids, mask, scored (2B, T): the B chosen rows first, then the B rejected, right-padded."""
    return pad_examples([c for c, _ in pairs] + [r for _, r in pairs], pad_id, side="right")


def pair_loss(model: GPTWithHead, batch: tuple[torch.Tensor, ...], margin: float = 0.0,
              center_coef: float = 0.0) -> torch.Tensor:
    """The training loop's loss_fn: Bradley-Terry on a batch made by pair_batch."""
    r_chosen, r_rejected = reward_scores(model, *batch).chunk(2)
    return bradley_terry_loss(r_chosen, r_rejected, margin, center_coef)


def encode_pairs(tokenizer: Tokenizer, pairs: list[dict], block_size: int) -> list[tuple[Encoded, Encoded]]:
    """(chosen, rejected) encoded in the chat template for each {prompt, chosen, rejected} record."""
    prompts = [p["prompt"] for p in pairs]
    chosen = encode_completions(tokenizer, prompts, [p["chosen"] for p in pairs], TEMPLATE)
    rejected = encode_completions(tokenizer, prompts, [p["rejected"] for p in pairs], TEMPLATE)
    too_long = sum(max(len(c.ids), len(r.ids)) > block_size for c, r in zip(chosen, rejected))
    if too_long:
        raise ValueError(f"{too_long} of {len(pairs)} preference pairs are longer than the model's context "
                         f"({block_size} tokens); shorten them or drop them from the file")
    return list(zip(chosen, rejected))


@torch.no_grad()
def pair_batches(tokenizer: Tokenizer, pairs: list[dict], block_size: int, cfg: TrainConfig,
                 make_batch) -> tuple[list[tuple[Encoded, Encoded]], ExampleBatches, list]:
    """(the training pairs, their batches for every step, the held-back batches), for the reward model and DPO.

    The last 2% of the pairs (at least one) are held back for the validation loss; make_batch turns a list
    of encoded pairs into one batch (each stage has its own layout).
    """
    n_val = max(1, len(pairs) // 50)
    encoded = encode_pairs(tokenizer, pairs, block_size)
    train_pairs, val_pairs = encoded[:-n_val], encoded[-n_val:]
    batches = ExampleBatches(train_pairs, cfg.batch_size, cfg.grad_accum, make_batch, cfg.seed)
    val_batches = [make_batch(val_pairs[i:i + cfg.batch_size]) for i in range(0, len(val_pairs), cfg.batch_size)]
    return train_pairs, batches, val_batches


def score_texts(model: GPTWithHead, tokenizer: Tokenizer, prompts: list[str], responses: list[str],
                batch_size: int = 256, dtype: str = "auto") -> torch.Tensor:
    """The reward model's score of each (prompt, response), in eval mode and without gradients (a score is a
    number PPO and best-of-n read, never one they differentiate): a float tensor (N,).

    A sampled response too long for the context is scored on its first block_size tokens.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    block_size = model.config.block_size
    scores = []
    for start in range(0, len(prompts), batch_size):
        examples = encode_completions(tokenizer, prompts[start:start + batch_size],
                                      responses[start:start + batch_size], TEMPLATE)
        examples = [Encoded(e.ids[:block_size], e.trained[:block_size]) for e in examples]
        batch = pad_examples(examples, tokenizer.eot_id, side="right")
        with torch.no_grad(), autocast_for(device, dtype):
            scores.append(reward_scores(model, *(t.to(device) for t in batch)).float().cpu())
    model.train(was_training)
    return torch.cat(scores)


def accuracy_against_rule(pairs: list[dict], records_by_id: dict[str, dict], r_chosen: torch.Tensor,
                          r_rejected: torch.Tensor) -> dict:
    """Pairwise accuracy judged by the hidden rule (not by the pairs' labels), overall, per kind and family.

    A pair is right when the answer the rule prefers scores higher. margin = mean of
    (score of the preferred answer - score of the other). Pairs the rule calls a tie are left out.
    """
    groups: dict[str, list[tuple[bool, float]]] = {}
    for pair, rc, rr in zip(pairs, r_chosen.tolist(), r_rejected.tolist()):
        record = records_by_id[pair["id"]]
        rank_c, rank_r = preference_rank(record, pair["chosen"]), preference_rank(record, pair["rejected"])
        if rank_c == rank_r:
            continue
        gap = rc - rr if rank_c > rank_r else rr - rc
        for key in ("(all)", "kind:" + pair["kind"], "family:" + pair["family"]):
            groups.setdefault(key, []).append((gap > 0, gap))

    def summary(rows: list[tuple[bool, float]]) -> dict:
        n = len(rows)
        return {"n": n, "accuracy": sum(r for r, _ in rows) / n, "margin": sum(g for _, g in rows) / n}

    result = summary(groups.pop("(all)"))
    result["kinds"] = {k.removeprefix("kind:"): summary(v) for k, v in sorted(groups.items()) if k.startswith("kind:")}
    result["families"] = {k.removeprefix("family:"): summary(v) for k, v in sorted(groups.items())
                          if k.startswith("family:")}
    return result


def format_rule_table(result: dict) -> str:
    """Markdown: accuracy against the hidden rule per kind and per family, then overall."""
    lines = ["| pairs | n | accuracy | margin |", "|---|---:|---:|---:|"]
    for prefix, rows in (("kind", result["kinds"]), ("family", result["families"])):
        for name, row in rows.items():
            lines.append(f"| {prefix} {name} | {row['n']} | {row['accuracy']:.1%} | {row['margin']:.2f} |")
    lines.append(f"| **all** | {result['n']} | **{result['accuracy']:.1%}** | {result['margin']:.2f} |")
    return "\n".join(lines)


def load_pairs(data_dir: Path, name: str, limit: int | None = None) -> list[dict]:
    pairs = load_preferences(data_dir / f"preferences_{name}.jsonl")
    return pairs[:limit] if limit else pairs


def reward_stage(sft_dir: str | Path, data_dir: str | Path, out_dir: str | Path, cfg: TrainConfig,
                 margin: float = 0.0, center_coef: float = 0.0, n_train: int | None = None,
                 n_eval: int | None = None, best_of: int = 0, best_of_prompts: int = 200,
                 score: str = "head+logprob", body: str = "frozen", resume: bool = False, quiet: bool = False) -> dict:
    """The whole stage: SFT body + zero head, Bradley-Terry training on the pairs, then measured
    against the hidden rule (and, with best_of > 0, best-of-n sampling); returns the metrics.

    score: "head" (the head at the last real token) or "head+logprob" (plus a learned multiple of
    log p(answer | prompt)); body: "frozen" (only the head learns) or "trained" (the whole model).
    Under torchrun rank 0 returns the metrics, and the other ranks return {} once trained.
    """
    if score not in SCORES or body not in BODIES:
        raise ValueError(f"score must be one of {SCORES} and body one of {BODIES}, not {score!r} and {body!r}")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    gpt, tokenizer, sft_meta = load_stage_checkpoint(sft_dir, device=device)
    disable_dropout(gpt)  # a score is a function of the text, also in train mode
    test_records = load_split(data_dir, "test")
    check_judgeable(test_records, data_dir / "sft_test.json")
    records_by_id = {r["id"]: r for r in test_records}
    pairs = load_pairs(data_dir, "train", n_train)
    test_pairs = [p for p in load_pairs(data_dir, "test") if p.get("id") in records_by_id][:n_eval]
    if len(pairs) < 2 or not test_pairs:
        raise ValueError(f"{data_dir} needs at least 2 training pairs and test pairs that match sft_test.json's ids "
                         f"(the files of `python -m gpt_scratch data` do)")

    train_pairs, batches, val_batches = pair_batches(tokenizer, pairs, gpt.config.block_size, cfg,
                                                    partial(pair_batch, pad_id=tokenizer.eot_id))

    model = GPTWithHead(gpt, "reward", with_logprob=score == "head+logprob")
    if body == "frozen":  # the SFT model stays as it is; only the head (and logprob_weight) learn
        model.gpt.requires_grad_(False)
    loss_fn = partial(pair_loss, margin=margin, center_coef=center_coef)
    if not quiet:
        flipped = sum(p.get("flipped", False) for p in pairs)
        print(f"reward model: {len(train_pairs):,} training pairs ({flipped:,} with flipped labels), "
              f"{batches.steps_per_epoch():.0f} steps per epoch, score {score}, body {body}, margin {margin}, "
              f"centering {center_coef}")
    meta = {"stage": "reward", "base": str(sft_dir), "template": TEMPLATE, "score": score, "body": body,
            "margin": margin, "center_coef": center_coef, "corpus": sft_meta.get("corpus")}
    history = train(model, tokenizer, batches.batch, val_batches, cfg, out_dir, meta=meta, resume=resume,
                    quiet=quiet, loss_fn=loss_fn)
    if not distributed.is_main():  # rank 0 measures the model and writes the files
        return {}

    began = time.perf_counter()
    rule, baseline, (r_chosen, r_rejected) = measure_against_rule(model, tokenizer, test_pairs, records_by_id,
                                                                  cfg.dtype)
    plot_score_histograms(test_pairs, records_by_id, r_chosen, r_rejected, out_dir / "scores.png")
    flipped = sum(p.get("flipped", False) for p in pairs)
    metrics = {
        "score": score, "body": body, "train_pairs": len(train_pairs), "flipped_train_labels": flipped,
        "steps": cfg.max_steps, "epochs": round(cfg.max_steps / batches.steps_per_epoch(), 2),
        "test_pairs": rule["n"], "accuracy": round(rule["accuracy"], 4),
        **{f"accuracy_{kind}": round(row["accuracy"], 4) for kind, row in rule["kinds"].items()},
        "label_accuracy": round(pairwise_accuracy(r_chosen, r_rejected), 4),
        "style_only_baseline": round(baseline["accuracy"], 4),
        "margin": round(rule["margin"], 3),
        "logprob_weight": None if model.head.logprob_weight is None else round(model.head.logprob_weight.item(), 4),
        "final_val_loss": round(history["val_loss"][-1], 4) if history["val_loss"] else None,
        "train_seconds": round(history["seconds"], 1), "eval_seconds": round(time.perf_counter() - began, 1),
        "step_seconds": round(history["seconds"] / max(1, len(history["step"])), 4),
        "peak_memory_mb": round(peak_memory_mb(), 1), "table": format_rule_table(rule),
    }
    if best_of:
        began = time.perf_counter()
        sft_model = load_checkpoint(sft_dir, device=device)[0]
        chosen_records = random.Random(cfg.seed).sample(test_records, min(best_of_prompts, len(test_records)))
        scorer = partial(score_texts, model, tokenizer, dtype=cfg.dtype)  # (prompts, responses) -> scores
        curves = best_of_n_curves(sft_model, tokenizer, chosen_records, scorer, best_of, seed=cfg.seed)
        write_json(out_dir / "best_of_n.json", curves)
        plot_best_of_n(curves, out_dir / "best_of_n.png")
        metrics["best_of_n_seconds"] = round(time.perf_counter() - began, 1)
        metrics["best_of_n_table"] = format_best_of_n(curves)
    write_json(out_dir / "rule_accuracy.json", rule)
    write_json(out_dir / "metrics.json", metrics)  # written last: it marks the stage done
    if not quiet:
        print(metrics["table"])
        print(f"held-out accuracy against the hidden rule: {rule['accuracy']:.1%} "
              + ", ".join(f"{kind} {row['accuracy']:.1%}" for kind, row in rule["kinds"].items())
              + f" (liking the sentence style alone: {baseline['accuracy']:.1%})")
        if best_of:
            print(metrics["best_of_n_table"])
    return metrics


def measure_against_rule(model: GPTWithHead, tokenizer: Tokenizer, pairs: list[dict], records_by_id: dict[str, dict],
                         dtype: str = "auto") -> tuple[dict, dict, tuple[torch.Tensor, torch.Tensor]]:
    """(the model's accuracy against the hidden rule, the style-only yardstick's, the model's scores).

    The yardstick is a "reward model" that only likes the sentence style: what a reward model
    gets for free by reading the last few tokens (a tie counts as wrong).
    """
    prompts = [p["prompt"] for p in pairs]
    scores = tuple(score_texts(model, tokenizer, prompts, [p[key] for p in pairs], dtype=dtype)
                   for key in ("chosen", "rejected"))
    likes_style = [torch.tensor([float(style_of(p[key]) == "sentence") for p in pairs])
                   for key in ("chosen", "rejected")]
    return (accuracy_against_rule(pairs, records_by_id, *scores),
            accuracy_against_rule(pairs, records_by_id, *likes_style), scores)


def format_best_of_n(curves: dict) -> str:
    """Markdown: per n, what the reward model's pick and the judge's pick score."""
    lines = ["| n | KL (nats) | accuracy (RM pick) | preferred style (RM pick) | win-rate vs SFT (RM pick) "
             "| RM score (RM pick) | accuracy (judge pick) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    proxy, oracle = curves["reward_model"], curves["judge"]
    for i, n in enumerate(curves["n"]):
        lines.append(f"| {n} | {proxy['kl'][i]:.2f} | {proxy['accuracy'][i]:.1%} | {proxy['sentence_rate'][i]:.1%} "
                     f"| {proxy['win_rate'][i]:.1%} | {proxy['reward'][i]:.2f} | {oracle['accuracy'][i]:.1%} |")
    return "\n".join(lines)


def plot_score_histograms(pairs: list[dict], records_by_id: dict[str, dict], r_chosen: torch.Tensor,
                          r_rejected: torch.Tensor, path: Path) -> None:
    """Scores of the answers the hidden rule prefers vs the others, one panel per pair kind."""
    panels: dict[str, tuple[list[float], list[float]]] = {}
    for pair, rc, rr in zip(pairs, r_chosen.tolist(), r_rejected.tolist()):
        record = records_by_id[pair["id"]]
        chosen_first = preference_rank(record, pair["chosen"]) >= preference_rank(record, pair["rejected"])
        better, worse = (rc, rr) if chosen_first else (rr, rc)
        panel = panels.setdefault(pair["kind"], ([], []))
        panel[0].append(better)
        panel[1].append(worse)
    plot_histograms(panels, ("preferred by the rule", "the other answer"), path,
                    xlabel="reward-model score", title="held-out pairs")


# The command: python -m gpt_scratch reward -----------------------------------------------------------------

@dataclass
class RewardOptions:
    """The reward command's own settings (the training's are a TrainConfig)."""
    sft: str = setting("runs/default/sft", "the SFT stage (or checkpoint) folder whose model the reward model starts "
                                           "from", preset=False)
    data: str = setting("runs/default/data", "folder with preferences_train.jsonl, preferences_test.jsonl, "
                                             "sft_test.json (from `data`)", preset=False)
    out: str = setting("runs/default/reward", "stage folder", preset=False)
    score: str = setting("head+logprob", "head: the scalar head at the last real token (the classic reward model); "
                                         "head+logprob: plus a learned multiple of log p(answer | prompt) under the "
                                         "body", choices=SCORES, preset=False)
    body: str = setting("frozen", "frozen: only the head learns, the SFT body stays as it is; trained: the whole "
                                  "model learns (give a smaller --lr, e.g. 5e-4)", choices=BODIES, preset=False)
    margin: float = setting(0.0, "ask for r_chosen - r_rejected > margin in the loss", type=float_range(0.0, 100.0),
                            preset=False)
    center_coef: float = setting(0.0, "weight of the centering term mean((r_chosen + r_rejected)^2) (0 = off)",
                                 type=float_range(0.0, 100.0), preset=False)
    n_train: int | None = setting(None, "use only the first N training pairs", type=int_range(2), preset=False)
    n_eval: int | None = setting(None, "score only the first N held-out pairs", type=positive_int, preset=False)
    best_of: int = setting(0, "best-of-n up to this n on held-out prompts, 0 = off", type=int_range(0, 1024))
    best_of_prompts: int = setting(200, "held-out prompts for best-of-n", type=positive_int)

    def validate(self, given: set[str]) -> None:
        if "best_of_prompts" in given and self.best_of == 0:
            raise ValueError("--best-of-prompts needs best-of-n: give --best-of N with N > 0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, RewardOptions, preset=PRESETS["default"]["reward"])
    add_training_flags(parser, "reward")


def run(args: argparse.Namespace) -> int:
    run_as = from_flags(StageOptions, args)
    cfg = training_settings(args, "reward")
    options = from_flags(RewardOptions, args, PRESETS[run_as.preset]["reward"], run_as.preset)
    distributed.start(pick_device(cfg.device))
    reward_stage(options.sft, options.data, options.out, cfg, options.margin, options.center_coef, options.n_train,
                 options.n_eval, options.best_of, options.best_of_prompts, options.score, options.body,
                 resume=run_as.resume, quiet=run_as.quiet)
    return 0
