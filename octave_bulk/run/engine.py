"""The run: one task group, bounded streams, graceful stops, the summary.

::

    source (thread) ──work stream (bounded)──▶ N workers ──sink.write (sync)──▶ committer
      read, build, admit                         limiter → one call, retries,   group fsync,
      (admission.py)                             classify (worker.py)           mark durable

Backpressure runs from the workers to the reader, so memory depends on the concurrency, not
on the input. Workers write their outcome's line themselves, synchronously (no stream, no await
between receiving a response and writing it: measured, the second stream and its shielded
hand-off cost ~15 us per contact); the committer makes lines durable in groups.

Before the first call: the output's state is scanned (``state/ledger.py``), the re-send guard
reads the input once (``guard.py``: too many people already done would be paid again: exit 2;
not on a resume whose cursor applies: the same input and settings passed it already),
the run's row goes into the history (``state/history.py``; updated every 5 s, completed at the
end). A ``budget`` is held in the ledger before each batch of calls (``spend.py``).

Where the input resumes is decided in ``start.py``; the summary, metrics and ledger are
written at the end by ``finish.py``; async submits are polled by ``jobs.py`` - except with
``detach``, where no poller runs and the exit rule says how many jobs are left to ``octave-bulk
collect`` (``collect.py``: a run of the output with an empty input, which only polls).

Before the run's row, the agent is looked up (``check_agent``) and the credits checked
(``plan.check_credits``, whatever ``check_agent`` says); a run whose credits could not be
checked (stdin) stops once they are spent (``spend.py``).

Stops (control.py): ``max_calls``, the budget, the credits and the breaker stop dispatch and let calls in
flight finish; SIGINT/SIGTERM do the same within ``drain_timeout`` (a second signal stops at
once); 401/402/403 stop at once. Every stop flushes, fsyncs and writes the summary; every stop
is resumable.
"""

from __future__ import annotations

import functools
import logging
import sys
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx

from octave_bulk.errors import ConfigError, ExitCode, StateError, StopReason
from octave_bulk.http.client import OctaveClient, open_client
from octave_bulk.input.intake import open_contacts
from octave_bulk.input.reader import ContactReader
from octave_bulk.limits.adaptive import FIRST_WINDOW, WINDOW_BOUND, AdaptiveLimiter
from octave_bulk.observe.log import log_event
from octave_bulk.observe.progress import Progress
from octave_bulk.observe.series import SeriesRecorder
from octave_bulk.observe.words import counted
from octave_bulk.run.admission import Admission, WorkItem
from octave_bulk.run.callbacks import MAX_CONNECTIONS, CallbackReceiver, load_token
from octave_bulk.run.control import RunControl, connect_cause
from octave_bulk.run.dry import dry_run
from octave_bulk.run.finish import FinishedInput, finish_run, record_history
from octave_bulk.run.guard import ResendReport, check_agent, check_resend
from octave_bulk.run.heap import frozen_heap
from octave_bulk.run.jobs import Jobs
from octave_bulk.run.plan import CreditsCheck, check_credits
from octave_bulk.run.spend import BudgetHolds, CreditsCeiling
from octave_bulk.run.start import count_lines, resume_cursor, settings_fingerprint
from octave_bulk.run.summary import ExitRule, RunStats, RunSummary, completed_exit
from octave_bulk.run.worker import Worker
from octave_bulk.settings.model import Settings
from octave_bulk.state.cursor import (
    CursorKeeper,
    ResumeCursor,
    input_identity,
    load_first_rows,
)
from octave_bulk.state.files import NdjsonAppender
from octave_bulk.state.history import RunHistory
from octave_bulk.state.idset import id_key
from octave_bulk.state.index import OutputIndex
from octave_bulk.state.inflight import InflightSlots
from octave_bulk.state.jobs import PendingJob, carried_jobs
from octave_bulk.state.ledger import LedgerState, NdjsonLedger
from octave_bulk.state.limits import RememberedLimits, limits_key, start_limits
from octave_bulk.state.lock import RunLock
from octave_bulk.state.paths import OutputPaths, migrate_jsonl_side_files
from octave_bulk.state.preflight import (
    check_agent_of_output,
    check_descriptors,
    check_writable,
    descriptor_room,
    remove_stale_temp_files,
)
from octave_bulk.state.reconcile import reconcile_killed_runs
from octave_bulk.state.sink import Failure, Sink, Submitted, Success

__all__ = ["run_batch"]


