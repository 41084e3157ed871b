"""The run: one task group, bounded streams, graceful stops, the summary.

::

    source (thread) ──work stream (bounded)──▶ N workers ──sink.write (sync)──▶ committer
      read, build request, requestId,            pacer.acquire → one call,       group fsync,
      dedup, skip done                           retries, classify, write line   mark durable

Backpressure runs from the workers to the reader, so memory depends on the concurrency, not
on the input. Workers write their outcome's line themselves, synchronously (no stream, no await
between receiving a response and writing it: measured, the second stream and its shielded
hand-off cost ~15 us per contact); the committer makes lines durable in groups.

Stops: ``max_calls`` and the breaker stop dispatch and let calls in flight finish;
SIGINT/SIGTERM do the same within ``drain_timeout`` (a second signal stops at once); 401/402/403
stop at once. Every stop flushes, fsyncs and writes the summary; every stop is resumable.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import SecretStr
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from octave_bulk.build import RequestBuilder
from octave_bulk.errors import (
    ApiError,
    ConfigError,
    FatalApiError,
    OctaveBulkError,
    RetryableApiError,
    StateError,
)
from octave_bulk.http.client import CallSuccess, OctaveClient, make_transport
from octave_bulk.input.reader import ContactReader
from octave_bulk.input.records import Contact, Reject
from octave_bulk.intake import open_contacts, reader_options, request_spec
from octave_bulk.limits.adaptive import Pacer
from octave_bulk.observe.metrics import write_metrics
from octave_bulk.observe.progress import Progress, log_event
from octave_bulk.run.summary import RunStats
from octave_bulk.settings import Settings
from octave_bulk.sink import Failure, NdjsonAppender, Sink, Success, utc_now
from octave_bulk.state.checkpoint import (
    ErrorsScan,
    IdSet,
    InflightSlots,
    OutputPaths,
    RunLock,
    id_key,
    scan_errors,
    scan_results,
    write_json_atomic,
)
from octave_bulk.state.cursor import (
    COUNTED,
    Frontier,
    ResumeCursor,
    input_identity,
    load_cursor,
    save_cursor,
)

__all__ = ["EXIT_CODES", "run_batch"]

EXIT_CODES = {
    "ok": 0,
    "some_failed": 1,
    "input_error": 2,
    "fatal": 3,
    "breaker": 4,
    "max_calls": 5,
    "interrupted": 130,
}
"""Exit code per way a run ends (SPEC.md §7); usage/config/input errors are 2 (in the CLI)."""

_READ_BATCH = 64  # records read per hop to the reader thread
_CURSOR_INTERVAL = 5.0  # seconds between saves of the resume cursor


@dataclass(frozen=True, slots=True)
class _WorkItem:
    request_id: str
    body: bytes
    contact: dict[str, Any]


_Attempted = tuple[CallSuccess, int, float]  # (result, in-flight slot, latency ms)


class _Stopped(Exception):
    """Dispatch stopped before this attempt could be sent (not an API outcome)."""


class _Run:
    def __init__(
        self,
        settings: Settings,
        paths: OutputPaths,
        contacts: Iterable[Contact | Reject],
        stats: RunStats,
        errors_scan: ErrorsScan,
        done: IdSet,
        expected_rows: int | None = None,
        *,
        line_of: Callable[[], int] = lambda: 0,
        start: ResumeCursor | None = None,
        identity: dict[str, Any] | None = None,
        fingerprint: str = "",
    ) -> None:
        self.settings, self.paths, self.stats = settings, paths, stats
        self.expected_rows = expected_rows
        self.contacts, self.line_of = contacts, line_of
        self.start = start or ResumeCursor()
        self.frontier = Frontier(self.start)
        for name in COUNTED:  # the rows skipped unread count as a full re-read would
            setattr(stats, name, getattr(stats, name) + self.start.counts[name])
        stats.rejects_by_reason.update(self.start.rejects_by_reason)
        self.identity, self.fingerprint = identity, fingerprint  # for saving the cursor
        self.done, self.errors_scan = done, errors_scan
        self.builder = RequestBuilder(request_spec(settings), expected_rows or 1024)
        self.stop_reason: str | None = None
        self.fatal: FatalApiError | None = None
        self.input_error: OctaveBulkError | None = None
        self.consecutive_failures = 0
        self.dispatch_scope = anyio.CancelScope()
        self.stopped = anyio.Event()  # wakes every sleeping worker when the run stops
        self.pacer: Pacer | None = None
        self.slots: InflightSlots | None = None
        self.carried: list[str] = []  # outcome unknown from an earlier run, not done since
        self.run_id = uuid.uuid4().hex[:12]

    # --- stopping ---------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: str) -> None:
        """Stop dispatching; calls in flight finish within ``drain_timeout`` (then cancelled)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            log_event("stopping", reason=reason, run_id=self.run_id, in_flight=self.stats.in_flight)
        self.stopped.set()
        if self.pacer is not None:
            self.pacer.stop()
        if math.isinf(self.dispatch_scope.deadline):
            self.dispatch_scope.deadline = anyio.current_time() + self.settings.drain_timeout

    async def watch_signals(self) -> None:
        interrupted = False
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not interrupted:
                    interrupted = True
                    log_event("signal", signal=name, action="draining calls in flight")
                    self.stop("interrupted")
                    self.stop_reason = "interrupted"  # wins over an earlier graceful stop
                else:
                    log_event("signal", signal=name, action="stopping now")
                    self.dispatch_scope.cancel()

    # --- source -----------------------------------------------------------------------

    async def source(
        self, work: MemoryObjectSendStream[_WorkItem], rejects: NdjsonAppender
    ) -> None:
        async with work:
            records = iter(self.contacts)
            limit = self.settings.limit
            accepted = self.start.counts["skipped_done"] + self.start.counts["skipped_failed"]
            while not self.stopping and (limit is None or accepted < limit):
                try:
                    # Abandoned on a hard stop: a reader blocked on a pipe must not hold us.
                    batch = await anyio.to_thread.run_sync(
                        _take, records, _READ_BATCH, self.line_of, abandon_on_cancel=True
                    )
                except OctaveBulkError as exc:  # the input broke mid-file (found too late)
                    self.input_error = exc
                    self.stop("input_error")
                    break
                if not batch:
                    break
                for record, end_line in batch:
                    item = self._admit(record, end_line, rejects)
                    if item is not None:
                        accepted += 1
                        if item is not _SKIP:
                            try:
                                await _put(work, item)
                            except anyio.BrokenResourceError:  # every worker has stopped
                                return
                            self.stats.queued += 1
                    if self.stopping or (limit is not None and accepted >= limit):
                        break
            self.stats.input_done = True

    def _admit(
        self, record: Contact | Reject, end_line: int, rejects: NdjsonAppender | None
    ) -> _WorkItem | None:
        """A work item, _SKIP (already done / failed for good), or None (rejected).

        ``rejects`` is where rejects go (None: nowhere, for a dry run)."""
        stats, frontier = self.stats, self.frontier
        rejects_size = rejects.size if rejects is not None else 0
        stats.read += 1
        if isinstance(record, Contact):
            built = self.builder.build(record)
            if isinstance(built, Reject):
                record = built
            elif built.key in self.done:
                stats.skipped_done += 1
                frontier.add(end_line, rejects_size, "skipped_done")
                return _SKIP
            elif built.key in self.errors_scan.permanent and not self.settings.retry_failed:
                stats.skipped_failed += 1
                frontier.add(end_line, rejects_size, "skipped_failed")
                return _SKIP
            else:
                frontier.add(end_line, rejects_size, "skipped_done", open_id=built.request_id)
                return _WorkItem(built.request_id, orjson.dumps(built.wire), built.wire)
        kind = "duplicate" if record.reason == "duplicate" else "rejected"
        setattr(stats, kind, getattr(stats, kind) + 1)
        stats.rejects_by_reason[record.reason] += 1
        if rejects is not None:
            rejects.write(orjson.dumps(record.to_record(), default=str) + b"\n")
            rejects_size = rejects.size
        frontier.add(end_line, rejects_size, kind, reason=record.reason)
        return None

    # --- workers ----------------------------------------------------------------------

    async def worker(
        self,
        work: MemoryObjectReceiveStream[_WorkItem],
        sink: Sink,
        client: OctaveClient,
        pacer: Pacer,
        slots: InflightSlots,
    ) -> None:
        async with work:
            while (item := await _next(work)) is not None:
                if self.stopping:
                    break
                try:
                    outcome = await self._process(item, client, pacer, slots)
                except Exception as exc:  # a bug must cost one contact, not the whole run
                    log_event("internal_error", level=logging.ERROR, error=repr(exc)[:300])
                    error = RetryableApiError(f"internal error: {exc!r}"[:300], kind="internal")
                    outcome = Failure(item.request_id, item.contact, error, 1, None)
                if outcome is not None:
                    sink.write(outcome)

    async def _process(
        self, item: _WorkItem, client: OctaveClient, pacer: Pacer, slots: InflightSlots
    ) -> Success | Failure | None:
        attempts = 0

        async def attempt() -> tuple[CallSuccess, int, float]:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self.stats.retried += 1
            return await self._attempt(item, client, pacer, slots)

        try:
            try:
                result, slot, latency = await attempt()
            except ApiError as first:
                # The retry machinery is only built on the (rare) retry path.
                if not first.retryable or self.settings.max_attempts < 2:
                    raise
                result, slot, latency = await self._retry(attempt, first)
        except (_Stopped, FatalApiError):
            # Not this contact's fault: nothing is recorded, the next run sends it again.
            return None
        except ApiError as exc:
            return Failure(item.request_id, item.contact, exc, attempts, None)
        self.stats.latency.add(latency)
        return Success(
            request_id=item.request_id,
            contact=item.contact,
            raw=result.raw,
            credits=result.credits,
            attempts=attempts,
            latency_ms=round(latency),
            slot=slot,
        )

    async def _retry(
        self, attempt: Callable[[], Awaitable[_Attempted]], first: ApiError
    ) -> _Attempted:
        """Attempts 2..max_attempts, each after a backoff (tenacity)."""
        await self._sleep_unless_stopping(self._wait(first, 1))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.max_attempts - 1),
            wait=lambda state: self._wait(
                state.outcome.exception() if state.outcome else None, state.attempt_number + 1
            ),
            retry=retry_if_exception(lambda exc: isinstance(exc, ApiError) and exc.retryable),
            reraise=True,
            sleep=self._sleep_unless_stopping,
        )
        async for step in retrying:
            with step:
                return await attempt()
        raise AssertionError(
            "unreachable: tenacity either returns or re-raises"
        )  # pragma: no cover

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        self.stats.retrying += 1
        try:
            with anyio.move_on_after(seconds):
                await self.stopped.wait()
        finally:
            self.stats.retrying -= 1
        if self.stopping:
            raise _Stopped

    def _wait(self, exc: BaseException | None, failed_attempts: int) -> float:
        """Full jitter (AWS): uniform(0, min(cap, initial * 2^(n-1))), at least Retry-After."""
        settings = self.settings
        cap = min(settings.backoff_max, settings.backoff_initial * 2 ** (failed_attempts - 1))
        wait = random.uniform(0, cap)
        # The retry waits out its own Retry-After (429 or 503); a 429 that says the pool is too
        # fast also pauses the whole pool, in the pacer.
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            wait = max(wait, min(exc.retry_after, settings.backoff_max))
        return wait

    async def _attempt(
        self, item: _WorkItem, client: OctaveClient, pacer: Pacer, slots: InflightSlots
    ) -> tuple[CallSuccess, int, float]:
        if self.stopping or self._budget_spent():  # checked before waiting for a slot...
            raise _Stopped
        sent_at = await pacer.acquire()
        if self.stopping or self._budget_spent():  # ... and after: others may have spent it
            raise _Stopped
        stats = self.stats
        stats.calls += 1
        stats.in_flight += 1
        slot = slots.claim(item.request_id)
        started = time.perf_counter()
        try:
            result = await client.run_sequence(item.body, item.request_id)
        except ApiError as exc:
            slots.release(slot)  # an error answer: nothing was delivered that we could lose
            self._count_error(exc, pacer, sent_at)
            raise
        finally:
            stats.in_flight -= 1
        stats.calls_by_status["200"] += 1
        pacer.on_accepted()
        self.consecutive_failures = 0
        return result, slot, (time.perf_counter() - started) * 1000

    def _budget_spent(self) -> bool:
        """True (and the run stops) once --max-calls calls have been sent."""
        limit = self.settings.max_calls
        if limit is not None and self.stats.calls >= limit:
            self.stop("max_calls")
            return True
        return False

    def _count_error(self, exc: ApiError, pacer: Pacer, sent_at: float) -> None:
        stats = self.stats
        stats.calls_by_status[str(exc.status) if exc.status else exc.kind] += 1
        if exc.status == 429:
            stats.rate_limited += 1
            rate, was_paused = pacer.rate, pacer.paused_until > time.monotonic()
            pause = pacer.on_429(sent_at, exc.retry_after)
            if pacer.rate != rate or (pause > 0 and not was_paused):  # new pause or slow-down
                log_event("rate_limited", pause_s=round(pause, 2), rate=_rounded(pacer.rate))
            return
        pacer.on_accepted()
        if exc.kind == "timeout":
            stats.timeouts += 1
        if isinstance(exc, FatalApiError):
            self.fatal = exc
            self.stop("fatal")  # no new calls; the ones in flight are paid for: let them land
        elif exc.retryable:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.settings.breaker_threshold:
                self.stop("breaker")
        else:
            self.consecutive_failures = 0

    # --- sink callbacks ---------------------------------------------------------------

    def on_durable(self, outcome: Success | Failure) -> None:
        stats = self.stats
        if isinstance(outcome, Success):
            stats.succeeded += 1
            stats.credits += outcome.credits
            if self.slots is not None:
                self.slots.settle(outcome.request_id)
            self.frontier.settle(outcome.request_id)
        elif outcome.error.retryable:
            stats.failed_retryable += 1
            stats.failures_by_kind[outcome.error.kind] += 1
            self.frontier.block(outcome.request_id)
        else:
            stats.failed_permanent += 1
            stats.failures_by_kind[outcome.error.kind] += 1
            self.frontier.settle(outcome.request_id, "skipped_failed")

    def save_cursor(self) -> None:
        """Save the settled prefix for the next resume (a no-op for stdin and NDJSON)."""
        self._write_cursor(self.frontier.cursor())

    def _write_cursor(self, cursor: ResumeCursor) -> None:
        if self.identity is None:
            return
        try:
            save_cursor(self.paths, cursor, self.identity, self.fingerprint)
        except OSError as exc:  # only a shortcut for the next resume: never worth a stop
            log_event("cursor_not_saved", level=logging.WARNING, error=str(exc))

    async def save_cursor_periodically(self) -> None:
        while True:
            await anyio.sleep(_CURSOR_INTERVAL)
            # The snapshot on the loop's thread (the frontier is not thread-safe), the fsyncs
            # off it.
            await anyio.to_thread.run_sync(self._write_cursor, self.frontier.cursor())

    # --- the whole run ----------------------------------------------------------------

    async def execute(self, client: OctaveClient, *, handle_signals: bool, bar: bool) -> None:
        settings, paths = self.settings, self.paths
        pacer = self.pacer = Pacer(
            settings.rate,
            adaptive=settings.adaptive,
            pause_backoff=settings.backoff_initial,
            pause_backoff_max=settings.backoff_max,
        )
        results = NdjsonAppender(paths.results)
        errors = NdjsonAppender(paths.errors)
        rejects = NdjsonAppender(paths.rejects, keep=self.start.rejects_bytes)
        slots = self.slots = InflightSlots(paths.inflight, carry=self.carried)
        sink = Sink(
            results=results,
            errors=errors,
            on_durable=self.on_durable,
            release_slot=slots.release,
            batch=settings.fsync_batch,
            interval=settings.fsync_interval,
        )
        progress = Progress(
            self.stats,
            bar=bar,
            total_hint=self.expected_rows,
            heartbeat_interval=settings.heartbeat_interval,
            run_id=self.run_id,
        )
        work_send, work_recv = anyio.create_memory_object_stream[_WorkItem](settings.concurrency)
        try:
            async with anyio.create_task_group() as helpers:
                helpers.start_soon(progress.run)
                helpers.start_soon(self.save_cursor_periodically)
                if handle_signals:
                    helpers.start_soon(self.watch_signals)
                async with anyio.create_task_group() as pipeline:
                    pipeline.start_soon(sink.run)
                    with self.dispatch_scope:
                        async with anyio.create_task_group() as dispatch:
                            dispatch.start_soon(self.source, work_send, rejects)
                            async with work_recv:
                                for _ in range(settings.concurrency):
                                    dispatch.start_soon(
                                        self.worker, work_recv.clone(), sink, client, pacer, slots
                                    )
                    # Dispatch is over (done, stopped or cancelled): the committer commits
                    # what is left and returns.
                    sink.close()
                    self.stats.not_sent = max(0, self.stats.queued - self.stats.finished)
                helpers.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await sink.commit()
            for appender in (results, errors, rejects):
                appender.close()
            slots.sync()
            slots.close()
            self.save_cursor()
        self.stats.not_sent = max(0, self.stats.queued - self.stats.finished)


