"""What a run report shows, read from the ledger and the output's files (nothing is sent).

Contract: :func:`gather` returns a :class:`ReportData` for one run of an output (the latest by
default): the run's row and every run of the output (``runs``: credits across its history),
the run's time series (``series``, ``observe/series.py``), its calls (``calls``: latencies of
the successful ones, attempts by outcome, retries), its failures by kind and examples
(``OUT.errors.ndjson``, the lines of this run), the rejects by reason with examples
(``OUT.rejects.ndjson``) and, when it is this run's, the summary (``OUT.summary.json``: the
stop's detail). Raises :class:`StateError` when the output has no ledger or no such run.

:func:`gather_week` returns a :class:`WeekData`: the output's runs that started within a span
(``--since 7d``) or its latest N (``--runs N``), oldest first, each with its 429s (the last
sample of its series; 0 without one).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.errors import StateError
from octave_bulk.observe.series import read_series
from octave_bulk.state.history import RunHistory
from octave_bulk.state.index import OutputIndex
from octave_bulk.state.paths import OutputPaths
from octave_bulk.utc import utc_iso

__all__ = ["EXAMPLES", "ReportData", "WeekData", "gather", "gather_week", "note_failure"]

EXAMPLES = 3
"""Examples kept per reject reason and per failure kind."""


@dataclass
class ReportData:
    """One run of an output, as the report shows it (see the module docstring)."""

    output: Path
    run: dict[str, Any]
    runs: list[dict[str, Any]]
    series: list[dict[str, Any]]
    latencies_ms: list[float]
    attempts: Counter[str]
    """Calls of the run by outcome: ``success`` or the error's kind."""
    retries: int
    """Calls of the run that were a contact's second attempt or later."""
    failures: Counter[str]
    """Contacts whose attempts ended in failure, by the error's kind."""
    failure_examples: dict[str, list[str]] = field(default_factory=dict)
    rejects: Counter[str] = field(default_factory=Counter)
    reject_examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None


def gather(
    output: str | Path, *, ledger: Path | None = None, run_id: str | None = None
) -> ReportData:
    """The report's data for ``run_id`` (default: the output's latest run).

    Raises:
        StateError: no ledger, no run of this output in it, or no run ``run_id``.
    """
    paths = OutputPaths.for_output(output)
    mine = str(paths.results.resolve())
    with RunHistory.open(ledger or paths.ledger, readonly=True) as history:
        runs = [run for run in reversed(history.runs()) if run["output"] == mine]
        if not runs:
            raise StateError(f"{paths.results}: no run of this output in {history.path}")
        chosen = [run for run in runs if run_id is None or run["run_id"] == run_id]
        if not chosen:
            known = ", ".join(run["run_id"] for run in runs[-5:])
            raise StateError(f"{paths.results}: no run {run_id} (latest runs: {known})")
        run = chosen[-1]
        data = ReportData(
            output=paths.results,
            run=run,
            runs=runs,
            series=_series(history, run["run_id"]),
            latencies_ms=[],
            attempts=Counter(),
            retries=0,
            failures=Counter(),
        )
        _read_calls(history, paths.results, data)
    _read_errors(paths.errors, data)
    _read_rejects(paths.rejects, data)
    data.summary = _summary(paths.summary, run["run_id"])
    return data


@dataclass
class WeekData:
    """Runs of an output over a span, oldest first (see the module docstring)."""

    output: Path
    runs: list[dict[str, Any]]
    span: str
    """What was asked for, in words (``runs started since 2026-11-27T20:00:00Z``)."""


