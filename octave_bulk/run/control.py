"""Stopping a run: signals, the breaker, the call budget and fatal answers.

Contract: :class:`RunControl` holds why the run stops (a :class:`StopReason`, None while it
goes on). :meth:`~RunControl.stop` ends dispatch: no new attempt starts, the limiter wakes its
waiters, and calls in flight get ``drain_timeout`` seconds before the dispatch scope is
cancelled. The first SIGINT/SIGTERM stops gracefully (and its reason wins over an earlier
one); a second cancels at once. Every stop is resumable.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import Protocol

import anyio

from octave_bulk.errors import ApiError, ErrorKind, FatalApiError, StopReason
from octave_bulk.limits.base import Limiter
from octave_bulk.observe.log import log_event
from octave_bulk.run.summary import RunStats
from octave_bulk.settings.model import Settings

__all__ = [
    "CONTRACT_ERRORS",
    "NEVER_CONNECTED",
    "Allowance",
    "RunControl",
    "Stopped",
    "connect_cause",
]

CONTRACT_ERRORS = frozenset({ErrorKind.NO_HANDLE})
"""Answers that break the API's contract on a paid call: the run stops as on a fatal answer
(exit 3), the contact's failure is recorded (never retried: it was paid)."""

NEVER_CONNECTED = 10
"""Connect errors in a row that stop a run no call of which ever reached a server (exit 4):
``breaker_threshold`` retries against nothing listening only make the user wait."""


class Stopped(Exception):
    """Dispatch stopped before this attempt could be sent (not an API outcome)."""


class Allowance(Protocol):
    """Calls a run may still pay for, asked just before each goes (``run/spend.py``: the
    ``--budget``'s holds, the credits left when they were not checked before the run)."""

    async def take(self) -> bool:
        """Whether one more call may go (False: the run stops)."""
        ...