_SKIP = _WorkItem("", b"", {})  # sentinel: already done, or failed for good


# anyio's send()/receive() always yield to the event loop first (a checkpoint), even when an
# item or a free slot is ready. With 64 workers that forced extra loop iterations costing
# ~30-70 us of CPU per contact (measured against an instant server); the *_nowait fast path
# keeps the bounded stream and its backpressure and only awaits when it has to wait anyway.


async def _next(stream: MemoryObjectReceiveStream[_WorkItem]) -> _WorkItem | None:
    """The next item, or None when the stream is closed and drained."""
    try:
        return stream.receive_nowait()
    except anyio.WouldBlock:
        try:
            return await stream.receive()
        except anyio.EndOfStream:
            return None
    except anyio.EndOfStream:
        return None


async def _put(stream: MemoryObjectSendStream[_WorkItem], item: _WorkItem) -> None:
    try:
        stream.send_nowait(item)
    except anyio.WouldBlock:
        await stream.send(item)


def _take(
    records: Iterator[Contact | Reject], count: int, line_of: Callable[[], int]
) -> list[tuple[Contact | Reject, int]]:
    """Up to ``count`` records, each with the input line it ends on."""
    batch = []
    for record in records:
        batch.append((record, line_of()))
        if len(batch) >= count:
            break
    return batch


