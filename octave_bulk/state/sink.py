"""The sink: outcomes become NDJSON lines, made durable by group commit.

Each record is one ``os.write`` of one whole line (never two records in one write, never a
line split over two), so a kill -9 can tear at most the line being written, which the next
start repairs. Lines are fsynced in groups: after ``batch`` records or ``interval`` seconds,
whichever comes first, and always when the stream ends. A result counts as done only once its
group is durable; then its in-flight slot is released.

Record shapes (docs/design.md, section "Files") - ``requestId`` is always the first key,
for the resume scan:

- results: ``requestId, runId, personKey, [agentType,] contact, response, attempts,
  latencyMs, completedAt`` (``agentType`` for every agent but the Sequence Agent)
- errors: ``requestId, runId, contact, error{kind, status, message, retryable}, attempts,
  failedAt``

``runId`` names the run that wrote the line (the summary's ``run_id``): results of one night
are the lines of its run. ``personKey`` is the hashed person key
(16 hex digits of its ``id_key``), near the start so that a scan finds it: the person the
request builder found once per contact (``BuiltRequest.person``, from the recorded contact),
carried here on the outcome.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from octave_bulk.errors import ApiError, StateError
from octave_bulk.identity import person_key
from octave_bulk.state.files import NdjsonAppender
from octave_bulk.state.idset import id_key
from octave_bulk.state.jobs import PendingJob, settled_line, submitted_line
from octave_bulk.state.rows import CallRow, OutcomeRow
from octave_bulk.state.store import Group
from octave_bulk.utc import utc_iso

__all__ = [
    "Attempt",
    "Failure",
    "Sink",
    "Submitted",
    "Success",
    "failure_line",
    "success_line",
]

Attempt = tuple[float, float, int | None, str]
"""One call as the ledger keeps it: (sent at, answered at, HTTP status, outcome), UNIX times;
the outcome is ``success`` or the error's kind."""


@dataclass(frozen=True, slots=True)
class Success:
    """A contact's sequence, received complete and valid."""

    request_id: str
    contact: dict[str, Any]
    raw: bytes
    credits: float
    attempts: int
    latency_ms: int
    slot: int | None
    calls: tuple[Attempt, ...] = ()
    handle: str | None = None
    """The async job this result came from (None in sync mode)."""
    usage_anomaly: str | None = None
    """Why ``_metadata.usage`` was not counted as given (``agents.fields.read_usage``)."""
    person: int | None = None
    """The contact's person (``BuiltRequest.person``); None: not carried, taken from
    ``contact`` (an async job of an earlier run)."""


@dataclass(frozen=True, slots=True)
class Submitted:
    """An async submit the API accepted: its job handle must be durable before anything
    else is done with it (``OUT.jobs.ndjson``, :mod:`octave_bulk.state.jobs`)."""

    job: PendingJob
    attempts: int
    slot: int
    calls: tuple[Attempt, ...] = ()
    person: int | None = None
    """As :attr:`Success.person`."""

    @property
    def request_id(self) -> str:
        """Our requestId for the contact."""
        return self.job.request_id

    @property
    def contact(self) -> dict[str, Any]:
        """The contact as sent."""
        return self.job.contact


@dataclass(frozen=True, slots=True)
class Failure:
    """A contact whose attempts in this run ended in failure."""

    request_id: str
    contact: dict[str, Any]
    error: ApiError
    attempts: int
    slot: int | None
    calls: tuple[Attempt, ...] = ()
    handle: str | None = None
    """The async job this failure came from (None in sync mode)."""
    person: int | None = None
    """As :attr:`Success.person`."""


Outcome = Success | Failure | Submitted
_Pending = tuple[Outcome, int, int, bytes]  # (item, offset, person, its line when kept)


