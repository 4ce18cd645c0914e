"""Evaluation: let a model answer held-out prompts, score the answers with the judge, and
compare two models under the hidden preference rule. Every stage from SFT to GRPO uses this.

    responses = answer(model, tokenizer, records, "chat")              # greedy answers
    scores, responses = evaluate(model, tokenizer, records, "chat")    # accuracy, preferred style, per family
    result = win_rate(records, responses_a, responses_b)               # A against B on the same prompts
    result["win_rate"], result["tie_share"]                            # wins / (wins + losses), ties / n

Win-rate: for each prompt the hidden rule (world.preferences.preference_rank) ranks both
answers, first by correctness, then by style. A's answer wins if it ranks higher, loses if it
ranks lower, and ties if they rank the same (both right in the same style, or both wrong in the
same style). win_rate = wins / (wins + losses), so ties count for neither side; tie_share says
how many prompts could not tell the models apart. With no wins and no losses it is 0.5.
"""

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt_scratch.args import positive_int
from gpt_scratch.formats import load_instructions
from gpt_scratch.generate import generate
from gpt_scratch.model import GPT
from gpt_scratch.settings import setting
from gpt_scratch.templates import encode_prompt
from gpt_scratch.tokenizer import Tokenizer
from gpt_scratch.world.judge import score
from gpt_scratch.world.preferences import preference_rank


@dataclass
class HeldOut:
    """How many of the held-out questions a stage judges (the judge's measures; a plain data file has none)."""
    n_eval: int | None = setting(None, "judge only the first N held-out questions (default: all)", type=positive_int)


@torch.no_grad()
def answer_with_ends(model: GPT, tokenizer: Tokenizer, records: list[dict], template: str, max_new_tokens: int = 24,
                     batch_size: int = 64, temperature: float = 0.0,
                     seed: int | None = None) -> tuple[list[str], list[bool]]:
    """(the model's answers to the records' prompts, whether each one ended with its end-of-text).

    Batched; each row stops at its end-of-text, and an answer still going after max_new_tokens is cut
    there (ended False). temperature 0 (the default) is greedy; above 0 the answers are sampled,
    repeatably for a seed.
    """
    responses, ended = [], []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        prompts = [encode_prompt(tokenizer, record, template) for record in chunk]
        chunk_seed = None if seed is None else seed * 1_000_003 + start
        for ids in generate(model, prompts, max_new_tokens, temperature=temperature, eos_id=tokenizer.eot_id,
                            seed=chunk_seed):
            finished = bool(ids) and ids[-1] == tokenizer.eot_id
            responses.append(tokenizer.decode(ids[:-1] if finished else ids))
            ended.append(finished)
    return responses, ended


def answer(model: GPT, tokenizer: Tokenizer, records: list[dict], template: str, max_new_tokens: int = 24,
           batch_size: int = 64, temperature: float = 0.0, seed: int | None = None) -> list[str]:
    """The model's answers to the records' prompts, as text without the end-of-text (answer_with_ends)."""
    return answer_with_ends(model, tokenizer, records, template, max_new_tokens, batch_size, temperature, seed)[0]


def evaluate(model: GPT, tokenizer: Tokenizer, records: list[dict], template: str,
             max_new_tokens: int = 24) -> tuple[dict, list[str]]:
    """(judge scores, responses) for records that carry the judge's fields (family, answer)."""
    responses = answer(model, tokenizer, records, template, max_new_tokens)
    return score(records, responses), responses


def judge_against_sft(policy: GPT, tokenizer: Tokenizer, records: list[dict], sft_answers: list[str],
                      template: str = "chat", max_new_tokens: int = 24) -> dict:
    """What every alignment stage reports of its policy on held-out questions: accuracy and preferred-style
    rate (the judge), and the win-rate against the SFT model's answers (ties left out, their share beside
    it); with the judge's scores per family and the answers themselves."""
    responses = answer(policy, tokenizer, records, template, max_new_tokens)
    scores, versus = score(records, responses), win_rate(records, responses, sft_answers)
    return {"accuracy": scores["accuracy"], "sentence_rate": scores["sentence_rate"], "win_rate": versus["win_rate"],
            "tie_share": versus["tie_share"], "scores": scores, "responses": responses}


def compare_answers(record: dict, response_a: str, response_b: str) -> int:
    """+1 if the hidden rule prefers A's answer, -1 if it prefers B's, 0 for a tie."""
    rank_a, rank_b = preference_rank(record, response_a), preference_rank(record, response_b)
    return (rank_a > rank_b) - (rank_a < rank_b)


def win_rate(records: list[dict], responses_a: list[str], responses_b: list[str]) -> dict:
    """Wins, losses and ties of A against B on the same prompts, overall and per family.

    Example: outcomes +1, +1, -1, 0 -> wins 2, losses 1, ties 1, win_rate 2/3, tie_share 1/4.
    """
    if not len(records) == len(responses_a) == len(responses_b):
        raise ValueError(f"{len(records)} records but {len(responses_a)} and {len(responses_b)} responses; "
                         f"give both models' answer to every record")

    def summary(outcomes: list[int]) -> dict:
        wins, losses = outcomes.count(1), outcomes.count(-1)
        ties = len(outcomes) - wins - losses
        decided = wins + losses
        return {"n": len(outcomes), "wins": wins, "losses": losses, "ties": ties,
                "win_rate": wins / decided if decided else 0.5,
                "tie_share": ties / len(outcomes) if outcomes else 0.0}

    by_family: dict[str, list[int]] = {}
    everything = []
    for record, a, b in zip(records, responses_a, responses_b):
        outcome = compare_answers(record, a, b)
        everything.append(outcome)
        by_family.setdefault(record["family"], []).append(outcome)
    return {**summary(everything), "families": {f: summary(by_family[f]) for f in sorted(by_family)}}


def load_split(data_dir: str | Path, name: str, limit: int | None = None) -> list[dict]:
    """The records of sft_<name>.json in a data folder (the first `limit` of them, if given)."""
    records = load_instructions(Path(data_dir) / f"sft_{name}.json")
    return records[:limit] if limit else records


def check_judgeable(records: list[dict], path: Path) -> None:
    if not all("family" in r and "answer" in r for r in records):
        raise ValueError(f"{path}: evaluation records need 'family' and 'answer' fields for the judge "
                         f"(the files of `python -m gpt_scratch data` have them)")


def peak_memory_mb() -> float:
    """The process's peak resident memory (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 1024**2
