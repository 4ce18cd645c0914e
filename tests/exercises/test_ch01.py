"""Grades chapter 1 (exercises/ch01/ex1_bpe.py): one test per exercise.

Each exercise is graded on its own: where a function uses an earlier exercise's function, the
test swaps in a reference version, so an unfinished 1.1 does not fail 1.3.
"""

import pytest

from checks import call, check, expect

SCRIPT = "ch01/ex1_bpe.py"


def reference_pair_counts(ids):
    counts = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def reference_merge(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if ids[i:i + 2] == list(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


@pytest.fixture
def bpe(load_exercise):
    return load_exercise(SCRIPT)


def with_reference_helpers(module, monkeypatch):
    monkeypatch.setattr(module, "get_pair_counts", reference_pair_counts)
    monkeypatch.setattr(module, "merge", reference_merge)


def test_ex_1_1_get_pair_counts(bpe):
    counts, what = call(bpe.get_pair_counts, [1, 2, 3, 1, 2])
    expected = {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    check(what, counts, expected)
    check(what, counts, expected, "pairs should be in order of first appearance", same=list(counts) == list(expected))
    expect(bpe.get_pair_counts, [5, 5, 5], equals={(5, 5): 2}, why="overlapping pairs all count")
    expect(bpe.get_pair_counts, [7], equals={})
    expect(bpe.get_pair_counts, [], equals={})
    ids = list("the cat sat on the mat".encode())
    expect(bpe.get_pair_counts, ids, equals=reference_pair_counts(ids))


def test_ex_1_2_merge(bpe):
    expect(bpe.merge, [1, 2, 3, 1, 2], (1, 2), 9, equals=[9, 3, 9])
    expect(bpe.merge, [5, 5, 5], (5, 5), 9, equals=[9, 5], why="scan left to right without overlaps")
    expect(bpe.merge, [5, 5, 5, 5], (5, 5), 9, equals=[9, 9])
    expect(bpe.merge, [1, 2, 3], (3, 1), 9, equals=[1, 2, 3])
    expect(bpe.merge, [1, 2], (1, 2), 256, equals=[256])
    expect(bpe.merge, [], (1, 2), 9, equals=[])
    ids = [1, 2, 1, 2]
    bpe.merge(ids, (1, 2), 9)
    assert ids == [1, 2, 1, 2], f"merge([1, 2, 1, 2], (1, 2), 9) changed its input list to {ids}; return a new list"


def test_ex_1_3_train_bpe(bpe, monkeypatch):
    with_reference_helpers(bpe, monkeypatch)
    expect(bpe.train_bpe, "aaab", 257, equals={(97, 97): 256})
    expect(bpe.train_bpe, "abab", 258, equals={(97, 98): 256, (256, 256): 257})
    expect(bpe.train_bpe, "abcd", 257, equals={(97, 98): 256}, why="on a tie, take the pair that appears first")
    expect(bpe.train_bpe, "ab", 300, equals={(97, 98): 256}, why="stop when fewer than two ids are left")
    expect(bpe.train_bpe, "hello", 256, equals={})
    merges, what = call(bpe.train_bpe, "the cat sat on the mat. the rat sat on the hat.", 270)
    check(f"{what}.values()", list(merges.values()), list(range(256, 270)),
          "new ids count up from 256 in learned order")
    check(f"{what}'s first 3 pairs", list(merges)[:3], [(97, 116), (116, 104), (257, 101)],
          "'at' (6 times), 'th' (4), then 'the'")
    expect(bpe.train_bpe, "éé", 257, equals={(195, 169): 256}, why="work on UTF-8 bytes: 'é' is [195, 169]")


def test_ex_1_4_encode(bpe, monkeypatch):
    with_reference_helpers(bpe, monkeypatch)
    merges = {(97, 97): 256, (256, 98): 257}
    expect(bpe.encode, "aab", merges, equals=[257])
    expect(bpe.encode, "aaab", merges, equals=[256, 97, 98], why="the first two a's merge first")
    expect(bpe.encode, "xyz", merges, equals=[120, 121, 122])
    expect(bpe.encode, "a", merges, equals=[97])
    expect(bpe.encode, "", merges, equals=[])
    expect(bpe.encode, "abc", {(98, 99): 256, (97, 98): 257}, equals=[97, 256],
           why="(98, 99) was learned first, so it merges first")
    expect(bpe.encode, "é", {}, equals=[195, 169], why="start from the UTF-8 bytes")
    text = "the cat sat on the mat. the rat sat on the hat."
    merges = {(116, 104): 256, (256, 101): 257, (97, 116): 258, (32, 257): 259, (115, 258): 260}
    ids, what = call(bpe.encode, text, merges)
    check(f"{what}[:6]", ids[:6], [257, 32, 99, 258, 32, 260], "'the', ' ', 'c', 'at', ' ', 'sat'")
    check(f"{what}[9]", ids[9:10], [259], "' the'")
    check(f"len({what})", len(ids), 28)
