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

import copy
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gpt_scratch import distributed
from gpt_scratch.checkpoint import (find_checkpoint, load_model_into, load_stage_checkpoint, load_train_state,
                                    load_with_head, save_checkpoint)
from gpt_scratch.evaluate import answer, check_judgeable, load_split, peak_memory_mb, win_rate
from gpt_scratch.formats import write_json
from gpt_scratch.heads import GPTWithHead
from gpt_scratch.logprobs import token_logprobs
from gpt_scratch.lora import adapters_off, add_lora, remove_lora, save_adapter
from gpt_scratch.model import disable_dropout
from gpt_scratch.plots import plot_curves
from gpt_scratch.ppo_math import (AdaptiveKLController, FixedKLController, clipped_policy_loss, clipped_value_loss,
                                  entropy_from_logits, gae, kl_per_token, masked_whiten, rlhf_rewards)
from gpt_scratch.reward import score_texts
from gpt_scratch.rollout import answer_kl, rollout
from gpt_scratch.train import autocast_for, check_finite_loss, pick_device
from gpt_scratch.world.judge import format_change_table, score
from gpt_scratch.world.preferences import prompt_of

TEMPLATE = "chat"


@dataclass
class PPOConfig:
    steps: int = 40
    batch_size: int = 64  # rollouts (prompts) per step
    minibatch_size: int = 32
    epochs: int = 4  # passes over each rollout batch (with one pass, clipping would never act)
    lr: float = 3e-5
    value_lr: float = 9e-5
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    kl_target: float | None = None  # when set, the adaptive controller steers the KL per answer to it
    kl_horizon: int = 10_000
    clip_range: float = 0.2
    value_clip: float = 0.2
    value_baseline: bool = True  # False (an ablation): no value model; a token's advantage is the return still to come
    gamma: float = 1.0
    lam: float = 0.95
    max_new_tokens: int = 24
    temperature: float = 1.0
    no_end_penalty: float = -2.0
    grad_clip: float = 1.0
    lora_rank: int | None = None  # train LoRA adapters of this rank instead of every weight
    lora_alpha: float | None = None  # default 2 * rank, as in SFT
    eval_every: int = 20
    save_every: int = 20
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.batch_size % self.minibatch_size != 0:
            raise ValueError(f"minibatch_size {self.minibatch_size} must divide batch_size {self.batch_size}")


def step_prompts(records: list[dict], cfg: PPOConfig, step: int) -> list[str]:
    """The training prompts of one step: a sample that depends on (seed, step) only (under torchrun,
    this rank's share of it)."""
    sample = random.Random(f"{cfg.seed}:{step}").sample(records, cfg.batch_size)
    return [prompt_of(r) for r in distributed.share(sample, "rollout batch")]


