"""The embedded world: determinism, disjoint splits, really-unseen test cases, the judge, the
preference rule and the `data` command. Answers are re-computed here independently of tasks.py."""

import argparse
import json
import random
import re
from itertools import combinations

import pytest

from gpt_scratch.formats import load_instructions, load_preferences, load_text
from gpt_scratch.world import command
from gpt_scratch.world.corpus import KINDS, WORDS, build_world, generate_corpus
from gpt_scratch.world.judge import extract_answer, format_change_table, format_table, is_correct, normalise, score, style_of
from gpt_scratch.world.preferences import make_preference_pairs, preference_rank
from gpt_scratch.world.tasks import FAMILIES, family_counts, make_tasks, pick_word

NUMBER_FAMILIES = {"add", "subtract", "larger", "sort_numbers"}
WORD_FAMILIES = {"reverse", "capitals", "reverse_capitals", "count_letters", "count_items"}
FACT_QUESTIONS = [  # (question pattern, attribute)
    (r"Where does (\w+) live\?", "town"), (r"What pet does (\w+) have\?", "pet"),
    (r"What is (\w+)'s favourite colour\?", "colour"), (r"What is (\w+)'s favourite food\?", "food"),
]
KIND_QUESTION = r"Is (\w+) an animal, a colour, a food or an object\?"


@pytest.fixture(scope="module")
def world():
    return build_world(seed=0)


@pytest.fixture(scope="module")
def splits(world):
    return make_tasks(world, seed=0)  # the default sizes: what the course ships


# --- independent re-computation of every answer -------------------------------------------

def numbers_in(example: dict) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", example["instruction"] + " " + example["input"])]


def parse_fact(example: dict) -> tuple[str, str]:
    """(person, attribute) of a question about a person: 'Where does Anna live?' -> ('Anna', 'town')."""
    for pattern, attribute in FACT_QUESTIONS:
        match = re.fullmatch(pattern, example["instruction"])
        if match:
            return match[1], attribute
    raise AssertionError(f"not a fact question: {example['instruction']}")


def expected_answer(example: dict, world) -> str:
    family, text, given = example["family"], example["instruction"], example["input"]
    numbers = numbers_in(example)
    if family == "add":
        assert re.fullmatch(r"What is \d+ plus \d+\?", text)
        return str(numbers[0] + numbers[1])
    if family == "subtract":
        assert re.fullmatch(r"What is \d+ minus \d+\?", text) and numbers[0] >= numbers[1]
        return str(numbers[0] - numbers[1])
    if family == "larger":
        assert numbers[0] != numbers[1]
        return str(max(numbers))
    if family == "sort_numbers":
        return ", ".join(str(n) for n in sorted(numbers))
    if family == "reverse":
        return " ".join(given.replace(" ", "")[::-1])
    if family == "capitals":
        assert text == "Write the letters in capitals."
        return given.upper()
    if family == "reverse_capitals":
        assert text == "Reverse the letters and write them in capitals."
        return " ".join(given.replace(" ", "")[::-1]).upper()
    if family == "count_letters":
        assert text == "How many letters are there?"
        return str(len(given.split()))
    if family == "count_items":
        kind = re.fullmatch(r"How many (\w+) are in the list\?", text)[1]
        items = given.split(", ")
        return str(len(items) if kind == "words" else sum(item in WORDS[kind[:-1]] for item in items))
    kind_question = re.fullmatch(KIND_QUESTION, text)
    if kind_question:
        word = kind_question[1]
        return next(f"a{'n' * (kind[0] in 'aeiou')} {kind}" for kind in WORDS if word in WORDS[kind])
    name, attribute = parse_fact(example)
    return world.people[name][attribute]


