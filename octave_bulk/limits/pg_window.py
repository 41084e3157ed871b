"""The shared window: at most C calls in flight in all, across hosts, as C leased permit rows.

Contract (docs/scale-out.md, "One shared rate, one shared window"): :meth:`SharedWindow.take`
returns a permit slot held by this worker (``ob_permit.holder``), under a lease, or None once
stopped (or, see below, while no window is enforced); :meth:`give_back` returns it. At most
``window`` slots (and no more than the judge publishes, ``ob_rate.window_size``) are held at
once by all the workers sharing a key.

- **A found window** (``found_only``: no ``--concurrency``, the judge searches): the window is
  enforced only while the judge publishes one. Until then (:attr:`enforced` False) the caller
  takes no permit, so the rate regime makes no permit statement; once a booking reads a
  window, every attempt takes a permit of slots 1..that window; when the judge clears it
  again, waiters go on without one and permits held go back.

- A permit whose holder died without handing it back is free again once its lease ran out.
- An answer's permit stays the worker's for ``LINGER x poll`` seconds (from its answer):
  its next attempt takes it with no round trip while two thirds of its lease are left (longer
  than any call), else with its lease renewed in place; unused, it goes back to every host.
- One task per worker looks for free permits in the database, once per ``poll`` seconds,
  doubled while none is free (up to 20 x; 4 x while short; 20 x at once while it has
  permits in use and is not short: their answers wake it), and at once when one of its
  own is freed or a booking says one is free (:data:`FREE`); not at all while the last
  booking said none is free, its own are in use and it is not short. One look takes a
  permit for each task then waiting, up to the sends due within the next bookings'
  horizon (the others are spare until those tasks take them).
- **Fair share.** A worker is *short* when another host holds two permits more than it does
  (a permit moved between them makes the split fairer). A short worker that finds no free
  permit asks, with that look: it publishes on ``ob_rate.fair_share``, for ``LINGER x poll``
  seconds, the most a host may keep: the window over the hosts holding permits, rounded up
  (or, when nobody holds more than that, one less than the most any host holds). Every worker
  reads it with its next booking; one holding more hands an answer's permit back instead of
  keeping it, and one holding as many takes no free permit while the ask stands. Permits
  flow one way only, from hosts above the mark to hosts under it, so two hungry hosts never
  both hand theirs back, and once no host holds two more than another nobody asks
  (docs/scale-out.md, "Fair share of the window").

Database failures only cost pacing here (``quietly`` returns None: no permit free, a hand
back lost until its lease ends).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

__all__ = ["ASKED", "FREE", "LINGER", "SharedWindow"]

LINGER = 10  # polls a spare permit waits for this worker's next attempt (as long as an ask)

_TAKE = """
WITH held AS (
    SELECT holder, count(*) AS n FROM ob_permit
    WHERE key = %(key)s AND holder <> %(holder)s AND expires_at >= clock_timestamp()
    GROUP BY holder
),
now AS (
    SELECT least(%(window)s, coalesce(
               (SELECT window_size FROM ob_rate WHERE key = %(key)s), %(window)s)) AS size,
           (SELECT fair_share FROM ob_rate WHERE key = %(key)s
            AND fair_share_until > clock_timestamp()) AS asked,
           (SELECT coalesce(max(n), 0) FROM held) AS most,
           (SELECT 1 + count(*) FROM held) AS hosts
),
fair AS (
    SELECT size, asked, most >= %(held)s + 2 AS short,
           CASE WHEN most > ceil(size::numeric / hosts) THEN ceil(size::numeric / hosts)::int
                ELSE most - 1 END AS keep
    FROM now
),
free AS (
    SELECT p.key, p.slot FROM ob_permit p, fair
    WHERE p.key = %(key)s AND p.slot <= fair.size
      AND (p.holder IS NULL OR p.expires_at < clock_timestamp())
      AND (fair.asked IS NULL OR %(held)s < fair.asked)
    ORDER BY p.slot
    LIMIT (SELECT greatest(0, least(%(want)s, coalesce(asked - %(held)s, %(want)s))) FROM fair)
    FOR UPDATE OF p SKIP LOCKED
),
took AS (
    UPDATE ob_permit p SET holder = %(holder)s,
                           expires_at = clock_timestamp() + make_interval(secs => %(lease)s)
    FROM free WHERE p.key = free.key AND p.slot = free.slot
    RETURNING p.slot
),
ask AS (
    UPDATE ob_rate SET fair_share = fair.keep,
                       fair_share_until = clock_timestamp() + make_interval(secs => %(ask_for)s)
    FROM fair
    WHERE key = %(key)s AND fair.short AND NOT EXISTS (SELECT FROM took)
)
SELECT (SELECT array_agg(slot) FROM took), (SELECT short FROM fair)
"""
"""Take up to ``want`` free permits (never past what a short host asks us to keep); short and
finding none, ask. Returns (the slots or NULL, whether we are short)."""

ASKED = """
CASE WHEN fair_share_until > clock_timestamp() THEN fair_share END
"""
"""The most permits a short host asks every host to keep, or NULL: read with each booking (an
``ob_rate`` expression), given to :meth:`SharedWindow.published`."""

FREE = """
CASE WHEN %(permits)s THEN (SELECT count(*) FROM ob_permit p
 WHERE p.key = ob_rate.key AND p.slot <= coalesce(ob_rate.window_size, p.slot)
   AND (p.holder IS NULL OR p.expires_at < clock_timestamp())) END
