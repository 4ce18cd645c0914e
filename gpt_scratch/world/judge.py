"""The judge: is a model's response right, and is it in the preferred style?

    example = {"family": "add", "answer": "82", ...}          # a task from tasks.py
    is_correct(example, "The answer is 82.")                   # True
    is_correct(example, " 82 ")                                # True
    is_correct(example, "81")                                  # False
    style_of("The answer is 82."), style_of("82")              # ('sentence', 'bare')
    print(format_table(score(examples, responses)))           # per-family accuracy table

Every chapter's evaluation uses this one judge, so "accuracy" means the same thing from
instruction tuning to RLHF. Two answer styles exist:
    bare       just the value:               82
    sentence   the value in a fixed frame:   The answer is 82.
The sentence style is the *preferred* style of the hidden preference rule (preferences.py);
the judge reports how often a model uses it, so later chapters can measure correctness and
style separately.

How a response is read (the rules are strict on purpose, so that a score is honest):
  1. an opening "The answer is" (any case, optional colon) is removed;
  2. only the first line, and in it only the first sentence, counts: "82. I am sure." -> "82";
     so the answer has to come first, and rambling *before* it makes the response wrong;
  3. normalise(): spaces collapsed, trailing full stop removed, ", " between list items,
     lower case -- except for the families in CASE_SENSITIVE, where the case is the task.
"""

import re

SENTENCE = "The answer is {}."
STYLES = ("bare", "sentence")
CASE_SENSITIVE = {"capitals", "reverse_capitals"}  # "Write the letters in capitals." wants C A T, not c a t


def render(answer: str, style: str) -> str:
    """The response text for an answer in one style: render('82', 'sentence') -> 'The answer is 82.'"""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; use one of {', '.join(STYLES)}")
    return SENTENCE.format(answer) if style == "sentence" else answer


def normalise(text: str, keep_case: bool = False) -> str:
    """normalise('  The Cat. ') -> 'the cat';  normalise('7 ,19,  42') -> '7, 19, 42'"""
    text = " ".join(text.split())
    text = re.sub(r"\s*,\s*", ", ", text)
    text = text.strip().rstrip(".!").strip().strip("\"'`").strip()
    return text if keep_case else text.lower()


def extract_answer(response: str) -> str:
    """The part of a response that is the answer: extract_answer('The answer is 82. Easy!') -> '82'"""
    text = response.strip()
    framed = re.match(r"the answer is\s*:?\s*", text, flags=re.IGNORECASE)
    if framed:
        text = text[framed.end():]
    first_line = text.split("\n")[0]
    first_sentence = re.split(r"[.!?](\s|$)", first_line)[0]
    return first_sentence.strip()


def is_correct(example: dict, response: str) -> bool:
    keep_case = example["family"] in CASE_SENSITIVE
    return normalise(extract_answer(response), keep_case) == normalise(example["answer"], keep_case)


def style_of(response: str) -> str:
    """'sentence' (exactly 'The answer is X.'), 'bare' (one short line, no frame) or 'other'."""
    text = response.strip()
    if not text or "\n" in text or re.search(r"[.!?]\s", text):
        return "other"  # empty, several lines or several sentences
    if re.fullmatch(r"The answer is [^.!?]+\.", text):
        return "sentence"
    if re.match(r"the answer is", text, flags=re.IGNORECASE):
        return "other"  # the frame, but not exactly (no full stop, wrong case, ...)
    return "bare"


def score(examples: list[dict], responses: list[str]) -> dict:
    """Accuracy and preferred-style rate, overall, on unseen examples and per family."""
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses; give one response each")
    rows: dict[str, list[tuple[bool, bool]]] = {}
    for example, response in zip(examples, responses):
        result = (is_correct(example, response), style_of(response) == "sentence")
        rows.setdefault(example["family"], []).append(result)
        rows.setdefault("(all)", []).append(result)
        if example.get("unseen"):
            rows.setdefault("(unseen)", []).append(result)

    def summary(results: list[tuple[bool, bool]]) -> dict:
        n = len(results)
        return {"n": n, "accuracy": sum(c for c, _ in results) / n if n else 0.0,
                "sentence_rate": sum(s for _, s in results) / n if n else 0.0}

    overall = summary(rows.pop("(all)", []))
    unseen = summary(rows.pop("(unseen)", []))
    return {**overall, "unseen_n": unseen["n"], "unseen_accuracy": unseen["accuracy"],
            "families": {family: summary(rows[family]) for family in sorted(rows)}}


def majority_answers(train_examples: list[dict]) -> dict[str, str]:
    """The most common answer of each family in the training examples (ties: the first seen)."""
    counts: dict[str, dict[str, int]] = {}
    for example in train_examples:
        family = counts.setdefault(example["family"], {})
        family[example["answer"]] = family.get(example["answer"], 0) + 1
    return {family: max(answers, key=answers.get) for family, answers in counts.items()}


def majority_baseline(train_examples: list[dict], test_examples: list[dict]) -> dict:
    """Scores of a model that ignores the question and always gives its family's most common
    training answer: the accuracy to beat before any accuracy means something.
    Example: 9 of 32 people live in the most common town, so "where does X live?" -> 28%."""
    answers = majority_answers(train_examples)
    return score(test_examples, [answers.get(example["family"], "") for example in test_examples])


def format_table(scores: dict, baseline: dict | None = None) -> str:
    """A markdown table: family | n | accuracy | preferred style, then the unseen and overall rows.

    With baseline (e.g. majority_baseline's scores), a last column gives its accuracy per row.
    """
    extra = baseline is not None
    lines = ["| family | n | accuracy | preferred style |" + (" majority answer |" if extra else ""),
             "|---|---:|---:|---:|" + ("---:|" if extra else "")]

    def tail(value: float | None) -> str:
        return "" if not extra else (f" {value:.1%} |" if value is not None else " |")

    for family, row in scores["families"].items():
        base = baseline["families"].get(family, {}).get("accuracy") if extra else None
        lines.append(f"| {family} | {row['n']} | {row['accuracy']:.1%} | {row['sentence_rate']:.1%} |" + tail(base))
    if scores["unseen_n"]:
        lines.append(f"| (unseen only) | {scores['unseen_n']} | {scores['unseen_accuracy']:.1%} | |"
                     + tail(baseline["unseen_accuracy"] if extra else None))
    lines.append(f"| **all** | {scores['n']} | **{scores['accuracy']:.1%}** | {scores['sentence_rate']:.1%} |"
                 + tail(baseline["accuracy"] if extra else None))
    return "\n".join(lines)


def format_change_table(before: dict, after: dict, names: tuple[str, str] = ("before", "after")) -> str:
    """A markdown table of two score() results side by side: accuracy and preferred style, per family.

    Example row: | add | 45 | 82.2% -> 97.8% | 64.4% -> 100.0% |
    """
    first, second = names
    lines = [f"| family | n | accuracy {first} -> {second} | preferred style {first} -> {second} |",
             "|---|---:|---:|---:|"]
    for family, row in after["families"].items():
        old = before["families"][family]
        lines.append(f"| {family} | {row['n']} | {old['accuracy']:.1%} -> {row['accuracy']:.1%} | "
                     f"{old['sentence_rate']:.1%} -> {row['sentence_rate']:.1%} |")
    lines.append(f"| **all** | {after['n']} | **{before['accuracy']:.1%} -> {after['accuracy']:.1%}** | "
                 f"{before['sentence_rate']:.1%} -> {after['sentence_rate']:.1%} |")
    return "\n".join(lines)
