"""The run: from an input and an output to a summary (``run_batch``, the library's entry).

The run in progress - its stages, task group and bounded streams - is ``batch.py``'s
:class:`~octave_bulk.run.batch.BatchRun`; this module opens what it needs and closes it.
Backpressure runs from the workers to the reader, so memory depends on the concurrency, not
on the input.

Before the first call: the output's store is opened (``state/store.py``: the claim on the
output, then what it holds; by default its files and ledger, ``state/file_store.py``), the plan
pass reads the input once (``dry.py``, admitting as the run will) for the re-send guard
(``guard.py``: too many people already done would be paid again: exit 2; not on a resume whose
cursor applies: the same input and settings passed it already) and the credit check's count -
made only when one of them needs it, so the input is read at most twice before the first call;
the run's row goes into the store's run history (updated every 5 s, completed at the end). A
``budget`` is held in the history before each batch of calls (``spend.py``). Each call is
claimed in the store before it is sent; each group the sink makes durable is recorded in the
store before its outcomes count.

Where the input resumes is decided in ``start.py``; the summary, metrics and ledger are
written at the end by ``finish.py``; async submits are polled by ``jobs.py`` - except with
``detach``, where no poller runs and the exit rule says how many jobs are left to ``octave-bulk
collect`` (``collect.py``: a run of the output with an empty input, which only polls).

Before the run's row, the agent is looked up (``check_agent``) and the credits checked
(``credits.check_credits``, whatever ``check_agent`` says); a run whose credits could not be
checked (stdin) stops once they are spent (``spend.py``).

Stops (control.py): ``max_calls``, the budget, the credits and the breaker stop dispatch and let calls in
flight finish; SIGINT/SIGTERM do the same within ``drain_timeout`` (a second signal stops at
once); 401/402/403 stop at once. Every stop flushes, fsyncs and writes the summary; every stop
is resumable.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from octave_bulk.errors import ConfigError, StateError
from octave_bulk.http.client import open_client
from octave_bulk.input.intake import open_contacts
from octave_bulk.limits.adaptive import WINDOW_BOUND
from octave_bulk.limits.base import LimiterFactory
from octave_bulk.limits.factory import DEFAULT_LIMITER, SHARED_LIMITER, limiter_factory
from octave_bulk.observe.log import log_event
from octave_bulk.run.batch import BatchRun, WorkSource
from octave_bulk.run.callbacks import MAX_CONNECTIONS
from octave_bulk.run.control import RunControl, connect_cause
from octave_bulk.run.credits import check_credits
from octave_bulk.run.dry import InputPlan, dry_run, plan_input, shared_view
from octave_bulk.run.finish import FinishedInput, finish_run
from octave_bulk.run.gc_tuning import gc_tuned_for_run
from octave_bulk.run.guard import ResendReport, check_agent, needs_resend_check
from octave_bulk.run.spend import BudgetHolds
from octave_bulk.run.start import input_file, resume_cursor, settings_fingerprint
from octave_bulk.run.summary import RunStats, RunSummary
from octave_bulk.settings.model import Settings
from octave_bulk.state.cursor import (
    input_identity,
)
from octave_bulk.state.file_store import open_file_store
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.preflight import (
    check_agent_of_output,
    check_descriptors,
    check_writable,
    descriptor_room,
    remove_stale_temp_files,
)
from octave_bulk.state.store import Store, StoreFactory

__all__ = ["SourceFactory", "run_batch"]

SourceFactory = Callable[[Store, Settings, RunStats, RunControl], WorkSource]
"""Makes a run's source task from its open store (see ``BatchRun.source``)."""


def _searched_window(settings: Settings, *, bounded: bool, served: int = 0) -> Settings:
    """No ``--concurrency``: the workers, the connection pool and the limiter's window
    ceiling are the safety bound (:data:`WINDOW_BOUND`, less when the open-file limit is
    lower); the limiter starts its window at :data:`FIRST_WINDOW` (with no rate remembered)
    and searches up from there. The setting still reads as not given (a remembered window applies)."""
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
    limiter: LimiterFactory | None = None,
    ledger: StoreFactory | None = None,
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
        limiter: the factory of the run's limiters (calls, polls); by default the one the
            ``limiter`` setting names (``limits/factory.py``).
        ledger: opens the output's store (``state/store.py``: what is done, claims, the run
            history); by default its files and the SQLite ledger beside them
            (``state/file_store.py``).

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
    shared = settings.ledger_url is not None  # --ledger postgresql://: the shared ledger
    chosen = SHARED_LIMITER if shared and settings.limiter == DEFAULT_LIMITER else settings.limiter
    make_limiter = limiter or limiter_factory(chosen)
    if settings.dry_run:
        return dry_run(input_path, paths, settings, await shared_view(settings))
    # Every path the run writes, before the lock and the first call (exit 2, nothing sent).
    check_agent_of_output(paths, settings.agent_type)
    check_writable(paths, ledger=settings.ledger, metrics=settings.metrics_textfile)
    listening = settings.callback_listen is not None and settings.mode == "async"
    served = MAX_CONNECTIONS if listening else 0  # the callback receiver's connections
    if "concurrency" not in settings.model_fields_set:
        settings = _searched_window(settings, bounded=transport is None, served=served)
    elif transport is None:
        check_descriptors(settings.concurrency, served=served)
    open_store = ledger or (_shared_store() if shared else open_file_store)
    source = _queue_source() if shared and ledger is None else None  # enqueue + one worker
    sent: list[RunStats] = []  # the run's counters, once it has some (for the errors below)
    try:
        try:
            async with open_store(paths, settings) as store:  # the claim on the output
                remove_stale_temp_files(_replaced_files(paths, settings))
                return await _locked_run(
                    input_path,
                    paths,
                    settings,
                    transport,
                    handle_signals,
                    store,
                    sent,
                    collect,
                    make_limiter,
                    source,
                )
        except* OSError as group:  # the output's disk: full, read-only, not a file...
            raise StateError(
                f"cannot use the output files ({_first_leaf(group)}); every result written "
                "before this is safe: fix the cause, then run the same command to resume",
                calls_sent=sent[0].calls_sent if sent else 0,
            ) from None
    except StateError as exc:  # e.g. the store's end (a shared ledger left) after calls
        if not exc.calls_sent and sent:
            exc.calls_sent = sent[0].calls_sent  # they may have been paid: exit 6, not 2
        raise


