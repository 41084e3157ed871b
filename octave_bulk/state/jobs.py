"""Async job handles: which submitted contacts still await their result.

``OUT.jobs.ndjson`` gets one line per accepted submit - ``requestId`` (ours), ``handle``
(Octave's async ``requestId``), ``runId``, ``submittedAt`` and the contact - made durable in
the sink's group commit before anything else is done with the handle, and one ``settled``
line once the job's result (or failure) is durable in ``OUT.ndjson`` / ``OUT.errors.ndjson``.
A kill -9 therefore loses no paid call: the next run polls every handle without a
``settled`` line instead of submitting its contact again. A ``settled`` line lost to the kill
costs one poll: the result is then found in the done-set and not written twice.

At start (:func:`load_jobs`, under the run lock) a torn last line is repaired and the file is
rewritten without its settled jobs, so it holds at most the jobs in flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from octave_bulk.state.files import NdjsonAppender, iter_ndjson, repair_tail, write_atomic
from octave_bulk.state.idset import id_key
from octave_bulk.state.paths import OutputPaths
from octave_bulk.utc import utc_iso

if TYPE_CHECKING:
    from octave_bulk.state.ledger import LedgerState

__all__ = ["PendingJob", "carried_jobs", "load_jobs", "settled_line", "submitted_line"]


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A submitted contact awaiting its result."""

    request_id: str
    handle: str
    contact: dict[str, Any]
    submitted_at: float
    """UNIX time of the submit's answer."""


def submitted_line(job: PendingJob, run_id: str) -> bytes:
    """The line recording an accepted submit."""
    record = {
        "requestId": job.request_id,
        "handle": job.handle,
        "runId": run_id,
        "submittedAt": job.submitted_at,
        "submittedAtIso": utc_iso(job.submitted_at),
        "contact": job.contact,
    }
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def settled_line(request_id: str, handle: str, state: str) -> bytes:
    """The line recording that a job's outcome is durable (``state``: ok, failed, expired)."""
    record = {"requestId": request_id, "handle": handle, "settled": state}
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def load_jobs(path: Path, *, compact: bool = True) -> list[PendingJob]:
    """The jobs without a ``settled`` line, in submit order; with ``compact``, the file is
    rewritten to hold only them (readers that must not write pass False)."""
    if compact:
        repair_tail(path)
    pending: dict[str, PendingJob] = {}
    records: dict[str, dict[str, Any]] = {}
    settled = 0
    for record in iter_ndjson(path):
        handle = record.get("handle")
        if not isinstance(handle, str):
            continue
        if "settled" in record:
            settled += pending.pop(handle, None) is not None
            records.pop(handle, None)
            continue
        rid, contact, at = record.get("requestId"), record.get("contact"), record.get("submittedAt")
        if isinstance(rid, str) and isinstance(contact, dict) and isinstance(at, int | float):
            pending[handle] = PendingJob(rid, handle, contact, float(at))
            records[handle] = record
    if compact and settled:
        lines = b"".join(
            orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in records.values()
        )
        write_atomic(path, lines)
    return list(pending.values())


def carried_jobs(paths: OutputPaths, state: LedgerState) -> list[PendingJob]:
    """The async jobs earlier runs left awaiting (their contacts are not submitted again); a
    job whose result is already durable gets its lost ``settled`` line now."""
    if not paths.jobs.exists():
        return []
    awaited: list[PendingJob] = []
    done: list[PendingJob] = []
    for job in load_jobs(paths.jobs):
        (done if id_key(job.request_id) in state.done else awaited).append(job)
    if done:
        appender = NdjsonAppender(paths.jobs)
        for job in done:
            appender.write(settled_line(job.request_id, job.handle, "ok"))
        appender.close()
    state.awaiting = frozenset(job.request_id for job in awaited)
    # A submit whose handle line made it to the file before the kill is known, not unknown
    # (its in-flight slot is released only once the line is fsynced).
    state.outcome_unknown = [rid for rid in state.outcome_unknown if rid not in state.awaiting]
    return awaited
