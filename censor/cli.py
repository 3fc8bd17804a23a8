"""Shared CLI plumbing: a ``CensorError`` becomes one ``error:`` line on stderr and exit code 2."""

from __future__ import annotations

import sys

from .errors import CensorError


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
