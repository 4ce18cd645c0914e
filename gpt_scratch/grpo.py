"""RL with a verifiable reward, GRPO-style (chapter 11): the judge is the reward, the group is the baseline.

    python -m gpt_scratch grpo --sft runs/default/sft --data runs/default/data --out runs/default/grpo

The reward is a program. Every task of the embedded world has an answer a program can check
(world/judge.py), so no reward model has to be learned: an answer earns 1 if the judge calls it
correct (and it ended with its end-of-text), else 0; with format_reward > 0 an ended answer in the
preferred style "The answer is X." earns that much on top. A learned reward model can be fooled
(chapter 9's over-optimisation); a program has no learned proxy, but it can be gamed through its own
rules: the judge reads only the first sentence, so to "What is 5 minus 5?" the answer "0. No, it is
1." earns 1 and "I think it is 0." earns 0.

The group is the baseline. PPO trains a value model to say how good an answer was expected to be.
GRPO (Shao et al. 2024, DeepSeekMath) asks the policy the same question G times and takes the
group's own mean reward as that expectation:
    advantage_i = (reward_i - mean of the group) / (std of the group + eps)
the same number for every token of answer i. No value model, no GAE. Worked example, G = 4 answers
to "What is 15 minus 8?":
    rewards [1, 0, 0, 0]  mean 0.25, std 0.5  ->  advantages [+1.5, -0.5, -0.5, -0.5]
    rewards [1, 1, 1, 1]  (or all 0)          ->  advantages [0, 0, 0, 0]
The right answer is made more likely and each wrong one less. A group whose answers all score the
same teaches nothing at all, however many tokens it holds: each step counts their share (and,
with dynamic_sampling, DAPO's fix, replaces them with groups of fresh prompts, at most
max_resample more rollouts). std=False (Dr. GRPO, Liu et al. 2025) leaves the division out,
[+0.75, -0.25, -0.25, -0.25]: an almost unanimous group then pushes gently, instead of being blown
up to the size of an evenly split one. The std is the group's sample std, Bessel-corrected (the
squared deviations divided by G - 1), as DeepSeekMath's and TRL's GRPO compute it (torch.std's
default); population_std=True divides by G instead, which makes every advantage sqrt(G / (G - 1))
times larger: 1.155 at G = 4, 1.069 at G = 8, a difference that shrinks as the group grows.

One GRPO step:
1. Prompts: batch_size / group_size training prompts (never test ones), uniformly, or with
   family_weights "sft-error" each family in proportion to the SFT model's error rate on training
   prompts (measured once at the start, greedy), so that the compute goes where the model fails.
2. Rollout: the prompts, each repeated G times, in one batched rollout (rollout.py).
3. Rewards from the judge, group advantages (group_advantages).
4. Log-probabilities of the sampled tokens under the policy that sampled them (old_logp) and under
   the frozen SFT reference, both at the rollout temperature (softmax(logits / temperature), the
   distribution the answers were drawn from; the new log-probs and the entropy too).
5. epochs passes over the batch in minibatches: ppo_math's clipped loss, aggregated as
   `aggregation` says, plus kl_coef * the k3 KL to the reference (aggregated the same way).
   kl_coef is 0 by default: with a program as the reward there is no learned proxy for the KL to
   guard, and the term held the policy back: from the default run's SFT model, the default preset's
   100 steps ended at 94.4% held-out accuracy and pass@1 86.0% without it, 93.8% and 85.0% with
   kl_coef 0.05 (exercises/ch11/ablations.py).

Held-out every eval_every steps: greedy accuracy per family (the course's measure), win-rate
against the SFT model, and pass@1 and pass@G from eval_samples sampled answers per prompt
(pass_at_k). pass@G is roughly the ceiling of what this kind of RL reaches: it sharpens answers the
model can already sample, it does not teach new ones. On the default run about 90% of the SFT
model's sampled answers to training prompts are right, so the reward mostly sharpens: held-out
pass@1 rises from 81.9% to 86.0%, greedy accuracy only from 93.4% to 94.4%; no held-out question is
a training one (about 30% use number pairs or words training never shows, world/tasks.py), and a
reward on the training prompts reaches them only through what generalises. Every random choice is
a function of (seed, step), so a resumed run takes exactly the steps an uninterrupted one would
have taken.

Under torchrun (distributed.py) each of the N processes draws and rolls out its own
batch_size / group_size / N groups (whole groups: the baseline needs all G answers of a prompt),
with random numbers of its own (distributed.seed_of_rank), and takes minibatch_size / N of them per
gradient step; DDP averages the gradients, so with the default aggregation (a mean over answers)
the update is the one a single process makes on the whole batch. The logged numbers are the means
over the processes; rank 0 alone measures held-out and writes files.
"""

