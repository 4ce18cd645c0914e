"""Instruction tasks with answers a program can check, in train / validation / test splits.

    world = build_world(seed=0)
    splits = make_tasks(world, seed=0, n_train=20_000, n_val=500, n_test=1_000)
    splits["train"][0]
    # {'id': 'train-00000', 'family': 'reverse', 'level': 2, 'instruction': 'Reverse the letters.',
    #  'input': 'h o r s e', 'output': 'The answer is e s r o h.', 'answer': 'e s r o h', 'unseen': False}
    print(format_family_counts(family_counts(splits)))

`output` is the response to train on (bare "e s r o h" or the sentence "The answer is e s r o h.",
see judge.py); `answer` is the truth in its bare form, which the judge compares against.

Every family is one short function (rng, world, level, unseen) -> Draft, with levels of
difficulty (the default data uses levels 1 and 2; level 3 is a stretch beyond what the default
model learns in minutes). Sums stay inside the one-digit addition table at levels 1 and 2
(3 + 4, then 7 + 5); letters come three at level 1, 4-6 at level 2 and 7 or more at level 3.
Letters are written with spaces between them ("c a t"), because the tokenizer joins letters into
word pieces and a small model cannot see inside a piece. The letter families use the world's
words and, for variety, made-up strings of letters.

The splits share no (family, inputs) pair: the test and validation questions are drawn first
and training never asks them. About 30% of the test is *unseen*: it uses a held-out number
pair, word or fact (chosen by the world, see corpus.py) that no training task uses at all.
"""

import hashlib
import random
from dataclasses import dataclass

from gpt_scratch.world.corpus import KIND_QUESTION, KINDS, QUESTIONS, World
from gpt_scratch.world.judge import render


@dataclass
class Draft:
    key: tuple  # (family, inputs...): what must never be shared between splits
    instruction: str
    input: str
    answer: str


DIGITS = {1: (0, 9), 2: (10, 99), 3: (100, 999)}  # number of digits -> range of the numbers
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
WORD_BAND = {1: 3, 2: 4, 3: 7}  # level -> word-length band (see corpus.length_band)


def pick_numbers(rng: random.Random, world: World, digits: list[int], unseen: bool,
                 distinct: bool = False) -> list[int]:
    """One number per entry of digits; some two of them form a held-out pair exactly when unseen."""
    while True:
        numbers = [rng.randint(*DIGITS[n]) for n in digits]
        if distinct and len(set(numbers)) < len(numbers):
            continue
        if world.has_held_pair(numbers) == unseen:
            return numbers


LETTER_COUNTS = {1: (3, 3), 2: (4, 6), 3: (7, 9)}  # level -> length of a made-up letter string


def made_up_letters(rng: random.Random, world: World, level: int) -> str:
    """A random string of letters, e.g. 'qzt', that is never a held-out word of the world."""
    while True:
        letters = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(*LETTER_COUNTS[level])))
        if letters not in world.held_out_words:
            return letters


def pick_word(rng: random.Random, world: World, level: int, unseen: bool) -> str:
    """A word of the world (a held-out one exactly when unseen), or half the time when not unseen,
    a made-up string of letters: the world has only ~200 words, and a model that is to reverse
    or spell *any* letters needs more than 200 different examples to learn how."""
    if not unseen and rng.random() < 0.5:
        return made_up_letters(rng, world, level)
    return rng.choice(world.words_by_length[WORD_BAND[level], unseen])


def spaced(word: str) -> str:
    return " ".join(word)


# --- the families ---------------------------------------------------------------------------

def table_pair(rng: random.Random, world: World, unseen: bool, carry: bool) -> tuple[int, int]:
    """Two digits a, b of the addition table, with a + b >= 10 exactly when carry."""
    while True:
        a, b = pick_numbers(rng, world, [1, 1], unseen)
        if (a + b >= 10) == carry:
            return a, b


