"""The poller: submitted async jobs become outcomes.

Contract: :meth:`Jobs.add` takes a job whose handle is durable (``OUT.jobs.ndjson``, written
by the sink's group commit); :meth:`Jobs.run` polls due jobs until every job is settled and
:meth:`Jobs.close` said no more will come, and writes each job's outcome to the sink exactly
once, from a poll's answer (:meth:`Jobs.complete`; a duplicate is ignored). A callback is
never an outcome: it is a hint (:meth:`Jobs.hint`) that brings the job's next poll forward.

When a job is polled, how polls are budgeted and when a job still pending is given up on:
:mod:`octave_bulk.run.poll_timing`. Polls pass their own limiter (not the submit's), at most
``poll_concurrency`` are in flight, the oldest due job goes first. A hint (a callback naming
the job) makes its next poll due soon through the same limiter, budget and deadlines; a hint
for a job not added yet (its submit not durable yet) is kept (the latest ``_EARLY_HINTS``) and
applies when it is added.

:meth:`Jobs.give_up_at` (the oldest awaited job's give-up time) is shown by the heartbeats and
the progress line. A poll's answer:
``done`` -> a success (or ``not_found`` when the agent produced nothing); ``failed`` -> a
retryable ``agent_error`` (the next run submits the contact again); a handle the API does not
know (404) -> polled again, and ``expired`` (retryable only with ``resubmit_expired``) only
after :data:`~octave_bulk.run.poll_timing.UNKNOWN_POLLS` such answers in a row once the job is
``expire_after`` seconds old and older than the median job time; a result over
``max_response_bytes`` -> ``response_too_large``; an error status -> polled again later (a
401/403 stops the run, as any fatal answer; the submits' breaker does not count polls: a
status endpoint that keeps failing is bounded by ``job_timeout``). A stop by signal or a fatal
answer ends polling at once: every job left is in ``OUT.jobs.ndjson`` and the next run polls it
(nothing is paid again). Other stops (``max_calls``, the budget, the breaker) keep polling the
jobs already paid for until the drain deadline.

Jobs are keyed by (handle, requestId): a server that gives one handle to two live jobs (a
contract error, logged as ``handle_repeated``) loses neither; both are kept and polled, and
since the handle's answer cannot be told apart, each fails for good as ``handle_repeated``
(paid: ``--retry-failed`` pays for it again on purpose).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable

import anyio

from octave_bulk.errors import (
    NEVER_SENT,
    ApiError,
    ErrorKind,
    FatalApiError,
    RetryableApiError,
    StateError,
    TerminalApiError,
)
from octave_bulk.http.async_api import JobAnswer, JobState
from octave_bulk.http.client import OctaveClient
from octave_bulk.limits.base import Limiter, Ticket
from octave_bulk.observe.log import log_event
from octave_bulk.run.control import RunControl
from octave_bulk.run.poll_timing import JobKey, LiveJob, PollTiming
from octave_bulk.run.summary import RunStats
from octave_bulk.settings.model import Settings
from octave_bulk.state.jobs import PendingJob
from octave_bulk.state.sink import Failure, Success

__all__ = ["Jobs"]

_EARLY_HINTS = 4096  # hints kept for jobs not added yet (their handle not durable yet)


class Jobs:
    """The jobs awaiting their result, and the tasks that poll them.

    Args:
        settings: the poll settings (``poll_*``, ``max_pending``, ``resubmit_expired``).
        stats: counters (``awaiting``, ``polls``, ``poll_errors``).
        control: the run's stop state.
        client: polls one job (:meth:`OctaveClient.poll`).
        limiter: paces the polls (not the submits).
        write: hands an outcome to the sink.
    """

    def __init__(
        self,
        settings: Settings,
        stats: RunStats,
        control: RunControl,
        client: OctaveClient,
        limiter: Limiter,
        write: Callable[[Success | Failure], None],
    ) -> None:
        self.settings, self.stats, self.control = settings, stats, control
        self.client, self.limiter, self._write = client, limiter, write
        self._live: dict[JobKey, LiveJob] = {}
        self._by_handle: dict[str, list[JobKey]] = {}
        self._due: list[tuple[float, int, JobKey]] = []
        self._order = itertools.count()
        self._timing = PollTiming(settings)
        self._wake = anyio.Event()
        self._room = anyio.Event()
        self._open = True
        self._early: dict[str, bool] = {}  # hints for handles not added yet, oldest first

    def add(self, job: PendingJob) -> None:
        """A job whose handle is durable: poll it until it ends (a handle another live job
        has is a contract error: both are kept, see the module docstring). With ``detach``
        it is only counted: ``collect`` polls it."""
        if self.settings.detach:  # never polled in this run: counted, not kept
            self.stats.awaiting += 1
            return
        key = (job.handle, job.request_id)
        if key in self._live:
            return
        sharing = self._by_handle.setdefault(job.handle, [])
        if sharing:
            log_event(
                "handle_repeated",
                level=logging.WARNING,
                handle=job.handle,
                request_ids=[rid for _, rid in sharing] + [job.request_id],
                note="the API gave one job handle to several live jobs (a contract error)",
            )
        sharing.append(key)
        submitted = time.monotonic() - max(0.0, time.time() - job.submitted_at)
        self._live[key] = live = LiveJob(job, submitted)
        live.hinted = self._early.pop(job.handle, False)
        self.stats.awaiting = len(self._live)
        self._schedule(live, time.monotonic())

    def hint(self, handle: str) -> None:
        """A callback named this job: poll it soon (see the module docstring). Never an
        outcome: the poll's answer is."""
        lives = self._lives(handle)
        if not lives:
            if self._open:  # its submit may not be durable yet
                self._early[handle] = True
                if len(self._early) > _EARLY_HINTS:
                    del self._early[next(iter(self._early))]
            return
        for live in lives:  # more than one: the API repeated the handle
            live.hinted = True
            if not live.polling:
                now = time.monotonic()
                due = max(now, self._timing.hinted_due(live))
                if due < live.due:
                    self._push(live, due)

    def awaits(self, handle: str) -> bool:
        """Whether a job with this handle is awaited in this run."""
        return bool(self._by_handle.get(handle))

    def close(self) -> None:
        """No more jobs will be added: :meth:`run` returns once the last one is settled."""
        self._open = False
        self._nudge()

    def timeout(self) -> float:
        """Seconds after its submit that a job is given up on in this run
        (:meth:`~octave_bulk.run.poll_timing.PollTiming.timeout`)."""
        return self._timing.timeout()

    def give_up_at(self) -> float | None:
        """UNIX time at which the oldest awaited job is given up on (None: none awaited)."""
        if not self._live:
            return None
        oldest = min(live.submitted for live in self._live.values())
        now = time.time()  # an earlier run's job past the bound: at its next poll
        return max(now, now - (time.monotonic() - oldest) + self.timeout())

    async def wait_room(self) -> None:
        """Return once fewer than ``max_pending`` jobs await their result (or on a stop; at
        once with ``detach``: no job ends in this run)."""
        if self.settings.detach:
            return
        while len(self._live) >= self.settings.max_pending and not self.control.stopping:
            room = self._room
            with anyio.move_on_after(1.0):  # a stop does not set this event
                await room.wait()

    def _lives(self, handle: str) -> list[LiveJob]:
        """The live jobs with this handle (more than one: the API repeated it)."""
        return [self._live[key] for key in self._by_handle.get(handle, ())]

    def complete(self, handle: str, answer: JobAnswer) -> bool:
        """A job's answer (from a poll or a callback): an outcome once it has ended. Returns
        whether a job was live and has ended now (False for a duplicate or a pending job)."""
        lives = self._lives(handle)
        if not lives or answer.state is JobState.PENDING:
            return False
        if len(lives) > 1:  # whose answer this is cannot be told
            for each in lives:
                self._repeated(each, len(lives))
            return True
        live = lives[0]
        self._drop(live)
        job, age = live.job, time.monotonic() - live.submitted
        if answer.state is JobState.DONE and answer.nothing is None:
            if self._timing.ended(live, age):
                self._replan()
            outcome: Success | Failure = Success(
                request_id=job.request_id,
                contact=job.contact,
                raw=answer.raw,
                credits=answer.credits,
                attempts=1,
                latency_ms=round(age * 1000),
                slot=None,
                handle=handle,
                usage_anomaly=answer.usage_anomaly,
            )
            self.stats.latency.add(age * 1000)
        else:
            error = _failure(answer, self.settings)
            outcome = Failure(job.request_id, job.contact, error, 1, None, (), handle)
            if answer.state is JobState.EXPIRED:
                log_event("job_expired", level=logging.WARNING, request_id=job.request_id)
        self._write(outcome)
        return True

    async def run(self) -> None:
        """Poll until every job is settled and no more will come (or the run stops)."""
        async with anyio.create_task_group() as outer:
            outer.start_soon(self._end_on_stop, outer.cancel_scope)
            async with anyio.create_task_group() as polls:
                for _ in range(self.settings.poll_concurrency):
                    polls.start_soon(self._poll_loop)
            outer.cancel_scope.cancel()
        if self._live:
            log_event("jobs_left", awaiting=len(self._live), note="the next run polls them")

    async def _end_on_stop(self, scope: anyio.CancelScope) -> None:
        """Cancel the polls once the run stops by signal or fatal answer (polls in flight
        cost nothing; every job left is durable)."""
        await self.control.halted.wait()
        self.limiter.stop()
        scope.cancel()

    async def _poll_loop(self) -> None:
        while (live := await self._next_due()) is not None:
            if live.polls and self._timing.past_bound(live):
                self._give_up(live)  # a poll found it pending past the bound
                continue
            live.polling = True
            try:
                await self._poll(live)
            finally:
                live.polling = False

    async def _poll(self, live: LiveJob) -> None:
        """Poll one due job (through the poll budget and the limiter) and act on the answer."""
        await self._timing.spend(len(self._live))
        try:
            ticket = await self.limiter.acquire()
        except StateError as exc:  # a limiter's database refused it: the run stops
            self.control.ledger_failed(exc)
            return
        if self._polling_over():
            await self.limiter.release(ticket)  # never sent
            return
        live.hinted = False  # a hint from now on needs a poll after this one
        try:
            answer = await self.client.poll(live.job.handle)
            if answer.state is not JobState.EXPIRED:
                live.unknown = 0
            elif not self._timing.expired(live):
                answer = JobAnswer(JobState.PENDING)  # not known yet: polled again
        except ApiError as exc:
            await self._poll_failed(live, exc, ticket)
            return
        except BaseException:
            with anyio.CancelScope(shield=True):  # (it may have left: counted as sent)
                await self.limiter.on_answer(ticket)
            raise
        await self.limiter.on_answer(ticket)
        self.stats.polls += 1
        live.polls += 1
        if not self.complete(live.job.handle, answer) and live.key in self._live:
            now = time.monotonic()
            live.pending_age = now - live.submitted
            self._schedule(live, now)

    async def _poll_failed(self, live: LiveJob, exc: ApiError, ticket: Ticket) -> None:
        self.stats.poll_errors += 1
        live.polls += 1
        if exc.status == 429:
            pause = await self.limiter.on_429(ticket, exc.retry_after, exc.hints)
            self._schedule(live, time.monotonic() + max(pause, exc.retry_after or 0.0))
            return
        if exc.kind in NEVER_SENT:  # it never left: released, not answered
            await self.limiter.release(ticket)
        else:
            await self.limiter.on_answer(ticket)
        if isinstance(exc, FatalApiError):
            self.control.on_error(exc)  # the key or the endpoint: stop the run
            return
        if exc.kind == ErrorKind.RESPONSE_TOO_LARGE:  # its result will never fit: it fails
            self._drop(live)
            job = live.job
            self._write(Failure(job.request_id, job.contact, exc, 1, None, (), job.handle))
            return
        log_event("poll_failed", level=logging.DEBUG, kind=exc.kind, status=exc.status)
        self._schedule(live, time.monotonic())

    def _repeated(self, live: LiveJob, sharing: int) -> None:
        """A job whose handle another live job has: its answer cannot be told apart."""
        self._drop(live)
        job = live.job
        error = TerminalApiError(
            f"the API gave job handle {job.handle} to {sharing} contacts at once (a contract "
            "error): whose answer it holds cannot be told, so it is not stored; the submit "
            "was paid: to pay for this contact again, run with --retry-failed",
            kind=ErrorKind.HANDLE_REPEATED,
            status=200,
        )
        self._write(Failure(job.request_id, job.contact, error, 1, None, (), job.handle))

    def _drop(self, live: LiveJob) -> None:
        """No longer awaited: room for another submit."""
        key = live.key
        del self._live[key]
        sharing = self._by_handle[key[0]]
        sharing.remove(key)
        if not sharing:
            del self._by_handle[key[0]]
        self.stats.awaiting = len(self._live)
        self._room.set()
        self._room = anyio.Event()
        self._nudge()

    def _give_up(self, live: LiveJob) -> None:
        """A job pending longer than ``job_timeout``: no longer polled in this run (its
        handle stays recorded: the next run polls it again; nothing is paid again)."""
        self._drop(live)
        self.stats.jobs_given_up += 1
        log_event(
            "job_still_pending",
            level=logging.WARNING,
            request_id=live.job.request_id,
            after_s=round(time.monotonic() - live.submitted),
        )

    def _polling_over(self) -> bool:
        return self.control.halted.is_set()

    def _replan(self) -> None:
        """The typical job time is known now: a job polled blind whose next poll comes later
        than that is brought forward."""
        now = time.monotonic()
        first = self._timing.typical()
        for live in self._live.values():
            due = max(now, live.submitted + first)
            if live.due > due:
                self._push(live, due)

    def _schedule(self, live: LiveJob, now: float) -> None:
        self._push(live, self._timing.due(live, now))

    def _push(self, live: LiveJob, due: float) -> None:
        live.due = due
        heapq.heappush(self._due, (due, next(self._order), live.key))
        self._nudge()

    def _nudge(self) -> None:
        self._wake.set()
        self._wake = anyio.Event()

    async def _next_due(self) -> LiveJob | None:
        """The next job to poll, when it is due; None when polling is over."""
        while True:
            if self._polling_over() or (not self._open and not self._live):
                return None
            wait = float("inf")
            while self._due:
                due, _, key = self._due[0]
                live = self._live.get(key)
                if live is None or live.due != due:  # settled meanwhile, or planned again
                    heapq.heappop(self._due)
                    continue
                wait = due - time.monotonic()
                if wait <= 0:
                    heapq.heappop(self._due)
                    return live
                break
            wake = self._wake
            with anyio.move_on_after(wait):
                await wake.wait()


def _failure(answer: JobAnswer, settings: Settings) -> ApiError:
    """The error a job that ended without a result stands for."""
    if answer.state is JobState.DONE:  # the agent produced nothing
        return TerminalApiError(answer.nothing or "nothing produced", kind=ErrorKind.NOT_FOUND)
    if answer.state is JobState.EXPIRED:
        message = (answer.error or "job handle unknown") + (
            "; submitted again by the next run"
            if settings.resubmit_expired
            else "; run with --resubmit-expired to submit it again"
        )
        kind = ErrorKind.EXPIRED
        if settings.resubmit_expired:
            return RetryableApiError(message, kind=kind, status=404)
        return TerminalApiError(message, kind=kind, status=404)
    return RetryableApiError(answer.error or "the job failed", kind=ErrorKind.AGENT_ERROR)
