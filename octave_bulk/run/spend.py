"""Spending gates, asked before each call is sent: ``--budget`` held in the ledger across every
run sharing it, and the credits remaining when nothing bounded the run's cost before it.

Contract: :class:`BudgetHolds` is asked before each attempt is sent (:meth:`~BudgetHolds.take`)
and answers whether one more call fits the budget ``CALLS/PERIOD``. It never lets a call go
that the ledger does not already count: calls are *held* in batches in the ledger
(``RunHistory.hold_calls``: one ``BEGIN IMMEDIATE`` transaction that sums the holds of every
run within the period, and adds a hold of at most what is left), so that

- two runs sharing a ledger see each other's holds (the transaction serialises them);
- a run killed with -9 leaves its holds: they count as spent (at most one batch more than it
  sent), where its history row would count only its last 5-s update;
- the end of the run gives back what it held and did not send (:meth:`~BudgetHolds.release`:
  holds become the calls sent, ``calls.possibly_charged``), and nothing depends on the final
  history write.

A batch is an eighth of what the budget has left, at most ``concurrency`` and at least 1: few
transactions far from the end of the budget, and near it no run holds much that another could
have sent. Runs without ``--budget`` hold nothing; they count by their history rows
(``paid_calls``, updated every 5 s), as do runs of versions before the holds. A hold that
cannot be written (the ledger locked past its busy timeout, a full disk) stops the run
(:attr:`StopReason.LEDGER`): the budget could not be kept.

:class:`CreditsCeiling` serves a run whose credits were not checked before it (stdin without
``--limit``/``--max-calls``, ``credits.check_credits``): it lets ``remaining / cost`` calls go
(every attempt counts: Octave does not say which are billed), then asks the API again
(``GET api-key/validate``, not paid) and lets go what the new figure covers beyond the calls
still in flight or awaited; when that is nothing, or the API does not say, the run stops
(:attr:`StopReason.CREDITS`, exit 3).
"""

from __future__ import annotations

import math
import time

import anyio

from octave_bulk.errors import StateError, StopReason
from octave_bulk.http.client import OctaveClient
from octave_bulk.observe.log import log_event
from octave_bulk.observe.words import counted
from octave_bulk.run.control import RunControl
from octave_bulk.run.credits import credits_remaining
from octave_bulk.run.summary import RunStats
from octave_bulk.settings.model import Settings, parse_budget
from octave_bulk.state.store import RunRecords

__all__ = ["BudgetHolds", "CreditsCeiling"]

_BATCH_SHARE = 8  # a batch is at most this fraction of the calls the budget has left


class BudgetHolds:
    """One run's holds on its ``--budget`` (see the module docstring).

    Args:
        history: the ledger the budget is counted in.
        run_id: the run holding the calls.
        settings: ``budget`` (set) and ``concurrency`` (the largest batch) are read here.
        control: stopped (``budget`` or ``ledger``) when no call can be held.
    """

    def __init__(
        self, history: RunRecords, run_id: str, settings: Settings, control: RunControl
    ) -> None:
        if settings.budget is None:
            raise ValueError("no budget to hold")
        self.history, self.run_id, self.control = history, run_id, control
        self.budget = settings.budget
        self.limit, self.period = parse_budget(settings.budget)
        self.most = max(1, settings.concurrency)
        self.held = 0  # calls this run holds in the ledger
        self.taken = 0  # ... of which attempts were let go
        self._refill = anyio.Lock()
        self._spent = False

    async def take(self) -> bool:
        """One call may be sent (True), or the budget is spent and the run stops (False)."""
        if self.taken < self.held:
            self.taken += 1
            return True
        async with self._refill:  # one transaction at a time; the others wait for its batch
            if self.taken >= self.held and not self._spent:
                await self._hold()
            if self.taken < self.held:
                self.taken += 1
                return True
        return False

    async def _hold(self) -> None:
        since = time.time() - self.period
        try:
            granted, spent = await anyio.to_thread.run_sync(
                self.history.hold_calls, self.run_id, self.limit, since, self._batch
            )
        except StateError as exc:
            self._spent = True
            self.control.detail = f"the --budget cannot be held in the ledger: {exc}"
            self.control.stop(StopReason.LEDGER)
            return
        if not granted:
            self._spent = True
            self.control.detail = (
                f"the budget {self.budget} is spent ({counted(spent, 'call')} sent or held within the "
                "period by the runs sharing the ledger; see octave-bulk history)"
            )
            self.control.stop(StopReason.BUDGET)
            return
        self.held += granted

    def _batch(self, left: int) -> int:
        """How many calls to hold when the budget has ``left``."""
        return min(left, self.most, max(1, left // _BATCH_SHARE))

    def release(self, sent: int) -> None:
        """At the end of the run: its holds become the ``sent`` calls (possibly charged);
        what was held and not sent goes back. A ledger that cannot take it is logged (the
        holds then stay counted whole: never less than was sent)."""
        if self.held <= sent:
            return
        try:
            self.history.release_calls(self.run_id, self.held - sent)
        except StateError as exc:
            log_event("budget_not_released", error=str(exc), held=self.held, sent=sent)


class CreditsCeiling:
    """The calls a run may send on the credits remaining (see the module docstring).

    Args:
        client: asks the API for the credits remaining again.
        cost: the agent's ``costToRun`` (above 0).
        remaining: the credits remaining when the run started.
        stats: ``calls`` (attempts so far), ``in_flight`` and ``awaiting`` are read here.
        control: stopped (``credits``) once the credits are spent.
    """

    def __init__(
        self,
        client: OctaveClient,
        cost: float,
        remaining: float,
        stats: RunStats,
        control: RunControl,
    ) -> None:
        self.client, self.cost, self.stats, self.control = client, cost, stats, control
        self.allowed = math.floor(remaining / cost)  # attempts the run may start
        self._recheck = anyio.Lock()
        self._spent = False

    async def take(self) -> bool:
        """One call may be sent (True), or the credits are spent and the run stops (False).
        The caller counts the call (``stats.calls``) before it next awaits."""
        if self.stats.calls < self.allowed:
            return True
        async with self._recheck:
            if self.stats.calls >= self.allowed and not self._spent:
                await self._ask_again()
            return self.stats.calls < self.allowed

    async def _ask_again(self) -> None:
        stats = self.stats
        calls, unbilled = stats.calls, stats.in_flight + stats.awaiting
        remaining, note, _ = await credits_remaining(self.client)
        more = -1 if remaining is None else math.floor(remaining / self.cost) - unbilled
        log_event("credits_checked", remaining=remaining, calls=calls, more_calls=max(0, more))
        if more > 0:
            self.allowed = calls + more
            return
        self._spent = True
        self.control.detail = (
            f"the credits remaining are spent ({counted(calls, 'call')} sent at {self.cost:g} credits; "
            + (f"{remaining:,g} left, {unbilled} calls not billed yet)" if remaining is not None
               else f"{note})")
            + ": add credits, then run the same command again to resume"
        )  # fmt: skip
        self.control.stop(StopReason.CREDITS)