import argparse
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from gpt_scratch import distributed
from gpt_scratch.args import UsageError, float_range, int_range, positive_float, positive_int
from gpt_scratch.evaluate import (HeldOut, answer, answer_with_ends, check_judgeable, judge_against_sft, load_split,
                                  peak_memory_mb)
from gpt_scratch.formats import write_json
from gpt_scratch.hardware import autocast_for, check_device, pick_device
from gpt_scratch.logprobs import token_logprobs
from gpt_scratch.lora import LoRASettings, adapters_off
from gpt_scratch.plots import plot_curves
from gpt_scratch.ppo_math import AGGREGATIONS, aggregate_loss, clipped_policy_loss, entropy_from_logits, kl_per_token
from gpt_scratch.presets import PRESETS, StageOptions
from gpt_scratch.rl import Part, PolicyRun, RolloutSettings, adamw, check_minibatches, load_policy, make_reference
from gpt_scratch.rollout import Rollout, join_rows, reference_logprobs, rollout
from gpt_scratch.settings import add_flags, from_flags, setting
from gpt_scratch.train import RunSettings, check_finite_loss
from gpt_scratch.world.judge import is_correct, score, style_of
from gpt_scratch.world.preferences import prompt_of

TEMPLATE = "chat"
FAMILY_WEIGHTS = ("uniform", "sft-error")
STD_EPS = 1e-4  # keeps the division finite; irrelevant next to a 0/1 reward's smallest non-zero std


