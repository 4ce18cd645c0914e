"""settings.py: a dataclass field becomes a flag; defaults < preset < flags; checks named by their flags.

The last tests walk every command of the command line: each flag is made from exactly one dataclass
field, and no setting is declared twice (two fields with the same flag, help and default).
"""

from dataclasses import dataclass, fields

import pytest

from gpt_scratch import cli
from gpt_scratch.args import OneLineParser, UsageError, positive_int
from gpt_scratch.settings import OWNERS, add_flags, declared_in, flag_name, from_flags, setting


@dataclass
class Base:
    seed: int = setting(0, "random seed", type=positive_int, preset=False)


@dataclass
class Toy(Base):
    steps: int = setting(100, "optimizer steps", type=positive_int)
    warmup: int = setting(10, "warmup steps (<= --steps)", type=positive_int)
    shuffle: bool = setting(True, "shuffle the data; --no-shuffle: keep its order", negatable=True)
    verbose: bool = setting(False, "print every step")
    mode: str = setting("a", "which mode", choices=("a", "b"), exclusive="how")
    other: str | None = setting(None, "another way", exclusive="how")
    tags: list = setting([], "a tag (repeat the flag for more)", repeat=True)
    internal: float = 0.5  # a plain field: no flag

    def validate(self, given: set[str]) -> None:
        if self.warmup > self.steps:
            raise ValueError(f"--warmup {self.warmup} is larger than --steps {self.steps}")
        self.given = given  # for the test: what validate was told


PRESET = {"steps": 50, "warmup": 40}


def parse(*argv: str):
    parser = OneLineParser(prog="toy")
    add_flags(parser, Toy, preset=PRESET)
    return parser, parser.parse_args(list(argv))


def test_a_setting_field_becomes_a_flag_and_a_plain_field_does_not():
    parser, _ = parse()
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {"--seed", "--steps", "--warmup", "--shuffle", "--no-shuffle", "--verbose", "--mode", "--other",
            "--tags"} <= flags
    assert "--internal" not in flags


def test_the_field_default_then_the_preset_then_the_flag():
    _, args = parse()
    assert from_flags(Toy, args) == Toy()  # no preset: the fields' defaults
    toy = from_flags(Toy, args, PRESET, "toy")
    assert (toy.steps, toy.warmup, toy.seed) == (50, 40, 0)
    _, args = parse("--steps", "70", "--seed", "3")
    toy = from_flags(Toy, args, PRESET, "toy")
    assert (toy.steps, toy.warmup, toy.seed) == (70, 40, 3)
    assert toy.given == {"steps", "seed"}  # validate learns which flags were typed


def test_bools_a_switch_and_a_negatable_one():
    _, args = parse()
    toy = from_flags(Toy, args)
    assert (toy.shuffle, toy.verbose) == (True, False)
    _, args = parse("--no-shuffle", "--verbose")
    toy = from_flags(Toy, args)
    assert (toy.shuffle, toy.verbose) == (False, True)
    assert toy.given == {"shuffle", "verbose"}


def test_a_repeated_flag_collects_a_list_and_choices_are_checked(capsys):
    _, args = parse("--tags", "x", "--tags", "y", "--mode", "b")
    toy = from_flags(Toy, args)
    assert (toy.tags, toy.mode) == (["x", "y"], "b")
    with pytest.raises(SystemExit) as stopped:
        parse("--mode", "c")
    assert stopped.value.code == 2 and "--mode" in capsys.readouterr().err


def test_exclusive_flags_cannot_be_given_together(capsys):
    with pytest.raises(SystemExit) as stopped:
        parse("--mode", "a", "--other", "z")
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "not allowed with" in err and len(err.strip().splitlines()) == 1


def test_a_failed_check_names_the_flag_that_came_from_the_preset():
    _, args = parse("--steps", "30")
    with pytest.raises(UsageError) as failed:
        from_flags(Toy, args, PRESET, "toy")
    assert str(failed.value) == ("--warmup 40 is larger than --steps 30 "
                                 "(--warmup 40 is the toy preset's value: give --warmup to change it)")
    _, args = parse("--steps", "30", "--warmup", "40")  # both typed: no note
    with pytest.raises(UsageError) as failed:
        from_flags(Toy, args, PRESET, "toy")
    assert str(failed.value) == "--warmup 40 is larger than --steps 30"


def test_help_shows_where_a_default_comes_from():
    parser, _ = parse()
    helps = {action.dest: action.help for action in parser._actions}
    assert helps["steps"].endswith("(default: the preset's)")
    assert helps["seed"].endswith("(default: 0)")  # preset=False: the preset never sets it
    assert helps["other"].endswith("(default: none)")


def test_a_flag_is_owned_by_the_class_that_declares_its_field():
    parser, _ = parse()
    owners = getattr(parser, OWNERS)
    assert owners["seed"] == (Base, "seed") and owners["steps"] == (Toy, "steps")
    assert declared_in(Toy, "seed") is Base and declared_in(Toy, "warmup") is Toy


# --- every command of the course ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def command_flags() -> dict[str, list[tuple[str, type, str]]]:
    """command -> [(option string, the class that declares its field, the field's name)] for every flag."""
    found = {}
    for name in cli.COMMANDS:
        parser = cli.command_parser(name)
        owners = getattr(parser, OWNERS, {})
        loose = [action.option_strings for action in parser._actions
                 if action.dest != "help" and action.dest not in owners]
        assert not loose, f"{name}: flags not made from a settings field: {loose}"
        found[name] = [(action.option_strings[0], *owners[action.dest]) for action in parser._actions
                       if action.dest in owners]
    return found


def test_every_flag_of_every_command_is_made_from_one_dataclass_field(command_flags):
    for command, flags in command_flags.items():
        for option, cls, name in flags:
            field = {f.name: f for f in fields(cls)}[name]
            assert name in vars(cls)["__annotations__"], f"{command} {option}: {cls.__name__} does not declare {name}"
            assert option == flag_name(field), f"{command} {option}: made from {cls.__name__}.{name}"
        assert len({option for option, _, _ in flags}) == len(flags), f"{command}: a flag made twice"


def test_no_setting_is_declared_twice(command_flags):
    """Two fields with the same flag, help text and default are one setting written twice: declare it once
    (a shared dataclass, as LoRASettings, RunSettings and RolloutSettings are) and inherit it."""
    declared: dict[tuple, set[str]] = {}
    for flags in command_flags.values():
        for option, cls, name in flags:
            field = {f.name: f for f in fields(cls)}[name]
            key = (option, field.metadata["help"], repr(field.default))
            declared.setdefault(key, set()).add(f"{cls.__module__}.{cls.__qualname__}.{name}")
    twice = {key[0]: sorted(owners) for key, owners in declared.items() if len(owners) > 1}
    assert not twice, f"settings declared in more than one dataclass: {twice}"


def test_shared_settings_come_from_their_one_declaration(command_flags):
    owner = {(command, option): f"{cls.__name__}.{name}" for command, flags in command_flags.items()
             for option, cls, name in flags}
    for command in ("sft", "dpo", "ppo", "grpo"):
        assert owner[command, "--lora-rank"] == "LoRASettings.lora_rank", command
    for command in ("pretrain", "sft", "reward", "dpo", "ppo", "grpo"):
        assert owner[command, "--device"] == "RunSettings.device", command
    for command in ("ppo", "grpo"):
        assert owner[command, "--temperature"] == "RolloutSettings.temperature", command
