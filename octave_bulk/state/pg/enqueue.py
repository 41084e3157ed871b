"""``octave-bulk enqueue`` and the job a ``worker`` reads: a named job on the shared ledger.

Contract (docs/scale-out.md, "Workers"):

- :func:`enqueue_input` admits the input exactly as a run does (``run/dry.py``'s
  :func:`~octave_bulk.run.dry.plan_input`: read, map, dedup, the re-send guard, skipped when
  the shared ledger has the contact done or failed for good), refuses a mass re-send (the
  guard, exit 2) and an overdraft (exit 3, unless ``allow_overdraft``) before writing
  anything, then writes the job's row (its agent, input name and :data:`JOB_SETTINGS`, never
  the API key or the ledger's URL) and its contacts with their request bodies. Enqueueing the
  same input again adds nothing; a contact edited since its result has another requestId and
  is added (paid again: the re-send guard says how many).
- :func:`job_settings` reads a job's settings back for its workers (a job that does not
  exist is a :class:`ConfigError`: enqueue it first).
- :func:`run_worker` is ``octave-bulk worker``: a run (``run/engine.py``'s ``run_batch``) of
  the job on an empty input, so it only claims from the job's queue
  (``state/pg/queue_source.py``) - the limiter, retries, budgets, deadlines, SIGTERM's drain,
  the key scrubbed and the local output (``JOB.ndjson`` unless ``-o``) are the run's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from octave_bulk.errors import ConfigError, StateError
from octave_bulk.http.client import open_client
from octave_bulk.input.intake import open_contacts
from octave_bulk.run.admission import Admission
from octave_bulk.run.admission import WorkItem as Admitted
from octave_bulk.run.credits import agent_credits
from octave_bulk.run.dry import plan_input
from octave_bulk.run.plan import Plan, estimate_seconds
from octave_bulk.run.summary import RunStats, RunSummary
from octave_bulk.settings.model import Settings
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.pg.claims import JOB_SETTINGS, WorkItem, WorkQueue
from octave_bulk.state.pg.dsn import LedgerUrl, connect, describe_failure
from octave_bulk.state.pg.queue_source import to_enqueue
from octave_bulk.state.pg.schema import migrate
from octave_bulk.state.pg.store import job_name
from octave_bulk.state.pg.view import PgView, read_view

__all__ = [
    "Enqueued",
    "enqueue_input",
    "job_output",
    "job_settings",
    "run_worker",
]


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What :func:`enqueue_input` found and did."""

    job: str
    ledger: str
    """The ledger's URL without its password."""
    plan: Plan
    added: int
    """Contacts added to the job now (to send, less those enqueued before)."""

    @property
    def refused(self) -> bool:
        """Whether the contacts to send cost more credits than remain (nothing enqueued)."""
        return self.plan.overdraft

    def lines(self) -> list[str]:
        """The plan and what was enqueued, one line each."""
        added = f"enqueued: {self.added:,} contacts added to job {self.job!r} ({self.ledger})"
        if self.refused:
            added = "enqueued: nothing (the credits would not cover it: --allow-overdraft)"
        return [*self.plan.lines(), added]


