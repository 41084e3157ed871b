"""The PostgreSQL store: the :class:`~octave_bulk.state.store.Store` contract on the shared
ledger, so that ``run --ledger postgresql://…`` runs on several hosts at once and pays once.

Contract (docs/scale-out.md, "A run on the shared ledger"):

- :func:`open_pg_store` (a :data:`~octave_bulk.state.store.StoreFactory`) connects, brings the
  schema up to date, opens the job (named by the agent), reaps workers silent for longer
  than their lease (their claims go back to be done, each an outcome unknown), and
  joins the job as a live worker that heartbeats (``state/pg/leases.py``). Several runs may
  hold the same job at once: the database, not a lock file, keeps them apart. Leaving it gives
  back the claims whose calls were never sent; a claim whose call was on the wire when the run
  ended is counted as an outcome unknown and given back too (it may have been paid).
- :meth:`PgStore.load`: the view is the **database's**: done, failed for good, failed before
  and the people done come from ``ob_contact``, whatever local output the run writes.
  Claims of dead workers are reaped, not carried: they are sent again (counted).
- :meth:`PgStore.claims`: a contact is claimed in **one statement committed before the paid
  call**, alone or carried by the shared limiter's booking (``state/pg/call_claims.py``).
- :meth:`PgStore.record`: a group's outcomes and calls are settled in **one statement** (one
  transaction): a success is done, a permanent failure failed, a retryable one to do again. A
  contact whose claim was lost settles only as a late success (when not done yet); otherwise
  its paid call is counted (paid twice) and nothing is overwritten. A database out of reach
  keeps the group (durable in the local output) for the next one; a run that ends with groups
  still unsettled says so (its claims are reaped later, outcomes unknown). One the server
  refuses is kept too, and :attr:`PgStore.refused` stops the run (no wait mends it).
- The group's records settle with it: a success's record (its NDJSON line's JSON object) in
  ``ob_contact.result``, a failure's in ``ob_contact.error`` (with its ``outcome``), the
  secrets scrubbed (``state/pg/read.py``, :func:`stored_record`); a duplicate overwrites
  neither. Each group settles under the job's shared settle lock, taken by the settle
  statement itself before it draws a ``settled_seq`` (one statement: one round trip, no
  ``BEGIN``/``COMMIT``), so that ``export --new`` can find a horizon no settle in progress is
  below (``state/pg/read.py``). The bodies are
  dropped once the group is settled; the sink still writes the local NDJSON output.
- Async mode (``state/pg/handles.py``): submits are committed with their claims' move to
  ``submitted``; the submitted contacts no live worker holds are taken over and polled, at
  :meth:`PgStore.load` (:meth:`PgView.awaited_jobs`), by :meth:`PgStore.watch_jobs` while the
  run polls, and by :meth:`PgStore.adopt_job` when a callback names one.
- :attr:`PgStore.runs` is ``state/pg/runs.py``.
- Every error names the server by its URL without the password.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from typing import TYPE_CHECKING, Any

import anyio
import psycopg

from octave_bulk.errors import ConfigError, StateError
from octave_bulk.observe.log import log_event
from octave_bulk.state.idset import id_key
from octave_bulk.state.pg.call_claims import PgClaims
from octave_bulk.state.pg.claims import JOB_SETTINGS, WorkQueue
from octave_bulk.state.pg.dsn import (
    LedgerUrl,
    PgConnection,
    connect,
    describe_failure,
    out_of_reach,
)
from octave_bulk.state.pg.handles import submit_statement, take_over, watch_orphans
from octave_bulk.state.pg.leases import WorkerLease, reap
from octave_bulk.state.pg.read import SETTLING, stored_record
from octave_bulk.state.pg.runs import PgRuns
from octave_bulk.state.pg.schema import migrate
from octave_bulk.state.pg.view import PgView, read_view
from octave_bulk.state.store import FinishedRun, Group

if TYPE_CHECKING:
    from octave_bulk.settings.model import Settings
    from octave_bulk.state.jobs import PendingJob
    from octave_bulk.state.paths import OutputPaths

__all__ = [
    "PgStore",
    "job_name",
    "lease_seconds",
    "open_pg_store",
]

_SETTLE_GROUP = (
    "WITH settling AS MATERIALIZED (" + SETTLING + ")"  # noqa: S608 (constants only)
    """, g AS (
    SELECT g.* FROM settling,
           unnest(%(rids)s::text[], %(seqs)s::int[], %(outcomes)s::text[],
                  %(persons)s::text[], %(paid)s::int[], %(records)s::text[])
             AS g(request_id, claim_seq, outcome, person_key, paid, record)
), prev AS (
    SELECT g.*, CASE
        WHEN c.holder = %(worker)s AND c.claim_seq = g.claim_seq
             AND c.state IN ('claimed', 'submitted') THEN 'first'
        WHEN g.outcome = 'ok' AND c.state <> 'done' THEN 'late'
        ELSE 'duplicate' END AS settled
    FROM ob_contact c JOIN g ON c.job = %(job)s AND c.request_id = g.request_id
    FOR UPDATE OF c
), upd AS (
    UPDATE ob_contact c SET
        state = CASE WHEN p.settled = 'duplicate' THEN c.state
                     WHEN p.outcome = 'ok' THEN 'done'
                     WHEN p.outcome = 'permanent' THEN 'failed' ELSE 'todo' END,
        holder = CASE WHEN p.settled = 'duplicate' THEN c.holder ELSE NULL END,
        person_key = CASE WHEN p.settled = 'duplicate' THEN c.person_key ELSE p.person_key END,
        result = CASE WHEN p.settled <> 'duplicate' AND p.outcome = 'ok'
                      THEN p.record::jsonb ELSE c.result END,
        error = CASE WHEN p.settled = 'duplicate' THEN c.error
                     WHEN p.outcome = 'ok' THEN NULL
                     ELSE coalesce(p.record::jsonb, '{}')
                          || jsonb_build_object('outcome', p.outcome) END,
        settled_seq = CASE WHEN p.settled = 'duplicate' THEN c.settled_seq
                           ELSE nextval('ob_settled_seq') END,
        settled_at = CASE WHEN p.settled = 'duplicate' THEN c.settled_at
                          ELSE clock_timestamp() END,
        paid_calls = c.paid_calls + p.paid,
        late_answers = c.late_answers + (p.settled <> 'first')::int
    FROM prev p WHERE c.job = %(job)s AND c.request_id = p.request_id
    RETURNING p.request_id
), calls AS (
    INSERT INTO ob_call (job, request_id, worker, kind, outcome, status, paid, credits)
    SELECT %(job)s, request_id, %(worker)s, 'call', outcome, status, status = 200, credits
    FROM unnest(%(call_rids)s::text[], %(call_outcomes)s::text[], %(call_statuses)s::int[],
                %(call_credits)s::float8[]) AS k(request_id, outcome, status, credits)
)
SELECT count(*) FROM upd
"""
)
"""A group settled in one statement (its own transaction): every row of ``g`` comes after the
job's settle lock is held shared (``settling``), so no ``settled_seq`` is drawn before it."""

