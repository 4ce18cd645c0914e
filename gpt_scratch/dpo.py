"""Direct preference optimisation (chapter 10): the preference pairs train the policy itself, with
no reward model and no sampling during training.

    python -m gpt_scratch dpo --sft runs/default/sft --data runs/default/data --out runs/default/dpo

    loss, rewards_chosen, rewards_rejected = dpo_loss(pi_chosen, pi_rejected, ref_chosen, ref_rejected, beta=0.1)
    losses = preference_loss(h, beta=0.1, loss="ipo")     # one loss per pair, for each variant in LOSSES

Where the loss comes from. RLHF (chapter 9) looks, for each prompt x, for the policy pi that maximises
    E_{y ~ pi}[ r(x, y) ] - beta * KL(pi(.|x) || pi_ref(.|x)),
and that maximiser is known in closed form: pi*(y|x) = pi_ref(y|x) * exp(r(x, y) / beta) / Z(x), with
Z(x) the sum of the numerator over all answers. Solved for the reward:
    r(x, y) = beta * log(pi*(y|x) / pi_ref(y|x)) + beta * log Z(x).
Put this reward into the reward model's Bradley-Terry loss, -log sigmoid(r(x, y_c) - r(x, y_r))
(chapter 8): beta * log Z(x) is the same for both answers of a pair and cancels, and what is left
needs the policy and the reference only:
    loss = -log sigmoid(beta * h),   h = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r)).
So the policy is trained as its own reward model; its *implicit reward* of an answer is
beta * log(pi(y|x) / pi_ref(y|x)). Every log-probability is that of a whole answer, the sum over its
tokens (logprobs.py).

Worked example, beta = 0.1. At the start the policy is the reference: h = 0, both implicit rewards
are 0 and the loss is -log sigmoid(0) = ln 2 = 0.693. Later log pi(y_c) = -3 (the reference says -4)
and log pi(y_r) = -6 (reference -5): rewards +0.1 and -0.1, h = 2, loss -log sigmoid(0.2) = 0.598.
The gradient with respect to log pi(y_c) is -beta * sigmoid(-beta * h) = -0.1 * 0.450 = -0.045, and
+0.045 for log pi(y_r): each pair pushes its chosen answer up and its rejected one down, hardest
where the implicit reward still ranks them the wrong way round.

The variants (`loss`), all functions of the same h:
    sigmoid  -log sigmoid(beta h)                                   DPO
    ipo      (h - 1 / (2 beta))^2                                   IPO: aims at the margin h = 1/(2 beta) and
                                                                    stops there, where DPO pushes h up forever
    hinge    max(0, 1 - beta h)                                     SLiC's hinge: no gradient once beta h >= 1
    cdpo     (1 - eps) L(h) + eps L(-h),  L(h) = -log sigmoid(beta h)
                                                                    conservative DPO (label smoothing; TRL's
                                                                    sigmoid with label_smoothing): each label is
                                                                    taken to be wrong with probability eps, so
                                                                    the loss has its minimum at a finite h
    robust   [(1 - eps) L(h) - eps L(-h)] / (1 - 2 eps)             robust DPO (Chowdhury et al. 2024; TRL's
                                                                    robust): an unbiased estimate of DPO's loss on
                                                                    the clean labels when a share eps of them is
                                                                    flipped; unlike cdpo it has no minimum
Every variant reads h from the *summed* log-probabilities, so that h means the same for all five.
(Some IPO implementations average over the answer's tokens instead; h is then smaller for long
answers, and a larger beta suits it.)

What the stage does:
1. The reference log-probabilities are computed once, before training, for every batch the run will
   train on, and kept as numbers, so no second model stays in memory. Before training the policy *is*
   the reference (the SFT model); a LoRA policy is its reference with its adapters off (lora.adapters_off).
   They are computed in the very batches of the training steps: a bf16 result can change in its last
   digits with the batch's padding length, and at step 0 the policy must equal the reference exactly
   (loss ln 2, every implicit reward 0).
2. The policy trains in train.py's loop, with a loss function that also logs the field's metrics each
   step: rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies (the share of pairs whose
   chosen reward is *strictly* higher: 0 at step 0, not 0.5), logps/chosen, logps/rejected.
3. Before training and every eval_every steps it measures what every alignment stage reports: held-out
   accuracy and preferred-style rate (the judge), win-rate against the SFT model's answers, and the KL
   from the SFT model on held-out prompts (rollout.answer_kl), plus the implicit rewards' accuracy on
   held-back pairs. A preference file of your own (--data FILE) has no judge: then only the latter.

Under torchrun (distributed.py) every process trains on its share of each batch of pairs, and so
computes the reference log-probabilities of its own shares; rank 0 alone measures and writes files.
"""

