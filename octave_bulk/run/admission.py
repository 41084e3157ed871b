"""Admission: the one classifier of input records - which become work, in input order - and
the source task feeding the workers.

Contract: :meth:`Admission.admit` takes each record the reader yields, returns a
:class:`WorkItem` to send, :data:`SKIP` (already done, awaited, or failed for good and not
retried), or None (rejected: a bad row or a duplicate; or left out by ``--where``), and says
why in :attr:`Admission.verdict` (a :class:`Verdict`). Every record is counted in
:class:`RunStats` and followed by the resume :class:`Frontier`; ``--limit`` counts the records
admitted (:meth:`Admission.take`, :attr:`Admission.full`). ``validate``, the dry run,
``plan``, the re-send guard and the credit check read the input through
:meth:`Admission.admit_all` (one pass, the same verdicts); the run through
:meth:`Admission.feed`, the source task: it reads records in a thread, batch by batch, and
puts work into the bounded stream until the input ends, ``--limit`` is reached or the run
stops. So validate, ``plan``, ``--dry-run`` and ``run`` count alike by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from octave_bulk.agents import get_agent
from octave_bulk.errors import OctaveBulkError, StopReason
from octave_bulk.input.records import Contact, Reject
from octave_bulk.run.build import RequestBuilder, request_spec
from octave_bulk.run.control import RunControl
from octave_bulk.run.summary import RunStats
from octave_bulk.settings.model import Settings
from octave_bulk.state.cursor import COUNTED, Frontier, ResumeCursor
from octave_bulk.state.files import NdjsonAppender
from octave_bulk.state.store import StoreView

__all__ = ["SKIP", "Admission", "Verdict", "WorkItem"]

_READ_BATCH = 64  # records read per hop to the reader thread
_CRM_IDS = ("crmContactId", "crmLeadId", "crmAccountId")


class Verdict(StrEnum):
    """What admission made of one record."""

    SEND = "send"
    DONE = "skipped_done"
    """Its requestId has a durable success."""
    AWAITED = "awaited"
    """An earlier run's async job for it awaits its result: polled, never paid again."""
    JOB_LOST = "job_lost"
    """Paid by an earlier run, its job line lost: sent again only with resubmit_expired."""
    FAILED = "skipped_failed"
    """Failed for good before, not retried (no ``--retry-failed``)."""
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    FILTERED = "filtered_out"
    """An earlier run's result ``--where`` leaves out: neither sent nor rejected."""


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One request to send: its id, its body as sent, the body as data for the records, and
    its person (``BuiltRequest.person``: written as the result's ``personKey``)."""

    request_id: str
    body: bytes
    contact: dict[str, Any]
    person: int | None = None


SKIP = WorkItem("", b"", {})
"""Admitted but not to be sent: already done, awaited, or failed for good."""


class Admission:
    """Turns records into work for one run, or one pass of a dry run, ``plan`` or ``validate``.

    Args:
        settings: ``limit``, ``retry_failed``, ``resubmit_expired``, ``key`` and the agent are
            read here; the request spec comes from it. None with ``builder`` (``validate``:
            no limit, no output).
        stats: counters updated per record.
        state: what the output already holds (done-set, permanent failures).
        start: the resume cursor the reader skipped to (its rows count as read).
        control: the run's stop state (``feed`` stops with it, and stops it on a broken
            input); None for a pass that only counts.
        expected_rows: input size, to size the duplicate table.
        paid_elsewhere: the builder's rule for people whose record paid for before is in the
            input (``ResendReport.paid_elsewhere``, from the pass before the run).
        builder: the request builder, when not made from ``settings``.
        follow: whether the resume frontier follows the records (the run: its cursor); a
            pass that only counts keeps no frontier (no span per record to send).
    """

    def __init__(
        self,
        settings: Settings | None,
        stats: RunStats,
        state: StoreView | None = None,
        start: ResumeCursor | None = None,
        control: RunControl | None = None,
        expected_rows: int | None = None,
        *,
        paid_elsewhere: Callable[[int, int], str | None] | None = None,
        builder: RequestBuilder | None = None,
        follow: bool = True,
    ) -> None:
        self.stats, self.state, self.control = stats, state, control
        self.start = start = start or ResumeCursor()
        self.limit = settings.limit if settings is not None else None
        self.retry_failed = settings is not None and settings.retry_failed
        self.resubmit_expired = settings is not None and settings.resubmit_expired
        self.frontier = Frontier(start) if follow else _Unfollowed(start)
        for name in COUNTED:  # the rows skipped unread count as a full re-read would
            setattr(stats, name, getattr(stats, name) + start.counts[name])
        stats.rejects_by_reason.update(start.rejects_by_reason)
        if builder is None:
            if settings is None:
                raise ValueError("Admission needs settings or a builder")
            builder = RequestBuilder(
                request_spec(settings),
                expected_rows or 1024,
                agent=get_agent(settings.agent_type),
                key_field=settings.key,
                paid_elsewhere=paid_elsewhere,
            )
        self.builder = builder
        self.accepted = start.counts["skipped_done"] + start.counts["skipped_failed"]
        """Records admitted (to send or skipped): what ``--limit`` counts."""
        self.verdict = Verdict.SEND
        """What the last record admitted came to."""
        self.input_error: OctaveBulkError | None = None
        self.other_records: list[tuple[int, list[str]]] = []
        """(person, CRM ids) of rows rejected as a person seen before (for the ledger: a
        write-back must reach every record of a person)."""

    @property
    def full(self) -> bool:
        """Whether ``--limit`` records are admitted."""
        return self.limit is not None and self.accepted >= self.limit

    def admit(
        self, record: Contact | Reject, end_line: int, rejects: NdjsonAppender | None
    ) -> WorkItem | None:
        """A work item, :data:`SKIP` (already done / failed for good), or None (rejected,
        left out); :attr:`verdict` says which.

        ``end_line`` is the input line the record ends on; ``rejects`` is where rejects go
        (None: nowhere, for a dry run)."""
        stats, frontier, state = self.stats, self.frontier, self.state
        rejects_size = rejects.size if rejects is not None else 0
        stats.read += 1
        if isinstance(record, Contact):
            for code, _ in record.notes:  # a value left out (a junk email, an unknown language)
                stats.notes_by_code[code] += 1
            built = self.builder.build(record)
            if isinstance(built, Reject):
                record = built
            else:
                verdict = self._verdict(built.key, built.request_id, state)
                self.verdict = verdict
                if verdict is Verdict.SEND:
                    frontier.add(end_line, rejects_size, "skipped_done", open_id=built.request_id)
                    body = orjson.dumps(built.wire)
                    return WorkItem(built.request_id, body, built.record, built.person)
                if verdict is Verdict.DONE:
                    stats.skipped_done += 1
                    frontier.add(end_line, rejects_size, "skipped_done")
                elif verdict is Verdict.FAILED:
                    stats.skipped_failed += 1
                    frontier.add(end_line, rejects_size, "skipped_failed")
                else:  # awaited, or a lost job: settled as done once polled / never paid
                    if verdict is Verdict.JOB_LOST:
                        stats.jobs_lost += 1
                    frontier.add(end_line, rejects_size, "skipped_done", open_id=built.request_id)
                return SKIP
        if record.reason == "duplicate":
            self.verdict = Verdict.DUPLICATE
            last = self.builder.last
            if last is not None and last.person is not None:
                self._note_other_record(last.person, last.record)
        elif record.reason == "filtered_out":
            self.verdict = Verdict.FILTERED
        else:
            self.verdict = Verdict.REJECTED
        kind = self.verdict.value
        setattr(stats, kind, getattr(stats, kind) + 1)
        if self.verdict is not Verdict.FILTERED:
            stats.rejects_by_reason[record.reason] += 1
        if rejects is not None:
            rejects.write(orjson.dumps(record.to_record(), default=str) + b"\n")
            rejects_size = rejects.size
        frontier.add(end_line, rejects_size, kind, reason=record.reason)
        return None

    def _verdict(self, key: int, request_id: str, state: StoreView | None) -> Verdict:
        """What a valid, first-of-its-person request comes to against the output."""
        if state is None:
            return Verdict.SEND
        if state.is_done(key):
            return Verdict.DONE
        if state.awaiting and request_id in state.awaiting:
            return Verdict.AWAITED
        if state.lost_jobs and request_id in state.lost_jobs and not self.resubmit_expired:
            return Verdict.JOB_LOST
        if state.failed_for_good(key) and not self.retry_failed:
            return Verdict.FAILED
        return Verdict.SEND

    def take(
        self, record: Contact | Reject, end_line: int, rejects: NdjsonAppender | None
    ) -> WorkItem | None:
        """:meth:`admit`, counted against ``--limit``; the item to send, or None."""
        item = self.admit(record, end_line, rejects)
        if item is None:
            return None
        self.accepted += 1
        return None if item is SKIP else item

    def admit_all(
        self,
        records: Iterable[Contact | Reject],
        rejects: NdjsonAppender | None = None,
        *,
        on_record: Callable[[Admission, bool], None] | None = None,
        on_send: Callable[[WorkItem, int], None] | None = None,
    ) -> None:
        """One pass, as the run's source task admits (no line numbers: no cursor kept):
        every record until the input ends or ``--limit`` is reached. ``on_send`` sees each
        item to send, with its record's line; ``on_record`` (the re-send guard) sees every valid record, with whether
        the builder kept it (not a duplicate): past ``--limit`` the records are still built
        for it, not counted."""
        stats, builder = self.stats, self.builder
        for record in records:
            valid = isinstance(record, Contact)
            if not self.full:
                item = self.take(record, 0, rejects)
                if item is not None:
                    stats.queued += 1
                    if on_send is not None:
                        on_send(item, record.line)
                kept = self.verdict not in _NOT_KEPT
            elif on_record is None:
                break
            elif isinstance(record, Contact):
                kept = not isinstance(builder.build(record), Reject)
            else:
                continue
            if on_record is not None and valid and builder.last is not None:
                on_record(self, kept)

    def _note_other_record(self, person: int, record: dict[str, Any]) -> None:
        ids = [str(record[name]) for name in _CRM_IDS if record.get(name)]
        if ids:
            self.other_records.append((person, ids))

    async def feed(
        self,
        records: Iterable[Contact | Reject],
        line_of: Callable[[], int],
        work: MemoryObjectSendStream[WorkItem],
        rejects: NdjsonAppender,
    ) -> None:
        """The source task: admit records and send the work (see the module docstring)."""
        control = self.control
        if control is None:
            raise ValueError("feed needs the run's control")
        async with work:
            iterator = iter(records)
            while not control.stopping and not self.full:
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
                    item = self.take(record, end_line, rejects)
                    if item is not None:
                        try:
                            await _put(work, item)
                        except anyio.BrokenResourceError:  # every worker has stopped
                            return
                        self.stats.queued += 1
                    if control.stopping or self.full:
                        break
                # A short batch is the input's end: every row read once all of it is admitted.
                self.stats.input_read = admitted == len(batch) < _READ_BATCH
            self.stats.input_done = True


_NOT_KEPT = frozenset({Verdict.REJECTED, Verdict.DUPLICATE, Verdict.FILTERED})


class _Unfollowed(Frontier):
    """The frontier of a pass that keeps no cursor: records are not followed."""

    def add(
        self,
        end_line: int,
        rejects_bytes: int,
        kind: str,
        *,
        open_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        return None


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
