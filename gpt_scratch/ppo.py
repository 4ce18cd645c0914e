"""RLHF with PPO (chapter 9): the SFT model answers, the reward model scores, PPO moves the policy.

    python -m gpt_scratch ppo --sft runs/default/sft --reward runs/default/reward --data runs/default/data \\
        --out runs/default/ppo

One PPO step, every piece from the package (the arithmetic is in ppo_math.py):
1. Rollout: the policy answers batch_size training prompts (rollout.py), sampled at `temperature`
   (1 by default). Every log-probability below is taken under that same distribution,
   softmax(logits / temperature), as TRL's trainers do: the ratio, the KL and the entropy then
   describe the distribution the answers were really drawn from.
2. Score: the reward model scores each answer; an answer that never ended gets no_end_penalty
   (the reward model only ever saw finished answers).
3. Log-probabilities of the sampled tokens under the policy (old_logp, fixed for this step) and
   under the frozen SFT reference, and the value model's values (old_values).
4. Rewards per token: -kl_coef * KL(policy || reference) at every token, + the score at the
   end-of-text; GAE turns them into advantages (whitened) and returns (the value model's target).
5. epochs passes over the batch in minibatches: the clipped policy loss and the clipped value
   loss, gradients clipped after backward, one AdamW step each. On the very first minibatch the
   policy is still the one that sampled, so its ratio is exactly 1 (ratio_first_minibatch): the
   same weights, no dropout (every alignment stage switches it off, model.disable_dropout) and the
   same batch of the same shape give the same numbers on a CPU. On a GPU, bf16 kernels may pick
   another reduction order for another batch shape (the minibatch is smaller than the rollout
   batch), so there the ratio may differ from 1 in its last digits.

The value model is a copy of the SFT model with a zero value head, apart from the policy: the
value loss then cannot pull the policy's features around, and it learns at its own rate
(value_lr), at the cost of a second forward and backward pass. The reference is a frozen copy of
the SFT model and never changes. With lora_rank set, the policy is the SFT model with LoRA
adapters (only they train) and the reference is that same model with its adapters switched off
(lora.adapters_off): no second copy of the weights; at the end the adapters are saved in adapter/
and merged, so checkpoint/ is an ordinary GPT like every other stage's. Every random choice is a
function of (seed, step), so a resumed run takes exactly the steps an uninterrupted one would have
taken.

Under torchrun (distributed.py) each of the N processes rolls out, scores and trains on its own
batch_size / N of a step's prompts, with random numbers of its own (distributed.seed_of_rank), in
minibatches of minibatch_size / N; the policy and the value model are each wrapped in DDP, which
averages their gradients over the processes. Each process whitens the advantages of its own share
(as TRL's PPO trainer does), and the adaptive KL controller steps on the KL averaged over them, so
it keeps one coefficient everywhere. Rank 0 alone measures held-out and writes files.
"""

import argparse
import copy
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gpt_scratch import distributed
from gpt_scratch.args import float_range, int_range, positive_float, positive_int
from gpt_scratch.checkpoint import load_stage_checkpoint, load_with_head
from gpt_scratch.evaluate import HeldOut, answer, check_judgeable, judge_against_sft, load_split, peak_memory_mb
from gpt_scratch.formats import write_json
from gpt_scratch.hardware import autocast_for, check_device, pick_device
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.logprobs import token_logprobs
from gpt_scratch.lora import LoRASettings, adapters_off
from gpt_scratch.plots import plot_curves
from gpt_scratch.ppo_math import (KL_ESTIMATORS, AdaptiveKLController, FixedKLController, clipped_policy_loss, clipped_value_loss,
                                  entropy_from_logits, gae, kl_per_token, masked_whiten, rlhf_rewards)
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.reward import score_texts
from gpt_scratch.rl import Part, PolicyRun, RolloutSettings, adamw, check_minibatches, load_policy, make_reference
from gpt_scratch.rollout import answer_kl, reference_logprobs, rollout
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.train import RunSettings, check_finite_loss
from gpt_scratch.world.judge import format_change_table, score
from gpt_scratch.world.preferences import prompt_of

TEMPLATE = "chat"


