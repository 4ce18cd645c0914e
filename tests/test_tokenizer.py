"""Tokenizer tests: round trips on any UTF-8, tiktoken == our own encoder, training, files, GPT-2."""

import base64
import json
import os
from collections import Counter

import pytest
import regex
import tiktoken

from gpt_scratch.tokenizer import (EOT, GPT2_FILE_ENV, GPT2_PATTERN, SPECIAL_TOKENS, Tokenizer, gpt2_tokenizer,
                                   merge, read_ranks, train_ranks)
from gpt_scratch.world.corpus import build_world, generate_corpus
from tiny import GPT2_TIKTOKEN

VARIED = [
    "",
    "Anna has a pet goat.",
    "👋🏽 hi 👩🏿‍🔬 and 👨‍👩‍👧‍👦 (family ZWJ), flags 🇫🇷🇯🇵, 🐐🐐🐐",
    "中文 日本語のテキスト 한국어 文字化け",
    "العربية: مرحبا بالعالم",
    "combining: e\u0301 a\u0308 n\u0303, precomposed é ä ñ, naïve café déjà vu",
    "tabs\tand\nnew lines\r\n   indented\n\n\n    \t \t  end   ",
    " leading and trailing spaces  ",
    "   ",
    "\n",
    "it's we'll they'd I'M 'twas",
    "numbers 1234567 3.14159 -42 1e10 0x1F",
    "def f(x):\n    return x ** 2  # square\n",
    "<|endoftext|> written in a text is just text",
    "a<|endoftext|>b<|user|>c",
    "\x00\x01 control \x7f and \u200b zero width",
]


@pytest.fixture(scope="module")
def corpus() -> str:
    return generate_corpus(build_world(0), 50_000, 0)


@pytest.fixture(scope="module")
def trained(corpus) -> Tokenizer:
    return Tokenizer.train(corpus, vocab_size=400)


def reference_ranks(text: str, n_merges: int) -> dict[bytes, int]:
    """The plain loop: count every pair again each round; on a tie the pair seen first in the text wins."""
    word_counts = Counter(word.encode("utf-8") for word in regex.findall(GPT2_PATTERN, text))
    words = {word: list(word) for word in word_counts}
    vocab = [bytes([b]) for b in range(256)]
    for new_id in range(256, 256 + n_merges):
        counts = Counter()
        for word, ids in words.items():
            for pair in zip(ids, ids[1:]):
                counts[pair] += word_counts[word]
        if not counts:
            break
        best = max(counts, key=counts.get)  # first in insertion order = first in the text on a tie
        vocab.append(vocab[best[0]] + vocab[best[1]])
        words = {word: merge(ids, best, new_id) for word, ids in words.items()}
    return {token: rank for rank, token in enumerate(vocab)}


# --- round trips and tiktoken == scratch ------------------------------------------------------

@pytest.mark.parametrize("text", VARIED)
def test_round_trip_on_varied_utf8(trained, text):
    ids = trained.encode(text)
    assert trained.decode(ids) == text
    assert trained.encode_scratch(text) == ids
    assert trained.decode(trained.encode_scratch(text)) == text
    assert all(0 <= i < len(trained.ranks) for i in ids), "plain text never produces a special token"


def test_encode_equals_encode_scratch_on_training_and_unseen_text(trained, corpus):
    assert trained.encode_scratch(corpus) == trained.encode(corpus)
    unseen = generate_corpus(build_world(7), 5_000, 7) + "".join(VARIED) + "Zyxwvut QUUX 9876 ¿¡ «» —"
    ids = trained.encode(unseen)
    assert trained.encode_scratch(unseen) == ids
    assert trained.decode(ids) == unseen
    assert len(ids) < len(unseen.encode("utf-8")), "the merges should compress text like the corpus"