def test_every_answer_is_right_at_every_level(world):
    splits = make_tasks(world, seed=3, n_train=1500, n_val=100, n_test=300, max_level=3)
    for example in splits["train"] + splits["val"] + splits["test"]:
        assert example["answer"] == expected_answer(example, world), example
        assert example["output"] in (example["answer"], f"The answer is {example['answer']}.")
        assert is_correct(example, example["output"])


def test_levels_set_the_size_of_numbers_and_words(world):
    splits = make_tasks(world, seed=4, n_train=1500, n_val=100, n_test=300, max_level=3)
    # family -> level -> sorted digit counts of its numbers
    digits = {"add": {1: [1, 1], 2: [1, 1], 3: [1, 2]}, "subtract": {1: [1, 1], 2: [1, 2], 3: [1, 2]},
              "larger": {1: [1, 1], 2: [2, 2], 3: [3, 3]},
              "sort_numbers": {1: [1, 1, 1], 2: [1, 1, 1, 1, 1], 3: [2, 2, 2]}}
    for example in splits["train"]:
        family, level = example["family"], example["level"]
        if family in digits:
            assert sorted(len(str(n)) for n in numbers_in(example)) == digits[family][level], example
        if family in ("add", "subtract") and level < 3:  # levels 1 and 2 stay inside the addition table
            a, b = numbers_in(example)
            low, high = sorted([a, b]) if family == "add" else (b, a - b)
            assert max(low, high) <= 9 and (low + high >= 10) == (level == 2), example
        if family == "reverse":
            length = len(example["input"].replace(" ", ""))
            assert {1: length == 3, 2: 4 <= length <= 6, 3: length >= 7}[level]
    assert {e["level"] for e in splits["train"] if e["family"] == "facts"} == {1, 2}  # facts have two levels


def test_default_examples_are_short(splits):
    for example in splits["train"]:
        assert len(example["instruction"] + example["input"] + example["output"]) < 120, example


# --- determinism --------------------------------------------------------------------------

def test_same_seed_same_world_corpus_and_tasks(world):
    assert build_world(0).to_dict() == world.to_dict()
    assert build_world(1).to_dict() != world.to_dict()
    text = generate_corpus(world, 20_000, seed=0)
    assert text == generate_corpus(build_world(0), 20_000, seed=0)
    assert text != generate_corpus(world, 20_000, seed=1)
    assert 20_000 <= len(text.encode()) < 21_000 and text.isascii()
    small = dict(n_train=200, n_val=20, n_test=50)
    assert make_tasks(world, seed=0, **small) == make_tasks(build_world(0), seed=0, **small)
    assert make_tasks(world, seed=0, **small) != make_tasks(world, seed=1, **small)


def test_corpus_teaches_every_fact_kind_and_sum(world):
    text = generate_corpus(world, 1_000_000, seed=0)
    for name, facts in world.people.items():
        assert f"{name} lives in {facts['town']}." in text
        assert f"{name} has a pet {facts['pet']}." in text
    for word in world.words:  # held-out words too: the corpus is where they can be learned
        assert f"{word.capitalize()} is {KINDS[world.category_of(word)]}." in text
    shown = {(int(a), op, int(b)) for a, op, b in re.findall(r"(\d+) (plus|minus) (\d+) is", text)}
    table = {(a, "plus", b) for a in range(10) for b in range(10)} | {(a + b, "minus", b) for a in range(10) for b in range(10)}
    assert table <= shown  # the whole one-digit table, held-out pairs too: it is learned here
    for a, _, b in shown - table:
        assert not world.is_held_pair(a, b), (a, b)  # held-out pairs of larger numbers are never shown


def test_word_play_spells_reverses_and_capitalises_right(world):
    text = generate_corpus(world, 300_000, seed=0)
    spelled = re.findall(r"The word (\w+) is spelled ([a-z ]+)\.", text)
    assert len(spelled) > 50 and all(" ".join(word) == letters for word, letters in spelled)
    for pattern, change in ((r"Backwards, ([a-z ]+) is ([a-z ]+)\.", lambda w: w[::-1]),
                            (r"In capital letters, ([a-z ]+) is ([A-Z ]+)\.", str.upper),
                            (r"Backwards in capital letters, ([a-z ]+) is ([A-Z ]+)\.", lambda w: w[::-1].upper())):
        found = re.findall(pattern, text)
        assert len(found) > 50, pattern
        assert all(" ".join(change(given.replace(" ", ""))) == result for given, result in found), pattern


