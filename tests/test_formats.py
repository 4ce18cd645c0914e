"""Every loader on good and bad files: one-line errors that name the file and the line."""

import json
import os

import pytest

from gpt_scratch.files import atomic_path
from gpt_scratch.formats import (load_instructions, load_preferences, load_text, write_atomic, write_json,
                                 write_jsonl)


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(loader, path) -> str:
    with pytest.raises(ValueError) as info:
        loader(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message  # one line, naming the file
    return message


# --- plain text ---------------------------------------------------------------------------

def test_load_text(tmp_path):
    assert load_text(write(tmp_path, "c.txt", "Hello, world.\n")) == "Hello, world.\n"
    assert "empty" in error_of(load_text, write(tmp_path, "e.txt", " \n\n"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert "UTF-8" in error_of(load_text, tmp_path / "latin1.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_text(tmp_path / "nope.txt")


# --- instructions: the three shapes -------------------------------------------------------

ALPACA = [{"instruction": "Add.", "input": "2 and 3", "output": "5", "id": "a1"},
          {"instruction": "Name a colour.", "output": "red"}]  # "input" is optional, as in real Alpaca data


def test_alpaca_json_list(tmp_path):
    records = load_instructions(write(tmp_path, "alpaca.json", json.dumps(ALPACA, indent=2)))
    assert records == [ALPACA[0], {**ALPACA[1], "input": ""}]  # extra fields kept, input filled in


def test_alpaca_as_json_lines(tmp_path):
    path = write(tmp_path, "alpaca.jsonl", "".join(json.dumps(r) + "\n" for r in ALPACA))
    assert load_instructions(path)[0]["output"] == "5"


def test_prompt_completion_jsonl_counts_blank_lines(tmp_path, capsys):
    path = write(tmp_path, "pc.jsonl", '{"prompt": "2+3=", "completion": "5"}\n\n{"prompt": "1+1=", "completion": "2"}\n')
    assert load_instructions(path) == [{"prompt": "2+3=", "completion": "5"}, {"prompt": "1+1=", "completion": "2"}]
    assert "skipped 1 blank line" in capsys.readouterr().err  # never dropped silently


def test_chat_messages(tmp_path):
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}]}
    assert load_instructions(write(tmp_path, "chat.jsonl", json.dumps(chat) + "\n")) == [chat]


# --- instructions: bad files --------------------------------------------------------------

def test_bad_json_names_the_line(tmp_path):
    lines = ['{"prompt": "a", "completion": "b"}', '{"prompt": "c", "completion": "d"}', '{"prompt": "e", "completion"']
    message = error_of(load_instructions, write(tmp_path, "bad.jsonl", "\n".join(lines) + "\n"))
    assert "line 3" in message and "bad JSON" in message
    text = '[\n{"instruction": "a", "output": "b"},\n{"instruction": "c", "output": "d",,}\n]\n'  # in a JSON list
    message = error_of(load_instructions, write(tmp_path, "bad.json", text))
    assert "line 3" in message and "bad JSON" in message


def test_missing_output_names_the_record_line(tmp_path):
    records = [ALPACA[0], {"instruction": "No answer here."}]
    path = write(tmp_path, "missing.json", "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    message = error_of(load_instructions, path)
    assert "line 3" in message and "missing field 'output'" in message


def test_wrong_type(tmp_path):
    path = write(tmp_path, "type.jsonl", '{"instruction": "Add 2 and 3.", "output": 5}\n')
    message = error_of(load_instructions, path)
    assert "line 1" in message and "'output' must be a string, got int" in message


def test_unknown_role_and_other_chat_mistakes(tmp_path):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    bad_role = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello."}]}
    no_reply = {"messages": [{"role": "user", "content": "Hi"}]}
    for bad, words in [(bad_role, "unknown role 'bot'"), (no_reply, "no assistant message"),
                       ({"messages": []}, "non-empty list"),
                       ({"messages": [{"role": "user", "content": 3}]}, "string 'content'")]:
        path = write(tmp_path, "chat.jsonl", json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        message = error_of(load_instructions, path)
        assert "line 2" in message and words in message


def test_empty_files_and_wrong_containers(tmp_path):
    assert "empty" in error_of(load_instructions, write(tmp_path, "empty.jsonl", ""))
    assert "no records" in error_of(load_instructions, write(tmp_path, "none.json", "[]"))
    assert "expected a JSON object" in error_of(load_instructions, write(tmp_path, "list.jsonl", "[1, 2]\n"))
    assert "line 1: missing field 'instruction'" in error_of(load_instructions, write(tmp_path, "o.json", '{"a": 1}'))


def test_mixed_shapes_in_one_file(tmp_path):
    lines = [json.dumps({"prompt": "a", "completion": "b"}), json.dumps({"instruction": "c", "output": "d"})]
    message = error_of(load_instructions, write(tmp_path, "mixed.jsonl", "\n".join(lines)))
    assert "line 2" in message and "completion shape" in message


# --- preferences --------------------------------------------------------------------------

def test_preferences(tmp_path):
    pair = {"prompt": "2+3?", "chosen": "The answer is 5.", "rejected": "6", "kind": "correctness"}
    assert load_preferences(write(tmp_path, "p.jsonl", json.dumps(pair) + "\n")) == [pair]
    broken = {"prompt": "2+3?", "chosen": "5"}
    path = write(tmp_path, "p_bad.jsonl", json.dumps(pair) + "\n" + json.dumps(broken) + "\n")
    message = error_of(load_preferences, path)
    assert "line 2" in message and "missing field 'rejected'" in message


def test_preferences_as_a_json_list(tmp_path):
    pairs = [{"prompt": "2+3?", "chosen": "5", "rejected": "6"}, {"prompt": "1+1?", "chosen": "2", "rejected": "3"}]
    assert load_preferences(write(tmp_path, "p.json", json.dumps(pairs, indent=2))) == pairs


def test_preferences_alpaca_shape(tmp_path):
    records = [{"instruction": "Add the numbers.", "input": "2 and 3", "chosen": "5", "rejected": "6", "id": "a"},
               {"instruction": "Name a colour.", "chosen": "red", "rejected": "dog"}]  # input is optional
    loaded = load_preferences(write(tmp_path, "a.jsonl", "".join(json.dumps(r) + "\n" for r in records)))
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in loaded] == [
        ("Add the numbers.\n\n2 and 3", "5", "6"), ("Name a colour.", "red", "dog")]  # as world.preferences.prompt_of
    assert loaded[0]["id"] == "a" and loaded[0]["input"] == "2 and 3"  # extra fields kept
    bad = {"instruction": "Add.", "input": 5, "chosen": "5", "rejected": "6"}
    message = error_of(load_preferences, write(tmp_path, "a_bad.jsonl", json.dumps(records[0]) + "\n" + json.dumps(bad)))
    assert "line 2" in message and "'input' must be a string" in message


def test_preferences_without_a_prompt_split_at_their_common_beginning(tmp_path):
    records = [{"chosen": "Human: What is 2+3?\n\nAssistant: The answer is 5.",
                "rejected": "Human: What is 2+3?\n\nAssistant: The answer is 6."},
               {"chosen": "Human: Hi\n\nAssistant: Hello there!", "rejected": "Human: Hi\n\nAssistant: Hey."},
               {"chosen": "yes", "rejected": "no"},  # nothing in common: an empty prompt
               {"chosen": "Say it: yes", "rejected": "Say it: yes!"}]  # one starts with the other: no word split
    loaded = load_preferences(write(tmp_path, "hh.jsonl", "".join(json.dumps(r) + "\n" for r in records)))
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in loaded] == [
        ("Human: What is 2+3?\n\nAssistant: The answer is", "5.", "6."),
        ("Human: Hi\n\nAssistant:", "Hello there!", "Hey."),
        ("", "yes", "no"),
        ("Say it:", "yes", "yes!")]
    for bad, words in (({"chosen": "the same", "rejected": "the same"}, "chosen and rejected are the same text"),
                       ({"chosen": "a b ", "rejected": "a b c"}, "give the prompt as a field of its own")):
        message = error_of(load_preferences, write(tmp_path, "same.jsonl", json.dumps(records[0]) + "\n" + json.dumps(bad)))
        assert "line 2" in message and words in message
    message = error_of(load_preferences, write(tmp_path, "one.jsonl", json.dumps({"chosen": "yes"})))
    assert "line 1" in message and "missing field 'rejected'" in message


def test_preferences_as_chat_conversations(tmp_path):
    user = {"role": "user", "content": "What is 2+3?"}
    single = {"chosen": [user, {"role": "assistant", "content": "5"}],
              "rejected": [user, {"role": "assistant", "content": "6"}], "id": "c1"}
    history = [{"role": "system", "content": "Be brief."}, user, {"role": "assistant", "content": "5"},
               {"role": "user", "content": "And 1+1?"}]
    multi = {"chosen": history + [{"role": "assistant", "content": "2"}],
             "rejected": history + [{"role": "assistant", "content": "11"}]}
    loaded = load_preferences(write(tmp_path, "chat.jsonl", json.dumps(single) + "\n" + json.dumps(multi) + "\n"))
    assert loaded[0] == {"prompt": "What is 2+3?", "chosen": "5", "rejected": "6", "id": "c1"}
    assert loaded[1] == {"prompt": history, "chosen": "2", "rejected": "11"}  # a longer conversation stays a list


@pytest.mark.parametrize("record, words", [
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
      "rejected": [{"role": "user", "content": "Hey"}, {"role": "assistant", "content": "Go."}]},
     "differ before their last assistant message"),
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], "rejected": "Go."},
     "'rejected' must be a list of chat messages"),
    ({"chosen": [{"role": "user", "content": "Hi"}], "rejected": [{"role": "user", "content": "Hi"}]},
     "no assistant message"),
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A"},
                 {"role": "user", "content": "Ok"}],
      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "B"},
                   {"role": "user", "content": "Ok"}]}, "does not end with an assistant message"),
    ({"chosen": [{"role": "assistant", "content": "A"}], "rejected": [{"role": "assistant", "content": "B"}]},
     "no user message before the answers"),
    ({"chosen": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "A"}],
      "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "B"}]}, "unknown role 'bot'"),
    ({"question": "2+3?", "answer": "5"}, "not a preference record: its fields are question, answer (accepted shapes: "
                                         "prompt/chosen/rejected, instruction/input/chosen/rejected, chosen/rejected"),
    ({"prompt": "2+3?", "chosen": 5, "rejected": "6"}, "'chosen' must be a string, got int"),
])
def test_every_bad_preference_record_is_one_line_naming_file_and_line(tmp_path, record, words):
    good = {"prompt": "2+3?", "chosen": "5", "rejected": "6"}
    message = error_of(load_preferences, write(tmp_path, "bad.jsonl", json.dumps(good) + "\n" + json.dumps(record) + "\n"))
    assert "line 2" in message and words in message, message
    listed = write(tmp_path, "bad.json", "[\n" + json.dumps(good) + ",\n" + json.dumps(record) + "\n]\n")
    assert "line 3" in error_of(load_preferences, listed)  # the line where the record starts in a JSON list