class RunControl:
    """The run's stop state, shared by the source, the workers and the signal watcher.

    Args:
        settings: ``drain_timeout``, ``max_calls`` and ``breaker_threshold`` are read here.
        stats: the run's counters (``calls`` and ``in_flight`` are read here).
        run_id: carried by the log events.
    """

    def __init__(self, settings: Settings, stats: RunStats, run_id: str) -> None:
        self.settings, self.stats, self.run_id = settings, stats, run_id
        self.reason: StopReason | None = None
        self.fatal: ApiError | None = None
        self.dispatch_scope = anyio.CancelScope()
        self.stopped = anyio.Event()  # wakes every sleeping worker when the run stops
        self.halted = anyio.Event()
        """Set once the run stops by signal, a fatal answer or a ledger failure: work that the
        next run can do as well (polling async jobs) ends at once."""
        self.limiter: Limiter | None = None
        self.detail: str | None = None  # the reason in words, when a count decided the stop
        self.budget: Allowance | None = None  # the --budget's holds in the ledger
        self.credits: Allowance | None = None  # when the credits were not checked before
        self._consecutive_failures = 0
        self._consecutive_refusals = 0
        self._refusing_since: float | None = None  # the first 429 since a call was accepted
        self._reached_server = False  # until a first answer of any kind (a 4xx, a 429...)

    @property
    def stopping(self) -> bool:
        """True once the run stops dispatching."""
        return self.reason is not None

    def ledger_failed(self, exc: Exception) -> None:
        """A database the run depends on refused a statement (no wait mends it: a table
        missing, a permission denied): the run stops (``StopReason.LEDGER``), its polls too
        (the jobs left are the next run's), and ``detail`` says why."""
        log_event("ledger_failed", level=logging.ERROR, error=str(exc))
        if self.reason is None:
            self.detail = str(exc)
        self.stop(StopReason.LEDGER)
        self.halted.set()

    def stop(self, reason: StopReason) -> None:
        """Stop dispatching; calls in flight finish within ``drain_timeout`` (then cancelled)."""
        if self.reason is None:
            self.reason = reason
            log_event("stopping", reason=reason, run_id=self.run_id, in_flight=self.stats.in_flight)
        self.stopped.set()
        if reason in (StopReason.INTERRUPTED, StopReason.FATAL):
            self.halted.set()
        if self.limiter is not None:
            self.limiter.stop()
        if math.isinf(self.dispatch_scope.deadline):
            self.dispatch_scope.deadline = anyio.current_time() + self.settings.drain_timeout

    def may_send(self) -> bool:
        """False (and the run stops) once stopping, or once ``max_calls`` calls were sent.
        The ``budget`` is asked apart, just before a call goes (:meth:`may_pay`)."""
        if self.stopping:
            return False
        limit, calls = self.settings.max_calls, self.stats.calls
        if limit is not None and calls >= limit:
            self.stop(StopReason.MAX_CALLS)
            return False
        return True

    async def may_pay(self) -> bool:
        """Whether one more call fits the ``budget`` (held in the ledger: it may wait for a
        transaction) and the credits remaining (when they were not checked before the run:
        it may ask the API again); False once the run stops."""
        if self.budget is not None and not await self.budget.take():
            return False
        if self.credits is not None and not await self.credits.take():
            return False
        return not self.stopping

    def on_success(self) -> None:
        """A call succeeded: the breaker's counts of failures in a row start again."""
        self._consecutive_failures = self._consecutive_refusals = 0
        self._refusing_since = None
        self._reached_server = True

    def on_refused(self, retry_after: float | None = None) -> None:
        """A call got a 429. As many 429s in a row as ``breaker_threshold`` with no call
        accepted in between - an exhausted quota, a blocked key - stop the run (resumably):
        the limiter's pacing alone would slow it to a crawl and hold the lock for days. So do
        429s with none accepted for ``refusal_patience`` seconds (at the pacing's floor rate,
        or with long Retry-After pauses, the count alone takes hours), and a ``Retry-After``
        longer than that patience."""
        self._consecutive_refusals += 1
        self._reached_server = True
        now = time.monotonic()
        if self._refusing_since is None:
            self._refusing_since = now
        patience = self.settings.refusal_patience
        if retry_after is not None and retry_after > patience:
            self.detail = (
                f"the API refused a call with 429 and asks to wait {retry_after:g} s, beyond "
                f"refusal_patience ({patience:g} s): quota exhausted? run again later to resume"
            )
            self.stop(StopReason.BREAKER)
            return
        refusing = now - self._refusing_since
        if refusing >= patience and self._consecutive_refusals > 1:
            self.detail = (
                f"the API refused every call for {refusing:.1f} s "
                f"({self._consecutive_refusals} 429s, none accepted; refusal_patience "
                f"{patience:g} s): quota exhausted?"
            )
            self.stop(StopReason.BREAKER)
            return
        if self._consecutive_refusals >= self.settings.breaker_threshold:
            self.detail = (
                f"the API refused {self._consecutive_refusals} calls in a row with 429 and "
                "accepted none: quota exhausted or key blocked?"
            )
            self.stop(StopReason.BREAKER)

    def on_error(self, exc: ApiError) -> None:
        """A call failed (not with a 429): a fatal answer or a contract error stops the run at
        once (the contract error is recorded as its contact's failure by the worker); retryable
        failures in a row, pool-wide, trip the breaker (:data:`NEVER_CONNECTED` connect errors,
        when no call of the run has reached a server yet)."""
        self._consecutive_refusals = 0  # the server answered something other than 429
        self._reached_server = self._reached_server or exc.status is not None
        if isinstance(exc, FatalApiError) or exc.kind in CONTRACT_ERRORS:
            self.fatal = exc
            self.stop(StopReason.FATAL)  # no new calls; the ones in flight are paid: let them land
        elif exc.retryable:
            self._consecutive_failures += 1
            threshold = self.settings.breaker_threshold
            if exc.kind == ErrorKind.CONNECT and not self._reached_server:
                threshold = min(threshold, NEVER_CONNECTED)  # no server there: say so soon
            if self._consecutive_failures >= threshold:
                self.detail = f"{self._consecutive_failures} calls in a row failed " + (
                    connect_cause(exc.message, self.settings.base_url)
                    if exc.kind == ErrorKind.CONNECT
                    else f"({exc.kind}: {exc.message[:120]})"
                )
                self.stop(StopReason.BREAKER)
        else:
            self._consecutive_failures = 0

    def refusal_wait(self, seconds: float) -> float:
        """A wait caused by 429s (a retry's backoff, a pool pause for a Retry-After), cut to
        end when ``refusal_patience`` runs out while every call is refused: the call sent then
        decides (another 429 stops the run), so the stop comes at the patience, not one long
        wait after it."""
        if self._refusing_since is None or not self._consecutive_refusals:
            return seconds
        left = self._refusing_since + self.settings.refusal_patience - time.monotonic()
        return min(seconds, max(0.0, left))

    async def sleep(self, seconds: float) -> None:
        """Sleep (no longer than :meth:`refusal_wait` allows), but wake and raise
        :class:`Stopped` as soon as the run stops."""
        with anyio.move_on_after(self.refusal_wait(seconds)):
            await self.stopped.wait()
        if self.stopping:
            raise Stopped

    def _drain_note(self) -> str:
        """What a first signal does, and how a second one differs."""
        deadline = time.strftime(
            "%H:%M:%S", time.localtime(time.time() + self.settings.drain_timeout)
        )
        return (
            f"letting the {self.stats.in_flight} call(s) in flight finish, for at most "
            f"{self.settings.drain_timeout:g} s (until {deadline}, setting drain_timeout); "
            "a second Ctrl-C stops at once and abandons them (they may be paid)"
        )

    async def watch_signals(self) -> None:
        """Until cancelled: a first SIGINT/SIGTERM/SIGHUP drains, a second one cancels
        dispatch (SIGHUP: a closed SSH session must not act like kill -9)."""
        interrupted = False
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not interrupted:
                    interrupted = True
                    log_event("signal", signal=name, action=self._drain_note())
                    self.stop(StopReason.INTERRUPTED)
                    self.reason = StopReason.INTERRUPTED  # wins over an earlier graceful stop
                    self.halted.set()
                else:
                    log_event(
                        "signal",
                        signal=name,
                        action=f"stopping now: {self.stats.in_flight} call(s) in flight "
                        "abandoned (they may be paid; the next run retries them)",
                    )
                    self.dispatch_scope.cancel()


def connect_cause(message: str, base_url: str) -> str:
    """``(connect refused to URL: ...)``: why no call reached the server, and what to check."""
    lowered = message.lower()
    if "refused" in lowered or "connect call failed" in lowered:
        cause = "connect refused"
    elif (
        "name or service not known" in lowered or "nodename" in lowered or "getaddrinfo" in lowered
    ):
        cause = "host not found"
    else:
        cause = "cannot connect"
    return f"({cause} to {base_url}: is --base-url right and the server up? {message[:120]})"