def test_corpus_answers_its_questions_truthfully(world):
    """Where does Anna live? The answer is Elmwick. / ... Anna lives in Elmwick. / What is 7 plus 5? ..."""
    text = generate_corpus(world, 300_000, seed=0)
    asked = re.findall(r"Where does (\w+) live\? (?:The answer is (\w+)\.|\1 \w+ [^.]*?(\w+)\.)", text)
    assert len(asked) > 20 and any(short for _, short, _ in asked) and any(long for _, _, long in asked)
    for name, short, long in asked:
        assert (short or long) == world.people[name]["town"], (name, short, long)
    kinds = re.findall(KIND_QUESTION + r" The answer is (an? \w+)\.", text)
    assert len(kinds) > 20 and all(answer == KINDS[world.category_of(word)] for word, answer in kinds)
    sums = re.findall(r"What is (\d+) (plus|minus) (\d+)\? The answer is (\d+)\.", text)
    assert len(sums) > 20
    for a, op, b, answer in sums:
        assert int(answer) == (int(a) + int(b) if op == "plus" else int(a) - int(b))


# --- splits -------------------------------------------------------------------------------

def test_splits_share_no_question(splits):
    keys = {name: [(e["family"], e["instruction"], e["input"]) for e in split] for name, split in splits.items()}
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["val"]) & set(keys["test"])
    assert len(set(keys["test"])) == len(keys["test"]) and len(set(keys["val"])) == len(keys["val"])
    assert len(splits["train"]) == 20_000 and 700 <= len(splits["test"]) <= 1_000


def test_family_counts(splits):
    counts = family_counts(splits)
    assert list(counts) == list(FAMILIES) and len(FAMILIES) >= 8
    assert all(row["train"] == 2_000 and row["test"] >= 40 and row["test_unseen"] >= 15 for row in counts.values())
    assert sum(row["test"] for row in counts.values()) == len(splits["test"])


def words_in(example: dict) -> set[str]:
    """Words, including words spelled out letter by letter ("c a t" -> cat)."""
    text = " | ".join([example["instruction"], example["input"], example["output"]])
    spelled = {m.replace(" ", "").lower() for m in re.findall(r"\b[a-zA-Z](?: [a-zA-Z])+\b", text)}
    return set(re.findall(r"[a-z]+", text.lower())) | spelled


def number_pairs(example: dict) -> set[tuple[int, int]]:
    return {tuple(sorted(pair)) for pair in combinations(numbers_in(example), 2)}


def table_pair(example: dict) -> tuple[int, int]:
    """The digits {a, b} of the table fact a + b = c behind 'What is a plus b?' or 'What is c minus b?'."""
    first, second = numbers_in(example)
    return tuple(sorted((first, second) if example["family"] == "add" else (second, first - second)))


