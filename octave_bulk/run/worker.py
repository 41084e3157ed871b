"""The worker: one work item becomes attempts, and the attempts one outcome.

Contract: :meth:`Worker.run` takes items from the bounded work stream until it ends or the run
stops, and for each writes exactly one outcome to the sink (:class:`Success` or
:class:`Failure`) - or nothing, when the run stopped before the item could be settled or a
fatal answer stopped the run (not this contact's fault: the next run sends it again).

Each attempt passes the limiter, claims an in-flight slot (so a kill -9 knows the call may have
been paid; with the limiter's booking, in one round trip, when both live in one database:
:class:`~octave_bulk.limits.base.ClaimCarrier`), is sent, and reports its answer to the
limiter and to :class:`RunControl`; an attempt that never left (the run stopped while it
waited, a connect failure, a local error) is released to the limiter instead, so that it
counts as nothing (``limits/base.py``). A limiter whose database refuses a statement (a
:class:`StateError`) stops the run (``StopReason.LEDGER``). The first attempt is made
directly: most calls succeed at once, and building tenacity's retry state costs ~18 us per
contact. From the first retryable failure on, tenacity owns every retry decision and wait
(:class:`~octave_bulk.http.retry.wait_full_jitter_or_retry_after`), starting with that failure.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from octave_bulk.errors import (
    NEVER_SENT,
    ApiError,
    ClaimRefused,
    ErrorKind,
    FatalApiError,
    RetryableApiError,
    StateError,
)
from octave_bulk.http.async_api import Receipt
from octave_bulk.http.client import CallSuccess, OctaveClient
from octave_bulk.http.retry import wait_full_jitter_or_retry_after
from octave_bulk.limits.base import ClaimCarrier, Limiter, Ticket
from octave_bulk.observe.log import log_event
from octave_bulk.run.admission import WorkItem
from octave_bulk.run.control import CONTRACT_ERRORS, RunControl, Stopped
from octave_bulk.run.summary import RunStats
from octave_bulk.settings.model import Settings
from octave_bulk.state.jobs import PendingJob
from octave_bulk.state.sink import Attempt, Failure, Sink, Submitted, Success
from octave_bulk.state.store import Claims, RidingClaims

if TYPE_CHECKING:
    from octave_bulk.run.jobs import Jobs

__all__ = ["Worker"]

_Attempted = tuple[CallSuccess | Receipt, int, float]  # (answer, in-flight slot, latency ms)

_ABANDONED = "abandoned"  # the kind of a call cancelled on the wire (never recorded)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.retryable


class Worker:
    """Makes the attempts of one run; shared by all its worker tasks (it holds no per-item
    state).

    Args:
        settings: ``max_attempts`` and the backoff settings are read here.
        stats: counters updated per attempt.
        control: the run's stop state (checked before every attempt, fed every answer).
        client: sends one call.
        limiter: passed before every attempt, told how every attempt ended.
        slots: the in-flight slots file.
        jobs: async mode: each attempt is a submit, and an accepted one becomes a
            :class:`Submitted` outcome (its result comes from :class:`~octave_bulk.run.jobs.
            Jobs`); None in sync mode.
    """

    def __init__(
        self,
        settings: Settings,
        stats: RunStats,
        control: RunControl,
        client: OctaveClient,
        limiter: Limiter,
        slots: Claims,
        jobs: Jobs | None = None,
    ) -> None:
        self.settings, self.stats, self.control = settings, stats, control
        self.client, self.limiter, self.slots, self.jobs = client, limiter, slots, jobs
        self._carrier = limiter if isinstance(limiter, ClaimCarrier) else None
        self._riders = slots if isinstance(slots, RidingClaims) else None
        self._retrying = AsyncRetrying(
            stop=stop_after_attempt(settings.max_attempts),
            wait=wait_full_jitter_or_retry_after(settings.backoff_initial, settings.backoff_max),
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            reraise=True,
        )

    async def run(self, work: MemoryObjectReceiveStream[WorkItem], sink: Sink) -> None:
        """One worker task: process items until the stream ends or the run stops."""
        async with work:
            while (item := await _next_item(work)) is not None:
                if self.control.stopping:
                    break
                try:
                    outcome = await self.process(item)
                except Exception as exc:  # a bug must cost one contact, not the whole run
                    log_event("internal_error", level=logging.ERROR, error=repr(exc)[:300])
                    # Recorded as retryable, so the next run tries this contact again.
                    error = RetryableApiError(
                        f"internal error: {exc!r}"[:300], kind=ErrorKind.INTERNAL
                    )
                    outcome = Failure(
                        item.request_id, item.contact, error, 1, None, person=item.person
                    )
                if outcome is not None:
                    sink.write(outcome)

    async def process(self, item: WorkItem) -> Success | Failure | Submitted | None:
        """All attempts for one item; its outcome, or None when it was not settled."""
        if self.jobs is not None:
            await self.jobs.wait_room()
        attempts = 1
        calls: list[Attempt] = []
        held: list[int] = []  # the slot of a paid call whose answer broke the contract
        try:
            try:
                result, slot, latency = await self._attempt(item, calls, held)
            except ApiError as first:
                if not first.retryable or self.settings.max_attempts < 2:
                    raise
                replay: list[ApiError] = [first]

                async def attempt() -> _Attempted:
                    nonlocal attempts
                    if replay:  # tenacity sees the first failure as its own first attempt
                        raise replay.pop()
                    attempts += 1
                    self.stats.retried += 1
                    return await self._attempt(item, calls, held)

                result, slot, latency = await self._retrying.copy()(attempt)
        except (Stopped, FatalApiError):
            if any(call[3] not in NEVER_SENT for call in calls):
                self.stats.unsettled += 1  # sent, answered with errors, then stopped: unknown
            return None  # not this contact's fault: the next run sends it again
        except ApiError as exc:  # its slot, if held, is released once its line is durable
            kept = held[0] if held else None
            return Failure(
                item.request_id, item.contact, exc, attempts, kept, tuple(calls), person=item.person
            )
        except BaseException as exc:  # cancelled (a second signal, the drain deadline)?
            cancelled = not isinstance(exc, Exception)  # a bug is run()'s: an internal failure
            if cancelled and calls and calls[-1][3] != _ABANDONED:  # between two attempts
                self.stats.unsettled += 1
            raise
        if isinstance(result, Receipt):
            job = PendingJob(item.request_id, result.handle, item.contact, time.time())
            return Submitted(job, attempts, slot, tuple(calls), item.person)
        self.stats.latency.add(latency)
        return Success(
            request_id=item.request_id,
            contact=item.contact,
            raw=result.raw,
            credits=result.credits,
            attempts=attempts,
            latency_ms=round(latency),
            slot=slot,
            calls=tuple(calls),
            usage_anomaly=result.usage_anomaly,
            person=item.person,
        )

    async def _sleep(self, seconds: float) -> None:
        self.stats.retrying += 1
        try:
            await self.control.sleep(seconds)
        finally:
            self.stats.retrying -= 1

    async def _attempt(self, item: WorkItem, calls: list[Attempt], held: list[int]) -> _Attempted:
        control, limiter, stats = self.control, self.limiter, self.stats
        if not control.may_send():  # checked before waiting for the limiter...
            raise Stopped
        try:
            if self._carrier is None or self._riders is None:
                ticket, rider = await limiter.acquire(), None
            else:  # the claim goes with the limiter's booking (one round trip for both)
                rider = self._riders.rider(item.request_id)
                ticket = await self._carrier.acquire_carrying(rider)
        except StateError as exc:  # a limiter's database refused it: no wait mends that
            control.ledger_failed(exc)
            raise Stopped from None
        if not control.may_send() or (  # ... and after: others may have stopped the run
            (control.budget is not None or control.credits is not None)
            and not await control.may_pay()
        ):
            await limiter.release(ticket)  # never sent: its place goes back
            raise Stopped
        try:
            slot = await (self.slots.claim(item.request_id) if rider is None else rider.claim())
        except ClaimRefused:  # another worker holds or settled it (a shared ledger): not ours
            await limiter.release(ticket)
            raise Stopped from None
        stats.calls += 1
        stats.in_flight += 1
        started, sent_at = time.perf_counter(), time.time()
        try:
            if self.jobs is None:
                result: CallSuccess | Receipt = await self.client.run(item.body, item.request_id)
            else:
                result = await self.client.submit(item.body, item.request_id)
        except ApiError as exc:
            calls.append((sent_at, time.time(), exc.status, exc.kind))
            if exc.kind in CONTRACT_ERRORS:  # accepted, so paid: its slot stays until the
                held.append(slot)  # failure is durable (a kill before: outcome unknown)
            else:  # an error answer: nothing was delivered that we could lose
                self.slots.release(slot)
            if exc.status is not None:
                stats.calls_answered += 1
            if exc.kind not in NEVER_SENT:
                stats.calls_sent += 1
            await self._count_error(exc, ticket)
            raise
        except Exception:
            await limiter.release(ticket)  # a bug, before anything was answered: not sent
            raise
        except BaseException:
            # A cancellation (a second signal, the drain deadline): the call was on the wire and
            # may be paid; its slot stays, so the next run reports it as outcome unknown.
            stats.abandoned += 1
            stats.calls_sent += 1
            calls.append((sent_at, time.time(), None, _ABANDONED))
            with anyio.CancelScope(shield=True):  # (it left: it counts as sent)
                await limiter.on_answer(ticket)
            raise
        finally:
            stats.in_flight -= 1
        stats.calls_sent += 1
        stats.calls_answered += 1
        calls.append((sent_at, time.time(), 200, "success" if self.jobs is None else "submitted"))
        stats.calls_by_status["200"] += 1
        await limiter.on_answer(ticket)
        control.on_success()
        return result, slot, (time.perf_counter() - started) * 1000

    async def _count_error(self, exc: ApiError, ticket: Ticket) -> None:
        stats = self.stats
        stats.calls_by_status[str(exc.status) if exc.status else exc.kind] += 1
        if exc.status == 429:
            stats.rate_limited += 1
            self.control.on_refused(exc.retry_after)
            asked = exc.retry_after
            pause = await self.limiter.on_429(
                ticket, None if asked is None else self.control.refusal_wait(asked), exc.hints
            )
            found = self.limiter.report()
            log_event(
                "rate_limited",
                retry_after_s=exc.retry_after,
                pool_pause_s=round(pause, 2),
                rate=found.rate and round(found.rate, 3),
                window=found.window,
            )
            return
        if exc.kind in NEVER_SENT:  # it never left (connect, local): nothing to count
            await self.limiter.release(ticket)
        else:
            await self.limiter.on_answer(ticket)
        if exc.kind == ErrorKind.TIMEOUT:
            stats.timeouts += 1
        self.control.on_error(exc)


# anyio's send()/receive() always yield to the event loop first (a checkpoint), even when an
# item or a free slot is ready. With 64 workers that forced extra loop iterations costing
# ~30-70 us of CPU per contact (measured against an instant server); the *_nowait fast path
# keeps the bounded stream and its backpressure and only awaits when it has to wait anyway.


async def _next_item(stream: MemoryObjectReceiveStream[WorkItem]) -> WorkItem | None:
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
