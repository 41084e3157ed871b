"""The limiter contract (v2): every attempt passes a limiter before it is sent.

A run holds one :class:`Limiter` for its calls (and one for its async status polls), shared
by all its workers, built by a :data:`LimiterFactory` (``limits/registry.py``: the
``limiter`` setting names one; ``run_batch(limiter=...)`` takes one). A worker calls
:meth:`~Limiter.acquire` before each attempt and gets an opaque :class:`Ticket`, then hands
it back exactly once:

* :meth:`~Limiter.on_answer`: the attempt was sent and ended without a 429 (a success,
  another error, a transport failure after sending, or a cancellation while it was on the
  wire: it may have been paid);
* :meth:`~Limiter.on_429`: the attempt was refused with a 429 (with what the server said of
  its rate limit, :class:`~octave_bulk.errors.RefusalHints`, when it said anything);
* :meth:`~Limiter.release`: the attempt was never sent (the run stopped while it waited, a
  connect failure, an error before the request went out): it does not count as accepted, and
  a token limiter may refund it.

:meth:`~Limiter.stop` wakes every waiter when the run stops. :meth:`~Limiter.open` and
:meth:`~Limiter.aclose` bracket the run (no-ops for a local limiter; a shared one does its I/O
there). :meth:`~Limiter.report` says what the limiter let through and learnt, as a
:class:`LimitsReport` (the run's summary, series, CLI and report read it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from octave_bulk.errors import RefusalHints

if TYPE_CHECKING:
    from octave_bulk.settings.model import Settings
    from octave_bulk.state.store import ClaimRider

__all__ = [
    "ClaimCarrier",
    "Limiter",
    "LimiterContext",
    "LimiterFactory",
    "LimitsReport",
    "RefusalHints",
    "Ticket",
]


class Ticket:
    """One attempt's pass, opaque to the caller: each limiter subclasses it with what it
    needs to know of the attempt (hashed by identity)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class LimitsReport:
    """What a limiter let through and learnt of the server.

    Attributes:
        rate: the rate let through now, calls per second (None: no rate gate).
        window: the calls in flight let through now.
        paused: whether the whole pool is paused now (after 429s).
        rate_limited_at: the send rate at which 429s began (None: no rate limit met).
        concurrency_limited_at: the in-flight level at which 429s began (None: no cap met).
        start_rate, start_window: the remembered limits the limiter started from (None each
            where it started from none).
        accepted: attempts that ended without a 429.
        refused: attempts refused with a 429.
        released: attempts handed back unsent.
        retry_after_clamped: Retry-After values longer than the longest pause, clamped.
        period: the length of the rate window learnt (a reset-time Retry-After, an announced
            window), seconds; None: no window known.
        proven_rate: the last rate the search proved (came down to, or held over many
            outcomes) while ``rate`` is a step above it not proven yet; None: ``rate`` is.
    """

    rate: float | None
    window: int
    paused: bool = False
    rate_limited_at: float | None = None
    concurrency_limited_at: int | None = None
    start_rate: float | None = None
    start_window: int | None = None
    accepted: int = 0
    refused: int = 0
    released: int = 0
    retry_after_clamped: int = 0
    period: float | None = None
    proven_rate: float | None = None

    @property
    def held_rate(self) -> float | None:
        """The rate that held: ``rate``, or below it the one proven (a probe a few outcomes
        old is no limit to start a next run from)."""
        return self.rate if self.proven_rate is None else self.proven_rate

    @property
    def settled_rate(self) -> float | None:
        """The rate the run settled at once a rate limit was met (None: none met)."""
        return self.held_rate if self.rate_limited_at is not None else None

    def summary(self) -> dict[str, Any]:
        """The summary's ``limits`` keys (``OUT.summary.json``), JSON-ready."""
        return {
            "rate": _round(self.settled_rate),
            "window": self.window,
            "rate_limited_at": _round(self.rate_limited_at),
            "concurrency_limited_at": self.concurrency_limited_at,
            "refusals_429": self.refused,
            "retry_after_clamped": self.retry_after_clamped,
        }


class Limiter(Protocol):
    """Admission control shared by the workers of one run."""

    async def open(self) -> None:
        """Before the first :meth:`acquire` (a shared limiter connects here)."""
        ...

    async def aclose(self) -> None:
        """After the last ticket was handed back, whatever the run's end."""
        ...

    async def acquire(self) -> Ticket:
        """Wait until an attempt may be sent; returns its ticket.

        Returns early once :meth:`stop` was called; callers check for a stop after it (and
        :meth:`release` the ticket)."""
        ...

    async def on_answer(self, ticket: Ticket) -> None:
        """The attempt was sent and ended without a 429."""
        ...

    async def on_429(
        self, ticket: Ticket, retry_after: float | None, hints: RefusalHints | None = None
    ) -> float:
        """The attempt was refused with a 429; returns how long the whole pool now pauses
        (0 when only this attempt's own retry has to wait). ``hints``: what the 429's rate
        limit headers said (None: nothing), evidence a limiter may use or ignore."""
        ...

    async def release(self, ticket: Ticket) -> None:
        """The attempt was never sent: its place goes back, and it counts as nothing."""
        ...

    def stop(self) -> None:
        """Wake every waiter: the run is stopping."""
        ...

    def report(self) -> LimitsReport:
        """What the limiter let through and learnt, now."""
        ...


@runtime_checkable
class ClaimCarrier(Protocol):
    """A limiter that books its turns in a database may take a call's claim there in the same
    statement, when the claims live in that database (the shared ledger's): one round trip
    for the turn and the claim instead of two."""

    async def acquire_carrying(self, rider: ClaimRider) -> Ticket:
        """:meth:`Limiter.acquire`, taking ``rider``'s claim with the booking it makes (if it
        makes one, in the rider's database); ``rider.claim()`` then finishes the claim."""
        ...


@dataclass(frozen=True, slots=True)
class LimiterContext:
    """What a :data:`LimiterFactory` builds a limiter from.

    Attributes:
        settings: the run's settings (ceilings, start rate, adaptive, poll settings).
        purpose: ``calls`` (the agent's calls or async submits) or ``polls`` (async status
            polls: their limits are the status endpoint's own).
        remembered: the (rate, window) the output's last run settled at; None each for what
            is not known (always none for polls).
        clock: the monotonic clock.
        remembered_period: the rate window's length the last run learnt, seconds (None:
            none known).
    """

    settings: Settings
    purpose: Literal["calls", "polls"] = "calls"
    remembered: tuple[float | None, int | None] = (None, None)
    clock: Callable[[], float] = field(default=time.monotonic)
    remembered_period: float | None = None


LimiterFactory = Callable[[LimiterContext], Limiter]
"""Builds one limiter of a run (called inside the run's event loop)."""


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
