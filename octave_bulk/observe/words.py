"""Words for counts in what a person reads: ``1 contact``, ``2 contacts``, ``1,234 rows``."""

from __future__ import annotations

__all__ = ["counted"]


def counted(number: float, noun: str, plural: str | None = None) -> str:
    """``number`` and ``noun``, the noun plural unless the number is 1 (thousands separated;
    ``plural`` when adding ``s`` is wrong: ``counted(2, "person", "people")``)."""
    words = noun if number == 1 else (plural or noun + "s")
    shown = f"{number:,}" if isinstance(number, int) else f"{number:,g}"
    return f"{shown} {words}"
