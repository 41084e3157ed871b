"""The limiter contract: every attempt passes a limiter before it is sent.

A run holds one :class:`Limiter`, shared by all its workers. A worker calls :meth:`acquire`
before each attempt and gets a :class:`Ticket`, then reports how that attempt ended with
exactly one of :meth:`~Limiter.on_answer` (anything but a 429: a success, another error, a
transport failure) or :meth:`~Limiter.on_429`, passing the ticket back. :meth:`~Limiter.stop`
wakes every waiter when the run stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Limiter", "Ticket"]


@dataclass(slots=True, eq=False)  # hashed by identity (a borrower of a capacity limiter)
class Ticket:
    """One attempt's pass: when it was sent, at which in-flight level, in which epoch."""

    sent_at: float
    level: int
    epoch: int
    answered: bool = False


class Limiter(Protocol):
    """Admission control shared by the workers of one run."""

    @property
    def rate(self) -> float | None:
        """The rate currently let through, calls per second; None for no limit."""
        ...

    @property
    def window(self) -> int:
        """The calls in flight currently let through."""
        ...

    async def acquire(self) -> Ticket:
        """Wait until a call may be sent; returns its ticket.

        Returns early once :meth:`stop` was called; callers check for a stop after it."""
        ...

    def on_answer(self, ticket: Ticket) -> None:
        """The attempt ended without a 429."""
        ...

    def on_429(self, ticket: Ticket, retry_after: float | None) -> float:
        """The attempt was refused with a 429; returns how long the whole pool now pauses
        (0 when only this attempt's own retry has to wait)."""
        ...

    def stop(self) -> None:
        """Wake every waiter: the run is stopping."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the limiter learnt of the server, JSON-ready (for the summary)."""
        ...
