"""Pool-wide admission control: every attempt passes :meth:`Pacer.acquire` before it is sent.

Three gates, in order:

1. **Pause** - a 429 that says the pool is too fast stops dispatch for the whole pool until its
   ``Retry-After`` (seconds or HTTP date) has passed, or for a jittered exponential backoff when
   the server gave none; a Retry-After beyond ``max_pause`` (600 s by default) is clamped so the
   run stays alive. A 429 says so unless it is *isolated*: under 5 % of at least 20 answers in
   the last 2 s. An isolated 429 among many accepted calls says the rate is being accepted
   (a gateway's sporadic refusal, a neighbour's burst); only its own retry waits out its
   Retry-After (in the engine), and it neither pauses the pool nor counts against the rate;
   it only restarts the quiet period, so the rate does not climb past it.
   A rate above the server's limit draws 429s on a share of calls that grows with the
   overshoot (a 10 % overshoot: ~9 %), so it is never isolated; at low volume (a real run at
   a few calls per second) every 429 pauses the pool.
2. **Adaptive rate** - a bracketing search for the server's limit, in the spirit of TCP's
   multiplicative decrease. A 429 for a call sent at the current rate is a strike against it;
   the second strike (or two 429s within a second) steps the rate down: back to the last rate
   that was sustained without a 429 when there is one below, else by 10 % - or, while the
   run is still probing (no quiet period yet), by half, never below 90 % of what the server
   was accepting over the last 2 s. After every quiet period (2 s and 10 calls without a 429)
   the rate is known to hold and climbs 10 % toward the ceiling, but not onto a rate that
   drew a step down; such a rate is forgiven by 10 % every 30 s, so the search re-probes and
   follows a limit that rises. One strike is not enough because a sporadic 429 says little
   about the rate, while a rate above the limit draws a 429 in every pause-and-resume cycle.
   Calls sent before the last change do not count. Spacing at the effective rate is
   GCRA-style virtual scheduling (each caller books the next slot; a booking is re-checked
   against a pause after waking).
3. **Ceiling** - aiolimiter with a bucket of 10 ms worth of tokens (at least 2): exact
   steady rate with a start-of-run burst of ``max(2, rate / 100)`` calls, instead of the
   full second's worth that ``AsyncLimiter(rate, 1)`` would let out at once
   (docs/performance.md, section "Rate limiting with aiolimiter").

The in-flight cap is separate: it is the number of workers (``Settings.concurrency``).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable

import anyio
from aiolimiter import AsyncLimiter

from octave_bulk.observe.log import log_event

__all__ = ["Pacer"]

_CLIMB = 1.10  # after a quiet period the rate grows by 10 %
_QUIET_S = 2.0  # ... a quiet period lasts at least this long
_QUIET_CALLS = 10  # ... and at least this many calls at the current rate
_FORGIVE_S = 30.0  # a failed rate is forgiven by 10 % per this many quiet seconds
_MIN_RATE = 0.05  # never below one call per 20 s
_MIN_PAUSE = 0.25  # an HTTP-date Retry-After can parse to 0 (1 s resolution): pause anyway
_WINDOW_S = 2.0  # recent answers: the window for rates and the 429 share
_ISOLATED_SHARE = 0.05  # a 429 is isolated below this share of recent answers ...
_ISOLATED_ANSWERS = 20  # ... and with at least this many of them


class Pacer:
    """Admission gate shared by all workers of one run. Create it inside the running loop.

    Args:
        ceiling: the rate never exceeded, calls per second; None for no ceiling.
        adaptive: whether 429s lower the effective rate (the pause applies either way).
        pause_backoff: first pause when a 429 carries no Retry-After, doubled per consecutive
            429 up to ``pause_backoff_max``, with jitter (half to all of it).
        max_pause: the longest pause a Retry-After can impose.
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
        self.good: float | None = None  # highest rate sustained without a 429
        self.failed: float | None = None  # lowest rate that drew a 429 (forgiven over time)
        self._clock = clock
        self._pause_backoff, self._pause_backoff_max = pause_backoff, pause_backoff_max
        self._max_pause = max_pause
        self._limiter: AsyncLimiter | None = None
        if ceiling is not None:
            # A 1-token bucket cannot bank the event loop's timer lateness: it delivered 96 %
            # of 50/s here; 2 tokens deliver the rate (docs/performance.md, measured at 50/s).
            burst = max(2.0, ceiling * 0.01)
            self._limiter = AsyncLimiter(burst, burst / ceiling)
        self.paused_until = 0.0
        self._next_slot = 0.0
        self._changed_at = clock()  # calls sent before this do not judge the current rate
        self._quiet_since = clock()  # the last change or fresh 429
        self._calls_since_quiet = 0
        self._strikes = 0  # fresh 429s at the current rate
        self._last_strike = -1e9
        self._settled = False  # a quiet period has passed: no more halving
        self._failed_at = clock()  # when ``failed`` was last set or forgiven
        self._backoff_level = 0
        self._stopped = anyio.Event()
        self._sent: deque[float] = deque(maxlen=512)  # recent send times, to measure the rate
        self._accepted: deque[float] = deque(maxlen=512)  # recent answers that were not 429s
        self._limited: deque[float] = deque(maxlen=512)  # recent 429s

    def stop(self) -> None:
        """Wake every waiter now: the run is stopping (callers check that after acquire)."""
        self._stopped.set()

    async def _nap(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._stopped.wait()

    async def acquire(self) -> float:
        """Wait until a call may be sent; returns the send time (pass it to :meth:`on_429`).

        Returns early, without a slot, once :meth:`stop` was called.
        """
        while not self._stopped.is_set():
            # A loop, not an Event: another 429 may push the pause further while we sleep.
            while (wait := self.paused_until - self._clock()) > 0 and not self._stopped.is_set():
                await self._nap(wait)
            self._climb()
            rate = self.rate
            if rate is not None and (self.ceiling is None or rate < self.ceiling):
                now = self._clock()
                slot = max(now, self._next_slot)
                self._next_slot = slot + 1.0 / rate
                if slot > now:
                    await self._nap(slot - now)
            if self._limiter is not None and not self._paused():
                await self._limiter.acquire()
            if self._paused():
                continue  # a 429 arrived while we waited for our turn: wait out the pause
            sent = self._clock()
            self._sent.append(sent)
            self._calls_since_quiet += 1
            return sent
        return self._clock()

    def _paused(self) -> bool:
        return self.paused_until > self._clock()

    def on_answer(self, sent_at: float) -> None:
        """A call came back without a 429 (success or any other outcome)."""
        self._backoff_level = 0
        self._accepted.append(self._clock())

    def on_429(self, sent_at: float, retry_after: float | None) -> float:
        """Pause the pool and (if adaptive) step the rate down; returns the pause in seconds
        (0 for an isolated 429, which only delays its own retry). A new pause or slow-down is
        logged as a ``rate_limited`` event."""
        rate, was_paused = self.rate, self._paused()
        pause = self._judge_429(sent_at, retry_after)
        if self.rate != rate or (pause > 0 and not was_paused):
            rounded = None if self.rate is None else round(self.rate, 3)
            log_event("rate_limited", pause_s=round(pause, 2), rate=rounded)
        return pause

    def _judge_429(self, sent_at: float, retry_after: float | None) -> float:
        """The pause and the rate step for one 429.

        A 429 for a call sent before the last change (it was already on the wire when an
        earlier 429 paused the pool) neither extends the pause nor escalates the backoff: the
        pool has reacted already. Only calls sent since say something about the current state.
        """
        now = self._clock()
        self._limited.append(now)
        fresh = sent_at >= self._changed_at
        if self._isolated(now):
            if fresh:  # no reason to slow down, but none to speed up either
                self._quiet_since, self._calls_since_quiet = now, 0
            return 0.0
        if retry_after is not None:
            pause = min(max(retry_after, _MIN_PAUSE), self._max_pause)
        elif fresh:
            cap = min(self._pause_backoff_max, self._pause_backoff * 2**self._backoff_level)
            pause = random.uniform(cap / 2, cap)
            self._backoff_level += 1
        else:
            return max(0.0, self.paused_until - now)
        if fresh or self.paused_until > now:
            self.paused_until = max(self.paused_until, now + pause)
        if fresh and self.adaptive:
            self._strikes += 1
            close_behind = now - self._last_strike <= 1.0
            self._last_strike = now
            self._quiet_since, self._calls_since_quiet = now, 0
            if self._strikes >= 2 or close_behind:
                self._step_down(now)
        return pause

    def _isolated(self, now: float) -> bool:
        """Too few 429s among recent answers to say anything about the pool's rate."""
        since = now - _WINDOW_S
        limited = sum(1 for t in self._limited if t > since)
        answers = limited + sum(1 for t in self._accepted if t > since)
        return answers >= _ISOLATED_ANSWERS and limited < _ISOLATED_SHARE * answers

    @staticmethod
    def _measured(times: deque[float], now: float, least: int) -> float | None:
        """Events per second over the last 2 s, when there are at least ``least`` of them."""
        recent = [t for t in times if t > now - _WINDOW_S]
        if len(recent) < least:
            return None
        return len(recent) / max(now - recent[0], 0.05)

    def _step_down(self, now: float) -> None:
        current = self.rate if self.rate is not None else self._measured(self._sent, now, 2)
        if current is None:
            return  # unlimited and too little history: the pause alone has to do
        self.failed = current if self.failed is None else min(self.failed, current)
        self._failed_at = now
        if self.good is not None and self.good < current:
            target = self.good  # back to the last rate that held
        elif self._settled:
            target = current * 0.9  # the rate that held drew 429s too: a modest step
            self.good = None
        else:
            target = current / 2  # still probing: halve, but not below what the server took
            accepted = self._measured(self._accepted, now, _QUIET_CALLS)
            if accepted is not None:
                target = max(target, min(current, accepted) * 0.9)
        self.rate = max(_MIN_RATE, target)
        resume = max(now, self.paused_until)
        self._changed(resume)
        self._next_slot = max(self._next_slot, resume)

    def _changed(self, when: float) -> None:
        self._changed_at = self._quiet_since = when
        self._calls_since_quiet = 0
        self._strikes = 0

    def _climb(self) -> None:
        rate, now = self.rate, self._clock()
        if rate is None or now < self._quiet_since + _QUIET_S:
            return
        if self._calls_since_quiet < _QUIET_CALLS:
            return
        self._settled = True
        self.good = rate if self.good is None else max(self.good, rate)
        if self.failed is not None and now - self._failed_at >= _FORGIVE_S:
            self.failed *= _CLIMB
            self._failed_at = now
            if self.ceiling is not None and self.failed >= self.ceiling:
                self.failed = None
        target = rate * _CLIMB
        if self.ceiling is not None:
            target = min(self.ceiling, target)
        if self.failed is not None and target >= self.failed * 0.97:
            target = rate  # one step would land on a rate that failed: hold here
        if target > rate:
            self.rate = target
            self._changed(now)
        else:  # the rate held: earlier strikes are forgiven
            self._quiet_since, self._calls_since_quiet, self._strikes = now, 0, 0
