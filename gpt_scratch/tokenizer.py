"""Byte-level BPE: trained from scratch, run fast through tiktoken, and GPT-2's own encoding.

    tokenizer = Tokenizer.train(text, vocab_size=2048)     # a few seconds on a few MB
    ids = tokenizer.encode("Anna has a pet goat.")         # tiktoken: fast
    ids == tokenizer.encode_scratch("Anna has a pet goat.")  # the same ids, from our own code
    tokenizer.decode(ids)                                  # 'Anna has a pet goat.'
    tokenizer.save("runs/x"); Tokenizer.load("runs/x")     # tokenizer.tiktoken + tokenizer.json
    gpt2 = gpt2_tokenizer()                                # GPT-2's 50,257 tokens (see below)

How it works (chapter 1 builds each step by hand):
1. Text becomes UTF-8 bytes, so any text at all (emoji, CJK, tabs) is a list of ids 0..255.
2. A regex first cuts the text into "words" (GPT-2's pattern: letters, numbers, punctuation and
   spaces apart, a space stuck to the front of a word), and merges never cross those borders.
   Our trained tokenizers also keep every digit and lone letter apart (COURSE_PATTERN).
3. Training repeatedly finds the most frequent pair of neighbouring tokens and makes it a new
   token. The result is a rank table: bytes -> id, where a lower id was merged earlier.
4. Encoding a word starts from its bytes and keeps merging the neighbouring pair whose joined
   bytes have the lowest rank, until no pair is in the table.
Special tokens such as <|endoftext|> get the ids after the rank table. They are never produced
from ordinary text: encode() reads "<|endoftext|>" in a text as plain characters, unless
allowed_special=True.

The rank table is exactly tiktoken's format, so tiktoken.Encoding runs our tokenizer at Rust
speed and gives the same ids (the tests check it on GPT-2's real 50k vocabulary).
"""

import base64
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import regex
import tiktoken

from gpt_scratch.files import write_atomic
from gpt_scratch.settings import setting

# GPT-2's pre-split pattern: contractions, words, numbers, punctuation, whitespace.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The course's own tokenizers change two things, so that a small model sees every digit and
# every spelled-out letter as ONE token, wherever it stands:
#   numbers are cut into single digits without a space (as Llama's are): "47" is 4, 7, never
#   one token and never " 4" then "7", so a sum is learned digit by digit;
#   the space before a lone letter is cut off: "c a t" is c, " ", a, " ", t. With GPT-2's
#   pattern the first letter would be "c" and the others " a", " t": two tokens per letter,
#   one of them rare, and a model asked to write them in capitals gets the first one wrong.
COURSE_PATTERN = r" (?=\p{L}(?!\p{L}))|" + GPT2_PATTERN.replace(r" ?\p{N}+", r"\p{N}")
EOT = "<|endoftext|>"  # ends every document and every answer
USER, ASSISTANT = "<|user|>", "<|assistant|>"  # open a chat turn (chapter 5's chat template)
SPECIAL_TOKENS = (EOT, USER, ASSISTANT)
GPT2_FILE_ENV = "GPT_SCRATCH_GPT2_TIKTOKEN"  # a local gpt2.tiktoken, for machines without internet


# --- training -------------------------------------------------------------------------------

def count_words(text: str, pattern: str) -> Counter:
    """How often each pre-split word occurs, as bytes: Counter({b' the': 1200, b'.': 900, ...})."""
    return Counter(word.encode("utf-8") for word in regex.findall(pattern, text))


def pairs_of(word: list[int]) -> list[tuple[int, int]]:
    return list(zip(word, word[1:]))


