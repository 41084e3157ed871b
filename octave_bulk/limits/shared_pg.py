"""One rate shared by every worker of every host: a GCRA row in PostgreSQL, on the server's clock.

Contract (docs/scale-out.md, "One shared rate"): a :class:`SharedRateLimiter` lets through at
most ``rate`` attempts per second **in all** across the workers using the same ``key`` (a
workspace URL + agent), however many hosts they run on. Its shape is the limiter contract's
(``open``, ``acquire``, async ``on_answer``/``on_429``, ``release``, ``stop``, ``aclose``,
``report``), so the engine drives it as it drives the in-process limiter.

How (the generic cell rate algorithm, as redis-cell and Inngest's Lua script do it, here in SQL):
the row ``ob_rate(key)`` holds the theoretical arrival time ``tat``. Each :meth:`acquire` is
**one** ``UPDATE … RETURNING``: ``tat = greatest(tat, now, paused_until) + 1/rate``, where
``now`` is ``clock_timestamp()`` (the server's clock: hosts' clocks never matter). The turn
booked is ``tat - 1/rate``; the caller sleeps until it (the wait comes back from the server as
a duration). Turns are spaced exactly ``1/rate`` apart whoever books them, so N workers get R in
all, not N x R. The row lock serialises bookings; at tens of calls a second that is far below
what one row sustains.

- **Shared pause**: :meth:`on_429` pushes ``paused_until`` (the Retry-After, else
  ``default_pause``; at most ``max_pause``) and bumps ``epoch``; every worker's next turn is
  booked after it.
- :meth:`release` (an attempt never sent) hands its turn back when no later turn was booked
  since (``tat`` unchanged), so a stopped run does not leave a gap in everyone's schedule.
- :meth:`stop` wakes every waiter at once (their turns are not refunded: at most one turn per
  waiter is lost, once).

A database error in :meth:`acquire` raises (the worker must not send without its turn: no
call leaves without the database's say-so, so PostgreSQL being down stops sending; it never
fails open).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from octave_bulk.state.pg.dsn import PgConnection

__all__ = ["SharedRateLimiter", "SharedRateReport", "SharedRateTicket"]

_BOOK = """
UPDATE ob_rate SET tat = greatest(tat, clock_timestamp(), paused_until)
                        + make_interval(secs => 1.0 / rate)
WHERE key = %s
RETURNING tat, extract(epoch FROM tat - make_interval(secs => 1.0 / rate) - clock_timestamp()),
          epoch, rate
"""

_PAUSE = """
UPDATE ob_rate SET paused_until = greatest(paused_until, clock_timestamp()
                                           + make_interval(secs => %(pause)s)),
                   epoch = epoch + 1, updated_at = clock_timestamp()
WHERE key = %(key)s
RETURNING extract(epoch FROM paused_until - clock_timestamp())
"""


@dataclass(slots=True, eq=False)
class SharedRateTicket:
    """One attempt's turn: the ``tat`` its booking left (for a refund), its epoch and when
    the caller may send (the limiter's clock)."""

    booked_tat: dt.datetime
    epoch: int
    send_at: float
    settled: bool = False


@dataclass(frozen=True, slots=True)
class SharedRateReport:
    """What this worker's share of the limiter let through (the fields the limiter contract's
    report carries)."""

    rate: float | None
    window: int
    paused: bool = False
    accepted: int = 0
    refused: int = 0
    released: int = 0
    retry_after_clamped: int = 0


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
        connect: opens this limiter's own connection (autocommit), e.g.
            ``lambda: connect(url)``; called by :meth:`open`.
        key: what the rate belongs to (a workspace URL + agent).
        rate: the known rate, attempts per second in all (published on the row at open).
        window: the calls in flight each worker lets through (not shared yet).
        default_pause: the shared pause after a 429 without a Retry-After, seconds.
        max_pause: the longest shared pause a Retry-After may ask for, seconds.
        clock: a monotonic clock, seconds.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[PgConnection]],
        *,
        key: str,
        rate: float,
        window: int = 32,
        default_pause: float = 1.0,
        max_pause: float = 60.0,
        clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self._connect, self.key, self._rate, self._window = connect, key, rate, window
        self.default_pause, self.max_pause = default_pause, max_pause
        self._clock = clock
        self._conn: PgConnection | None = None
        self._stopped = anyio.Event()
        self._counts = _Counts()

    @property
    def rate(self) -> float | None:
        return self._rate

    @property
    def window(self) -> int:
        return self._window

    async def open(self) -> None:
        """Connect and publish the rate on the shared row (created on first use)."""
        self._conn = await self._connect()
        await self._conn.execute(
            "INSERT INTO ob_rate (key, rate) VALUES (%s, %s)"
            " ON CONFLICT (key) DO UPDATE SET rate = excluded.rate, updated_at = clock_timestamp()",
            (self.key, self._rate),
        )

    async def aclose(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def acquire(self) -> SharedRateTicket:
        """Book the next shared turn and wait for it (or for :meth:`stop`)."""
        row = await (await self._connection().execute(_BOOK, (self.key,))).fetchone()
        if row is None:
            raise RuntimeError(f"no shared rate row for {self.key!r}: open() first")
        booked_tat, wait, epoch, rate = row
        self._rate = float(rate)
        ticket = SharedRateTicket(booked_tat, int(epoch), self._clock() + max(float(wait), 0.0))
        if float(wait) > 0:
            with anyio.move_on_after(float(wait)):
                await self._stopped.wait()
        return ticket

    async def on_answer(self, ticket: SharedRateTicket) -> None:
        if not ticket.settled:
            ticket.settled = True
            self._counts.accepted += 1

    async def on_429(self, ticket: SharedRateTicket, retry_after: float | None) -> float:
        """Pause every worker: returns the pause now in force, seconds."""
        if not ticket.settled:
            ticket.settled = True
            self._counts.refused += 1
        pause = self.default_pause if retry_after is None else retry_after
        if pause > self.max_pause:
            pause, self._counts.clamped = self.max_pause, self._counts.clamped + 1
        params = {"key": self.key, "pause": max(pause, 0.0)}
        row = await (await self._connection().execute(_PAUSE, params)).fetchone()
        left = max(float(row[0]), 0.0) if row else 0.0
        self._counts.paused_until = self._clock() + left
        return left

    async def release(self, ticket: SharedRateTicket) -> None:
        """The attempt was never sent: hand its turn back if nobody booked after it."""
        if ticket.settled:
            return
        ticket.settled = True
        self._counts.released += 1
        await self._connection().execute(
            "UPDATE ob_rate SET tat = tat - make_interval(secs => 1.0 / rate)"
            " WHERE key = %s AND tat = %s",
            (self.key, ticket.booked_tat),
        )

    def stop(self) -> None:
        self._stopped.set()

    def report(self) -> SharedRateReport:
        counts = self._counts
        return SharedRateReport(
            rate=self._rate,
            window=self._window,
            paused=self._clock() < counts.paused_until,
            accepted=counts.accepted,
            refused=counts.refused,
            released=counts.released,
            retry_after_clamped=counts.clamped,
        )

    def _connection(self) -> PgConnection:
        if self._conn is None:
            raise RuntimeError("the shared limiter is not open: call open() first")
        return self._conn