def reference_logprobs(reference, policy, x: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p_ref of the sampled tokens at the rollout temperature: the frozen SFT copy, or (reference None)
    the LoRA policy's base."""
    if reference is None:
        with adapters_off(policy):
            return token_logprobs(policy(x), y, temperature)
    return token_logprobs(reference(x), y, temperature)


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
        ref_logp = reference_logprobs(reference, policy, x, y, cfg.temperature)
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


def judge_policy(policy, tokenizer, records: list[dict], sft_answers: list[str]) -> dict:
    """Held-out accuracy, preferred-style rate and win-rate against the SFT model's answers."""
    responses = answer(policy, tokenizer, records, TEMPLATE)
    scores, versus = score(records, responses), win_rate(records, responses, sft_answers)
    return {"accuracy": scores["accuracy"], "sentence_rate": scores["sentence_rate"], "win_rate": versus["win_rate"],
            "tie_share": versus["tie_share"], "scores": scores, "responses": responses}


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


def new_history() -> dict:
    return {"step": [], "eval_step": [], "eval_accuracy": [], "eval_sentence_rate": [], "eval_win_rate": [],
            "seconds": 0.0}


def ppo_stage(sft_dir: str | Path, reward_dir: str | Path, data_dir: str | Path, out_dir: str | Path, cfg: PPOConfig,
              n_eval: int | None = None, resume: bool = False, quiet: bool = False) -> dict:
    """The whole stage: policy, value model and reference from SFT, PPO against the reward model; returns metrics.

    Under torchrun rank 0 returns the metrics, and the other ranks return {} once trained.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    policy, tokenizer, sft_meta = load_stage_checkpoint(sft_dir, device=device)
    disable_dropout(policy)  # and so the value model and the reference copied from it: exact log-probs
    reward_model = load_with_head(reward_dir, "reward", device=device)[0].eval().requires_grad_(False)
    value_model = GPTWithHead(copy.deepcopy(policy), "value").to(device)
    reference = None  # the LoRA policy's own base (adapters off)
    if cfg.lora_rank is None:
        reference = copy.deepcopy(policy).eval().requires_grad_(False)
    else:
        torch.manual_seed(cfg.seed)  # the adapters' random A matrices: a function of the seed only
        add_lora(policy, cfg.lora_rank, cfg.lora_alpha or 2.0 * cfg.lora_rank)
    train_records = load_split(data_dir, "train")
    test_records = load_split(data_dir, "test", n_eval)
    check_judgeable(test_records, data_dir / "sft_test.json")
    if len(train_records) < cfg.batch_size:
        raise ValueError(f"{data_dir} has {len(train_records)} training prompts, fewer than batch_size {cfg.batch_size}")
    trainable = [p for p in policy.parameters() if p.requires_grad]
    optimizers = (torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0),
                  torch.optim.AdamW(value_model.parameters(), lr=cfg.value_lr, betas=(0.9, 0.95), weight_decay=0.0))
    kl_controller = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.kl_target
                     else FixedKLController(cfg.kl_coef))
    start, history = 0, new_history()
    if resume:
        start, history = resume_from(out_dir, policy, value_model, optimizers, kl_controller)
    ddp = (distributed.wrap(policy), distributed.wrap(value_model)) if distributed.world_size() > 1 else None
    main = distributed.is_main()  # rank 0 alone measures held-out and writes files
    sft_answers = []
    if main:
        with adapters_off(policy):  # a no-op for a policy without LoRA; the SFT model's own answers
            sft_answers = answer(policy if reference is None else reference, tokenizer, test_records, TEMPLATE)
    meta = {"stage": "ppo", "base": str(sft_dir), "reward": str(reward_dir), "template": TEMPLATE,
            "ppo_config": asdict(cfg), "corpus": sft_meta.get("corpus")}

    def save(step: int) -> None:
        state = {"step": step, "history": history, "kl_coef": kl_controller.value}
        save_checkpoint(out_dir / "checkpoint", policy, tokenizer, {**meta, "step": step}, state, optimizers[0])
        save_checkpoint(out_dir / "value", value_model, None, {"stage": "ppo value model", "step": step},
                        {"step": step}, optimizers[1])

    judged = None
    if start == 0 and main:
        judged = record_eval(history, 0, judge_policy(policy, tokenizer, test_records, sft_answers))
    for step in range(start, cfg.steps):
        began = time.perf_counter()
        metrics = ppo_step(policy, value_model, reference, reward_model, tokenizer, step_prompts(train_records, cfg, step),
                           cfg, kl_controller.value, optimizers, step, device, ddp=ddp)
        kl_controller.update(metrics["kl"], cfg.batch_size)
        history["seconds"] += time.perf_counter() - began
        history["step"].append(step + 1)
        for name, value in metrics.items():
            history.setdefault(name, []).append(value)
        if main and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            judged = record_eval(history, step + 1, judge_policy(policy, tokenizer, test_records, sft_answers))
        if not quiet:
            print(f"ppo step {step + 1}/{cfg.steps}: score {metrics['score']:.2f} kl {metrics['kl']:.3f} "
                  f"clipfrac {metrics['clipfrac']:.3f} entropy {metrics['entropy']:.2f}"
                  + (f"; held-out accuracy {history['eval_accuracy'][-1]:.1%}, preferred style "
                     f"{history['eval_sentence_rate'][-1]:.1%}, win-rate {history['eval_win_rate'][-1]:.1%}"
                     if history["eval_step"][-1] == step + 1 else ""), flush=True)
        if main and ((step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps):
            save(step + 1)

    if not main:
        return {}
    if cfg.lora_rank is not None and start < cfg.steps:
        save_adapter(policy, out_dir / "adapter", base=str(sft_dir))
        remove_lora(policy)  # merge: checkpoint/ holds an ordinary GPT, as every stage's does
        save_checkpoint(out_dir / "checkpoint", policy, tokenizer, {**meta, "step": cfg.steps, "merged_lora": True},
                        {"step": cfg.steps, "history": history, "kl_coef": kl_controller.value, "merged_lora": True})
    final = judged if start < cfg.steps else judge_policy(policy, tokenizer, test_records, sft_answers)
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


def record_eval(history: dict, step: int, judged: dict) -> dict:
    history["eval_step"].append(step)
    history["eval_accuracy"].append(judged["accuracy"])
    history["eval_sentence_rate"].append(judged["sentence_rate"])
    history["eval_win_rate"].append(judged["win_rate"])
    return judged


def resume_from(out_dir: Path, policy, value_model: GPTWithHead, optimizers: tuple, kl_controller) -> tuple[int, dict]:
    """Weights, optimizer moments, history and kl_coef of the last saved step, if there is one."""
    try:
        folder, value_folder = find_checkpoint(out_dir / "checkpoint"), find_checkpoint(out_dir / "value")
    except FileNotFoundError:
        return 0, new_history()
    (state, policy_state), (_, value_state) = load_train_state(folder), load_train_state(value_folder)
    if state.get("merged_lora"):  # a finished LoRA run: its adapters are merged into the checkpoint
        remove_lora(policy)
        load_model_into(policy, folder)
        return state["step"], state["history"]
    if "step" not in state or policy_state is None or value_state is None:
        return 0, new_history()
    load_model_into(policy, folder)
    load_model_into(value_model, value_folder)
    optimizers[0].load_state_dict(policy_state)
    optimizers[1].load_state_dict(value_state)
    kl_controller.value = state["kl_coef"]
    return state["step"], state["history"]
