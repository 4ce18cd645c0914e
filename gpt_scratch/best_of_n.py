"""Best-of-n: sample n answers and keep the one a scorer likes best -- the reward model's first use.

    scorer = lambda prompts, responses: score_texts(reward_model, tokenizer, prompts, responses).tolist()
    curves = best_of_n_curves(sft_model, tokenizer, records, scorer, n_max=64, seed=0)
    plot_best_of_n(curves, "best_of_n.png")

For each prompt, n_max answers are sampled from the SFT model (temperature 1). Best-of-n, for
n = 1, 2, 4, ..., n_max, looks at the first n of them and keeps
  - the one the reward model scores highest (the *proxy* picks), or
  - the one the hidden rule ranks highest (the *judge* picks: the oracle, the best any picker
    could do with these n samples).
For each n it measures the kept answers: the judge's accuracy and preferred-style rate, the
win-rate against the SFT model's own (greedy) answer, the reward model's mean score of them
(what the proxy believes it gained), and how far best-of-n has moved from the SFT model, as
KL(best-of-n || SFT).

The KL: the well-known log n - (n - 1) / n holds only when no two samples are the same answer;
it is an upper bound. A fine-tuned model repeats itself ("The answer is 7." again and again),
so the bound is loose here. What is plotted is the exact KL of best-of-n for the empirical
distribution of each prompt's n_max samples: sort the distinct answers by score into levels
with masses m_1 .. m_k (low to high) and cumulative masses F_i; best-of-n picks level i with
probability q_i = F_i^n - F_(i-1)^n, so KL = sum_i q_i log(q_i / m_i), averaged over prompts.
Example: two equally likely answers, n = 2: q = (1/4, 3/4), KL = 1/4 log(1/2) + 3/4 log(3/2) = 0.13,
the same as the bound log 2 - 1/2 = 0.19 only for infinitely many distinct answers.
"""

import math
from pathlib import Path
from typing import Callable

from gpt_scratch.evaluate import answer, win_rate
from gpt_scratch.model import GPT
from gpt_scratch.plots import plot_curves
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.world.judge import score
from gpt_scratch.world.preferences import preference_rank, prompt_of

TEMPLATE = "chat"


def powers_of_two(n_max: int) -> list[int]:
    """[1, 2, 4, ..., n_max] (n_max itself last even if it is not a power of two)."""
    ns = [1]
    while ns[-1] * 2 <= n_max:
        ns.append(ns[-1] * 2)
    return ns if ns[-1] == n_max else ns + [n_max]


def best_of_n_kl(scores: list, n: int) -> float:
    """Exact KL(best-of-n || p) for p = the empirical distribution of `scores` (one per sample).

    Samples with equal scores form one level; best-of-n picks level i with probability
    F_i^n - F_(i-1)^n, where F is the cumulative mass from the lowest score up.
    best_of_n_kl([0, 1], 2) = 0.25 log 0.5 + 0.75 log 1.5 = 0.1308
    """
    masses: dict = {}
    for s in scores:
        masses[s] = masses.get(s, 0) + 1 / len(scores)
    kl, below = 0.0, 0.0
    for level in sorted(masses):
        mass = masses[level]
        picked = (below + mass) ** n - below ** n
        if picked > 0:
            kl += picked * math.log(picked / mass)
        below += mass
    return max(kl, 0.0)  # float rounding can leave -1e-17


def pick(scores: list, n: int) -> int:
    """Index of the highest of the first n scores (the first one among equals)."""
    first_n = scores[:n]
    return first_n.index(max(first_n))


def best_of_n_curves(sft_model: GPT, tokenizer: Tokenizer, records: list[dict],
                     scorer: Callable[[list[str], list[str]], list[float]], n_max: int = 64,
                     temperature: float = 1.0, seed: int = 0) -> dict:
    """Best-of-n for n = 1, 2, 4, ..., n_max with the reward model and with the judge as pickers.

    scorer(prompts, responses) -> one reward-model score per response.
    """
    samples = answer(sft_model, tokenizer, [r for r in records for _ in range(n_max)], TEMPLATE,
                     batch_size=512, temperature=temperature, seed=seed)
    prompts = [prompt_of(r) for r in records for _ in range(n_max)]
    rewards = [float(r) for r in scorer(prompts, samples)]
    greedy = answer(sft_model, tokenizer, records, TEMPLATE)

    per_prompt = [(samples[i * n_max:(i + 1) * n_max], rewards[i * n_max:(i + 1) * n_max]) for i in range(len(records))]
    ranks = [[preference_rank(r, s) for s in answers] for r, (answers, _) in zip(records, per_prompt)]
    ns = powers_of_two(n_max)
    curves = {"n": ns, "prompts": len(records), "samples_per_prompt": n_max, "temperature": temperature,
              "kl_bound": [math.log(n) - (n - 1) / n for n in ns]}
    for picker in ("reward_model", "judge"):
        curve = {"accuracy": [], "sentence_rate": [], "win_rate": [], "tie_share": [], "reward": [], "kl": []}
        for n in ns:
            kept, kept_rewards, kls = [], [], []
            for (answers, scores), rank in zip(per_prompt, ranks):
                by = scores if picker == "reward_model" else rank
                index = pick(by, n)
                kept.append(answers[index])
                kept_rewards.append(scores[index])
                kls.append(best_of_n_kl(by, n))
            judged = score(records, kept)
            versus = win_rate(records, kept, greedy)
            curve["accuracy"].append(judged["accuracy"])
            curve["sentence_rate"].append(judged["sentence_rate"])
            curve["win_rate"].append(versus["win_rate"])
            curve["tie_share"].append(versus["tie_share"])
            curve["reward"].append(sum(kept_rewards) / len(kept_rewards))
            curve["kl"].append(sum(kls) / len(kls))
        curves[picker] = curve
    return curves


def plot_best_of_n(curves: dict, path: str | Path) -> Path:
    """The judge's measures (left) and the reward model's own score (right) against KL from SFT."""
    proxy, oracle = curves["reward_model"], curves["judge"]
    left = {"ylabel": "share of held-out prompts", "ylim": (0, 1.02), "legend": {"loc": "lower center", "ncol": 2}, "lines": [
        ("accuracy, RM picks", proxy["kl"], proxy["accuracy"], "C0o-"),
        ("preferred style, RM picks", proxy["kl"], proxy["sentence_rate"], "C1s-"),
        ("win-rate vs SFT, RM picks", proxy["kl"], proxy["win_rate"], "C2^-"),
        ("accuracy, judge picks", oracle["kl"], oracle["accuracy"], "C0o--"),
        ("preferred style, judge picks", oracle["kl"], oracle["sentence_rate"], "C1s--"),
        ("win-rate vs SFT, judge picks", oracle["kl"], oracle["win_rate"], "C2^--")]}
    right = {"ylabel": "reward-model score of the kept answer\n(axis not from 0)", "lines": [
        ("RM picks (the proxy's belief)", proxy["kl"], proxy["reward"], "o-"),
        ("judge picks", oracle["kl"], oracle["reward"], "o--")]}
    return plot_curves([left, right], path, xlabel="KL(best-of-n || SFT), nats (empirical, exact)",
                       title=f"best-of-n, n = 1 ... {curves['n'][-1]}, {curves['prompts']} held-out prompts")
