"""The limiter contract: every attempt passes a limiter before it is sent.

A run holds one :class:`Limiter`, shared by all its workers. A worker calls :meth:`acquire`
before each attempt, then reports how that attempt ended with exactly one of
:meth:`~Limiter.on_answer` (anything but a 429, including transport errors) or
:meth:`~Limiter.on_429`, passing the send time ``acquire`` returned. :meth:`~Limiter.stop`
wakes every waiter when the run stops.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Limiter"]


class Limiter(Protocol):
    """Admission control shared by the workers of one run."""

    @property
    def rate(self) -> float | None:
        """The rate currently let through, calls per second; None for no limit."""
        ...

    async def acquire(self) -> float:
        """Wait until a call may be sent; returns its send time (monotonic seconds).

        Returns early once :meth:`stop` was called; callers check for a stop after it."""
        ...

    def on_answer(self, sent_at: float) -> None:
        """The call sent at ``sent_at`` ended without a 429."""
        ...

    def on_429(self, sent_at: float, retry_after: float | None) -> float:
        """The call sent at ``sent_at`` was refused with a 429; returns how long the whole
        pool now pauses (0 when only this call's own retry has to wait)."""
        ...

    def stop(self) -> None:
        """Wake every waiter: the run is stopping."""
        ...
