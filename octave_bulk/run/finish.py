"""The end of a run: its summary document, the metrics, the store's finish (the ledger's fold
and snapshot), the history row, the ``stop`` event.

Contract: :func:`finish_run` takes a run whose dispatch is over (done, stopped or cancelled,
every outcome durable) - anything with the attributes of :class:`FinishingRun`, so that this
module does not import the engine - and returns its :class:`RunSummary`, written to
``OUT.summary.json``.
The run's history row is completed first, then the metrics file, then the summary, so that
all three tell the same exit code: a history row or a metrics file that cannot be written is
exit 6 (stopped after sending; the ``--budget`` does not depend on the row: ``spend.py``), a
summary that cannot be written is a :class:`StateError` carrying the calls sent (exit 6). The
store's finish (``Store.finish``: the index folded, the snapshot) is never worth the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from octave_bulk.errors import ExitCode, StateError
from octave_bulk.input.reader import ContactReader
from octave_bulk.observe.log import log_event
from octave_bulk.observe.metrics import write_metrics
from octave_bulk.run.admission import Admission
from octave_bulk.run.control import RunControl
from octave_bulk.run.credits import CreditsCheck
from octave_bulk.run.jobs import Jobs
from octave_bulk.run.spend import BudgetHolds
from octave_bulk.run.summary import ExitRule, RunStats, RunSummary
from octave_bulk.settings.model import Settings
from octave_bulk.state.cursor import ResumeCursor
from octave_bulk.state.files import write_json_atomic
from octave_bulk.state.jobs import PendingJob
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.store import FinishedRun, RunRecords, Store, StoreCounts
from octave_bulk.utc import utc_iso

__all__ = ["FinishedInput", "FinishingRun", "finish_run", "record_history"]


class FinishingRun(Protocol):
    """What :func:`finish_run` reads of a run (the engine's run has these)."""

    settings: Settings
    paths: OutputPaths
    run_id: str
    stats: RunStats
    control: RunControl
    credits: CreditsCheck
    admission: Admission
    jobs: Jobs | None
    carried_jobs: list[PendingJob]

    def exit_rule(self) -> ExitRule: ...

    def remember_limits(self) -> dict[str, Any]: ...

    def progress_columns(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class FinishedInput:
    """What the run read: its path, the reader (format, encoding, mapping), where it resumed."""

    path: str | Path
    reader: ContactReader
    start: ResumeCursor
    cursor_note: str


def record_history(history: RunRecords, run_id: str, columns: dict[str, Any]) -> None:
    """Update the run's history row; a ledger that cannot be written (locked by another
    writer past the busy timeout, a full disk) is logged, never worth the run."""
    try:
        history.update(run_id, **columns)
    except StateError as exc:
        log_event("history_not_updated", level=logging.WARNING, error=str(exc))


async def finish_run(
    run: FinishingRun,
    given: FinishedInput,
    *,
    store: Store,
    outcome_unknown: list[str],
    counts: StoreCounts,
) -> RunSummary:
    """Write what the run did (see the module docstring) and return its summary;
    ``outcome_unknown`` and ``counts``: the store's view at the start of the run."""
    settings, paths, reader, start = run.settings, run.paths, given.reader, given.start
    cursor_note, history = given.cursor_note, store.runs
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
        already_done_before_run=counts.results,
        resume_cursor={"rows_skipped_unread": start.counts["read"], "note": cursor_note},
        repaired_bytes=counts.repaired_bytes,
        corrupt_result_lines=counts.bad_lines,
        unknown_request_ids=outcome_unknown[:100],
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
    await store.finish(FinishedRun(run.admission.other_records))
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


def _jobs_summary(run: FinishingRun) -> dict[str, Any]:
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