def merge(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of pair in word by new_id, left to right: [1,2,3,1,2] -> [9,3,9]."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def first_seen(pair: tuple[int, int], words: list[list[int]], holders: set[int]) -> tuple[int, int]:
    """Where pair first occurs as (word index, position); words are in order of first appearance.

    holders may also name words that no longer hold the pair (it was merged away): those are skipped.
    """
    for w in sorted(holders):
        for i, neighbours in enumerate(pairs_of(words[w])):
            if neighbours == pair:
                return w, i
    raise AssertionError(f"pair {pair} is counted but occurs in no word")


def most_frequent_pair(pair_counts: Counter, words: list[list[int]],
                       where: dict[tuple[int, int], set[int]]) -> tuple[int, int]:
    """The most frequent pair; on a tie, the one that appears first in the text (as in chapter 1)."""
    top = max(pair_counts.values())
    tied = [pair for pair, count in pair_counts.items() if count == top]
    if len(tied) == 1:
        return tied[0]
    return min(tied, key=lambda pair: first_seen(pair, words, where[pair]))


def train_ranks(text: str, n_merges: int, pattern: str = GPT2_PATTERN) -> dict[bytes, int]:
    """Learn n_merges merges; return the rank table {token bytes: id} (256 bytes + the merges).

    Speed comes from two ideas. We count pairs over *unique* words, each weighted by how often
    it occurs (a few MB of simple English has only thousands of different words). And after a
    merge we update the counts of only the words that held the merged pair, instead of
    counting everything again. Ties go to the pair that appears first in the text, so the
    merges are exactly those of a plain recount-everything loop (chapter 1's draft).
    """
    word_counts = count_words(text, pattern)
    words = [list(word) for word in word_counts]  # each word as byte ids
    freqs = list(word_counts.values())
    pair_counts: Counter = Counter()
    where: dict[tuple[int, int], set[int]] = {}  # pair -> the words that contain it
    for w, word in enumerate(words):
        for pair in pairs_of(word):
            pair_counts[pair] += freqs[w]
            where.setdefault(pair, set()).add(w)

    token_bytes = [bytes([b]) for b in range(256)]
    for new_id in range(256, 256 + n_merges):
        if not pair_counts:
            break  # every word is a single token already: nothing left to merge
        best = most_frequent_pair(pair_counts, words, where)
        token_bytes.append(token_bytes[best[0]] + token_bytes[best[1]])
        for w in where.pop(best):
            for pair in pairs_of(words[w]):  # take the word's old pairs out ...
                pair_counts[pair] -= freqs[w]
                if pair_counts[pair] == 0:
                    del pair_counts[pair]
            words[w] = merge(words[w], best, new_id)
            for pair in pairs_of(words[w]):  # ... and its new pairs in
                pair_counts[pair] += freqs[w]
                where.setdefault(pair, set()).add(w)
    return {token: rank for rank, token in enumerate(token_bytes)}


# --- encoding from scratch ------------------------------------------------------------------

def bpe_encode_word(word: bytes, ranks: dict[bytes, int]) -> list[int]:
    """One pre-split word -> ids: merge the lowest-ranked neighbouring pair until none is left.

    Example with ranks {..., b'ca': 300, b'cat': 301}: b'cat' -> [b'c', b'a', b't']
    -> [b'ca', b't'] -> [b'cat'] -> [301].
    """
    if word in ranks:
        return [ranks[word]]
    parts = [bytes([b]) for b in word]
    while len(parts) > 1:
        joined = [ranks.get(a + b) for a, b in zip(parts, parts[1:])]
        candidates = [(rank, i) for i, rank in enumerate(joined) if rank is not None]
        if not candidates:
            break
        _, i = min(candidates)  # the lowest rank; the leftmost one on a tie
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[part] for part in parts]


class Tokenizer:
    """A rank table, special tokens and a pre-split pattern; tiktoken runs it, our code checks it."""

    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int], pattern: str = GPT2_PATTERN,
                 name: str = "gpt-scratch") -> None:
        taken = [token for token, rank in special_tokens.items() if rank < len(ranks)]
        if taken:
            raise ValueError(f"special token {taken[0]} has id {special_tokens[taken[0]]}, an id of the rank table; "
                             f"special ids start at {len(ranks)}")
        self.ranks, self.special_tokens, self.pattern, self.name = ranks, special_tokens, pattern, name
        self.decoder = {rank: token for token, rank in ranks.items()}
        self.decoder.update({rank: text.encode("utf-8") for text, rank in special_tokens.items()})
        self.encoding = tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=ranks,
                                          special_tokens=special_tokens)
        self.word_cache: dict[bytes, list[int]] = {}  # encode_scratch: each distinct word once

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: tuple[str, ...] = SPECIAL_TOKENS,
              pattern: str = COURSE_PATTERN) -> "Tokenizer":
        """Train on text; vocab_size counts the 256 bytes, the merges and the special tokens."""
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is too small: the 256 bytes and "
                             f"{len(special_tokens)} special tokens need {256 + len(special_tokens)}")
        ranks = train_ranks(text, n_merges, pattern)
        if len(ranks) < 256 + n_merges:
            raise ValueError(f"the text allows only {len(ranks) - 256} merges, not {n_merges}; "
                             f"use more text or a vocab_size of at most {len(ranks) + len(special_tokens)}")
        specials = {token: len(ranks) + i for i, token in enumerate(special_tokens)}
        return cls(ranks, specials, pattern)

    @property
    def n_vocab(self) -> int:
        return len(self.ranks) + len(self.special_tokens)

    @property
    def eot_id(self) -> int:
        return self.special_tokens[EOT]

    def special_id(self, token: str) -> int:
        if token not in self.special_tokens:
            raise ValueError(f"the tokenizer {self.name!r} has no special token {token}; it has "
                             f"{', '.join(self.special_tokens)}")
        return self.special_tokens[token]

    def encode(self, text: str, allowed_special: bool = False) -> list[int]:
        """Text -> ids, through tiktoken. Special-token strings count as plain text unless allowed."""
        if allowed_special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode(text, disallowed_special=())

    def encode_scratch(self, text: str, allowed_special: bool = False) -> list[int]:
        """The same ids as encode(), computed by our own Python code (slower; for learning and tests)."""
        if allowed_special and self.special_tokens:
            specials = "(" + "|".join(regex.escape(token) for token in self.special_tokens) + ")"
            pieces = regex.split(specials, text)  # the odd pieces are the special tokens themselves
        else:
            pieces = [text]
        ids = []
        for i, piece in enumerate(pieces):
            if i % 2 == 1:
                ids.append(self.special_tokens[piece])
                continue
            for word in regex.findall(self.pattern, piece):
                word = word.encode("utf-8")
                if word not in self.word_cache:
                    self.word_cache[word] = bpe_encode_word(word, self.ranks)
                ids += self.word_cache[word]
        return ids

    def decode(self, ids: list[int]) -> str:
        """Ids -> text. Bytes that do not form valid UTF-8 (half an emoji) become '\ufffd'."""
        unknown = [i for i in ids if i not in self.decoder]
        if unknown:
            raise ValueError(f"token id {unknown[0]} is not in the vocabulary (0..{self.n_vocab - 1})")
        return b"".join(self.decoder[i] for i in ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.decoder[token_id]

    # --- files: tokenizer.tiktoken (the ranks, tiktoken's format) + tokenizer.json (the rest) ---

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in self.ranks.items()]
        write_atomic(folder / "tokenizer.tiktoken", "".join(lines))
        info = {"name": self.name, "pattern": self.pattern, "special_tokens": self.special_tokens}
        write_atomic(folder / "tokenizer.json", json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "Tokenizer":
        folder = Path(folder)
        ranks = read_ranks(folder / "tokenizer.tiktoken")
        info_path = folder / "tokenizer.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path} is missing; save the tokenizer again with Tokenizer.save()")
        try:
            info = json.loads(info_path.read_text())
            return cls(ranks, info["special_tokens"], info["pattern"], info.get("name", "gpt-scratch"))
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"{info_path} is not a valid tokenizer file ({err}); save the tokenizer again") from None


