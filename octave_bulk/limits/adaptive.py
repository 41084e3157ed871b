"""The adaptive limiter: finds the server's rate limit and concurrency cap while it runs.

Two settings, both enforced by the :class:`~octave_bulk.limits.gate.Gate`: the **rate** (at
most ``--rate``) and the in-flight **window** (at most ``--concurrency``, else the safety bound
:data:`WINDOW_BOUND`, searched up from :data:`FIRST_WINDOW`). The constants count outcomes;
with calls slower than several send gaps (rate x latency >= ``_SLOW_CALLS``: Octave's 30-60 s)
the searches are bounded by the calls' latency too (docs/design.md, "Pacing").

* **Epochs.** Each change of setting starts an :class:`~octave_bulk.limits.epoch.Epoch`, judged
  by its own attempts only. An outcome is *known* when answered, or once unrefused for three
  refusal round trips (a 429 comes back at network speed): verdicts at 40-s calls take ms.
* **Verdicts** (:mod:`octave_bulk.limits.verdicts`): how far a refused rate is cut; a cap told
  from a rate by an experiment, never by the level alone; a window spent until its reset
  waited out and paced at its quota; a full window grown at once; a refused probe gone back from.
* **Probes.** An epoch of quiet outcomes held back by the rate or a full window is evidence of
  room. The rate doubles until the first 429, then bisects (geometric mean) between ``good``
  and ``bad`` until they are within ``CONVERGED``, and holds. Past ``bad`` it probes in steps
  from ``_STEP`` (doubled while they hold, up to ``_MAX_STEP``; the first one half way into a
  bracket too narrow to bisect) after a patience of quiet outcomes that doubles per probe
  refused (``MAX_BACKOFF``), at most ``_PATIENCE_LATENCIES`` latencies (doubled likewise) with
  slow calls. Once a window's period is known, no epoch is shorter (it shows a rate at its end).
* **Memory.** A remembered rate starts the run (the window at its bound) and is verified like
  any other (no ``bad`` above it; steps of 4 x ``_STEP``); a remembered window is a suspected
  cap. What a next run starts from: :mod:`octave_bulk.limits.proven`.
* **Pauses.** After ``VERDICT`` 429s in a row, nothing sent after them accepted (older calls'
  answers: no news), or one at a known window's reset, the pool waits out its ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from octave_bulk.limits.base import LimitsReport, RefusalHints, Ticket
from octave_bulk.limits.epoch import Epoch
from octave_bulk.limits.evidence import Evidence
from octave_bulk.limits.gate import AdaptiveTicket, Gate
from octave_bulk.limits.proven import PROVEN, ProvenRate
from octave_bulk.limits.verdicts import CONVERGED, MAX_BACKOFF, REFUSED, VERDICT, Verdicts
from octave_bulk.observe.log import log_event

__all__ = ["FIRST_WINDOW", "WINDOW_BOUND", "AdaptiveLimiter"]

WINDOW_BOUND = 512  # with no --concurrency: the window's safety bound (descriptors permitting)
FIRST_WINDOW = 32  # ... and where its search starts

_QUIET = 16  # known outcomes without a 429 before a probe upwards
_TOLERATED = 0.05  # 429s above this share of the known outcomes judge a rate (see verdicts)
_FIRST_GROWTH = 2.0  # the rate doubles per quiet epoch until the first 429 ...
_STEP = 1 / 16  # ... then grows by this share, doubled per probe that holds ...
_MAX_STEP = 1 / 2  # ... up to this: a long moving window lets a ramp through for a while
_HELD = 8 * _QUIET  # outcomes at one rate before its isolated 429s are added up ...
_TOLERATED_HELD = 0.02  # ... and, above this share, cut it by that share
_MIN_QUIET = 4  # the fewest quiet outcomes that make an epoch quiet
_SLOW_CALLS = 4  # rate x latency from which searches are bounded by the calls' latency
_PATIENCE_LATENCIES = 4  # a probe waits at most this many calls' latencies of quiet outcomes
_MIN_RATE = 0.01  # one call per 100 s: a floor, so that a run never stops by pacing alone


class AdaptiveLimiter:
    """Admission control shared by all workers of one run (create it inside the loop).

    Args:
        rate_ceiling: calls per second never exceeded; None for no ceiling.
        window_ceiling: calls in flight never exceeded (``--concurrency``).
        start_rate: the rate to start at (a remembered one), else the ceiling, else
            ``search_from``.
        search_from: with neither, the rate the search starts at (doubling while it holds).
        start_window: the window to start at (a remembered one), else the ceiling.
        first_window: where the window's search starts when nothing is remembered.
        start_period: a rate window's length remembered (a per-minute quota's 60 s).
        refusal_rtt: a 429's round trip, seconds, until one is measured.
        adaptive: False holds the starting setting (an overwhelmed pool still pauses).
        max_pause: the longest pool pause a Retry-After can impose, seconds.
        clock, sleep: the monotonic clock and its sleep, replaceable in tests.
        name: the log event of its pacing changes (``poll_pacing`` for async status polls).
    """

    def __init__(
        self,
        rate_ceiling: float | None,
        window_ceiling: int,
        *,
        start_rate: float | None = None,
        search_from: float = 16.0,
        start_window: int | None = None,
        start_period: float | None = None,
        first_window: int | None = None,
        refusal_rtt: float = 0.1,
        adaptive: bool = True,
        max_pause: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        name: str = "pacing",
    ) -> None:
        self.name = name
        self.start_rate, self.start_window = start_rate, start_window
        self.rate_ceiling, self.window_ceiling = rate_ceiling, window_ceiling
        self.adaptive, self.max_pause = adaptive, max_pause
        self.clock = clock
        self.search_from = search_from
        first = start_rate or rate_ceiling or (search_from if adaptive else None)
        searched = None if start_rate else first_window
        self.gate = Gate(
            None if first is None else _clamp(first, rate_ceiling),
            max(1, min(window_ceiling, start_window or searched or window_ceiling)),
            clock=clock,
            sleep=sleep,
        )
        self.epoch = Epoch(0)
        self.good: float | None = start_rate  # the highest rate that held
        self.evidence = Evidence()
        self.evidence.period = start_period  # no epoch shorter: a window shows its rate at its end
        self.cap_known = False  # proven once calls came back (not remembered): probed rarely
        # A cap sighted once (or remembered): seen again at that level, it is proven.
        self.suspected_cap = start_window + 1 if start_window else None
        self.suspected_in = -1  # the epoch of the first sighting
        self.rate_before_cap: float | None = self.gate.rate if start_window else None
        self.rate_limited_before_cap = False  # a rate verdict came before the sighting
        self.delivered_at_cut: float | None = None  # calls/s let through, at the last cut
        self.announced_rate: float | None = None  # a limit per window the 429s announced
        self.bad: float | None = None  # the lowest rate refused since (none above memory)
        self.cut_once = start_rate is not None
        self.eased = 0  # small steps down since a quiet epoch (see _cut_rate)
        self._probing = False
        self.probed_from: float | None = None  # the rate that held before a rate probe
        self.refused_probe: float | None = None  # the last rate probe refused (see verdicts)
        self.failed_probes = self._quiet_known = 0
        self._window_step = 1
        # The next probe's growth once cut (x2 while probes hold; x4 from a remembered rate)
        self._rate_step = _STEP * (4 if start_rate else 1)
        self._held_known = self._held_refused = 0  # outcomes, 429s since the rate last moved
        self.proven = ProvenRate(start_rate)  # what a next run may start from
        self.refusal_rtt = refusal_rtt  # seconds a refusal takes to come back: learnt
        self.rate_limited_at: float | None = None
        self.concurrency_limited_at: int | None = None
        self.refusals = self.clamped_retry_after = 0
        self.answers = self.released = 0  # answers other than 429s; tickets handed back unsent
        # 429s since the last call accepted that was sent after them (older calls: no news)
        self.refused_in_row, self._last_refused_sent = 0, -math.inf
        self.verdicts = Verdicts(self)

    @property
    def rate(self) -> float | None:
        """The rate let through now, calls per second (None: no rate gate)."""
        return self.gate.rate

    @property
    def window(self) -> int:
        """The calls in flight let through now."""
        return self.gate.window

    def stop(self) -> None:
        """Wake every waiter: the run is stopping (callers check that after acquire)."""
        self.gate.stop()

    async def open(self) -> None:
        """Nothing to open: the limiter is local to the run (so is :meth:`aclose`)."""

    async def aclose(self) -> None: ...

    async def acquire(self) -> AdaptiveTicket:
        """Wait for a slot in the window, then for the rate and any pause; returns the
        attempt's ticket (give it back to :meth:`on_answer`, :meth:`on_429` or
        :meth:`release`)."""
        ticket = AdaptiveTicket()
        waits = await self.gate.enter(ticket)
        if waits is None:
            return ticket  # stopped: no slot, nothing to send
        epoch = self.epoch
        ticket.sent_at, ticket.level = self.clock(), self.gate.in_flight
        ticket.epoch = epoch.number
        epoch.sent_one(ticket, waits)
        self.evidence.sent(ticket.sent_at)
        self.settle()  # at 40-s calls, sends are what moves the verdicts on
        if self.adaptive:
            self.maybe_probe()
            if self.gate.in_flight >= self.window and not epoch.held_by_window:
                # This send filled the window: at 40-s calls nothing would move the verdicts on
                # for 40 s. Once the epoch's sends are known (unrefused for three refusal round
                # trips), a window full without a 429 is judged: it may grow at once.
                epoch.held_by_window, judge = True, self.verdicts.judge_full_window
                asyncio.get_running_loop().call_later(4 * self.refusal_rtt, judge, epoch)
        return ticket

    def _leave(self, ticket: Ticket) -> tuple[AdaptiveTicket, bool]:
        """Free the ticket's window slot; whether its outcome still counts for the epoch."""
        if not isinstance(ticket, AdaptiveTicket):
            raise TypeError(f"not a ticket of this limiter: {ticket!r}")
        return ticket, self.gate.leave(ticket) and ticket.epoch == self.epoch.number

    async def release(self, ticket: Ticket) -> None:
        """The attempt was never sent: its window slot goes back, and it judges nothing."""
        own, _ = self._leave(ticket)
        own.epoch = -1  # never counted as accepted (see settle)
        self.released += 1

    # --- answers ----------------------------------------------------------------------

    async def on_answer(self, ticket: Ticket) -> None:
        """The attempt ended without a 429 (a success, or any other outcome)."""
        ticket, counts = self._leave(ticket)
        # No refusal takes longer than the fastest answer's round trip.
        self.refusal_rtt = min(self.refusal_rtt, max(1e-3, self.clock() - ticket.sent_at))
        self.answers += 1
        self.evidence.answered(ticket.sent_at, self.clock())
        if counts:
            self._accepted(ticket)
        self._accepted_again(ticket)
        self.settle()
        if self.adaptive:
            self.maybe_probe()

    async def on_429(
        self, ticket: Ticket, retry_after: float | None, hints: RefusalHints | None = None
    ) -> float:
        """The attempt was refused; returns the pool-wide pause this caused (0: only this
        attempt's own retry waits); ``hints``: evidence (:meth:`Verdicts.heard`)."""
        ticket, counts = self._leave(ticket)
        rate_said = self.verdicts.heard(hints, retry_after)
        now = self.clock()
        self.refusals += 1
        self.evidence.refused(ticket.sent_at)
        self.refusal_rtt = 0.8 * self.refusal_rtt + 0.2 * max(1e-3, now - ticket.sent_at)
        if retry_after is not None and retry_after > self.max_pause:
            self.clamped_retry_after += 1
            log_event("retry_after_clamped", asked_s=round(retry_after), used_s=self.max_pause)
            retry_after = self.max_pause
        if not counts:
            return max(0.0, self.gate.paused_until - now)  # sent before the last change
        epoch = self.epoch
        epoch.known_one(ticket, accepted=False)
        self.settle()
        self.refused_in_row += 1
        self._last_refused_sent = max(self._last_refused_sent, ticket.sent_at)
        if self.adaptive and (spent := self.verdicts.window_spent(now, retry_after)) is not None:
            return spent  # a known window's quota spent before its reset: no rate's verdict
        window_rate = self.evidence.window_rate(now, retry_after, self.rate, self.refused_in_row)
        if self.adaptive and window_rate is not None:
            return self.verdicts.window_exhausted(now, window_rate, retry_after or 0.0)
        # Refusals come back at network speed: an attempt not refused yet most likely is not.
        share = epoch.refused / epoch.sent
        judged = epoch.refused >= REFUSED and (
            epoch.known >= VERDICT or 4 * epoch.refused >= epoch.known  # a quarter: at once
        )
        cap = self.concurrency_limited_at
        below = cap is not None and (ticket.level < cap - 1 or rate_said and not self.cap_known)
        if self.adaptive and below:
            # Refused below the cap it seemed to have, or its quota spent by the server's word
            # before calls came back: a rate (a bucket's refusals follow the count in flight).
            self.concurrency_limited_at = None
            self.start_epoch(window=self.window_ceiling, reason="not_concurrency")
            return 0.0
        concurrency = self.adaptive and not rate_said and self.verdicts.judge_concurrency()
        if self.adaptive and not concurrency and self.verdicts.probe_refused():
            return 0.0
        if self.adaptive and not concurrency and judged and share > _TOLERATED:
            self.verdicts.cut_rate(now)
        overwhelmed = self.refused_in_row >= VERDICT  # nothing accepted meanwhile
        if not concurrency and overwhelmed and retry_after is not None:
            if self.gate.pause(now + retry_after):
                log_event("paused", seconds=round(retry_after, 2), share_429=round(share, 2))
            return retry_after
        return 0.0

    def _accepted(self, ticket: AdaptiveTicket) -> None:
        epoch = self.epoch
        epoch.known_one(ticket, accepted=True)
        self.evidence.accepted_at_level(ticket.sent_at, ticket.level)
        self._accepted_again(ticket)
        cap = self.concurrency_limited_at
        if cap is not None and not self.cap_known and ticket.level > cap:
            # A cap inferred before calls came back, and a call above it went through: the
            # refusals were a rate's. The window opens; the rate takes the next verdict.
            self.concurrency_limited_at = None
            self.start_epoch(window=self.window_ceiling, reason="not_concurrency")
        if self.suspected_cap is not None and ticket.level > self.suspected_cap:
            self.suspected_cap = None  # went through above it (one level of slack: our
            # count includes answers still in transit): no cap there
        ticket.epoch = -1  # counted: its answer, if it comes later, must not count again

    def _accepted_again(self, ticket: AdaptiveTicket) -> None:
        if ticket.sent_at > self._last_refused_sent:  # an old call's answer is no news
            self.refused_in_row = 0
            self.evidence.accepted_again()

    def settle(self) -> None:
        """Attempts unrefused for three refusal round trips count as accepted."""
        epoch, horizon = self.epoch, self.clock() - 3 * self.refusal_rtt
        while epoch is self.epoch and (ticket := epoch.next_known(horizon)) is not None:
            if not ticket.answered and ticket.epoch == epoch.number:
                self._accepted(ticket)

    # --- decisions --------------------------------------------------------------------

    def failed_probe(self, moved: bool = False) -> None:
        """Count a refused probe; a setting that held and is now refused wholesale
        (``moved``) means the limit moved, and the search starts afresh."""
        if self._probing:
            self.failed_probes += 1
        elif moved:
            self.failed_probes = 0
        self._quiet_known = 0
        self._window_step = 1
        self._rate_step = _STEP

    def maybe_probe(self) -> None:
        epoch, rate = self.epoch, self.rate
        searching = not self.cut_once or (
            rate is not None and self.bad is not None and self.bad > rate * CONVERGED
        )
        quiet = VERDICT if searching else _QUIET  # a bracket narrows fast; past it, probes cost
        if epoch.window_waits or epoch.held_by_window:  # a small window shows few at a time
            quiet = min(quiet, self.window)
        latency = self.evidence.latency
        in_flight = rate * latency if latency is not None and rate is not None else 0.0
        slow = in_flight >= _SLOW_CALLS  # calls slower than several send gaps
        if latency is not None:  # no epoch lasts over two round trips of the calls
            quiet = max(_MIN_QUIET, min(quiet, math.ceil(2 * in_flight)))
        period = self.evidence.period
        if period is not None and rate is not None and not epoch.held_by_window:
            quiet = max(quiet, math.ceil(rate * period))  # a rate window shows a rate at its end
        if epoch.known < quiet or epoch.refused > _TOLERATED * epoch.sent:
            return  # too early, or a verdict on the rate is due
        # Held back by the window, and the window was full: calls at its top level went through.
        window_bound = (epoch.window_waits >= epoch.sent / 4 or epoch.held_by_window) and max(
            epoch.sent_levels
        ) >= self.window
        rate_bound = rate is not None and epoch.rate_waits >= epoch.sent / 2 and not window_bound
        self._held_known += epoch.known
        self._held_refused += epoch.refused
        if rate_bound and rate is not None and self._held_known >= PROVEN:
            self.proven.proved(rate, epoch)
        if epoch.refused:  # isolated refusals: the setting holds, but shows no room ...
            if rate_bound and rate is not None and self._held_known >= _HELD:
                share = self._held_refused / self._held_known
                if share > _TOLERATED_HELD:  # ... unless they add up: a little too fast
                    self.bad = rate if self.bad is None else min(self.bad, rate)
                    self.good = rate * (1 - share)  # what held was a little too fast
                    self.start_epoch(rate=self.good, reason="rate")
                    return
            self.start_epoch(reason=None)
            return
        if rate_bound:
            self.eased = 0  # a quiet epoch at the rate: the next refusal may ease again
        if self._probing and (rate_bound or window_bound):
            if self.bad is None or window_bound:
                self.failed_probes = 0  # a probe into the unknown held: probe freely again
        elif self._probing:
            self.start_epoch(reason=None, probing=True)  # not tested yet: nothing held it back
            return
        self._quiet_known += epoch.known
        # Past the last refusal (or a cap), probes cost 429s: each refused one doubles the
        # quiet epochs before the next, from 4 (so that they cost about 1 % of calls).
        patience = past_cap = _QUIET * 2 ** (min(self.failed_probes, MAX_BACKOFF) + 2)
        if slow:  # ... and no probe waits over a few round trips
            bound = _PATIENCE_LATENCIES * 2 ** min(self.failed_probes, MAX_BACKOFF)
            patience = max(quiet, min(patience, math.ceil(bound * in_flight)))
        if rate_bound and rate is not None:
            self.good = rate if self.good is None else max(self.good, rate)
            bracketed = self.bad is not None and self.bad > rate * CONVERGED
            forgiven = None
            if not bracketed and self._quiet_known >= patience:
                forgiven, self.bad = self.bad, None  # forgiven: the limit may have risen
            step = self._rate_step if self.cut_once else _FIRST_GROWTH - 1
            if self.bad is None:
                target = rate * (1 + step)
                if forgiven is not None and forgiven > rate and forgiven == self.refused_probe:
                    # Half way into a bracket too narrow to bisect, its top met by a probe
                    # (not by 429s adding up: a bucket's burst) (docs/design.md, "Pacing").
                    inside = max(math.sqrt(rate * forgiven), rate * (1 + _STEP / 4))
                    target = min(target, inside)
            elif bracketed and self.bad is not None:
                target = math.sqrt(rate * self.bad)  # bisection (geometric: rates span decades)
            else:
                target = rate
            if target > rate and (self.rate_ceiling is None or rate < self.rate_ceiling):
                if self.bad is None:  # into the unknown: faster while probes hold
                    self._rate_step = min(_MAX_STEP, 2 * self._rate_step)
                self.start_epoch(rate=target, reason="probe", probing=True)
                return
        elif window_bound and self._quiet_known < past_cap and self.cap_known:
            pass  # a cap found or remembered: probed past rarely
        elif window_bound and self.window < self.window_ceiling and self.answers >= self.window:
            # Past a cap (proven, tentative or remembered): one more call, doubling the step
            # while probes hold, once calls have come back (sooner, the count in flight has
            # only gone up, and a probe says nothing new). With no cap in sight: doubled.
            grown = self.window + self._window_step
            if self.concurrency_limited_at is None and self.suspected_cap is None:
                grown = max(grown, self.window * 2)
            self._window_step *= 2
            self.verdicts.grow_window(grown)
            return
        self.start_epoch(reason=None)

    def start_epoch(
        self,
        *,
        rate: float | None = None,
        window: int | None = None,
        reason: str | None,
        probing: bool = False,
    ) -> None:
        """Start a new epoch, with a new rate and/or window when given."""
        before = self.rate
        if probing and rate is not None and before is not None and rate > before:
            self.probed_from = before  # a rate probe: refused once, it goes back there
        elif not probing or (rate is not None and rate != before):
            self.probed_from = None  # (a window probe at the same rate goes on testing it)
        if rate is not None:
            if before is not None and rate < before:
                self.proven.proved(rate, self.epoch)  # came down to: the best estimate there is
            self.gate.set_rate(_clamp(rate, self.rate_ceiling))
            self._held_known = self._held_refused = 0
        if window is not None:
            self.gate.set_window(max(1, min(window, self.window_ceiling)))
        self._probing = probing
        if reason is not None:
            if reason != "probe":
                self._quiet_known = 0
            log_event(self.name, reason=reason, rate=self.rate, window=self.window)
        self.epoch = Epoch(self.epoch.number + 1)

    def report(self) -> LimitsReport:
        """What was learnt of the server: the rate (a probe with under ``VERDICT`` outcomes
        known: the rate it probes from, not remembered) and window now, the counts."""
        probing = self.probed_from is not None and self.epoch.known < VERDICT
        rate, epoch = self.probed_from if probing else self.rate, self.epoch
        known, refused = self._held_known + epoch.known, self._held_refused + epoch.refused
        return LimitsReport(
            rate=rate,
            proven_rate=self.proven.below(rate, known, refused),
            window=self.window,
            paused=self.gate.paused_until > self.clock(),  # after 429s with a Retry-After
            rate_limited_at=self.rate_limited_at,
            concurrency_limited_at=self.concurrency_limited_at,
            start_rate=self.start_rate,
            start_window=self.start_window,
            accepted=self.answers,
            refused=self.refusals,
            released=self.released,
            retry_after_clamped=self.clamped_retry_after,
            period=self.evidence.period,
        )


def _clamp(rate: float, ceiling: float | None) -> float:
    return max(_MIN_RATE, rate if ceiling is None else min(rate, ceiling))
