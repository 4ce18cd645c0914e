"""Settings, each declared once as a dataclass field, and the command-line flags made from them.

    @dataclass
    class TrainConfig:
        lr: float = setting(1e-3, "peak learning rate", type=positive_float)
        warmup_steps: int = setting(50, "linear warmup steps (<= --max-steps)", type=non_negative_int)
        min_lr_ratio: float = 0.1                      # a plain field: no flag

        def validate(self, given: set[str]) -> None:   # a check the command line makes, named by its flags
            if self.warmup_steps > self.max_steps:
                raise ValueError(f"--warmup-steps {self.warmup_steps} is larger than --max-steps {self.max_steps}")

    add_flags(parser, TrainConfig)                     # --lr, --warmup-steps: type, help, choices from the fields
    cfg = from_flags(TrainConfig, args, PRESETS["default"]["sft"], "default")   # default < preset < flag given

A field made with setting() becomes the flag --its-name (or the one it names). Its value is None
until the flag is given, so from_flags knows what the user typed: the field's default, then the
preset's value, then the flag. A dataclass checks its values in __post_init__, as any dataclass
may; the checks only the command line needs (a flag that would be ignored, a warmup longer than the
run) go in a method validate(given), which from_flags calls with the names of the flags given.
A check that fails (a ValueError) comes back as a UsageError, and when a flag in its message took
its value from the preset, the message says so: "--warmup-steps 50 is larger than --max-steps 30
(--warmup-steps 50 is the default preset's value: give --warmup-steps to change it)". The command
line prints a UsageError as one line and exits 2.
"""

import argparse
import dataclasses
import re
from typing import Any

from gpt_scratch.args import UsageError

OWNERS = "settings_fields"  # a parser's attribute: flag dest -> (dataclass that declares it, field name)


def setting(default: Any, help: str, *, type=None, choices=None, flag: str | None = None, nargs: str | None = None,
            metavar: str | None = None, preset: bool = True, negatable: bool = False,
            exclusive: str | None = None, required: bool = False, repeat: bool = False) -> Any:
    """A dataclass field that is also a command-line flag.

    default: its value when neither a preset nor the command line gives one; help: what it does;
    type, choices, nargs, metavar: as argparse takes them; flag: a name other than --field-name;
    preset: whether a preset may set it (its help then says "default: the preset's"); negatable: a
    bool setting that also gets --no-<name> (another bool is switched on by its flag alone);
    exclusive: flags with the same name here are mutually exclusive (at most one may be given); required:
    the command cannot run without the flag; repeat: the flag may be given several times, each adding one
    value to a list.
    """
    metadata = {"help": help, "type": type, "choices": choices, "flag": flag, "nargs": nargs, "metavar": metavar,
                "preset": preset, "negatable": negatable, "exclusive": exclusive, "required": required,
                "repeat": repeat}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_fields(cls) -> list[dataclasses.Field]:
    """The fields of a settings dataclass that are flags (made with setting())."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls, title: str | None = None, skip: tuple[str, ...] = (),
              only: tuple[str, ...] | None = None, preset: dict | None = None, defaults: dict | None = None) -> None:
    """A flag for every setting() field of cls (those in only, or all but those in skip), in a group titled title.

    The help ends with the default: "the preset's" for a field the command's preset sets (preset: the
    default preset's settings of the command), the command's own default where defaults gives one (a
    value, or the words to show), else the field's default.
    """
    target = parser.add_argument_group(title) if title else parser
    owners = parser.__dict__.setdefault(OWNERS, {})
    exclusive_groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for field in flag_fields(cls):
        if field.name in skip or (only is not None and field.name not in only):
            continue
        meta = field.metadata
        group = target
        if meta["exclusive"]:
            if meta["exclusive"] not in exclusive_groups:
                exclusive_groups[meta["exclusive"]] = target.add_mutually_exclusive_group()
            group = exclusive_groups[meta["exclusive"]]
        options = {"help": f"{meta['help']} (default: {shown_default(field, preset, defaults)})", "default": None,
                   "dest": field.name}
        if field.type in (bool, "bool") and meta["negatable"]:
            options["action"] = argparse.BooleanOptionalAction  # --x and --no-x
        elif field.type in (bool, "bool"):
            options.update(action="store_true", default=False)  # --x switches it on: False until given
        else:
            options.update({key: meta[key] for key in ("type", "choices", "nargs", "metavar") if meta[key] is not None})
            if meta["required"]:
                options.update(required=True, help=meta["help"])
            if meta["repeat"]:
                options["action"] = "append"
        group.add_argument(flag_name(field), **options)
        owners[field.name] = (declared_in(cls, field.name), field.name)


def declared_in(cls, name: str) -> type:
    """The class whose declaration of the field name is in effect: cls itself, or the nearest base class
    that cls inherits it from (e.g. PPOConfig's lora_rank is declared in LoRASettings)."""
    return next(base for base in cls.__mro__ if name in vars(base).get("__annotations__", {}))


def shown_default(field: dataclasses.Field, preset: dict | None, defaults: dict | None) -> str:
    """A field's default as --help shows it."""
    if field.metadata["preset"] and preset is not None and field.name in preset:
        return "the preset's"
    if defaults is not None and field.name in defaults:
        value = defaults[field.name]
    else:
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    if value is None:
        return "none"
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def given(args: argparse.Namespace | None, cls) -> dict:
    """The settings of cls that the command line gave (their flags are not None); none without args."""
    found = {}
    for field in flag_fields(cls):
        value = getattr(args, field.name, None)
        not_switched_on = value is False and not field.metadata["negatable"]  # a --x flag that was not given
        if value is not None and not not_switched_on:
            found[field.name] = value
    return found


def from_flags(cls, args: argparse.Namespace | None, preset: dict | None = None, preset_name: str = "", **fixed):
    """An instance of cls: each field's default, then the preset's value, then the flag given; fixed values
    (set by the command itself, not by a flag) last. A failed check is a UsageError that says which of its
    flags took their value from the preset. args None: the preset's settings alone (the main job)."""
    names = {f.name for f in dataclasses.fields(cls)}
    from_preset = {k: v for k, v in (preset or {}).items() if k in names}
    typed = given(args, cls)
    try:
        settings = cls(**{**from_preset, **typed, **fixed})
        if hasattr(settings, "validate"):
            settings.validate(set(typed))
        return settings
    except ValueError as err:
        untyped = {k: v for k, v in from_preset.items() if k not in typed and k not in fixed}
        raise UsageError(with_provenance(str(err), cls, untyped, preset_name)) from None


def with_provenance(message: str, cls, from_preset: dict, preset_name: str) -> str:
    """message, with a note for each flag it names whose value came from the preset, not the command line."""
    fields = {flag_name(f): f.name for f in flag_fields(cls)}
    named = [flag for flag in dict.fromkeys(re.findall(r"--[a-z0-9-]+", message))
             if fields.get(flag) in from_preset]
    notes = [f"{flag} {from_preset[fields[flag]]} is the {preset_name} preset's value: give {flag} to change it"
             for flag in named]
    return message + (f" ({'; '.join(notes)})" if notes else "")
