"""One setting's trial: the attempts sent since the limiter last changed its rate or window,
and what became of them. The limiter judges a setting only by its own epoch's attempts,
never by a time window that mixes settings and pauses."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from octave_bulk.limits.gate import AdaptiveTicket, Waits

__all__ = ["Epoch"]


@dataclass
class Epoch:
    """The attempts of one setting, counted by outcome and in-flight level."""

    number: int
    unknown: deque[AdaptiveTicket] = field(default_factory=deque)  # outcome not known yet
    sent: int = 0
    first_sent: float = 0.0
    last_sent: float = 0.0
    known: int = 0
    accepted: int = 0
    refused: int = 0
    sent_levels: Counter[int] = field(default_factory=Counter)
    refused_levels: Counter[int] = field(default_factory=Counter)
    rate_waits: int = 0  # attempts that waited for the rate
    window_waits: int = 0  # attempts that waited for the window
    held_by_window: bool = False  # a sender found the window full
    outcomes: list[tuple[float, bool]] = field(default_factory=list)  # (sent at, accepted)

    def sent_one(self, ticket: AdaptiveTicket, waits: Waits) -> None:
        self.unknown.append(ticket)
        self.sent += 1
        self.sent_levels[ticket.level] += 1
        self.first_sent = self.first_sent or ticket.sent_at
        self.last_sent = ticket.sent_at
        self.rate_waits += waits.rate
        self.window_waits += waits.window

    def known_one(self, ticket: AdaptiveTicket, *, accepted: bool) -> None:
        self.known += 1
        self.accepted += accepted
        self.refused += not accepted
        if not accepted:
            self.refused_levels[ticket.level] += 1
        self.outcomes.append((ticket.sent_at, accepted))

    def next_known(self, horizon: float) -> AdaptiveTicket | None:
        """The oldest attempt not judged yet whose outcome is known (answered, or sent before
        ``horizon``: unrefused for long enough), taken off; None while it is not."""
        if self.unknown and (self.unknown[0].answered or self.unknown[0].sent_at < horizon):
            return self.unknown.popleft()
        return None

    def accepted_since_refusal(self) -> tuple[float, int]:
        """The share accepted of the attempts sent since the epoch's first refused one, and
        their number: a token bucket is empty from then on (its burst spent), so that share
        of the send rate is its rate."""
        first = min((at for at, ok in self.outcomes if not ok), default=0.0)
        tail = [ok for at, ok in self.outcomes if at > first]
        return (sum(tail) / len(tail) if tail else 0.0), len(tail)
