"""``status``: what a run has done so far, read from its files (safe while a run is going).

Nothing is modified: a torn last line (a run writing right now, or a killed one) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from octave_bulk.errors import OctaveBulkError, StateError
from octave_bulk.state.file_view import LedgerState, read_state
from octave_bulk.state.files import iter_ndjson
from octave_bulk.state.history import RunHistory
from octave_bulk.state.idset import id_key
from octave_bulk.state.jobs import load_jobs
from octave_bulk.state.lock import RunLock
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.reconcile import line_credits
from octave_bulk.state.scan import complete_lines
from octave_bulk.utc import utc_iso

__all__ = ["read_status"]


def read_status(output: str | Path, *, ledger: Path | None = None) -> dict[str, Any]:
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
    state = read_state(paths, ledger)
    credits = sum(line_credits(line) for line in complete_lines(paths.results))
    rejects = sum(1 for _ in iter_ndjson(paths.rejects))
    summary = None
    if paths.summary.exists():
        with contextlib.suppress(OSError, json.JSONDecodeError):
            summary = json.loads(paths.summary.read_text(encoding="utf-8"))
    leftovers = state.outcome_unknown
    awaiting = [j for j in load_jobs(paths.jobs) if id_key(j.request_id) not in state.done]
    state.awaiting = frozenset(j.request_id for j in awaiting)  # not "remaining": polled
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
        "last_run": _last_run(paths, summary, ledger or paths.ledger),
    }


def _last_run(
    paths: OutputPaths, summary: dict[str, Any] | None, ledger: Path
) -> dict[str, Any] | None:
    """The last run's summary; or, when the ledger knows a later run (one still going, or
    killed before it wrote a summary), that run's row."""
    if not ledger.exists():
        return summary
    try:
        with RunHistory.open(ledger, readonly=True) as history:
            rows = history.query(
                "SELECT run_id, started_at, finished_at, exit_code, stop_reason FROM runs "
                "WHERE output = ? ORDER BY started_at DESC LIMIT 1",
                (str(paths.results.resolve()),),
            )
    except (OctaveBulkError, sqlite3.Error):
        return summary
    if not rows or (summary is not None and summary.get("run_id") == rows[0]["run_id"]):
        return summary
    row = dict(rows[0])
    for name in ("started_at", "finished_at"):
        row[name] = row[name] and utc_iso(row[name], ms=False)
    return row


def _input_progress(summary: dict[str, Any] | None, state: LedgerState) -> dict[str, Any] | None:
    """How much of the last run's input is done: its requests read again with its settings
    (None when the input is gone, or stdin)."""
    input_path = ((summary or {}).get("input") or {}).get("path")
    if not input_path or not Path(input_path).is_file():
        return None
    from octave_bulk.run.guard import check_resend  # the request models: only when needed
    from octave_bulk.settings.model import Settings

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
        "awaited": report.awaited,
        "remaining": report.requests - report.unchanged - report.awaited,
    }
