"""What the server's answers say about its limit, beyond one epoch: how long calls take, and
the quota a rate window let through before its reset.

The adaptive limiter judges each setting by its own epoch (:mod:`octave_bulk.limits.epoch`).
Two things outlive an epoch and are kept here:

* **Latency.** The median of the latest answered calls' durations (``latency``; None before
  the first answer). It bounds the searches in time: at 0.5 calls/s, a count of quiet outcomes
  alone would take minutes, while a rate limit shows within a few round trips of the calls.
* **Windows.** (``period``: the length of the last one announced.) A fixed window (a per-minute quota) lets a burst through at its start, then
  refuses until it resets, often with a ``Retry-After`` pointing at the reset; a moving window
  points at the moment its oldest call leaves it. Either way the calls accepted since the
  stretch of refusals began, over the time from its start to the reset, is the window's rate
  (``window_rate``), where a bucket's estimate (the share accepted since the first refusal,
  zero until the reset) would read the wait as a far slower rate. The 429s count as a
  window's only when, in a row, they point at the same reset (see :meth:`window_rate`): a
  bucket's or a cap's say about the same wait each time. The server may be wrong (or lie):
  the rate derived is an estimate that the limiter probes like any other.
"""

from __future__ import annotations

import bisect
import statistics
from collections import deque

__all__ = ["Evidence"]

_SENDS = 4096  # send times kept (and those refused), for the rate delivered lately
_LATENCIES = 64  # answered calls' durations kept for the median
_RESET_GAPS = 8  # 429s in a row this many send gaps apart point at one reset: a window's ...
_RESET_DRIFT = 0.25  # ... when their resets differ by less than this share of the time between


class Evidence:
    """Latencies of answered calls, and the calls accepted since the current window began."""

    def __init__(self) -> None:
        self._latencies: deque[float] = deque(maxlen=_LATENCIES)
        self._latency: float | None = None
        self.window_start: float | None = None  # the first send, or the last announced reset
        self.window_sent = 0  # calls sent since then ...
        self.window_refused = 0  # ... and refused
        self.period: float | None = None  # the window's length, once a reset was announced
        self._first_reset: tuple[float, float] | None = None  # (at, reset) of a 429 in a row
        self._sends: deque[float] = deque(maxlen=_SENDS)
        self._refusals: deque[float] = deque(maxlen=_SENDS)  # their send times, in order

    @property
    def latency(self) -> float | None:
        """The median duration of the latest answered calls, seconds (None: no answer yet)."""
        if self._latency is None and self._latencies:
            self._latency = statistics.median(self._latencies)
        return self._latency

    def sent(self, sent_at: float) -> None:
        if self.window_start is None:
            self.window_start = sent_at
        if sent_at >= self.window_start:
            self.window_sent += 1
        self._sends.append(sent_at)

    def answered(self, sent_at: float, now: float) -> None:
        self._latencies.append(now - sent_at)
        self._latency = None

    def refused(self, sent_at: float) -> None:
        bisect.insort(self._refusals, sent_at)  # 429s come back nearly in sending order
        if len(self._refusals) == _SENDS:
            self._refusals.popleft()
        if self.window_start is not None and sent_at >= self.window_start:
            self.window_refused += 1

    def delivered(self, now: float) -> float | None:
        """Calls accepted per second lately: those sent over the last eight latencies (since
        the first send, before any answer) that were not refused. A verdict never cuts the
        rate below it: a moving window that refuses everything until its oldest calls leave
        it has still let that many through."""
        if not self._sends:
            return None
        latency = self.latency
        start = self._sends[0] if latency is None else max(self._sends[0], now - 8 * latency)
        if now - start <= 0:
            return None
        sent = len(self._sends) - bisect.bisect_left(self._sends, start)
        refused = len(self._refusals) - bisect.bisect_left(self._refusals, start)
        return max(0, sent - refused) / (now - start)

    def window_rate(
        self, now: float, retry_after: float | None, rate: float | None
    ) -> float | None:
        """The rate of a window whose reset the 429s announce: the calls accepted since the
        window began over the time from then to the reset (which starts the next window);
        None while the refusals do not read as a window's.

        A window's 429s in a row point at one reset, however far apart they come; a bucket's
        (or a cap's) say about the same wait each time, so their resets move with the clock.
        So the reset of the first 429 in a row is compared with a later one's, at least
        ``_RESET_GAPS`` send gaps later and within a quarter of the time between them."""
        if retry_after is None or self.window_start is None or now <= self.window_start:
            return None
        if self._first_reset is None:
            self._first_reset = (now, now + retry_after)
            return None
        first_at, first_reset = self._first_reset
        apart = now - first_at
        if apart <= 0 or (rate is not None and apart < _RESET_GAPS / rate):
            return None
        if abs(now + retry_after - first_reset) > _RESET_DRIFT * apart:
            self._first_reset = (now, now + retry_after)  # the clock moved it: not a window
            return None
        start, reset = self.window_start, now + retry_after
        self.period = reset - start
        window_rate = max(1, self.window_sent - self.window_refused) / self.period
        self.window_start, self.window_sent, self.window_refused = reset, 0, 0
        self._first_reset = None
        return window_rate

    def accepted_again(self) -> None:
        """A call sent after the last 429 was accepted: the 429s in a row are over."""
        self._first_reset = None
