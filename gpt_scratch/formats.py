"""Reading and writing the data formats people use for LLM training, with clear errors.

    text = load_text("corpus.txt")                     # plain UTF-8 text
    records = load_instructions("alpaca.json")         # or .jsonl: the format is detected
    pairs = load_preferences("preferences.jsonl")      # prompt / chosen / rejected, in four shapes
    write_jsonl("out.jsonl", records)                  # atomic: a crash never leaves half a file

Instruction data comes in three shapes, all accepted as a JSON list ([{...}, {...}]) or as
JSON Lines (one object per line):
    Alpaca       {"instruction": "...", "input": "..." (optional), "output": "..."}
    completion   {"prompt": "...", "completion": "..."}
    chat         {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
Records keep any extra fields (id, family, ...). The first record decides the shape; every
record must then have it.

Preference data (DPO, reward models) comes in four shapes, each record on its own, all read into
{"prompt", "chosen", "rejected"} with strings for chosen and rejected:
    explicit     {"prompt": "...", "chosen": "...", "rejected": "..."}    (the embedded world's files)
    Alpaca       {"instruction": "...", "input": "..." (optional), "chosen": "...", "rejected": "..."}
    implicit     {"chosen": "...", "rejected": "..."}: the two texts begin with the same prompt, e.g.
                 "Human: Hi?\n\nAssistant: Hello!" and "Human: Hi?\n\nAssistant: Go away."
                 -> prompt "Human: Hi?\n\nAssistant:", chosen "Hello!", rejected "Go away."
                 (their longest common beginning, cut back to the last whitespace in it, so that no
                 word is split between the prompt and an answer)
    chat         {"chosen": [messages], "rejected": [messages]}: the same conversation, then two
                 different last assistant turns; the prompt is the shared messages before them: the
                 user's text if that is a single user turn, else the list of messages itself.
A record of none of these shapes is named with its line and the shapes accepted.

Anything wrong -- bad JSON, a missing field, a wrong type, an unknown role, an empty file --
raises ValueError with one line: the file, the line, the problem and the fix. Blank lines in JSON Lines are skipped, and their number is printed; nothing else
is ever dropped.
"""

import json
import os
import sys
from pathlib import Path

from gpt_scratch.files import write_atomic

ROLES = ("system", "user", "assistant")
SHAPES = {  # shape -> the fields that must be strings
    "alpaca": ("instruction", "input", "output"),
    "completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
}


def problem(path: Path, line: int, what: str, fix: str) -> ValueError:
    return ValueError(f"{path}: line {line}: {what} ({fix})")


