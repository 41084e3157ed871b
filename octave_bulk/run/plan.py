"""The forecast before paying: how many contacts a run would send, what they cost, how long.

Contract: :func:`make_plan` reads the input exactly as the run would (the dry run,
``dry.py``: rejects, duplicates, people already done, people failed for good before, the
ledger), asks the API - not paid - for the agent's ``costToRun`` (``GET /api/v2/agents/get``)
and the credits remaining (``GET /api/v2/api-key/validate``), and returns a :class:`Plan`:
the counts, the credits needed against those remaining, and the time as a range. The time
follows Little's law - waves of ``window`` calls each taking the latency, or the sends paced
by the rate, plus the last call's latency - from the output's remembered limits
(``OUT.limits.json``) and the latency of its earlier calls (the ledger's ``calls``, p50 to
p90) when there are any, else from the settings (``--rate``, ``--concurrency``) and the 30-60 s
a call Octave's agents are known to take (docs/octave-api.md, "Latency and timeouts"). What
the API does not say (no key, an experiment, a failed lookup) is left unknown, with the reason.

With ``--mode async`` a contact costs a submit (an accept answer, not the agent's work) and a
job the server runs in parallel: the time is the submits - paced by the rate, or by waves of
``window`` submits each taking the submit latency (the ledger's earlier submits, else the
``KNOWN_SUBMIT_S`` assumed) - plus one job's time (``latencyMs`` of the output's latest async
results, p50 to p90, else the 30-60 s of a call). The jobs the output already awaits
(``OUT.jobs.ndjson``) are counted apart (``awaiting``): a run polls them and never pays again.

The credits asked of the API and the run's credit check are ``credits.py``'s.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.errors import ConfigError
from octave_bulk.http.client import OctaveClient, open_client
from octave_bulk.limits.factory import start_limits
from octave_bulk.observe.words import counted
from octave_bulk.run.credits import Credits, agent_credits, number_in
from octave_bulk.run.dry import PaidContact, dry_plan, shared_view
from octave_bulk.settings.model import Settings
from octave_bulk.state.history import RunHistory
from octave_bulk.state.index import OutputIndex
from octave_bulk.state.limits import RememberedLimits, limits_key
from octave_bulk.state.paths import OutputPaths

__all__ = [
    "KNOWN_LATENCY_S",
    "KNOWN_SUBMIT_S",
    "Plan",
    "estimate_seconds",
    "make_plan",
    "plan_with_client",
]

KNOWN_LATENCY_S = (30.0, 60.0)
"""Seconds a call takes, assumed when the output has no latency history of its own."""

KNOWN_SUBMIT_S = (0.2, 1.0)
"""Seconds an async submit takes to be accepted, assumed without a history of submits."""

_HISTORY_CALLS = 10_000  # the most recent successful calls whose latency is used
_JOB_TAIL_BYTES = 4 << 20  # the end of the results file read for the latest async job times


@dataclass(frozen=True)
class Plan:
    """What a run of an input on an output would do (see the module docstring)."""

    counts: dict[str, int]
    """Rows read, rejected, duplicate, already done (skipped), failed for good (skipped), left
    out by ``--where``."""
    to_send: int
    paid_again: int
    """People already done whose content changed: part of ``to_send``, paid a second time."""
    cost_per_contact: float | None
    credits_remaining: float | None
    credits_note: str | None
    """Why the credits are unknown, when they are."""
    seconds: tuple[float, float]
    time_basis: str
    awaiting: int = 0
    """Async jobs the output awaits: polled by the run, never paid again (not in ``to_send``)."""
    contacts: tuple[PaidContact, ...] | None = None
    """With ``listing``: every contact to send, and why it would be paid (``plan --list``)."""

    @property
    def credits_needed(self) -> float | None:
        """Credits the contacts to send would cost (None when the cost is unknown)."""
        return None if self.cost_per_contact is None else self.to_send * self.cost_per_contact

    @property
    def overdraft(self) -> bool:
        """Whether the run would cost more than the credits remaining."""
        needed, remaining = self.credits_needed, self.credits_remaining
        return needed is not None and remaining is not None and needed > remaining

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (``contacts`` only when listed)."""
        data = asdict(replace(self, contacts=None)) | {
            "credits_needed": self.credits_needed,
            "overdraft": self.overdraft,
        }
        data.pop("contacts")
        if self.contacts is not None:
            data["contacts"] = [contact.to_dict() for contact in self.contacts]
        return data

    def lines(self) -> list[str]:
        """The plan in words, one line each."""
        c = self.counts
        lines = [
            f"rows read {c['read']:,}: rejected {c['rejected']:,}, duplicates {c['duplicate']:,}, "
            f"already done {c['skipped_done']:,}, failed for good before {c['skipped_failed']:,}"
            + (f", left out by --where {c['filtered_out']:,}" if c.get("filtered_out") else ""),
            f"to send: {counted(self.to_send, 'contact')}"
            + (f" ({self.paid_again:,} already done, content changed)" if self.paid_again else ""),
        ]
        if self.awaiting:
            lines.append(
                f"awaited: {self.awaiting:,} async jobs submitted before, polled for their "
                "result, never paid again"
            )
        if self.credits_needed is None or self.credits_remaining is None:
            known = f"{self.credits_needed:,g} needed" if self.credits_needed is not None else ""
            left = (
                f"{self.credits_remaining:,g} remaining"
                if self.credits_remaining is not None
                else ""
            )
            shown = ", ".join(x for x in (known, left) if x)
            lines.append(f"credits: {shown + '; ' if shown else ''}unknown: {self.credits_note}")
        else:
            verdict = (
                "MORE THAN REMAINS: run refuses (--allow-overdraft)" if self.overdraft else "ok"
            )
            lines.append(
                f"credits: {self.to_send:,} x {self.cost_per_contact:g} = {self.credits_needed:,g} "
                f"of {self.credits_remaining:,g} remaining: {verdict}"
            )
        low, high = (_duration(s) for s in self.seconds)
        span = f"about {low}" if low[0].isdigit() else low  # not "about under 1 s"
        span = span if low == high else f"{low} to {high}"
        lines.append(f"time: {span} ({self.time_basis})")
        return lines


