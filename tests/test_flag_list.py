"""Every command's flags and what they resolve to, against a committed list (tests/cli_flags.json).

For each command: its flags (option strings, choices, nargs, whether it takes a value) and the settings
the command hands to its stage function when no optional flag is given (the default preset's values,
captured by replacing the stage function for the call, by parameter name). A flag that disappears or
changes its choices, or a default that the stage no longer receives, fails here. The list was made
before the commands were rebuilt from the settings dataclasses (settings.py); after a deliberate
change, regenerate it with `python tests/test_flag_list.py --write` and say why in the commit.
"""

import argparse
import dataclasses
import inspect
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIST = Path(__file__).with_name("cli_flags.json")

# command -> (its required arguments, the stage functions it may call: module, name)
COMMANDS = {
    "data": ([], [("gpt_scratch.world.command", "write_dataset")]),
    "pretrain": (["--corpus", "{run}/data/corpus.txt"], [("gpt_scratch.pretrain", "pretrain")]),
    "sft": (["--base", "{run}/pretrain", "--data", "{run}/data"], [("gpt_scratch.sft", "sft")]),
    "reward": (["--sft", "{run}/sft", "--data", "{run}/data"], [("gpt_scratch.reward", "reward_stage")]),
    "dpo": (["--sft", "{run}/sft", "--data", "{run}/data"], [("gpt_scratch.dpo", "dpo_stage")]),
    "ppo": (["--sft", "{run}/sft", "--reward", "{run}/reward", "--data", "{run}/data"],
            [("gpt_scratch.ppo", "ppo_stage")]),
    "grpo": (["--sft", "{run}/sft", "--data", "{run}/data"], [("gpt_scratch.grpo", "grpo_stage")]),
    "compare": (["--base", "{run}/pretrain", "--data", "{run}/data"], [("gpt_scratch.compare", "compare")]),
    "compare-alignment": (["--sft", "{run}/sft", "--data", "{run}/data"],
                          [("gpt_scratch.compare_alignment", "compare_alignment")]),
    "run": ([], [("gpt_scratch.pipeline", "run_pipeline")]),
    "generate": (["--checkpoint", "{run}/sft"], [("gpt_scratch.generate", "generate"), ("gpt_scratch.chat", "generate")]),
    "chat": (["--checkpoint", "{run}/sft"], [("gpt_scratch.chat", "chat_with_checkpoint")]),
    "bench": ([], [("gpt_scratch.bench", "run_benchmarks")]),
}


class Called(Exception):
    """Raised by a stand-in stage function: the command got as far as its stage, with these arguments."""


def plain(value):
    """A JSON-able copy of an argument: dataclasses as dicts, paths relative to the tiny run, objects by type."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path) or (isinstance(value, str) and "/" in value):
        text = str(value)
        return "RUN" + text.split("tiny_run", 1)[1] if "tiny_run" in text else text
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"<{type(value).__name__}>"


def flags_of(parser: argparse.ArgumentParser) -> list[dict]:
    rows = []
    for action in parser._actions:
        if not action.option_strings or "--help" in action.option_strings:
            continue
        rows.append({"flags": sorted(action.option_strings), "dest": action.dest,
                     "choices": None if action.choices is None else [plain(c) for c in action.choices],
                     "nargs": action.nargs, "takes_value": action.nargs != 0})
    return sorted(rows, key=lambda row: row["flags"])


def stage_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser (the way the command line builds it)."""
    from gpt_scratch.cli import command_parser
    return {name: command_parser(name) for name in COMMANDS}


def resolved(command: str, run: Path, monkeypatch) -> dict:
    """The arguments the command passes to its stage function when only its required flags are given."""
    import importlib

    from gpt_scratch.cli import main
    required, targets = COMMANDS[command]
    seen = {}
    for module_name, name in targets:
        module = importlib.import_module(module_name)
        if not hasattr(module, name):  # a module that reaches the function through another name
            continue
        signature = inspect.signature(getattr(module, name))

        def stand_in(*args, _name=name, _signature=signature, **kwargs):
            call = _signature.bind(*args, **kwargs)  # by parameter name, whether passed by position or keyword
            call.apply_defaults()
            seen.update({"function": _name, "arguments": plain(dict(call.arguments))})
            raise Called
        monkeypatch.setattr(module, name, stand_in)
    argv = [command, *(a.format(run=run) for a in required)]
    if command in ("data", "run", "pretrain", "sft", "reward", "dpo", "ppo", "grpo", "compare", "compare-alignment"):
        argv += ["--out", str(run / "out")]
    try:
        main(argv)
    except Called:
        pass
    return seen


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from gpt_scratch.cli import main
    folder = tmp_path_factory.mktemp("flags") / "tiny_run"
    assert main(["run", "--preset", "tiny", "--out", str(folder), "--quiet"]) == 0
    return folder


def current(tiny_run: Path, monkeypatch) -> dict:
    parsers = stage_parsers()
    return {command: {"flags": flags_of(parsers[command]), "resolved": resolved(command, tiny_run, monkeypatch)}
            for command in COMMANDS}


# Arguments a stage function takes under another name since the list was made: (command, old name) -> new name.
# dpo_stage's lora_rank became lora, the LoRA settings group every stage shares (LoRASettings).
RENAMED = {("dpo", "lora_rank"): "lora"}


def flat(arguments: dict, prefix: str = "") -> dict:
    """{"cfg": {"lr": 1}} -> {"cfg.lr": 1}: every setting a stage function receives, by its path."""
    out = {}
    for name, value in arguments.items():
        out.update(flat(value, f"{prefix}{name}.") if isinstance(value, dict) else {prefix + name: value})
    return out


def test_every_command_keeps_its_flags_and_what_they_resolve_to(tiny_run, monkeypatch):
    """Flags may be added (a new setting), never lost or changed; every setting the stage received before it
    still receives, with the same value (new settings may come beside them)."""
    committed = json.loads(LIST.read_text())
    now = current(tiny_run, monkeypatch)
    for command in COMMANDS:
        flags = {tuple(row["flags"]): row for row in now[command]["flags"]}
        for row in committed[command]["flags"]:
            assert flags.get(tuple(row["flags"])) == row, f"{command} {row['flags'][0]}: gone or changed"
        before, after = flat(committed[command]["resolved"]), flat(now[command]["resolved"])
        for name, value in before.items():
            path, _, last = name.rpartition(".")
            renamed = f"{path}.{RENAMED[command, last]}" if (command, last) in RENAMED else name
            assert after.get(renamed, "<not received>") == value, f"{command}: {name} was {value!r}, now " \
                                                                     f"{after.get(renamed, '<not received>')!r}"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    sys.path.insert(0, str(REPO))
    from gpt_scratch.cli import main as cli_main

    class Patch:  # a minimal monkeypatch for the writer
        def setattr(self, module, name, value):
            setattr(module, name, value)

    with tempfile.TemporaryDirectory() as folder:
        run = Path(folder) / "tiny_run"
        assert cli_main(["run", "--preset", "tiny", "--out", str(run), "--quiet"]) == 0
        LIST.write_text(json.dumps(current(run, Patch()), indent=1) + "\n")
    print(f"wrote {LIST}")
