"""One judge for every host: the adaptive search, fed by every worker's outcomes, run by the
worker that holds a PostgreSQL advisory lock for the limit's key.

Contract (docs/scale-out.md, "One shared limit"): of all the workers sharing a key (a
workspace URL + agent), at most one judges at a time, and when it dies another takes over
within :data:`TRY_EVERY` seconds of its session's end. The judge

* holds ``pg_try_advisory_lock(key)`` on its own connection (a *session* lock: released by
  the server when that session ends, a killed process's included);
* each :data:`TICK` (doubled up to :data:`SLOWEST_TICK` while few outcomes come) reads and
  deletes the outcomes every worker left in ``ob_outcome`` (sends, answers, 429s with their
  Retry-After; one statement, which also stamps ``ob_rate.updated_at``: the judge is alive)
  and replays them, in order, into the single-host search,
  :class:`~octave_bulk.limits.adaptive.AdaptiveLimiter`, driven through its public methods
  on the server's clock (:class:`ReplayGate`: the shared row enforces; the search only
  judges);
* publishes what the search decided - rate, window, pause - on ``ob_rate`` (a new rate or
  window bumps ``epoch``: outcomes of attempts booked before it judge nothing), which every
  worker's enforcement (``limits/shared_pg.py``) reads with its next booking; with no
  ``--concurrency``, a window at the safety bound (no cap found) is published as NULL, and
  workers take permits only while a window is published;
* remembers the limit that held in ``ob_limit`` (workspace URL, agent), by the single-host
  rule (:func:`~octave_bulk.state.limits.to_remember`), read back by the next night's start.

It starts from the rate a live judge published (a takeover continues the search: that rate
is verified like a remembered one), else from ``ob_limit`` (clamped by ``--rate``), else from
``--rate``, else searches up from the ``start_rate`` setting.

Publishing goes through the lock's own connection: a judge whose session ended cannot publish
(its successor holds the lock), and a judge frozen with its session alive leaves the last rate
published in force. Either way a stale judge only costs pacing: pay-once never depends on the
limiter (claims are the ledger's).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
import psycopg
from psycopg.types.json import Jsonb

from octave_bulk.errors import RefusalHints
from octave_bulk.limits.adaptive import WINDOW_BOUND, AdaptiveLimiter
from octave_bulk.limits.base import Ticket
from octave_bulk.limits.gate import AdaptiveTicket, Gate, Waits
from octave_bulk.limits.verdicts import VERDICT
from octave_bulk.observe.log import log_event
from octave_bulk.state.limits import to_remember
from octave_bulk.state.pg.dsn import PgConnection, out_of_reach

__all__ = [
    "ANSWERED",
    "REFUSED",
    "RELEASED",
    "SENT",
    "SLOWEST_TICK",
    "TELL",
    "TICK",
    "TRY_EVERY",
    "Judge",
    "JudgeSettings",
    "Outcomes",
    "ReplayGate",
    "Told",
    "lock_id",
]

SENT, ANSWERED, REFUSED, RELEASED = 0, 1, 2, 3  # ob_outcome.kind (released: never sent)
TICK = 0.5  # seconds between the judge's reads of the outcomes (one round trip each) ...
SLOWEST_TICK = 4.0  # ... doubled up to this while a read brings under VERDICT sends and no 429
TRY_EVERY = 4.0  # seconds between another worker's tries for the lock (a statement each)

TELL = """
INSERT INTO ob_outcome (key, epoch, worker, ticket, kind, at, waited, retry_after, hints)
SELECT %(key)s, u.epoch, %(worker)s, u.ticket, u.kind, u.at, u.waited, u.retry_after,
       u.hints::jsonb
FROM unnest(%(epochs)s::int[], %(tickets)s::bigint[], %(kinds)s::smallint[],
            %(ats)s::float8[], %(waited)s::bool[], %(retry)s::float8[], %(hints)s::text[])
     AS u(epoch, ticket, kind, at, waited, retry_after, hints)
"""
"""How a worker's outcomes reach ``ob_outcome`` (inside its booking, or alone at its end)."""