@dataclass
class PPOConfig(RunSettings, LoRASettings, RolloutSettings):
    """PPO's settings. It is also a RunSettings (seed, device, dtype, grad_clip), a LoRASettings (lora_rank,
    lora_alpha, lora_targets: with a rank, LoRA adapters train and the reference is the policy with them off)
    and a RolloutSettings (max_new_tokens, temperature), as GRPO's are."""
    steps: int = setting(40, "PPO steps (rollout + update)", type=positive_int)
    batch_size: int = setting(64, "rollouts (prompts) per step (under torchrun: of all the processes together)",
                              type=positive_int)
    minibatch_size: int = setting(32, "rollouts per gradient step (must divide --batch-size)", type=positive_int)
    epochs: int = setting(4, "passes over each rollout batch (with one, clipping never acts)", type=int_range(1, 100))
    lr: float = setting(3e-5, "policy learning rate", type=positive_float)
    value_lr: float = setting(9e-5, "value model learning rate", type=positive_float)
    kl_coef: float = setting(0.05, "weight of the per-token KL penalty to the SFT reference (0 = none)",
                             type=float_range(0.0, 100.0))
    kl_estimator: str = setting("k1", "KL estimator per token", choices=KL_ESTIMATORS)
    kl_target: float | None = setting(None, "adaptive KL: steer the KL per answer (nats) to this target (needs "
                                            "--kl-coef > 0)", type=positive_float)
    kl_horizon: int = 10_000  # how fast the adaptive controller moves the coefficient (ppo_math)
    clip_range: float = setting(0.2, "PPO ratio clip epsilon", type=float_range(0.0, 10.0, include_low=False))
    value_clip: float = setting(0.2, "value clip epsilon", type=float_range(0.0, 100.0, include_low=False))
    value_baseline: bool = setting(True, "the value model's values as the baseline of GAE; --no-value-baseline: no "
                                         "value model, a token's advantage is the reward still to come, whitened (an "
                                         "ablation)", negatable=True)
    gamma: float = setting(1.0, "discount", type=float_range(0.0, 1.0))
    lam: float = setting(0.95, "GAE lambda", type=float_range(0.0, 1.0))
    no_end_penalty: float = setting(-2.0, "score of an answer that never ends", type=float_range(-1000.0, 0.0))
    eval_every: int = setting(20, "held-out accuracy and win-rate every N steps", type=positive_int)
    save_every: int = 20

    def __post_init__(self) -> None:
        check_minibatches(self.batch_size, self.minibatch_size)
        if self.kl_target is not None and self.kl_coef == 0:
            raise ValueError("--kl-target needs --kl-coef > 0 (the adaptive controller scales the coefficient)")


def step_prompts(records: list[dict], cfg: PPOConfig, step: int) -> list[str]:
    """The training prompts of one step: a sample that depends on (seed, step) only (under torchrun,
    this rank's share of it)."""
    sample = random.Random(f"{cfg.seed}:{step}").sample(records, cfg.batch_size)
    return [prompt_of(r) for r in distributed.share(sample, "rollout batch")]