def _shared_store() -> StoreFactory:
    """The store of ``--ledger postgresql://`` (its driver is an optional extra)."""
    try:
        from octave_bulk.state.pg.store import open_pg_store
    except ImportError:
        raise ConfigError(
            "--ledger postgresql://… needs the PostgreSQL driver: "
            "pip install 'octave-bulk[postgres]'"
        ) from None

    return open_pg_store


def _queue_source() -> SourceFactory:
    """The source of ``--ledger postgresql://``: the job's queue (its driver is there)."""
    from octave_bulk.state.pg.queue_source import queue_source

    return queue_source


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
    store: Store,
    sent: list[RunStats],
    collect: bool,
    limiter: LimiterFactory,
    source: SourceFactory | None = None,
) -> RunSummary:
    state = await store.load()
    carried = list(state.awaited_jobs())
    counts = state.counts()  # the view follows the run from here
    identity = input_identity(input_path)  # before reading: a file changed since is "changed"
    with open_contacts(input_path, settings) as reader:
        if reader.format != "csv" or collect:
            identity = None  # no cursor is saved for NDJSON (see _resume_cursor)
        fingerprint = settings_fingerprint(settings)
        start, cursor_note = resume_cursor(reader, paths, settings, identity, fingerprint)
        # The plan pass (run/dry.py): the input read once before it is read to send, for the
        # re-send guard (not on a resume whose cursor applies: the same input and settings
        # passed it already) and, made then or later, the credit check's count.
        file = input_file(input_path)
        planned: list[InputPlan] = []
        if not start.line and needs_resend_check(input_path, state):
            planned.append(plan_input(input_path, settings, state, exact=False))
            resend = planned[0].resend
            if resend.trips(settings.resend_guard) and not settings.allow_resend:
                raise ConfigError(resend.refusal(settings.resend_guard, paths.results))

        def count_to_send() -> int:
            if not planned:
                planned.append(plan_input(input_path, settings, state, exact=False))
            return planned[0].to_send

        expected = planned[0].stats.read if planned else reader.estimated_rows()
        run = BatchRun(
            settings,
            paths,
            reader,
            state,
            start,
            expected,
            identity=identity,
            fingerprint=fingerprint,
            resend=planned[0].resend if planned else ResendReport(),
            limiter=limiter,
        )
        run.store, run.carried_jobs = store, carried
        if source is not None:
            run.source = source(store, settings, run.stats, run.control)
        sent.append(run.stats)
        async with open_client(settings, transport=transport) as client:  # before the row
            await check_agent(client, settings)  # (exit 2 or 3 leaves none)
            bound = planned[0].to_send if planned else file and file[1]
            count = count_to_send if file is not None else None
            run.credits = await check_credits(client, settings, bound, count)
            if client.checks_unreachable and not client.checks_answered:
                raise ConfigError(  # nothing there to pay: exit 2 before the first call
                    f"the checks before the run could not connect "
                    f"{connect_cause(client.last_check_error, settings.base_url)}; nothing was sent"
                )
        if settings.budget is not None:
            run.control.budget = BudgetHolds(store.runs, run.run_id, settings, run.control)
        store.runs.start(
            run.run_id,
            str(paths.results.resolve()),
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
            already_done=counts.results,
            repaired_bytes=counts.repaired_bytes,
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
            with gc_tuned_for_run():
                await run.execute(client, store, handle_signals=handle_signals, bar=bar)
    return await finish_run(
        run,
        FinishedInput("(collect)" if collect else input_path, reader, start, cursor_note),
        store=store,
        outcome_unknown=state.outcome_unknown,
        counts=counts,
    )


def _first_leaf(group: BaseExceptionGroup[OSError]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