_CONSUME = """
WITH told AS (
    DELETE FROM ob_outcome WHERE key = %(key)s
    RETURNING id, epoch, worker, ticket, kind, at, waited, retry_after, hints
), alive AS (
    UPDATE ob_rate SET updated_at = clock_timestamp() WHERE key = %(key)s
    RETURNING extract(epoch FROM clock_timestamp())::float8 AS now
)
SELECT alive.now, told.* FROM alive LEFT JOIN told ON true ORDER BY told.id
"""

_PUBLISH = """
UPDATE ob_rate SET rate = %(rate)s, window_size = %(window)s, judge = %(judge)s,
                   paused_until = greatest(paused_until, to_timestamp(%(paused)s)),
                   epoch = epoch + %(bump)s, updated_at = clock_timestamp()
WHERE key = %(key)s
RETURNING epoch
"""

_REMEMBER = """
INSERT INTO ob_limit (workspace, agent, rate, window_size, evidence)
VALUES (%(workspace)s, %(agent)s, %(rate)s, %(window)s, %(evidence)s)
ON CONFLICT (workspace, agent) DO UPDATE
SET rate = excluded.rate, window_size = excluded.window_size, evidence = excluded.evidence,
    measured_at = clock_timestamp()
"""


@dataclass(frozen=True, slots=True)
class Told:
    """One outcome for the judge: an ``ob_outcome`` row (``at`` on the server's clock)."""

    epoch: int
    number: int
    kind: int
    at: float
    waited: bool = False
    retry_after: float | None = None
    hints: RefusalHints | None = None
    """What a refusal's rate limit headers said (evidence for the search, as on one host)."""


class Outcomes:
    """A worker's outcomes not yet in ``ob_outcome``: taken by its next booking (put back
    when the booking failed)."""

    def __init__(self) -> None:
        self._kept: list[Told] = []

    def sent(self, epoch: int, number: int, at: float, waited: bool) -> None:
        self._kept.append(Told(epoch, number, SENT, at, waited))

    def answered(
        self,
        epoch: int,
        number: int,
        kind: int,
        at: float,
        retry_after: float | None,
        hints: RefusalHints | None = None,
    ) -> None:
        self._kept.append(Told(epoch, number, kind, at, False, retry_after, hints))

    def unsent(self, number: int) -> bool:
        """Forget a send not handed over yet (it was never made); False when it was."""
        kept = [t for t in self._kept if (t.number, t.kind) != (number, SENT)]
        found, self._kept = len(kept) < len(self._kept), kept
        return found

    def take(self) -> list[Told]:
        kept, self._kept = self._kept, []
        return kept

    def put_back(self, told: list[Told]) -> None:
        self._kept[:0] = told

    @staticmethod
    def params(key: str, worker: str, told: list[Told]) -> dict[str, Any]:
        """:data:`TELL`'s parameters (one array per column)."""
        return {
            "key": key,
            "worker": worker,
            "epochs": [t.epoch for t in told],
            "tickets": [t.number for t in told],
            "kinds": [t.kind for t in told],
            "ats": [t.at for t in told],
            "waited": [t.waited for t in told],
            "retry": [t.retry_after for t in told],
            "hints": [None if t.hints is None else orjson.dumps(t.hints).decode() for t in told],
        }


