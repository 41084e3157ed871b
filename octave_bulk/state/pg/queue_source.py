"""The work source of a run on the shared ledger: the job's queue, not the input's order.

Contract (docs/scale-out.md, "Workers"): :class:`QueueSource` stands in for the run's source
task (``BatchRun.source``). It runs in two steps:

1. **enqueue**: the run's own admission (``Admission.feed``: read, map, dedup, the re-send
   guard's rule, skipped when the shared ledger has it done or failed for good) feeds a
   stream whose items go into the job's queue in batches (:meth:`WorkQueue.enqueue`:
   idempotent, a contact enqueued before is not added again). ``octave-bulk worker`` runs on
   an empty input: nothing is enqueued.
2. **drain**: contacts still to do are claimed in batches (``SELECT … FOR UPDATE SKIP
   LOCKED``, :meth:`WorkQueue.claim`): once the contacts this worker holds without a call on
   the wire (at the limiter, or in the work stream's buffer for the next idle task) fall to
   :data:`REFILL_AT`, it claims up to :data:`MARGIN` of them again, one statement for the
   batch. A worker holds about what it sends, so N workers split a job evenly. Each claimed contact goes to the
   run's workers with its request body from the database; its call still passes
   ``PgClaims.claim`` (a claim this worker holds is accepted). The drain ends when nothing is
   left to do and no other worker holds a contact (a dead worker's claims are reaped then and
   done here; a dead worker's submitted async jobs are taken over and polled here, unless
   this run is ``--detach``), or when the run stops (SIGTERM, the budget, ``--max-calls``: claims not sent
   are given back when the store closes). A contact this worker already tried and failed
   (retryable: back to do) is not claimed again by it. Once every task is idle, a contact it
   still holds but never sent (its call refused while the ledger was out of reach) is given
   back, so that no two workers wait on each other's leftovers. A worker whose lease lapsed waits
   (the database out of reach: it resumes when it returns); one reaped stops the run
   (``StopReason.LEDGER``): a new worker may join instead. A statement the database refuses
   stops it too (``dsn.out_of_reach``: no wait mends a table missing).

``stats.queued`` counts what this worker took from the queue (what it may send), not what it
enqueued.
"""

from __future__ import annotations

import logging

import anyio
import orjson
import psycopg
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from octave_bulk.errors import StateError, StopReason
from octave_bulk.observe.log import log_event
from octave_bulk.run.admission import WorkItem
from octave_bulk.run.batch import Feed
from octave_bulk.run.control import RunControl
from octave_bulk.run.summary import RunStats
from octave_bulk.settings.model import Settings
from octave_bulk.state.pg.claims import Claim, WorkQueue
from octave_bulk.state.pg.claims import WorkItem as Enqueued
from octave_bulk.state.pg.dsn import describe_failure, out_of_reach
from octave_bulk.state.pg.leases import reap
from octave_bulk.state.pg.store import PgStore
from octave_bulk.state.store import Store

__all__ = ["MARGIN", "REFILL_AT", "QueueSource", "queue_source", "to_enqueue"]

MARGIN = 8
"""Contacts a worker may hold beyond its calls on the wire (waiting for the limiter)."""
REFILL_AT = MARGIN // 4
"""A worker claims again once it holds no more than this many contacts beyond its calls on
the wire: it claims ``MARGIN - REFILL_AT`` or more at a time, while enough are still waiting
for their turn that its sends never wait for a claim."""

_ENQUEUE_BATCH = 500  # contacts per INSERT
_IDLE = 0.01  # s between looks at the worker tasks while all are busy
_WAIT = 1.0  # s between looks at the job while other workers hold what is left


