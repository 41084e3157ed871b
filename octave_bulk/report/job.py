"""What a run report shows for a job of the shared ledger, read from the database (nothing is
sent): ``report --job NAME`` (docs/scale-out.md, "Reading a job").

Contract: :func:`gather_job` returns the :class:`~octave_bulk.report.data.ReportData` of one run
of the job (the latest by default), as much as the database holds: the run's row and every
run of the job (``ob_run``), the latencies of its successes (their records' ``latencyMs``),
its calls by outcome and retries (``ob_call``, by the run's worker), its failures by kind with
examples (the error records it settled). Left out, because the database does not hold them:
the time series (no 429 or limit chart; the run's final limits are in its row), the rejects
(each host's ``OUT.rejects.ndjson``), the summary file's stop detail and the credit history
of runs on other outputs. Raises :class:`~octave_bulk.errors.StateError` when the job has no
run, or no run ``run_id``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from octave_bulk.errors import StateError
from octave_bulk.report.data import ReportData, note_failure
from octave_bulk.state.pg.read import JobReader

__all__ = ["gather_job"]


def gather_job(reader: JobReader, run_id: str | None = None) -> ReportData:
    """The report's data for ``run_id`` of the job ``reader`` opened (default: its latest)."""
    runs = list(reversed(reader.runs()))
    if not runs:
        raise StateError(f"job {reader.job!r}: no run in the shared ledger {reader.url.display}")
    chosen = [run for run in runs if run_id is None or run.get("run_id") == run_id]
    if not chosen:
        known = ", ".join(str(run.get("run_id")) for run in runs[-5:])
        raise StateError(f"job {reader.job!r}: no run {run_id} (latest runs: {known})")
    run = chosen[-1]
    attempts, retries = reader.calls(run.get("worker"))
    data = ReportData(
        output=Path(reader.job),
        run=run,
        runs=runs,
        series=[],
        latencies_ms=reader.latencies_ms(str(run.get("run_id"))),
        attempts=Counter(attempts),
        retries=retries,
        failures=Counter(),
    )
    for record in reader.errors(str(run.get("run_id"))):
        note_failure(data, record)
    return data
