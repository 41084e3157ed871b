"""What a person or a log collector sees while a run goes: a progress bar, or heartbeat events.

On a terminal (and unless disabled) a rich progress bar on stderr shows the contacts answered
out of the contacts to send (the input's rows less its rejects, duplicates and contacts already
done: an estimate until the input is read, then exact), ok, failed, in flight, retrying, 429s,
rate and ETA; until the first answers it says how long the calls in flight have been waiting
instead of a rate of 0. Its last frame is drawn from the final counts. Otherwise, and always
with ``--log-format json``, a heartbeat event is logged every ``heartbeat_interval`` seconds.

In async mode both also say how many submitted jobs await their result and when the run gives
up on the oldest of them (``give_up_at``, from the poller: ``run/jobs.py``), since the
submits themselves are soon over (``in_flight`` 0) while the run still waits for the jobs.

Either way, when the input is read and the calls still in flight have given no answer for
:func:`quiet_limit` seconds (a hung call holding the end of the run), a ``waiting`` event says
how many, for how long, and the ``--timeout`` that ends them. Events go through the ``octave_bulk``
logger as one line each: readable text, or one JSON object per line; they carry counts, never
the API key and never request or response bodies.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio

from octave_bulk.observe.log import log_event, logger
from octave_bulk.observe.words import counted
from octave_bulk.run.summary import RunStats
from octave_bulk.utc import utc_iso

__all__ = ["Progress", "quiet_limit"]


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


def quiet_limit(timeout: float) -> float:
    """Seconds without an answer, input read, after which the last calls are said to hold the
    end: half the call timeout, at most 30 s."""
    return min(30.0, timeout / 2)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Drives the bar (when ``bar`` is true) and the heartbeat events until cancelled.

    Args:
        stats: the run's counters.
        bar: draw a rich progress bar on stderr.
        total_hint: estimated number of input records (None when unknown, e.g. stdin).
        heartbeat_interval: seconds between heartbeat events when there is no bar.
        run_id: carried by every heartbeat.
        timeout: the call timeout (``--timeout``), named when the last calls hang.
        give_up_at: async: when the oldest awaited job is given up on (UNIX time, None when
            none is awaited).
        carried: async jobs of earlier runs this run polls: their outcomes count as
            answered, so they are part of the total.
    """

    def __init__(
        self,
        stats: RunStats,
        *,
        bar: bool,
        total_hint: int | None,
        heartbeat_interval: float,
        run_id: str,
        timeout: float = 180.0,
        give_up_at: Callable[[], float | None] | None = None,
        carried: int = 0,
    ) -> None:
        self._stats, self._bar, self._total_hint = stats, bar, total_hint
        self._heartbeat_interval, self._run_id = heartbeat_interval, run_id
        self._timeout, self._give_up_at, self._carried = timeout, give_up_at, carried
        self._answered, self._answered_at = 0, time.monotonic()
        self._said_waiting = False

    async def run(self) -> None:
        """Update until cancelled."""
        if self._bar:
            await self._run_bar()
        else:
            next_beat = time.monotonic() + self._heartbeat_interval
            while True:
                await anyio.sleep(min(0.5, self._heartbeat_interval))
                self._watch_the_end()
                if time.monotonic() >= next_beat:
                    next_beat += self._heartbeat_interval
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
            **self._awaited(),
        )

    def _awaited(self) -> dict[str, Any]:
        """Async: the jobs awaited and when the oldest is given up on (nothing in sync mode
        with no job awaited)."""
        if self._give_up_at is None:
            return {}
        at = self._give_up_at()
        return {
            "jobs_awaited": self._stats.awaiting,
            "give_up_at": utc_iso(at, ms=False) if at is not None else None,
        }

    def _awaited_note(self) -> str | None:
        """The bar's words for the jobs awaited, or None when none is."""
        at = self._give_up_at() if self._give_up_at is not None else None
        if at is None:
            return None
        left = max(0.0, at - time.time())
        return (
            f"{counted(self._stats.awaiting, 'job')} awaited; the oldest given up on at "
            f"{utc_iso(at, ms=False)[11:19]} UTC (in {_clock(left)})"
        )

    def _to_send(self) -> int | None:
        """Contacts this run sends (exact once the input is read, else estimated from the
        input's size less the rows already settled otherwise), and the jobs of earlier runs it
        polls."""
        stats = self._stats
        if stats.input_done:
            return stats.queued + self._carried
        if self._total_hint is None:
            return None
        settled = stats.rejected + stats.duplicate + stats.skipped_done + stats.skipped_failed
        settled += stats.filtered_out
        return max(self._total_hint - settled, stats.queued)  # the carried jobs' rows in it

    def _quiet_for(self) -> float:
        """Seconds since the last answer (or since the start)."""
        finished = self._stats.finished
        if finished != self._answered:
            self._answered, self._answered_at = finished, time.monotonic()
            self._said_waiting = False
        return time.monotonic() - self._answered_at

    def _watch_the_end(self) -> str | None:
        """The hung-end note (logged once per quiet spell), or None."""
        stats, quiet = self._stats, self._quiet_for()
        if not (stats.input_done and stats.in_flight and quiet >= quiet_limit(self._timeout)):
            return None
        note = (
            f"waiting for the last {stats.in_flight} call(s) in flight: no answer for "
            f"{quiet:.0f} s; each gives up after --timeout {self._timeout:g} s"
        )
        if not self._said_waiting:
            self._said_waiting = True
            log_event(
                "waiting",
                run_id=self._run_id,
                in_flight=stats.in_flight,
                no_answer_s=round(quiet),
                timeout_s=self._timeout,
            )
        return note

    def _fields(self) -> dict[str, Any]:
        """The bar's values now."""
        stats = self._stats
        total = self._to_send()
        finished, elapsed = stats.finished, stats.elapsed()
        note = self._watch_the_end()
        if note is None and finished == 0 and stats.in_flight:
            note = f"waiting for the first answers ({elapsed:.0f} s since start)"
        if note is None and finished:
            rate = finished / elapsed if elapsed > 0 else 0.0
            left = max(0, total - finished) / rate if total is not None and rate > 0 else None
            note = f"{rate:.1f}/s" + (f" ETA {_clock(left)}" if left is not None else "")
        awaited = self._awaited_note()
        if awaited is not None:
            note = f"{note}; {awaited}" if note else awaited
        return {
            "completed": finished,
            "total": total or None,
            "ok": stats.succeeded,
            "failed": stats.failed,
            "in_flight": stats.in_flight,
            "retrying": stats.retrying,
            "r429": stats.rate_limited,
            "note": note or "",
        }

    async def _run_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        columns = (
            TextColumn("[bold]octave-bulk"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "ok [green]{task.fields[ok]}[/] failed [red]{task.fields[failed]}[/] "
                "in flight {task.fields[in_flight]} retrying {task.fields[retrying]} "
                "429s {task.fields[r429]}"
            ),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
        )
        with (
            Progress(*columns, console=Console(stderr=True), refresh_per_second=4) as bar,
            _logs_above(bar),
        ):
            fields = self._fields()
            task = bar.add_task("run", **fields)
            try:
                while True:
                    bar.update(task, **self._fields())
                    await anyio.sleep(0.25)
            finally:  # the last frame shows the final counts, not the last tick's
                bar.update(task, **self._fields(), refresh=True)