class _Run:
    """The wiring of one run: its stages, the task group, and the sink's callback."""

    def __init__(
        self,
        settings: Settings,
        paths: OutputPaths,
        reader: ContactReader,
        state: LedgerState,
        start: ResumeCursor,
        expected_rows: int | None,
        *,
        identity: dict[str, Any] | None,
        fingerprint: str,
        resend: ResendReport,
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
            paid_elsewhere=resend.paid_elsewhere(state.done),
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
        self.slots: InflightSlots | None = None
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
        self.limiter: AdaptiveLimiter | None = None
        self.history: RunHistory | None = None
        self.credits = CreditsCheck()  # what the credits check before the run found
        self.index: OutputIndex | None = None
        self.limits = RememberedLimits(paths.limits)
        self.limits_key = limits_key(settings.base_url, settings.agent_type)
        self.given = set(settings.model_fields_set)
        # Remembered limits start the run, clamped by the ceilings set (never turned off).
        self.start_rate, self.start_window = start_limits(
            settings.rate, settings.concurrency, self.limits.get(self.limits_key)
        )

    def remember_limits(self) -> dict[str, Any]:
        """Store the limits the run settled at, for the next run; returns them, with the
        flags that would start there."""
        found = self.limiter.describe() if self.limiter is not None else {}
        limiter = self.limiter
        # A limit met in this run, or one remembered that still held (its setting now).
        rate = found.get("rate")
        if rate is None and self.start_rate is not None and limiter is not None:
            rate = limiter.rate and round(limiter.rate, 3)
        window = found.get("window") if found.get("concurrency_limited_at") else None
        if window is None and self.start_window is not None and limiter is not None:
            window = limiter.window
        if rate is not None or window is not None:
            self.limits.put(self.limits_key, rate, window)
        flags = []
        if rate is not None:
            flags.append(f"--rate {rate:g}/s")
        if window is not None:
            flags.append(f"--concurrency {window}")
        return {
            **found,
            "started_from_memory": bool(self.start_rate or self.start_window),
            "suggested_flags": " ".join(flags) or None,
        }

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
        while self.history is not None:
            await anyio.sleep(interval)
            update = functools.partial(record_history, self.history, self.run_id)
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
        retryable = isinstance(outcome, Failure) and outcome.error.retryable
        ok = isinstance(outcome, Success)
        self.state.settle(outcome.request_id, person, ok=ok, retryable=retryable)
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

    async def execute(self, client: OctaveClient, *, handle_signals: bool, bar: bool) -> None:
        settings, paths, control = self.settings, self.paths, self.control
        limiter = control.limiter = self.limiter = AdaptiveLimiter(
            settings.rate,
            settings.concurrency,
            start_rate=self.start_rate,
            start_window=self.start_window,
            first_window=None if "concurrency" in self.given else FIRST_WINDOW,
            search_from=settings.start_rate,
            adaptive=settings.adaptive,
        )
        if self.credits.ceiling is not None:
            control.credits = CreditsCeiling(client, *self.credits.ceiling, self.stats, control)
        receiver = self.receiver
        if receiver is not None:  # before any file is opened
            await receiver.start()
        results = NdjsonAppender(paths.results)
        errors = NdjsonAppender(paths.errors)
        rejects = NdjsonAppender(paths.rejects, keep=self.start.rejects_bytes)
        slots = self.slots = InflightSlots(paths.inflight, carry=self.state.outcome_unknown)
        if not settings.retry_failed:  # failed for good since: never sent again, reported once
            for rid in self.state.outcome_unknown:
                if id_key(rid) in self.state.errors.permanent:
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
            index=self.index,
            resent=self.state.outcome_unknown,
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
        submit = jobs if settings.mode == "async" else None
        worker = Worker(settings, self.stats, control, client, limiter, slots, submit)
        recorded = self.history if settings.series else None
        series = SeriesRecorder(self.run_id, self.stats, limiter, recorded)
        reader = self.reader
        work_send, work_recv = anyio.create_memory_object_stream[WorkItem](settings.concurrency)
        try:
            async with anyio.create_task_group() as helpers:
                helpers.start_soon(progress.run)
                helpers.start_soon(self.cursor.run)
                helpers.start_soon(self.record_progress)
                helpers.start_soon(series.run)
                if handle_signals:
                    helpers.start_soon(control.watch_signals)
                async with anyio.create_task_group() as pipeline:
                    pipeline.start_soon(sink.run)
                    with control.dispatch_scope:
                        async with anyio.create_task_group() as dispatch:
                            if jobs is not None and not settings.detach:
                                dispatch.start_soon(jobs.run)
                            async with anyio.create_task_group() as senders:
                                senders.start_soon(
                                    self.admission.feed,
                                    reader,
                                    lambda: reader.lines_read,
                                    work_send,
                                    rejects,
                                )
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
            for appender in (results, errors, rejects, jobs_file):
                if appender is not None:
                    appender.close()
            self.state.results.size, self.state.errors.size = results.size, errors.size
            slots.sync()
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
        limiter = AdaptiveLimiter(
            settings.poll_rate,
            settings.poll_concurrency,
            search_from=settings.start_rate,
            adaptive=settings.adaptive,
            name="poll_pacing",
        )
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


def _searched_window(settings: Settings, *, bounded: bool, served: int = 0) -> Settings:
    """No ``--concurrency``: the workers, the connection pool and the limiter's window
    ceiling are the safety bound (:data:`WINDOW_BOUND`, less when the open-file limit is
    lower); the limiter starts its window at :data:`FIRST_WINDOW` and searches up from
    there. The setting still reads as not given (a remembered window applies)."""
    bound = descriptor_room(WINDOW_BOUND, served=served) if bounded else WINDOW_BOUND
    searched = settings.model_copy(update={"concurrency": bound})
    searched.__pydantic_fields_set__.discard("concurrency")
    return searched


async def run_batch(
    input_path: str | Path,
    output: str | Path,
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
    collect: bool = False,
) -> RunSummary:
    """Run (or resume) a batch: every contact of ``input_path`` ends in ``output`` or its
    errors/rejects files. Usable inside any running asyncio loop.

    Args:
        input_path: CSV or NDJSON file, or ``-`` for stdin.
        output: ``OUT.ndjson``; side files are named after it.
        settings: the run's settings (API key, target, pacing, ...).
        transport: an httpx transport to send through (e.g. ``httpx.ASGITransport`` in tests);
            by default one is built from the settings and closed at the end.
        handle_signals: stop gracefully on SIGINT/SIGTERM (main thread only; the CLI does).
        collect: the input is ``collect.py``'s empty stand-in: no resume cursor is kept for it
            and the history names no input.

    Returns:
        The summary also written to ``OUT.summary.json``; ``exit_code`` says how it ended.

    Raises:
        ConfigError, InputError, StateError: before anything was sent.
        FatalApiError: the contacts to send cost more credits than remain (before any call).
    """
    if not (settings.agent_oid or settings.experiment_oid):
        raise ConfigError(
            "no target: give --agent ca_... (or OCTAVE_AGENT_OID) or --experiment ae_..."
        )
    if settings.api_key is None and not settings.dry_run:
        raise ConfigError("no API key: set OCTAVE_API_KEY or use --api-key-file PATH")
    paths = OutputPaths.for_output(output)
    if settings.dry_run:
        return dry_run(input_path, paths, settings)
    # Every path the run writes, before the lock and the first call (exit 2, nothing sent).
    check_agent_of_output(paths, settings.agent_type)
    check_writable(paths, ledger=settings.ledger, metrics=settings.metrics_textfile)
    listening = settings.callback_listen is not None and settings.mode == "async"
    served = MAX_CONNECTIONS if listening else 0  # the callback receiver's connections
    if "concurrency" not in settings.model_fields_set:
        settings = _searched_window(settings, bounded=transport is None, served=served)
    elif transport is None:
        check_descriptors(settings.concurrency, served=served)
    lock = RunLock(paths.lock)
    try:
        lock.acquire()
    except OSError as exc:
        raise StateError(f"{paths.lock}: cannot take the run lock: {exc.strerror}") from None
    sent: list[RunStats] = []  # the run's counters, once it has some (for the error below)
    try:
        migrate_jsonl_side_files(paths)
        remove_stale_temp_files(_replaced_files(paths, settings))
        ledger = settings.ledger or paths.ledger
        with RunHistory.open(ledger, timeout=settings.ledger_timeout) as history:
            return await _locked_run(
                input_path, paths, settings, transport, handle_signals, history, sent, collect
            )
    except* OSError as group:  # the output's disk: full, read-only, not a file...
        calls = sent[0].calls_sent if sent else 0
        raise StateError(
            f"cannot use the output files ({_first_leaf(group)}); every result written "
            "before this is safe: fix the cause, then run the same command to resume",
            calls_sent=calls,
        ) from None
    finally:
        lock.release()


def _replaced_files(paths: OutputPaths, settings: Settings) -> list[Path]:
    """The files a run replaces atomically (their stale temp files are removed at start)."""
    files = [paths.summary, paths.cursor, paths.limits]
    if settings.metrics_textfile is not None:
        files.append(settings.metrics_textfile)
    return files


async def _locked_run(
    input_path: str | Path,
    paths: OutputPaths,
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None,
    handle_signals: bool,
    history: RunHistory,
    sent: list[RunStats],
    collect: bool = False,
) -> RunSummary:
    index = OutputIndex(history, paths.results) if settings.ledger_index else None
    state = NdjsonLedger(paths, index).load()
    carried = carried_jobs(paths, state, index)
    if index is not None and index.output_id is not None:  # a killed run's row, made true
        reconcile_killed_runs(history, index.output_id, paths.results, len(state.outcome_unknown))
    scan = state.results
    done_before = scan.lines  # the state follows the run from here
    if scan.bad_lines:
        log_event(
            "corrupt_results",
            level=logging.WARNING,
            lines=scan.bad_lines,
            action="not counted as done (sent again); copied to the quarantine file",
            quarantine=str(paths.corrupt),
        )
    identity = input_identity(input_path)  # before reading: a file changed since is "changed"
    with open_contacts(input_path, settings) as reader:
        expected = count_lines(Path(input_path) if str(input_path) != "-" else None)
        if reader.format != "csv" or collect:
            identity = None  # no cursor is saved for NDJSON (see _resume_cursor)
        fingerprint = settings_fingerprint(settings)
        start, cursor_note = resume_cursor(reader, paths, settings, identity, fingerprint)
        resend = ResendReport()
        if not start.line:  # a resume whose cursor applies passed the guard already
            resend = check_resend(input_path, settings, state)
            if resend.trips(settings.resend_guard) and not settings.allow_resend:
                raise ConfigError(resend.refusal(settings.resend_guard, paths.results))
        run = _Run(
            settings,
            paths,
            reader,
            state,
            start,
            expected,
            identity=identity,
            fingerprint=fingerprint,
            resend=resend,
        )
        run.history, run.index, run.carried_jobs = history, index, carried
        sent.append(run.stats)
        async with open_client(settings, transport=transport) as client:  # before the row
            await check_agent(client, settings)  # (exit 2 or 3 leaves none)
            run.credits = await check_credits(client, settings, input_path, paths.results, expected)
            if client.checks_unreachable and not client.checks_answered:
                raise ConfigError(  # nothing there to pay: exit 2 before the first call
                    f"the checks before the run could not connect "
                    f"{connect_cause(client.last_check_error, settings.base_url)}; nothing was sent"
                )
        if settings.budget is not None:
            run.control.budget = BudgetHolds(history, run.run_id, settings, run.control)
        history.start(
            run.run_id,
            paths.results.resolve(),
            input_path="(collect)" if collect else str(input_path),
            input_identity=identity,
            settings_fingerprint=fingerprint,
            settings=settings.redacted(),
        )
        bar = settings.progress if settings.progress is not None else sys.stderr.isatty()
        bar = bar and settings.log_format != "json"
        log_event(
            "start",
            run_id=run.run_id,
            input="collect (no input: the awaited jobs only)" if collect else str(input_path),
            output=str(paths.results),
            already_done=done_before,
            repaired_bytes=scan.repaired_bytes,
            outcome_unknown=len(state.outcome_unknown),
            jobs_awaited=len(carried),
            skipped_unread=start.counts["read"],
            cursor=cursor_note,
            input_format=None if collect else reader.format,
            encoding=None if collect else reader.encoding,
            mapping=None if collect else reader.mapping.render(),
        )
        receiver = run.receiver  # Octave is given the receiver's secret path
        callback_url = receiver.url(settings.callback_url) if receiver is not None else None
        async with open_client(settings, transport=transport, callback_url=callback_url) as client:
            with frozen_heap():
                await run.execute(client, handle_signals=handle_signals, bar=bar)
    return finish_run(
        run,
        FinishedInput("(collect)" if collect else input_path, reader, start, cursor_note),
        state=state,
        done_before=done_before,
        history=history,
        index=index,
    )


def _first_leaf(group: BaseExceptionGroup[OSError]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
