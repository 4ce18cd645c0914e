"""Typed validators for argparse, shared by the command line and the chapter scripts.

    parser.add_argument("--lr", type=positive_float)
    parser.add_argument("--dropout", type=float_range(0.0, 1.0, include_high=False))

A bad value makes argparse print one line naming the flag and what is allowed, and exit 2.
"""

import argparse


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