def test_unseen_test_examples_are_really_unseen(world, splits):
    held_words = set(world.held_out_words)
    train_words = set().union(*(words_in(e) for e in splits["train"]))
    train_pairs = set().union(*(number_pairs(e) for e in splits["train"] if e["family"] in NUMBER_FAMILIES))
    train_table = {table_pair(e) for e in splits["train"] if e["family"] in ("add", "subtract") and e["level"] < 3}
    train_facts = {parse_fact(e) for e in splits["train"] if e["family"] == "facts" and e["level"] == 1}
    assert not held_words & train_words
    unseen = [e for e in splits["test"] if e["unseen"]]
    assert 0.25 <= len(unseen) / len(splits["test"]) <= 0.35
    for example in splits["test"]:
        family = example["family"]
        if family in WORD_FAMILIES:
            assert bool(words_in(example) & held_words) == example["unseen"], example
        elif family in ("add", "subtract") and example["level"] < 3:  # a fact of the addition table
            assert world.is_held_pair(*table_pair(example)) == example["unseen"], example
            if example["unseen"]:
                assert table_pair(example) not in train_table, example  # no training task used this fact
        elif family in NUMBER_FAMILIES and example["unseen"]:
            assert number_pairs(example) - train_pairs, example  # some pair never appeared in training
        elif family == "facts" and example["level"] == 1:  # no test fact is asked in training; unseen = held out
            assert parse_fact(example) not in train_facts, example
            assert (parse_fact(example) in world.held_out_facts) == example["unseen"], example
        elif family == "facts":  # what kind of thing a word names: unseen = a held-out word
            assert bool(words_in(example) & held_words) == example["unseen"], example


def test_made_up_letter_strings_are_never_held_out_words(world):
    # 20,000 three-letter draws would hit one of the 8 held-out three-letter words about 5 times
    rng = random.Random(0)
    drawn = {pick_word(rng, world, 1, unseen=False) for _ in range(20_000)}
    assert not drawn & set(world.held_out_words)


def test_output_style_option(world):
    small = dict(n_train=400, n_val=10, n_test=50)
    bare = make_tasks(world, seed=0, style="bare", **small)["train"]
    sentence = make_tasks(world, seed=0, style="sentence", **small)["train"]
    mix = make_tasks(world, seed=0, **small)["train"]
    assert all(e["output"] == e["answer"] for e in bare)
    assert all(e["output"] == f"The answer is {e['answer']}." for e in sentence)
    share = sum(style_of(e["output"]) == "sentence" for e in mix) / len(mix)
    assert 0.4 < share < 0.6
    with pytest.raises(ValueError, match="style"):
        make_tasks(world, style="fancy")


# --- judge --------------------------------------------------------------------------------

ADD = {"family": "add", "answer": "82"}


@pytest.mark.parametrize("response", ["82", "82.", "  82 \n", "The answer is 82.", "the answer is 82",
                                      "The answer is: 82", "82\nI added the tens first.",
                                      "The answer is 82. I added the tens first."])
def test_judge_accepts(response):
    assert is_correct(ADD, response)


@pytest.mark.parametrize("response", ["81", "The answer is 81.", "I think the answer is 82.", "", "8 2", "820",
                                      "82 because 80 plus 2"])
def test_judge_rejects(response):
    assert not is_correct(ADD, response)


def test_judge_cases_lists_and_capitals():
    assert normalise("  The   Cat. ") == "the cat" and normalise("7 ,19,  42") == "7, 19, 42"
    assert extract_answer("The answer is t a c. Done!") == "t a c"
    assert is_correct({"family": "sort_numbers", "answer": "7, 19, 42"}, "7,19,42")
    assert not is_correct({"family": "sort_numbers", "answer": "7, 19, 42"}, "7, 42, 19")
    assert is_correct({"family": "facts", "answer": "Ashford"}, "The answer is ashford.")
    assert is_correct({"family": "reverse", "answer": "t a c"}, "T A C")
    assert is_correct({"family": "capitals", "answer": "C A T"}, "The answer is C A T.")
    assert not is_correct({"family": "capitals", "answer": "C A T"}, "c a t")  # the case is the task


def test_style_of():
    assert style_of("The answer is 82.") == "sentence"
    assert style_of("The answer is 7, 19, 42.") == "sentence"
    assert style_of("82") == style_of(" t a c ") == style_of("82.") == "bare"
    for other in ["The answer is 82", "the answer is 82.", "82. Sure!", "", "82\n83"]:
        assert style_of(other) == "other", other