class QueueSource:
    """The source task of one run on the shared ledger (see the module docstring)."""

    def __init__(
        self, store: PgStore, settings: Settings, stats: RunStats, control: RunControl
    ) -> None:
        self.store, self.settings, self.stats, self.control = store, settings, stats, control
        self.enqueued = 0
        """Contacts this run added to the job (0 for a worker on an empty input)."""
        self._seq = 0

    async def __call__(self, feed: Feed, work: MemoryObjectSendStream[WorkItem]) -> None:
        async with work:
            admitted, into_queue = anyio.create_memory_object_stream[WorkItem](_ENQUEUE_BATCH)
            async with anyio.create_task_group() as group:
                group.start_soon(feed, admitted)
                taken = await self._enqueue(into_queue)
            self.stats.queued -= taken  # counted again as each is claimed
            if not self.control.stopping:
                await self._drain(work)

    async def _enqueue(self, items: MemoryObjectReceiveStream[WorkItem]) -> int:
        """Everything admitted into the queue; returns how many items came."""
        taken, batch = 0, []
        async with items:
            async for item in items:
                taken += 1
                batch.append(item)
                if len(batch) >= _ENQUEUE_BATCH or items.statistics().current_buffer_used == 0:
                    await self._insert(batch)
                    batch = []
            if batch:
                await self._insert(batch)
        return taken

    async def _insert(self, batch: list[WorkItem]) -> None:
        rows = [to_enqueue(item, self._seq + n) for n, item in enumerate(batch)]
        self._seq += len(rows)
        while not self.control.stopping:
            try:
                conn = await self.store.connection("queue")
                self.enqueued += await WorkQueue(conn, self.store.job).enqueue(rows)
                return
            except (psycopg.Error, StateError) as exc:  # out of reach: tried again
                await self._unreachable(exc)

    async def _drain(self, work: MemoryObjectSendStream[WorkItem]) -> None:
        """Claim and hand out contacts until the job is drained or the run stops."""
        store, control, stats = self.store, self.control, self.stats
        tried: set[str] = set()
        skip: list[str] = []  # tried here and back to do: left to the other workers
        given_back = False  # since the last claim (nothing held unsent is claimed anew)
        tasks = self.settings.concurrency
        while not control.stopping:
            if store.refused is not None:  # a heartbeat or a settle refused: stop, say why
                await self._unreachable(store.refused)
                return
            if store.lease.fenced:
                log_event("worker_fenced", level=logging.WARNING, worker=store.worker)
                control.stop(StopReason.LEDGER)
                return
            room = _room(work, tasks, stats.in_flight + stats.retrying)
            if room <= 0 or not store.lease.may_send():
                await anyio.sleep(_IDLE)
                continue
            waiting = work.statistics().tasks_waiting_receive
            try:
                conn = await store.connection("queue")
                queue = WorkQueue(conn, store.job)
                claims = await queue.claim(store.worker, room, skip)
                if not claims:
                    if waiting == tasks and not stats.in_flight and not given_back:  # all idle
                        for rid in await queue.give_back(store.worker, self._unrecorded()):
                            tried.discard(rid)  # dropped unsent (the ledger was away): again
                            if rid in skip:
                                skip.remove(rid)
                        given_back = True
                    polls = not self.settings.detach  # waits for others' async jobs
                    todo, held, silent = await queue.left(store.worker, skip, submitted=polls)
                    if not todo and not held:
                        return  # drained
                    if silent:
                        await reap(conn)  # a silent worker's claims come back to be done
                    with anyio.move_on_after(_WAIT):
                        await control.stopped.wait()
                    continue
                given_back = False
                for claim in claims:
                    if claim.request_id in tried:  # failed here before: not again
                        skip.append(claim.request_id)
                        await queue.unclaim(claim)
                        continue
                    try:  # room was counted before the claim: a stop may have taken it
                        work.send_nowait(_work_item(claim))
                    except (anyio.WouldBlock, anyio.BrokenResourceError):
                        await queue.unclaim(claim)  # back to do, for whoever works next
                        continue
                    tried.add(claim.request_id)
                    stats.queued += 1
            except (psycopg.Error, StateError) as exc:
                await self._unreachable(exc)

    def _unrecorded(self) -> set[str]:
        """Contacts this worker sent whose outcomes the ledger has not taken yet."""
        store = self.store
        waiting = {rid for _, params in store.unsettled for rid in params["rids"]}
        return waiting | set(store.claim_seq)

    async def _unreachable(self, exc: Exception) -> None:
        """Wait a while for a database out of reach; one that refused the statement stops
        the run (no wait mends it)."""
        text = exc if isinstance(exc, StateError) else describe_failure(self.store.url, exc)
        if not out_of_reach(exc):
            self.control.ledger_failed(StateError(str(text)))
            return
        log_event("ledger_unreachable", level=logging.WARNING, error=str(text))
        with anyio.move_on_after(_WAIT):
            await self.control.stopped.wait()


def _room(work: MemoryObjectSendStream[WorkItem], tasks: int, on_wire: int) -> int:
    """How many contacts to claim now: none while this worker holds more than
    :data:`REFILL_AT` unsent (waiting for the limiter, or for a task); else up to
    :data:`MARGIN` unsent in all, as far as idle tasks and the work stream's buffer take them
    at once. A batch of several costs one statement for all."""
    state = work.statistics()
    holding = tasks - state.tasks_waiting_receive  # tasks with a contact (on the wire or not)
    unsent = max(holding - on_wire, 0) + state.current_buffer_used
    if unsent > REFILL_AT:
        return 0
    space = state.tasks_waiting_receive + int(state.max_buffer_size) - state.current_buffer_used
    return min(MARGIN - unsent, space)


def to_enqueue(item: WorkItem, seq: int) -> Enqueued:
    """An admitted contact as the job's queue keeps it: the body as sent, the contact as the
    results record it (when it is not the body), its person, its place in the input."""
    body = orjson.loads(item.body)
    record = None if item.contact == body else item.contact
    person = None if item.person is None else str(item.person)
    return Enqueued(item.request_id, body, seq, person, record)


def _work_item(claim: Claim) -> WorkItem:
    """A claimed contact as the run's workers take it: its body as stored."""
    person = None if claim.person_key is None else int(claim.person_key)
    contact = claim.record if claim.record is not None else claim.body
    return WorkItem(claim.request_id, orjson.dumps(claim.body), contact, person)


def queue_source(
    store: Store, settings: Settings, stats: RunStats, control: RunControl
) -> QueueSource:
    """The source of a run whose store is the shared ledger's.

    Raises:
        TypeError: the store is not a :class:`PgStore`.
    """
    if not isinstance(store, PgStore):
        raise TypeError(f"a queue source needs the shared ledger's store, not {store!r}")
    return QueueSource(store, settings, stats, control)
