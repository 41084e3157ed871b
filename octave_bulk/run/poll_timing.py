"""When each submitted job is polled, and when it is given up on: the job times seen, the
poll budget, the give-up bound.

Contract: :class:`PollTiming` keeps the durations of the jobs that ended and answers, for a
:class:`LiveJob`, when its next poll is due (:meth:`PollTiming.due`), whether a 404 means its
handle is gone (:meth:`PollTiming.expired`) and whether it is past its bound
(:meth:`PollTiming.past_bound`); :meth:`PollTiming.spend` waits for the poll budget. It sends
nothing and writes nothing: :class:`~octave_bulk.run.jobs.Jobs` polls and records.

When a job is polled: first at the median duration of the latest 32 jobs that finished (each
counted halfway from its last poll that found it pending to the one that found it done; before
three have finished, ``poll_interval_min`` after its submit), then every ``5 %`` of its age
(``100 %`` while no duration is known; once one is, those polls are brought forward), within
``[poll_interval_min, poll_interval_max]``: a 40-s job is seen about 1 s after its end, after
two or three polls (sigma 0.1; measured in benchmarks/bench_async.py). Polls pass their own
limiter (the status endpoint's limits are not the submit's: ``poll_rate`` caps it, its 429s
slow it), at most ``poll_concurrency`` are in flight, and a budget follows the rate jobs end at
(:meth:`PollTiming.spend`: a server queue would otherwise multiply the polls), so polling never
takes the submit's pace. The oldest due job goes first. A hint (a callback naming the job)
makes its next poll due at once - or ``HINT_GAP`` (1 s) after its last one, so that hints
cannot multiply the polls - through the same limiter, budget and deadlines.

A job a poll finds still pending :meth:`PollTiming.timeout` seconds after its submit is no
longer polled by this run (it stays recorded; the run ends with exit 1 and the next run polls
it). Every job is polled at least once: an earlier run's job older than the bound may well be
done (a ``collect`` the morning after a ``--detach``). That bound is ``job_timeout`` when it is
set; by default it is derived from the job times seen: ``_TIMEOUT_FACTOR`` (3) x the slowest of
the latest 32 jobs that finished, never below ``job_timeout_floor`` (10 min: a slow start, or a
server queue that builds up, is not given up on early), and ``_UNKNOWN_TIMEOUT`` (1 h) while
fewer than three jobs have finished in this run (nothing to derive from; an earlier run's job
found done at its first poll tells its wait, not its time, and is not counted). A ``collect``
times none of its jobs so: once three earlier jobs were found done, an earlier job still
pending is waited for ``job_timeout_floor`` of the run, then given up on (a hung job must not
hold a collect for the hour). Why the slowest x 3 rather than a multiple of the median: the
latest 32 follow a queue as it builds, the slowest of them covers the tail of a spread-out job
time that a median hides, and x 3 leaves room for the queue to grow further; a job 3 x slower
than every recent one is hung rather than slow (docs/design.md, "Submit and poll").

A handle the API does not know (404) is ``expired`` only after :data:`UNKNOWN_POLLS` such
answers in a row once the job is ``expire_after`` seconds old and older than the median job
time (a status store may lag behind the submit).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from dataclasses import dataclass

import anyio

from octave_bulk.observe.log import log_event
from octave_bulk.settings.model import Settings
from octave_bulk.state.jobs import PendingJob

__all__ = ["HINT_GAP", "UNKNOWN_POLLS", "JobKey", "LiveJob", "PollTiming"]

_AGE_SHARE, _BLIND_AGE_SHARE = 0.05, 1.0
_DONE_AT_FIRST = 0.9  # a job done at its first poll ended before it: counted a little earlier
_KNOWN_AFTER = 3  # finished jobs before their median is trusted
_RECENT = 32  # the median follows the latest jobs (a server queue makes them grow)
_POLLS_PER_END = 8.0  # the poll budget: this many polls per job that ended lately ...
_TIMEOUT_FACTOR = 3.0  # the derived job_timeout: this many times the slowest recent job ...
_UNKNOWN_TIMEOUT = 3600.0  # ... and this while too few jobs have finished to derive it
UNKNOWN_POLLS = 3
"""404s in a row (a later answer resets the count) before an old enough job is expired."""
HINT_GAP = 1.0
"""A hinted job is polled at once, or this long after its last poll."""

JobKey = tuple[str, str]
"""A job's key: (handle, requestId)."""


@dataclass(slots=True)
class LiveJob:
    """A job awaiting its result in this run, with its polling state."""

    job: PendingJob
    submitted: float
    """The submit's answer on this process's monotonic clock."""
    polls: int = 0
    due: float = 0.0
    """When its next poll is due (an older entry of the heap for it is skipped)."""
    pending_age: float | None = None
    """Its age at the last poll that found it still pending."""
    unknown: int = 0
    """404s in a row: the status endpoint does not know its handle (yet, or any more)."""

    @property
    def key(self) -> JobKey:
        """(handle, requestId)."""
        return self.job.handle, self.job.request_id

    polling: bool = False
    """Its poll is on its way (waiting for the limiter, or sent)."""
    hinted: bool = False
    """A callback named it since its last poll was sent: its next poll comes soon."""


