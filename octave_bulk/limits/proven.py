"""The rate a next run may start from: the last rate the search proved, never a step above it
that the run's end cut short (docs/design.md, "Remembered, and verified").

Contract: :class:`ProvenRate` keeps the last rate the adaptive search came down to (a verdict:
the best estimate there is) or held over :data:`PROVEN` outcomes, each only as far as it was
sent (a starved host, or shared turns left unused, send below the rate set) - never below a
rate proven before, unless it came down below it.
:meth:`ProvenRate.below` gives, for the rate in force, the lower rate to remember instead, or
None when that rate is proven itself: a probe held for a bucket's burst proves nothing, and a
rate refused now and then (at most a quarter of its outcomes) is remembered at what it let
through (the rate x its share accepted: a bucket's rate, sent a little fast).
"""

from __future__ import annotations

from octave_bulk.limits.epoch import Epoch

__all__ = ["PROVEN", "ProvenRate"]

PROVEN = 32  # outcomes at one rate that prove it (twice the quiet epochs before a probe)
_FEW = 8  # sends of an epoch before its send rate says anything
_NOW_AND_THEN = 1 / 4  # the most refused share of a rate still remembered at what it let through


class ProvenRate:
    """The last rate proven (None before any, unless a remembered one started the run)."""

    def __init__(self, start: float | None) -> None:
        self.rate = start

    def proved(self, rate: float, epoch: Epoch) -> None:
        """``rate`` came down to, or held :data:`PROVEN` outcomes, in ``epoch``: proven as far
        as it was sent. Sent slower than the rate proven before (a run's last contacts; one
        host left at the end of a shared job), it tested nothing above what it sent and
        lowers nothing: a rate came down to is still proven (``rate`` is below)."""
        span = epoch.last_sent - epoch.first_sent
        sent = (epoch.sent - 1) / span if epoch.sent >= _FEW and span > 0 else rate
        tested = sent if self.rate is None else max(sent, self.rate)
        self.rate = min(rate, tested)

    def below(self, rate: float | None, known: int, refused: int) -> float | None:
        """What to remember instead of ``rate`` (``known`` outcomes at it, ``refused`` of
        them 429s), when lower; None: ``rate`` itself."""
        if not rate:
            return None
        lower = self.rate if self.rate is not None and self.rate < rate else None
        if refused and known >= _FEW and refused <= known * _NOW_AND_THEN:
            let_through = rate * (1 - refused / known)
            lower = let_through if lower is None else min(lower, let_through)
        return lower
