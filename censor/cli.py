"""Shared CLI plumbing: a ``CensorError`` becomes one ``error:`` line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys

from .errors import CensorError


def positive_int(value: str) -> int:
    """argparse type for counts: a whole number >= 1, else argparse's own one-line usage error."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {n}")
    return n


def dispatch(parser: argparse.ArgumentParser, argv=None) -> int:
    """Parse, then run the chosen subcommand's ``fn(args)`` under ``run_cli``."""
    args = parser.parse_args(argv)
    return run_cli(lambda: args.fn(args))


def run_cli(fn) -> int:
    try:
        fn()
    except CensorError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