def test_score_and_table():
    examples = [{"family": "add", "answer": "5", "unseen": False}, {"family": "add", "answer": "7", "unseen": True},
                {"family": "reverse", "answer": "t a c", "unseen": True}, {"family": "reverse", "answer": "g o d"}]
    responses = ["The answer is 5.", "8", "t a c", "The answer is d o g."]
    scores = score(examples, responses)
    assert scores["n"] == 4 and scores["accuracy"] == 0.5 and scores["sentence_rate"] == 0.5
    assert scores["unseen_n"] == 2 and scores["unseen_accuracy"] == 0.5
    assert scores["families"]["add"] == {"n": 2, "accuracy": 0.5, "sentence_rate": 0.5}
    table = format_table(scores)
    assert "| add | 2 | 50.0% | 50.0% |" in table and "| **all** | 4 | **50.0%** | 50.0% |" in table
    with pytest.raises(ValueError, match="2 examples but 1 responses"):
        score(examples[:2], responses[:1])
    later = score(examples, ["The answer is 5.", "The answer is 7.", "t a c", "g o d"])
    change = format_change_table(scores, later, ("SFT", "PPO"))
    assert "| add | 2 | 50.0% -> 100.0% | 50.0% -> 100.0% |" in change
    assert "| reverse | 2 | 50.0% -> 100.0% | 50.0% -> 0.0% |" in change
    assert "| **all** | 4 | **50.0% -> 100.0%** | 50.0% -> 50.0% |" in change


# --- preferences --------------------------------------------------------------------------

def test_preference_pairs_obey_the_hidden_rule(splits):
    examples = splits["train"][:3000]
    pairs = make_preference_pairs(examples, seed=0, label_noise=0.0)
    assert len(pairs) == len(examples) and not any(p["flipped"] for p in pairs)
    near = numeric = 0
    for example, pair in zip(examples, pairs):
        assert pair["prompt"] == example["instruction"] + ("\n\n" + example["input"] if example["input"] else "")
        assert preference_rank(example, pair["chosen"]) > preference_rank(example, pair["rejected"])
        if pair["kind"] == "style":
            assert (pair["chosen"], pair["rejected"]) == (f"The answer is {example['answer']}.", example["answer"])
        else:
            assert is_correct(example, pair["chosen"]) and not is_correct(example, pair["rejected"])
            if example["answer"].isdigit():
                numeric += 1
                near += abs(int(extract_answer(pair["rejected"])) - int(example["answer"])) <= 2
    kinds = [p["kind"] for p in pairs]
    assert 0.25 < kinds.count("style") / len(kinds) < 0.35
    assert near / numeric > 0.4  # many wrong answers are near misses


def test_label_noise_flips_about_that_share(splits):
    examples = splits["train"][:3000]
    pairs = make_preference_pairs(examples, seed=1, label_noise=0.3)
    assert pairs == make_preference_pairs(examples, seed=1, label_noise=0.3)
    flipped = [p["flipped"] for p in pairs]
    assert 0.27 < sum(flipped) / len(flipped) < 0.33
    for example, pair in zip(examples, pairs):
        rule_holds = preference_rank(example, pair["chosen"]) > preference_rank(example, pair["rejected"])
        assert rule_holds != pair["flipped"]
    with pytest.raises(ValueError, match="label_noise"):
        make_preference_pairs(examples, label_noise=0.6)


# --- the data command ---------------------------------------------------------------------

def data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="data")
    command.add_arguments(parser)
    return parser


SMALL = ["--corpus-mb", "0.02", "--n-train", "300", "--n-val", "40", "--n-test", "100"]