_LEAVE = """
WITH mine AS (
    SELECT job, request_id FROM ob_contact
    WHERE holder = %(worker)s AND state = 'claimed' FOR UPDATE
), upd AS (
    UPDATE ob_contact c SET state = 'todo', holder = NULL,
        outcome_unknown = c.outcome_unknown + (c.request_id = ANY(%(on_wire)s))::int
    FROM mine WHERE c.job = mine.job AND c.request_id = mine.request_id
    RETURNING c.job, c.request_id, c.claim_seq
)
INSERT INTO ob_call (job, request_id, worker, claim_seq, kind, outcome, paid)
SELECT job, request_id, %(worker)s, claim_seq, 'reap', 'outcome_unknown', NULL
FROM upd WHERE request_id = ANY(%(on_wire)s)
"""

_LEAVE_TRIES = 15  # seconds a run's end waits for the database to settle its last groups


def lease_seconds(settings: Settings) -> float:
    """A worker's lease: at least twice the call timeout plus the drain (docs/scale-out.md,
    "Leases and self-fencing"), and at least 4 s."""
    return max(2 * settings.timeout + settings.drain_timeout, 4.0)


class PgStore:
    """The shared ledger's store for one run of a job; build it with :func:`open_pg_store`."""

    def __init__(
        self,
        url: LedgerUrl,
        job: str,
        lease: WorkerLease,
        conns: dict[str, PgConnection],
        runs: PgRuns,
    ) -> None:
        self.url, self.job, self.lease = url, job, lease
        self.worker = lease.worker
        self.conns = conns  # "claims", "records", "queue" (claiming batches), "watch": one
        # each, so a claim never waits on a group
        self.history = runs
        self.claim_seq: dict[str, int] = {}  # requestId -> the claim sequence this worker holds
        self.on_wire: dict[int, str] = {}  # claims whose outcome is not durable yet
        self.view: PgView | None = None
        self.unsettled: list[tuple[str, dict[str, Any]]] = []  # statements not taken yet
        self._refused: Exception | None = None  # a settle or a take-over refused
        self._set_aside: list[tuple[str, dict[str, Any]]] = []  # refused: never tried again

    @property
    def refused(self) -> Exception | None:
        """A statement the server refused (its heartbeat, a settle, a take-over of jobs: a
        permission, a table, a trigger), which no wait mends: the run stops on it
        (``state/pg/queue_source.py``) rather than pay for calls whose outcomes cannot be
        settled, or wait for jobs nobody polls."""
        return self.lease.refused or self._refused

    @property
    def runs(self) -> PgRuns:
        return self.history

    async def load(self) -> PgView:
        """The database's view, with the jobs of workers that left or died taken over.

        Raises:
            StateError: the server is out of reach or refuses a statement.
        """
        try:
            conn = await self.connection("records")
            await reap(conn)
            self.view = await read_view(conn, self.job)
            self.view.jobs = await take_over(conn, self.job, self.worker, self.claim_seq)
        except psycopg.Error as exc:
            raise StateError(describe_failure(self.url, exc)) from None
        self.view.awaiting = frozenset(job.request_id for job in self.view.jobs)
        return self.view

    def claims(self, carry: Collection[str]) -> PgClaims:
        return PgClaims(self)

    async def record(self, group: Group) -> None:
        submits, calls = submit_statement(self.job, self.worker, group, self.claim_seq)
        self.unsettled.extend(submits)  # handles first, with the claims' move to submitted
        outcomes = group.outcomes
        if not outcomes:
            await self._settle_unsettled()
            return
        paid: dict[str, int] = {}
        for call in calls:
            if call[5] == 200:
                paid[call[0]] = paid.get(call[0], 0) + 1
        records: list[str | None] = [stored_record(line) for line in group.lines]
        params = {
            "job": self.job,
            "worker": self.worker,
            "rids": [row[1] for row in outcomes],
            "seqs": [self.claim_seq.pop(row[1], 0) for row in outcomes],
            "outcomes": [row[2] for row in outcomes],
            "persons": [str(row[0]) for row in outcomes],
            "paid": [paid.get(row[1], 0) for row in outcomes],
            "records": records or [None] * len(outcomes),
            "call_rids": [call[0] for call in calls],
            "call_outcomes": [call[6] for call in calls],
            "call_statuses": [call[5] for call in calls],
            "call_credits": [call[7] if call[7] and call[7] >= 0 else None for call in calls],
        }
        self.unsettled.append((_SETTLE_GROUP, params))
        await self._settle_unsettled()
        view = self.view
        if view is not None:
            for person, request_id, state, _, _ in outcomes:
                done = "done" if state == "ok" else "failed" if state == "permanent" else "todo"
                view._follow(id_key(request_id), done, str(person), 0)

    async def adopt_job(self, handle: str) -> PendingJob | None:
        """The job of ``handle`` (a callback named it), taken over to be polled by this run
        when it is a submitted contact no live worker holds (``state/pg/handles.py``); None
        for any other handle (a forged one, one a live worker polls) or the database out of
        reach. One the server refuses is logged (``ledger_refused``) and stops the run while
        it still claims (:attr:`refused`); after that, its own jobs are polled as they would
        be without the callback, and the next run takes that job over."""
        try:
            conn = await self.connection("records")
            jobs = await take_over(conn, self.job, self.worker, self.claim_seq, handle)
        except (psycopg.Error, StateError) as exc:
            if not out_of_reach(exc):
                self._refuse(exc)
                error = describe_failure(self.url, exc)
                log_event("ledger_refused", level=logging.ERROR, error=error, handle=handle)
            return None
        return jobs[0] if jobs else None

    async def watch_jobs(self, add: Callable[[PendingJob], None]) -> None:
        """Until cancelled: ``handles.watch_orphans`` every quarter lease, on a connection of
        its own (a reap is a transaction); a statement refused there stops the run."""
        connection = functools.partial(self.connection, "watch")
        args = (self.job, self.worker, self.claim_seq)
        await watch_orphans(connection, self.lease.lease / 4, *args, add=add, refused=self._refuse)

    def _refuse(self, exc: Exception) -> None:
        """Keep the first statement the server refused (:attr:`refused`: the run says it)."""
        self._refused = self._refused or exc

    async def connection(self, purpose: str) -> PgConnection:
        """The connection for ``claims``, ``records`` or ``watch``, opened when there is none
        or the last one broke (a server restarted); raises :class:`StateError` while the
        server is out of reach."""
        conn = self.conns.get(purpose)
        if conn is None:
            conn = self.conns[purpose] = await connect(self.url)
        elif conn.broken or conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
            conn = self.conns[purpose] = await connect(self.url)
        return conn

    async def _settle_unsettled(self) -> None:
        """Settle the groups not settled yet, oldest first; a database out of reach keeps
        them for the next group (their results are durable in the local output). A statement
        the server refuses is set aside (no wait mends it) and the next ones are tried: a
        submit's handle that still reaches the ledger is polled by the next run, not paid
        again."""
        while self.unsettled:
            try:
                conn = await self.connection("records")
                sql, params = self.unsettled[0]
                await conn.execute(sql, params)  # one statement, one transaction
            except (psycopg.Error, StateError) as exc:
                refused = not out_of_reach(exc)
                if refused:
                    self._refuse(exc)
                    self._set_aside.append(self.unsettled.pop(0))
                log_event(
                    "ledger_not_updated",
                    level=logging.WARNING,
                    error=describe_failure(self.url, exc),
                    groups_waiting=len(self.unsettled) + len(self._set_aside),
                    refused=refused,
                )
                if refused:
                    continue
                return
            self.unsettled.pop(0)

    async def finish(self, run: FinishedRun) -> None:
        """Settle what is left (every group is settled as it comes when the database is up)."""
        await self._settle_unsettled()

    async def leave(self) -> None:
        """Give back the claims still held (those on the wire counted as outcome unknown),
        then leave the job. Groups the server refused are given back as outcomes unknown."""
        for _ in range(_LEAVE_TRIES):  # the database may be on its way back
            await self._settle_unsettled()
            if not self.unsettled:
                break
            await anyio.sleep(1.0)
        if self.unsettled:  # still out of reach: the claims are reaped later (outcome unknown)
            raise StateError(
                f"{len(self.unsettled)} groups of results are in the local output but not in "
                f"the shared ledger {self.url.display}: its claims will be reaped and sent again"
            )
        refused = [rid for _, params in self._set_aside for rid in params["rids"]]
        params = {"worker": self.worker, "on_wire": [*self.on_wire.values(), *refused]}
        conn = await self.connection("records")
        async with conn.transaction():
            await conn.execute(_LEAVE, params)
        if self.lease.conn.broken or self.lease.conn.closed:  # a beat cancelled mid-query
            self.lease.conn = await connect(self.url)
        await self.lease.leave()
        if self._set_aside:  # given back as outcomes unknown: they were sent
            raise StateError(
                f"the shared ledger {self.url.display} refused {len(self._set_aside)} groups "
                f"of results ({len(refused)} contacts, kept in the local output): they count "
                "as outcomes unknown and are sent again"
            )


