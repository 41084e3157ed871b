"""What a person or a log collector sees while a run goes: a progress bar, or heartbeat events.

On a terminal (and unless disabled) a rich progress bar on stderr shows done/total, ok, failed,
retrying, 429s, rate and ETA. Otherwise, and always with ``--log-format json``, a heartbeat
event is logged every ``heartbeat_interval`` seconds. Events go through the ``octave_bulk``
logger as one line each: readable text, or one JSON object per line; they carry counts, never
the API key and never request or response bodies.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import anyio

from octave_bulk.observe.log import log_event, logger
from octave_bulk.run.summary import RunStats

__all__ = ["Progress"]


@contextlib.contextmanager
def _logs_above(_bar: object) -> Iterator[None]:
    """While the bar is live, send log events through rich's stderr proxy (above the bar)."""
    handlers = [
        h
        for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and h.stream is sys.__stderr__
    ]
    for handler in handlers:
        handler.setStream(sys.stderr)  # rich has replaced sys.stderr with a proxy by now
    try:
        yield
    finally:
        for handler in handlers:
            handler.setStream(sys.__stderr__)


class Progress:
    """Drives the bar (when ``bar`` is true) and the heartbeat events until cancelled.

    Args:
        stats: the run's counters.
        bar: draw a rich progress bar on stderr.
        total_hint: estimated number of input records (None when unknown, e.g. stdin).
        heartbeat_interval: seconds between heartbeat events when there is no bar.
        run_id: carried by every heartbeat.
    """

    def __init__(
        self,
        stats: RunStats,
        *,
        bar: bool,
        total_hint: int | None,
        heartbeat_interval: float,
        run_id: str,
    ) -> None:
        self._stats, self._bar, self._total_hint = stats, bar, total_hint
        self._heartbeat_interval, self._run_id = heartbeat_interval, run_id

    async def run(self) -> None:
        """Update until cancelled."""
        if self._bar:
            await self._run_bar()
        else:
            while True:
                await anyio.sleep(self._heartbeat_interval)
                self.heartbeat()

    def heartbeat(self) -> None:
        """Log one heartbeat event with the counts so far."""
        stats = self._stats
        log_event(
            "heartbeat",
            run_id=self._run_id,
            elapsed_s=round(stats.elapsed(), 1),
            in_flight=stats.in_flight,
            calls=stats.calls,
            credits=stats.credits,
            counts=stats.counts(),
        )

    def _processed(self) -> int:
        s = self._stats
        return s.finished + s.rejected + s.duplicate + s.skipped_done + s.skipped_failed

    async def _run_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        stats = self._stats
        columns = (
            TextColumn("[bold]octave-bulk"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "ok [green]{task.fields[ok]}[/] failed [red]{task.fields[failed]}[/] "
                "retrying {task.fields[retrying]} 429s {task.fields[r429]} "
                "{task.fields[rate]:.1f}/s"
            ),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with (
            Progress(*columns, console=Console(stderr=True), refresh_per_second=4) as bar,
            _logs_above(bar),
        ):
            task = bar.add_task(
                "run", total=self._total_hint, ok=0, failed=0, retrying=0, r429=0, rate=0.0
            )
            try:
                while True:
                    total = self._total_hint
                    if stats.input_done or total is None or total < stats.read:
                        total = stats.read if stats.input_done else max(total or 0, stats.read)
                    elapsed = stats.elapsed()
                    bar.update(
                        task,
                        completed=self._processed(),
                        total=total or None,
                        ok=stats.succeeded,
                        failed=stats.failed,
                        retrying=stats.retrying,
                        r429=stats.rate_limited,
                        rate=stats.succeeded / elapsed if elapsed > 0 else 0.0,
                    )
                    await anyio.sleep(0.25)
            finally:
                bar.update(task, completed=self._processed())