def test_data_command_writes_every_file_deterministically(tmp_path, capsys):
    for folder in ("a", "b"):
        assert command.run(data_parser().parse_args(["--out", str(tmp_path / folder), *SMALL])) == 0
    assert "| facts |" in capsys.readouterr().out  # the per-family counts are printed
    for name in command.FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert len(load_instructions(tmp_path / "a" / "sft_train.json")) == 300
    assert "messages" in load_instructions(tmp_path / "a" / "sft_train_chat.jsonl")[0]
    assert "completion" in load_instructions(tmp_path / "a" / "sft_train_completion.jsonl")[0]
    assert len(load_preferences(tmp_path / "a" / "preferences_train.jsonl")) == 300
    assert len(load_text(tmp_path / "a" / "corpus.txt")) >= 20_000
    command.run(data_parser().parse_args(["--out", str(tmp_path / "c"), "--seed", "1", *SMALL]))
    assert (tmp_path / "c" / "corpus.txt").read_bytes() != (tmp_path / "a" / "corpus.txt").read_bytes()


@pytest.mark.parametrize("bad", [["--corpus-mb", "0"], ["--corpus-mb", "200"], ["--style", "fancy"],
                                 ["--label-noise", "0.7"], ["--n-train", "0"], ["--seed", "-1"],
                                 ["--max-level", "4"], ["--n-test", "many"]])
def test_bad_flags_exit_2(bad):
    with pytest.raises(SystemExit) as exit_info:
        data_parser().parse_args(bad)
    assert exit_info.value.code == 2


def test_ensure_default_data_generates_once(tmp_path):
    out = tmp_path / "data"
    (tmp_path / "data.partial").mkdir()  # left over by an interrupted run
    sizes = {"corpus_mb": 0.02, "n_train": 300, "n_val": 20, "n_test": 40}
    assert command.ensure_default_data(out, seed=0, quiet=True, **sizes) == out
    assert all((out / name).is_file() for name in command.FILES) and not (tmp_path / "data.partial").exists()
    assert len(json.loads((out / "sft_train.json").read_text())) == 300
    stamp = (out / "corpus.txt").stat().st_mtime_ns
    command.ensure_default_data(out, seed=0, quiet=True, **sizes)
    assert (out / "corpus.txt").stat().st_mtime_ns == stamp  # not generated again
    with pytest.raises(ValueError, match="seed 1"):
        command.ensure_default_data(out, seed=1, quiet=True, **sizes)
    with pytest.raises(ValueError, match="400/20/40 tasks"):  # other sizes: not this folder's data
        command.ensure_default_data(out, seed=0, quiet=True, **{**sizes, "n_train": 400})


def test_majority_baseline_answers_each_familys_commonest_training_answer():
    from gpt_scratch.world.judge import majority_answers, majority_baseline

    train = [{"family": "facts", "answer": a} for a in ("Brookvale", "Brookvale", "Elmwick")] + \
            [{"family": "add", "answer": "7"}]
    assert majority_answers(train) == {"facts": "Brookvale", "add": "7"}
    test = [{"family": "facts", "answer": "Brookvale"}, {"family": "facts", "answer": "Dunmere"},
            {"family": "add", "answer": "8"}, {"family": "add", "answer": "7", "unseen": True}]
    baseline = majority_baseline(train, test)
    assert baseline["accuracy"] == 0.5 and baseline["families"]["facts"]["accuracy"] == 0.5
    assert baseline["unseen_accuracy"] == 1.0
    table = format_table(score(test, ["Brookvale", "Brookvale", "8", "8"]), baseline)
    assert "| majority answer |" in table.splitlines()[0]
    assert table.splitlines()[-1] == "| **all** | 4 | **50.0%** | 0.0% | 50.0% |"


def test_the_compare_table_names_the_majority_yardstick():
    from gpt_scratch.compare import format_table as compare_table

    row = {"method": "full", "trainable_parameters": 10, "trainable_share": 1.0, "step_seconds": 0.1,
           "peak_memory_mb": 5.0, "accuracy_after": 0.9, "unseen_accuracy_after": 0.8, "majority_baseline": 0.117}
    assert compare_table([row]).endswith("Always giving each family's most common training answer scores 11.7%.")