def test_merges_inside_multibyte_characters_still_round_trip():
    # Trained on the varied text itself, merges join bytes of emoji, CJK and Arabic: some tokens
    # are half a character, which must not break the round trip or the tiktoken == scratch parity.
    tokenizer = Tokenizer.train("".join(VARIED) * 3, vocab_size=256 + 120 + 3)
    learned = [tokenizer.token_bytes(i) for i in range(256, len(tokenizer.ranks))]
    assert any(not is_utf8(token) for token in learned), "expected a merge inside a character"
    for text in VARIED + ["".join(reversed(VARIED)), "👨‍👩‍👧‍👦👨‍👩‍👧‍👦 العالم 日本"]:
        ids = tokenizer.encode(text)
        assert tokenizer.encode_scratch(text) == ids
        assert tokenizer.decode(ids) == text


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_endoftext_is_plain_text_unless_allowed(trained):
    text = "story one<|endoftext|>story two"
    plain = trained.encode(text)
    assert trained.eot_id not in plain and trained.decode(plain) == text
    assert trained.encode_scratch(text) == plain
    special = trained.encode(text, allowed_special=True)
    assert special.count(trained.eot_id) == 1
    assert special == trained.encode("story one") + [trained.eot_id] + trained.encode("story two")
    assert trained.encode_scratch(text, allowed_special=True) == special
    assert trained.decode(special) == text
    assert trained.encode("<|endoftext|>", allowed_special=True) == [trained.eot_id]
    chat = "<|user|>hi<|assistant|>hello<|endoftext|>"
    assert trained.encode_scratch(chat, allowed_special=True) == trained.encode(chat, allowed_special=True)
    assert trained.encode(chat, allowed_special=True)[0] == trained.special_id("<|user|>")


def test_decode_of_an_unknown_id_names_it(trained):
    with pytest.raises(ValueError, match=r"token id 400 is not in the vocabulary \(0\.\.399\)"):
        trained.decode([1, 2, 400])
    with pytest.raises(ValueError, match="token id -1 "):
        trained.decode([-1])
    with pytest.raises(ValueError, match="no special token <|pad|>"):
        trained.special_id("<|pad|>")


def test_half_a_character_decodes_to_the_replacement_character(trained):
    goat = trained.encode("🐐")
    assert len(goat) == 4 and trained.decode(goat[:2]) == "\ufffd"  # no merge learned for the emoji's bytes


# --- training -----------------------------------------------------------------------------------

def test_vocab_size_is_exact_and_special_tokens_come_last(corpus):
    for size in (259, 260, 300, 517):
        tokenizer = Tokenizer.train(corpus, vocab_size=size)
        assert tokenizer.n_vocab == size
        assert len(tokenizer.ranks) == size - 3
        assert sorted(tokenizer.ranks.values()) == list(range(size - 3))
        assert tokenizer.eot_id == size - 3
        assert tokenizer.special_tokens == {token: size - 3 + i for i, token in enumerate(SPECIAL_TOKENS)}
        assert tokenizer.decode([size - 1]) == SPECIAL_TOKENS[-1]
    assert Tokenizer.train(corpus, 300, special_tokens=(EOT,)).eot_id == 299


def test_training_is_deterministic(corpus):
    assert train_ranks(corpus, 150) == train_ranks(corpus, 150)
    assert Tokenizer.train(corpus, 300).ranks == Tokenizer.train(corpus, 300).ranks
    # more merges only add tokens at the end: the first 100 are the same
    longer = train_ranks(corpus, 200)
    assert {t: r for t, r in longer.items() if r < 356} == train_ranks(corpus, 100)


def test_train_ranks_equals_the_plain_recount_loop(corpus):
    # Every tie included: the incremental bookkeeping must give exactly the plain loop's merges.
    assert train_ranks(corpus[:20_000], 300) == reference_ranks(corpus[:20_000], 300)
    for text in ("aaabdaaabac", "abab abab ab", "babcbbb bcac ba acbccca aca cbbcabb cca", "the cat. the hat."):
        assert train_ranks(text, 30) == reference_ranks(text, 30), text


def test_worked_example_without_spaces():
    # "aaabdaaabac" is one pre-split word. Pair counts: aa 4 (overlaps count), ab 2, the rest 1 -> 'aa'.
    # Then [aa a b d aa a b a c]: (aa, a) 2 and (a, b) 2 tie, (aa, a) comes first -> 'aaa';
    # then (aaa, b) 2 -> 'aaab'; then every pair is 1 and (aaab, d) comes first -> 'aaabd'.
    ranks = train_ranks("aaabdaaabac", 4)
    assert [t for t, r in sorted(ranks.items(), key=lambda item: item[1]) if r >= 256] == \
        [b"aa", b"aaa", b"aaab", b"aaabd"]