def ppo_step(policy, value_model: GPTWithHead, reference, reward_model: GPTWithHead, tokenizer, prompts: list[str],
             cfg: PPOConfig, kl_coef: float, optimizers: tuple, step: int, device: torch.device,
             ddp: tuple | None = None) -> dict:
    """One PPO step on a fresh rollout of the prompts; returns its metrics, named as the field names them.

    ddp: under torchrun, (policy, value model) each wrapped in DistributedDataParallel (distributed.wrap):
    the gradient steps run through them, so that backward averages the gradients over the processes.
    """
    trained_policy, trained_value = ddp if ddp is not None else (policy, value_model)
    batch = rollout(policy, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature,
                    seed=distributed.seed_of_rank(cfg.seed * 1_000_003 + step))
    x, y, mask = batch.x.to(device), batch.y.to(device), batch.response_mask.to(device)
    with torch.no_grad(), autocast_for(device, cfg.dtype):  # every log-prob under softmax(logits / T), as sampled
        old_logp = token_logprobs(policy(x), y, cfg.temperature)
        ref_logp = reference_logprobs(policy, reference, x, y, cfg.temperature)
        old_values = value_model(x) if cfg.value_baseline else torch.zeros_like(old_logp)
    scores = score_texts(reward_model, tokenizer, prompts, batch.responses, dtype=cfg.dtype).to(device)
    scores = torch.where(batch.ended.to(device), scores, torch.full_like(scores, cfg.no_end_penalty))
    kl = kl_per_token(old_logp, ref_logp, mask, cfg.kl_estimator)
    rewards, non_score_reward = rlhf_rewards(scores, kl, mask, kl_coef)
    # Without the value baseline, values 0 and lam 1 make each token's advantage the reward still to come;
    # after whitening, the batch's mean is the only baseline left.
    advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam if cfg.value_baseline else 1.0)
    advantages = masked_whiten(advantages, mask)

    policy_optimizer, value_optimizer = optimizers
    order = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    logged: dict[str, list[float]] = {}
    minibatch = cfg.minibatch_size // distributed.world_size()  # each rank's share of the global minibatch
    for _ in range(cfg.epochs):
        for rows in torch.randperm(len(prompts), generator=order).split(minibatch):
            rows = rows.to(device)
            with autocast_for(device, cfg.dtype):
                logits = trained_policy(x[rows])
                logp = token_logprobs(logits, y[rows], cfg.temperature)
                policy_loss, stats = clipped_policy_loss(logp, old_logp[rows], advantages[rows], mask[rows],
                                                         cfg.clip_range)
                value_loss, value_clipfrac = clipped_value_loss(trained_value(x[rows]), old_values[rows],
                                                                returns[rows], mask[rows], cfg.value_clip) \
                    if cfg.value_baseline else (torch.zeros((), device=device), torch.zeros((), device=device))
            check_finite_loss(policy_loss + value_loss, step, cfg.lr, cfg.grad_clip)
            policy_optimizer.zero_grad(set_to_none=True)
            value_optimizer.zero_grad(set_to_none=True)
            (policy_loss + value_loss).backward()
            if cfg.grad_clip > 0:  # clip after backward, before the step
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
                torch.nn.utils.clip_grad_norm_(value_model.parameters(), cfg.grad_clip)
            policy_optimizer.step()
            value_optimizer.step()
            entropy = entropy_from_logits(logits.detach(), mask[rows], cfg.temperature)
            for name, value in (("policy_loss", policy_loss), ("value_loss", value_loss), ("entropy", entropy),
                                ("clipfrac", stats["clip_fraction"]), ("approxkl", stats["approx_kl"]),
                                ("ratio", stats["ratio_mean"]), ("value_clipfrac", value_clipfrac)):
                logged.setdefault(name, []).append(float(value.detach()))
    return distributed.mean_of_each({  # under torchrun: the means over the ranks (the same on every rank)
        "score": scores.mean().item(), "kl": (kl * mask).sum(dim=1).mean().item(),
        "non_score_reward": non_score_reward.mean().item(),
        "rlhf_reward": (scores + non_score_reward).mean().item(),
        **{name: sum(values) / len(values) for name, values in logged.items()},
        "ratio_first_minibatch": logged["ratio"][0],
        "response_length": mask.sum(dim=1).float().mean().item(), "ended": batch.ended.float().mean().item(),
        "kl_coef": kl_coef,
    })


def plot_history(history: dict, path: Path) -> Path:
    """Every metric of every step, one panel each (the three rewards share one), and the held-out measures
    every eval_every steps. Each y-axis names its unit; an axis that does not start at 0 says so."""
    steps, evals = history["step"], history["eval_step"]

    def panel(ylabel: str, *names: str, from_zero: bool = True) -> dict:
        drawn = {"ylabel": ylabel, "lines": [(name, steps, history[name], "-") for name in names]}
        if from_zero:  # k1's KL of a batch can be a little below 0: then the axis starts there
            drawn["ylim"] = (min(0.0, *(min(history[name]) for name in names)), None)
        return drawn

    panels = [
        panel("reward per answer (reward-model units)", "score", "rlhf_reward", "non_score_reward", from_zero=False),
        panel("KL from the reference (nats per answer)", "kl"),
        panel("entropy (nats per token)", "entropy"),
        panel("approx. KL, old -> new (nats per token)", "approxkl"),
        panel("policy loss", "policy_loss", from_zero=False),
        panel("value loss", "value_loss"),
        panel("share of tokens clipped", "clipfrac"),
        panel("mean ratio p_new / p_old (axis not from 0)", "ratio", from_zero=False),
        panel("answer length (tokens)", "response_length"),
        {**panel("share of answers that end", "ended"), "ylim": (0, 1.05)},
        {"ylabel": "held-out, judged (share of questions)", "ylim": (0, 1.05),
         "lines": [("accuracy", evals, history["eval_accuracy"], "o-"),
                   ("preferred style", evals, history["eval_sentence_rate"], "s--"),
                   ("win-rate vs SFT", evals, history["eval_win_rate"], "^:")]},
    ]
    return plot_curves(panels, path, xlabel="PPO step", title="PPO: training signals and held-out measures")


