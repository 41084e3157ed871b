"""The rows a group commit hands the store (``state/store.py``) and the index keeps
(``state/index.py``): one per outcome line, one per call."""

from __future__ import annotations

__all__ = ["CallRow", "OutcomeRow"]

OutcomeRow = tuple[int, str, str, str | None, int]
"""(person, requestId, state, run id, position): ``state`` is ``ok``, ``retryable`` or
``permanent``; ``position`` is where the outcome's line starts in its file (the byte offset;
a store without files may ignore it)."""

CallRow = tuple[str, str | None, int, float | None, float | None, int | None, str, float, int]
"""(requestId, run id, attempt, sent at, answered at, status, outcome, credits, paid twice)."""