def add(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    """Level 1: 3 + 4 (a one-digit sum); 2: 7 + 5 (a two-digit sum); 3: 47 + 5 (or 5 + 47)."""
    if level < 3:
        a, b = table_pair(rng, world, unseen, carry=level == 2)
    else:
        a, b = pick_numbers(rng, world, [2, 1], unseen)
        if rng.random() < 0.5:
            a, b = b, a
    return Draft(("add", a, b), f"What is {a} plus {b}?", "", str(a + b))


def subtract(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    """Level 1: 7 - 3; 2: 12 - 5 (the table backwards: 5 + 7 = 12); 3: 47 - 5.

    At levels 1 and 2 the question takes a + b - b from the addition table, so it is unseen
    exactly when the digits {a, b} are a held-out pair (7 - 3 = 4 belongs to 3 + 4).
    """
    if level < 3:
        while True:  # in training, the two numbers shown must not be a held-out pair either
            a, b = table_pair(rng, world, unseen, carry=level == 2)
            if unseen or not world.is_held_pair(a + b, b):
                return Draft(("subtract", a + b, b), f"What is {a + b} minus {b}?", "", str(a))
    a, b = pick_numbers(rng, world, [2, 1], unseen)
    return Draft(("subtract", a, b), f"What is {a} minus {b}?", "", str(a - b))


def larger(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    a, b = pick_numbers(rng, world, [level, level], unseen, distinct=True)
    return Draft(("larger", a, b), f"Which is larger, {a} or {b}?", "", str(max(a, b)))


def sort_numbers(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    """Level 1: three one-digit numbers; 2: five one-digit; 3: three two-digit."""
    digits = {1: [1, 1, 1], 2: [1, 1, 1, 1, 1], 3: [2, 2, 2]}[level]
    numbers = pick_numbers(rng, world, digits, unseen, distinct=True)
    return Draft(("sort_numbers", *numbers), "Sort the numbers from smallest to largest.",
                 ", ".join(map(str, numbers)), ", ".join(map(str, sorted(numbers))))


def reverse(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    word = pick_word(rng, world, level, unseen)
    return Draft(("reverse", word), "Reverse the letters.", spaced(word), spaced(word[::-1]))


def capitals(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    word = pick_word(rng, world, level, unseen)
    return Draft(("capitals", word), "Write the letters in capitals.", spaced(word), spaced(word.upper()))


def reverse_capitals(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    """Two steps in one instruction: reverse the letters, then write them in capitals."""
    word = pick_word(rng, world, level, unseen)
    return Draft(("reverse_capitals", word), "Reverse the letters and write them in capitals.", spaced(word),
                 spaced(word[::-1].upper()))


def count_letters(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    word = pick_word(rng, world, level, unseen)
    return Draft(("count_letters", word), "How many letters are there?", spaced(word), str(len(word)))


def count_items(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    """Level 1: how many words (2-4); 2: how many words (5-7); 3: how many of one kind among 6."""
    size = {1: rng.randint(2, 4), 2: rng.randint(5, 7), 3: 6}[level]
    words = rng.sample(world.seen_words, size)
    if unseen:  # one of the words is a held-out word
        words[rng.randrange(size)] = rng.choice(world.held_out_words)
    if level < 3:
        return Draft(("count_items", "word", *words), "How many words are in the list?", ", ".join(words),
                     str(len(words)))
    kind = world.category_of(rng.choice(words))  # a kind that occurs at least once
    count = sum(world.category_of(word) == kind for word in words)
    plural = {"animal": "animals", "colour": "colours", "food": "foods", "object": "objects"}[kind]
    return Draft(("count_items", kind, *words), f"How many {plural} are in the list?", ", ".join(words),
                 str(count))


def facts(rng: random.Random, world: World, level: int, unseen: bool) -> Draft:
    """Level 1: 'Where does Anna live?' (a fact about a person); 2: 'Is goat an animal, a colour,
    a food or an object?' (what kind of thing a word names). Both are learned from the corpus."""
    if level == 1:
        name, attribute = rng.choice(world.held_out_facts if unseen else world.seen_facts)
        return Draft(("facts", name, attribute), QUESTIONS[attribute].format(name=name), "",
                     world.people[name][attribute])
    word = rng.choice(world.held_out_words if unseen else world.seen_words)
    return Draft(("facts", word), KIND_QUESTION.format(word=word), "", KINDS[world.category_of(word)])


FAMILIES = {  # name -> (generator, highest level)
    "add": (add, 3), "subtract": (subtract, 3), "larger": (larger, 3), "sort_numbers": (sort_numbers, 3),
    "reverse": (reverse, 3), "capitals": (capitals, 3), "reverse_capitals": (reverse_capitals, 3),
    "count_letters": (count_letters, 3), "count_items": (count_items, 3), "facts": (facts, 2),
}


# --- the splits -----------------------------------------------------------------------------
# Some families have few possible questions (there are only 49 three-letter words to reverse in
# training), so the test and validation splits may each claim only a share of a family's
# questions: a fixed hash of the key puts every question in a region, test [0, 0.3), val
# [0.3, 0.45). Training takes any question the other splits did not. Questions with held-out
# numbers, words or facts (unseen ones) belong to the test alone.
REGIONS = {"test": (0.0, 0.3), "val": (0.3, 0.45), "train": (0.0, 1.0)}
TRIES = 300  # attempts to find a new question before a family gives up (the counts show it)


def key_fraction(seed: int, key: tuple) -> float:
    """A fixed number in [0, 1) for every question key."""
    digest = hashlib.blake2b(f"{seed}:{key!r}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 2**32


def share_out(total: int, names: list[str]) -> dict[str, int]:
    """share_out(7, ['a', 'b', 'c']) -> {'a': 3, 'b': 2, 'c': 2}"""
    return {name: total // len(names) + (i < total % len(names)) for i, name in enumerate(names)}


def new_draft(split: str, family: str, rng: random.Random, world: World, level: int, unseen: bool,
              taken: set, own: set) -> Draft | None:
    """A question no other split has; test and val also never repeat one. None if none is found."""
    low, high = REGIONS[split]
    for _ in range(TRIES):
        draft = FAMILIES[family][0](rng, world, level, unseen)
        if draft.key in taken:
            continue
        if split == "train":  # training may repeat a question (a second epoch, in effect)
            return draft
        if draft.key not in own and (unseen or low <= key_fraction(world.seed, draft.key) < high):
            return draft
    return None


def draw_split(split: str, n: int, world: World, rng: random.Random, taken: set, unseen_share: float,
               style: str, max_level: int) -> list[dict]:
    examples, own = [], set()
    for family, count in share_out(n, list(FAMILIES)).items():
        n_levels = min(max_level, FAMILIES[family][1])
        n_unseen = round(count * unseen_share)
        for i in range(count):
            level, unseen = 1 + i % n_levels, i < n_unseen
            draft = new_draft(split, family, rng, world, level, unseen, taken, own)
            if draft is None:  # this family and level have no new question left for the split
                continue
            own.add(draft.key)
            chosen_style = style if style != "mix" else rng.choice(["bare", "sentence"])
            examples.append({"family": family, "level": level, "instruction": draft.instruction,
                             "input": draft.input, "output": render(draft.answer, chosen_style),
                             "answer": draft.answer, "unseen": unseen, "key": draft.key})
    rng.shuffle(examples)
    for i, example in enumerate(examples):
        example["id"] = f"{split}-{i:05d}"
    return examples


def make_tasks(world: World, seed: int = 0, n_train: int = 20_000, n_val: int = 500, n_test: int = 1_000,
               style: str = "mix", max_level: int = 2, unseen_share: float = 0.3) -> dict[str, list[dict]]:
    """Train, val and test examples, with style 'mix' (half bare, half sentence), 'bare' or 'sentence'.

    n_train is exact; n_val and n_test are upper bounds, because a family with few possible
    questions runs out of new ones (family_counts shows how many each family got).
    """
    if style not in ("mix", "bare", "sentence"):
        raise ValueError(f"style {style!r} is not one of mix, bare, sentence")
    if not 1 <= max_level <= 3:
        raise ValueError(f"max_level must be 1, 2 or 3, got {max_level}")
    rng = random.Random(f"tasks:{seed}")
    test = draw_split("test", n_test, world, rng, set(), unseen_share, style, max_level)
    val = draw_split("val", n_val, world, rng, {e["key"] for e in test}, 0.0, style, max_level)
    train = draw_split("train", n_train, world, rng, {e["key"] for e in test + val}, 0.0, style, max_level)
    fields = ("id", "family", "level", "instruction", "input", "output", "answer", "unseen")
    return {name: [{f: e[f] for f in fields} for e in split]  # the key was bookkeeping only
            for name, split in (("train", train), ("val", val), ("test", test))}


def family_counts(splits: dict[str, list[dict]]) -> dict[str, dict[str, int]]:
    """family -> {'train': n, 'train_distinct': n, 'val': n, 'test': n, 'test_unseen': n}"""
    counts: dict[str, dict[str, int]] = {}
    for family in FAMILIES:
        row = {name: sum(e["family"] == family for e in examples) for name, examples in splits.items()}
        train = [e for e in splits.get("train", []) if e["family"] == family]
        row["train_distinct"] = len({(e["instruction"], e["input"]) for e in train})
        row["test_unseen"] = sum(e["family"] == family and e["unseen"] for e in splits.get("test", []))
        counts[family] = row
    return counts


def format_family_counts(counts: dict[str, dict[str, int]]) -> str:
    columns = ["train", "train_distinct", "val", "test", "test_unseen"]
    lines = ["| family | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for family, row in counts.items():
        lines.append(f"| {family} | " + " | ".join(str(row.get(c, 0)) for c in columns) + " |")
    totals = [sum(row.get(c, 0) for row in counts.values()) for c in columns]
    lines.append("| **all** | " + " | ".join(map(str, totals)) + " |")
    return "\n".join(lines)
