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

:func:`check_credits` is the run's guard, before its first call (whether or not the agent is
looked up, ``check_agent``): when the contacts to send times ``costToRun`` exceed the credits
remaining it raises :class:`FatalApiError` (exit 3), unless ``allow_overdraft``. It reads the
input again only when its line count could cost more than what remains; unknown credits or cost
never stop a run. On stdin, which cannot be read twice, ``--limit``/``--max-calls`` bound the
contacts; without either the credits are not checked - said in a warning and in the summary -
and the run stops once they are spent (``run/spend.py``).
"""

from __future__ import annotations

import logging
import math
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from octave_bulk.errors import ApiError, ConfigError, ErrorKind, FatalApiError
from octave_bulk.http.client import OctaveClient, open_client
from octave_bulk.observe.log import log_event
from octave_bulk.observe.words import counted
from octave_bulk.run.dry import dry_run
from octave_bulk.settings.model import Settings
from octave_bulk.state.history import RunHistory
from octave_bulk.state.index import OutputIndex
from octave_bulk.state.limits import RememberedLimits, limits_key, start_limits
from octave_bulk.state.paths import OutputPaths

__all__ = [
    "KNOWN_LATENCY_S",
    "KNOWN_SUBMIT_S",
    "CreditsCheck",
    "Plan",
    "check_credits",
    "credits_remaining",
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
    """Rows read, rejected, duplicate, already done (skipped), failed for good (skipped)."""
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
        """The plan as JSON-ready data."""
        return asdict(self) | {"credits_needed": self.credits_needed, "overdraft": self.overdraft}

    def lines(self) -> list[str]:
        """The plan in words, one line each."""
        c = self.counts
        lines = [
            f"rows read {c['read']:,}: rejected {c['rejected']:,}, duplicates {c['duplicate']:,}, "
            f"already done {c['skipped_done']:,}, failed for good before {c['skipped_failed']:,}",
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


def _number(record: object, name: str) -> float | None:
    value = record.get(name) if isinstance(record, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _Credits(NamedTuple):
    cost: float | None
    """The agent's ``costToRun``."""
    remaining: float | None
    note: str | None
    """Why either is unknown."""
    failed: bool = False
    """Whether a lookup failed (rather than the API publishing no figure)."""


async def _credits(client: OctaveClient, settings: Settings) -> _Credits:
    """The agent's cost per run and the credits remaining, as the API gives them."""
    cost = remaining = None
    notes, failed = [], False
    if settings.agent_oid:
        try:
            cost = _number(
                (await client.get_agent_info(settings.agent_oid)).get("data"), "costToRun"
            )
            if cost is None:
                notes.append("the API gave no costToRun for the agent")
        except ApiError as exc:
            notes.append(f"the agent lookup failed ({exc.message[:120]})")
            failed = True
    else:
        notes.append("an experiment's cost per run is not published")
    remaining, note, unanswered = await credits_remaining(client)
    if note is not None:
        notes.append(note)
    return _Credits(cost, remaining, "; ".join(notes) or None, failed or unanswered)


async def credits_remaining(client: OctaveClient) -> tuple[float | None, str | None, bool]:
    """The credits remaining (``GET /api/v2/api-key/validate``, ``totalRemaining``, not
    paid), or None and why; and whether the check failed (rather than gave no figure)."""
    try:
        data = (await client.validate_key()).get("data")
    except ApiError as exc:
        return None, f"the key check failed ({exc.message[:120]})", True
    remaining = _number(data.get("credits") if isinstance(data, dict) else None, "totalRemaining")
    if remaining is None:
        return None, "the API gave no credits remaining", False
    return remaining, None, False


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
        took = _number(record, "latencyMs")
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
    input_path: str | Path, output: str | Path, settings: Settings, *, client: OctaveClient | None
) -> Plan:
    """The forecast of a run of ``input_path`` on ``output`` (``client``: None when there is
    no key: the credits stay unknown)."""
    paths = OutputPaths.for_output(output)
    summary = dry_run(input_path, paths, settings)
    counts = summary.counts
    to_send = int(summary["would_send"])
    if settings.max_calls is not None:
        to_send = min(to_send, settings.max_calls)
    if client is None:
        credits = _Credits(None, None, "no API key (set OCTAVE_API_KEY) to ask the API")
    else:
        credits = await _credits(client, settings)
    cost, remaining, note, _ = credits
    seconds, basis = estimate_seconds(to_send, paths, settings)
    kept = ("read", "rejected", "duplicate", "skipped_done", "skipped_failed")
    paid_again = int(summary["resend"]["people_done_resent"])
    kept_counts = {k: counts[k] for k in kept}
    awaiting = int(summary["awaiting"])
    return Plan(kept_counts, to_send, paid_again, cost, remaining, note, seconds, basis, awaiting)


