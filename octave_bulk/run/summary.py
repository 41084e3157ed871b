"""Run counters, and the summary a run returns and writes to ``OUT.summary.json``
(docs/design.md, section "Files").

Counters are plain attributes updated by the run's stages; latencies go into a log-bucket
histogram (1 % resolution, constant memory) so p50/p95 cost nothing per contact. At the end
they become a frozen :class:`RunSummary`.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from octave_bulk.errors import ExitCode, FailOn, StopReason
from octave_bulk.observe.words import counted

__all__ = ["ExitRule", "LatencyHistogram", "RunStats", "RunSummary", "completed_exit"]


class LatencyHistogram:
    """Latencies in buckets growing by 1 % from 1 ms: p50/p95 within 1 %, any number of calls."""

    _BASE = math.log(1.01)

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0

    def add(self, milliseconds: float) -> None:
        """Record one latency."""
        self._buckets[int(math.log(max(milliseconds, 1.0)) / self._BASE)] += 1
        self.count += 1

    def since(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """The latencies added after ``earlier`` (a :meth:`copy` of this one)."""
        added = LatencyHistogram()
        added._buckets = self._buckets - earlier._buckets
        added.count = self.count - earlier.count
        return added

    def copy(self) -> LatencyHistogram:
        """This histogram as it is now."""
        copied = LatencyHistogram()
        copied._buckets, copied.count = self._buckets.copy(), self.count
        return copied

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100) in milliseconds, None without data."""
        if not self.count:
            return None
        rank = q / 100 * self.count
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                return round(math.exp((bucket + 0.5) * self._BASE), 1)
        return None  # pragma: no cover - rank <= count


@dataclass
class RunStats:
    """What one run has done so far; read by progress, heartbeat, summary and metrics."""

    started: float = field(default_factory=time.time)
    read: int = 0
    rejected: int = 0
    duplicate: int = 0
    filtered_out: int = 0
    """Rows ``--where`` leaves out (an earlier run's results): neither sent nor rejected."""
    skipped_done: int = 0
    skipped_failed: int = 0
    queued: int = 0
    succeeded: int = 0
    failed_retryable: int = 0
    failed_permanent: int = 0
    retried: int = 0
    rate_limited: int = 0
    timeouts: int = 0
    calls: int = 0
    calls_sent: int = 0
    calls_answered: int = 0
    abandoned: int = 0
    unsettled: int = 0
    in_flight: int = 0
    retrying: int = 0
    credits: float = 0.0
    usage_anomalies: int = 0
    """Answers whose ``_metadata.usage`` was not a count of credits (``read_usage``)."""
    outcome_unknown: int = 0
    not_sent: int = 0
    submitted: int = 0
    """Async: submits the API accepted in this run (their handles are durable)."""
    awaiting: int = 0
    """Async: jobs submitted (in this run or an earlier one) whose result is not in yet."""
    submit_failed: int = 0
    jobs_given_up: int = 0
    """Async: jobs still pending after ``job_timeout`` (left for the next run to poll)."""
    jobs_lost: int = 0
    """Async: contacts skipped because an earlier run's paid submit has neither an outcome nor
    a line in the jobs file (``--resubmit-expired`` submits them again)."""
    polls: int = 0
    poll_errors: int = 0
    callbacks: int = 0
    """Async: callbacks received on the output's secret path (each a hint to poll its job)."""
    callbacks_refused: int = 0
    """Async: requests to the callback port refused (another path, compressed, too large...)."""
    rejects_by_reason: Counter[str] = field(default_factory=Counter)
    notes_by_code: Counter[str] = field(default_factory=Counter)  # values left out, row sent
    failures_by_kind: Counter[str] = field(default_factory=Counter)
    calls_by_status: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    input_done: bool = False
    input_read: bool = False
    """Every row of the input was read and admitted (its end was reached)."""

    @property
    def failed(self) -> int:
        """Contacts whose attempts in this run ended in failure."""
        return self.failed_retryable + self.failed_permanent

    @property
    def finished(self) -> int:
        """Contacts with a durable outcome in this run."""
        return self.succeeded + self.failed

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.time() - self.started

    def counts(self) -> dict[str, Any]:
        """The counters, as written in the summary and heartbeat."""
        return {
            "read": self.read,
            "rejected": self.rejected,
            "duplicate": self.duplicate,
            "filtered_out": self.filtered_out,
            "skipped_done": self.skipped_done,
            "skipped_failed": self.skipped_failed,
            "queued": self.queued,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failed_retryable": self.failed_retryable,
            "failed_permanent": self.failed_permanent,
            "not_sent": self.not_sent,
            "abandoned_in_flight": self.abandoned,
            "stopped_after_sending": self.unsettled,
            "retried": self.retried,
            "rate_limited_429": self.rate_limited,
            "timeouts": self.timeouts,
            "outcome_unknown": self.outcome_unknown,
        }

    def summary(self, **extra: Any) -> dict[str, Any]:
        """The whole report; ``extra`` adds run identity, settings, paths and the exit code."""
        wall = self.elapsed()
        return {
            **extra,
            "wall_seconds": round(wall, 3),
            "counts": self.counts(),
            # Possibly charged: every call that reached a server (an upper bound: Octave
            # does not say what it bills); attempts refused before that are not.
            "paid_calls": self.calls_sent,
            "calls": {
                "attempted": self.calls,
                "sent": self.calls_sent,
                "answered": self.calls_answered,
                "possibly_charged": self.calls_sent,
                "abandoned_in_flight": self.abandoned,
            },
            "credits": self.credits,
            "usage_anomalies": self.usage_anomalies,
            "input_read_whole": self.input_read,
            "throughput_per_second": round(self.succeeded / wall, 3) if wall > 0 else None,
            "latency_ms": {
                "p50": self.latency.percentile(50),
                "p95": self.latency.percentile(95),
                "p99": self.latency.percentile(99),
            },
            # str(): keys may be enum members, and JSON keys must be plain strings.
            "rejects_by_reason": {str(k): v for k, v in self.rejects_by_reason.items()},
            "notes_by_code": dict(self.notes_by_code),
            "failures_by_kind": {str(k): v for k, v in self.failures_by_kind.items()},
            "calls_by_status": {str(k): v for k, v in self.calls_by_status.items()},
        }