import argparse
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from gpt_scratch import distributed
from gpt_scratch.args import float_range, int_range, positive_float
from gpt_scratch.checkpoint import load_checkpoint, load_stage_checkpoint, save_checkpoint
from gpt_scratch.data import Encoded, collate
from gpt_scratch.evaluate import HeldOut, answer, check_judgeable, load_split, peak_memory_mb, win_rate
from gpt_scratch.formats import load_preferences, write_json
from gpt_scratch.hardware import autocast_for, pick_device
from gpt_scratch.logprobs import completion_logprobs
from gpt_scratch.lora import LoRASettings, adapters_off, remove_lora, save_adapter
from gpt_scratch.model import disable_dropout
from gpt_scratch.plots import plot_curves
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.reward import pair_batches
from gpt_scratch.rollout import answer_kl
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.train import TrainConfig, add_training_flags, train, training_settings
from gpt_scratch.world.judge import score
from gpt_scratch.world.preferences import prompt_of

TEMPLATE = "chat"  # the template SFT trained with
LOSSES = ("sigmoid", "ipo", "hinge", "cdpo", "robust")
SMOOTHED = ("cdpo", "robust")  # the losses that read label_smoothing (eps)
LOSS_NAMES = {"sigmoid": "DPO", "ipo": "IPO", "hinge": "SLiC's hinge", "cdpo": "conservative DPO: label smoothing",
              "robust": "Chowdhury et al.'s robust DPO; the label-smoothed loss is cdpo"}


def preference_loss(h: torch.Tensor, beta: float, loss: str = "sigmoid", label_smoothing: float = 0.0) -> torch.Tensor:
    """The loss of each pair (B,) from h = (log pi - log pi_ref of the chosen) - (the same of the rejected).

    Example, h = 2 and beta = 0.5 (beta h = 1): sigmoid 0.3133, ipo (2 - 1)^2 = 1, hinge max(0, 1 - 1) = 0;
    with eps 0.1, cdpo 0.9 * 0.3133 + 0.1 * 1.3133 = 0.4133 and robust (0.9 * 0.3133 - 0.1 * 1.3133) / 0.8
    = 0.1883. At h = 0 sigmoid, cdpo and robust are all ln 2.
    logsigmoid is used rather than log(sigmoid(...)), which gives -inf once sigmoid rounds to 0.
    """
    if loss in SMOOTHED and not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) for the {loss} loss, got {label_smoothing}")
    if loss == "sigmoid":
        return -F.logsigmoid(beta * h)
    if loss == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if loss == "hinge":
        return torch.relu(1 - beta * h)
    if loss == "cdpo":
        return (1 - label_smoothing) * -F.logsigmoid(beta * h) + label_smoothing * -F.logsigmoid(-beta * h)
    if loss == "robust":
        eps = label_smoothing
        return ((1 - eps) * -F.logsigmoid(beta * h) - eps * -F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, loss: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss over the pairs, implicit rewards of the chosen answers (B,), of the rejected ones (B,)).

    Each argument is (B,): log-probabilities of whole answers under the policy and the reference.
    The implicit reward of an answer is beta * (log pi - log pi_ref); the rewards are returned detached
    (they are for logging; the gradient flows through the loss).
    """
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    losses = preference_loss(chosen_ratio - rejected_ratio, beta, loss, label_smoothing)
    return losses.mean(), beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def pair_metrics(rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, policy_chosen: torch.Tensor,
                 policy_rejected: torch.Tensor) -> dict[str, float]:
    """The numbers DPO trainers log, under the names the field uses (means over the pairs).

    rewards/accuracies counts a pair only when the chosen reward is strictly higher: a tie is not half right.
    """
    return {"rewards/chosen": rewards_chosen.mean().item(), "rewards/rejected": rewards_rejected.mean().item(),
            "rewards/margins": (rewards_chosen - rewards_rejected).mean().item(),
            "rewards/accuracies": (rewards_chosen > rewards_rejected).float().mean().item(),
            "logps/chosen": policy_chosen.detach().mean().item(), "logps/rejected": policy_rejected.detach().mean().item()}


def pair_batch(pairs: list[tuple[Encoded, Encoded]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs -> x, y (2B, T) for completion_logprobs: the B chosen rows first, then the B rejected."""
    return collate([chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs], pad_id)


