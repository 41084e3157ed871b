"""Admission: which input records become work, in input order, and the source task feeding
the workers.

Contract: :meth:`Admission.admit` takes each record the reader yields and returns a
:class:`WorkItem` to send, :data:`SKIP` (already done, or failed for good and not retried), or
None (rejected: a bad row or a duplicate, written to the rejects file when one is given).
Every record is counted in :class:`RunStats` and followed by the resume :class:`Frontier`.
A dry run calls ``admit`` with no rejects file. :meth:`Admission.feed` is the source task:
it reads records in a thread, batch by batch, and puts work into the bounded stream until
the input ends, ``--limit`` is reached or the run stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from octave_bulk.agents import get_agent
from octave_bulk.errors import OctaveBulkError, StopReason
from octave_bulk.identity import person_key
from octave_bulk.input.records import Contact, Reject
from octave_bulk.run.build import RequestBuilder, request_spec
from octave_bulk.run.control import RunControl
from octave_bulk.run.summary import RunStats
from octave_bulk.settings.model import Settings
from octave_bulk.state.cursor import COUNTED, Frontier, ResumeCursor
from octave_bulk.state.files import NdjsonAppender
from octave_bulk.state.idset import id_key
from octave_bulk.state.ledger import LedgerState

__all__ = ["SKIP", "Admission", "WorkItem"]

_READ_BATCH = 64  # records read per hop to the reader thread
_CRM_IDS = ("crmContactId", "crmLeadId", "crmAccountId")


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request to send: its id, its body as sent, and the body as data for the records."""

    request_id: str
    body: bytes
    contact: dict[str, Any]


SKIP = WorkItem("", b"", {})
"""Admitted but not to be sent: already done, or failed for good."""