@dataclass(frozen=True)
class RunSummary(Mapping[str, Any]):
    """How a run (or a dry run) ended: typed fields for code, and the whole JSON document
    written to ``OUT.summary.json``, which the summary also reads as (``summary["counts"]``).

    Attributes:
        exit_code: how the run ended.
        stop_reason: why it stopped early, None when it went through its input.
        counts: contacts by outcome.
        paid_calls: calls sent (each may have been charged).
        credits: credits the answers reported.
        document: the JSON document.
    """

    exit_code: ExitCode
    stop_reason: StopReason | None
    counts: Mapping[str, int]
    paid_calls: int
    credits: float
    document: Mapping[str, Any]

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> RunSummary:
        """The summary of a finished document (it must hold ``exit_code`` and ``counts``)."""
        reason = document.get("stop_reason")
        return cls(
            exit_code=ExitCode(document["exit_code"]),
            stop_reason=StopReason(reason) if reason else None,
            counts=document["counts"],
            paid_calls=document.get("paid_calls", 0),
            credits=document.get("credits", 0.0),
            document=document,
        )

    def __getitem__(self, key: str) -> Any:
        return self.document[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.document)

    def __len__(self) -> int:
        return len(self.document)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, as a new dict."""
        return dict(self.document)


@dataclass(frozen=True)
class ExitRule:
    """The exit code of a run that went through its input, and the rule that produced it.

    Attributes:
        code: 0 or 1.
        fail_on: the conditions that fail a night (``--fail-on``), in a stable order.
        reason: why this code, in words (the summary's ``exit_rule``, the end-of-run lines and
            the report header say it).
    """

    code: ExitCode
    fail_on: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """The summary's ``exit_rule``."""
        return {"fail_on": list(self.fail_on) or ["none"], "reason": self.reason}


def completed_exit(stats: RunStats, conditions: frozenset[FailOn]) -> ExitRule:
    """How a run that went through its input ends: 1 when one of ``conditions`` holds, else 0.

    ``failed``: contacts sent in this run failed after their retries, or async jobs were still
    pending at ``job_timeout`` or found lost (a paid submit with no job line); ``rejects``:
    rows rejected or duplicated; ``skipped-failed``: contacts that failed for good in an
    earlier run were skipped. Earlier failures are always
    named in the reason, so a night that does not fail on them still reports them.
    """
    jobs, lost, rows = stats.jobs_given_up, stats.jobs_lost, stats.rejected + stats.duplicate
    found = {
        FailOn.FAILED: [
            (stats.failed, f"{stats.failed:,} failed in this run"),
            (jobs, f"{counted(jobs, 'async job')} still pending at job_timeout"),
            (lost, f"{counted(lost, 'paid async job')} lost (--resubmit-expired sends "
                   f"{'it' if lost == 1 else 'them'} again)"),
        ],
        FailOn.REJECTS: [(rows, counted(rows, "rejected or duplicate row"))],
        FailOn.SKIPPED_FAILED: [
            (stats.skipped_failed, f"{stats.skipped_failed:,} failed for good in an earlier run")
        ],
    }  # fmt: skip
    order = tuple(c for c in FailOn if c in conditions and c is not FailOn.NONE)
    hits = [words for c in order for n, words in found[c] if n]
    rule = "--fail-on " + (",".join(order) or "none")
    if hits:
        return ExitRule(ExitCode.SOME_FAILED, order, f"{rule}: " + "; ".join(hits))
    words = f"{rule}: nothing it names happened"
    earlier = stats.skipped_failed
    if earlier and FailOn.SKIPPED_FAILED not in conditions:
        words += (
            f" ({counted(earlier, 'contact')} failed for good in an earlier run and "
            f"{'was' if earlier == 1 else 'were'} not sent again: --retry-failed sends "
            f"{'it' if earlier == 1 else 'them'})"
        )
    return ExitRule(ExitCode.OK, order, words)