@dataclass
class GRPOConfig(RunSettings, LoRASettings, RolloutSettings):
    """GRPO's settings. It is also a RunSettings (seed, device, dtype, grad_clip), a LoRASettings (lora_rank,
    lora_alpha, lora_targets: with a rank, LoRA adapters train and the reference is the policy with them off)
    and a RolloutSettings (max_new_tokens, temperature: pass@k samples at it too), as PPO's are."""
    steps: int = setting(100, "GRPO steps (rollout + update)", type=positive_int)
    batch_size: int = setting(128, "answers per step: batch-size / group-size prompts, group-size answers each",
                              type=positive_int)
    group_size: int = setting(8, "answers per prompt, G (at least 2; must divide --batch-size)", type=int_range(2, 1024))
    minibatch_size: int = setting(64, "answers per gradient step (must divide --batch-size)", type=positive_int)
    epochs: int = setting(1, "passes over each rollout batch", type=int_range(1, 100))
    lr: float = setting(5e-5, "learning rate", type=positive_float)
    clip_range: float = setting(0.2, "ratio clip epsilon", type=float_range(0.0, 10.0, include_low=False))
    kl_coef: float = setting(0.0, "weight of the k3 KL to the SFT reference in the loss (0 = none)",
                             type=float_range(0.0, 100.0))
    std: bool = setting(True, "divide each group's advantages by the group's std (GRPO); --no-std: do not (Dr. GRPO)",
                        negatable=True)
    population_std: bool = setting(False, "the group's std divided by G (the population std) instead of G - 1 "
                                          "(Bessel's correction, as DeepSeekMath and TRL compute it)")
    aggregation: str = setting("seq-mean-token-mean", "how token losses become one: seq-mean-token-mean (GRPO), "
                                                      "token-mean (DAPO), seq-mean-token-sum-norm (Dr. GRPO: each "
                                                      "answer's sum / --max-new-tokens)",
                               choices=AGGREGATIONS, flag="--loss-agg")
    format_reward: float = setting(0.0, "reward on top for an answer in the preferred style 'The answer is X.' (0 = off)",
                                   type=float_range(0.0, 100.0))
    dynamic_sampling: bool = setting(False, "replace groups whose rewards are all equal (they teach nothing) by fresh "
                                            "prompts", negatable=True)
    max_resample: int = setting(2, "with --dynamic-sampling: extra rollouts per step at most, 0 to 15",
                                type=int_range(0, 15))
    family_weights: str = setting("uniform", "uniform: every training prompt alike; sft-error: families in proportion "
                                             "to the SFT model's error rate on training prompts (measured once, greedy)",
                                  choices=FAMILY_WEIGHTS)
    weight_sample: int = setting(1000, "with --family-weights sft-error: training prompts the error rates are "
                                       "measured on", type=positive_int)
    eval_every: int = setting(100, "held-out accuracy and pass@k every N steps", type=positive_int)
    eval_samples: int = setting(8, "sampled answers per held-out prompt for pass@k, at --temperature (at least --group-size)",
                                type=positive_int)
    save_every: int = 50

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"--group-size must be at least 2 (a group of one has no baseline), got {self.group_size}")
        if self.batch_size % self.group_size != 0:
            raise ValueError(f"--group-size {self.group_size} must divide --batch-size {self.batch_size} (a step "
                             f"holds whole groups)")
        check_minibatches(self.batch_size, self.minibatch_size)
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"--loss-agg must be one of {AGGREGATIONS}, not {self.aggregation!r}")
        if self.family_weights not in FAMILY_WEIGHTS:
            raise ValueError(f"--family-weights must be one of {FAMILY_WEIGHTS}, not {self.family_weights!r}")
        if not 0 <= self.max_resample <= 15:
            raise ValueError(f"--max-resample must be from 0 to 15, got {self.max_resample}")
        if self.eval_samples < self.group_size:
            raise ValueError(f"--eval-samples {self.eval_samples} must be at least --group-size {self.group_size} "
                             f"(pass@G needs G samples per prompt)")
        if self.population_std and not self.std:
            raise ValueError("--population-std chooses how the std is computed, and --no-std divides by no std at "
                             "all: give one of them")

    def validate(self, given: set[str]) -> None:
        super().validate(given)
        if "max_resample" in given and not self.dynamic_sampling:
            raise ValueError("--max-resample needs --dynamic-sampling (without it nothing is resampled)")
        if "weight_sample" in given and self.family_weights != "sft-error":
            raise ValueError("--weight-sample needs --family-weights sft-error (uniform weights measure nothing)")


# The two formulas of the chapter ------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, group_size: int, std: bool = True, eps: float = STD_EPS,
                     population_std: bool = False) -> torch.Tensor:
    """Each answer's reward minus its group's mean, divided by the group's std + eps unless std is False.

    rewards (N,) hold N / group_size groups one after another: [group 0's G answers, group 1's, ...].
    The std is the sample std (divided by G - 1, as DeepSeekMath and TRL), or with population_std the
    population std (divided by G). A group whose rewards are all equal gets exactly 0 (never 0 / 0, and
    no rounding residue).
    Example (G = 4): [1, 0, 0, 0, 1, 1, 1, 1] -> [1.5, -0.5, -0.5, -0.5, 0, 0, 0, 0] (std 0.5);
    with population_std -> [1.732, -0.577, -0.577, -0.577, 0, ...] (std 0.433);
    with std=False -> [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0].
    """
    groups = rewards.float().view(-1, group_size)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if std:
        advantages = advantages / (groups.std(dim=1, unbiased=not population_std, keepdim=True) + eps)
    all_equal = (groups == groups[:, :1]).all(dim=1, keepdim=True)
    return torch.where(all_equal, 0.0, advantages).view(-1)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The chance that at least one of k answers is correct, estimated without bias from n >= k samples
    of which c were correct: 1 - C(n - c, k) / C(n, k) (the share of k-subsets with no correct answer).

    Example: n = 4 samples, c = 1 correct: pass@1 = 1 - C(3,1)/C(4,1) = 1 - 3/4 = 0.25 (= c / n);
    pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; pass@4 = 1 - C(3,4)/C(4,4) = 1 - 0 = 1.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# Rewards and prompts -----------------------------------------------------------------------------------------

def verified(record: dict, response: str, ended: bool) -> bool:
    """The one rule of what counts as solved, for the reward and for pass@k alike: the judge calls the
    answer correct and it ended with its end-of-text (an answer cut off at max_new_tokens never counts,
    however right its first words)."""
    return bool(ended) and is_correct(record, response)


