"""What every bench script shares: argument types and the one-line error contract of the CLI."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


#: argparse types: an integer >= 1, an integer >= 0.
positive_int = _int_at_least(1)
positive_or_zero = _int_at_least(0)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number in (0, 1]."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def run(main: Callable[[], int | None]) -> None:
    """Run a bench's ``main``: ocbench's own errors are one line on stderr and exit code 2."""
    from ocbench.errors import OcbenchError

    try:
        sys.exit(main() or 0)
    except OcbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
