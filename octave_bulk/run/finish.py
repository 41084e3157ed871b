"""The end of a run: its summary document, the metrics, the ledger's fold and snapshot, the
history row, the ``stop`` event.

Contract: :func:`finish_run` takes a run whose dispatch is over (done, stopped or cancelled,
every outcome durable) and returns its :class:`RunSummary`, written to ``OUT.summary.json``.
The run's history row is completed first, then the metrics file, then the summary, so that
all three tell the same exit code: a history row or a metrics file that cannot be written is
exit 6 (stopped after sending; the ``--budget`` does not depend on the row: ``spend.py``), a
summary that cannot be written is a :class:`StateError` carrying the calls sent (exit 6). The
ledger's index (fold, snapshot) that cannot be updated is logged, never worth the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octave_bulk.errors import ExitCode, StateError
from octave_bulk.input.reader import ContactReader
from octave_bulk.observe.log import log_event
from octave_bulk.observe.metrics import write_metrics
from octave_bulk.run.spend import BudgetHolds
from octave_bulk.run.summary import RunSummary
from octave_bulk.state.cursor import ResumeCursor
from octave_bulk.state.files import write_json_atomic
from octave_bulk.state.history import RunHistory
from octave_bulk.state.index import OutputIndex
from octave_bulk.state.ledger import LedgerState
from octave_bulk.utc import utc_iso

if TYPE_CHECKING:
    from octave_bulk.run.engine import _Run

__all__ = ["FinishedInput", "finish_run", "record_history"]


@dataclass(frozen=True, slots=True)
class FinishedInput:
    """What the run read: its path, the reader (format, encoding, mapping), where it resumed."""

    path: str | Path
    reader: ContactReader
    start: ResumeCursor
    cursor_note: str


def record_history(history: RunHistory, run_id: str, columns: dict[str, Any]) -> None:
    """Update the run's history row; a ledger that cannot be written (locked by another
    writer past the busy timeout, a full disk) is logged, never worth the run."""
    try:
        history.update(run_id, **columns)
    except StateError as exc:
        log_event("history_not_updated", level=logging.WARNING, error=str(exc))


def finish_run(
    run: _Run,
    given: FinishedInput,
    *,
    state: LedgerState,
    done_before: int,
    history: RunHistory,
    index: OutputIndex | None,
) -> RunSummary:
    """Write what the run did (see the module docstring) and return its summary."""
    settings, paths, reader, start = run.settings, run.paths, given.reader, given.start
    scan, cursor_note = state.results, given.cursor_note
    stats, control = run.stats, run.control
    rule = run.exit_rule()
    exit_code = rule.code
    document = stats.summary(
        tool="octave-bulk",
        run_id=run.run_id,
        started_at=utc_iso(stats.started, ms=False),
        finished_at=utc_iso(),
        exit_code=exit_code,
        exit_rule=rule.to_dict(),
        stop_reason=control.reason,
        fatal_error=control.fatal.message if control.fatal else None,
        fatal_kind=control.fatal.kind if control.fatal else None,
        stop_detail=control.detail,
        credits_not_checked=run.credits.unchecked,
        where_warning=reader.where_warning,
        limits=run.remember_limits(),
        input_error=str(run.admission.input_error) if run.admission.input_error else None,
        resumable=exit_code != ExitCode.OK,
        input={
            "path": str(given.path),
            "format": reader.format,
            "encoding": reader.encoding,
            "encoding_note": reader.encoding_note,
            "footer_rows": reader.footer_rows,
            "mapping": reader.mapping.to_dict(),
        },
        outputs={
            "results": str(paths.results),
            "errors": str(paths.errors),
            "rejects": str(paths.rejects),
            "summary": str(paths.summary),
        },
        already_done_before_run=done_before,
        resume_cursor={"rows_skipped_unread": start.counts["read"], "note": cursor_note},
        repaired_bytes=scan.repaired_bytes,
        corrupt_result_lines=scan.bad_lines,
        unknown_request_ids=state.outcome_unknown[:100],
        async_jobs=_jobs_summary(run) if run.jobs is not None else None,
        settings=settings.redacted(),
    )
    if isinstance(control.budget, BudgetHolds):  # what it held and did not send goes back
        control.budget.release(stats.calls_sent)
    ending = {"finished_at": time.time(), "exit_code": exit_code, "stop_reason": control.reason}
    try:  # first: the history, the metrics and the summary then tell the same exit
        history.update(run.run_id, **ending, limits=document["limits"], **run.progress_columns())
    except StateError as exc:
        log_event("history_not_updated", level=logging.WARNING, error=str(exc))
        exit_code = _file_error(document, f"the run's history row was not completed: {exc}")
    if settings.metrics_textfile is not None:  # before the summary: both tell the same exit
        try:
            write_metrics(settings.metrics_textfile, document, output=str(paths.results))
        except OSError as exc:
            exit_code = _file_error(
                document, f"{settings.metrics_textfile}: cannot write the metrics: {exc.strerror}"
            )
            record_history(history, run.run_id, {"exit_code": exit_code})
    try:
        write_json_atomic(paths.summary, document)
    except OSError as exc:
        record_history(history, run.run_id, {"finished_at": time.time(),
                                      "exit_code": ExitCode.FILE_ERROR,
                                      "stop_reason": control.reason, **run.progress_columns()})  # fmt: skip
        raise StateError(
            f"{paths.summary}: cannot write the summary ({exc.strerror}); every result written "
            "is safe: fix the cause, then run the same command to resume",
            calls_sent=stats.calls_sent,
        ) from None
    if index is not None:
        try:
            index.fold()
            index.add_other_records(run.admission.other_records)
            index.save_snapshot(state.snapshot())  # the next start reads this, not the files
        except StateError as exc:
            log_event("ledger_not_updated", level=logging.WARNING, error=str(exc))
    log_event(
        "stop",
        run_id=run.run_id,
        exit_code=exit_code,
        reason=control.reason or "finished",
        counts=stats.counts(),
        calls=stats.calls,
        credits=stats.credits,
    )
    return RunSummary.from_document(document)


def _file_error(document: dict[str, Any], why: str) -> ExitCode:
    """A file failed at the end of a run that sent calls: exit 6, resumable, and why."""
    document["exit_code"] = ExitCode.FILE_ERROR
    document["exit_rule"] = {**document.get("exit_rule", {}), "reason": f"stopped: {why}"}
    document["resumable"] = True
    document["file_error"] = why
    return ExitCode.FILE_ERROR


def _jobs_summary(run: _Run) -> dict[str, Any]:
    """The async section of the summary."""
    stats = run.stats
    return {
        "mode": run.settings.mode,
        "carried_from_earlier_runs": len(run.carried_jobs),
        "submitted": stats.submitted,
        "awaiting_result": stats.awaiting,
        "polls": stats.polls,
        "poll_errors": stats.poll_errors,
        "given_up_after_job_timeout": stats.jobs_given_up,
        "lost_not_resubmitted": stats.jobs_lost,
        "callbacks": {"received": stats.callbacks, "refused": stats.callbacks_refused},
        "jobs_file": str(run.paths.jobs),
    }