def gather_week(
    output: str | Path,
    *,
    ledger: Path | None = None,
    since_seconds: float | None = None,
    runs: int | None = None,
) -> WeekData:
    """The runs of ``output`` started in the last ``since_seconds``, or its latest ``runs``.

    Raises:
        StateError: no ledger, or no run of this output in the span.
    """
    paths = OutputPaths.for_output(output)
    mine = str(paths.results.resolve())
    with RunHistory.open(ledger or paths.ledger, readonly=True) as history:
        found = [run for run in reversed(history.runs()) if run["output"] == mine]
        if since_seconds is not None:
            found = [run for run in found if run["started_at"] >= time.time() - since_seconds]
        if runs is not None:
            found = found[-runs:]
        if not found:
            raise StateError(f"{paths.results}: no run of this output in {history.path} then")
        limited = _rate_limited(history, [run["run_id"] for run in found])
    for run in found:
        run["rate_limited"] = limited.get(run["run_id"], 0)
    words = ["runs"]
    if since_seconds is not None:
        words.append(f"started since {utc_iso(time.time() - since_seconds, ms=False)}")
    if runs is not None:
        words.append(f"(the latest {runs} at most)")
    return WeekData(output=paths.results, runs=found, span=" ".join(words))


def _rate_limited(history: RunHistory, run_ids: list[str]) -> dict[str, int]:
    """Each run's 429s, from the last sample of its series (none without a series table)."""
    query = "SELECT MAX(rate_limited) FROM series WHERE run_id = ?"
    try:
        return {run_id: int(history.query(query, (run_id,))[0][0] or 0) for run_id in run_ids}
    except sqlite3.OperationalError:  # a ledger older than the series table
        return {}


def _series(history: RunHistory, run_id: str) -> list[dict[str, Any]]:
    try:
        return read_series(history, run_id)
    except sqlite3.OperationalError:  # a ledger older than the series table
        return []


def _read_calls(history: RunHistory, results: Path, data: ReportData) -> None:
    """Latencies of the run's successful calls, its calls by outcome, its retries (none when
    the ledger does not index calls)."""
    output_id = OutputIndex(history, results, readonly=True).output_id
    if output_id is None:
        return
    where = "FROM calls WHERE output_id = ? AND run_id = ?"
    key = (output_id, data.run["run_id"])
    data.latencies_ms = [
        row[0] * 1000
        for row in history.query(
            f"SELECT answered_at - sent_at {where} AND outcome = 'success' "
            "AND sent_at IS NOT NULL AND answered_at IS NOT NULL",
            key,
        )
    ]
    for outcome, count in history.query(f"SELECT outcome, COUNT(*) {where} GROUP BY outcome", key):
        data.attempts[outcome] = int(count)
    data.retries = int(history.query(f"SELECT COUNT(*) {where} AND attempt > 1", key)[0][0])


def _lines(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of an NDJSON file (none when it does not exist; bad lines skipped)."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a torn last line: the next run repairs it
            if isinstance(record, dict):
                yield record


def _read_errors(path: Path, data: ReportData) -> None:
    run_id = data.run["run_id"]
    for record in _lines(path):
        if record.get("runId") == run_id:
            note_failure(data, record)


def note_failure(data: ReportData, record: dict[str, Any]) -> None:
    """Count an error record's failure by kind, its message kept as an example."""
    error = record.get("error") or {}
    kind = str(error.get("kind", "unknown"))
    data.failures[kind] += 1
    examples = data.failure_examples.setdefault(kind, [])
    if len(examples) < EXAMPLES:
        message = str(error.get("message", ""))[:200]
        status = f"HTTP {error['status']}" if error.get("status") else ""
        if status and not message.startswith(status):  # a status error's message has it
            message = f"{status}: {message}"
        examples.append(message)


def _read_rejects(path: Path, data: ReportData) -> None:
    for record in _lines(path):
        reason = str(record.get("reason", "unknown"))
        data.rejects[reason] += 1
        examples = data.reject_examples.setdefault(reason, [])
        if len(examples) < EXAMPLES:
            examples.append(
                {
                    "line": record.get("line"),
                    "field": record.get("field"),
                    "message": str(record.get("message", ""))[:200],
                }
            )


def _summary(path: Path, run_id: str) -> dict[str, Any] | None:
    """The output's summary when it is this run's."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(document, dict) and document.get("run_id") == run_id:
        return document
    return None
