"""What every ``barecount`` command shares: the argparse types of its option values, its JSON and table
output, and its one-line errors.

Every option value is checked by argparse (``type=``): a bad one exits 2 with the usage and one line
``barecount <command>: error: argument --x: <what is wrong>``, before the command reads anything.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

INT64_MAX = 2**63 - 1  # the index's integers (SQLite's INTEGER, PostgreSQL's bigint)

TIMES = "ISO 8601 (naive: UTC) or a duration back from now: 30d, 12h, 90m, 2w"
"""How a ``--since`` / ``--until`` value is written (said in the options' help)."""


def whole_number(low: int, high: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range (expected a whole number from {low} to {high})")
        return value

    return parse


def seconds(text: str) -> float:
    """An argparse type: a finite number > 0 (seconds, or records per second)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


def time_value(text: str) -> datetime:
    """An argparse type: an ISO 8601 time (naive: UTC) or a duration back from now (30d, 12h, 90m, 2w)."""
    from barecount_provider.api.queries import parse_time

    try:
        return parse_time(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def time_arg(value: str | datetime | None) -> datetime | None:
    """A ``--since`` / ``--until`` value: parsed by :func:`time_value` already, or a string to parse."""
    if value is None or isinstance(value, datetime):
        return value
    return time_value(value)


def print_json(document: Any, *, indent: int | None = 2, flush: bool = False, **options: Any) -> None:
    """A command's ``--json`` output: one document (``indent=None``: one line, as in JSON lines)."""
    print(json.dumps(document, indent=indent, **options), flush=flush)


def fail(where: str, message: object, status: int = 1) -> int:
    """Say what went wrong in one line on standard error, ``<where>: <message>``; return the exit status."""
    print(f"{where}: {message}", file=sys.stderr)
    return status


def table_lines(rows: Sequence[Sequence[str]], header: Sequence[str], right: Sequence[int] = ()) -> list[str]:
    """A text table: the header, a rule, a line per row; each column as wide as its widest cell, the columns
    whose index is in ``right`` aligned right."""
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)]


def print_table(rows: Sequence[Sequence[str]], header: Sequence[str], right: Sequence[int] = ()) -> None:
    """Print :func:`table_lines`."""
    for line in table_lines(rows, header, right):
        print(line)


def usd(value: object) -> str:
    """An amount in USD, four decimals; ``unknown`` for None (never 0)."""
    return "unknown" if value is None else f"{float(str(value)):.4f}"
