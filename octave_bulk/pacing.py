"""Pool-wide admission control: every attempt passes :meth:`Pacer.acquire` before it is sent.

Three gates, in order:

1. **Pause** - a 429 stops dispatch for the whole pool until its ``Retry-After`` (seconds or
   HTTP date) has passed, or for a jittered exponential backoff when the server gave none;
   a Retry-After beyond ``max_pause`` (600 s by default) is clamped so the run stays alive.
2. **Adaptive rate** - AIMD, as in TCP congestion control: on a 429 the effective rate drops
   multiplicatively to a fraction of the rate the server was actually accepting, once per
   congestion epoch (429s for calls sent before the last decrease do not count again); while
   429s stay away it grows back by a small fraction per second toward the ceiling. Spacing at
   the effective rate is GCRA-style virtual scheduling (each caller books the next slot).
3. **Ceiling** - aiolimiter with a bucket of 10 ms worth of tokens (at least 1): exact
   steady rate with a start-of-run burst of ``max(1, rate / 100)`` calls, instead of the
   full second's worth that ``AsyncLimiter(rate, 1)`` would let out at once (perf-notes §4).

The in-flight cap is separate: it is the number of workers (``Settings.concurrency``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import anyio
from aiolimiter import AsyncLimiter

__all__ = ["Pacer", "parse_retry_after"]

_DECREASE = 0.9  # new rate = 0.9 x the rate the server accepted (or x the current rate)
_INCREASE_PER_S = 0.01  # then +1 % per second without a 429
_MIN_RATE = 0.05  # never below one call per 20 s
_MIN_EPOCH_S = 1.0  # an acceptance estimate needs at least this much history


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds (decimals tolerated) or an
    HTTP date (RFC 9110 §10.2.3). None when absent or unreadable; never negative."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class Pacer:
    """Admission gate shared by all workers of one run. Create it inside the running loop.

    Args:
        ceiling: the rate never exceeded, calls per second; None for no ceiling.
        adaptive: whether 429s lower the effective rate (the pause applies either way).
        pause_backoff: first pause when a 429 carries no Retry-After, doubled per consecutive
            429 epoch up to ``pause_backoff_max``, with full jitter.
        clock: monotonic clock, replaceable in tests.
    """

    def __init__(
        self,
        ceiling: float | None,
        *,
        adaptive: bool = True,
        pause_backoff: float = 1.0,
        pause_backoff_max: float = 60.0,
        max_pause: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.rate = ceiling  # effective rate; None = unlimited
        self._clock = clock
        self._pause_backoff, self._pause_backoff_max = pause_backoff, pause_backoff_max
        self._max_pause = max_pause
        self._limiter: AsyncLimiter | None = None
        if ceiling is not None:
            burst = max(1.0, ceiling * 0.01)
            self._limiter = AsyncLimiter(burst, burst / ceiling)
        self.paused_until = 0.0
        self._next_slot = 0.0
        self._last_decrease = -1.0
        self._last_update = clock()
        self._epoch_start = clock()
        self._epoch_accepted = 0
        self._quiet_epochs = 0
        self._backoff_level = 0

    async def acquire(self) -> float:
        """Wait until a call may be sent; returns the send time (pass it to :meth:`on_429`)."""
        # A loop, not an Event: another 429 may push the pause further while we sleep.
        while (wait := self.paused_until - self._clock()) > 0:  # noqa: ASYNC110
            await anyio.sleep(wait)
        self._grow()
        if self.rate is not None and (self.ceiling is None or self.rate < self.ceiling):
            now = self._clock()
            slot = max(now, self._next_slot)
            self._next_slot = slot + 1.0 / self.rate
            if slot > now:
                await anyio.sleep(slot - now)
        if self._limiter is not None:
            await self._limiter.acquire()
        return self._clock()

    def on_accepted(self) -> None:
        """A call came back without a 429 (success or any other outcome)."""
        self._epoch_accepted += 1
        self._backoff_level = 0

    def on_429(self, sent_at: float, retry_after: float | None) -> float:
        """Pause the pool and (if adaptive) lower the rate; returns the pause in seconds."""
        now = self._clock()
        if retry_after is None:
            cap = min(self._pause_backoff_max, self._pause_backoff * 2**self._backoff_level)
            pause = random.uniform(cap / 2, cap)
            self._backoff_level += 1
        else:
            pause = min(retry_after, self._max_pause)
        self.paused_until = max(self.paused_until, now + pause)
        if self.adaptive and sent_at >= self._last_decrease:
            self._decrease(now)
        return pause

    def _decrease(self, now: float) -> None:
        elapsed = now - self._epoch_start
        accepted = self._epoch_accepted / elapsed if elapsed >= _MIN_EPOCH_S else None
        current = self.rate
        if current is None:
            current = accepted if accepted else None
        elif accepted:
            current = min(current, accepted)
        if current is not None:
            self.rate = max(_MIN_RATE, current * _DECREASE)
        self._last_decrease = now
        # The next epoch starts when the pause ends: that is when calls flow again.
        self._epoch_start = max(now, self.paused_until)
        self._epoch_accepted = 0
        self._last_update = self._epoch_start

    def _grow(self) -> None:
        now = self._clock()
        if self.rate is None or now <= self._last_update:
            return
        if self.ceiling is None or self.rate < self.ceiling:
            grown = self.rate * (1.0 + _INCREASE_PER_S) ** (now - self._last_update)
            self.rate = grown if self.ceiling is None else min(self.ceiling, grown)
        self._last_update = now
