"""Grades chapter 5 (exercises/ch05/ex1_sft.py and ex2_experiments.py): one test per exercise.

The reference is gpt_scratch itself: templates.alpaca_prompt and encode_example, sft.collate,
the judge's score(), and F.cross_entropy. Where an exercise calls an earlier one (5.2 uses
5.1's alpaca_prompt), the test swaps in the reference, so each exercise is graded on its own.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from gpt_scratch import templates
from gpt_scratch.sft import IGNORE, Encoded
from gpt_scratch.sft import collate as reference_collate
from gpt_scratch.tokenizer import EOT, Tokenizer
from gpt_scratch.world import build_world, generate_corpus, is_correct, make_tasks, score

from checks import call, check, check_type, expect, show

SFT = "ch05/ex1_sft.py"
EXPERIMENTS = "ch05/ex2_experiments.py"


@pytest.fixture
def sft(load_exercise):
    return load_exercise(SFT)


@pytest.fixture
def experiments(load_exercise):
    return load_exercise(EXPERIMENTS)


@pytest.fixture(scope="module")
def world():
    return build_world(0)


@pytest.fixture(scope="module")
def tasks(world):
    return make_tasks(world, 0, n_train=60, n_val=10, n_test=60)


@pytest.fixture(scope="module")
def tokenizer(world):
    return Tokenizer.train(generate_corpus(world, 40_000, 0), 400)


def test_ex_5_1_alpaca_prompt(sft):
    expect(sft.alpaca_prompt, "Reverse the letters.", "c a t",
           equals="### Instruction:\nReverse the letters.\n\n### Input:\nc a t\n\n### Response:\n")
    expect(sft.alpaca_prompt, "What is 3 plus 4?", equals="### Instruction:\nWhat is 3 plus 4?\n\n### Response:\n")
    expect(sft.alpaca_prompt, "What is 3 plus 4?", "", equals="### Instruction:\nWhat is 3 plus 4?\n\n### Response:\n",
           why="an empty input means no Input section")
    for instruction, input_text in [("Sort the numbers from smallest to largest.", "7, 19, 42"),
                                    ("Two lines\nof instruction", "and\ninput"), ("x", ""), ("", "y")]:
        expect(sft.alpaca_prompt, instruction, input_text, equals=templates.alpaca_prompt(instruction, input_text))


def test_ex_5_2_encode_example(sft, tokenizer, tasks, monkeypatch):
    monkeypatch.setattr(sft, "alpaca_prompt", templates.alpaca_prompt)  # 5.1 is graded on its own
    records = tasks["train"][:20] + [{"instruction": "Say yes.", "input": "", "output": "yes"},
                                     {"instruction": "Reverse the letters.", "input": "c a t", "output": "t a c"}]
    assert any(r["input"] for r in records) and any(not r["input"] for r in records), "test data: both kinds"
    for record in records:
        (ids, trained), _ = call(sft.encode_example, tokenizer, record)
        what = f"encode_example(tokenizer, {{'instruction': {show(record['instruction'], 50)}, ...}})"
        ids, trained = list(ids), list(trained)
        check(f"{what}'s ids and flags", (ids[-1:], trained[-1:]), ([tokenizer.eot_id], [True]),
              "the answer ends with the end-of-text id, trained", verb="end with")
        check(f"{what}: end-of-text ids", ids.count(tokenizer.eot_id), 1, "exactly one end-of-text")
        check(f"{what}: the trained ids", tokenizer.decode([i for i, t in zip(ids, trained) if t]),
              record["output"] + EOT, "train on the answer and its end-of-text, nothing else", verb="decode to")
        check(what, (ids, trained), templates.encode_example(tokenizer, record, "alpaca"),
              "differs from gpt_scratch.templates.encode_example")
        # The data may already carry the end-of-text as text: it must not be doubled.
        with_eot, _ = call(sft.encode_example, tokenizer, {**record, "output": record["output"] + EOT})
        check(f"{what} with '<|endoftext|>' at the end of the output", (list(with_eot[0]), list(with_eot[1])),
              (ids, trained),
              "an output ending with '<|endoftext|>' must give the same ids (one end-of-text, not two)")
    assert record == {"instruction": "Reverse the letters.", "input": "c a t", "output": "t a c"}, \
        "encode_example should not change the record"


def test_ex_5_3_collate(sft):
    F_, T_ = False, True
    (x, y), what = call(sft.collate, [([1, 2, 3, 9], [F_, F_, T_, T_]), ([1, 5, 9], [F_, T_, T_])], pad_id=9)
    check(f"{what}: dtypes", (x.dtype, y.dtype), (torch.long, torch.long), "x and y hold token ids: torch.long")
    check(f"{what}'s x", x.tolist(), [[1, 2, 3], [1, 5, 9]], "every example but its last id, padded with pad_id")
    check(f"{what}'s y", y.tolist(), [[IGNORE, 3, 9], [5, 9, IGNORE]],
          "the next ids, -100 on the prompt and on the padding")

    # pad id == end-of-text id: the padding is masked by length, the real end-of-text stays a target.
    eot = 9
    batch = [([1, 2, 3, 4, 5, eot], [F_, F_, T_, T_, T_, T_]), ([1, 2, 6, eot], [F_, F_, T_, T_]),
             ([7, eot], [F_, T_]), ([1, 2, eot, 3, 4, eot], [F_, F_, T_, F_, T_, T_])]  # two turns, two eots
    for mask_prompt in (True, False):
        (x, y), what = call(sft.collate, [(list(ids), list(trained)) for ids, trained in batch], eot, mask_prompt)
        expected_x, expected_y = reference_collate([Encoded(ids, trained) for ids, trained in batch], eot, mask_prompt)
        check(f"{what}: end-of-text targets per row", (y == eot).sum(dim=1).tolist(), [1, 1, 1, 2],
              "every real end-of-text must stay a target: mask the padding by length, not by id")
        check(f"{what}'s x", x.tolist(), expected_x.tolist(), "differs from gpt_scratch.sft.collate")
        check(f"{what}'s y", y.tolist(), expected_y.tolist(), "differs from gpt_scratch.sft.collate")
    assert batch[1] == ([1, 2, 6, eot], [F_, F_, T_, T_]), "collate should not change its input"

    torch.manual_seed(0)
    random_batch = []
    for length in (5, 12, 2, 9):
        ids = torch.randint(0, 50, (length,)).tolist() + [eot]
        trained = [i >= length // 2 for i in range(length + 1)]
        random_batch.append((ids, trained))
    (x, y), what = call(sft.collate, random_batch, eot, True)
    expected_x, expected_y = reference_collate([Encoded(*e) for e in random_batch], eot, True)
    check(f"{what}'s x", x.tolist(), expected_x.tolist(), "differs from gpt_scratch.sft.collate")
    check(f"{what}'s y", y.tolist(), expected_y.tolist(), "differs from gpt_scratch.sft.collate")
    (one_x, one_y), what = call(sft.collate, random_batch[:1], eot, True)
    check(f"{what}'s x shape", tuple(one_x.shape), (1, 5), "one example: no padding")
    check(f"{what}'s y", one_y.tolist(), reference_collate([Encoded(*random_batch[0])], eot)[1].tolist())


def test_ex_5_4_accuracy_by_family(sft, tasks):
    examples = [{"family": "add", "answer": "1"}, {"family": "add", "answer": "2"}, {"family": "facts", "answer": "yes"}]
    verdicts = iter([True, False, True])

    def right_wrong_right(example, response):
        return next(verdicts)

    result = expect(sft.accuracy_by_family, examples, ["a", "b", "c"], right_wrong_right,
                    equals={"add": pytest.approx(0.5), "facts": 1.0, "(all)": pytest.approx(2 / 3)})
    check("accuracy_by_family(add, add, facts; right, wrong, right)", list(result), ["add", "facts", "(all)"],
          "families in sorted order, then (all)")

    test = tasks["test"]
    responses = [t["output"] if i % 3 else "no idea" for i, t in enumerate(test)]  # about 2 in 3 right
    responses[1] = "The answer is " + test[1]["answer"] + "."
    expected = score(test, responses)
    what = f"accuracy_by_family({len(test)} test examples, about 2 in 3 answers right, is_correct)"
    result, _ = call(sft.accuracy_by_family, test, responses, is_correct)
    check(f"{what}'s keys", list(result), sorted(expected["families"]) + ["(all)"],
          "families in sorted order, then (all)")
    check(what, result, {family: pytest.approx(row["accuracy"]) for family, row in expected["families"].items()}
          | {"(all)": pytest.approx(expected["accuracy"])}, "differs from the judge's gpt_scratch.world.score")
    only_reverse = [t for t in test if t["family"] == "reverse"]
    result, _ = call(sft.accuracy_by_family, only_reverse, [t["output"] for t in only_reverse], is_correct)
    check("accuracy_by_family(only 'reverse' examples, all right, is_correct)", result, {"reverse": 1.0, "(all)": 1.0},
          "a family without examples does not appear")


def test_ex_5_5_steps_for_epochs(experiments):
    expect(experiments.steps_for_epochs, 100, 32, 1, equals=4)
    expect(experiments.steps_for_epochs, 100, 32, 2.5, equals=8)
    expect(experiments.steps_for_epochs, 64, 16, 1, equals=4)
    expect(experiments.steps_for_epochs, 10, 16, 0.01, equals=1, why="at least one step")
    expect(experiments.steps_for_epochs, 10, 1, 0.3, equals=3,
           why="count examples seen as round(n * epochs): 10 * 0.3 -> 3")
    for n in (1, 7, 16, 33, 2000):
        for batch_size in (1, 3, 16):
            for epochs in (0.5, 1, 2, 3.25):
                seen = round(n * epochs)
                steps = expect(experiments.steps_for_epochs, n, batch_size, epochs,
                               equals=max(1, (seen + batch_size - 1) // batch_size))
                check_type(f"steps_for_epochs({n}, {batch_size}, {epochs})", steps, int)


def test_ex_5_6_prompt_and_answer_loss(experiments):
    eot = 9
    examples = [Encoded([1, 2, 3, 4, 5, eot], [False, False, False, True, True, True]),
                Encoded([6, 7, 8, eot], [False, False, True, True])]
    x, y_all = reference_collate(examples, eot, mask_prompt=False)
    _, y_answer = reference_collate(examples, eot, mask_prompt=True)
    torch.manual_seed(0)
    logits = torch.randn(*x.shape, 12) * 3
    (prompt_loss, answer_loss), _ = call(experiments.prompt_and_answer_loss, logits, y_all, y_answer)
    what = "prompt_and_answer_loss(logits, y_all, y_answer) for 2 examples"
    check_type(f"{what}'s prompt loss", prompt_loss, float, "return two Python floats (.item())")
    check_type(f"{what}'s answer loss", answer_loss, float, "return two Python floats (.item())")
    flat_logits, flat_all, flat_answer = logits.flatten(0, 1), y_all.flatten(), y_answer.flatten()
    is_answer = flat_answer != IGNORE
    is_prompt = (flat_all != IGNORE) & ~is_answer
    assert is_prompt.sum() == 3 and is_answer.sum() == 5, "test data: padding is neither prompt nor answer"
    expected = (F.cross_entropy(flat_logits[is_prompt], flat_all[is_prompt]).item(),
                F.cross_entropy(flat_logits[is_answer], flat_all[is_answer]).item())
    check(what, (prompt_loss, answer_loss), pytest.approx(expected, rel=1e-5),
          "the mean loss over the 3 prompt targets and over the 5 answer targets (padding is neither)")
    # The two together are the loss on all tokens, weighted by how many targets each has.
    every = F.cross_entropy(flat_logits, flat_all, ignore_index=IGNORE).item()
    assert (3 * prompt_loss + 5 * answer_loss) / 8 == pytest.approx(every, rel=1e-5), \
        f"{what}: (3 * prompt loss + 5 * answer loss) / 8 should be the loss on all 8 targets, {every:.6g}"

    only_answer = [Encoded([4, 5, eot], [True, True, True])]
    x, y_all = reference_collate(only_answer, eot, mask_prompt=False)
    _, y_answer = reference_collate(only_answer, eot, mask_prompt=True)
    (prompt_loss, answer_loss), _ = call(experiments.prompt_and_answer_loss, torch.zeros(1, 2, 12), y_all, y_answer)
    what = "prompt_and_answer_loss(zero logits, y_all, y_answer) for one example that is all answer"
    check(f"{what}'s prompt loss", prompt_loss, math.nan, "no prompt targets: nan", same=math.isnan(prompt_loss))
    check(f"{what}'s answer loss", answer_loss, pytest.approx(math.log(12)),
          "uniform logits: the loss is ln(vocab size)")


def test_ex_5_7_family_gains(experiments):
    def scores(**accuracy):
        return {"accuracy": 0.0, "families": {f: {"n": 10, "accuracy": a, "sentence_rate": 0.0} for f, a in accuracy.items()}}

    rows, _ = call(experiments.family_gains, scores(add=0.0, facts=0.5), scores(add=0.4, facts=0.6))
    check("family_gains(before add 0.0 facts 0.5, after add 0.4 facts 0.6)", [tuple(row) for row in rows],
          [("add", 0.0, 0.4), ("facts", 0.5, 0.6)], "(family, before, after), biggest gain first")
    rows, _ = call(experiments.family_gains, scores(add=0.1, facts=0.2, reverse=0.0, larger=0.5),
                   scores(reverse=0.35, larger=0.3, facts=0.5, add=0.1, capitals=0.25))
    check("family_gains(before add .1 facts .2 reverse 0 larger .5, after reverse .35 larger .3 facts .5 add .1 "
          "capitals .25)", [tuple(row) for row in rows],
          [("reverse", 0.0, 0.35), ("facts", 0.2, 0.5), ("capitals", 0.0, 0.25), ("add", 0.1, 0.1),
           ("larger", 0.5, 0.3)],
          "a family missing before counts as 0.0")
    rows, _ = call(experiments.family_gains, scores(b=0.0, a=0.0), scores(b=0.5, a=0.5))
    check("family_gains(before b 0.0 a 0.0, after b 0.5 a 0.5)", [row[0] for row in rows], ["a", "b"],
          "equal gains: alphabetical order")
