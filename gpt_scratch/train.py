"""One training loop for every stage that trains by gradient descent on a fixed data set:
pretraining, SFT, the reward model, DPO.

    history = train(model, tokenizer, get_batch, val_batches, TrainConfig(max_steps=500), out_dir)
    history = train(reward_model, tokenizer, get_pairs, val_pairs, cfg, out_dir, loss_fn=reward_loss)

get_batch(step, micro_step) gives the batch of a step, a tuple of tensors; val_batches is a
fixed list of such batches. loss_fn(model, batch) -> scalar loss says what is learned: the
default, next_token_loss, reads the batch as (x, y) with y = -100 where no loss is wanted.
A loss function may also return (loss, {name: number}): the numbers are logged every step in
history[name] (averaged over the micro-batches), e.g. DPO's implicit rewards.
An optional on_eval(steps_done) -> {name: number} runs before the first step (steps_done 0) and
at every validation point, in eval mode;
its numbers go into history["eval_" + name] beside history["eval_step"] (a stage's held-out
measures, e.g. accuracy from the judge), and are saved with the checkpoint like the rest.
The loop does AdamW (weight decay on matrices only), linear warmup then cosine decay, gradient
accumulation and clipping, periodic validation, a progress bar, and checkpoints for resuming.
Every source of randomness is a function of (seed, step), so `resume=True` continues with
exactly the losses an uninterrupted run would have had.

A run that diverges stops at the first loss that is not a finite number (nan or inf), with
one line naming the step and what to try (TrainingDiverged); the last checkpoint written
before it stays as it was, and no checkpoint is ever written from weights that are not finite.

An optional replay(step, micro_step) -> (x, y) gives a second batch each step, of other text,
whose mean loss is added to the first one's. Fine-tuning uses it to keep rehearsing the
pretraining text, so that the model does not forget what it read there (see sft.py).

Under torchrun (distributed.py) the same loop trains in several processes: each reads its share
of every batch (get_batch and replay give it), DDP averages the gradients, the logged losses
are the means over the processes, and only rank 0 validates and writes files.
"""

import argparse
import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from gpt_scratch import distributed
from gpt_scratch.checkpoint import find_checkpoint, load_model_into, load_train_state, save_checkpoint
from gpt_scratch.args import float_range, non_negative_int, positive_float, positive_int
from gpt_scratch.hardware import DEVICES, DTYPES, autocast_for, check_device, pick_device
from gpt_scratch.lora import parameter_groups
from gpt_scratch.model import lm_loss
from gpt_scratch.plots import plot_losses
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.settings import add_flags, from_flags, setting

Batch = tuple[torch.Tensor, ...]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor | tuple[torch.Tensor, dict[str, float]]]


class TrainingDiverged(RuntimeError):
    """The loss (or the weights) stopped being finite numbers: the run cannot go on."""


def next_token_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Pretraining's and SFT's loss: mean cross-entropy of the next token where y is not -100."""
    x, y = batch
    return lm_loss(model(x), y)


def loss_and_stats(output: torch.Tensor | tuple[torch.Tensor, dict[str, float]]) -> tuple[torch.Tensor, dict]:
    """A loss function's result as (loss, numbers to log): a bare loss logs nothing."""
    return output if isinstance(output, tuple) else (output, {})


def divergence_advice(step: int, what: str, lr: float, grad_clip: float) -> str:
    """One line: where the run went wrong and the first things to try."""
    clip = "turn gradient clipping on (--grad-clip 1.0)" if grad_clip == 0 else "clip harder (a smaller --grad-clip)"
    return (f"training diverged at step {step}: {what}; lower the learning rate (--lr, now {lr:g}) "
            f"or {clip}, then train again (checkpoints saved before this step are kept as they were)")


def check_finite_loss(loss: torch.Tensor, step: int, lr: float, grad_clip: float) -> None:
    """Stop the run (TrainingDiverged, one line) at a loss that is nan or inf, before it reaches the weights."""
    if not torch.isfinite(loss):
        raise TrainingDiverged(divergence_advice(step, f"the loss is {loss.item()}", lr, grad_clip))