"""
"""The permits free now within the judge's window, counted only while the booking worker
takes permits (``%(permits)s``; else NULL): read with each booking (an ``ob_rate``
expression), given to :meth:`SharedWindow.published`. While it is 0, a worker whose permits
are all in use does not look for one (their answers, and the bookings they bring, tell it
when to)."""


Quietly = Callable[[str, Any], Awaitable[tuple[Any, ...] | None]]
"""Runs one statement; None when the database is out of reach (or nothing came back)."""


class SharedWindow:
    """The permits of one key, as one worker takes and gives them back.

    Args:
        quietly: runs one statement on the worker's connection (see :data:`Quietly`).
        key, window: the limit's key and its window (the permit rows 1..window).
        holder: this worker's name on the permits it holds.
        lease: seconds a permit stays held.
        poll: seconds between looks for a free permit (:data:`LINGER` of them: a spare
            permit's linger).
        clock: a monotonic clock, seconds.
        found_only: enforce only the window the judge publishes (none until it does).
    """

    def __init__(
        self,
        quietly: Quietly,
        *,
        key: str,
        window: int,
        holder: str,
        lease: float,
        poll: float,
        clock: Callable[[], float],
        found_only: bool = False,
    ) -> None:
        self._quietly, self.key, self.window, self.holder = quietly, key, window, holder
        self.lease, self.poll, self._clock = lease, poll, clock
        self.linger = LINGER * poll  # a spare permit's wait for the next attempt here
        self.found_only = found_only
        # the judge's window (bounded by ours); None: none enforced (a found window's, unset)
        self.window_now: int | None = None if found_only else window
        self._stopped = False
        self._freed = anyio.Event()  # one of our permits was handed back (or we stop)
        self._taken: dict[int, float] = {}  # permits in use: slot -> when taken (our clock)
        self._spare: dict[int, tuple[float, float]] = {}  # unused for now: (taken, freed)
        self._returning: asyncio.Task[None] | None = None
        self._handing_back: set[asyncio.Task[None]] = set()
        self._lock = anyio.Lock()  # one task per worker looks for a free permit
        self._poll, self._looked_at = poll, float("-inf")
        self._asked: int | None = None  # the most a short host asks every host to keep
        self._free: int | None = None  # permits free at the last booking (None: not read yet)
        self._short = False  # the last look found another host holding two more than us

    @property
    def held(self) -> int:
        """The permits this worker holds: in use, or kept for its next attempt."""
        return len(self._taken) + len(self._spare)

    @property
    def enforced(self) -> bool:
        """Whether attempts take a permit now (False: a found window not published)."""
        return self.window_now is not None

    def published(
        self, window: int | None, asked: int | None = None, free: int | None = None
    ) -> None:
        """What a booking read: the judge's window (no slot above it is taken again; with
        ``found_only``, None stops the enforcing), the most a short host asks every host
        to keep (:data:`ASKED`; None: nobody asks) and the permits free (:data:`FREE`: some
        free, a waiter looks at once)."""
        self._asked = None if asked is None else int(asked)
        self._free = None if free is None else int(free)
        if self._free and (self._asked is None or self.held < self._asked):
            self._poll = self.poll
            self._freed.set()
        if window:
            self.window_now = min(self.window, int(window))
        elif self.found_only and self.window_now is not None:
            self.window_now = None  # the judge cleared it: waiters go on without a permit
            self._freed.set()
            if self._spare:
                self._spare_back(list(self._spare))
                self._spare.clear()

    def stop(self) -> None:
        """Wake every waiter: none takes a permit any more."""
        self._stopped = True
        self._freed.set()

    def close(self) -> None:
        """No more hand backs in the background (the caller hands back all it holds)."""
        if self._returning is not None:
            self._returning.cancel()

    async def take(self, most: int = 1) -> int | None:
        """A permit of ours just freed, else one from the database: one task per worker
        looks there, every ``poll`` seconds doubled while none is free (up to 20 x, 4 x while
        short), and at once when one of ours is freed; a look takes one for each task waiting,
        up to ``most`` (the sends due soon). None once stopped, or while no window is
        enforced (:attr:`enforced`)."""
        params = {
            "key": self.key,
            "window": self.window,
            "holder": self.holder,
            "lease": self.lease,
            "ask_for": LINGER * self.poll,
        }
        while not self._stopped and self.enforced:
            slot = await self._reuse()
            if slot is not None:
                return slot
            async with self._lock:
                slot = await self._reuse()
                if slot is not None or not self.enforced:
                    return slot
                due = self._looked_at + self._poll - self._clock()
                if due <= 0 and self._free == 0 and self._taken and not self._short:
                    due = 20 * self.poll  # none free, ours in use: their answers wake us
                elif due <= 0:  # not looked lately (by any task here): look now
                    self._looked_at = now = self._clock()
                    want = min(most, 1 + self._lock.statistics().tasks_waiting)
                    row = await self._quietly(_TAKE, params | {"held": self.held, "want": want})
                    taken, short = row or (None, False)  # out of reach: none free
                    self._short = bool(short)
                    if taken:
                        self._poll = self.poll
                        first, *others = (int(slot) for slot in taken)
                        self._taken[first] = now
                        self._spare.update((slot, (now, now)) for slot in others)
                        if others:
                            self._keep_spares()
                        return first
                    slowest = (4 if short else 20) * self.poll
                    # While ours are in use their answers wake us (``_freed``): look seldom.
                    doubled = slowest if self._taken and not short else 2 * self._poll
                    self._poll = due = min(doubled, slowest)
                freed = self._freed
                with anyio.move_on_after(due):
                    await freed.wait()
                if freed.is_set() and self.enforced and not self._stopped and freed is self._freed:
                    self._freed = anyio.Event()
        return None

    async def _reuse(self) -> int | None:
        """A permit of ours that an answer just freed, for this attempt: with no round trip
        while two thirds of its lease are left (longer than any call), else its lease renewed
        in place (one round trip; handing it back and taking one again would leave every host
        waiting for a free permit at once, as all were taken together); inside the window."""
        while self._spare:
            slot, (taken, _) = self._spare.popitem()
            if self.window_now is None or slot > self.window_now:
                self._spare_back([slot])
                continue
            if self._clock() - taken >= self.lease / 3:
                renewed = await self._quietly(
                    "UPDATE ob_permit SET expires_at = clock_timestamp()"
                    " + make_interval(secs => %s) WHERE key = %s AND slot = %s AND holder = %s"
                    " RETURNING slot",
                    (self.lease, self.key, slot, self.holder),
                )
                if renewed is None:  # lost (its lease ran out and another took it) or away
                    continue
                taken = self._clock()
            self._taken[slot] = taken
            return slot
        return None

    def give_back(self, slot: int) -> None:
        """An answer's permit stays ours for a moment (the next attempt here takes it with
        no round trip); unused for its linger, it goes back to every host. While a short host
        asks, one above what it asks us to keep goes back at once."""
        taken = self._taken.pop(slot, self._clock())
        if not self.enforced or self._asked is not None and self.held >= self._asked:
            self._spare_back([slot])  # we would keep more than the short host asks
            return
        self._spare[slot] = (taken, self._clock())
        self._keep_spares()

    def _keep_spares(self) -> None:
        """Wake a waiter for the spare permits, and hand back those left unused."""
        self._freed.set()
        if self._returning is None or self._returning.done():
            self._returning = asyncio.create_task(self._return_spare())

    async def _return_spare(self) -> None:
        """Each spare permit back to every host once it was unused for ``poll`` seconds
        (not every spare at once: one freed a moment ago is about to be used here)."""
        while self._spare:
            oldest = min(freed for _, freed in self._spare.values())
            await anyio.sleep(max(0.0, oldest + self.linger - self._clock()))  # may be past
            now = self._clock()
            unused = [s for s, (_, freed) in self._spare.items() if now - freed >= self.linger]
            for slot in unused:
                del self._spare[slot]
            await self._hand_back(unused)

    def _spare_back(self, slots: list[int]) -> None:
        task = asyncio.create_task(self._hand_back(slots))
        self._handing_back.add(task)  # referenced until done
        task.add_done_callback(self._handing_back.discard)

    async def _hand_back(self, slots: list[int]) -> None:
        if slots:
            await self._quietly(
                "UPDATE ob_permit SET holder = NULL, expires_at = NULL"
                " WHERE key = %s AND slot = ANY(%s) AND holder = %s",
                (self.key, slots, self.holder),
            )