def _duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "unknown"
    if 0 < seconds < 1:
        return "under 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _latency_history(
    paths: OutputPaths, settings: Settings, outcome: str = "success"
) -> list[float]:
    """Seconds taken by the output's most recent calls of this ``outcome`` (``success``;
    ``submitted``: accepted async submits), sorted; none without a ledger."""
    ledger = settings.ledger or paths.ledger
    if not ledger.exists():
        return []
    with RunHistory.open(ledger, readonly=True) as history:
        output_id = OutputIndex(history, paths.results, readonly=True).output_id
        if output_id is None:
            return []
        try:
            rows = history.query(
                "SELECT answered_at - sent_at FROM calls WHERE output_id = ? AND outcome = ? "
                "AND sent_at IS NOT NULL AND answered_at IS NOT NULL "
                "ORDER BY rowid DESC LIMIT ?",
                (output_id, outcome, _HISTORY_CALLS),
            )
        except sqlite3.OperationalError:  # no calls table: a ledger older than the index
            return []
    return sorted(max(row[0], 1e-3) for row in rows)


def _spread(values: list[float]) -> tuple[float, float]:
    """p50 and p90 of sorted ``values``."""
    return values[len(values) // 2], values[min(len(values) - 1, math.ceil(0.9 * len(values)) - 1)]


def _job_history(paths: OutputPaths) -> list[float]:
    """Seconds taken by the async jobs of the output's latest results (sorted; from the last
    ``_JOB_TAIL_BYTES`` of the file: the latest jobs)."""
    if not paths.results.exists():
        return []
    with open(paths.results, "rb") as handle:
        size = handle.seek(0, 2)
        handle.seek(max(0, size - _JOB_TAIL_BYTES))
        tail = handle.read()
    lines = tail.split(b"\n")[1 if size > _JOB_TAIL_BYTES else 0 :]
    seconds = []
    for line in lines:
        if b'"asyncHandle"' not in line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        took = number_in(record, "latencyMs")
        if took is not None and record.get("asyncHandle"):
            seconds.append(max(took / 1000, 1e-3))
    return sorted(seconds)


def _measured_or_known(
    measured: list[float], known: tuple[float, float], said: str, assumed: str
) -> tuple[tuple[float, float], str]:
    """The p50-p90 of ``measured`` seconds and ``said`` (``{n}``: how many), or, with none,
    the ``known`` range and ``assumed`` (``{fast}``, ``{slow}``)."""
    if measured:
        return _spread(measured), said.format(n=len(measured))
    return known, assumed.format(fast=known[0], slow=known[1])


def _async_seconds(
    to_send: int, paths: OutputPaths, settings: Settings, rate: float | None, window: int
) -> tuple[tuple[float, float], str]:
    """The time of ``to_send`` async contacts: their submits, then one job's time."""
    (fast_j, slow_j), basis = _measured_or_known(
        _job_history(paths),
        KNOWN_LATENCY_S,
        "submits, then p50-p90 of the output's last {n:,} async jobs",
        "submits, then {fast:g}-{slow:g} s a job, usual for Octave's agents",
    )
    (fast_s, slow_s), submit_basis = _measured_or_known(
        _latency_history(paths, settings, "submitted"),
        KNOWN_SUBMIT_S,
        "submit p50-p90 of its last {n:,} submits",
        "{fast:g}-{slow:g} s a submit (assumed)",
    )
    basis += f"; {submit_basis}"
    if not to_send:
        return (0.0, 0.0), basis

    def seconds(submit: float, job: float) -> float:
        # Submits paced by the rate or by waves of ``window``; then the last job runs.
        return max(math.ceil(to_send / window) * submit, to_send / (rate or math.inf)) + job

    return (seconds(fast_s, fast_j), seconds(slow_s, slow_j)), basis


def estimate_seconds(
    to_send: int, paths: OutputPaths, settings: Settings
) -> tuple[tuple[float, float], str]:
    """The time ``to_send`` contacts would take, as (fastest, slowest), and what it is
    based on (async: the module docstring)."""
    remembered_rate, remembered_window = start_limits(
        settings.rate,
        settings.concurrency,
        RememberedLimits(paths.limits).get(limits_key(settings.base_url, settings.agent_type)),
    )
    rate = remembered_rate if remembered_rate is not None else settings.rate
    window = remembered_window if remembered_window is not None else settings.concurrency
    remembered = remembered_rate is not None or remembered_window is not None
    pace = f"{'remembered' if remembered else 'set'} --rate {f'{rate:g}/s' if rate else 'none'}"
    pace += f" --concurrency {window}"
    if settings.mode == "async":
        seconds_, basis_ = _async_seconds(to_send, paths, settings, rate, window)
        return seconds_, f"{basis_}; {pace}"
    (fast_l, slow_l), basis = _measured_or_known(
        _latency_history(paths, settings),
        KNOWN_LATENCY_S,
        "p50-p90 latency of the output's last {n:,} calls",
        "{fast:g}-{slow:g} s a call, usual for Octave's agents",
    )
    basis += f"; {pace}"
    if not to_send:
        return (0.0, 0.0), basis

    def seconds(latency: float) -> float:
        # Waves of ``window`` calls, or sends paced by the rate, and the last call's latency.
        return max(math.ceil(to_send / window) * latency, to_send / (rate or math.inf) + latency)

    return (seconds(fast_l), seconds(slow_l)), basis


async def make_plan(
    input_path: str | Path,
    output: str | Path,
    settings: Settings,
    *,
    client: OctaveClient | None,
    listing: bool = False,
) -> Plan:
    """The forecast of a run of ``input_path`` on ``output`` (``client``: None when there is
    no key: the credits stay unknown; ``listing``: with every contact to send, and why)."""
    paths = OutputPaths.for_output(output)
    shared = await shared_view(settings)
    summary, planned = dry_plan(input_path, paths, settings, listing=listing, shared=shared)
    counts = summary.counts
    to_send = int(summary["would_send"])
    if settings.max_calls is not None:
        to_send = min(to_send, settings.max_calls)
    if client is None:
        credits = Credits(None, None, "no API key (set OCTAVE_API_KEY) to ask the API")
    else:
        credits = await agent_credits(client, settings)
    cost, remaining, note, _ = credits
    seconds, basis = estimate_seconds(to_send, paths, settings)
    kept = ("read", "rejected", "duplicate", "skipped_done", "skipped_failed", "filtered_out")
    paid_again = int(summary["resend"]["people_done_resent"])
    kept_counts = {k: counts[k] for k in kept}
    awaiting = int(summary["awaiting"])
    listed = None
    if planned.paid is not None:  # --max-calls sends the first ones
        listed = tuple(planned.paid[: to_send if settings.max_calls is not None else None])
    return Plan(
        kept_counts, to_send, paid_again, cost, remaining, note, seconds, basis, awaiting, listed
    )


async def plan_with_client(
    input_path: str | Path, output: str | Path, settings: Settings, *, listing: bool = False
) -> Plan:
    """:func:`make_plan` with a client of its own (none without an API key).

    Raises:
        ConfigError: no ``--agent`` or ``--experiment`` to plan for.
    """
    if not (settings.agent_oid or settings.experiment_oid):
        raise ConfigError(
            "no target: give --agent ca_... (or OCTAVE_AGENT_OID) or --experiment ae_..."
        )
    if settings.api_key is None:
        return await make_plan(input_path, output, settings, client=None, listing=listing)
    async with open_client(settings, read_timeout=settings.connect_timeout + 20) as client:
        return await make_plan(input_path, output, settings, client=client, listing=listing)