def weights_are_finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


@dataclass
class RunSettings:
    """What every training stage (the loop below, PPO, GRPO) takes alike: its seed, where and in which dtype
    it computes, and the gradient clipping after backward."""
    seed: int = setting(0, "random seed", type=non_negative_int, preset=False)
    device: str = setting("auto", "where to train: auto = cuda, else mps, else cpu", choices=DEVICES, preset=False)
    dtype: str = setting("auto", "auto = bf16 autocast where the device has bf16 in hardware (a recent GPU, or a CPU "
                                 "with AVX-512 BF16 / AMX), else float32", choices=DTYPES, preset=False)
    grad_clip: float = setting(1.0, "max gradient norm (0 = off)", type=float_range(0.0, 1e6))


@dataclass
class TrainConfig(RunSettings):
    """The training loop's settings (pretraining, SFT, the reward model, DPO)."""
    max_steps: int = setting(1000, "optimizer steps", type=positive_int)
    batch_size: int = setting(32, "sequences per micro-batch (under torchrun: of all the processes together)",
                              type=positive_int)
    grad_accum: int = setting(1, "micro-batches per optimizer step", type=positive_int)
    lr: float = setting(1e-3, "peak learning rate", type=positive_float)
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = setting(50, "linear warmup steps (<= --max-steps)", type=non_negative_int)
    weight_decay: float = setting(0.1, "AdamW weight decay on matrices", type=float_range(0.0, 10.0))
    eval_every: int = setting(100, "validate every N steps", type=positive_int)
    save_every: int = setting(200, "checkpoint every N steps", type=positive_int)

    def validate(self, given: set[str]) -> None:
        """The command line's check (settings.from_flags); in Python a warmup longer than the run is allowed."""
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"--warmup-steps {self.warmup_steps} is larger than --max-steps {self.max_steps}")


def add_training_flags(parser: argparse.ArgumentParser, stage: str) -> None:
    """The training loop's flags, and --preset, --resume, --quiet: every stage that trains with train()."""
    add_flags(parser, TrainConfig, f"training (default: the preset's {stage} settings)",
              preset=PRESETS["default"][stage])
    add_flags(parser, StageOptions, "the run")


