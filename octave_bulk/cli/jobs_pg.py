"""``enqueue`` and ``worker``: a named job on the shared ledger, worked by N hosts at once.

``enqueue INPUT --job NAME`` admits the input as ``run`` would and writes what is to send into
the job (``state/pg/enqueue.py``); ``worker --job NAME`` claims, paces, sends and settles the
job's contacts until it is drained (exit 0) or stopped (SIGTERM/SIGINT: it drains, gives back
what it did not send, exit 130). Both need ``--ledger postgresql://…`` (or ``OCTAVE_LEDGER``).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from octave_bulk.cli.common import (
    fail,
    load_settings,
    notify_end,
    notify_refusal,
    print_summary,
    run_async,
)
from octave_bulk.cli.options import (
    INPUT_FIELDS,
    JOB_OPTION,
    PLAN_SHOWN,
    RUN_FIELDS,
    WORKER_FIELDS,
    SectionedCommand,
    config_option,
    key_file_option,
    settings_options,
)
from octave_bulk.errors import ConfigError, ExitCode, OctaveBulkError

__all__ = ["enqueue", "worker"]

_ENQUEUE_FIELDS = tuple(
    name
    for name in RUN_FIELDS
    if name
    not in {
        "job", "dry_run", "detach", "progress", "log_format", "metrics_textfile", "log_file",
        "fail_on", "fail_on_rejects", "max_calls", "budget", "rate", "concurrency", "adaptive",
        "timeout", "call_deadline", "max_attempts", "callback_url", "callback_listen",
        "resubmit_expired", "poll_rate",
    }
)  # fmt: skip


def _driver() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ConfigError(
            "a job on the shared ledger needs the PostgreSQL driver: "
            "pip install 'octave-bulk[postgres]'"
        ) from None


@click.command(cls=SectionedCommand)
@click.argument("input_path", metavar="INPUT")
@JOB_OPTION
@config_option
@key_file_option
@settings_options(*_ENQUEUE_FIELDS, *INPUT_FIELDS, shown=PLAN_SHOWN | {"ledger"})
def enqueue(
    input_path: str, config_file: str | None, api_key_file: str | None, **flags: Any
) -> None:
    """Admit INPUT as run would and add what is to send to the job NAME on the shared ledger.

    \b
    octave-bulk enqueue export.csv --job nightly --agent ca_... --ledger postgresql://...

    Prints the plan (rows read, rejected, already done, to send) and the credits it will
    cost, then writes the job (its agent and request settings; never the API key) and its
    contacts. Enqueueing the same input again adds nothing. Workers on any host then run
    `octave-bulk worker --job NAME`. Exit 0; 2: bad input or settings (nothing enqueued);
    3: the credits would not cover it (nothing enqueued, --allow-overdraft).
    """
    try:
        _driver()
        from octave_bulk.state.pg.enqueue import enqueue_input

        settings = load_settings(config_file, api_key_file, **flags)
        if not settings.job:
            raise ConfigError("enqueue needs --job NAME: the name workers are given")
        if not (settings.agent_oid or settings.experiment_oid):
            raise ConfigError("no target: give --agent ca_... (or OCTAVE_AGENT_OID)")
        done = run_async(lambda: enqueue_input(input_path, settings))
    except OctaveBulkError as exc:
        fail(exc)
    click.echo(f"enqueue: {input_path} -> job {done.job!r} ({settings.agent_type})")
    for line in done.lines():
        click.echo(f"  {line}")
    sys.exit(ExitCode.FATAL if done.refused else ExitCode.OK)


@click.command(cls=SectionedCommand)
@JOB_OPTION
@click.option(
    "-o",
    "--output",
    default=None,
    help="Local copy of this worker's results, for inspection [default: JOB.ndjson].",
)
@config_option
@key_file_option
@settings_options(*WORKER_FIELDS)
def worker(
    output: str | None, config_file: str | None, api_key_file: str | None, **flags: Any
) -> None:
    """Claim, pace, send and settle the contacts of the job NAME until it is drained.

    \b
    octave-bulk worker --job nightly --ledger postgresql://...

    Run one per host (or N replicas): they share one rate, and each claims a few contacts
    at a time, so they split the job evenly. The agent and request settings are the job's
    (octave-bulk enqueue); the API key comes from OCTAVE_API_KEY or --api-key-file.
    SIGTERM/SIGINT: stop claiming, finish the calls in flight, give back the rest, exit 130.
    Exit 0: the job is drained; 2: nothing sent, fix the cause; 3-6: stopped.
    """
    settings = None
    try:
        _driver()
        from octave_bulk.observe.log import configure_logging
        from octave_bulk.state.pg.enqueue import job_output, job_settings, run_worker

        settings = asked = load_settings(config_file, api_key_file, **flags)
        stored = run_async(lambda: job_settings(asked))
        if flags.get("base_url") is not None:  # this host's way to the API wins
            stored.pop("base_url", None)
        settings = load_settings(config_file, api_key_file, **(flags | stored))
        configure_logging(
            settings.log_format, str(settings.log_file) if settings.log_file else None
        )
        out = output or job_output(str(settings.job))
        summary = run_async(lambda: run_worker(out, settings, handle_signals=True))
    except OctaveBulkError as exc:
        if settings is not None:  # refused before its first call: the operator hears of it
            notify_refusal(settings, exc)
        fail(exc)
    if settings.log_format != "json":
        print_summary(summary)
    notify_end(settings, summary)
    sys.exit(summary["exit_code"])
