"""Wire facts every agent shares that need no model: step keys, output formats, credits.

Kept free of pydantic so that readers of files (``status``) load nothing heavy.
"""

from __future__ import annotations

import enum
import math
from typing import Any, NamedTuple

__all__ = [
    "MAX_CREDITS_PER_CALL",
    "MAX_STEPS",
    "STEP_KEYS",
    "OutputFormat",
    "Usage",
    "credits_of",
    "read_usage",
    "value_at",
]

MAX_STEPS = 7
"""Highest step key accepted in runtimeContext / runtimeInstructions.

The API page lists steps 1-4; Octave's own n8n node builds keys up to 7 and headless sequences
allow 7 steps, so 7 is the documented upper bound we accept."""

STEP_KEYS = frozenset({"all", *(str(n) for n in range(1, MAX_STEPS + 1))})


MAX_CREDITS_PER_CALL = 1000.0
"""The most credits one answer is taken to have used. Octave does not publish a cost per run
(``costToRun`` examples are 0.02 to 2, docs/octave-api.md "Credits and usage"); a larger
``_metadata.usage`` (1e308, 30 digits, infinity) is counted as this much, so that the run's
credits stay a finite, plausible upper bound."""


class Usage(NamedTuple):
    """A ``_metadata.usage`` value as counted: its credits, and why the value was not taken as
    given (None when it was a finite number in [0, :data:`MAX_CREDITS_PER_CALL`], or absent)."""

    credits: float
    anomaly: str | None = None


def read_usage(usage: object) -> Usage:
    """Credits from a ``_metadata.usage`` value: a finite number from 0 to
    :data:`MAX_CREDITS_PER_CALL`. Absent: 0. Not a number (a string, a boolean, an object),
    not a number at all (NaN) or negative: 0, an anomaly. Above the maximum (infinity too):
    the maximum, an anomaly. The one place usage is read."""
    if usage is None:
        return Usage(0.0)
    if not isinstance(usage, int | float) or isinstance(usage, bool):
        return Usage(0.0, f"usage {str(usage)[:40]!r} is not a number: counted as 0")
    try:
        credits = float(usage)
    except OverflowError:  # an integer beyond any float
        credits = math.inf
    if math.isnan(credits) or credits < 0:
        return Usage(0.0, f"usage {str(usage)[:40]} is not a count of credits: counted as 0")
    if credits > MAX_CREDITS_PER_CALL:
        return Usage(
            MAX_CREDITS_PER_CALL,
            f"usage {str(usage)[:40]} is above {MAX_CREDITS_PER_CALL:g} credits a call: "
            f"counted as {MAX_CREDITS_PER_CALL:g}",
        )
    return Usage(credits)


def credits_of(usage: object) -> float:
    """The credits of a ``_metadata.usage`` value (:func:`read_usage`)."""
    return read_usage(usage).credits


def value_at(value: Any, path: str) -> Any:
    """The value at a dotted ``path`` of nested objects (``data.company.name``), None when a
    step is missing or not an object."""
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


class OutputFormat(enum.StrEnum):
    """Format of the generated email text."""

    TEXT = "text"
    HTML = "html"
    MARKDOWN = "markdown"
