"""One run in progress: its stages wired together, the task group that runs them, and the
sink's callback.

Contract: :class:`BatchRun` is built by ``engine.py`` once the output's store is open and the
input's start is known (``start.py``); :meth:`BatchRun.execute` runs the pipeline until the
input is done or the run stops::

    source (thread) ──work stream (bounded)──▶ N workers ──sink.write (sync)──▶ committer
      read, build, admit                         limiter → one call, retries,   group fsync,
      (admission.py)                             classify (worker.py)           mark durable

and :meth:`BatchRun.exit_rule` says how it ended; ``finish.py`` writes the summary from it.
Async submits are polled by ``jobs.py`` (not with ``detach``); the limiters come from the
run's limiter factory (``limits/factory.py``).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from octave_bulk.errors import ExitCode, StopReason
from octave_bulk.http.client import OctaveClient
from octave_bulk.input.reader import ContactReader
from octave_bulk.limits.base import Limiter, LimiterContext, LimiterFactory
from octave_bulk.observe.log import log_event
from octave_bulk.observe.progress import Progress
from octave_bulk.observe.series import SeriesRecorder
from octave_bulk.observe.words import counted
from octave_bulk.run.admission import Admission, WorkItem
from octave_bulk.run.callbacks import CallbackReceiver, load_token
from octave_bulk.run.control import RunControl
from octave_bulk.run.credits import CreditsCheck
from octave_bulk.run.finish import record_history
from octave_bulk.run.guard import ResendReport
from octave_bulk.run.jobs import Jobs
from octave_bulk.run.spend import CreditsCeiling
from octave_bulk.run.summary import ExitRule, RunStats, completed_exit
from octave_bulk.run.worker import Worker
from octave_bulk.settings.model import Settings
from octave_bulk.state.cursor import (
    CursorKeeper,
    ResumeCursor,
    load_first_rows,
)
from octave_bulk.state.files import NdjsonAppender
from octave_bulk.state.idset import id_key
from octave_bulk.state.jobs import PendingJob
from octave_bulk.state.limits import RememberedLimits, limits_key
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.sink import Failure, Sink, Submitted, Success
from octave_bulk.state.store import Claims, Store, StoreView, TakesOverJobs

__all__ = ["BatchRun", "Feed", "WorkSource"]

Feed = Callable[[MemoryObjectSendStream[WorkItem]], Coroutine[Any, Any, None]]
"""The run's admission (``Admission.feed`` on the run's input), sending into a stream."""
WorkSource = Callable[[Feed, MemoryObjectSendStream[WorkItem]], Coroutine[Any, Any, None]]
"""A source task in place of the admission's own: it is given the admission and the work
stream (the shared ledger's queue, ``state/pg/queue_source.py``)."""


class BatchRun:
    """The wiring of one run: its stages, the task group, and the sink's callback."""

    def __init__(
        self,
        settings: Settings,
        paths: OutputPaths,
        reader: ContactReader,
        state: StoreView,
        start: ResumeCursor,
        expected_rows: int | None,
        *,
        identity: dict[str, Any] | None,
        fingerprint: str,
        resend: ResendReport,
        limiter: LimiterFactory,
    ) -> None:
        self.settings, self.paths, self.reader, self.state = settings, paths, reader, state
        self.start, self.expected_rows = start, expected_rows
        self.run_id = uuid.uuid4().hex[:12]
        self.stats = RunStats(outcome_unknown=len(state.outcome_unknown))
        self.control = RunControl(settings, self.stats, self.run_id)
        self.admission = Admission(
            settings,
            self.stats,
            state,
            start,
            self.control,
            expected_rows,
            paid_elsewhere=resend.paid_elsewhere(state.is_done),
        )
        builder = self.admission.builder
        if start.line:  # the prefix is skipped unread: its first rows judge duplicates still
            builder.seed(load_first_rows(paths, start))
        self.cursor = CursorKeeper(
            paths,
            identity,
            fingerprint,
            self.admission.frontier.cursor,
            first_rows=builder.take_firsts,
            keys_bytes=start.keys_bytes,
        )
        self.slots: Claims | None = None
        self.carried_jobs: list[PendingJob] = []  # async jobs of earlier runs, still awaited
        self.receiver = (  # async callbacks: hints to poll, on the output's secret path
            CallbackReceiver(
                settings.callback_listen,
                load_token(paths.callback_token),
                self.stats,
                settings.async_handle_fields,
            )
            if settings.callback_listen and settings.mode == "async"
            else None
        )
        self.jobs: Jobs | None = None
        self.make_limiter = limiter
        self.limiter: Limiter | None = None
        self.store: Store | None = None
        self.source: WorkSource | None = None  # None: the admission feeds the workers
        self.credits = CreditsCheck()  # what the credits check before the run found
        self.limits = RememberedLimits(paths.limits)
        self.limits_key = limits_key(settings.base_url, settings.agent_type)

    def remember_limits(self) -> dict[str, Any]:
        """Store the limits the run settled at, for the next run; returns them, with the
        flags that would start there."""
        if self.limiter is None:
            return {"started_from_memory": False, "suggested_flags": None}
        return self.limits.keep(self.limits_key, self.limiter.report())

    def progress_columns(self) -> dict[str, Any]:
        """The run's counts as the history keeps them."""
        stats = self.stats
        return {
            "read": stats.read,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "rejected": stats.rejected + stats.duplicate,
            "skipped_done": stats.skipped_done,
            "paid_calls": stats.calls_sent,
            "credits": stats.credits,
            "paid_twice": stats.outcome_unknown,
        }

    async def record_progress(self, interval: float = 5.0) -> None:
        """Until cancelled: the history's row follows the run (a budget counts its calls
        even if the run is killed)."""
        while self.store is not None:
            await anyio.sleep(interval)
            update = functools.partial(record_history, self.store.runs, self.run_id)
            await anyio.to_thread.run_sync(update, self.progress_columns())

    def on_durable(self, outcome: Success | Failure | Submitted, person: int) -> None:
        """The sink's callback, once per outcome after its line is fsynced."""
        stats, frontier = self.stats, self.admission.frontier
        if isinstance(outcome, Submitted):  # its handle is durable: poll it
            stats.submitted += 1
            if self.jobs is not None:
                self.jobs.add(outcome.job)
            return
        if isinstance(outcome, Failure) and outcome.handle is None and self.jobs is not None:
            stats.submit_failed += 1
        if isinstance(outcome, Success):
            stats.succeeded += 1
            stats.credits += outcome.credits
            if outcome.usage_anomaly is not None:
                stats.usage_anomalies += 1
                log_event(
                    "usage_anomaly",
                    level=logging.WARNING,
                    request_id=outcome.request_id,
                    anomaly=outcome.usage_anomaly,
                )
            if self.slots is not None:
                self.slots.settle(outcome.request_id)
            frontier.settle(outcome.request_id)
        elif outcome.error.retryable:
            stats.failed_retryable += 1
            stats.failures_by_kind[outcome.error.kind] += 1
            frontier.block(outcome.request_id)
        else:
            stats.failed_permanent += 1
            stats.failures_by_kind[outcome.error.kind] += 1
            if self.slots is not None:  # settled for good: an old unknown outcome is moot
                self.slots.settle(outcome.request_id)
            frontier.settle(outcome.request_id, "skipped_failed")

    async def execute(
        self, client: OctaveClient, store: Store, *, handle_signals: bool, bar: bool
    ) -> None:
        settings, paths, control = self.settings, self.paths, self.control
        remembered = self.limits.get(self.limits_key)  # where the factory may start
        period = self.limits.period(self.limits_key)
        context = LimiterContext(settings, "calls", remembered, remembered_period=period)
        limiter = self.make_limiter(context)
        control.limiter = self.limiter = limiter
        if self.credits.ceiling is not None:
            control.credits = CreditsCeiling(client, *self.credits.ceiling, self.stats, control)
        receiver = self.receiver
        if receiver is not None:  # before any file is opened
            await receiver.start()
        results = NdjsonAppender(paths.results)
        errors = NdjsonAppender(paths.errors)
        rejects = NdjsonAppender(paths.rejects, keep=self.start.rejects_bytes)
        slots = self.slots = store.claims(self.state.outcome_unknown)
        if not settings.retry_failed:  # failed for good since: never sent again, reported once
            for rid in self.state.outcome_unknown:
                if self.state.failed_for_good(id_key(rid)):
                    slots.settle(rid)
        polling = settings.mode == "async" or bool(self.carried_jobs)
        jobs_file = NdjsonAppender(paths.jobs) if polling else None
        sink = Sink(
            run_id=self.run_id,
            key_field=settings.key,
            kind=settings.agent_type,
            results=results,
            errors=errors,
            on_durable=self.on_durable,
            release_slot=slots.release,
            batch=settings.fsync_batch,
            interval=settings.fsync_interval,
            record=store.record,
            resent=self.state.outcome_unknown,
            keep_lines=settings.ledger_url is not None,  # the shared ledger keeps the bodies
            jobs=jobs_file,
        )
        jobs = self.jobs = self._jobs(client, sink) if polling else None
        progress = Progress(
            self.stats,
            bar=bar,
            total_hint=self.expected_rows,
            heartbeat_interval=settings.heartbeat_interval,
            run_id=self.run_id,
            timeout=settings.timeout,
            give_up_at=jobs.give_up_at if jobs is not None and not settings.detach else None,
            carried=len(self.carried_jobs) if not settings.detach else 0,
        )
        if receiver is not None:
            receiver.jobs = jobs
            if isinstance(store, TakesOverJobs):  # a shared ledger: other runs' jobs too
                receiver.adopt = store.adopt_job
        submit = jobs if settings.mode == "async" else None
        worker = Worker(settings, self.stats, control, client, limiter, slots, submit)
        recorded = store.runs if settings.series else None
        series = SeriesRecorder(self.run_id, self.stats, limiter, recorded)
        reader = self.reader
        work_send, work_recv = anyio.create_memory_object_stream[WorkItem](settings.concurrency)
        limiters = [limiter] if jobs is None else [limiter, jobs.limiter]
        for opened, each in enumerate(limiters):
            try:
                await each.open()
            except BaseException:
                for other in limiters[:opened]:
                    await other.aclose()
                raise
        try:
            async with anyio.create_task_group() as helpers:
                helpers.start_soon(progress.run)
                helpers.start_soon(self.cursor.run)
                helpers.start_soon(self.record_progress)
                helpers.start_soon(series.run)
                if handle_signals:
                    helpers.start_soon(control.watch_signals)
                if jobs is not None and not settings.detach and isinstance(store, TakesOverJobs):
                    helpers.start_soon(store.watch_jobs, jobs.add)  # of runs that die meanwhile
                async with anyio.create_task_group() as pipeline:
                    pipeline.start_soon(sink.run)
                    with control.dispatch_scope:
                        async with anyio.create_task_group() as dispatch:
                            if jobs is not None and not settings.detach:
                                dispatch.start_soon(jobs.run)
                            async with anyio.create_task_group() as senders:
                                feed = functools.partial(
                                    self.admission.feed,
                                    reader,
                                    lambda: reader.lines_read,
                                    rejects=rejects,
                                )
                                if self.source is None:
                                    senders.start_soon(feed, work_send)
                                else:
                                    senders.start_soon(self.source, feed, work_send)
                                async with work_recv:
                                    for _ in range(settings.concurrency):
                                        senders.start_soon(worker.run, work_recv.clone(), sink)
                            if jobs is not None:  # the last handles durable, then no more
                                await sink.commit()
                                jobs.close()
                    # Dispatch is over (done, stopped or cancelled): the committer commits
                    # what is left and returns.
                    sink.close()
                helpers.cancel_scope.cancel()
        finally:
            if receiver is not None:
                await receiver.stop()
            with anyio.CancelScope(shield=True):
                await sink.commit()
                for each in limiters:
                    await each.aclose()
            for appender in (results, errors, rejects, jobs_file):
                if appender is not None:
                    appender.close()
            slots.close()
            self.cursor.save()
            series.close()
        stats = self.stats
        if jobs is not None:  # sent = submitted (awaited or not) or failed at the submit
            stats.not_sent = max(0, stats.queued - stats.submitted - stats.submit_failed)
        else:  # not sent: queued, and no call of this run ever left for it
            stats.not_sent = max(
                0, stats.queued - stats.finished - stats.unsettled - stats.abandoned
            )

    def _jobs(self, client: OctaveClient, sink: Sink) -> Jobs:
        """The poller, with its own limiter (the status endpoint's limits are its own), and
        the jobs earlier runs left awaiting."""
        settings = self.settings
        limiter = self.make_limiter(LimiterContext(settings, "polls"))
        jobs = Jobs(settings, self.stats, self.control, client, limiter, sink.write)
        for job in self.carried_jobs:
            jobs.add(job)
        return jobs

    def exit_rule(self) -> ExitRule:
        """The exit code and the rule that produced it (a stop reason decides first)."""
        reason = self.control.reason
        completed = completed_exit(self.stats, self.settings.exit_conditions)
        if reason in (StopReason.INPUT_ERROR, StopReason.LEDGER):
            # A file broke: after calls were sent, it is not "nothing sent".
            code = ExitCode.FILE_ERROR if self.stats.calls_sent else ExitCode.USAGE
            return replace(completed, code=code, reason=f"stopped: {reason}")
        if reason == StopReason.BREAKER and not self.stats.calls_sent:
            # No call reached a server (connect refused): "nothing sent", not "resume".
            return replace(completed, code=ExitCode.USAGE, reason="stopped: no server answered")
        if reason is not None:
            return replace(completed, code=reason.exit_code, reason=f"stopped: {reason}")
        if self.settings.detach:  # submitted and left: the jobs are collect's
            detached = (
                f"detached: {counted(self.stats.awaiting, 'job')} awaited, collect with "
                f"octave-bulk collect {self.paths.results}"
            )
            if completed.code != ExitCode.OK:
                detached += f"; {completed.reason}"
            return replace(completed, reason=detached)
        return completed
