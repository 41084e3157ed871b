"""The dry run: every row read, mapped, validated and built as ``run`` would, and the re-send
guard's numbers, and the async jobs the output awaits (not counted as to send); nothing sent, nothing written (the output's files are read, never repaired: a
run may be going)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from octave_bulk.input.intake import open_contacts
from octave_bulk.run.admission import SKIP, Admission
from octave_bulk.run.control import RunControl
from octave_bulk.run.guard import check_resend
from octave_bulk.run.summary import RunStats, RunSummary, completed_exit
from octave_bulk.settings.model import Settings
from octave_bulk.state.cursor import ResumeCursor
from octave_bulk.state.file_view import LedgerState, read_state
from octave_bulk.state.idset import id_key
from octave_bulk.state.jobs import load_jobs
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.preflight import check_agent_of_output

__all__ = ["awaited_jobs", "dry_run"]


def awaited_jobs(paths: OutputPaths, state: LedgerState) -> list[str]:
    """The requestIds of the async jobs the output awaits (submitted, no result yet): a run
    polls them and never pays for them again (read-only: the jobs file is not compacted)."""
    jobs = load_jobs(paths.jobs) if paths.jobs.exists() else []
    return [job.request_id for job in jobs if id_key(job.request_id) not in state.done]


def dry_run(input_path: str | Path, paths: OutputPaths, settings: Settings) -> RunSummary:
    """Read and build every request, print nothing, send nothing, write nothing (an output
    that holds another agent's results is refused, as a run would be)."""
    check_agent_of_output(paths, settings.agent_type)
    stats = RunStats()
    # Read-only: a dry run must not repair (or race) the files of a run that may be going.
    state = read_state(paths, settings.ledger)
    awaited = awaited_jobs(paths, state)
    state.awaiting = frozenset(awaited)  # polled by the run, never submitted again
    example: dict[str, Any] | None = None
    resend = check_resend(input_path, settings, state)
    with open_contacts(input_path, settings) as reader:
        control = RunControl(settings, stats, "dry-run")
        admission = Admission(
            settings,
            stats,
            state,
            ResumeCursor(),
            control,
            paid_elsewhere=resend.paid_elsewhere(state.is_done),
        )
        for record in reader:
            item = admission.admit(record, 0, None)
            if item is not None and item is not SKIP:
                stats.queued += 1
                example = example or item.contact
            if settings.limit is not None and stats.queued + stats.skipped_done >= settings.limit:
                break
    rule = completed_exit(stats, settings.exit_conditions)
    return RunSummary.from_document(
        stats.summary(
            dry_run=True,
            resend=resend.to_dict(),
            would_send=stats.queued,
            awaiting=len(awaited),
            example_request=example,
            exit_code=rule.code,
            exit_rule=rule.to_dict(),
            settings=settings.redacted(),
        )
    )