def test_worked_example_with_the_pre_split():
    # Words: 'the' ' cat' '.' ' the' ' hat' '.'. 'th' 2, 'he' 2, 'at' 2 tie: 'th' is first. Then 'the' 2
    # beats 'at' 2 (first), then 'at'; then all pairs are 1: ' c', ' cat', ' the', ' h', ' hat'.
    # 't.' and 'e ' are also 2 in the raw text, but they cross a pre-split border: never merged.
    text = "the cat. the hat."
    tokenizer = Tokenizer.train(text, vocab_size=256 + 8 + 3)
    learned = [tokenizer.token_bytes(i) for i in range(256, 264)]
    assert learned == [b"th", b"the", b"at", b" c", b" cat", b" the", b" h", b" hat"]
    assert tokenizer.encode(text) == [257, 260, ord("."), 261, 263, ord(".")]
    assert tokenizer.encode_scratch(text) == tokenizer.encode(text)
    assert tokenizer.eot_id == 264
    with pytest.raises(ValueError, match="allows only 8 merges, not 9"):
        Tokenizer.train(text, vocab_size=256 + 9 + 3)


def test_too_small_vocab_and_too_little_text_are_refused():
    with pytest.raises(ValueError, match="vocab_size 258 is too small.*need 259"):
        Tokenizer.train("plenty of text here", vocab_size=258)
    with pytest.raises(ValueError, match="allows only 0 merges"):
        Tokenizer.train("", vocab_size=300)
    with pytest.raises(ValueError, match="allows only 1 merges, not 41; use more text or a vocab_size of at most 260"):
        Tokenizer.train("ab", vocab_size=300)
    assert Tokenizer.train("", vocab_size=259).n_vocab == 259  # no merges asked: bytes + specials


def test_merges_never_cross_pre_split_borders(corpus):
    ranks = train_ranks(corpus, 600)
    words = set(word.encode("utf-8") for word in regex.findall(GPT2_PATTERN, corpus))
    learned = [token for token, rank in ranks.items() if rank >= 256]
    assert len(learned) == 600
    for token in learned:
        assert any(token in word for word in words), f"{token!r} is not inside any pre-split word"
        text = token.decode("utf-8")  # the corpus is ASCII
        assert not regex.search(r"\S\s", text), f"{token!r} holds a space after a non-space"
        assert not regex.search(r"\p{L}[^\p{L}]|\p{N}[^\p{N}]", text), f"{token!r} joins two kinds of characters"
    assert any(token.startswith(b" ") and token[1:].isalpha() for token in learned), "a space joins the next word"


# --- files -----------------------------------------------------------------------------------------

def test_a_digit_or_a_spelled_letter_is_one_token_wherever_it_stands(trained):
    """The course's pattern: no " 4" or " a" tokens, so "4" and "a" look the same at any place."""
    def pieces(text):
        return [trained.decode([i]) for i in trained.encode(text)]

    sum_pieces = pieces("is 47 plus 5?")
    assert sum_pieces[sum_pieces.index("4") - 1:sum_pieces.index("4") + 2] == [" ", "4", "7"]
    assert pieces("407")[:3] == ["4", "0", "7"]
    first, middle = pieces("c a t"), pieces("In capital letters, x c y")
    assert first == ["c", " ", "a", " ", "t"]
    assert middle[-5:] == ["x", " ", "c", " ", "y"]
    assert trained.encode("c")[0] == trained.encode("x c")[-1]  # the same id, first or not
    # GPT-2's own pattern, for contrast: the letter after a space is another token
    assert regex.findall(GPT2_PATTERN, "c a t") == ["c", " a", " t"]


def test_save_and_load_round_trip(trained, tmp_path):
    trained.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer.tiktoken"]
    loaded = Tokenizer.load(tmp_path)
    assert loaded.ranks == trained.ranks
    assert loaded.special_tokens == trained.special_tokens and loaded.eot_id == trained.eot_id
    assert loaded.pattern == trained.pattern and loaded.n_vocab == trained.n_vocab
    text = "".join(VARIED)
    assert loaded.encode(text) == trained.encode(text)
    assert loaded.encode(text, allowed_special=True) == trained.encode(text, allowed_special=True)
    first = (tmp_path / "tokenizer.tiktoken").read_text().splitlines()[0]
    assert first == f"{base64.b64encode(bytes([0])).decode()} 0"  # tiktoken's own format
    assert read_ranks(tmp_path / "tokenizer.tiktoken") == trained.ranks