def read_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a .tiktoken file: one 'base64-of-the-token-bytes rank' line per token."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; it holds the tokenizer's ranks (save a tokenizer there first)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file of 'base64-token rank' lines; the file is damaged") from None
    ranks = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(f"{path}: line {number} is not 'base64-token rank'; the file is damaged") from None
    if not ranks:
        raise ValueError(f"{path} is empty; it should hold one token per line")
    if set(ranks.values()) != set(range(len(ranks))):  # tiktoken would crash on a repeated token or rank
        raise ValueError(f"{path}: the ranks are not 0..{len(ranks) - 1}, each once (a line is repeated, "
                         f"missing or edited); the file is damaged")
    return ranks


@dataclass
class GPT2Vocabulary:
    """Where GPT-2's vocabulary comes from, for the commands that use GPT-2's tokenizer."""
    gpt2_vocab: str | None = setting(None, "GPT-2's vocabulary as a local gpt2.tiktoken file, for a machine without "
                                           "internet (else $GPT_SCRATCH_GPT2_TIKTOKEN, else tiktoken downloads it "
                                           "once)", metavar="FILE", preset=False)


def gpt2_tokenizer(path: str | Path | None = None, chat_tokens: bool = False) -> Tokenizer:
    """GPT-2's tokenizer: 50,256 ranks + <|endoftext|> (id 50256).

    Looks, in order, at: path; the file named by $GPT_SCRATCH_GPT2_TIKTOKEN; tiktoken's own
    "gpt2" encoding (downloaded once, then cached). Offline without a file, it says what to do.
    chat_tokens=True adds <|user|> and <|assistant|> as ids 50257 and 50258, for the chat
    template: a model pretrained from scratch learns them like any token, but GPT-2's own
    weights have no rows for them, so an imported GPT-2 is fine-tuned with the alpaca template.
    """
    specials = {EOT: 50256, USER: 50257, ASSISTANT: 50258} if chat_tokens else {EOT: 50256}
    path = path or os.environ.get(GPT2_FILE_ENV)
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"GPT-2 vocabulary file {path} not found; give the path of a gpt2.tiktoken "
                                    f"file (as an argument, --gpt2-vocab FILE, or in ${GPT2_FILE_ENV})")
        return Tokenizer(read_ranks(path), specials, GPT2_PATTERN, name="gpt2")
    try:
        encoding = tiktoken.get_encoding("gpt2")
    except Exception as err:  # no network and no cache: tiktoken raises a requests/OS error
        raise RuntimeError(f"GPT-2's vocabulary could not be loaded ({type(err).__name__}: offline?); connect to "
                           f"the internet once (tiktoken caches it), or give a local gpt2.tiktoken file by path "
                           f"(--gpt2-vocab FILE) or in ${GPT2_FILE_ENV}; openai/whisper on GitHub ships one as "
                           f"whisper/assets/gpt2.tiktoken") from None
    return Tokenizer(encoding._mergeable_ranks, specials, GPT2_PATTERN, name="gpt2")