def judge_rewards(records: list[dict], batch: Rollout, format_reward: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards, correct), both (N,): 1 for a verified answer, else 0, plus format_reward for an ended
    answer in the preferred style."""
    correct = torch.tensor([verified(record, response, ended)
                            for record, response, ended in zip(records, batch.responses, batch.ended)])
    styled = torch.tensor([bool(ended) and style_of(response) == "sentence"
                           for response, ended in zip(batch.responses, batch.ended)])
    return correct.float() + format_reward * styled.float(), correct


def sft_error_rates(reference, tokenizer, records: list[dict], cfg: GRPOConfig) -> dict[str, dict]:
    """The SFT model's greedy error rate per family on weight_sample training prompts, and the family
    weights it gives: (errors + 1) / (n + 2) (never 0, so no family is dropped), summing to 1."""
    sample = random.Random(f"{cfg.seed}:weights").sample(records, min(cfg.weight_sample, len(records)))
    families = score(sample, answer(reference, tokenizer, sample, TEMPLATE, cfg.max_new_tokens))["families"]
    raw = {family: (round((1 - row["accuracy"]) * row["n"]) + 1) / (row["n"] + 2) for family, row in families.items()}
    total = sum(raw.values())
    return {family: {"n": row["n"], "error_rate": 1 - row["accuracy"], "weight": raw[family] / total}
            for family, row in families.items()}


def draw_records(by_family: dict[str, list[dict]], n: int, seed: str, weights: dict[str, float] | None) -> list[dict]:
    """n training records for a seed: uniformly over every record, or families drawn by weight first."""
    rng = random.Random(seed)
    if weights is None:
        return rng.sample([r for family in sorted(by_family) for r in by_family[family]], n)
    families = sorted(by_family)
    chosen = rng.choices(families, weights=[weights.get(f, 0.0) for f in families], k=n)
    return [rng.choice(by_family[family]) for family in chosen]


def draw_seed(cfg: GRPOConfig, step: int, attempt: int) -> str:
    """The seed of one draw of prompts; under torchrun each rank draws its own groups (ranks > 0 add their number)."""
    seed = f"{cfg.seed}:{step}:{attempt}"
    return seed if distributed.rank() == 0 else f"{seed}:rank {distributed.rank()}"


def collect_groups(policy, tokenizer, by_family: dict[str, list[dict]], weights: dict[str, float] | None,
                   cfg: GRPOConfig, step: int) -> tuple[Rollout, list[dict], torch.Tensor, dict]:
    """(batch, its records, rewards, stats): batch_size / group_size groups of group_size answers
    (under torchrun: this rank's share of them).

    Without dynamic sampling, one rollout. With it, a group whose rewards are all equal is set aside
    and fresh prompts are rolled out in its place, at most max_resample times; if groups are still
    missing then, set-aside ones fill the batch (their advantages are 0). The stats describe the
    first rollout, which is the policy's performance on fresh prompts whatever the filter keeps.
    """
    n_groups, size = cfg.batch_size // cfg.group_size // distributed.world_size(), cfg.group_size
    kept, spare = [], []  # (rollout, rows, records, rewards) of informative and of all-equal groups
    stats, sampled = {}, 0
    for attempt in range(1 + (cfg.max_resample if cfg.dynamic_sampling else 0)):
        wanted = n_groups - len(kept) if cfg.dynamic_sampling else n_groups
        chosen = draw_records(by_family, wanted, draw_seed(cfg, step, attempt), weights)
        records = [record for record in chosen for _ in range(size)]  # each prompt G times, one after another
        batch = rollout(policy, tokenizer, [prompt_of(r) for r in records], cfg.max_new_tokens, cfg.temperature,
                        seed=distributed.seed_of_rank((cfg.seed * 1_000_003 + step) * 16 + attempt))
        rewards, correct = judge_rewards(records, batch, cfg.format_reward)
        sampled += len(records)
        groups = rewards.view(-1, size)
        all_equal = (groups == groups[:, :1]).all(dim=1)
        if attempt == 0:
            stats = {"reward": rewards.mean().item(), "reward_std": rewards.std(unbiased=False).item(),
                     "correct": correct.float().mean().item(), "zero_std_share": all_equal.float().mean().item(),
                     "ended": batch.ended.float().mean().item()}
        for g in range(wanted):
            rows = list(range(g * size, (g + 1) * size))
            group = (batch, rows, records[g * size:(g + 1) * size], rewards[g * size:(g + 1) * size])
            (spare if cfg.dynamic_sampling and all_equal[g] else kept).append(group)
        if len(kept) == n_groups:
            break
    groups = kept + spare[:n_groups - len(kept)]
    joined = join_rows([(batch, rows) for batch, rows, _, _ in groups], pad_id=tokenizer.eot_id)
    records = [record for _, _, group_records, _ in groups for record in group_records]
    rewards = torch.cat([group_rewards for _, _, _, group_rewards in groups])
    trained_all_equal = (rewards.view(-1, size) == rewards.view(-1, size)[:, :1]).all(dim=1)
    stats.update({"trained_zero_std_share": trained_all_equal.float().mean().item(), "answers_sampled": sampled})
    return joined, records, rewards, stats


# One step ----------------------------------------------------------------------------------------------------

def grpo_step(policy, reference, tokenizer, by_family: dict[str, list[dict]], weights: dict[str, float] | None,
              cfg: GRPOConfig, optimizer: torch.optim.Optimizer, step: int, device: torch.device,
              ddp: torch.nn.Module | None = None) -> dict:
    """One GRPO step on fresh groups of answers; returns its metrics.

    ddp: under torchrun, the policy wrapped in DistributedDataParallel (distributed.wrap): the
    gradient steps run through it, so that backward averages the gradients over the processes.
    """
    trained = ddp if ddp is not None else policy
    batch, _, rewards, stats = collect_groups(policy, tokenizer, by_family, weights, cfg, step)
    x, y, mask = batch.x.to(device), batch.y.to(device), batch.response_mask.to(device)
    with torch.no_grad(), autocast_for(device, cfg.dtype):  # every log-prob under softmax(logits / T), as sampled
        old_logp = token_logprobs(policy(x), y, cfg.temperature)
        ref_logp = reference_logprobs(policy, reference, x, y, cfg.temperature)
    advantages = group_advantages(rewards, cfg.group_size, cfg.std, population_std=cfg.population_std).to(device)
    token_advantages = advantages[:, None].expand_as(old_logp)  # every token of an answer shares its advantage

    order = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    world = distributed.world_size()  # each rank's minibatch is its share of the global one
    logged: dict[str, list[float]] = {}
    for _ in range(cfg.epochs):
        for rows in torch.randperm(len(batch.prompts), generator=order).split(cfg.minibatch_size // world):
            rows = rows.to(device)
            with autocast_for(device, cfg.dtype):
                logits = trained(x[rows])
                logp = token_logprobs(logits, y[rows], cfg.temperature)
                policy_loss, clip_stats = clipped_policy_loss(logp, old_logp[rows], token_advantages[rows], mask[rows],
                                                              cfg.clip_range, cfg.aggregation, cfg.max_new_tokens)
                loss = policy_loss
                if cfg.kl_coef > 0:  # k3 of the policy now against the reference, aggregated like the policy loss
                    kl_loss = aggregate_loss(kl_per_token(logp, ref_logp[rows], mask[rows], "k3"), mask[rows],
                                             cfg.aggregation, cfg.max_new_tokens)
                    loss = loss + cfg.kl_coef * kl_loss
            check_finite_loss(loss, step, cfg.lr, cfg.grad_clip)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:  # clip after backward, before the step
                torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            optimizer.step()
            entropy = entropy_from_logits(logits.detach(), mask[rows], cfg.temperature)
            for name, value in (("loss", loss), ("policy_loss", policy_loss), ("entropy", entropy),
                                ("clipfrac", clip_stats["clip_fraction"]), ("approxkl", clip_stats["approx_kl"]),
                                ("ratio", clip_stats["ratio_mean"])):
                logged.setdefault(name, []).append(float(value.detach()))
    kl = kl_per_token(old_logp, ref_logp, mask, "k3")
    sampled = distributed.sum_over_ranks(stats.pop("answers_sampled"))
    metrics = distributed.mean_of_each({  # under torchrun: the means over the ranks (the same on every rank)
        **stats, **{name: sum(values) / len(values) for name, values in logged.items()},
        "ratio_first_minibatch": logged["ratio"][0],
        "kl": (kl * mask).sum(dim=1).mean().item(),  # k3 nats per answer, to the SFT reference
        "response_length": mask.sum(dim=1).float().mean().item(),
    })
    return {**metrics, "answers_sampled": int(sampled)}


# Held-out measures -------------------------------------------------------------------------------------------

def pass_rates(policy, tokenizer, records: list[dict], cfg: GRPOConfig) -> dict:
    """pass@1 and pass@group_size from eval_samples sampled answers per record, overall and per family.

    A sample passes by the reward's own rule (verified: correct and ended). The samples use one fixed
    seed, so two evaluations differ only by the policy.
    """
    n = cfg.eval_samples
    repeated = [record for record in records for _ in range(n)]
    sampled, ended = answer_with_ends(policy, tokenizer, repeated, TEMPLATE, cfg.max_new_tokens, batch_size=256,
                                      temperature=cfg.temperature, seed=cfg.seed + 1)
    rows: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        c = sum(verified(record, sampled[j], ended[j]) for j in range(i * n, (i + 1) * n))
        rows.setdefault(record["family"], []).append(c)
        rows.setdefault("(all)", []).append(c)

    def summary(counts: list[int]) -> dict:
        return {"pass_at_1": sum(pass_at_k(n, c, 1) for c in counts) / len(counts),
                "pass_at_g": sum(pass_at_k(n, c, cfg.group_size) for c in counts) / len(counts)}

    overall = summary(rows.pop("(all)"))
    return {**overall, "families": {family: summary(rows[family]) for family in sorted(rows)}}


def judge_policy(policy, tokenizer, records: list[dict], sft_answers: list[str], cfg: GRPOConfig) -> dict:
    """Greedy accuracy per family, preferred style, win-rate against the SFT model, pass@1 and pass@G."""
    judged = judge_against_sft(policy, tokenizer, records, sft_answers, TEMPLATE, cfg.max_new_tokens)
    passes = pass_rates(policy, tokenizer, records, cfg)
    return {**judged, "passes": passes, "pass_at_1": passes["pass_at_1"], "pass_at_g": passes["pass_at_g"],
            "families": {family: row["accuracy"] for family, row in judged["scores"]["families"].items()}}


RECORDED = ("accuracy", "sentence_rate", "win_rate", "pass_at_1", "pass_at_g", "families")  # kept in the history


def plot_history(history: dict, group_size: int, path: Path) -> Path:
    """Every step's training signals, and the held-out measures every eval_every steps."""
    steps, evals = history["step"], history["eval_step"]
    panels = [
        {"ylabel": "reward / share", "ylim": (0, 1.05),
         "lines": [("mean reward", steps, history["reward"], "-"),
                   ("zero-std groups", steps, history["zero_std_share"], "-")]},
        {"ylabel": "nats / share", "ylim": (0, None),
         "lines": [("kl to SFT (per answer)", steps, history["kl"], "-"), ("entropy", steps, history["entropy"], "-"),
                   ("clipfrac", steps, history["clipfrac"], "-")]},
        {"ylabel": "held-out share (judge)", "ylim": (0, 1.05),
         "lines": [("greedy accuracy", evals, history["eval_accuracy"], "o-"),
                   ("pass@1", evals, history["eval_pass_at_1"], "o-"),
                   (f"pass@{group_size}", evals, history["eval_pass_at_g"], "o-")]},
    ]
    return plot_curves(panels, path, xlabel="GRPO step", title="GRPO: training signals and held-out measures")


# The stage ---------------------------------------------------------------------------------------------------

def grpo_stage(sft_dir: str | Path, data_dir: str | Path, out_dir: str | Path, cfg: GRPOConfig,
               n_eval: int | None = None, resume: bool = False, quiet: bool = False) -> dict:
    """The whole stage: policy and reference from SFT, GRPO against the judge; returns the metrics.

    Around the step, rl.py's skeleton: loading, judging, checkpoints, resume, LoRA. Under torchrun rank 0
    returns the metrics, and the other ranks return {} once trained.
    """
    began = time.perf_counter()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    policy, tokenizer, sft_meta = load_policy(sft_dir, device)
    reference = make_reference(policy, cfg)  # None with LoRA: the policy's own base, adapters off
    train_records = load_split(data_dir, "train")  # the reward is computed on training prompts only
    test_records = load_split(data_dir, "test", n_eval)
    check_judgeable(train_records, data_dir / "sft_train.json")
    check_judgeable(test_records, data_dir / "sft_test.json")
    if len(train_records) < cfg.batch_size // cfg.group_size:
        raise ValueError(f"{data_dir} has {len(train_records)} training prompts, fewer than the "
                         f"{cfg.batch_size // cfg.group_size} groups of a step")
    by_family: dict[str, list[dict]] = {}
    for record in train_records:
        by_family.setdefault(record["family"], []).append(record)
    sft_model = policy if reference is None else reference  # the SFT model, with a LoRA policy's adapters off
    errors = None
    if cfg.family_weights == "sft-error":
        with adapters_off(policy):
            errors = sft_error_rates(sft_model, tokenizer, train_records, cfg)
    weights = {family: row["weight"] for family, row in errors.items()} if errors else None
    if errors and not quiet:
        print("SFT error rate on training prompts -> share of the prompts: " + ", ".join(
            f"{family} {row['error_rate']:.1%} -> {row['weight']:.1%}" for family, row in errors.items()))
    meta = {"stage": "grpo", "base": str(sft_dir), "template": TEMPLATE, "grpo_config": asdict(cfg),
            "corpus": sft_meta.get("corpus")}
    run = PolicyRun(out_dir, tokenizer, meta, [Part("checkpoint", policy, adamw(policy, cfg.lr))], RECORDED)
    start, history, _ = run.resume() if resume else (0, run.new_history(), {})
    ddp = distributed.wrap(policy) if distributed.world_size() > 1 else None
    main = distributed.is_main()  # rank 0 alone measures held-out and writes files
    sft_answers = []
    if main:
        with adapters_off(policy):
            sft_answers = answer(sft_model, tokenizer, test_records, TEMPLATE, cfg.max_new_tokens)

    def judge() -> dict:
        judged = judge_policy(policy, tokenizer, test_records, sft_answers, cfg)
        history.setdefault("before", {"families": judged["scores"]["families"], "passes": judged["passes"]})
        return judged

    def line(i: int, metrics: dict) -> str:
        judged_now = history["eval_step"] and history["eval_step"][-1] == i + 1
        return (f"grpo step {i + 1}/{cfg.steps}: reward {metrics['reward']:.3f} zero-std groups "
                f"{metrics['zero_std_share']:.0%} kl {metrics['kl']:.3f} clipfrac {metrics['clipfrac']:.3f} "
                f"entropy {metrics['entropy']:.3f} length {metrics['response_length']:.1f}"
                + (f"; held-out accuracy {history['eval_accuracy'][-1]:.1%}, pass@1 "
                   f"{history['eval_pass_at_1'][-1]:.1%}, pass@{cfg.group_size} {history['eval_pass_at_g'][-1]:.1%}"
                   if judged_now else ""))

    judged = run.loop(cfg, start, history, lambda i: grpo_step(policy, reference, tokenizer, by_family, weights, cfg,
                                                               run.parts[0].optimizer, i, device, ddp=ddp),
                      judge, line, quiet=quiet)
    if main and cfg.lora_rank is not None and start < cfg.steps:
        run.merge_lora(sft_dir, cfg.steps, history, {})
    if not main:
        return {}
    final = judged if start < cfg.steps else judge_policy(policy, tokenizer, test_records, sft_answers, cfg)
    plot_history(history, cfg.group_size, out_dir / "grpo.png")
    before = history["before"]
    metrics = {
        "steps": cfg.steps, "group_size": cfg.group_size, "answers_sampled": sum(history.get("answers_sampled", [])),
        "test_examples": len(test_records),
        "accuracy_before": round(history["eval_accuracy"][0], 4), "accuracy_after": round(final["accuracy"], 4),
        "pass_at_1_before": round(before["passes"]["pass_at_1"], 4),
        "pass_at_1_after": round(final["passes"]["pass_at_1"], 4),
        "pass_at_g_before": round(before["passes"]["pass_at_g"], 4),
        "pass_at_g_after": round(final["passes"]["pass_at_g"], 4),
        "sentence_rate_before": round(history["eval_sentence_rate"][0], 4),
        "sentence_rate_after": round(final["sentence_rate"], 4),
        "win_rate_vs_sft": round(final["win_rate"], 4), "tie_share_vs_sft": round(final["tie_share"], 4),
        "final_kl": round(history["kl"][-1], 4) if history.get("kl") else None,
        "mean_zero_std_share": round(sum(history["zero_std_share"]) / len(history["zero_std_share"]), 4)
        if history.get("zero_std_share") else None,
        "families": {family: {"accuracy_before": round(before["families"][family]["accuracy"], 4),
                              "accuracy_after": round(row["accuracy"], 4),
                              "pass_at_1_before": round(before["passes"]["families"][family]["pass_at_1"], 4),
                              "pass_at_1_after": round(final["passes"]["families"][family]["pass_at_1"], 4),
                              "pass_at_g_before": round(before["passes"]["families"][family]["pass_at_g"], 4),
                              "pass_at_g_after": round(final["passes"]["families"][family]["pass_at_g"], 4)}
                     for family, row in final["scores"]["families"].items()},
        "family_weights": {family: round(row["weight"], 4) for family, row in errors.items()} if errors else None,
        "train_seconds": round(history["seconds"], 1), "seconds": round(time.perf_counter() - began, 1),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }
    write_json(out_dir / "history.json", history)
    write_json(out_dir / "metrics.json", metrics)  # written last: it marks the stage done
    if not quiet:
        lowest = min(metrics["families"], key=lambda family: metrics["families"][family]["accuracy_after"])
        print(f"GRPO: held-out accuracy {metrics['accuracy_before']:.1%} -> {metrics['accuracy_after']:.1%} (lowest "
              f"family {lowest} {metrics['families'][lowest]['accuracy_after']:.1%}), pass@1 "
              f"{metrics['pass_at_1_before']:.1%} -> {metrics['pass_at_1_after']:.1%}, pass@{cfg.group_size} "
              f"{metrics['pass_at_g_before']:.1%} -> {metrics['pass_at_g_after']:.1%}; {metrics['seconds']:.0f} s")
    return metrics


# The command: python -m gpt_scratch grpo -------------------------------------------------------------------

@dataclass
class GRPOOptions:
    """The grpo command's folders (GRPO's settings are a GRPOConfig)."""
    sft: str = setting("runs/default/sft", "the SFT stage folder: the policy and the reference", preset=False)
    data: str = setting("runs/default/data", "folder with sft_train.json (the prompts trained on) and sft_test.json "
                                             "(held out)", preset=False)
    out: str = setting("runs/default/grpo", "stage folder", preset=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, GRPOOptions)
    add_flags(parser, HeldOut, preset=PRESETS["default"]["grpo"])
    add_flags(parser, GRPOConfig, "GRPO (default: the preset's grpo settings)", skip=("lora_dropout",),
              defaults=PRESETS["default"]["grpo"])
    add_flags(parser, StageOptions, "the run")


def run(args: argparse.Namespace) -> int:
    run_as = from_flags(StageOptions, args)
    preset = PRESETS[run_as.preset]["grpo"]
    cfg = from_flags(GRPOConfig, args, preset, run_as.preset)
    groups, processes = cfg.batch_size // cfg.group_size, distributed.world_size()
    if groups % processes != 0:  # each process rolls out whole groups
        raise UsageError(f"--batch-size {cfg.batch_size} / --group-size {cfg.group_size} = {groups} groups per step "
                         f"cannot be split over {processes} processes: use a multiple of {processes} groups")
    distributed.check_split("--minibatch-size", cfg.minibatch_size)
    check_device(cfg.device)
    options = from_flags(GRPOOptions, args)
    distributed.start(pick_device(cfg.device))
    grpo_stage(options.sft, options.data, options.out, cfg, from_flags(HeldOut, args, preset).n_eval,
               resume=run_as.resume, quiet=run_as.quiet)
    return 0
