"""How the cost models write numbers and money in a formula: ``0.125``, ``$0.0000166667``."""

from __future__ import annotations

MONEY_DECIMALS = 10


def fmt_number(value: float) -> str:
    """A number as a person writes it: ``0.125``, ``1.2``, ``60``, ``0.00001`` (no exponent)."""
    text = format(value, ".10g")
    if "e" in text:
        text = f"{value:.15f}".rstrip("0").rstrip(".")
    return text


def fmt_usd(value: float) -> str:
    """``$0.20``, ``$0.0000166667``, ``$0.0000027``: at least two decimals, at most ten."""
    text = f"{round(value, MONEY_DECIMALS):.{MONEY_DECIMALS}f}".rstrip("0")
    whole, _, decimals = text.partition(".")
    return f"${whole}.{decimals.ljust(2, '0')}"


def plural(count: float, word: str) -> str:
    return f"{fmt_number(count)} {word}" + ("" if count == 1 else "s")


def money(value: float) -> float:
    return round(value, MONEY_DECIMALS) + 0.0  # + 0.0: never -0.0