class Admission:
    """Turns records into work for one run.

    Args:
        settings: ``limit`` and ``retry_failed`` are read here; the request spec comes from it.
        stats: counters updated per record.
        state: what the output already holds (done-set, permanent failures).
        start: the resume cursor the reader skipped to (its rows count as read).
        control: the run's stop state (``feed`` stops with it, and stops it on a broken input).
        expected_rows: input size, to size the duplicate table.
        paid_elsewhere: the builder's rule for people whose record paid for before is in the
            input (``ResendReport.paid_elsewhere``, from the pass before the run).
    """

    def __init__(
        self,
        settings: Settings,
        stats: RunStats,
        state: LedgerState,
        start: ResumeCursor,
        control: RunControl,
        expected_rows: int | None = None,
        *,
        paid_elsewhere: Callable[[int, int], str | None] | None = None,
    ) -> None:
        self.settings, self.stats, self.state, self.control = settings, stats, state, control
        self.start = start
        self.frontier = Frontier(start)
        for name in COUNTED:  # the rows skipped unread count as a full re-read would
            setattr(stats, name, getattr(stats, name) + start.counts[name])
        stats.rejects_by_reason.update(start.rejects_by_reason)
        self.builder = RequestBuilder(
            request_spec(settings),
            expected_rows or 1024,
            agent=get_agent(settings.agent_type),
            key_field=settings.key,
            paid_elsewhere=paid_elsewhere,
        )
        self.input_error: OctaveBulkError | None = None
        self.other_records: list[tuple[int, list[str]]] = []
        """(person, CRM ids) of rows rejected as a person seen before (for the ledger: a
        write-back must reach every record of a person)."""

    def admit(
        self, record: Contact | Reject, end_line: int, rejects: NdjsonAppender | None
    ) -> WorkItem | None:
        """A work item, :data:`SKIP` (already done / failed for good), or None (rejected).

        ``end_line`` is the input line the record ends on; ``rejects`` is where rejects go
        (None: nowhere, for a dry run)."""
        stats, frontier = self.stats, self.frontier
        rejects_size = rejects.size if rejects is not None else 0
        stats.read += 1
        if isinstance(record, Contact):
            for code, _ in record.notes:  # a value left out (a junk email, an unknown language)
                stats.notes_by_code[code] += 1
            built = self.builder.build(record)
            if isinstance(built, Reject):
                record = built
            elif built.key in self.state.done:
                stats.skipped_done += 1
                frontier.add(end_line, rejects_size, "skipped_done")
                return SKIP
            elif self.state.awaiting and built.request_id in self.state.awaiting:
                # An earlier run's async job: its result is polled, never paid again.
                frontier.add(end_line, rejects_size, "skipped_done", open_id=built.request_id)
                return SKIP
            elif (
                self.state.lost_jobs
                and built.request_id in self.state.lost_jobs
                and not self.settings.resubmit_expired
            ):  # paid by an earlier run, its job line lost: paid again only when asked
                stats.jobs_lost += 1
                frontier.add(end_line, rejects_size, "skipped_done", open_id=built.request_id)
                return SKIP
            elif built.key in self.state.errors.permanent and not self.settings.retry_failed:
                stats.skipped_failed += 1
                frontier.add(end_line, rejects_size, "skipped_failed")
                return SKIP
            else:
                frontier.add(end_line, rejects_size, "skipped_done", open_id=built.request_id)
                return WorkItem(built.request_id, orjson.dumps(built.wire), built.record)
        if record.reason == "duplicate" and isinstance(record.row, dict):
            self._note_other_record(record.row)
        kind = "duplicate" if record.reason == "duplicate" else "rejected"
        setattr(stats, kind, getattr(stats, kind) + 1)
        stats.rejects_by_reason[record.reason] += 1
        if rejects is not None:
            rejects.write(orjson.dumps(record.to_record(), default=str) + b"\n")
            rejects_size = rejects.size
        frontier.add(end_line, rejects_size, kind, reason=record.reason)
        return None

    def _note_other_record(self, row: dict[str, Any]) -> None:
        ids = [str(row[name]) for name in _CRM_IDS if row.get(name)]
        person = person_key(row, self.settings.key, self.settings.agent_type)
        if ids and person is not None:
            self.other_records.append((id_key(person), ids))

    async def feed(
        self,
        records: Iterable[Contact | Reject],
        line_of: Callable[[], int],
        work: MemoryObjectSendStream[WorkItem],
        rejects: NdjsonAppender,
    ) -> None:
        """The source task: admit records and send the work (see the module docstring)."""
        control, limit = self.control, self.settings.limit
        async with work:
            iterator = iter(records)
            accepted = self.start.counts["skipped_done"] + self.start.counts["skipped_failed"]
            while not control.stopping and (limit is None or accepted < limit):
                try:
                    # Abandoned on a hard stop: a reader blocked on a pipe must not hold us.
                    batch = await anyio.to_thread.run_sync(
                        _take, iterator, _READ_BATCH, line_of, abandon_on_cancel=True
                    )
                except OctaveBulkError as exc:  # the input broke mid-file (found too late)
                    self.input_error = exc
                    control.stop(StopReason.INPUT_ERROR)
                    break
                if not batch:
                    self.stats.input_read = True
                    break
                for admitted, (record, end_line) in enumerate(batch, start=1):  # noqa: B007 - read after
                    item = self.admit(record, end_line, rejects)
                    if item is not None:
                        accepted += 1
                        if item is not SKIP:
                            try:
                                await _put(work, item)
                            except anyio.BrokenResourceError:  # every worker has stopped
                                return
                            self.stats.queued += 1
                    if control.stopping or (limit is not None and accepted >= limit):
                        break
                # A short batch is the input's end: every row read once all of it is admitted.
                self.stats.input_read = admitted == len(batch) < _READ_BATCH
            self.stats.input_done = True


async def _put(stream: MemoryObjectSendStream[WorkItem], item: WorkItem) -> None:
    """Send without a checkpoint when the stream has room (see ``worker._next_item``)."""
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


def _take(
    records: Iterator[Contact | Reject], count: int, line_of: Callable[[], int]
) -> list[tuple[Contact | Reject, int]]:
    """Up to ``count`` records, each with the input line it ends on."""
    batch = []
    for record in records:
        batch.append((record, line_of()))
        if len(batch) >= count:
            break
    return batch
