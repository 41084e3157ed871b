"""One rate shared by every worker of every host: a GCRA row in PostgreSQL, on the server's clock.

Contract (docs/scale-out.md, "One shared rate"): a :class:`SharedRateLimiter` lets through at
most ``rate`` attempts per second **in all** across the workers using the same ``key`` (a
workspace URL + agent), however many hosts they run on. Its shape is the limiter contract's
(``open``, ``acquire``, async ``on_answer``/``on_429``, ``release``, ``stop``, ``aclose``,
``report``), so the engine drives it as it drives the in-process limiter.

How (the generic cell rate algorithm, as redis-cell and Inngest's Lua script do it, here in SQL):
the row ``ob_rate(key)`` holds the theoretical arrival time ``tat``; each :meth:`acquire` is
**one** ``UPDATE … RETURNING``: ``tat = greatest(tat, now, paused_until) + 1/rate``, ``now``
the server's ``clock_timestamp()``. The turn booked is ``tat - 1/rate`` (the wait comes back as
a duration): turns are ``1/rate`` apart whoever books them, N workers get R in all. A worker
books for the tasks waiting for a turn then, in one statement, never past :data:`HORIZON`
seconds of turns (its next booking comes once those turns came): hundreds of tasks booking at
once would fill the schedule seconds ahead, at a rate the judge may be about to change. A turn
booked ahead that nobody took within a turn's spacing of its time is dropped (taken late it
would be a burst), and so is every turn booked ahead once a 429 came: the next booking, at
once, tells the judge of it and takes the pause or the rate in force. The row lock
serialises bookings (far below what one row sustains at tens of calls a second). With a judge
(``limits/pg_judge.py``), each booking carries this worker's outcomes since the last one and
reads back the judge's rate, window and pause; :meth:`acquire_carrying`'s also takes its
call's claim (``state/pg/call_claims.py``).

- **Shared window** (optional, ``window=C``): before its turn an attempt takes one of C
  permit rows (``ob_permit``), leased, until its answer: C calls in flight in all, across
  hosts (``limits/pg_window.py``); each booking also reads what a host short of permits
  asks every host to keep (the most it may hold). With no ``window`` but a judge
  (``found_window``: no ``--concurrency``), the window the judge publishes is enforced so,
  and only while it publishes one: until then no permit is taken (no statement per call).
- **Shared pause**: without a judge, :meth:`on_429` pushes ``paused_until`` (the Retry-After,
  else ``default_pause``; at most ``max_pause``) and bumps ``epoch``; every worker's next turn
  is booked after it. With one, the judge decides the pauses as the single-host search does.
- :meth:`release` (an attempt never sent) hands its turn back when no later turn was booked
  since (``tat`` unchanged), so a stopped run does not leave a gap in everyone's schedule.
- :meth:`stop` wakes every waiter at once (turns are not refunded: one lost per waiter, once).

While the database is out of reach :meth:`acquire` waits (no call leaves without its turn:
it never fails open) and goes on on a new connection when the server is back; a statement the
server refuses (``state/pg/dsn.out_of_reach``: a table missing) raises: no wait mends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import math
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import psycopg

from octave_bulk.errors import RefusalHints, StateError
from octave_bulk.limits.base import LimitsReport, Ticket
from octave_bulk.limits.pg_judge import (
    ANSWERED,
    REFUSED,
    RELEASED,
    TELL,
    Judge,
    JudgeSettings,
    Outcomes,
)
from octave_bulk.limits.pg_turns import BOOK, BOOK_CARRYING, HORIZON, Turn, TurnsAhead
from octave_bulk.limits.pg_window import SharedWindow
from octave_bulk.redact import scrub
from octave_bulk.state.pg.call_claims import ClaimRider as PgRider
from octave_bulk.state.pg.dsn import LedgerUrl, PgConnection, out_of_reach
from octave_bulk.state.store import ClaimRider

__all__ = ["SharedRateLimiter", "SharedRateTicket"]

_START = """
INSERT INTO ob_rate (key, rate) VALUES (%(key)s, %(rate)s)
ON CONFLICT (key) DO UPDATE
SET rate = excluded.rate, judge = NULL, epoch = ob_rate.epoch + 1, window_size = NULL,
    updated_at = clock_timestamp()
WHERE %(always)s OR ob_rate.updated_at < clock_timestamp() - make_interval(secs => %(stale)s)
"""

_PAUSE = """
UPDATE ob_rate SET paused_until = greatest(paused_until, clock_timestamp()
                                           + make_interval(secs => %(pause)s)),
                   epoch = epoch + 1, updated_at = clock_timestamp()
