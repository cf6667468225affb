# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Command-line numbers that are checked when they are parsed, and errors in one line.

Every numeric option of every command takes one of these types, so a NaN, a negative count or
an absurd size (``--refine-rounds 1000000000``) ends in ``prog: error: argument --x: ...`` and
exit code 2 before anything is loaded or written.
"""
from __future__ import annotations

import argparse
import math
import sys

__all__ = ["OneLineParser", "count", "number"]


class OneLineParser(argparse.ArgumentParser):
    """argparse with its error as one line (the usage is in --help), exit code 2."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def count(minimum: int = 1, maximum: int | None = None):
    """An int type from ``minimum`` to ``maximum`` inclusive."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or maximum is not None and value > maximum:
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"{value} is out of range: it must be at least {minimum}{upper}")
        return value
    parse.__name__ = "whole number"
    return parse


def number(minimum: float | None = None, maximum: float | None = None, above: bool = False):
    """A finite float type, at least (or, with ``above``, more than) ``minimum``, at most ``maximum``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        low_ok = minimum is None or (value > minimum if above else value >= minimum)
        if not low_ok or maximum is not None and value > maximum:
            parts = ([f"{'above' if above else 'at least'} {minimum:g}"] if minimum is not None else []) + \
                ([f"at most {maximum:g}"] if maximum is not None else [])
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: it must be {' and '.join(parts)}")
        return value
    parse.__name__ = "number"
    return parse
