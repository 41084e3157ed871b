"""``ledger``: rebuild or check an output's index in the ledger database."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from octave_bulk.cli.common import fail
from octave_bulk.errors import ExitCode, OctaveBulkError

__all__ = ["ledger"]

_LEDGER = click.option(
    "--ledger",
    "ledger_path",
    type=click.Path(path_type=Path),
    help="The ledger database, when not OUT.ledger.sqlite (a shared one).",
)


@click.group()
def ledger() -> None:
    """Rebuild or check the ledger (OUT.ledger.sqlite) from the output's files."""


@ledger.command()
@click.argument("output", metavar="OUT.ndjson")
@_LEDGER
def rebuild(output: str, ledger_path: Path | None) -> None:
    """Index OUT.ndjson and OUT.errors.ndjson again from their first byte.

    The files are the source of truth: use this after moving them, restoring them from a
    backup, or if `ledger check` finds a difference. The runs' history is kept."""
    from octave_bulk.state.paths import OutputPaths
    from octave_bulk.state.reindex import rebuild as rebuild_index

    try:
        counts = rebuild_index(OutputPaths.for_output(output), ledger_path)
    except OctaveBulkError as exc:
        fail(exc)
    click.echo(json.dumps(counts, indent=2))


@ledger.command()
@click.argument("output", metavar="OUT.ndjson")
@_LEDGER
def check(output: str, ledger_path: Path | None) -> None:
    """Compare the ledger with the files; exit 1 when they differ (writes nothing)."""
    from octave_bulk.state.paths import OutputPaths
    from octave_bulk.state.reindex import check as check_index

    try:
        report = check_index(OutputPaths.for_output(output), ledger_path)
    except OctaveBulkError as exc:
        fail(exc)
    click.echo(json.dumps(report, indent=2))
    if not report["agree"]:
        click.echo(
            "the ledger differs from the files: run `octave-bulk ledger rebuild OUT`", err=True
        )
        sys.exit(ExitCode.SOME_FAILED)
