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
from octave_bulk.errors import OctaveBulkError, StateError
from octave_bulk.state.files import iter_ndjson
from octave_bulk.state.idset import id_key
from octave_bulk.state.jobs import load_jobs
from octave_bulk.state.ledger import LedgerState, complete_lines, read_state
from octave_bulk.state.lock import RunLock
from octave_bulk.state.paths import OutputPaths
from octave_bulk.utc import utc_iso

__all__ = ["read_status"]


def _credits(line: bytes) -> float:
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return credits_of(orjson.loads(line)["response"]["_metadata"].get("usage"))
    return 0.0


def read_status(output: str | Path) -> dict[str, Any]:
    """Counts from the results, errors and rejects files plus the last run's summary; with
    async runs, the jobs submitted whose result is not in yet (``async_awaiting``).

    Raises:
        StateError: no run ever wrote this output (no results, no summary, no run holds it).
    """
    paths = OutputPaths.for_output(output)
    holder = RunLock(paths.lock).holder()
    if holder is None and not any(p.exists() for p in (paths.results, paths.summary)):
        raise StateError(
            f"{paths.results}: no such output (no results and no summary): check the path "
            "given to -o when the run was started"
        )
    state = read_state(paths)
    credits = sum(_credits(line) for line in complete_lines(paths.results))
    rejects = sum(1 for _ in iter_ndjson(paths.rejects))
    summary = None
    if paths.summary.exists():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    leftovers = state.outcome_unknown
    awaiting = [j for j in load_jobs(paths.jobs) if id_key(j.request_id) not in state.done]
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
        "async_awaiting": len(awaiting),
        "async_oldest_submit": utc_iso(min(j.submitted_at for j in awaiting)) if awaiting else None,
        "input_progress": _input_progress(summary, state),
        "last_run": summary,
    }


def _input_progress(summary: dict[str, Any] | None, state: LedgerState) -> dict[str, Any] | None:
    """How much of the last run's input is done: its requests read again with its settings
    (None when the input is gone, or stdin)."""
    input_path = ((summary or {}).get("input") or {}).get("path")
    if not input_path or not Path(input_path).is_file():
        return None
    from octave_bulk.run.guard import check_resend  # the request models: only when needed
    from octave_bulk.settings import Settings

    saved = (summary or {}).get("settings") or {}
    try:
        settings = Settings.load(**{k: v for k, v in saved.items() if k != "api_key"})
        report = check_resend(input_path, settings, state, always=True)
    except (OctaveBulkError, ValueError):
        return None
    return {
        "input": input_path,
        "requests": report.requests,
        "done": report.unchanged,
        "remaining": report.requests - report.unchanged,
    }