def training_settings(args: argparse.Namespace, stage: str) -> TrainConfig:
    """The stage's TrainConfig: the preset's settings with the flags given on top, checked (one line, exit 2)."""
    preset = from_flags(StageOptions, args).preset
    cfg = from_flags(TrainConfig, args, PRESETS[preset][stage], preset)
    distributed.check_split("--batch-size", cfg.batch_size)  # under torchrun, shared out over the processes
    check_device(cfg.device)
    return cfg


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters only; weight decay on matrices, not on biases or norms.

    Every param group carries "lr_ratio", its learning rate as a multiple of the schedule's: 1, except for
    the lora_B matrices of LoRA+ (lora.parameter_groups).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters; unfreeze something first")
    groups = parameter_groups(model, [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ], cfg.lr)
    # The fused kernel updates every parameter in one pass instead of one small step per tensor:
    # measured here, default-preset steps took 6-25% less time (the most for fine-tuning's short batches).
    fused = all(p.device.type in ("cpu", "cuda") for p in trainable)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=fused)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return tuple(t.to(device) for t in batch)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, batches: list[Batch], device: torch.device, dtype: str = "auto",
                  loss_fn: LossFn = next_token_loss) -> float:
    """Mean loss over fixed batches, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    losses = []
    for batch in batches:
        with autocast_for(device, dtype):
            losses.append(loss_and_stats(loss_fn(model, to_device(batch, device)))[0].item())
    model.train(was_training)
    return sum(losses) / len(losses)


class StepLoss(torch.nn.Module):
    """The loss of one micro-batch as a module, so that DDP can wrap the whole of it.

    DDP only sees what runs inside its forward, and loss functions do not always call
    model(...) (reward.py reads model.gpt.body(...) and the head): so the module DDP wraps is
    this one, whose forward is the loss. forward(batch, replay_batch) -> (loss, replay loss
    (0.0 without replay), logged numbers).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn = next_token_loss) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch: Batch, replay_batch: Batch | None = None) -> tuple[torch.Tensor, torch.Tensor | float, dict]:
        loss, stats = loss_and_stats(self.loss_fn(self.model, batch))
        extra = 0.0 if replay_batch is None else next_token_loss(self.model, replay_batch)
        return loss, extra, stats


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, get_batch: Callable[[int, int], Batch],
               step: int, cfg: TrainConfig, device: torch.device,
               replay: Callable[[int, int], Batch] | None = None,
               loss_fn: LossFn = next_token_loss,
               ddp: torch.nn.parallel.DistributedDataParallel | None = None) -> tuple[float, int, dict[str, float]]:
    """One optimizer step over cfg.grad_accum micro-batches; returns (loss, tokens seen, logged numbers).

    The loss returned is get_batch's alone; with replay, the replayed text's next-token loss is
    added before backward but not reported, so that the loss curve stays comparable.
    A loss that is not finite stops the run (TrainingDiverged) before it touches the weights.
    ddp: StepLoss(model, loss_fn) wrapped in DistributedDataParallel, when several processes
    train together (the numbers returned are then this process's; train() averages them).
    """
    # Dropout masks depend on the step (and, with several processes, on the rank: each rank's share of
    # the batch gets masks of its own, as the rows of one big batch would; rank 0's are a lone process's).
    torch.manual_seed(cfg.seed * 7919 + step + 1_000_003 * distributed.rank())
    for group in optimizer.param_groups:
        # make_optimizer's groups carry lr_ratio (LoRA+'s for lora_B, else 1); an optimizer made elsewhere has none
        group["lr"] = learning_rate(step, cfg) * group.get("lr_ratio", 1.0)
    step_loss = ddp if ddp is not None else StepLoss(model, loss_fn)
    total_loss, tokens, logged = 0.0, 0, {}
    for micro_step in range(cfg.grad_accum):
        batch = to_device(get_batch(step, micro_step), device)
        replay_batch = to_device(replay(step, micro_step), device) if replay is not None else None
        # DDP averages the gradients over the processes in backward. Between micro-batches they only
        # need adding up here, so every backward but the step's last skips the exchange (no_sync).
        last = micro_step == cfg.grad_accum - 1
        with contextlib.nullcontext() if ddp is None or last else ddp.no_sync():
            with autocast_for(device, cfg.dtype):
                loss, extra, stats = step_loss(batch, replay_batch)
                loss, extra = loss / cfg.grad_accum, extra / cfg.grad_accum
            check_finite_loss(loss + extra, step, cfg.lr, cfg.grad_clip)
            (loss + extra).backward()
        total_loss += loss.item()
        tokens += batch[0].numel() + (replay_batch[0].numel() if replay_batch is not None else 0)
        for name, value in stats.items():
            logged[name] = logged.get(name, 0.0) + float(value) / cfg.grad_accum
    if cfg.grad_clip > 0:  # clip after backward, before the step
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total_loss, tokens, logged


def new_history() -> dict:
    return {"step": [], "train_loss": [], "val_step": [], "val_loss": [], "seconds": 0.0, "tokens": 0}


def resume_from(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                empty_history=new_history) -> tuple[int, dict]:
    """Load weights, optimizer moments and history from out_dir/checkpoint, if there is one.

    empty_history() is the history of a run that starts from step 0 (a stage may keep other fields).
    """
    try:
        folder = find_checkpoint(out_dir / "checkpoint")
    except FileNotFoundError:
        return 0, empty_history()
    state, optim_state = load_train_state(folder)
    if "step" not in state or optim_state is None:
        return 0, empty_history()
    load_model_into(model, folder)
    optimizer.load_state_dict(optim_state)
    return state["step"], state["history"]


