"""Wire facts every agent shares that need no model: step keys, output formats, credits.

Kept free of pydantic so that readers of files (``status``) load nothing heavy.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["MAX_STEPS", "STEP_KEYS", "OutputFormat", "credits_of", "value_at"]

MAX_STEPS = 7
"""Highest step key accepted in runtimeContext / runtimeInstructions.

The API page lists steps 1-4; Octave's own n8n node builds keys up to 7 and headless sequences
allow 7 steps, so 7 is the documented upper bound we accept."""

STEP_KEYS = frozenset({"all", *(str(n) for n in range(1, MAX_STEPS + 1))})


def credits_of(usage: object) -> float:
    """Credits from a ``_metadata.usage`` value: a number, else 0 (booleans are not numbers)."""
    if isinstance(usage, int | float) and not isinstance(usage, bool):
        return float(usage)
    return 0.0


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
