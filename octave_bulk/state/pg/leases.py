"""Workers' leases: heartbeats on the server's clock, self-fencing, and reaping the silent.

Contract (docs/scale-out.md, "Leases and fencing"):

- :meth:`WorkerLease.register` makes a worker live; :meth:`WorkerLease.renew` is its heartbeat
  (``heartbeat_at = clock_timestamp()``, the server's clock, so hosts' clocks never matter),
  sent every quarter lease by :meth:`WorkerLease.keep_renewed`.
- **Self-fencing**: :meth:`WorkerLease.may_send` is True only while the last renewal that
  succeeded was *sent* less than half a lease ago (the worker's own monotonic clock), and the
  worker was never reaped. A worker checks it before every paid call: cut off from the
  database, or frozen (SIGSTOP), it stops sending at half its lease, before anyone can reap it.
  A renewal that finds the worker reaped fences it for good (:attr:`WorkerLease.fenced`); so
  does one the server refuses (a permission, a table, a trigger: no wait mends it), kept in
  :attr:`WorkerLease.refused` for the run to stop on.
- :func:`reap` marks workers silent for longer than their lease (or ``lease`` seconds) as
  reaped and gives their claimed contacts back to be done, counting each as one *outcome
  unknown* (its call may have been paid) and recording a ``reap`` row in ``ob_call``. Submitted
  contacts keep their async handle (any worker may poll it) and lose only their holder. A
  worker is reaped **once**: concurrent reapers queue on its row, and the second finds it
  reaped already.

With a lease at least twice the call timeout plus the drain, a call a cut-off worker sent has
ended before its contact is reaped; only a frozen process can answer later, and its answer is
then settled as late or duplicate (:mod:`octave_bulk.state.pg.claims`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import psycopg

from octave_bulk.errors import StateError
from octave_bulk.state.pg.dsn import PgConnection, out_of_reach

__all__ = ["Reaped", "WorkerLease", "reap"]


@dataclass(frozen=True, slots=True)
class Reaped:
    """A contact taken back from a silent worker."""

    job: str
    request_id: str
    worker: str
    outcome_unknown: bool
    """True for a claimed contact whose call was marked on the wire (it may have been paid);
    False for one only reserved (never sent) or a submitted one (its handle is known: polling
    it costs nothing)."""


class WorkerLease:
    """One worker's membership of a job.

    Args:
        conn: an autocommit connection.
        worker: the worker's id, unique across hosts and restarts.
        job: the job it works on.
        lease: seconds of silence after which its claims may be reaped.
        clock: a monotonic clock (seconds), for the self-fencing deadline.
    """

    def __init__(
        self,
        conn: PgConnection,
        *,
        worker: str,
        job: str,
        lease: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease <= 0:
            raise ValueError("lease must be > 0")
        self.conn, self.worker, self.job, self.lease = conn, worker, job, lease
        self._clock = clock
        self._renewed_at: float | None = None  # when the last successful renewal was sent
        self.fenced = False
        self.refused: Exception | None = None
        """The failure of a renewal the server refused (set with :attr:`fenced`)."""

    async def register(self) -> None:
        """Join the job as a live worker (its first heartbeat)."""
        sent_at = self._clock()
        await self.conn.execute(
            "INSERT INTO ob_worker (worker, job, host, pid, lease_seconds) VALUES (%s, %s, %s, %s, %s)",
            (self.worker, self.job, socket.gethostname(), os.getpid(), self.lease),
        )
        self._renewed_at = sent_at

    async def renew(self, in_flight: int = 0) -> bool:
        """One heartbeat. False when the worker was reaped: it is fenced for good and must
        send nothing more (a new worker id may join again)."""
        if self.fenced:
            return False
        sent_at = self._clock()
        cur = await self.conn.execute(
            "UPDATE ob_worker SET heartbeat_at = clock_timestamp(), in_flight = %s"
            " WHERE worker = %s AND state = 'live'",
            (in_flight, self.worker),
        )
        if cur.rowcount != 1:
            self.fenced = True
            return False
        self._renewed_at = sent_at
        return True

    async def keep_renewed(
        self,
        in_flight: Callable[[], int] = lambda: 0,
        *,
        reconnect: Callable[[], Awaitable[PgConnection]] | None = None,
    ) -> None:
        """Renew every quarter lease until fenced (run it in the worker's task group).

        A renewal that fails (the database unreachable) is tried again at the next beat, on a
        new connection from ``reconnect`` when the last one broke (a server restarted);
        meanwhile :meth:`may_send` turns False at half the lease on its own. One the server
        refuses (:func:`~octave_bulk.state.pg.dsn.out_of_reach` is False) is not tried again:
        the worker is fenced and :attr:`refused` says why, for the run to stop on."""
        while not self.fenced:
            try:
                if reconnect is not None and (self.conn.broken or self.conn.closed):
                    with contextlib.suppress(psycopg.Error):
                        await self.conn.close()
                    self.conn = await reconnect()
                await self.renew(in_flight())
            except (psycopg.Error, StateError) as exc:
                if not out_of_reach(exc):  # refused: waiting would only hang the run
                    self.refused, self.fenced = exc, True
                    return
                # unreachable: the fence falls at half the lease by itself
            await anyio.sleep(self.lease / 4)

    def may_send(self) -> bool:
        """Whether a paid call may be sent now: not fenced, renewed within half a lease."""
        if self.fenced or self._renewed_at is None:
            return False
        return self._clock() - self._renewed_at < self.lease / 2

    def send_deadline(self) -> float | None:
        """The monotonic time at which :meth:`may_send` turns False unless renewed."""
        if self.fenced or self._renewed_at is None:
            return None
        return self._renewed_at + self.lease / 2

    async def leave(self) -> None:
        """Leave the job (a drained stop): claims still held go back to be done."""
        async with self.conn.transaction():
            await self.conn.execute(
                "UPDATE ob_contact SET state = 'todo', holder = NULL"
                " WHERE holder = %s AND state = 'claimed'",
                (self.worker,),
            )
            await self.conn.execute(
                "UPDATE ob_contact SET holder = NULL WHERE holder = %s", (self.worker,)
            )
            await self.conn.execute(
                "UPDATE ob_worker SET state = 'left', ended_at = clock_timestamp()"
                " WHERE worker = %s AND state = 'live'",
                (self.worker,),
            )
        self.fenced = True


async def reap(conn: PgConnection, *, lease: float | None = None) -> list[Reaped]:
    """Take back the claims of workers silent for longer than their lease (or ``lease``).

    Returns the contacts taken back, each once across all reapers.
    """
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE ob_worker SET state = 'reaped', ended_at = clock_timestamp()"
            " WHERE state = 'live' AND heartbeat_at < clock_timestamp()"
            " - make_interval(secs => coalesce(%s, lease_seconds)) RETURNING worker",
            (lease,),
        )
        workers = [row[0] for row in await cur.fetchall()]
        if not workers:
            return []
        # A new statement, a new snapshot: claims a reaped worker committed while we waited
        # for its row are seen here (its claim statement holds its row FOR SHARE).
        cur = await conn.execute(_TAKE_BACK, {"workers": workers})
        rows = await cur.fetchall()
    return [
        Reaped(job, request_id, worker, outcome_unknown=unknown)
        for job, request_id, worker, unknown in sorted(rows)
    ]


_TAKE_BACK = """
WITH old AS (
    SELECT job, request_id, holder, state, state = 'claimed' AND sending AS unknown
    FROM ob_contact
    WHERE holder = ANY(%(workers)s) AND state IN ('claimed', 'submitted')
    FOR UPDATE
), upd AS (
    UPDATE ob_contact c SET
        holder = NULL,
        state = CASE WHEN c.state = 'claimed' THEN 'todo' ELSE c.state END,
        sending = false,
        outcome_unknown = c.outcome_unknown + old.unknown::int
    FROM old WHERE c.job = old.job AND c.request_id = old.request_id
    RETURNING old.job, old.request_id, old.holder, old.unknown, c.claim_seq
), call AS (
    INSERT INTO ob_call (job, request_id, worker, claim_seq, kind, outcome, paid)
    SELECT job, request_id, holder, claim_seq, 'reap', 'outcome_unknown', NULL
    FROM upd WHERE unknown
)
SELECT job, request_id, holder, unknown FROM upd
"""