def record_eval(history: dict, steps_done: int, model: torch.nn.Module, on_eval: Callable[[int], dict]) -> None:
    """on_eval's measures after steps_done steps, into history["eval_step"] and history["eval_<name>"]."""
    was_training = model.training
    model.eval()
    measures = on_eval(steps_done)
    model.train(was_training)
    history.setdefault("eval_step", []).append(steps_done)
    for name, value in measures.items():
        history.setdefault("eval_" + name, []).append(value)


def train(model: torch.nn.Module, tokenizer, get_batch: Callable[[int, int], Batch], val_batches: list[Batch],
          cfg: TrainConfig, out_dir: str | Path, meta: dict | None = None, resume: bool = False,
          quiet: bool = False, replay: Callable[[int, int], Batch] | None = None,
          loss_fn: LossFn = next_token_loss, on_eval: Callable[[int], dict[str, float]] | None = None) -> dict:
    """Train, writing out_dir/checkpoint/ and out_dir/loss.png; return the loss history.

    model is a GPT, or a GPTWithHead (heads.py) whose head is saved beside it.
    Under torchrun, get_batch and replay give this process's share of each batch; the history's
    losses and numbers are the means over the processes, its tokens their sum; only rank 0
    validates, runs on_eval and writes files (the history of the other ranks lacks those parts).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    start, history = resume_from(out_dir, model, optimizer) if resume else (0, new_history())  # every rank alike
    ddp = distributed.wrap(StepLoss(model, loss_fn)) if distributed.world_size() > 1 else None
    main = distributed.is_main()
    meta = {**(meta or {}), "train_config": asdict(cfg)}

    def save(step: int) -> None:
        if not weights_are_finite(model):  # never replace a good checkpoint with a broken one
            raise TrainingDiverged(divergence_advice(step - 1, "the weights are no longer finite numbers", cfg.lr,
                                                     cfg.grad_clip))
        state = {"step": step, "history": history}
        save_checkpoint(out_dir / "checkpoint", model, tokenizer, {**meta, "step": step}, state, optimizer)

    # Validation and on_eval run on rank 0 alone: the validation batches are not shared out, so every
    # rank would compute the very same numbers. The others wait for it at the next gradient exchange.
    if main and on_eval is not None and start == 0:  # the measures before training: where the curves start
        record_eval(history, 0, model, on_eval)
    bar = tqdm(range(start, cfg.max_steps), initial=start, total=cfg.max_steps, disable=quiet,
               desc=out_dir.name, mininterval=1.0)
    for step in bar:
        began = time.perf_counter()
        loss, tokens, logged = train_step(model, optimizer, get_batch, step, cfg, device, replay, loss_fn, ddp)
        # Each rank measured its share of the batch: the whole batch's loss is their mean (every share
        # is the same size), its tokens their sum. One process: the numbers as they are.
        loss, tokens = distributed.mean_over_ranks(loss), round(distributed.sum_over_ranks(tokens))
        logged = {name: distributed.mean_over_ranks(value) for name, value in logged.items()}
        history["seconds"] += time.perf_counter() - began
        history["tokens"] += tokens
        history["step"].append(step)
        history["train_loss"].append(loss)
        for name, value in logged.items():
            history.setdefault(name, []).append(value)
        last = step == cfg.max_steps - 1
        if main and val_batches and ((step + 1) % cfg.eval_every == 0 or last):
            history["val_step"].append(step)
            history["val_loss"].append(evaluate_loss(model, val_batches, device, cfg.dtype, loss_fn))
        if main and on_eval is not None and ((step + 1) % cfg.eval_every == 0 or last):
            record_eval(history, step + 1, model, on_eval)
        val = history["val_loss"][-1] if history["val_loss"] else float("nan")
        bar.set_postfix(loss=f"{loss:.3f}", val=f"{val:.3f}", tok_s=f"{history['tokens'] / history['seconds']:.0f}")
        if main and (step + 1) % cfg.save_every == 0 and not last:
            save(step + 1)
    if main and (start < cfg.max_steps or not (out_dir / "checkpoint").exists()):
        save(cfg.max_steps)
    if main:
        plot_losses(history, out_dir / "loss.png", title=out_dir.name)
    distributed.barrier()  # the other ranks go on once the checkpoint is written: what follows may read it
    return history
