"""``query``: one SQL statement over an output's results and run history, read-only."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from octave_bulk.errors import ExitCode, OctaveBulkError

__all__ = ["query"]

_EXAMPLE = (
    "SELECT email, record ->> '$.response.data.emails[0].subject' AS subject "
    "FROM results JOIN runs USING (run_id) WHERE started_at > unixepoch('now', '-7 days')"
)


@click.command(
    epilog=f'Example (who got sequences this week):\n\n  octave-bulk query OUT.ndjson "{_EXAMPLE}"'
)
@click.argument("output", metavar="OUT.ndjson")
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of objects.")
@click.option(
    "--ledger",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The run history database, when not OUT.ledger.sqlite (a shared one).",
)
def query(output: str, sql: str, as_json: bool, ledger: Path | None) -> None:
    """Run one SQL statement over OUT's results and run history; nothing is written.

    Tables: results (OUT.ndjson) and errors (OUT.errors.ndjson), each line's JSON in
    ``record``; the ledger's runs, calls, contacts and series. Exit 2: no ledger, or SQL that
    SQLite refuses (its reason is printed).
    """
    from octave_bulk.export.query import open_query, run_query

    try:
        db = open_query(output, ledger=ledger)
        try:
            columns, rows = run_query(db, sql)
        finally:
            db.close()
    except OctaveBulkError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(ExitCode.USAGE)
    if as_json:
        import orjson

        records = [dict(zip(columns, row, strict=True)) for row in rows]
        click.echo(orjson.dumps(records, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(_table(columns, rows))
    click.echo(f"({len(rows):,} row{'' if len(rows) == 1 else 's'})", err=True)


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("\n", " ")


def _table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    """Columns aligned under their names, each as wide as its widest cell."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
    lines = [columns, ["-" * width for width in widths], *cells]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
