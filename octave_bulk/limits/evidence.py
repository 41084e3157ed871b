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
  window's only when many come in a row and point well past themselves (see
  :meth:`window_rate`): a bucket's or a cap's say a second or so. Once the period is known,
  one 429 that points at the reset believed says the window is spent
  (:meth:`resets_as_believed`). The server may be wrong (or lie):
  the rate derived is an estimate that the limiter probes like any other.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque

__all__ = ["Evidence"]

_SENDS = 4096  # send times kept (and those refused), for the rate delivered lately
_DELIVERED_SPAN = 8  # latencies over which the rate delivered lately is measured
_LATENCIES = 64  # answered calls' durations kept for the median
_RESET_ROW = 8  # 429s in a row, nothing accepted, with a Retry-After beyond ...
_RESET_GAPS = 8  # ... this many send gaps: a spent window's, the wait its reset


class Evidence:
    """Latencies of answered calls, and the calls accepted since the current window began."""

    def __init__(self) -> None:
        self._latencies: deque[float] = deque(maxlen=_LATENCIES)
        self._latency: float | None = None
        self.window_start: float | None = None  # the first send, or the last announced reset
        self.window_sent = 0  # calls sent since then ...
        self.window_refused = 0  # ... and refused
        self.period: float | None = None  # the window's length, once a reset was announced
        self._row_since: float | None = None  # the first of the 429s in a row
        self._sends: deque[float] = deque(maxlen=_SENDS)
        self._refusals: deque[float] = deque(maxlen=_SENDS)  # their send times, in order
        self._levels: deque[tuple[float, int]] = deque(maxlen=_SENDS)  # accepted: (sent, level)

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

    def accepted_at_level(self, sent_at: float, level: int) -> None:
        self._levels.append((sent_at, level))

    def highest_level(self, now: float) -> int:
        """The highest in-flight level at which a call went through lately (over the span
        of :meth:`delivered`; 0 before any answer): no cap lies at or below it, whatever
        refuses now."""
        latency = self.latency
        if latency is None:
            return 0
        since = now - _DELIVERED_SPAN * latency
        return max((level for at, level in self._levels if at >= since), default=0)

    def refused(self, sent_at: float) -> None:
        bisect.insort(self._refusals, sent_at)  # 429s come back nearly in sending order
        if len(self._refusals) == _SENDS:
            self._refusals.popleft()
        if self.window_start is not None and sent_at >= self.window_start:
            self.window_refused += 1

    def delivered(self, now: float) -> tuple[float, bool] | None:
        """Calls accepted per second lately: those sent over the last ``_DELIVERED_SPAN``
        latencies (since the first send, when that is shorter) that were not refused; and
        whether the span was the whole of them (a burst at the start no longer counts much).
        A moving window that refuses everything until its oldest calls leave it has still let
        that many through."""
        if not self._sends:
            return None
        latency, first = self.latency, self._sends[0]
        start = first if latency is None else max(first, now - _DELIVERED_SPAN * latency)
        if now - start <= 0:
            return None
        sent = len(self._sends) - bisect.bisect_left(self._sends, start)
        refused = len(self._refusals) - bisect.bisect_left(self._refusals, start)
        return max(0, sent - refused) / (now - start), start > first

    def window_rate(
        self, now: float, retry_after: float | None, rate: float | None, in_row: int
    ) -> float | None:
        """The rate of a window whose reset the 429s announce: the calls accepted since the
        window began over the time from then to the reset (which starts the next window);
        None while the refusals do not read as a window's.

        They do when ``_RESET_ROW`` or more came in a row with nothing accepted and the
        ``Retry-After`` reaches well past them: beyond ``_RESET_GAPS`` send gaps and twice the
        time since the first of the row. A bucket lets a call through every 1/rate seconds
        and says to wait about that long; a spent window refuses everything until its reset,
        however far."""
        if self._row_since is None:
            self._row_since = now
        if retry_after is None or self.window_start is None or now <= self.window_start:
            return None
        gaps = _RESET_GAPS / rate if rate else 0.0
        if in_row < _RESET_ROW or retry_after < max(gaps, 2 * (now - self._row_since)):
            return None
        start, reset = self.window_start, now + retry_after
        self.period = reset - start
        window_rate = max(1, self.window_sent - self.window_refused) / self.period
        self.next_window(reset)
        return window_rate

    def resets_as_believed(self, now: float, retry_after: float) -> bool:
        """Whether a 429 says to wait for the reset this window was believed to end at
        (within a twentieth of its period; the one already announced while it is awaited),
        once the period is known: the window's quota is spent, whatever the rate."""
        period, start = self.period, self.window_start
        if period is None or start is None:
            return False
        due = start if start > now else start + period * max(1, math.ceil((now - start) / period))
        return abs(now + retry_after - due) <= period / 20

    def next_window(self, reset: float) -> None:
        """A spent window ends at ``reset``: the next one is counted from there."""
        if self.window_start is None or reset > self.window_start:
            self.window_start, self.window_sent, self.window_refused = reset, 0, 0

    def accepted_again(self) -> None:
        """A call sent after the last 429 was accepted: the 429s in a row are over."""
        self._row_since = None
