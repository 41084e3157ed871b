"""The run's time series: its counters once a second, kept in the ledger for ``report``.

Contract: :class:`SeriesRecorder` samples the run's counters (:class:`RunStats`) and the
limiter every ``interval`` seconds - cumulative calls, successes, failures, 429s, retries,
timeouts and credits; calls in flight and waiting to retry; the rate and window let through,
whether the pool is paused; the p50/p95/p99 latency of the successes of that second - and
writes the samples to the ledger's ``series`` table (``state/history.py``) every
``write_every`` samples, in one transaction on a worker thread, and once more at the end.
:func:`read_series` reads a run's samples back, oldest first.

Why the ledger: a committed SQLite transaction survives a kill -9 of the process (WAL, the
run's other rows live there too), so a killed run keeps all but its last few seconds; the cost
is one small transaction every few seconds and nothing per contact (the counters exist
already: sampling reads them). ``benchmarks/bench_overhead.py`` measures the run with and
without (``series = false``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from octave_bulk.errors import StateError
from octave_bulk.limits.base import Limiter
from octave_bulk.observe.log import log_event
from octave_bulk.run.summary import RunStats
from octave_bulk.state.history import RunHistory
from octave_bulk.state.store import RunRecords

__all__ = ["SERIES_COLUMNS", "SeriesRecorder", "read_series"]

SERIES_COLUMNS = (
    "at", "calls", "succeeded", "failed", "rate_limited", "retried", "timeouts", "in_flight",
    "retrying", "credits", "rate", "window", "paused", "p50_ms", "p95_ms", "p99_ms",
)  # fmt: skip
"""The columns of one sample (besides its run id), as :func:`read_series` returns them."""


class SeriesRecorder:
    """Samples one run's counters and writes them to the ledger (see the module docstring).

    Args:
        run_id: the run the samples belong to.
        stats: the run's counters.
        limiter: the run's limiter (its report: rate, window and pause).
        history: the ledger; None records nothing.
        interval: seconds between samples.
        write_every: samples per write.
    """

    def __init__(
        self,
        run_id: str,
        stats: RunStats,
        limiter: Limiter,
        history: RunRecords | None,
        *,
        interval: float = 1.0,
        write_every: int = 5,
    ) -> None:
        self.run_id, self.stats, self.limiter, self.history = run_id, stats, limiter, history
        self.interval, self.write_every = interval, write_every
        self._latency = stats.latency.copy()
        self._pending: list[tuple[Any, ...]] = []

    async def run(self) -> None:
        """Until cancelled: a sample every ``interval``, written every ``write_every``."""
        while self.history is not None:
            await anyio.sleep(self.interval)
            self.sample()
            if len(self._pending) >= self.write_every:
                await anyio.to_thread.run_sync(self.write)

    def sample(self) -> None:
        """Take one sample of the counters as they are now."""
        stats = self.stats
        latest = stats.latency.since(self._latency)
        self._latency = stats.latency.copy()
        found = self.limiter.report()
        rate = found.rate
        self._pending.append(
            (
                self.run_id,
                round(time.time(), 3),
                stats.calls,
                stats.succeeded,
                stats.failed,
                stats.rate_limited,
                stats.retried,
                stats.timeouts,
                stats.in_flight,
                stats.retrying,
                stats.credits,
                None if rate is None else round(rate, 3),
                found.window,
                int(found.paused),
                latest.percentile(50),
                latest.percentile(95),
                latest.percentile(99),
            )
        )

    def write(self) -> None:
        """Write the samples taken since the last write (a ledger that cannot be written is
        logged, never worth the run)."""
        rows, self._pending = self._pending, []
        if not rows or self.history is None:
            return
        try:
            self.history.add_series(rows)
        except StateError as exc:
            log_event("series_not_written", level=logging.WARNING, error=str(exc))

    def close(self) -> None:
        """The run ended: a last sample, and every sample written."""
        if self.history is not None:
            self.sample()
            self.write()


def read_series(history: RunHistory, run_id: str) -> list[dict[str, Any]]:
    """A run's samples, oldest first (empty when it recorded none)."""
    rows = history.query(
        f"SELECT {', '.join(SERIES_COLUMNS)} FROM series WHERE run_id = ? ORDER BY at",  # noqa: S608 (constant names)
        (run_id,),
    )
    return [dict(row) for row in rows]
