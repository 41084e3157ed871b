"""``report``: a run's charts and counts, or the week's runs, as HTML files that open offline."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from octave_bulk.cli.common import fail, parsed
from octave_bulk.cli.job import job_option, job_report, report_name
from octave_bulk.errors import ExitCode, OctaveBulkError

__all__ = ["parse_span", "report"]

_UNITS = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


def parse_span(text: str) -> float:
    """``7d``, ``36h``, ``90m``, ``2w`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhdw])\s*", text.lower())
    if not match:
        raise ValueError(f"{text!r} is not a span: a number and m, h, d or w (7d, 36h, 2w)")
    return float(match[1]) * _UNITS[match[2]]


@click.command()
@click.argument("output", metavar="OUT.ndjson", required=False)
@click.option(
    "-o",
    "--output",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The report file [default: OUT.report.html; with --since/--runs: OUT.week.html].",
)
@click.option(
    "--run", "run_id", help="The run to show (see octave-bulk history) [default: the latest]."
)
@click.option(
    "--since",
    "since_seconds",
    metavar="SPAN",
    callback=parsed(lambda text: None if text is None else parse_span(text)),
    help="The week view: every run started in the last SPAN (7d, 36h, 2w), one row and bar "
    "each, linked to its own page.",
)
@click.option(
    "--runs",
    "runs",
    type=click.IntRange(min=1),
    help="The week view of the latest N runs (with --since: of those at most N).",
)
@click.option(
    "--ledger",
    "ledger_text",
    metavar="PATH|URL",
    help="The run history database, when not OUT.ledger.sqlite (a shared one); with --job: the "
    "shared ledger's postgresql:// URL [env: OCTAVE_LEDGER].",
)
@job_option
def report(
    output: str | None,
    html_path: Path | None,
    run_id: str | None,
    since_seconds: float | None,
    runs: int | None,
    ledger_text: str | None,
    job: str | None,
) -> None:
    """Write a run's report: throughput, latency, 429s, limits, failures, credits, as HTML.

    One self-contained file (its charts' JavaScript embedded: it opens offline), made from
    the ledger and the output's files; works while a run is in progress. With --since or
    --runs: the week view (OUT.week.html), a row and a bar per run - throughput, credits, paid
    calls, failures, rejects, 429s, limits found - each run linked to its page, written
    beside it (OUT.week.RUN.html). Exit 2: no run of OUT in the ledger (or in the span).

    With --job NAME: a run of the job from the shared ledger (JOB.report.html), as much of the
    report as the database holds (no series charts, no rejects).
    """
    if job is not None:
        if output is not None or since_seconds is not None or runs is not None:
            raise click.UsageError("--job shows one run of the job: no OUT, --since or --runs")
    elif output is None:
        raise click.UsageError(
            "Missing argument 'OUT.ndjson' (or --job NAME to read a job of the shared ledger)."
        )
    elif ledger_text is not None and ledger_text.startswith(("postgresql://", "postgres://")):
        raise click.UsageError("--ledger postgresql://… is read with --job NAME")
    ledger = None if ledger_text is None or job is not None else Path(ledger_text)
    if job is None and (since_seconds is not None or runs is not None):
        if run_id is not None:
            raise click.UsageError("--run shows one run; --since and --runs show several")
        _week(str(output), html_path, ledger, since_seconds, runs)
        return
    from octave_bulk.report.data import gather
    from octave_bulk.report.page import write_report

    try:
        if job is not None:
            data, default = job_report(job, ledger_text, run_id), report_name(job)
        else:
            data = gather(str(output), ledger=ledger, run_id=run_id)
            default = data.output.with_name(data.output.stem + ".report.html")
        target = html_path or default
        write_report(data, target)
    except OctaveBulkError as exc:
        fail(exc)
    except OSError as exc:
        click.echo(f"error: cannot write the report ({exc})", err=True)
        sys.exit(ExitCode.USAGE)
    click.echo(f"report: {target} (run {data.run['run_id']})")


def _week(
    output: str,
    html_path: Path | None,
    ledger: Path | None,
    since_seconds: float | None,
    runs: int | None,
) -> None:
    """The week view, and each of its runs' pages beside it."""
    from octave_bulk.report.data import gather, gather_week
    from octave_bulk.report.page import write_report, write_week

    try:
        week = gather_week(output, ledger=ledger, since_seconds=since_seconds, runs=runs)
        target = html_path or week.output.with_name(week.output.stem + ".week.html")
        pages = {run["run_id"]: f"{target.stem}.{run['run_id']}.html" for run in week.runs}
        for run_id, name in pages.items():
            write_report(gather(output, ledger=ledger, run_id=run_id), target.with_name(name))
        write_week(week, target, pages)
    except OctaveBulkError as exc:
        fail(exc)
    except OSError as exc:
        click.echo(f"error: cannot write the report ({exc})", err=True)
        sys.exit(ExitCode.USAGE)
    count = len(week.runs)
    click.echo(
        f"report: {target} ({count} run{'' if count == 1 else 's'}, each linked to its page)"
    )