def _resume_cursor(
    reader: ContactReader,
    paths: OutputPaths,
    settings: Settings,
    identity: dict[str, Any] | None,
    fingerprint: str,
) -> tuple[ResumeCursor, str]:
    """Skip the input's settled prefix if a saved cursor still applies; what was skipped and
    why (or why not)."""
    if settings.retry_failed:
        return ResumeCursor(), "not used with --retry-failed"
    if reader.format != "csv":
        return ResumeCursor(), "not used for NDJSON input"
    cursor, note = load_cursor(paths, identity, fingerprint)
    if cursor is None:
        return ResumeCursor(), note
    reader.skip_to(cursor.line, cursor.counts["read"])
    return cursor, f"skipped {cursor.counts['read']:,} settled rows (lines up to {cursor.line:,})"


def _fingerprint(settings: Settings) -> str:
    """What must match for a resume cursor to apply: how rows are read and requests built."""
    shape = repr((reader_options(settings), request_spec(settings)))
    return hashlib.sha256(shape.encode()).hexdigest()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _count_lines(path: Path | None) -> int | None:
    """Input records, roughly (lines minus the header), for the progress bar's total."""
    if path is None or not path.is_file():
        return None
    lines = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            lines += chunk.count(b"\n")
    return max(0, lines - 1)


