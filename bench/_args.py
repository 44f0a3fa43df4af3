"""What every bench script shares: argument types and the one-line error contract of the CLI."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_or_zero(text: str) -> int:
    """An argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def run(main: Callable[[], int | None]) -> None:
    """Run a bench's ``main``: ocbench's own errors are one line on stderr and exit code 2."""
    from ocbench.errors import OcbenchError

    try:
        sys.exit(main() or 0)
    except OcbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
