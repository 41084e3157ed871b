"""The adaptive limiter's verdicts: how far a rate refused is cut, which refusals are a
concurrency cap, which a rate window spent until its reset, when a full window may grow, and
when a rate probe goes back.

**Rate verdicts** (:meth:`Verdicts.cut_rate`): 2 or more 429s once ``VERDICT`` outcomes of an
epoch are known (at once when they are a quarter of them), over 5 % of them: the server accepts
less than is sent. An overloaded token bucket accepts exactly its rate, so the new rate is the
send rate times the share accepted since the epoch's first 429, less ``_MARGIN``; or the rate
that held (``good``); never below a quarter per verdict, nor below the rate delivered lately
(:meth:`Evidence.delivered`: a window that refuses everything until its oldest calls leave has
still let that many through). A rate that held, refused by a small share, eases down by 1-2 %.
(Isolated 429s are the limiter's: over 128 outcomes at one rate, above 2 %, they cut it.)

A cap refuses by the number in flight, whatever the spacing of the sends; a rate limit (a
token bucket, a fixed or moving window) refuses by the spacing, whatever the number in flight.
Before any call has come back the two look alike - the count in flight only rises, and a
bucket refuses a burst level by level exactly as a cap would - so the verdict is an
experiment, never the level alone:

* **A first sighting** (429s at one in-flight level, nothing of the epoch through at or above
  it, level 3 or more) goes to the rate: it is cut to what got through (the rate delivered
  since the first send, for a burst that let nothing through after its first 429).
* **Proof before calls came back:** the same level refused again, ``VERDICT`` 429s in a row,
  while the sends are no faster than what had got through at the cut. A rate limit lets some
  through at that spacing; a cap refuses all. The window becomes the level below and the rate
  goes back to where it was (and a rate "met" only by the cap's first burst is forgotten: no
  phantom rate is remembered). Such a cap is *tentative*: probed once calls have come back.
* **Proof once calls came back:** ``_CONCURRENCY_PROOF`` 429s, two at the lowest level, in an
  epoch of enough outcomes; or the tentative cap refused at again. Never at or below a level
  at which calls went through lately (:meth:`Evidence.highest_level`): a window spent refuses
  every level for a while. A cap proven is probed past one call at a time, rarely.
* **Disproof:** a call through above a tentative cap, or a 429 well below a cap: the window
  opens again (``not_concurrency``).
* **Windows:** many 429s in a row whose ``Retry-After`` reaches well past them
  (:meth:`Evidence.window_rate`): the pool waits for the reset and then sends at the window's
  rate, its quota over its length; the reset wait is no slower rate.
* **A full window** (the sends filled it, at most one 429 at its top - a cap refuses every
  send there, one alone is a rate probe's - no cap in sight) doubles once its sends are
  known, a few refusal round trips later (even if a new epoch began meanwhile at the same
  window), rather than at the next answer (40 s away); its new
  slots are paced at twice the rate delivered, so that a burst into a rate
  limit is not mistaken for a cap.
* **A rate probe refused**, even once, past the first cut, goes back to the rate that held:
  left running, a probe a few percent over a bucket holds for its burst's worth of calls,
  then costs a 429 every few seconds until 128 outcomes add up (:meth:`probe_refused`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from octave_bulk.errors import RefusalHints
from octave_bulk.limits.epoch import Epoch
from octave_bulk.limits.evidence import Evidence
from octave_bulk.limits.gate import Gate
from octave_bulk.observe.log import log_event

__all__ = ["CONVERGED", "MAX_BACKOFF", "REFUSED", "VERDICT", "Pacer", "Verdicts"]

VERDICT = 8  # known outcomes of an epoch before its 429s judge its rate ...
REFUSED = 2  # ... at least this many 429s ...
_CONCURRENCY_PROOF = 3  # 429s above every accepted level (two at the lowest) to cut the window
_MARGIN = 0.97  # after an estimate, stay this far below the accepted rate
CONVERGED = 1.07  # good and bad this close: hold (a probe past it costs 429s)
_EASE = (0.99, 0.98)  # the small steps down from a rate refused now and then (then: estimate)
_EXHAUSTED = 1 / 16  # a share accepted below this since the first 429: nothing let through
_MOVED = 0.25  # a held rate refused this much: the limit moved, the search starts afresh
MAX_BACKOFF = 2  # refused probes counted: at most 2 ** 4 x 16 quiet outcomes between probes
_LONG_WAIT = 30  # refusal round trips: a Retry-After this long is a rate's (3 s at 100 ms)


class Pacer(Protocol):
    """What the verdicts read and move of the limiter they judge for
    (:class:`~octave_bulk.limits.adaptive.AdaptiveLimiter` satisfies it)."""

    window_ceiling: int
    max_pause: float
    refusal_rtt: float
    good: float | None
    bad: float | None
    rate_limited_at: float | None
    concurrency_limited_at: int | None
    gate: Gate
    clock: Callable[[], float]
    epoch: Epoch
    evidence: Evidence
    cap_known: bool
    cut_once: bool
    suspected_cap: int | None
    suspected_in: int
    rate_before_cap: float | None
    rate_limited_before_cap: bool
    delivered_at_cut: float | None
    probed_from: float | None
    refused_probe: float | None
    announced_rate: float | None
    search_from: float
    eased: int
    failed_probes: int
    refused_in_row: int
    answers: int

    @property
    def rate(self) -> float | None: ...

    @property
    def window(self) -> int: ...

    def settle(self) -> None: ...

    def maybe_probe(self) -> None: ...

    def failed_probe(self, moved: bool = False) -> None: ...

    def start_epoch(
        self,
        *,
        rate: float | None = None,
        window: int | None = None,
        reason: str | None,
        probing: bool = False,
    ) -> None: ...


class Verdicts:
    """The rate cuts, cap and window verdicts of one limiter (a collaborator: the search's
    state is the limiter's, read and moved through :class:`Pacer`)."""

    def __init__(self, limiter: Pacer) -> None:
        self.limiter = limiter
        # Against the round trip set, not the one measured (1 ms on a loopback).
        self.long_wait = _LONG_WAIT * limiter.refusal_rtt

    def cut_rate(self, now: float) -> None:
        """Back to the rate that held, or to the accepted rate when none holds any more."""
        lim = self.limiter
        epoch, rate = lim.epoch, lim.rate
        span = epoch.last_sent - epoch.first_sent
        sent = (epoch.sent - 1) / span if span > 0 and epoch.sent > 1 else (rate or lim.search_from)
        sent = min(sent, rate) if rate is not None else sent
        if lim.rate_limited_at is None:
            lim.rate_limited_at = sent
        lim.bad = sent if lim.bad is None else min(lim.bad, sent)
        share, samples = epoch.accepted_since_refusal()
        if samples < VERDICT:  # too few since the first 429: the whole epoch's share (its
            share = epoch.accepted / epoch.known  # burst included: too high, never too low)
        estimate = sent * share * _MARGIN
        if lim.good is not None and lim.good < (rate or sent):  # a probe past what held
            target = max(lim.good, estimate)  # back to what held, or what was accepted
        elif (
            rate is not None
            and lim.eased < len(_EASE)
            and (4 if lim.good is None else 2) * epoch.refused <= epoch.known
        ):
            # A rate that held (or the user's --rate), refused now and then: the limit itself,
            # most likely (a bucket without burst refuses what arrives a little early), so
            # just below it, in two small steps; refused again before anything held, it is
            # estimated.
            target = rate * _EASE[lim.eased]
            lim.eased += 1
        else:
            lim.good = None  # what held before holds no more: estimate afresh
            # One verdict divides the rate by 4 at most: a few 429s of a burst of retries
            # must not send the rate to the floor.
            target = estimate if rate is None else max(estimate, rate / 4 * _MARGIN)
            delivered, full_span = lim.evidence.delivered(now) or (None, False)
            lim.delivered_at_cut = delivered
            if delivered is not None and (share < _EXHAUSTED or full_span):
                # Never below what got through lately: nothing let through since the first
                # 429 (a window spent, a cap) says nothing of a rate, and a moving window that
                # refuses all until its oldest calls leave has let that many through.
                target = max(target, min(sent, delivered))
        announced = lim.announced_rate
        if announced is not None and announced < sent:
            # The server announced its limit per window, below what was sent: a candidate to
            # verify (probes go on past it), no setting - and no lower than what it says.
            target = max(target, announced * _MARGIN)
        lim.cut_once = True
        moved = epoch.refused >= VERDICT // 2 and epoch.refused > _MOVED * epoch.sent
        lim.failed_probe(moved=moved)
        lim.start_epoch(rate=target, reason="rate")
        lim.gate.hold_back(now + 1.0 / (lim.rate or 1.0))

    def probe_refused(self) -> bool:
        """A 429 in a rate probe's epoch past the first cut: back to the rate it probed from
        (its rate the lowest refused); False when the epoch is no rate probe's."""
        lim = self.limiter
        probed_from, rate = lim.probed_from, lim.rate
        if probed_from is None or rate is None or not lim.cut_once:
            return False
        lim.bad = rate if lim.bad is None else min(lim.bad, rate)
        lim.refused_probe = lim.bad
        lim.failed_probe()
        lim.start_epoch(rate=probed_from, reason="rate")
        return True

    def heard(self, hints: RefusalHints | None, retry_after: float | None = None) -> bool:
        """Take a 429's rate limit headers and its ``Retry-After`` as evidence; returns
        whether they say a rate's quota is spent, never a cap's: remaining 0, or a wait of
        ``_LONG_WAIT`` refusal round trips or more, as set (a cap cannot know when a slot
        frees, and says a second or nothing; a spent window names its reset, tens of seconds
        away). A limit per window the headers announce is a candidate rate for the next cut
        (:meth:`cut_rate`), and the window's length the period no epoch is shorter than."""
        lim = self.limiter
        if hints is not None and hints.announced_rate is not None:
            lim.announced_rate = hints.announced_rate
            if lim.evidence.period is None and hints.window is not None and hints.window > 1:
                lim.evidence.period = hints.window  # a window shows its rate at its end
        waits_long = retry_after is not None and retry_after >= self.long_wait
        return hints is not None and hints.rate_spent or waits_long

    def judge_full_window(self, epoch: Epoch) -> None:
        """The window filled during ``epoch``: with no cap known or suspected and no 429 at
        its top levels, it doubles (the rate still paces the sends); else the epoch is
        judged as usual."""
        lim = self.limiter
        if lim.gate.in_flight < lim.window or lim.window != max(epoch.sent_levels):
            return  # no longer full, or another window since (an epoch that began meanwhile
            # at the same window is judged too: with 40-s calls it is not full again soon)
        lim.settle()
        top = lim.window - 1
        refused = (
            epoch.refused_levels + lim.epoch.refused_levels
            if epoch is not lim.epoch
            else epoch.refused_levels
        )
        if (
            lim.concurrency_limited_at is None
            and lim.suspected_cap is None
            and lim.window < lim.window_ceiling
            and sum(n for level, n in refused.items() if level >= top) < REFUSED
        ):
            self.grow_window(lim.window * 2)
        else:
            lim.maybe_probe()

    def grow_window(self, window: int) -> None:
        """A probe of a larger window, its new slots sent no faster than twice what got
        through (a burst far above it would meet a rate limit the window never showed)."""
        lim = self.limiter
        delivered, _ = lim.evidence.delivered(lim.clock()) or (None, False)
        rate = lim.rate
        pace = None
        if delivered is not None and (rate is None or rate > 2 * delivered):
            pace = 2 * delivered
        lim.start_epoch(rate=pace, window=window, reason="probe", probing=True)

    def window_exhausted(self, now: float, window_rate: float, retry_after: float) -> float:
        """A rate window refused until its reset: the pool waits for the reset, then sends at
        the window's rate (the wait itself is no slower rate)."""
        lim = self.limiter
        rate = lim.rate
        sent = rate if rate is not None else window_rate
        if lim.rate_limited_at is None:
            lim.rate_limited_at = sent
        # The quota over the window is known about as well as a probe would tell: held.
        lim.bad, lim.good = window_rate * CONVERGED, None
        lim.cut_once = True  # (a cap sighted stays so: seen again past the reset, it is one)
        lim.failed_probe()
        lim.start_epoch(rate=window_rate * _MARGIN, reason="rate_window")
        return self._wait_for_reset(now, retry_after)

    def window_spent(self, now: float, retry_after: float | None) -> float | None:
        """The pause when a 429 points at a known window's reset (None: it does not). Spent
        before its reset (a probe a little too fast, a second night from memory), the window
        refuses every call until then, whatever the rate: no rate is judged by them. A probe
        goes back to the rate it probed from; the pool waits for the reset (the quota per
        window is what it gets either way; at most ``max_pause``)."""
        lim = self.limiter
        if not retry_after or not lim.evidence.resets_as_believed(now, retry_after):
            return None
        if lim.rate_limited_at is None:
            lim.rate_limited_at = lim.rate
        if not self.probe_refused():
            lim.start_epoch(reason=None)  # the spent window's refusals judge no setting
        lim.evidence.next_window(now + retry_after)
        return self._wait_for_reset(now, retry_after)

    def _wait_for_reset(self, now: float, retry_after: float) -> float:
        """The pool pauses until a spent window's reset (at most ``max_pause``): the pause."""
        lim = self.limiter
        pause = min(retry_after, lim.max_pause)
        if lim.gate.pause(now + pause):
            log_event("paused", seconds=round(pause, 2), share_429=None)
        return pause

    def judge_concurrency(self) -> bool:
        """Whether the epoch's 429s read as a concurrency cap (then the window is cut when
        the proof is complete); False hands them to the rate.

        While nothing comes back (40-s calls), a token bucket refuses the sends of a burst at
        rising in-flight levels exactly as a cap would. So a first sighting of the pattern is
        left to the rate (which slows the sends down); seen again at the same level once the
        rate was cut, it is a cap, and the rate goes back to where it was."""
        lim = self.limiter
        epoch = lim.epoch
        sent, refused = epoch.sent_levels, epoch.refused_levels
        lowest = min(refused)
        if lowest < 3 or any(sent[lv] > refused[lv] for lv in sent if lv >= lowest):
            return False  # something at or above that level went through (or may yet)
        if lim.evidence.highest_level(lim.clock()) > lowest:
            return False  # calls went through above it lately: a rate refusing all for now
        sighted = [c for c in (lim.suspected_cap, lim.concurrency_limited_at) if c]
        near = [cap for cap in sighted if abs(lowest - cap) <= 1]  # our count may be 1 over
        # Calls came back: in-flight levels went down and up again, and the level refused
        # says more than the order in which a burst was sent.
        came_back = lim.answers >= lowest
        if not near and came_back:
            # Calls have come back, so in-flight levels went down and up again: the level
            # says more than the order of sending. Proven by three 429s, two at the lowest.
            proven = refused.total() >= _CONCURRENCY_PROOF and refused[lowest] >= 2
            if not (proven and sent[lowest - 1] and epoch.known >= VERDICT):
                return True
            near, lim.rate_before_cap = [lowest], None
        elif not near:
            if refused.total() >= REFUSED:
                lim.suspected_cap, lim.rate_before_cap = lowest, lim.rate
                lim.suspected_in = epoch.number
                lim.rate_limited_before_cap = lim.rate_limited_at is not None
            return False
        elif lim.concurrency_limited_at is not None:
            pass  # the cap found before, refused at again past it: it holds
        elif epoch.number == lim.suspected_in:
            return False  # the rate has not answered the first sighting yet
        elif not came_back and not self._spaced_out():
            return False  # the same level at about the same spacing: the rate is cut further
        elif refused[lowest] < 2:
            return True  # consistent so far: wait for the proof before judging the rate
        lowest = min(lowest, *near)
        if lim.concurrency_limited_at is None:
            lim.concurrency_limited_at = lowest
        lim.failed_probe()
        lim.cap_known = came_back  # inferred before any came back: verified by a probe
        if came_back:  # proven: probed past rarely (a cap is exact, and seldom moves)
            lim.failed_probes = max(MAX_BACKOFF, lim.failed_probes)
        rate = lim.rate
        if rate is not None and lim.rate_before_cap is not None:
            rate = max(rate, lim.rate_before_cap)  # the cut was the cap's, not the rate's
            lim.bad, lim.rate_before_cap = None, None
            if not lim.rate_limited_before_cap:  # no rate limit was met: none to remember
                lim.rate_limited_at, lim.good = None, None
                lim.evidence.period = None  # nor a window: the wait was the cap's
        lim.start_epoch(rate=rate, window=min(lowest - 1, lim.window), reason="concurrency")
        return True

    def _spaced_out(self) -> bool:
        """Whether the sends, cut to no faster than the rate that had got through when the
        rate was last cut, are still all refused (``VERDICT`` in a row): a rate limit (a
        bucket, a window not spent) would let some through at that spacing; a cap refuses
        them all, since nothing came back and the count in flight has not gone down."""
        lim = self.limiter
        rate, delivered = lim.rate, lim.delivered_at_cut
        return (
            rate is not None
            and delivered is not None
            and rate <= delivered
            and lim.refused_in_row >= VERDICT
        )