RECORDED = ("accuracy", "sentence_rate", "win_rate")  # the judge's measures the history keeps


def ppo_stage(sft_dir: str | Path, reward_dir: str | Path, data_dir: str | Path, out_dir: str | Path, cfg: PPOConfig,
              n_eval: int | None = None, resume: bool = False, quiet: bool = False) -> dict:
    """The whole stage: policy, value model and reference from SFT, PPO against the reward model; returns metrics.

    Around the step, rl.py's skeleton: loading, judging, checkpoints, resume, LoRA. Under torchrun rank 0
    returns the metrics, and the other ranks return {} once trained.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    policy, tokenizer, sft_meta = load_policy(sft_dir, device)
    reward_model = load_with_head(reward_dir, "reward", device=device)[0].eval().requires_grad_(False)
    value_model = GPTWithHead(copy.deepcopy(policy), "value").to(device)
    reference = make_reference(policy, cfg)  # None with LoRA: the policy's own base, adapters off
    train_records = load_split(data_dir, "train")
    test_records = load_split(data_dir, "test", n_eval)
    check_judgeable(test_records, data_dir / "sft_test.json")
    if len(train_records) < cfg.batch_size:
        raise ValueError(f"{data_dir} has {len(train_records)} training prompts, fewer than batch_size {cfg.batch_size}")
    meta = {"stage": "ppo", "base": str(sft_dir), "reward": str(reward_dir), "template": TEMPLATE,
            "ppo_config": asdict(cfg), "corpus": sft_meta.get("corpus")}
    run = PolicyRun(out_dir, tokenizer, meta, [Part("checkpoint", policy, adamw(policy, cfg.lr)),
                                               Part("value", value_model, adamw(value_model, cfg.value_lr))], RECORDED)
    kl_controller = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
                     else FixedKLController(cfg.kl_coef))
    start, history, state = run.resume() if resume else (0, run.new_history(), {})
    kl_controller.value = state.get("kl_coef", kl_controller.value)
    ddp = (distributed.wrap(policy), distributed.wrap(value_model)) if distributed.world_size() > 1 else None
    sft_answers = []
    if distributed.is_main():  # rank 0 alone measures held-out: the SFT model's own answers first
        with adapters_off(policy):  # a no-op for a policy without LoRA
            sft_answers = answer(policy if reference is None else reference, tokenizer, test_records, TEMPLATE)

    def step(i: int) -> dict:
        metrics = ppo_step(policy, value_model, reference, reward_model, tokenizer, step_prompts(train_records, cfg, i),
                           cfg, kl_controller.value, (run.parts[0].optimizer, run.parts[1].optimizer), i, device,
                           ddp=ddp)
        kl_controller.update(metrics["kl"], cfg.batch_size)
        return metrics

    def line(i: int, metrics: dict) -> str:
        judged_now = history["eval_step"] and history["eval_step"][-1] == i + 1
        return (f"ppo step {i + 1}/{cfg.steps}: score {metrics['score']:.2f} kl {metrics['kl']:.3f} "
                f"clipfrac {metrics['clipfrac']:.3f} entropy {metrics['entropy']:.2f}"
                + (f"; held-out accuracy {history['eval_accuracy'][-1]:.1%}, preferred style "
                   f"{history['eval_sentence_rate'][-1]:.1%}, win-rate {history['eval_win_rate'][-1]:.1%}"
                   if judged_now else ""))

    judged = run.loop(cfg, start, history, step, lambda: judge_against_sft(policy, tokenizer, test_records, sft_answers),
                      line, state=lambda: {"kl_coef": kl_controller.value}, quiet=quiet)
    if not distributed.is_main():
        return {}
    if cfg.lora_rank is not None and start < cfg.steps:
        run.merge_lora(sft_dir, cfg.steps, history, {"kl_coef": kl_controller.value})
    final = judged if start < cfg.steps else judge_against_sft(policy, tokenizer, test_records, sft_answers)
    # The KL from the SFT model on held-out prompts, measured as every alignment stage measures it (the
    # rollout KL above is on training prompts). A LoRA policy is merged by now: its reference is reloaded.
    sft_model = reference if reference is not None else load_stage_checkpoint(sft_dir, device=device)[0]
    kl_vs_sft = answer_kl(policy, sft_model.eval(), tokenizer, [prompt_of(r) for r in test_records],
                          cfg.max_new_tokens, seed=cfg.seed, dtype=cfg.dtype)
    before = history["eval_accuracy"][0], history["eval_sentence_rate"][0]
    plot_history(history, out_dir / "ppo.png")
    metrics = {
        "steps": cfg.steps, "rollouts": cfg.steps * cfg.batch_size, "test_examples": len(test_records),
        "accuracy_before": round(before[0], 4), "accuracy_after": round(final["accuracy"], 4),
        "sentence_rate_before": round(before[1], 4), "sentence_rate_after": round(final["sentence_rate"], 4),
        "win_rate_vs_sft": round(final["win_rate"], 4), "tie_share_vs_sft": round(final["tie_share"], 4),
        "final_kl": round(history["kl"][-1], 4) if history.get("kl") else None, "kl_vs_sft": round(kl_vs_sft, 4),
        "train_seconds": round(history["seconds"], 1), "peak_memory_mb": round(peak_memory_mb(), 1),
        "table": format_change_table(score(test_records, sft_answers), final["scores"], ("SFT", "PPO")),
    }
    write_json(out_dir / "history.json", history)
    write_json(out_dir / "answers.json", [{"prompt": prompt_of(r), "family": r["family"], "sft": old, "ppo": new}
                                          for r, old, new in zip(test_records, sft_answers, final["responses"])])
    write_json(out_dir / "metrics.json", metrics)  # written last: it marks the stage done
    if not quiet:
        print(metrics["table"])
        print(f"PPO: held-out accuracy {metrics['accuracy_before']:.1%} -> {metrics['accuracy_after']:.1%}, preferred "
              f"style {metrics['sentence_rate_before']:.1%} -> {metrics['sentence_rate_after']:.1%}, win-rate vs SFT "
              f"{metrics['win_rate_vs_sft']:.1%} (ties {metrics['tie_share_vs_sft']:.1%})")
    return metrics


# The command: python -m gpt_scratch ppo --------------------------------------------------------------------

@dataclass
class PPOOptions:
    """The ppo command's folders (PPO's settings are a PPOConfig)."""
    sft: str = setting("runs/default/sft", "the SFT stage folder: policy, reference, value model", preset=False)
    reward: str = setting("runs/default/reward", "the reward stage folder (a head checkpoint)", preset=False)
    data: str = setting("runs/default/data", "folder with sft_train.json and sft_test.json", preset=False)
    out: str = setting("runs/default/ppo", "stage folder", preset=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, PPOOptions)
    add_flags(parser, HeldOut, preset=PRESETS["default"]["ppo"])
    add_flags(parser, PPOConfig, "PPO (default: the preset's ppo settings)", skip=("lora_dropout",),
              defaults=PRESETS["default"]["ppo"])
    add_flags(parser, StageOptions, "the run")


def run(args: argparse.Namespace) -> int:
    run_as = from_flags(StageOptions, args)
    preset = PRESETS[run_as.preset]["ppo"]
    cfg = from_flags(PPOConfig, args, preset, run_as.preset)
    for flag, value in (("--batch-size", cfg.batch_size), ("--minibatch-size", cfg.minibatch_size)):
        distributed.check_split(flag, value)  # under torchrun, shared out over the processes
    check_device(cfg.device)
    options = from_flags(PPOOptions, args)
    distributed.start(pick_device(cfg.device))
    ppo_stage(options.sft, options.reward, options.data, options.out, cfg, from_flags(HeldOut, args, preset).n_eval,
              resume=run_as.resume, quiet=run_as.quiet)
    return 0