def success_line(item: Success, run_id: str, person: int | None, kind: str = "sequence") -> bytes:
    """The results-file line for a success (``person``: the person key's ``id_key``;
    ``kind``: the agent, written as ``agentType`` for every agent but the Sequence Agent)."""
    raw = item.raw
    # The body goes in verbatim; a pretty-printed body would break the one-line rule.
    response: Any = orjson.Fragment(raw) if b"\n" not in raw else orjson.loads(raw)
    record = {
        "requestId": item.request_id,
        "runId": run_id,
        "personKey": None if person is None else f"{person:016x}",
        **({} if kind == "sequence" else {"agentType": kind}),
        "contact": item.contact,
        "response": response,
        "attempts": item.attempts,
        "latencyMs": item.latency_ms,
        "completedAt": utc_iso(),
        **({} if item.handle is None else {"asyncHandle": item.handle}),
    }
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)  # no copy to add the b"\n"


def failure_line(item: Failure, run_id: str) -> bytes:
    """The errors-file line for a failure."""
    error = item.error
    record = {
        "requestId": item.request_id,
        "runId": run_id,
        "contact": item.contact,
        "error": {
            "kind": error.kind,
            "status": error.status,
            "message": error.message,
            "retryable": error.retryable,
        },
        "attempts": item.attempts,
        "failedAt": utc_iso(),
        **({} if item.handle is None else {"asyncHandle": item.handle}),
    }
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