def batch_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, ...], beta: float, loss: str = "sigmoid",
               label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loop's loss_fn: batch = (x, y, reference log-probabilities (2B,)), rows as pair_batch's."""
    x, y, reference = batch
    _, logps = completion_logprobs(model, x, y)
    policy_chosen, policy_rejected = logps.float().chunk(2)
    ref_chosen, ref_rejected = reference.chunk(2)
    value, rewards_chosen, rewards_rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                                                       loss, label_smoothing)
    return value, pair_metrics(rewards_chosen, rewards_rejected, policy_chosen, policy_rejected)


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                       dtype: str = "auto") -> list[torch.Tensor]:
    """log pi_ref of the answer in every row of every (x, y) batch, in eval mode, one (2B,) tensor per batch.

    The reference is the model as it is now, with any LoRA adapters switched off: call this before training
    (a LoRA policy is its base model at any time).
    """
    was_training = model.training
    model.eval()
    reference = []
    with adapters_off(model):
        for x, y in batches:
            with autocast_for(device, dtype):
                reference.append(completion_logprobs(model, x.to(device), y.to(device))[1].float().cpu())
    model.train(was_training)
    return reference


def judge_policy(policy, reference, tokenizer, records: list[dict], sft_answers: list[str], seed: int,
                 dtype: str = "auto") -> dict:
    """Held-out accuracy, preferred-style rate, win-rate against the SFT model's answers, and the KL
    from the reference (None: the LoRA policy's base) on the same prompts."""
    responses = answer(policy, tokenizer, records, TEMPLATE)
    scores, versus = score(records, responses), win_rate(records, responses, sft_answers)
    kl = answer_kl(policy, reference, tokenizer, [prompt_of(r) for r in records], max_new_tokens=24, seed=seed,
                   dtype=dtype)
    return {"accuracy": scores["accuracy"], "sentence_rate": scores["sentence_rate"], "win_rate": versus["win_rate"],
            "tie_share": versus["tie_share"], "kl": kl}


def held_back_measures(model: torch.nn.Module, batches: list[tuple[torch.Tensor, ...]], loss_fn,
                       device: torch.device, dtype: str = "auto") -> dict:
    """The implicit rewards' accuracy and margin on held-back pairs (weighted by the pairs in each batch)."""
    totals, pairs = {"rewards/accuracies": 0.0, "rewards/margins": 0.0}, 0
    with torch.no_grad():
        for batch in batches:
            with autocast_for(device, dtype):
                _, stats = loss_fn(model, tuple(t.to(device) for t in batch))
            n = len(batch[0]) // 2
            pairs += n
            for name in totals:
                totals[name] += stats[name] * n
    return {name: value / pairs for name, value in totals.items()}


def load_data(data: Path, n_train: int | None, n_eval: int | None) -> tuple[list[dict], list[dict]]:
    """(preference pairs to train on, held-out records the judge can score) from a data folder
    (preferences_train.jsonl, sft_test.json), or (pairs, []) from one preference file of any shape."""
    if data.is_dir():
        pairs = load_preferences(data / "preferences_train.jsonl")
        records = load_split(data, "test", n_eval)
        check_judgeable(records, data / "sft_test.json")
    else:
        pairs, records = load_preferences(data), []
    pairs = pairs[:n_train] if n_train else pairs
    if len(pairs) < 2:
        raise ValueError(f"{data} has {len(pairs)} preference pair(s); DPO needs at least 2 (one is held back)")
    return pairs, records


def dpo_stage(sft_dir: str | Path, data: str | Path, out_dir: str | Path, cfg: TrainConfig, beta: float = 0.1,
              loss: str = "sigmoid", label_smoothing: float = 0.0, lora: LoRASettings | None = None,
              n_train: int | None = None, n_eval: int | None = None, resume: bool = False,
              quiet: bool = False) -> dict:
    """The whole stage: the SFT model trained on the preference pairs by DPO (or a variant); returns the metrics.

    lora: train LoRA adapters (settings with a rank) instead of every weight; the stage folder then also
    gets adapter/, and the checkpoint holds the merged model, as sft does.
    Under torchrun rank 0 returns the metrics, and the other ranks return {} once trained.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    began_stage = time.perf_counter()
    data, out_dir = Path(data), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    policy, tokenizer, sft_meta = load_stage_checkpoint(sft_dir, device=device)
    disable_dropout(policy)  # the loss is exactly ln 2 at step 0 only if the policy is the reference
    pairs, records = load_data(data, n_train, n_eval)

    # The pairs held back: the validation loss and the held-back accuracy.
    train_pairs, batches, val_xy = pair_batches(tokenizer, pairs, policy.config.block_size, cfg,
                                                partial(pair_batch, pad_id=tokenizer.eot_id))

    # The SFT model's answers, before training: for the measures, which rank 0 alone takes
    sft_answers = answer(policy, tokenizer, records, TEMPLATE) if records and distributed.is_main() else []
    lora_rank = lora.lora_rank if lora is not None else None
    if lora_rank is not None:
        torch.manual_seed(cfg.seed)  # LoRA's random A matrices depend on the seed only
        lora.add_to(policy)

    # 1. The reference's log-probabilities, once, in the batches of every step the run will take.
    began = time.perf_counter()
    steps = [(step, micro) for step in range(cfg.max_steps) for micro in range(cfg.grad_accum)]
    reference = dict(zip(steps, reference_logprobs(policy, (batches.batch(*s) for s in steps), device, cfg.dtype)))
    val_batches = [(*xy, ref) for xy, ref in zip(val_xy, reference_logprobs(policy, val_xy, device, cfg.dtype))]
    reference_seconds = time.perf_counter() - began

    def get_batch(step: int, micro_step: int) -> tuple[torch.Tensor, ...]:
        return (*batches.batch(step, micro_step), reference[step, micro_step])

    # 3. The held-out measures, before training and every eval_every steps.
    loss_fn = partial(batch_loss, beta=beta, loss=loss, label_smoothing=label_smoothing)
    eval_seconds = 0.0

    def measure(steps_done: int) -> dict:
        nonlocal eval_seconds
        began = time.perf_counter()
        measures = held_back_measures(policy, val_batches, loss_fn, device, cfg.dtype)
        if records and steps_done == 0:  # still the SFT model: its answers are sft_answers, its KL from itself 0
            scores = score(records, sft_answers)
            measures.update(accuracy=scores["accuracy"], sentence_rate=scores["sentence_rate"], win_rate=0.5,
                            tie_share=1.0, kl=0.0)
        elif records:  # the reference: the LoRA policy's base, or the SFT model loaded only while measuring
            sft_model = None if lora_rank is not None else load_checkpoint(sft_dir, device=device)[0].eval()
            measures.update(judge_policy(policy, sft_model, tokenizer, records, sft_answers, cfg.seed, cfg.dtype))
        eval_seconds += time.perf_counter() - began
        if not quiet and records:
            print(f"dpo step {steps_done}/{cfg.max_steps}: held-out accuracy {measures['accuracy']:.1%}, preferred "
                  f"style {measures['sentence_rate']:.1%}, win-rate vs SFT {measures['win_rate']:.1%}, KL "
                  f"{measures['kl']:.3f}, held-back pairs ranked right {measures['rewards/accuracies']:.1%}",
                  flush=True)
        return measures

    if not quiet:
        print(f"DPO: {len(train_pairs):,} training pairs ({batches.steps_per_epoch():.0f} steps per epoch), loss "
              f"{loss} ({LOSS_NAMES[loss]}), beta {beta}" + (f", label smoothing {label_smoothing}" if loss in SMOOTHED else "")
              + (f", LoRA rank {lora_rank}" if lora_rank is not None else ", every weight trained")
              + f"; reference log-probabilities of {len(steps) * cfg.batch_size:,} pairs in {reference_seconds:.1f} s")
    # 2. Training: train.py's loop, with DPO's loss and the measures above.
    meta = {"stage": "dpo", "base": str(sft_dir), "template": TEMPLATE, "loss": loss, "beta": beta,
            "label_smoothing": label_smoothing, "lora_rank": lora_rank, "corpus": sft_meta.get("corpus")}
    history = train(policy, tokenizer, get_batch, val_batches, cfg, out_dir, meta=meta, resume=resume, quiet=quiet,
                    loss_fn=loss_fn, on_eval=measure)
    if not distributed.is_main():  # rank 0 writes the files
        return {}
    if lora_rank is not None:
        save_adapter(policy, out_dir / "adapter", base=str(sft_dir))
        remove_lora(policy)  # merge the adapters into the weights: an ordinary GPT for the next stage
        save_checkpoint(out_dir / "checkpoint", policy, tokenizer, {**meta, "merged_lora": True},
                        train_state={"step": cfg.max_steps, "history": history})

    plot_history(history, out_dir / "dpo.png")
    metrics = stage_metrics(history, records, loss, beta, label_smoothing, lora_rank, len(train_pairs),
                            batches.steps_per_epoch(), cfg)
    metrics.update(reference_seconds=round(reference_seconds, 1), eval_seconds=round(eval_seconds, 1),
                   stage_seconds=round(time.perf_counter() - began_stage, 1), peak_memory_mb=round(peak_memory_mb(), 1))
    write_json(out_dir / "history.json", history)
    write_json(out_dir / "metrics.json", metrics)  # written last: it marks the stage done
    if not quiet and records:
        print(f"DPO: held-out accuracy {metrics['accuracy_before']:.1%} -> {metrics['accuracy_after']:.1%}, preferred "
              f"style {metrics['sentence_rate_before']:.1%} -> {metrics['sentence_rate_after']:.1%}, win-rate vs SFT "
              f"{metrics['win_rate_vs_sft']:.1%} (ties {metrics['tie_share_vs_sft']:.1%}), KL from SFT "
              f"{metrics['kl_vs_sft']:.3f} nats per answer")
    return metrics


def stage_metrics(history: dict, records: list[dict], loss: str, beta: float, label_smoothing: float,
                  lora_rank: int | None, n_pairs: int, steps_per_epoch: float, cfg: TrainConfig) -> dict:
    """metrics.json: the settings, the held-out measures before and after, the last step's training signals."""
    last = -1
    metrics = {
        "loss": loss, "beta": beta, "label_smoothing": label_smoothing if loss in SMOOTHED else None,
        "lora_rank": lora_rank, "train_pairs": n_pairs, "steps": cfg.max_steps,
        "epochs": round(cfg.max_steps / steps_per_epoch, 2),
        "first_loss": round(history["train_loss"][0], 4), "final_loss": round(history["train_loss"][last], 4),
        **{name: round(history[name][last], 4) for name in ("rewards/accuracies", "rewards/margins")},
        "final_val_loss": round(history["val_loss"][last], 4) if history["val_loss"] else None,
        "held_back_accuracy": round(history["eval_rewards/accuracies"][last], 4),
        "test_examples": len(records),
    }
    if records:
        metrics.update({
            "accuracy_before": round(history["eval_accuracy"][0], 4),
            "accuracy_after": round(history["eval_accuracy"][last], 4),
            "sentence_rate_before": round(history["eval_sentence_rate"][0], 4),
            "sentence_rate_after": round(history["eval_sentence_rate"][last], 4),
            "win_rate_vs_sft": round(history["eval_win_rate"][last], 4),
            "tie_share_vs_sft": round(history["eval_tie_share"][last], 4),
            "kl_vs_sft": round(history["eval_kl"][last], 4),
        })
    metrics.update(train_seconds=round(history["seconds"], 1),
                   step_seconds=round(history["seconds"] / max(1, len(history["step"])), 4))
    return metrics


def plot_history(history: dict, path: Path) -> Path:
    """The training signals every step, and the held-out measures before training and every eval_every steps."""
    steps, evals = [s + 1 for s in history["step"]], history["eval_step"]
    val_steps = [s + 1 for s in history["val_step"]]
    panels = [
        {"ylabel": "loss", "ylim": (0, None), "lines": [("train", steps, history["train_loss"], "-"),
                                                ("held-back pairs", val_steps, history["val_loss"], "o-")]},
        {"ylabel": "implicit reward beta log(pi / pi_ref)",
         "lines": [("chosen", steps, history["rewards/chosen"], "-"),
                   ("rejected", steps, history["rewards/rejected"], "-"),
                   ("margin", steps, history["rewards/margins"], "-")]},
        {"ylabel": "share", "lines": [("pairs ranked right (train)", steps, history["rewards/accuracies"], "-"),
                                      ("pairs ranked right (held back)", evals, history["eval_rewards/accuracies"],
                                       "o-")]},
    ]
    if "eval_accuracy" in history:
        panels[2]["lines"] += [("held-out accuracy", evals, history["eval_accuracy"], "o-"),
                               ("preferred style", evals, history["eval_sentence_rate"], "o-"),
                               ("win-rate vs SFT", evals, history["eval_win_rate"], "o-")]
        panels.append({"ylabel": "KL from SFT (nats per answer)", "lines": [("KL", evals, history["eval_kl"], "o-")]})
    return plot_curves(panels, path, xlabel="DPO step", title="DPO: training signals and held-out measures")


# The command: python -m gpt_scratch dpo --------------------------------------------------------------------

@dataclass
class DPOOptions:
    """The dpo command's own settings (LoRA's are LoRASettings, the training's a TrainConfig)."""
    sft: str = setting("runs/default/sft", "the SFT stage (or checkpoint) folder: the policy to train, and the "
                                           "reference", preset=False)
    data: str = setting("runs/default/data", "a folder with preferences_train.jsonl and sft_test.json (from `data`; "
                                             "the held-out measures need the judge), or one preference file (JSONL or "
                                             "JSON list: prompt/chosen/rejected, instruction/input/chosen/rejected, "
                                             "chosen/rejected, or chat messages)", preset=False)
    out: str = setting("runs/default/dpo", "stage folder", preset=False)
    loss: str = setting("sigmoid", "sigmoid: DPO; ipo: (h - 1/(2 beta))^2; hinge: max(0, 1 - beta h); cdpo: "
                                   "conservative DPO, DPO with label smoothing; robust: Chowdhury et al.'s robust DPO, "
                                   "unbiased under a share --label-smoothing of flipped labels (robust is not the "
                                   "label-smoothed loss: that one is cdpo)", choices=LOSSES, preset=False)
    beta: float = setting(0.1, "strength of the pull towards the SFT reference: the implicit reward is "
                               "beta log(pi/pi_ref)", type=positive_float)
    label_smoothing: float = setting(0.0, "with --loss cdpo or robust: the probability eps that a label is wrong, in "
                                          "[0, 0.5)", type=float_range(0.0, 0.5, include_high=False))
    n_train: int | None = setting(None, "use only the first N preference pairs", type=int_range(2))

    def validate(self, given: set[str]) -> None:
        if "label_smoothing" in given and self.loss not in SMOOTHED:
            raise ValueError(f"--label-smoothing only acts with --loss cdpo or robust, not --loss {self.loss}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, DPOOptions, preset=PRESETS["default"]["dpo"])
    add_flags(parser, HeldOut)
    add_flags(parser, LoRASettings, "LoRA (default: every weight trained)", skip=("lora_dropout",))
    add_training_flags(parser, "dpo")


def run(args: argparse.Namespace) -> int:
    run_as = from_flags(StageOptions, args)
    preset = PRESETS[run_as.preset]["dpo"]
    options = from_flags(DPOOptions, args, preset, run_as.preset)
    lora = from_flags(LoRASettings, args)
    cfg = training_settings(args, "dpo")
    distributed.start(pick_device(cfg.device))
    dpo_stage(options.sft, options.data, options.out, cfg, options.beta, options.loss,
              options.label_smoothing if options.loss in SMOOTHED else 0.0, lora if lora.lora_rank else None,
              options.n_train, from_flags(HeldOut, args, preset).n_eval, resume=run_as.resume, quiet=run_as.quiet)
    return 0
