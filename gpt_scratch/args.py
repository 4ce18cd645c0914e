"""Typed validators for argparse and the one error-line format, shared by the command line,
the grader and the chapter scripts.

    parser = OneLineParser(prog="ex1_bpe.py", description=...)
    parser.add_argument("--lr", type=positive_float)
    parser.add_argument("--dropout", type=float_range(0.0, 1.0, include_high=False))

Every error line reads `prog: error: message`, alone on stderr. A bad flag value (or a bad
combination of flags) adds `; see --help` and exits 2; OneLineParser prints it without argparse's
usage block (under torchrun, rank 0's line: see yield_to_rank_0). Other failures (a missing
folder, an unfinished exercise) use print_error.
"""

import argparse
import os
import sys
import time


class UsageError(ValueError):
    """A flag's value, or a combination of flags, that cannot work: the command line prints the message
    as a usage error (one line, `; see --help`, exit 2). Its message names the flags."""


def error_line(prog: str, message: str) -> str:
    """The one format of an error line: `prog: error: message`."""
    return f"{prog}: error: {message}"


def print_error(prog: str, message: str) -> None:
    """Print error_line(prog, message) to stderr."""
    print(error_line(prog, message), file=sys.stderr)


def yield_to_rank_0() -> None:
    """Under torchrun every process meets the same bad input and exits 2: let rank 0's line be the one printed.

    torchrun stops all the processes as soon as one exits. So the other ranks wait a moment before
    they print the same line and exit: by then rank 0 has printed and exited, and they are stopped.
    """
    several_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun sets WORLD_SIZE and RANK
    if several_processes and os.environ.get("RANK", "0") != "0":
        time.sleep(5)


def exercise_not_done(prog: str, err: NotImplementedError) -> int:
    """An exercise still raises NotImplementedError("Exercise N.M: what to do"): one line, exit status 1.

    exercise_not_done("ex1_bpe.py", NotImplementedError("Exercise 1.2: count the pairs"))
    prints `ex1_bpe.py: error: Exercise 1.2 is not done yet: count the pairs`.
    """
    number, _, task = str(err).partition(": ")
    print_error(prog, f"{number} is not done yet: {task}")
    return 1


class OneLineParser(argparse.ArgumentParser):
    """A bad flag prints one line, `prog: error: message; see --help`, and exits 2 (no usage block)."""

    def error(self, message: str):
        yield_to_rank_0()
        self.exit(2, error_line(self.prog, f"{message}; see --help") + "\n")


def int_range(low: int, high: int | None = None):
    """An int type that accepts low <= value (<= high)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in messages
    return parse


def float_range(low: float, high: float, include_low: bool = True, include_high: bool = True):
    """A float type that accepts values between low and high."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value < low if include_low else value <= low
        too_high = value > high if include_high else value >= high
        if too_low or too_high or value != value:  # value != value catches NaN
            left, right = "[" if include_low else "(", "]" if include_high else ")"
            raise argparse.ArgumentTypeError(f"must be in {left}{low}, {high}{right}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
positive_float = float_range(0.0, float("inf"), include_low=False)
probability = float_range(0.0, 1.0)
