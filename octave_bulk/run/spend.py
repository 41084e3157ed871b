"""Spending gates: ``--budget`` held in the ledger, call by call, across every run sharing it.

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
"""

from __future__ import annotations

import time

import anyio

from octave_bulk.errors import StateError, StopReason
from octave_bulk.observe.log import log_event
from octave_bulk.run.control import RunControl
from octave_bulk.settings import Settings, parse_budget
from octave_bulk.state.history import RunHistory

__all__ = ["BudgetHolds"]

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
        self, history: RunHistory, run_id: str, settings: Settings, control: RunControl
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
                f"the budget {self.budget} is spent ({spent:,} calls sent or held within the "
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
