"""What PPO (chapter 9) and GRPO (chapter 11) do around their own step: one skeleton for both.

    class PPOConfig(RunSettings, LoRASettings, RolloutSettings): ...    # the settings both stages share
    policy, tokenizer, sft_meta = load_policy(sft_dir, device)          # the SFT model, dropout off
    reference = make_reference(policy, cfg)                              # a frozen copy, or LoRA (adapters off)
    run = PolicyRun(out_dir, tokenizer, meta, [Part("checkpoint", policy, adamw(policy, cfg.lr))], RECORDED)
    start, history, state = run.resume() if resume else (0, run.new_history(), {})
    judged = run.loop(cfg, start, history, step=..., judge=..., line=..., state=..., quiet=quiet)

1. The policy is the SFT model with dropout off (model.disable_dropout). Its reference is a frozen copy
   of it, or, with a LoRA rank, the policy itself with its adapters switched off (lora.adapters_off):
   no second copy of the weights.
2. The loop judges the policy before the first step (held-out accuracy, preferred style, win-rate
   against the SFT model's answers), then steps, judges every eval_every steps and at the end, saves
   every save_every steps and at the end, and prints one line per step. Every step's numbers go into
   the history, the judge's as eval_<name> beside eval_step.
3. A run that stopped goes on from its last checkpoint: the weights and optimizer moments of every
   part (the policy, and PPO's value model), the history and the stage's own state (PPO's KL
   coefficient). Every random choice of a step is a function of (seed, step), so the resumed run
   takes exactly the steps an uninterrupted one would have taken.
4. At the end a LoRA policy's adapters are saved in adapter/ and merged, so that checkpoint/ holds a
   plain GPT, as every stage's does.
Under torchrun every rank steps; rank 0 alone judges, prints and writes files.
"""

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from gpt_scratch import distributed
from gpt_scratch.args import float_range, int_range
from gpt_scratch.checkpoint import find_checkpoint, load_model_into, load_stage_checkpoint, load_train_state, save_checkpoint
from gpt_scratch.lora import parameter_groups, remove_lora, save_adapter
from gpt_scratch.model import GPT, disable_dropout
from gpt_scratch.settings import setting
from gpt_scratch.tokenizer import Tokenizer


@dataclass
class RolloutSettings:
    """How PPO and GRPO sample their rollouts (rollout.py), declared once for both."""
    max_new_tokens: int = setting(24, "longest answer sampled", type=int_range(1, 8192))
    temperature: float = setting(1.0, "sampling temperature of the rollouts; every log-prob of a rollout is taken "
                                      "under softmax(logits / temperature)",
                                 type=float_range(0.0, 100.0, include_low=False))


def check_minibatches(batch_size: int, minibatch_size: int) -> None:
    """A step's rollouts are split into equal minibatches: minibatch_size must divide batch_size."""
    if batch_size % minibatch_size != 0:
        raise ValueError(f"--minibatch-size {minibatch_size} must divide --batch-size {batch_size}")


def load_policy(sft_dir: str | Path, device: torch.device) -> tuple[GPT, Tokenizer, dict]:
    """(the SFT model, its tokenizer, its meta), with every dropout off: the policy an RL stage starts from."""
    policy, tokenizer, meta = load_stage_checkpoint(sft_dir, device=device)
    return disable_dropout(policy), tokenizer, meta


def make_reference(policy: GPT, cfg) -> GPT | None:
    """The frozen SFT reference of a policy just loaded, or None when cfg (a LoRASettings) has a rank: then the
    policy gets its adapters, and its reference is the policy with them off (lora.adapters_off)."""
    if cfg.lora_rank is None:
        return copy.deepcopy(policy).eval().requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the adapters' random A matrices: a function of the seed only
    cfg.add_to(policy)
    disable_dropout(policy)  # the adapters' own dropout too
    return None


def adamw(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    """The RL stages' optimizer: AdamW over the parameters that train, betas (0.9, 0.95), no weight decay.

    The learning rate is constant; with LoRA+ the lora_B matrices train at lr * the ratio (lora.parameter_groups).
    """
    groups = parameter_groups(model, [{"params": [p for p in model.parameters() if p.requires_grad]}], lr)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)


@dataclass
class Part:
    """A model the run trains and checkpoints, in out_dir/<folder>, with its optimizer."""
    folder: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer


@dataclass
class PolicyRun:
    """One RL stage's run: where it writes, what it trains (the policy first, in checkpoint/), and which of
    the judge's measures its history keeps (as eval_<name>, one entry per judging)."""
    out_dir: Path
    tokenizer: Tokenizer
    meta: dict
    parts: list[Part]
    recorded: tuple[str, ...]

    def new_history(self) -> dict:
        return {"step": [], "eval_step": [], **{f"eval_{name}": [] for name in self.recorded}, "seconds": 0.0}

    def record_eval(self, history: dict, step: int, judged: dict) -> None:
        """The judge's measures after step steps: history["eval_step"] and history["eval_<name>"]."""
        history["eval_step"].append(step)
        for name in self.recorded:
            history[f"eval_{name}"].append(judged[name])

    @property
    def policy(self) -> torch.nn.Module:
        return self.parts[0].model

    def save(self, step: int, history: dict, state: dict) -> None:
        """Every part's weights and optimizer moments; the policy's folder also the history and the state."""
        first, *others = self.parts
        save_checkpoint(self.out_dir / first.folder, first.model, self.tokenizer, {**self.meta, "step": step},
                        {"step": step, "history": history, **state}, first.optimizer)
        for part in others:
            save_checkpoint(self.out_dir / part.folder, part.model, None,
                            {"stage": f"{self.meta['stage']} {part.folder}", "step": step}, {"step": step},
                            part.optimizer)

    def resume(self) -> tuple[int, dict, dict]:
        """(the step to go on from, the history, the stage's state) of the last checkpoint; 0, empty if none.

        A finished LoRA run holds its merged policy: it is loaded as it is (nothing is left to train).
        """
        try:
            folders = [find_checkpoint(self.out_dir / part.folder) for part in self.parts]
        except FileNotFoundError:
            return 0, self.new_history(), {}
        state, _ = load_train_state(folders[0])
        if state.get("merged_lora"):
            remove_lora(self.policy)
            load_model_into(self.policy, folders[0])
            return state["step"], state["history"], state
        states = [load_train_state(folder)[1] for folder in folders]
        if "step" not in state or any(optimizer_state is None for optimizer_state in states):
            return 0, self.new_history(), {}
        for part, folder, optimizer_state in zip(self.parts, folders, states):
            load_model_into(part.model, folder)
            part.optimizer.load_state_dict(optimizer_state)
        return state["step"], state["history"], state

    def loop(self, cfg, start: int, history: dict, step: Callable[[int], dict], judge: Callable[[], dict],
             line: Callable[[int, dict], str], state: Callable[[], dict] = dict, quiet: bool = False) -> dict | None:
        """Judge before the first step (a fresh run), then cfg.steps steps from start; returns the last judging.

        step(i) trains step i and returns its numbers; judge() measures the policy (the recorded measures go
        into the history); line(i, numbers) is the step's printed line; state() is what the checkpoint keeps besides
        the history (PPO: the KL coefficient).
        """
        main = distributed.is_main()  # rank 0 alone judges and writes files
        judged = None
        if start == 0 and main:
            judged = judge()
            self.record_eval(history, 0, judged)
        for i in range(start, cfg.steps):
            began = time.perf_counter()
            numbers = step(i)
            history["seconds"] += time.perf_counter() - began
            history["step"].append(i + 1)
            for name, value in numbers.items():
                history.setdefault(name, []).append(value)
            last = i + 1 == cfg.steps
            if main and ((i + 1) % cfg.eval_every == 0 or last):
                judged = judge()
                self.record_eval(history, i + 1, judged)
            if not quiet:
                print(line(i, numbers), flush=True)
            if main and ((i + 1) % cfg.save_every == 0 or last):
                self.save(i + 1, history, state())
        return judged

    def merge_lora(self, sft_dir: str | Path, steps: int, history: dict, state: dict) -> None:
        """Save the LoRA policy's adapters in adapter/ and merge them: checkpoint/ then holds a plain GPT."""
        save_adapter(self.policy, self.out_dir / "adapter", base=str(sft_dir))
        remove_lora(self.policy)
        save_checkpoint(self.out_dir / self.parts[0].folder, self.policy, self.tokenizer,
                        {**self.meta, "step": steps, "merged_lora": True},
                        {"step": steps, "history": history, **state, "merged_lora": True})
