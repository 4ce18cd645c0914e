"""Preference pairs (prompt, chosen, rejected) drawn from a hidden preference rule.

    pairs = make_preference_pairs(splits["train"], seed=0, label_noise=0.1)
    pairs[0]
    # {'prompt': 'What is 23 plus 45?', 'chosen': 'The answer is 68.', 'rejected': '69',
    #  'family': 'add', 'kind': 'correctness', 'flipped': False}

THE HIDDEN RULE (a reward model sees only the pairs; the judge knows the rule):
  1. a correct answer beats a wrong one, whatever their styles;
  2. between two correct answers, the sentence style "The answer is X." beats the bare "X";
  3. anything else is a tie (no pair is made from a tie).
preference_rank() writes the rule as code: the response with the higher rank is preferred.

Wrong answers are mostly *near misses*, so that a reward model has to read the answer: a
number off by one or two (or by ten), two neighbouring list items or letters swapped, a letter
changed, lower case where capitals were asked, another kind of thing (a food for an animal),
another word of the same kind.
With label_noise = p, each pair is swapped with probability p (and marked flipped = True),
like the disagreements of real human labellers.
"""

import random
import re

from gpt_scratch.world.corpus import KINDS, TOWNS, WORDS
from gpt_scratch.world.judge import is_correct, render, style_of

STYLE_PAIR_SHARE = 0.3  # share of pairs that compare two correct answers in different styles
NEAR_MISS_SHARE = 0.8  # share of wrong answers that are near misses (the rest: far off)


def preference_rank(example: dict, response: str) -> tuple[int, int]:
    """(correct?, correct and in the preferred style?): the response with the higher rank is preferred.

    Style counts only among correct answers (rule 2): two wrong answers tie, whatever their style.
    Example for the answer 7: 'The answer is 7.' (1, 1) > '7' (1, 0) > 'The answer is 8.' (0, 0) = '8' (0, 0).
    """
    correct = is_correct(example, response)
    return int(correct), int(correct and style_of(response) == "sentence")


def prompt_of(example: dict) -> str:
    """The instruction, and the input below it when there is one (plain text, no template)."""
    return example["instruction"] + ("\n\n" + example["input"] if example["input"] else "")


def wrong_number(n: int, rng: random.Random, near: bool) -> int:
    if near:
        step = rng.choice([-2, -1, 1, 2, -10, 10])
    else:
        step = rng.choice([-1, 1]) * rng.randint(3, 50)
    return n + step if n + step >= 0 else n + abs(step)


def swap_neighbours(items: list[str], rng: random.Random) -> list[str] | None:
    """Two neighbouring items that differ, swapped; None if all items are equal."""
    places = [i for i in range(len(items) - 1) if items[i] != items[i + 1]]
    if not places:
        return None
    i = rng.choice(places)
    return items[:i] + [items[i + 1], items[i]] + items[i + 2:]


def same_kind_words(word: str) -> list[str]:
    """The other words of the same kind: towns for a town, animals for an animal, ..."""
    for group in [TOWNS, *WORDS.values()]:
        if word in group:
            return [w for w in group if w != word]
    return []


def wrong_answer(answer: str, rng: random.Random) -> str:
    """A wrong answer of the same shape: wrong_answer('68', rng) -> '69' (for example)."""
    near = rng.random() < NEAR_MISS_SHARE
    if answer.isdigit():
        return str(wrong_number(int(answer), rng, near))
    if answer in ("yes", "no"):
        return "no" if answer == "yes" else "yes"
    if answer in KINDS.values():  # "an animal" -> "a food"
        return rng.choice([kind for kind in KINDS.values() if kind != answer])
    if ", " in answer:  # a sorted list of numbers
        items = answer.split(", ")
        swapped = swap_neighbours(items, rng) if near else None
        if swapped is None:  # far off (or nothing to swap): one number changed
            i = rng.randrange(len(items))
            swapped = items[:i] + [str(wrong_number(int(items[i]), rng, near=False))] + items[i + 1:]
        return ", ".join(swapped)
    if re.fullmatch(r"[A-Za-z]( [A-Za-z])+", answer):  # spelled letters: "t a c" or "C A T"
        letters = answer.split(" ")
        if answer.isupper() and rng.random() < 0.25:
            return answer.lower()  # right letters, wrong case
        swapped = swap_neighbours(letters, rng) if near else None
        if swapped is None:  # change one letter instead
            i = rng.randrange(len(letters))
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if answer.isupper() else "abcdefghijklmnopqrstuvwxyz"
            swapped = letters[:i] + [rng.choice(alphabet.replace(letters[i], ""))] + letters[i + 1:]
        return " ".join(swapped)
    others = same_kind_words(answer)
    return rng.choice(others) if others else answer + "s"


def make_pair(example: dict, rng: random.Random) -> tuple[str, str, str]:
    """(chosen, rejected, kind) for one example, by the hidden rule."""
    if rng.random() < STYLE_PAIR_SHARE:
        return render(example["answer"], "sentence"), render(example["answer"], "bare"), "style"
    right, wrong = example["answer"], wrong_answer(example["answer"], rng)
    # Styles are drawn independently, so a wrong sentence often faces a right bare answer:
    # the reward model must learn that correctness comes first.
    styles = ["bare", "sentence"]
    return render(right, rng.choice(styles)), render(wrong, rng.choice(styles)), "correctness"


def make_preference_pairs(examples: list[dict], seed: int = 0, label_noise: float = 0.0) -> list[dict]:
    """One pair per example; each is swapped with probability label_noise (flipped = True)."""
    if not 0.0 <= label_noise <= 0.5:
        raise ValueError(f"label_noise must be in [0, 0.5], got {label_noise} (above 0.5 the rule is reversed)")
    rng = random.Random(f"preferences:{seed}")
    pairs = []
    for example in examples:
        chosen, rejected, kind = make_pair(example, rng)
        flipped = rng.random() < label_noise
        if flipped:
            chosen, rejected = rejected, chosen
        pairs.append({"prompt": prompt_of(example), "chosen": chosen, "rejected": rejected,
                      "family": example["family"], "kind": kind, "flipped": flipped, "id": example["id"]})
    return pairs
