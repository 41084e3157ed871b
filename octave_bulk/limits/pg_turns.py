"""Turns of the shared rate, booked several at once: the booking statement and the turns a
worker booked ahead for its tasks.

Contract (docs/scale-out.md, "One shared rate, one shared window"): :data:`BOOK` moves the
GCRA row's ``tat`` by k turns (``k / rate``) in one statement, k being the tasks that wait
for a turn at that moment but never more than :data:`HORIZON` seconds of turns, and carries
the worker's outcomes for the judge (``limits/pg_judge.py``, ``TELL``); :data:`BOOK_CARRYING`
also a call's claim (``state/pg/call_claims.py``). :class:`TurnsAhead`
hands those k turns out one by one, 1/rate apart: :meth:`TurnsAhead.booked` takes a booking's
row and returns its first turn, :meth:`TurnsAhead.next` the next one still on time (a turn
whose time passed by more than its spacing is dropped: taken that late it would be a burst,
as the schedule drops a turn nobody booked in time); :meth:`TurnsAhead.clear` drops them all
(a 429, a stop). Only the last turn of a booking carries the ``tat`` it left, for a refund.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from octave_bulk.limits.pg_judge import TELL
from octave_bulk.limits.pg_window import ASKED, FREE
from octave_bulk.state.pg.call_claims import CARRIED

__all__ = ["BOOK", "BOOK_CARRYING", "HORIZON", "Turn", "TurnsAhead"]

HORIZON = 0.1
"""Seconds of turns one booking may take at once, when several of this worker's tasks wait
for a turn: the turns of the next :data:`HORIZON` seconds at most (one booking per turn
otherwise). The judge's new rate or pause applies to every booking after it. Short, as the
outcomes reach the judge with the bookings (docs/scale-out.md, "One shared rate")."""

_TURNS = "least(%(turns)s::int, greatest(1, floor(%(horizon)s * rate)::int))"

_BOOK = (
    "WITH told AS ("
    + TELL
    + ")CARRIED"
    """
UPDATE ob_rate SET tat = greatest(tat, clock_timestamp(), paused_until)
                        + make_interval(secs => TURNS / rate)
WHERE key = %(key)s
RETURNING tat, extract(epoch FROM tat - make_interval(secs => TURNS / rate) - clock_timestamp()),
          epoch, rate, extract(epoch FROM clock_timestamp()), window_size, TURNS,
""".replace("TURNS", _TURNS)
    + ASKED
    + ","
    + FREE
)

BOOK = _BOOK.replace("CARRIED", "")
"""Book ``%(turns)s`` turns (at most :data:`HORIZON` seconds of them, ``%(horizon)s``) with
the outcomes told; returns the ``tat`` left, the wait for the first turn (s), the epoch, the
rate, the server's clock (s), the judge's window, the turns booked, what a host short of
the shared window's permits asks every host to keep and the permits free
(``limits/pg_window.py``)."""


BOOK_CARRYING = _BOOK.replace("CARRIED", CARRIED) + ", (SELECT claim_seq FROM claimed)"  # noqa: S608
""":data:`BOOK` carrying a call's claim (``state/pg/call_claims.py``, with its parameters):
its row ends with the claim's sequence (NULL: the contact is not this worker's to send)."""


@dataclass(frozen=True, slots=True)
class Turn:
    """One booked turn."""

    send_at: float
    """When it comes, on the limiter's clock."""
    server_at: float
    """When it comes, on the server's clock (s)."""
    epoch: int
    booked_tat: dt.datetime | None
    """The ``tat`` its booking left, on the last turn of a booking only (a refund needs it)."""


class TurnsAhead:
    """The turns of this worker's bookings not taken yet (see the module docstring).

    Args:
        clock: the limiter's monotonic clock, seconds.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._ahead: collections.deque[Turn] = collections.deque()

    def booked(self, row: tuple[Any, ...]) -> Turn:
        """The first turn of a :data:`BOOK` row; the others wait for the next tasks."""
        booked_tat, wait, epoch, rate, server_now, _, turns = row[:7]
        wait, spacing = max(float(wait), 0.0), 1.0 / float(rate)
        first = self._clock() + wait
        self._ahead.extend(
            Turn(
                first + n * spacing,
                float(server_now) + wait + n * spacing,
                int(epoch),
                booked_tat if n == turns - 1 else None,
            )
            for n in range(int(turns))
        )
        return self._ahead.popleft()

    def next(self, rate: float) -> Turn | None:
        """The next turn booked ahead still on time (within one spacing at ``rate``)."""
        spacing = 1.0 / rate if rate else 0.0
        while self._ahead:
            turn = self._ahead.popleft()
            if turn.send_at >= self._clock() - spacing:
                return turn
        return None

    def clear(self) -> None:
        self._ahead.clear()