class PollTiming:
    """The job times seen in this run and what they decide (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._durations: deque[float] = deque(maxlen=_RECENT)
        self._timed: deque[float] = deque(maxlen=_RECENT)  # job times for the derived bound
        self._started = time.time()  # a job submitted before is an earlier run's
        self._started_clock = time.monotonic()
        self._earlier_done = 0  # earlier runs' jobs this run found done (a collect's)
        self._ends: deque[float] = deque()  # when recent jobs ended (for the poll budget)
        self._next_poll = 0.0

    def ended(self, live: LiveJob, age: float) -> bool:
        """A job found done at ``age`` seconds: count its time. Returns whether the typical
        job time has just become known (the jobs polled blind are then brought forward)."""
        # It ended between its last poll that found it pending and this one (the middle,
        # not the age seen: that would only ever push the first poll later).
        pending = live.pending_age
        took = (pending + age) / 2 if pending is not None else age * _DONE_AT_FIRST
        self._durations.append(took)
        if pending is not None or live.job.submitted_at >= self._started:
            self._timed.append(took)  # not an earlier run's job found done: its wait
        else:
            self._earlier_done += 1
        self._ends.append(time.monotonic())
        return len(self._durations) == _KNOWN_AFTER

    def typical(self) -> float:
        """The median of the latest job times (call once they are known)."""
        return statistics.median(self._durations)

    def timeout(self) -> float:
        """Seconds after its submit that a job is given up on in this run (the module
        docstring: ``job_timeout``, or derived from the latest job times)."""
        settings = self.settings
        if settings.job_timeout is not None:
            return settings.job_timeout
        if len(self._timed) < _KNOWN_AFTER:
            return max(settings.job_timeout_floor, _UNKNOWN_TIMEOUT)
        return max(settings.job_timeout_floor, _TIMEOUT_FACTOR * max(self._timed))

    def past_bound(self, live: LiveJob) -> bool:
        """Whether a job a poll found pending is past its bound: :meth:`timeout` after its
        submit; or, for an earlier run's job when this run could time none of its own (a
        ``collect``), once earlier jobs were found done and the straggler has been waited for
        ``job_timeout_floor`` in this run (their waits tell nothing of their times)."""
        now = time.monotonic()
        if now - live.submitted > self.timeout():
            return True
        settings = self.settings
        return (
            settings.job_timeout is None
            and len(self._timed) < _KNOWN_AFTER
            and self._earlier_done >= _KNOWN_AFTER
            and live.job.submitted_at < self._started
            and now - self._started_clock > settings.job_timeout_floor
        )

    async def spend(self, awaiting: int) -> None:
        """Wait for the poll budget: once jobs have ended for half of ``poll_interval_max``,
        polls follow the rate they end at (``_POLLS_PER_END`` per job ended over the last
        ``poll_interval_max``), and never less than one poll per job awaited per
        ``poll_interval_max``; a server queue then cannot multiply the polls (a job waiting
        there is not polled every few seconds)."""
        now, settings, ends = time.monotonic(), self.settings, self._ends
        while ends and ends[0] < now - settings.poll_interval_max:
            ends.popleft()
        if not ends or now - ends[0] < settings.poll_interval_max / 2:
            return  # too few ends to tell their rate: the limiter alone paces the polls
        span = now - ends[0]
        budget = max(_POLLS_PER_END * len(ends) / span, awaiting / settings.poll_interval_max)
        start = max(now, self._next_poll)
        self._next_poll = start + 1 / budget
        if start > now:
            await anyio.sleep(start - now)

    def expired(self, live: LiveJob) -> bool:
        """Whether a 404 means the handle is gone: only after :data:`UNKNOWN_POLLS` in a row,
        once the job is ``expire_after`` seconds old and older than the median job time (a
        status store that lags behind the submit answers 404 at first)."""
        live.unknown += 1
        age = time.monotonic() - live.submitted
        typical = statistics.median(self._durations) if self._durations else 0.0
        old = age >= max(self.settings.expire_after, typical)
        if live.unknown == 1 or old:
            log_event(
                "job_unknown",
                level=logging.DEBUG,
                request_id=live.job.request_id,
                times=live.unknown,
                age_s=round(age, 1),
            )
        return live.unknown >= UNKNOWN_POLLS and old

    def due(self, live: LiveJob, now: float) -> float:
        """When the job's next poll is due (never before ``now``)."""
        settings, age = self.settings, now - live.submitted
        lowest, highest = settings.poll_interval_min, settings.poll_interval_max
        known = len(self._durations) >= _KNOWN_AFTER
        typical = statistics.median(self._durations) if known else None
        if live.polls == 0:  # a job of an earlier run is old already: polled at once
            first = typical if typical is not None else lowest
            due = live.submitted + first
        else:
            share = _AGE_SHARE if typical is not None else _BLIND_AGE_SHARE
            due = now + min(highest, max(lowest, age * share))
        if live.hinted:
            due = min(due, self.hinted_due(live))
        return max(due, now)

    def hinted_due(self, live: LiveJob) -> float:
        """The soonest a hinted job is polled: ``HINT_GAP`` after its last poll."""
        if live.pending_age is None:
            return live.submitted
        return live.submitted + live.pending_age + HINT_GAP