class CreditsCheck(NamedTuple):
    """What :func:`check_credits` found, for the run."""

    unchecked: str | None = None
    """Why the credits were not checked before the run (None: checked, or nothing to check:
    ``allow_overdraft``, a cost the API does not publish)."""
    ceiling: tuple[float, float] | None = None
    """(cost a call, credits remaining) when the run must stop once those are spent
    (``run/spend.py``): nothing bounded its number of contacts before it (stdin)."""


async def check_credits(
    client: OctaveClient,
    settings: Settings,
    input_path: str | Path,
    output: Path,
    rows: int | None,
) -> CreditsCheck:
    """Before the first paid call: refuse a run whose contacts would cost more credits than
    remain (``rows``: the input's line count, an upper bound; None for stdin). On stdin the
    bound is ``--limit``/``--max-calls``; without either the run is not refused but warned
    (``credits_not_checked``) and given a ceiling.

    Raises:
        FatalApiError: the run would (or, on stdin, could) overdraw the credits, and
            ``allow_overdraft`` is off.
    """
    if settings.allow_overdraft:
        return CreditsCheck()
    cost, remaining, note, failed = await _credits(client, settings)
    if cost is None or remaining is None:
        if failed:  # the API did not answer (a cost it does not publish is no news)
            log_event("credits_not_checked", level=logging.WARNING, reason=note)
            return CreditsCheck(f"the credits could not be checked: {note}")
        return CreditsCheck()
    bounds = [n for n in (rows, settings.limit, settings.max_calls) if n is not None]
    if not bounds:
        why = (
            "the input is stdin: how many contacts it holds is unknown before reading it "
            "(give --limit or --max-calls to check them)"
        )
        action = f"the run stops once the {remaining:,g} credits remaining are spent"
        log_event("credits_not_checked", level=logging.WARNING, reason=why, action=action)
        return CreditsCheck(f"{why}; {action}", (cost, remaining) if cost > 0 else None)
    bound = min(bounds)
    if bound * cost <= remaining:
        return CreditsCheck()  # even every row sent would be covered: no second pass
    if rows is None:  # stdin cannot be read twice: the bound is all that is known
        raise FatalApiError(
            f"up to {bound:,} contacts (--limit, --max-calls) x {cost:g} credits = "
            f"{bound * cost:,g} credits, but {remaining:,g} remain; nothing was sent. Send "
            "fewer, or add --allow-overdraft to run until the credits run out",
            kind=ErrorKind.PAYMENT_REQUIRED,
        )
    plan = await make_plan(input_path, output, settings, client=None)
    needed = plan.to_send * cost
    if needed > remaining:
        raise FatalApiError(
            f"{plan.to_send:,} contacts to send x {cost:g} credits = {needed:,g} credits, "
            f"but {remaining:,g} remain; nothing was sent. Send fewer (--limit, --max-calls) or "
            "add --allow-overdraft to run until the credits run out",
            kind=ErrorKind.PAYMENT_REQUIRED,
        )
    return CreditsCheck()


async def plan_with_client(input_path: str | Path, output: str | Path, settings: Settings) -> Plan:
    """:func:`make_plan` with a client of its own (none without an API key).

    Raises:
        ConfigError: no ``--agent`` or ``--experiment`` to plan for.
    """
    if not (settings.agent_oid or settings.experiment_oid):
        raise ConfigError(
            "no target: give --agent ca_... (or OCTAVE_AGENT_OID) or --experiment ae_..."
        )
    if settings.api_key is None:
        return await make_plan(input_path, output, settings, client=None)
    async with open_client(settings, read_timeout=settings.connect_timeout + 20) as client:
        return await make_plan(input_path, output, settings, client=client)
