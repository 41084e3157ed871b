"""Async job handles: which submitted contacts still await their result.

``OUT.jobs.ndjson`` gets one line per accepted submit - ``requestId`` (ours), ``handle``
(Octave's async ``requestId``), ``runId``, ``submittedAt`` and the contact - made durable in
the sink's group commit before anything else is done with the handle, and one ``settled``
line once the job's result (or failure) is durable in ``OUT.ndjson`` / ``OUT.errors.ndjson``.
A kill -9 therefore loses no paid call: the next run polls every handle without a
``settled`` line instead of submitting its contact again. A ``settled`` line lost to the kill
costs one poll: the result is then found in the done-set and not written twice.

At start (:func:`load_jobs`, under the run lock) a torn last line is repaired, a line that is
not a whole record is copied to ``OUT.corrupt.ndjson`` (as a bad results line is), and the
file is rewritten without its settled jobs and bad lines, so it holds at most the jobs in
flight. Jobs are keyed by (handle, requestId): a handle the server gave twice loses neither.

The file can still be damaged by hand or by the disk (a line lost, the file cut or deleted),
so the file store's start (``state/file_store.py``) also asks the ledger (``state/index.py``): a
submit recorded there,
whose job has no outcome and no line here, was paid and cannot be polled (the contact was not
saved with it). Its contact is *lost*, never submitted again silently: the run skips and
reports it, and ``--resubmit-expired`` pays for it again on purpose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.observe.log import log_event
from octave_bulk.state.files import repair_tail, write_atomic
from octave_bulk.state.scan import complete_lines, quarantine_lines
from octave_bulk.utc import utc_iso

_Key = tuple[str, str]  # (handle, requestId)

__all__ = ["PendingJob", "load_jobs", "settled_line", "submitted_line"]


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


def load_jobs(path: Path, *, quarantine: Path | None = None) -> list[PendingJob]:
    """The jobs without a ``settled`` line, in submit order. Given ``quarantine`` (the run,
    under its lock), the file's bad lines are copied there and the file is rewritten to hold
    only those jobs; readers that must not write pass none."""
    compact = quarantine is not None
    if compact:
        repair_tail(path)
    pending: dict[_Key, PendingJob] = {}
    records: dict[_Key, bytes] = {}
    settled, bad, offset = 0, [], 0
    for number, line in enumerate(complete_lines(path), 1):
        start, offset = offset, offset + len(line)
        record = _record(line)
        handle = record.get("handle") if record is not None else None
        rid = record.get("requestId") if record is not None else None
        if record is None or not isinstance(handle, str) or not isinstance(rid, str):
            bad.append((start, number, line))
            continue
        key = (handle, rid)
        if "settled" in record:
            settled += pending.pop(key, None) is not None
            records.pop(key, None)
            continue
        contact, at = record.get("contact"), record.get("submittedAt")
        if not isinstance(contact, dict) or not isinstance(at, int | float):
            bad.append((start, number, line))
            continue
        pending[key] = PendingJob(rid, handle, contact, float(at))
        records[key] = line
    if quarantine is not None and bad:
        quarantine_lines(quarantine, path, bad)
        log_event(
            "corrupt_jobs",
            level=logging.WARNING,
            lines=len(bad),
            action="copied to the quarantine file; the ledger tells which submits they were",
            quarantine=str(quarantine),
        )
    if compact and (settled or bad):
        write_atomic(path, b"".join(records.values()))
    return list(pending.values())


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