def test_the_embedded_worlds_preference_file_goes_through_the_same_reader(tmp_path):
    from gpt_scratch.world import make_preference_pairs, make_tasks
    from gpt_scratch.world.corpus import build_world

    train = make_tasks(build_world(0), seed=0, n_train=12, n_val=2, n_test=2)["train"]
    pairs = make_preference_pairs(train, seed=0, label_noise=0.2)
    assert load_preferences(write_jsonl(tmp_path / "preferences_train.jsonl", pairs)) == pairs


# --- writing ------------------------------------------------------------------------------

def test_writers_round_trip_and_leave_no_temporary_files(tmp_path):
    records = [{"instruction": "Say hi.", "input": "", "output": "hi ☺"}, {"instruction": "x", "input": "y", "output": "z"}]
    assert load_instructions(write_json(tmp_path / "r.json", records)) == records
    assert (tmp_path / "r.json").read_text().splitlines()[1] == json.dumps(records[0], ensure_ascii=False) + ","
    assert load_instructions(write_jsonl(tmp_path / "r.jsonl", records)) == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.jsonl"]


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = write(tmp_path, "keep.txt", "old")

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_writer_failing_halfway_keeps_the_old_file(tmp_path, error):
    path = write(tmp_path, "keep.bin", "old")

    def half_then_fail(temp):
        temp.write_bytes(b"half of the new")
        raise error
    with pytest.raises(type(error)), atomic_path(path) as temp:
        half_then_fail(temp)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["keep.bin"]


def test_atomic_path_replaces_the_file_and_makes_missing_folders(tmp_path):
    path = tmp_path / "new" / "folder" / "data.bin"
    with atomic_path(path) as temp:
        assert temp.parent == path.parent and temp.suffix == ".tmp" and temp != path
        temp.write_bytes(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and [p.name for p in path.parent.iterdir()] == ["data.bin"]
    assert path.stat().st_mode & 0o777 == 0o644 or os.name == "nt"  # not mkstemp's private 0600
    assert write_atomic(path, "a\nb\n").read_bytes() == b"a\nb\n"  # "\n" on every system