def lock_id(key: str) -> int:
    """The advisory lock's number for a key (64 bits of its hash, signed as bigint)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)


class ReplayGate(Gate):
    """The search's gate in the judge: it never waits (the shared row already paced the
    attempt) but counts the replayed attempts in flight, and says whether the attempt
    being replayed waited for its shared turn (``waited``, set before each replay)."""

    waited = False

    async def enter(self, ticket: AdaptiveTicket) -> Waits | None:
        waits = Waits()
        waits.rate = self.waited
        self.in_flight += 1
        return waits

    def leave(self, ticket: AdaptiveTicket) -> bool:
        if ticket.answered:
            return False
        ticket.answered = True
        self.in_flight -= 1
        return True


@dataclass(frozen=True, slots=True)
class JudgeSettings:
    """What the search starts from and is bounded by (the run's settings)."""

    rate_ceiling: float | None
    window_ceiling: int | None
    search_from: float
    workspace: str
    agent: str
    lease: float  # a send never answered for this long is dropped (its worker died)
    refusal_round_trip: float = 0.1  # a 429's round trip until one is measured (the setting)


class Judge:
    """The judging loop of one worker: tries for the lock, and judges while it holds it.

    Args:
        connect: opens the judge's own connection (the lock's session).
        key: the limit's key (``ob_rate.key``).
        holder: this worker's name, published as ``ob_rate.judge`` while it judges.
        settings: ceilings, the search's start, the ``ob_limit`` row's names.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[PgConnection]],
        *,
        key: str,
        holder: str,
        settings: JudgeSettings,
    ) -> None:
        self._connect, self.key, self.holder, self.settings = connect, key, holder, settings
        self.now = 0.0  # the search's clock: the server's, seconds since 1970
        self.search: AdaptiveLimiter | None = None
        self.epoch = 0  # the epoch last published
        self._published: tuple[float | None, int, float] = (None, 0, 0.0)
        self._tickets: dict[tuple[str, int], AdaptiveTicket] = {}
        self._gate = ReplayGate(None, 1, clock=lambda: self.now)  # the search's, once judging

    async def run(self) -> None:
        """Judge whenever this worker holds the lock, until cancelled; a lost connection
        ends the term (the lock went with it) and the worker tries again."""
        while True:
            conn: PgConnection | None = None
            try:
                conn = await self._connect()
                while not await self._try_lock(conn):  # noqa: ASYNC110 (the server's lock)
                    await anyio.sleep(TRY_EVERY)
                await self._judge(conn)
            except psycopg.Error as exc:
                if not out_of_reach(exc):  # refused (a table missing): the workers will stop
                    log_event("judge_failed", error=f"{type(exc).__name__}: {exc}")
                await anyio.sleep(TRY_EVERY)
            except Exception as exc:  # a bug must not stop the run: the rate published holds
                log_event("judge_failed", error=f"{type(exc).__name__}: {exc}")
                await anyio.sleep(TRY_EVERY)
            finally:
                if conn is not None:
                    with anyio.CancelScope(shield=True), contextlib.suppress(psycopg.Error):
                        await self._remember(conn)
                        await conn.close()
                self.search = None

    async def _try_lock(self, conn: PgConnection) -> bool:
        cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id(self.key),))
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _judge(self, conn: PgConnection) -> None:
        self.search = search = await self._start(conn)
        log_event("judge", holder=self.holder, rate=search.rate)
        await self._publish(conn, search, force=True)
        tick = TICK
        while True:
            cur = await conn.execute(_CONSUME.encode(), {"key": self.key})
            rows = await cur.fetchall()
            await self._replay(search, [row[1:] for row in rows if row[1] is not None])
            if rows:
                self.now = max(self.now, float(rows[0][0]))
            await self._drop_unanswered(search)
            search.settle()  # with slow calls, time moves the verdicts on
            search.maybe_probe()
            await self._publish(conn, search)
            tick = _next_tick(tick, [row[5] for row in rows if row[1] is not None])
            await anyio.sleep(tick)

    async def _start(self, conn: PgConnection) -> AdaptiveLimiter:
        """The search, from the rate a live judge published, else the remembered limit."""
        s = self.settings
        cur = await conn.execute(
            "SELECT rate, judge IS NOT NULL, epoch, extract(epoch FROM clock_timestamp())::float8"
            " FROM ob_rate WHERE key = %s",
            (self.key,),
        )
        row = await cur.fetchone()
        if row is None:
            raise psycopg.OperationalError(f"no shared rate row for {self.key!r}")
        published, judged, self.epoch, self.now = float(row[0]), bool(row[1]), row[2], row[3]
        start: float | None = published if judged else None
        if start is None:
            cur = await conn.execute(
                "SELECT rate, window_size FROM ob_limit WHERE workspace = %s AND agent = %s",
                (s.workspace, s.agent),
            )
            memory = await cur.fetchone()
            if memory is not None and memory[0] is not None:
                # start_limits' rule (limits/factory.py, which imports this module): a ceiling
                # clamps the memory, never turns it off
                ceiling = s.rate_ceiling
                start = float(memory[0]) if ceiling is None else min(float(memory[0]), ceiling)
        search = AdaptiveLimiter(
            s.rate_ceiling,
            s.window_ceiling or WINDOW_BOUND,
            start_rate=start,
            search_from=s.search_from,
            refusal_rtt=s.refusal_round_trip,
            clock=lambda: self.now,
            name="shared_pacing",
        )
        search.gate = self._gate = ReplayGate(
            search.gate.rate, search.gate.window, clock=lambda: self.now
        )
        self._tickets.clear()
        await conn.execute("DELETE FROM ob_outcome WHERE key = %s", (self.key,))
        return search

    async def _replay(self, search: AdaptiveLimiter, rows: list[tuple[Any, ...]]) -> None:
        """Each worker's sends and answers, in the order they reached the database."""
        gate = self._gate
        for _, epoch, worker, number, kind, at, waited, retry_after, hints in rows:
            self.now = max(self.now, float(at))
            if kind == SENT:
                # Booked under the setting published, and the search has not moved since (a
                # batch holds many: those after a move were sent at the old setting).
                if epoch == self.epoch and (search.rate, search.window) == self._published[:2]:
                    gate.waited = bool(waited)
                    self._tickets[worker, number] = await search.acquire()
                continue
            ticket: Ticket | None = self._tickets.pop((worker, number), None)
            if ticket is None:
                continue  # sent under an older setting
            if kind == ANSWERED:
                await search.on_answer(ticket)
            elif kind == REFUSED:
                await search.on_429(ticket, retry_after, _hints(hints))
            else:
                await search.release(ticket)

    async def _drop_unanswered(self, search: AdaptiveLimiter) -> None:
        """Sends never answered within a lease: their worker died; they judge nothing."""
        horizon = self.now - self.settings.lease
        for key, ticket in list(self._tickets.items()):
            if ticket.sent_at < horizon:
                del self._tickets[key]
                await search.release(ticket)

    async def _publish(
        self, conn: PgConnection, search: AdaptiveLimiter, *, force: bool = False
    ) -> None:
        """The search's rate, window and pause on the shared row, when they moved."""
        setting = (search.rate, search.window, search.gate.paused_until)
        if setting == self._published and not force:
            return
        moved = force or setting[:2] != self._published[:2]
        params = {
            "key": self.key,
            "rate": search.rate,
            "window": self._window(search),
            "judge": self.holder,
            "paused": setting[2],
            "bump": int(moved),
        }
        cur = await conn.execute(_PUBLISH.encode(), params)
        row = await cur.fetchone()
        if row is not None:
            self.epoch = int(row[0])
        self._published = setting
        if moved and search.rate_limited_at is not None:
            await self._remember(conn)

    def _window(self, search: AdaptiveLimiter) -> int | None:
        """The window to publish: the search's, or None (no cap found) while it is at the
        safety bound and no ``--concurrency`` bounds it: the workers then take no permit."""
        unbounded = self.settings.window_ceiling is None and search.window >= WINDOW_BOUND
        return None if unbounded else search.window

    async def _remember(self, conn: PgConnection) -> None:
        """The limit that held, for the next night (nothing when none was met)."""
        if self.search is None:
            return
        rate, window, period = to_remember(self.search.report())
        if rate is None:
            return
        s = self.settings
        evidence = Jsonb({"period": period, "judge": self.holder})
        params = {
            "workspace": s.workspace,
            "agent": s.agent,
            "rate": rate,
            "window": window,
            "evidence": evidence,
        }
        await conn.execute(_REMEMBER.encode(), params)


def _hints(stored: dict[str, Any] | None) -> RefusalHints | None:
    """A refusal's hints as ``ob_outcome.hints`` keeps them (a JSON object), or None."""
    if not stored:
        return None
    fields = {name: stored.get(name) for name in ("limit", "remaining", "reset", "window")}
    return RefusalHints(**fields)


def _next_tick(tick: float, kinds: list[int]) -> float:
    """The wait before the next read: :data:`TICK` once a read brought a verdict's worth of
    sends or any 429, else twice the last (up to :data:`SLOWEST_TICK`): at a few calls a
    second a read every 0.5 s would cost more statements than the calls, and a verdict needs
    ``VERDICT`` outcomes anyway."""
    if REFUSED in kinds or kinds.count(SENT) >= VERDICT:
        return TICK
    return min(2 * tick, SLOWEST_TICK)