class Sink:
    """Takes outcomes from the workers, writes each at once, commits them in groups.

    ``write`` is synchronous: a line is in the file (the OS's page cache) the moment a worker
    hands its outcome over, with no await in between, so not even a hard stop can lose a
    response that was received. ``run`` is the committer: it fsyncs after ``batch`` records
    or ``interval`` seconds, whichever comes first, until :meth:`close`.

    Args:
        results: the results appender.
        errors: the errors appender.
        on_durable: called once per outcome after its line is fsynced, with the outcome and
            its person (the person key's ``id_key``; the requestId's when it names nobody).
        release_slot: frees an in-flight slot (after the outcome is durable).
        batch: records per group commit.
        interval: longest time a record waits for its commit, seconds.
        run_id: the run's id, written into every line.
        key_field: the field that identifies a person (``--key``), else the default key.
        kind: the agent's kind (part of the person key of every agent but ``sequence``).
        record: the store's :meth:`~octave_bulk.state.store.Store.record`, given each group
            (its outcomes and calls) after its fsync and before its outcomes are acknowledged
            (``on_durable``); None records nothing.
        resent: requestIds in flight when an earlier run died: their calls may pay twice.
        keep_lines: hand each outcome's line to ``record`` with its group
            (:attr:`~octave_bulk.state.store.Group.lines`: a shared ledger keeps the bodies);
            otherwise a body is dropped as soon as its line is written.
        jobs: the async job handles file (async mode): a :class:`Submitted` outcome's line
            goes there; a result of a job gets its ``settled`` line after its commit.
    """

    def __init__(
        self,
        *,
        run_id: str,
        key_field: str | None = None,
        kind: str = "sequence",
        results: NdjsonAppender,
        errors: NdjsonAppender,
        on_durable: Callable[[Outcome, int], None],
        release_slot: Callable[[int], None],
        batch: int,
        interval: float,
        record: Callable[[Group], Awaitable[None]] | None = None,
        resent: Collection[str] = (),
        keep_lines: bool = False,
        jobs: NdjsonAppender | None = None,
    ) -> None:
        self._run_id, self._key_field, self._kind = run_id, key_field, kind
        self._record, self._resent = record, frozenset(resent)
        self._keep_lines = keep_lines and record is not None
        self._results, self._errors, self._jobs = results, errors, jobs
        self._on_durable, self._release_slot = on_durable, release_slot
        self._batch, self._interval = batch, interval
        self._pending: list[_Pending] = []
        self._wake = anyio.Event()
        self._closed = False
        self._committing = anyio.Lock()  # one group at a time (the index takes them in order)

    def write(self, item: Outcome) -> None:
        """Write one outcome's line now; it becomes durable at the next group commit."""
        person = item.person
        if person is None:  # not carried (an earlier run's async job): the same rule
            key = person_key(item.contact, self._key_field, self._kind)
            person = id_key(key) if key is not None else None
        line = b""
        if isinstance(item, Submitted):
            if self._jobs is None:
                raise StateError("an async submit needs the jobs file")
            offset = self._jobs.size
            self._jobs.write(submitted_line(item.job, self._run_id))
        elif isinstance(item, Success):
            offset = self._results.size
            line = success_line(item, self._run_id, person, self._kind)
            self._results.write(line)
            # The body is written; do not hold it until the commit (a positional copy:
            # dataclasses.replace costs ~2 us).
            item = Success(
                item.request_id,
                item.contact,
                b"",
                item.credits,
                item.attempts,
                item.latency_ms,
                item.slot,
                item.calls,
                item.handle,
                item.usage_anomaly,
                person,
            )
        else:
            offset = self._errors.size
            line = failure_line(item, self._run_id)
            self._errors.write(line)
        kept = line if self._keep_lines else b""  # held until the group is recorded
        self._pending.append((item, offset, person or id_key(item.request_id), kept))
        if len(self._pending) >= self._batch:
            self._wake.set()

    def close(self) -> None:
        """No more outcomes: the committer commits what is left and returns."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        """Commit in groups until closed, then commit the rest."""
        while not self._closed:
            with anyio.move_on_after(self._interval):
                await self._wake.wait()
            self._wake = anyio.Event()
            await self.commit()
        await self.commit()

    async def commit(self) -> None:
        """fsync what was written, then mark it durable and free its slots.

        When it returns, every outcome written before the call is durable and reported,
        including a group another commit (the committer's) was fsyncing at the time: the
        lock is taken even with nothing pending, and held until the group is reported."""
        # Shielded: what was written must be committed even while the run is cancelled.
        with anyio.CancelScope(shield=True):
            async with self._committing:
                group, self._pending = self._pending, []
                if not group:
                    return
                covered = (self._results.size, self._errors.size)  # every line is in a group
                rows = await anyio.to_thread.run_sync(self._sync_files, group, covered)
                if rows is not None and self._record is not None:
                    await self._record(rows)
                self._report(group)

    def _report(self, group: list[_Pending]) -> None:
        for item, _, person, _ in group:
            if item.slot is not None:
                self._release_slot(item.slot)
            if not isinstance(item, Submitted) and item.handle is not None and self._jobs:
                # After the result is durable, never before (a lost line costs one poll).
                state = "ok" if isinstance(item, Success) else item.error.kind
                self._jobs.write(settled_line(item.request_id, item.handle, state))
            self._on_durable(item, person)

    def _sync_files(self, group: list[_Pending], covered: tuple[int, int]) -> Group | None:
        """fsync the files; the group's rows for the store (None when nothing records)."""
        self._results.sync()
        self._errors.sync()
        if self._jobs is not None:
            self._jobs.sync()
        if self._record is None:
            return None
        contacts: list[OutcomeRow] = []
        calls: list[CallRow] = []
        settled: list[str] = []
        lines: list[bytes] = []
        submitted: list[PendingJob] = []
        run_id, resent = self._run_id, self._resent
        for item, offset, person, line in group:
            rid = item.request_id
            if isinstance(item, Submitted):  # its handle and calls; its outcome comes later
                submitted.append(item.job)
            else:
                if isinstance(item, Success):
                    state = "ok"
                else:
                    state = "retryable" if item.error.retryable else "permanent"
                contacts.append((person, rid, state, run_id, offset))
                lines.append(line)
                if item.handle is not None:  # a job's outcome: its submit is settled
                    settled.append(rid)
            twice = int(rid in resent)
            for number, (sent, answered, status, outcome) in enumerate(item.calls, 1):
                credits = (
                    item.credits if outcome == "success" and isinstance(item, Success) else 0.0
                )
                calls.append((rid, run_id, number, sent, answered, status, outcome, credits, twice))
        return Group(
            contacts,
            calls,
            settled,
            covered,
            lines=lines if self._keep_lines else (),
            submitted=submitted,
        )