WHERE key = %(key)s
RETURNING extract(epoch FROM paused_until - clock_timestamp())
"""


@dataclass(slots=True, eq=False)
class SharedRateTicket(Ticket):
    """One attempt's turn: the ``tat`` its booking left (for a refund), its epoch and when
    the caller may send (the limiter's clock)."""

    booked_tat: dt.datetime | None
    epoch: int
    send_at: float
    permit: int | None = None  # the shared window's permit held (its slot); None: no window
    settled: bool = False
    number: int = 0  # its number among this limiter's tickets (the judge's name for it)


@dataclass(slots=True)
class _Counts:
    accepted: int = 0
    refused: int = 0
    released: int = 0
    clamped: int = 0
    paused_until: float = field(default=float("-inf"))


class SharedRateLimiter:
    """A GCRA rate shared through PostgreSQL by every worker with the same ``key``.

    Args:
        connect: opens this limiter's own connection (autocommit), by :meth:`open`.
        key: what the rate belongs to (a workspace URL + agent).
        rate: the known rate, attempts per second in all (published on the row at open).
        window: the calls in flight let through in all (leased permits); None: no cap.
        found_window: with no ``window``: enforce the window a judge publishes
            (``ob_rate.window_size``) while it publishes one, up to this many permits.
        holder: this limiter's name on the permits it holds (unique across hosts).
        permit_lease: seconds a permit stays held without :meth:`renew_permits`.
        permit_poll: seconds between looks for a free permit.
        default_pause: the shared pause after a 429 with no Retry-After and no judge, s.
        max_pause: the longest shared pause a Retry-After may ask for, seconds.
        judge: the adaptive search's settings: this worker tells the judge every outcome and
            takes its turn at judging (``limits/pg_judge.py``); None holds ``rate`` (and the
            worker pauses everyone on each 429 itself).
        ledger: the shared ledger's database when it is this limiter's too: a booking then
            takes the claim of the call it books for (:meth:`acquire_carrying`).
        clock: a monotonic clock, seconds.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[PgConnection]],
        *,
        key: str,
        rate: float,
        window: int | None = None,
        holder: str | None = None,
        permit_lease: float = 600.0,
        permit_poll: float = 0.05,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        judge: JudgeSettings | None = None,
        found_window: int | None = None,
        ledger: LedgerUrl | None = None,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        if window is not None and window < 1:
            raise ValueError("window must be >= 1")
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.permit_lease, self.permit_poll = permit_lease, permit_poll
        self._connect, self.key, self._rate, self._window = connect, key, rate, window
        self.default_pause, self.max_pause = default_pause, max_pause
        self._clock, self.ledger = clock, ledger
        self._conn: PgConnection | None = None
        self._stopped = anyio.Event()
        permits = window or found_window
        self._permits = (
            None
            if permits is None
            else SharedWindow(
                self._quietly,
                key=key,
                window=permits,
                holder=self.holder,
                lease=permit_lease,
                poll=permit_poll,
                clock=clock,
                found_only=window is None,
            )
        )
        self._counts = _Counts()
        self._judge = judge
        self._judging: asyncio.Task[None] | None = None
        self._told = Outcomes()  # not yet in ob_outcome (they go with the next booking)
        self._numbers = itertools.count(1)
        self._turn_lock = anyio.Lock()
        self._ahead = TurnsAhead(clock)  # booked, not yet taken
        self._offset = 0.0  # the server's clock minus ours, seconds (learnt at each booking)

    @property
    def rate(self) -> float | None:
        return self._rate

    @property
    def window(self) -> int | None:
        return self._window

    async def open(self) -> None:
        """Connect and publish the rate on the shared row (created on first use; with a judge,
        only when no judge is alive: then the judge publishes), and take a turn at judging."""
        self._conn = await self._connect()
        always = self._judge is None
        params = {"key": self.key, "rate": self._rate, "always": always, "stale": self.permit_lease}
        await self._conn.execute(_START.encode(), params)
        if self._permits is not None:  # a found window's: as many as the judge may publish
            await self._conn.execute(
                "INSERT INTO ob_permit (key, slot) SELECT %s, generate_series(1, %s)"
                " ON CONFLICT DO NOTHING",
                (self.key, self._permits.window),
            )
        if self._judge is not None:
            judge = Judge(self._connect, key=self.key, holder=self.holder, settings=self._judge)
            self._judging = asyncio.create_task(judge.run(), name="octave-bulk judge")

    async def aclose(self) -> None:
        """Stop judging, tell the judge the last outcomes, hand back every permit still held,
        and disconnect."""
        if self._permits is not None:
            self._permits.close()
        if self._judging is not None:
            self._judging.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._judging
            self._judging = None
        if self._conn is not None:
            await self._tell_now()
            await self._quietly(
                "UPDATE ob_permit SET holder = NULL, expires_at = NULL WHERE holder = %s",
                (self.holder,),
            )
            with contextlib.suppress(psycopg.Error):
                await self._conn.close()
            self._conn = None

    async def acquire(self) -> SharedRateTicket:
        """Take a permit of the shared window (if one is enforced), then book the next shared
        turn and wait for it; returns early, unbooked, once :meth:`stop` was called.

        Raises:
            StateError: the database refused the booking (not out of reach: a table missing,
                a permission denied), which no wait mends."""
        return await self.acquire_carrying(None)

    async def acquire_carrying(self, rider: ClaimRider | None) -> SharedRateTicket:
        """:meth:`acquire`; a booking it makes also takes ``rider``'s claim when the claim
        may ride there (``ClaimRider.rides_in``, ``state/pg/call_claims.py``)."""
        carried = rider if isinstance(rider, PgRider) else None
        permit = None
        if self._permits is not None and self._permits.enforced:
            permit = await self._permits.take(math.ceil(self._rate * HORIZON))
            if permit is None and self._stopped.is_set():
                return SharedRateTicket(None, 0, self._clock())
        async with self._turn_lock:  # one turn booked ahead per worker, not one per task
            return await self._take_turn(permit, carried)

    async def _take_turn(self, permit: int | None, rider: PgRider | None) -> SharedRateTicket:
        turn = self._ahead.next(self._rate)
        if turn is None:
            waiting = self._turn_lock.statistics().tasks_waiting  # will want the next turns
            row = await self._book(1 + waiting, rider)
            if row is None:  # stopped while the database was out of reach
                return SharedRateTicket(None, 0, self._clock(), permit)
            if not row:
                raise RuntimeError(f"no shared rate row for {self.key!r}: open() first")
            turn = self._booked(row)
        ticket = SharedRateTicket(
            turn.booked_tat, turn.epoch, turn.send_at, permit, number=next(self._numbers)
        )
        wait = turn.send_at - self._clock()
        if wait > 0:
            with anyio.move_on_after(wait):
                await self._stopped.wait()
        if self._judge is not None:  # told at its turn, with the next booking
            self._told.sent(ticket.epoch, ticket.number, turn.server_at, wait > 0)
        return ticket

    def _booked(self, row: tuple[Any, ...]) -> Turn:
        """The first turn of a booking (the others wait in ``_ahead`` for the next tasks)."""
        rate, server_now, published, asked, free = row[3], row[4], row[5], row[7], row[8]
        if self._permits is not None:
            self._permits.published(published, asked, free)
        self._rate = float(rate)
        self._offset = float(server_now) - self._clock()
        return self._ahead.booked(row)

    async def on_answer(self, ticket: Ticket) -> None:
        ticket = _own(ticket)
        if not ticket.settled:
            ticket.settled = True
            self._counts.accepted += 1
            self._tell(ticket, ANSWERED)
            await self._give_back(ticket)

    async def on_429(
        self, ticket: Ticket, retry_after: float | None, hints: RefusalHints | None = None
    ) -> float:
        """Without a judge, pause every worker: returns the pause now in force, seconds. With
        one, tell the judge (it decides the pauses, and weighs the ``hints`` as the search
        on one host does): returns 0."""
        ticket = _own(ticket)
        self._ahead.clear()  # booked before the refusal: the next turn is booked anew, with it
        if not ticket.settled:
            ticket.settled = True
            self._counts.refused += 1
            self._tell(ticket, REFUSED, retry_after, hints)
            await self._give_back(ticket)
        if self._judge is not None:
            await self._tell_now()
            return 0.0
        pause = self.default_pause if retry_after is None else retry_after
        if pause > self.max_pause:
            pause, self._counts.clamped = self.max_pause, self._counts.clamped + 1
        params = {"key": self.key, "pause": max(pause, 0.0)}
        row = await self._quietly(_PAUSE, params)
        left = max(float(row[0]), 0.0) if row else 0.0
        self._counts.paused_until = self._clock() + left
        return left

    async def release(self, ticket: Ticket) -> None:
        """The attempt was never sent: hand its turn back if nobody booked after it."""
        ticket = _own(ticket)
        if ticket.settled:
            return
        ticket.settled = True
        self._counts.released += 1
        if not self._told.unsent(ticket.number):  # the judge heard of it: take it back
            self._tell(ticket, RELEASED)
        await self._give_back(ticket)
        if ticket.booked_tat is not None:
            await self._quietly(
                "UPDATE ob_rate SET tat = tat - make_interval(secs => 1.0 / rate)"
                " WHERE key = %s AND tat = %s",
                (self.key, ticket.booked_tat),
            )

    async def renew_permits(self) -> int:
        """Extend the lease of every permit this limiter holds; returns how many."""
        cur = await self._connection().execute(
            "UPDATE ob_permit SET expires_at = clock_timestamp() + make_interval(secs => %s)"
            " WHERE holder = %s",
            (self.permit_lease, self.holder),
        )
        return max(cur.rowcount, 0)

    def stop(self) -> None:
        self._stopped.set()
        self._ahead.clear()
        if self._permits is not None:
            self._permits.stop()

    def report(self) -> LimitsReport:
        """This worker's share: what it let through (the rate and window are everyone's)."""
        counts = self._counts
        return LimitsReport(
            rate=self._rate,
            window=self._window or (self._permits and self._permits.window_now) or 0,
            paused=self._clock() < counts.paused_until,
            accepted=counts.accepted,
            refused=counts.refused,
            released=counts.released,
            retry_after_clamped=counts.clamped,
        )

    def _tell(
        self,
        ticket: SharedRateTicket,
        kind: int,
        retry_after: float | None = None,
        hints: RefusalHints | None = None,
    ) -> None:
        """Keep an outcome for the judge (it goes with this worker's next booking)."""
        if self._judge is not None and ticket.number:
            at = self._clock() + self._offset
            self._told.answered(ticket.epoch, ticket.number, kind, at, retry_after, hints)

    async def _tell_now(self) -> None:
        """The outcomes kept so far to the judge at once, not with the next booking: a 429
        must reach it before it counts the refused send as accepted (unrefused for three
        refusal round trips, by the time it reads), so its verdicts see every refusal."""
        told = self._told.take()
        if told:
            try:
                conn = await self._usable()
                await conn.execute(TELL.encode(), self._told.params(self.key, self.holder, told))
            except (psycopg.Error, StateError):
                self._told.put_back(told)  # out of reach: they go with the next booking

    async def _give_back(self, ticket: SharedRateTicket) -> None:
        """The attempt's permit (if any) back to the shared window."""
        if ticket.permit is not None and self._permits is not None:
            self._permits.give_back(ticket.permit)
        ticket.permit = None

    def _connection(self) -> PgConnection:
        if self._conn is None:
            raise RuntimeError("the shared limiter is not open: call open() first")
        return self._conn

    async def _usable(self) -> PgConnection:
        """The connection, opened again when it broke (a server restarted)."""
        conn = self._connection()
        if conn.broken or conn.closed:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
            conn = self._conn = await self._connect()
        return conn

    async def _quietly(self, query: str, params: Any) -> tuple[Any, ...] | None:
        """One statement whose failure only costs pacing (a permit's lease runs out, a refund
        or a pause is lost): None when the database is out of reach."""
        try:
            cur = await (await self._usable()).execute(query.encode(), params)
            return await cur.fetchone() if cur.description else None
        except (psycopg.Error, StateError):
            return None

    async def _book(self, turns: int, rider: PgRider | None) -> tuple[Any, ...] | None:
        """Book ``turns`` turns (fewer past :data:`HORIZON`) and ``rider``'s claim in one
        statement, waiting while the database is away (no turn, no call; a refusal raises)."""
        while not self._stopped.is_set():
            told = self._told.take()  # the outcomes since the last booking go with it
            carry = rider if rider is not None and rider.rides_in(self.ledger) else None
            try:
                conn = await self._usable()
                params = self._told.params(self.key, self.holder, told)
                permits = self._permits is not None and self._permits.enforced  # counted
                params |= {"turns": turns, "horizon": HORIZON, "permits": permits}
                query = BOOK if carry is None else BOOK_CARRYING
                cur = await conn.execute(query.encode(), params | (carry.params() if carry else {}))
                row = await cur.fetchone() or ()
                if carry is not None:
                    carry.took(row[-1] if row else None)
                return row
            except (psycopg.Error, StateError) as exc:
                self._told.put_back(told)
                if not out_of_reach(exc):
                    raise StateError(f"the shared rate's database: {scrub(str(exc))}") from None
                with anyio.move_on_after(self.permit_poll * 10):
                    await self._stopped.wait()
        return None


def _own(ticket: Ticket) -> SharedRateTicket:
    if not isinstance(ticket, SharedRateTicket):
        raise TypeError(f"not a shared limiter's ticket: {ticket!r}")
    return ticket