def job_output(job: str) -> Path:
    """A worker's local output when ``-o`` is not given: ``JOB.ndjson`` here."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in job).lstrip(".")
    return Path(f"{safe or 'job'}.ndjson")


async def enqueue_input(input_path: str | Path, settings: Settings) -> Enqueued:
    """Admit ``input_path`` and enqueue what is to send (see the module docstring).

    Raises:
        ConfigError: no ledger URL or target; a mass re-send the guard refuses.
        StateError: the ledger is out of reach, or the job runs another agent.
    """
    url = _ledger_url(settings)
    job = job_name(settings)
    async with await connect(url) as conn:
        try:
            await migrate(conn)
            queue = WorkQueue(conn, job)
            view = await read_view(conn, job)
            planned = plan_input(input_path, settings, view)
            resend = planned.resend
            if resend.trips(settings.resend_guard) and not settings.allow_resend:
                raise ConfigError(resend.refusal(settings.resend_guard, Path(f"job {job}")))
            plan = await _plan(planned.stats, planned.to_send, resend.resent, settings, job)
            if plan.overdraft and not settings.allow_overdraft:
                return Enqueued(job, url.display, plan, 0)
            shaping = settings.model_dump(mode="json", include=set(JOB_SETTINGS))
            await queue.open_job(
                agent=settings.agent_type, input_name=str(input_path), settings=shaping
            )
            rule = resend.paid_elsewhere(view.is_done)
            added = await queue.enqueue(_to_send(input_path, settings, view, rule))
        except psycopg.Error as exc:
            raise StateError(describe_failure(url, exc)) from None
    return Enqueued(job, url.display, plan, added)


async def job_settings(settings: Settings) -> dict[str, Any]:
    """The job's settings as enqueued (:data:`JOB_SETTINGS`), for its workers.

    Raises:
        ConfigError: no ledger URL or no ``--job``; no such job on the ledger.
        StateError: the ledger is out of reach.
    """
    url = _ledger_url(settings)
    if not settings.job:
        raise ConfigError("a worker needs --job NAME (the name given to octave-bulk enqueue)")
    async with await connect(url) as conn:
        try:
            await migrate(conn)
            found = await WorkQueue(conn, settings.job).read_job()
        except psycopg.Error as exc:
            raise StateError(describe_failure(url, exc)) from None
    if found is None:
        raise ConfigError(
            f"no job {settings.job!r} on the shared ledger {url.display}: "
            f"octave-bulk enqueue INPUT --job {settings.job} first"
        )
    stored = found[2]
    return {name: stored[name] for name in JOB_SETTINGS if stored.get(name) is not None}


def _ledger_url(settings: Settings) -> LedgerUrl:
    if settings.ledger_url is None:
        raise ConfigError("--ledger postgresql://… (or OCTAVE_LEDGER) is required for a job")
    return LedgerUrl.parse(settings.ledger_url.get_secret_value())


async def _plan(
    stats: RunStats, to_send: int, paid_again: int, settings: Settings, job: str
) -> Plan:
    """The plan's words (``run/plan.py``'s :class:`Plan`), credits asked when there is a key."""
    kept = ("read", "rejected", "duplicate", "skipped_done", "skipped_failed", "filtered_out")
    counts = {name: getattr(stats, name) for name in kept}
    cost = remaining = None
    note: str | None = "no API key (set OCTAVE_API_KEY) to ask the API"
    if settings.api_key is not None:
        async with open_client(settings, read_timeout=settings.connect_timeout + 20) as client:
            cost, remaining, note, _ = await agent_credits(client, settings)
    seconds, basis = estimate_seconds(to_send, OutputPaths.for_output(job_output(job)), settings)
    return Plan(counts, to_send, paid_again, cost, remaining, note, seconds, basis)


def _to_send(
    input_path: str | Path,
    settings: Settings,
    view: PgView,
    rule: Callable[[int, int], str | None] | None,
) -> list[WorkItem]:
    """The contacts to send, as the run's admission builds them (with the guard's rule)."""
    items: list[WorkItem] = []

    def keep(item: Admitted, line: int) -> None:
        items.append(to_enqueue(item, len(items)))

    with open_contacts(input_path, settings) as reader:
        admission = Admission(settings, RunStats(), view, paid_elsewhere=rule, follow=False)
        admission.admit_all(reader, on_send=keep)
    return items


async def run_worker(
    output: str | Path,
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    handle_signals: bool = False,
) -> RunSummary:
    """Work on ``settings.job`` until it is drained or the worker stops; the run's summary.

    Raises:
        ConfigError, StateError: before anything was sent (as ``run_batch``).
    """
    from octave_bulk.run.engine import run_batch

    with tempfile.TemporaryDirectory(prefix="octave-bulk-worker-") as folder:
        empty = Path(folder, "job.csv")
        empty.write_bytes(b"email\n")  # noqa: ASYNC240 - a header and no row: nothing to enqueue
        return await run_batch(
            empty, output, settings, transport=transport, handle_signals=handle_signals
        )
