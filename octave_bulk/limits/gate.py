"""The gate every attempt passes: a slot in the in-flight window, then its turn in the rate,
then the end of any pool-wide pause. It holds no policy: the limiter sets the window, the
rate and the pauses; the gate only enforces them.

* **Window.** anyio's ``CapacityLimiter``, resized as the window moves; an attempt whose slot
  vanished while it waited (the window shrank) waits again.
* **Rate.** GCRA virtual scheduling (as aiometer's). Above ``_CATCH_UP_ABOVE`` calls per
  second a turn may come up to a tenth of a call early, to make up the event loop's timer
  lateness (~0.1-1 ms, which costs 10-20 % at 400/s if never made up); below it, never (a
  millisecond costs 1 % at 10/s, 5 % at 50/s: docs/performance.md weighs it), as a server
  that slow may have no burst at all (a token bucket of 1 refuses any call that comes even a
  little early, so a catch-up would be refused at exactly its rate). One waiter books its
  turn at a time, so that nothing is booked ahead at a rate that is about to change; a new
  rate's first turn is a gap of that rate after the last send, never at once.
* **Pause.** Until ``paused_until`` nothing is sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from octave_bulk.limits.base import Ticket

__all__ = ["AdaptiveTicket", "Gate", "Waits"]

_TOLERANCE = 0.1  # calls a turn may come early (the timer's lateness made up) ...
_CATCH_UP_ABOVE = 100.0  # ... above this rate (calls per second) only


@dataclass(slots=True, eq=False)  # hashed by identity (a borrower of a capacity limiter)
class AdaptiveTicket(Ticket):
    """The adaptive limiter's ticket: when the attempt was sent, at which in-flight level, in
    which epoch (-1 once it counts no more); ``answered`` once its slot is free."""

    sent_at: float = 0.0
    level: int = 0
    epoch: int = -1
    answered: bool = False


class Waits:
    """What an attempt waited for before it passed."""

    __slots__ = ("rate", "window")

    def __init__(self) -> None:
        self.window = self.rate = False


class Gate:
    """The window, the rate and the pause, shared by all workers of one run."""

    def __init__(
        self,
        rate: float | None,
        window: int,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        self.rate, self.window = rate, window
        self.in_flight = 0  # passed and not left
        self.paused_until = 0.0
        self._clock, self._sleep = clock, sleep
        self._slots = anyio.CapacityLimiter(window)
        self._next_turn = 0.0
        self._last_turn = -float("inf")  # the last turn given (a send's)
        self._stopped = anyio.Event()
        self._woken = anyio.Event()  # set (and replaced) when the run stops or the rate moves
        self._turn_lock = anyio.Lock()
        self._window_waiters: set[anyio.CancelScope] = set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def set_rate(self, rate: float | None) -> None:
        """A new rate from now on, its first turn a gap of the new rate after the last send
        (never at once: a send right after the last is a burst that a bucket without burst
        refuses, and a probe's first send would be refused for no fault of its rate); the
        waiter for a turn books it again."""
        self.rate = rate
        self._next_turn = self._last_turn + 1.0 / rate if rate else self._clock()
        self._wake()

    def set_window(self, window: int) -> None:
        self.window = window
        self._slots.total_tokens = window

    def hold_back(self, until: float) -> None:
        """No turn before ``until`` (a rate just cut lets its refusals clear first)."""
        self._next_turn = max(self._next_turn, until)

    def pause(self, until: float) -> bool:
        """Pause the pool until ``until``; False when it already was, that long."""
        if until <= self.paused_until:
            return False
        self.paused_until = until
        self.hold_back(until)
        return True

    def stop(self) -> None:
        """Wake every waiter: the run is stopping."""
        self._stopped.set()
        self._wake()
        for scope in self._window_waiters:
            scope.cancel()

    async def enter(self, ticket: AdaptiveTicket) -> Waits | None:
        """Wait for a window slot, the rate and any pause; None when the run stopped while
        waiting for a slot (then none is held: ``ticket.answered`` is set)."""
        waits = Waits()
        while True:
            try:
                self._slots.acquire_on_behalf_of_nowait(ticket)
            except anyio.WouldBlock:
                waits.window = True
                if not await self._wait_for_window(ticket):
                    return None
            while not self.stopped:
                while (wait := self.paused_until - self._clock()) > 0 and not self.stopped:
                    await self._nap(wait)  # a loop: a later 429 may push the pause further
                if self.rate is not None:
                    async with self._turn_lock:
                        waits.rate |= await self._rate_turn()
                if self.paused_until <= self._clock():
                    break
            if self.in_flight < self.window or self.stopped:
                self.in_flight += 1
                return waits
            # The window shrank while this attempt waited: its slot is no longer there.
            self._slots.release_on_behalf_of(ticket)
            waits.window = True

    def leave(self, ticket: AdaptiveTicket) -> bool:
        """Free the ticket's slot; False when it held none (or was left already)."""
        if ticket.answered:
            return False
        ticket.answered = True
        self.in_flight -= 1
        self._slots.release_on_behalf_of(ticket)
        return True

    async def _wait_for_window(self, ticket: AdaptiveTicket) -> bool:
        with anyio.CancelScope() as scope:
            self._window_waiters.add(scope)
            try:
                await self._slots.acquire_on_behalf_of(ticket)
            finally:
                self._window_waiters.discard(scope)
        ticket.answered = scope.cancelled_caught  # an unheld ticket must not be released
        return not scope.cancelled_caught

    async def _rate_turn(self) -> bool:
        """Wait for the next turn at the current rate (GCRA); whether it had to wait."""
        waited = False
        while (rate := self.rate) is not None and not self.stopped:
            now = self._clock()
            early = _TOLERANCE / rate if rate > _CATCH_UP_ABOVE else 0.0
            turn = max(now - early, self._next_turn)
            if turn <= now:
                self._next_turn = turn + 1.0 / rate
                self._last_turn = turn
                break
            waited = True
            await self._nap(turn - now)  # the rate may change meanwhile: computed again
        return waited

    async def _nap(self, seconds: float) -> None:
        """Sleep, waking early when the run stops or the rate changes."""
        if self._sleep is not None:  # a test's clock
            await self._sleep(seconds)
            return
        with anyio.move_on_after(seconds):
            await self._woken.wait()

    def _wake(self) -> None:
        self._woken.set()
        self._woken = anyio.Event()