def job_name(settings: Settings) -> str:
    """The job a run works on: ``--job``, else the agent (or experiment) it runs."""
    if settings.job:
        return settings.job
    target = settings.agent_oid or settings.experiment_oid
    if not target:
        raise ConfigError("a shared ledger's job needs --agent or --experiment")
    return str(target)


@contextlib.asynccontextmanager
async def open_pg_store(paths: OutputPaths, settings: Settings) -> AsyncIterator[PgStore]:
    """The store factory of ``--ledger postgresql://…`` (see the module docstring).

    Raises:
        ConfigError: no shared ledger URL in the settings.
        StateError: the server cannot be reached, or the job runs another agent.
    """
    if settings.ledger_url is None:
        raise ConfigError("--ledger: no postgresql:// URL given")
    url = LedgerUrl.parse(settings.ledger_url.get_secret_value())
    job = job_name(settings)
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    async with contextlib.AsyncExitStack() as stack:
        conns: dict[str, PgConnection] = {}  # the store's (opened again when one breaks)
        stack.push_async_callback(_close_all, conns)
        for purpose in ("lease", "claims", "records", "queue"):
            conns[purpose] = await connect(url)
        lease = WorkerLease(
            conns.pop("lease"), worker=worker, job=job, lease=lease_seconds(settings)
        )
        stack.push_async_callback(lambda: _close_all({"lease": lease.conn}))
        try:
            await migrate(conns["records"])
            shaping = settings.model_dump(mode="json", include=set(JOB_SETTINGS))
            await WorkQueue(conns["records"], job).open_job(
                agent=settings.agent_type, settings=shaping
            )
            await lease.register()
        except psycopg.Error as exc:
            raise StateError(describe_failure(url, exc)) from None
        runs = await anyio.to_thread.run_sync(PgRuns, url, job, worker)
        stack.callback(runs.close)
        store = PgStore(url, job, lease, conns, runs)
        beat = functools.partial(
            lease.keep_renewed, lambda: len(store.on_wire), reconnect=lambda: connect(url)
        )
        ended = False  # the run's body ended without an error
        try:
            async with anyio.create_task_group() as heartbeat:
                heartbeat.start_soon(beat)
                try:
                    yield store
                finally:
                    heartbeat.cancel_scope.cancel()
            ended = True
        except BaseExceptionGroup as group:  # the heartbeat raises nothing: the run's error,
            raise _only(group) from None  # as the run raised it (the CLI reads it so)
        finally:
            with anyio.CancelScope(shield=True):
                await _leave(store, raises=ended)


async def _leave(store: PgStore, *, raises: bool) -> None:
    """Leave the job at the run's end. A failure (claims then reaped later, counted then) is
    raised after a run that ended well; after one that failed, it is logged and the run's own
    error is the one the user sees."""
    try:
        await store.leave()
    except (psycopg.Error, StateError) as exc:
        error = exc if isinstance(exc, StateError) else StateError(describe_failure(store.url, exc))
        if raises:
            raise error from None
        log_event("ledger_not_left", level=logging.ERROR, error=str(error))


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """A task group's one error unwrapped (a group of several stays a group)."""
    if len(group.exceptions) != 1:
        return group
    only = group.exceptions[0]
    return _only(only) if isinstance(only, BaseExceptionGroup) else only


async def _close_all(conns: dict[str, PgConnection]) -> None:
    for conn in conns.values():
        with contextlib.suppress(psycopg.Error):
            await conn.close()