def test_a_failed_save_keeps_the_old_files_and_leaves_no_temporary_file(trained, tmp_path, monkeypatch):
    for name in ("tokenizer.tiktoken", "tokenizer.json"):
        (tmp_path / name).write_text(f"old {name}")

    def disk_full(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        trained.save(tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "tokenizer.tiktoken": "old tokenizer.tiktoken", "tokenizer.json": "old tokenizer.json"}


def test_a_damaged_rank_line_is_named(trained, tmp_path):
    trained.save(tmp_path)
    path = tmp_path / "tokenizer.tiktoken"
    lines = path.read_text().splitlines()
    lines[4] = "not*base64 4"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"tokenizer.tiktoken: line 5 is not 'base64-token rank'; the file is damaged"):
        Tokenizer.load(tmp_path)
    lines[4] = lines[5]  # a repeated line: tiktoken itself would crash (a Rust panic) on this
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"the ranks are not 0\.\.\d+, each once"):
        Tokenizer.load(tmp_path)
    path.write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(ValueError, match="not a text file.*damaged"):
        Tokenizer.load(tmp_path)
    path.write_text("")
    with pytest.raises(ValueError, match="is empty"):
        Tokenizer.load(tmp_path)


def test_missing_or_invalid_files_are_named(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.tiktoken not found"):
        Tokenizer.load(tmp_path)
    trained.save(tmp_path)
    info = json.loads((tmp_path / "tokenizer.json").read_text())
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json is not a valid tokenizer file"):
        Tokenizer.load(tmp_path)
    info["special_tokens"][EOT] = 5  # an id that an ordinary token already has
    (tmp_path / "tokenizer.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="tokenizer.json is not a valid tokenizer file.*special ids start at 397"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        Tokenizer.load(tmp_path)


# --- GPT-2 ------------------------------------------------------------------------------------------

GPT2_TEXTS = [
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the clocks were "
    "striking thirteen.\n\nWinston Smith, his chin nuzzled into his breast, slipped quickly through the doors.",
    "def add(a, b):\n    return a + b  # 2 spaces\n\tif x != None: print(f'{x:>10}')\n",
    "Numbers: 0 7 42 1234567890 3.14159 -273.15 1,000,000 2024-05-01",
    "Unicode: naïve café 中文 日本語 한국어 العربية 👋🏽 👨‍👩‍👧 e\u0301",
    "Contractions: it's we'll they're I've she'd you'm don't IT'S",
    "   spaces   and\ttabs\n\n\nnewlines  ",
]

needs_gpt2 = pytest.mark.skipif(not GPT2_TIKTOKEN.is_file(),
                                reason=f"GPT-2's vocabulary file {GPT2_TIKTOKEN} is absent (reference data)")


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer(GPT2_TIKTOKEN)


@needs_gpt2
def test_gpt2_known_ids(gpt2):
    assert gpt2.n_vocab == 50257 and gpt2.eot_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.encode("Hello, world!") == [15496, 11, 995, 0]
    assert gpt2.encode("The quick brown fox") == [464, 2068, 7586, 21831]
    assert gpt2.encode("it's we'll") == [270, 338, 356, 1183]
    assert gpt2.encode("\n") == [198] and gpt2.encode(" the") == [262]
    assert gpt2.encode(EOT, allowed_special=True) == [50256]
    for text, ids in [("Hello world", [15496, 995]), ("it's we'll", [270, 338, 356, 1183])]:
        assert gpt2.encode_scratch(text) == ids


@needs_gpt2
@pytest.mark.parametrize("text", GPT2_TEXTS)
def test_gpt2_scratch_equals_tiktoken(gpt2, text):
    ids = gpt2.encode(text)
    assert gpt2.encode_scratch(text) == ids
    assert gpt2.decode(ids) == text


@needs_gpt2
def test_gpt2_file_from_the_environment_variable(monkeypatch):
    monkeypatch.setenv(GPT2_FILE_ENV, str(GPT2_TIKTOKEN))
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    assert gpt2_tokenizer().encode("Hello world") == [15496, 995]


def no_network(name):
    raise ConnectionError(f"no network to download {name}")


def test_environment_variable_is_honoured(trained, tmp_path, monkeypatch):
    trained.save(tmp_path)
    monkeypatch.setenv(GPT2_FILE_ENV, str(tmp_path / "tokenizer.tiktoken"))
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)  # proves the file is used, not a download
    assert gpt2_tokenizer().ranks == trained.ranks
    monkeypatch.setenv(GPT2_FILE_ENV, str(tmp_path / "nowhere.tiktoken"))
    with pytest.raises(FileNotFoundError, match=f"nowhere.tiktoken not found.*{GPT2_FILE_ENV}"):
        gpt2_tokenizer()


def test_no_file_no_variable_no_network_says_what_to_do(monkeypatch):
    monkeypatch.delenv(GPT2_FILE_ENV, raising=False)
    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    with pytest.raises(RuntimeError, match=f"ConnectionError.*give a local gpt2.tiktoken file.*{GPT2_FILE_ENV}"):
        gpt2_tokenizer()
