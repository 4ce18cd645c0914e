"""Grades chapter 1 (exercises/ch01/ex1_bpe.py): one test per exercise.

Each exercise is graded on its own: where a function uses an earlier exercise's function, the
test swaps in a reference version, so an unfinished 1.1 does not fail 1.3.
"""

import pytest

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
    counts = bpe.get_pair_counts([1, 2, 3, 1, 2])
    assert counts == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert list(counts) == [(1, 2), (2, 3), (3, 1)], "pairs should be in order of first appearance"
    assert bpe.get_pair_counts([5, 5, 5]) == {(5, 5): 2}  # overlapping pairs all count
    assert bpe.get_pair_counts([7]) == {}
    assert bpe.get_pair_counts([]) == {}
    ids = list("the cat sat on the mat".encode())
    assert bpe.get_pair_counts(ids) == reference_pair_counts(ids)


def test_ex_1_2_merge(bpe):
    assert bpe.merge([1, 2, 3, 1, 2], (1, 2), 9) == [9, 3, 9]
    assert bpe.merge([5, 5, 5], (5, 5), 9) == [9, 5], "scan left to right without overlaps"
    assert bpe.merge([5, 5, 5, 5], (5, 5), 9) == [9, 9]
    assert bpe.merge([1, 2, 3], (3, 1), 9) == [1, 2, 3]
    assert bpe.merge([1, 2], (1, 2), 256) == [256]
    assert bpe.merge([], (1, 2), 9) == []
    ids = [1, 2, 1, 2]
    bpe.merge(ids, (1, 2), 9)
    assert ids == [1, 2, 1, 2], "merge should return a new list, not change its input"


def test_ex_1_3_train_bpe(bpe, monkeypatch):
    with_reference_helpers(bpe, monkeypatch)
    assert bpe.train_bpe("aaab", 257) == {(97, 97): 256}
    assert bpe.train_bpe("abab", 258) == {(97, 98): 256, (256, 256): 257}
    assert bpe.train_bpe("abcd", 257) == {(97, 98): 256}, "on a tie, take the pair that appears first"
    assert bpe.train_bpe("ab", 300) == {(97, 98): 256}, "stop when fewer than two ids are left"
    assert bpe.train_bpe("hello", 256) == {}
    merges = bpe.train_bpe("the cat sat on the mat. the rat sat on the hat.", 270)
    assert list(merges.values()) == list(range(256, 270)), "new ids count up from 256 in learned order"
    assert list(merges)[:3] == [(97, 116), (116, 104), (257, 101)]  # 'at' (6 times), 'th' (4), 'the'
    assert list("é".encode()) == [195, 169] and bpe.train_bpe("éé", 257) == {(195, 169): 256}, "work on UTF-8 bytes"


def test_ex_1_4_encode(bpe, monkeypatch):
    with_reference_helpers(bpe, monkeypatch)
    merges = {(97, 97): 256, (256, 98): 257}
    assert bpe.encode("aab", merges) == [257]
    assert bpe.encode("aaab", merges) == [256, 97, 98]
    assert bpe.encode("xyz", merges) == [120, 121, 122]
    assert bpe.encode("a", merges) == [97]
    assert bpe.encode("", merges) == []
    # Order matters: (98, 99) was learned first, so "abc" must become [97, 256], not [257, 99].
    assert bpe.encode("abc", {(98, 99): 256, (97, 98): 257}) == [97, 256]
    assert bpe.encode("é", {}) == [195, 169]
    text = "the cat sat on the mat. the rat sat on the hat."
    merges = {(116, 104): 256, (256, 101): 257, (97, 116): 258, (32, 257): 259, (115, 258): 260}
    ids = bpe.encode(text, merges)
    assert ids[:6] == [257, 32, 99, 258, 32, 260]  # 'the', ' ', 'c', 'at', ' ', 'sat'
    assert ids[9] == 259 and len(ids) == 28  # ' the'