def read_file(path: str | Path) -> tuple[Path, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark some editors add is dropped
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (bad byte at offset {err.start}); save it as UTF-8") from None
    if not text.strip():
        raise ValueError(f"{path}: the file is empty; it needs at least one record")
    return path, text


def load_text(path: str | Path) -> str:
    """A plain-text corpus, as one string."""
    return read_file(path)[1]


def parse_json_list(path: Path, text: str) -> list[tuple[int, object]]:
    """[(line number, record)] from a file holding one JSON list."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise problem(path, err.lineno, f"bad JSON: {err.msg}", "the file must be one valid JSON list") from None
    # json.loads forgets where each record started; walk the list once more to find out.
    decoder, records = json.JSONDecoder(), []
    pos, line, counted_to = text.index("[") + 1, 1, 0
    for _ in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        line, counted_to = line + text.count("\n", counted_to, pos), pos
        record, pos = decoder.raw_decode(text, pos)
        records.append((line, record))
    return records


def parse_json_lines(path: Path, text: str) -> list[tuple[int, object]]:
    """[(line number, record)] from a JSON Lines file; blank lines are skipped and counted."""
    records, blank = [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            blank += 1
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise problem(path, number, f"bad JSON: {err.msg} at column {err.colno}",
                          "each line must be one complete JSON object") from None
    if blank:
        print(f"note: {path}: skipped {blank} blank line(s)", file=sys.stderr)
    return records


def read_records(path: str | Path) -> tuple[Path, list[tuple[int, dict]]]:
    """[(line number, record)] from a JSON list or JSON Lines file (decided by the first character)."""
    path, text = read_file(path)
    parse = parse_json_list if text.lstrip().startswith("[") else parse_json_lines
    records = parse(path, text)
    if not records:
        raise ValueError(f"{path}: no records in the file; it needs at least one")
    for line, record in records:
        if not isinstance(record, dict):
            raise problem(path, line, f"expected a JSON object, got a {type(record).__name__}",
                          'write each record as {"field": value, ...}')
    return path, records


def check_strings(path: Path, line: int, record: dict, fields: tuple[str, ...]) -> None:
    for field in fields:
        if field not in record:
            raise problem(path, line, f"missing field '{field}'", f"records here need {', '.join(fields)}")
        if not isinstance(record[field], str):
            raise problem(path, line, f"field '{field}' must be a string, got {type(record[field]).__name__}",
                          "put the text in quotes")


def check_messages(path: Path, line: int, record: dict) -> None:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise problem(path, line, "'messages' must be a non-empty list", 'e.g. [{"role": "user", "content": "Hi"}]')
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise problem(path, line, f"message {i} is not an object", 'use {"role": ..., "content": ...}')
        if message.get("role") not in ROLES:
            raise problem(path, line, f"message {i} has unknown role {message.get('role')!r}",
                          f"use one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise problem(path, line, f"message {i} needs a string 'content'", "put the text in quotes")
    if not any(message["role"] == "assistant" for message in messages):
        raise problem(path, line, "no assistant message", "a conversation to learn from needs a reply")


def shape_of(record: dict) -> str:
    if "messages" in record:
        return "chat"
    if "prompt" in record and "completion" in record:
        return "completion"
    return "alpaca"


def load_instructions(path: str | Path) -> list[dict]:
    """Alpaca, prompt/completion or chat records; Alpaca records get input "" when it is missing."""
    path, records = read_records(path)
    shape = shape_of(records[0][1])
    loaded = []
    for line, record in records:
        if shape_of(record) != shape:
            raise problem(path, line, f"this record is not in the {shape} shape of the first record",
                          "use one shape per file")
        if shape == "chat":
            check_messages(path, line, record)
        elif shape == "completion":
            check_strings(path, line, record, SHAPES["completion"])
        else:
            record = {**record, "input": record.get("input", "")}  # the one optional field
            check_strings(path, line, record, SHAPES["alpaca"])
        loaded.append(record)
    return loaded


PREFERENCE_SHAPES = ("prompt/chosen/rejected, instruction/input/chosen/rejected, chosen/rejected (the prompt is "
                     "their common beginning), or chosen/rejected as lists of chat messages")


def load_preferences(path: str | Path) -> list[dict]:
    """Preference records in any of the four shapes, as {"prompt", "chosen", "rejected", extra fields kept}."""
    path, records = read_records(path)
    return [preference_record(path, line, record) for line, record in records]


def preference_record(path: Path, line: int, record: dict) -> dict:
    """One record of any preference shape -> {"prompt": ..., "chosen": str, "rejected": str, ...}."""
    if isinstance(record.get("chosen"), list) or isinstance(record.get("rejected"), list):
        return {**record, **chat_preference(path, line, record)}
    if "instruction" in record:
        check_strings(path, line, {"input": "", **record}, ("instruction", "input", "chosen", "rejected"))
        prompt = record["instruction"] + ("\n\n" + record["input"] if record.get("input") else "")  # as prompt_of
        return {**record, "prompt": prompt}
    if "prompt" in record:
        check_strings(path, line, record, SHAPES["preference"])
        return record
    if "chosen" in record or "rejected" in record:
        check_strings(path, line, record, ("chosen", "rejected"))
        if record["chosen"] == record["rejected"]:
            raise problem(path, line, "chosen and rejected are the same text", "a pair compares two different answers")
        prompt, chosen, rejected = split_common_prompt(record["chosen"], record["rejected"])
        if not chosen.strip() or not rejected.strip():
            raise problem(path, line, "chosen and rejected differ in no whole word after their common beginning",
                          "give the prompt as a field of its own")
        return {**record, "prompt": prompt, "chosen": chosen, "rejected": rejected}
    raise problem(path, line, f"not a preference record: its fields are {', '.join(record) or 'none'}",
                  f"accepted shapes: {PREFERENCE_SHAPES}")


def split_common_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen answer, rejected answer) of two texts that begin with the same prompt.

    The prompt is their longest common beginning cut back to the last whitespace in it, so that no
    word is split: "Q: 2+3? A: 5" and "Q: 2+3? A: 6" -> ("Q: 2+3? A:", "5", "6").
    """
    common = os.path.commonprefix([chosen, rejected])
    cut = max((i + 1 for i, char in enumerate(common) if char.isspace()), default=0)
    return chosen[:cut].rstrip(), chosen[cut:], rejected[cut:]


def chat_preference(path: Path, line: int, record: dict) -> dict:
    """prompt, chosen and rejected of a record whose chosen and rejected are chat conversations."""
    answers = {}
    for field in ("chosen", "rejected"):
        if not isinstance(record.get(field), list):
            raise problem(path, line, f"'{field}' must be a list of chat messages like the other one",
                          'e.g. [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]')
        check_messages(path, line, {"messages": record[field]})
        if record[field][-1]["role"] != "assistant":
            raise problem(path, line, f"'{field}' does not end with an assistant message",
                          "the last message is the answer being compared")
        answers[field] = record[field][-1]["content"]
    history = record["chosen"][:-1]
    if record["rejected"][:-1] != history:
        raise problem(path, line, "chosen and rejected differ before their last assistant message",
                      "both must be the same conversation up to the two answers")
    if not any(message["role"] == "user" for message in history):
        raise problem(path, line, "no user message before the answers", "the prompt is the conversation before them")
    single_turn = [message["role"] for message in history] == ["user"]
    return {"prompt": history[0]["content"] if single_turn else history, **answers}


def write_text(path: str | Path, text: str) -> Path:
    """A text file, written atomically (gpt_scratch/files.py)."""
    return write_atomic(path, text)


def write_json(path: str | Path, data: list | dict) -> Path:
    """JSON, atomically: a list one record per line (valid JSON, easy to read and diff), anything else
    indented by 2 (metrics, configs, manifests)."""
    if isinstance(data, list) and data:
        text = "[\n" + ",\n".join(json.dumps(record, ensure_ascii=False) for record in data) + "\n]\n"
    else:
        text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    return write_atomic(path, text)


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    return write_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