def _exit_code(run: _Run) -> int:
    if run.stop_reason in EXIT_CODES:
        return EXIT_CODES[run.stop_reason]
    stats = run.stats
    if stats.failed or stats.rejected or stats.duplicate or stats.skipped_failed:
        return EXIT_CODES["some_failed"]
    return EXIT_CODES["ok"]


async def run_batch(
    input_path: str | Path,
    output: str | Path,
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a batch: every contact of ``input_path`` ends in ``output`` or its
    errors/rejects files. Usable inside any running asyncio loop.

    Args:
        input_path: CSV or NDJSON file, or ``-`` for stdin.
        output: ``OUT.ndjson``; side files are named after it.
        settings: the run's settings (API key, target, pacing, ...).
        transport: an httpx transport to send through (e.g. ``httpx.ASGITransport`` in tests);
            by default one is built from the settings and closed at the end.
        handle_signals: stop gracefully on SIGINT/SIGTERM (main thread only; the CLI does).

    Returns:
        The summary also written to ``OUT.summary.json``; ``exit_code`` says how it ended.

    Raises:
        ConfigError, InputError, StateError: before anything was sent.
    """
    if not (settings.agent_oid or settings.experiment_oid):
        raise ConfigError(
            "no target: give --agent ca_... (or OCTAVE_AGENT_OID) or --experiment ae_..."
        )
    if settings.api_key is None and not settings.dry_run:
        raise ConfigError("no API key: set OCTAVE_API_KEY or use --api-key-file PATH")
    paths = OutputPaths.for_output(output)
    if settings.dry_run:
        return _dry_run(input_path, paths, settings)
    paths.results.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock(paths.lock)
    lock.acquire()
    try:
        return await _locked_run(input_path, paths, settings, transport, handle_signals)
    except* OSError as group:  # the output's disk: full, read-only, not a file...
        raise StateError(
            f"cannot use the output files ({_first_leaf(group)}); every result written "
            "before this is safe: fix the cause, then run the same command to resume"
        ) from None
    finally:
        lock.release()


async def _locked_run(
    input_path: str | Path,
    paths: OutputPaths,
    settings: Settings,
    transport: httpx.AsyncBaseTransport | None,
    handle_signals: bool,
) -> dict[str, Any]:
    stats = RunStats()
    unknown = InflightSlots.leftovers(paths.inflight)
    scan = scan_results(paths.results)
    errors_scan = scan_errors(paths.errors, scan.done)
    carried = [rid for rid in unknown if id_key(rid) not in scan.done]
    stats.outcome_unknown = len(carried)
    if scan.bad_lines:
        log_event("corrupt_results", level=logging.WARNING, lines=scan.bad_lines)
    identity = input_identity(input_path)  # before reading: a file changed since is "changed"
    with open_contacts(input_path, settings) as reader:
        expected = _count_lines(Path(input_path) if str(input_path) != "-" else None)
        if reader.format != "csv":
            identity = None  # no cursor is saved for NDJSON (see _resume_cursor)
        fingerprint = _fingerprint(settings)
        start, cursor_note = _resume_cursor(reader, paths, settings, identity, fingerprint)
        run = _Run(
            settings,
            paths,
            reader,
            stats,
            errors_scan,
            scan.done,
            expected,
            line_of=lambda: reader.lines_read,
            start=start,
            identity=identity,
            fingerprint=fingerprint,
        )
        run.carried = carried
        bar = settings.progress if settings.progress is not None else _stderr_is_tty()
        bar = bar and settings.log_format != "json"
        log_event(
            "start",
            run_id=run.run_id,
            input=str(input_path),
            output=str(paths.results),
            already_done=scan.lines,
            repaired_bytes=scan.repaired_bytes,
            outcome_unknown=stats.outcome_unknown,
            skipped_unread=start.counts["read"],
            cursor=cursor_note,
            input_format=reader.format,
            encoding=reader.encoding,
            mapping=reader.mapping.render(),
        )
        async with contextlib.AsyncExitStack() as stack:
            if transport is None:
                transport = make_transport(
                    concurrency=settings.concurrency,
                    transport=settings.transport,
                    base_url=settings.base_url,
                )
                await stack.enter_async_context(transport)
            client = OctaveClient(
                transport,
                base_url=settings.base_url,
                api_key=settings.api_key or SecretStr(""),  # checked by run_batch
                timeout=settings.timeout,
                connect_timeout=settings.connect_timeout,
            )
            await run.execute(client, handle_signals=handle_signals, bar=bar)
    exit_code = _exit_code(run)
    summary = stats.summary(
        tool="octave-bulk",
        run_id=run.run_id,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stats.started)),
        finished_at=utc_now(),
        exit_code=exit_code,
        stop_reason=run.stop_reason,
        fatal_error=run.fatal.message if run.fatal else None,
        input_error=str(run.input_error) if run.input_error else None,
        resumable=exit_code != 0,
        input={
            "path": str(input_path),
            "format": reader.format,
            "encoding": reader.encoding,
            "encoding_note": reader.encoding_note,
            "mapping": reader.mapping.to_dict(),
        },
        outputs={
            "results": str(paths.results),
            "errors": str(paths.errors),
            "rejects": str(paths.rejects),
            "summary": str(paths.summary),
        },
        already_done_before_run=scan.lines,
        resume_cursor={"rows_skipped_unread": start.counts["read"], "note": cursor_note},
        repaired_bytes=scan.repaired_bytes,
        corrupt_result_lines=scan.bad_lines,
        unknown_request_ids=carried[:100],
        settings=settings.redacted(),
    )
    write_json_atomic(paths.summary, summary)
    if settings.metrics_textfile is not None:
        write_metrics(settings.metrics_textfile, summary, output=str(paths.results))
    log_event(
        "stop",
        run_id=run.run_id,
        exit_code=exit_code,
        reason=run.stop_reason or "finished",
        counts=stats.counts(),
        calls=stats.calls,
        credits=stats.credits,
    )
    return summary


def _dry_run(input_path: str | Path, paths: OutputPaths, settings: Settings) -> dict[str, Any]:
    """Read and build every request, print nothing, send nothing, write nothing."""
    stats = RunStats()
    # Read-only: a dry run must not repair (or race) the files of a run that may be going.
    done = scan_results(paths.results, repair=False).done
    errors_scan = scan_errors(paths.errors, done, repair=False)
    example: dict[str, Any] | None = None
    with open_contacts(input_path, settings) as reader:
        run = _Run(settings, paths, reader, stats, errors_scan, done)
        for record in reader:
            item = run._admit(record, 0, None)
            if item is not None and item is not _SKIP:
                stats.queued += 1
                example = example or item.contact
            if settings.limit is not None and stats.queued + stats.skipped_done >= settings.limit:
                break
    return stats.summary(
        dry_run=True,
        would_send=stats.queued,
        example_request=example,
        exit_code=1 if stats.rejected or stats.duplicate else 0,
        settings=settings.redacted(),
    )


def _first_leaf(group: BaseExceptionGroup[OSError]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _stderr_is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
