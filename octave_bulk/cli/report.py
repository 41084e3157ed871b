"""``report``: a run's charts and counts, as one HTML file that opens offline."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from octave_bulk.cli.common import fail
from octave_bulk.errors import ExitCode, OctaveBulkError

__all__ = ["report"]


@click.command()
@click.argument("output", metavar="OUT.ndjson")
@click.option(
    "-o",
    "--output",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The report file [default: OUT.report.html].",
)
@click.option(
    "--run", "run_id", help="The run to show (see octave-bulk history) [default: the latest]."
)
@click.option(
    "--ledger",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The run history database, when not OUT.ledger.sqlite (a shared one).",
)
def report(output: str, html_path: Path | None, run_id: str | None, ledger: Path | None) -> None:
    """Write a run's report: throughput, latency, 429s, limits, failures, credits, as HTML.

    One self-contained file (its charts' JavaScript embedded: it opens offline), made from
    the ledger and the output's files; works while a run is in progress. Exit 2: no run of
    OUT in the ledger.
    """
    from octave_bulk.report.data import gather
    from octave_bulk.report.page import write_report

    try:
        data = gather(output, ledger=ledger, run_id=run_id)
        target = html_path or data.output.with_name(data.output.stem + ".report.html")
        write_report(data, target)
    except OctaveBulkError as exc:
        fail(exc)
    except OSError as exc:
        click.echo(f"error: cannot write the report ({exc})", err=True)
        sys.exit(ExitCode.USAGE)
    click.echo(f"report: {target} (run {data.run['run_id']})")
