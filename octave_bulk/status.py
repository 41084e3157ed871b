"""``status``: what a run has done so far, read from its files (safe while a run is going).

Nothing is modified: a torn last line (a run writing right now, or a killed one) is ignored.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.agents.fields import credits_of
from octave_bulk.state.files import iter_ndjson
from octave_bulk.state.ledger import NdjsonLedger, complete_lines
from octave_bulk.state.lock import RunLock
from octave_bulk.state.paths import OutputPaths

__all__ = ["read_status"]


def _credits(line: bytes) -> float:
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return credits_of(orjson.loads(line)["response"]["_metadata"].get("usage"))
    return 0.0


def read_status(output: str | Path) -> dict[str, Any]:
    """Counts from the results, errors and rejects files plus the last run's summary."""
    paths = OutputPaths.for_output(output)
    holder = RunLock(paths.lock).holder()
    state = NdjsonLedger(paths).load(repair=False)
    credits = sum(_credits(line) for line in complete_lines(paths.results))
    rejects = sum(1 for _ in iter_ndjson(paths.rejects))
    summary = None
    if paths.summary.exists():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    leftovers = state.outcome_unknown
    return {
        "output": str(paths.results),
        "running": holder,
        "succeeded": len(state.done),
        "failed_retryable": len(state.errors.retryable),
        "failed_permanent": len(state.errors.permanent),
        "rejected": rejects,
        "credits": credits,
        "in_flight": len(leftovers) if holder else 0,
        "outcome_unknown": 0 if holder else len(leftovers),
        "last_run": summary,
    }
