"""SQL over an output's results and its run history, read-only (``octave-bulk query``).

Contract: :func:`open_query` returns a SQLite connection on which nothing can be written: the
output's ledger (``OUT.ledger.sqlite``: ``runs``, ``calls``, ``contacts``, ``series`` ...) is
opened read-only (a ``mode=ro`` URI), and the output's files are loaded into temporary tables
of that connection (:data:`TABLES`), after which ``PRAGMA query_only`` refuses any write. The
ledger file itself is never changed: no view is stored in it, so ``sqlite3`` and Datasette
open it as it is, and the results (which live in ``OUT.ndjson``, not in the ledger) are read
anew by each query. Each table keeps the whole line as JSON text in ``record``, so any field
of a response is ``record ->> '$.response.data...'``. Lines that are not JSON objects (a torn
last line) are left out. docs/design.md, "SQL over results", gives the tables and examples.

:func:`run_query` runs one statement and returns its column names and rows. Raises
:class:`StateError` when the output has no ledger, :class:`ConfigError` for SQL that SQLite
refuses (a syntax error, a write, several statements), naming SQLite's reason.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from octave_bulk.errors import ConfigError, StateError
from octave_bulk.export.results import read_lines
from octave_bulk.state.paths import OutputPaths

__all__ = ["TABLES", "open_query", "run_query"]

TABLES = {
    "results": (
        "OUT.ndjson: one row per line (a success)",
        ("line", "request_id", "run_id", "person_key", "email", "completed_at", "record"),
    ),
    "errors": (
        "OUT.errors.ndjson: one row per failed contact",
        ("line", "request_id", "run_id", "kind", "message", "record"),
    ),
}
"""The temporary tables: name -> (what one row is, its columns)."""


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _rows(path: Path, table: str) -> Iterator[tuple[Any, ...]]:
    """The rows of ``table`` from the NDJSON file at ``path`` (none when it does not exist)."""
    if not path.exists():
        return
    for number, line in enumerate(read_lines(path), start=1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        text = line.decode("utf-8").rstrip("\n")
        ids = (number, record.get("requestId"), record.get("runId"))
        if table == "results":
            contact = _object(record.get("contact"))
            yield (*ids, record.get("personKey"), contact.get("email"),
                   record.get("completedAt"), text)  # fmt: skip
        else:
            error = _object(record.get("error"))
            yield (*ids, error.get("kind"), error.get("message"), text)


def open_query(output: str | Path, *, ledger: Path | None = None) -> sqlite3.Connection:
    """A read-only connection: the ledger, and the output's files as temporary tables.

    Raises:
        StateError: the ledger does not exist or cannot be opened.
    """
    paths = OutputPaths.for_output(output)
    database = ledger or paths.ledger
    if not database.exists():
        raise StateError(f"{database}: no ledger (run octave-bulk run first, or pass --ledger)")
    try:
        db = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
        files = {"results": paths.results, "errors": paths.errors}
        for table, (_, columns) in TABLES.items():
            db.execute(f"CREATE TEMP TABLE {table} ({', '.join(columns)})")
            marks = ", ".join("?" * len(columns))
            db.executemany(f"INSERT INTO {table} VALUES ({marks})", _rows(files[table], table))  # noqa: S608 - names from TABLES
        db.execute("CREATE INDEX temp.results_by_run ON results (run_id)")
        db.commit()
        db.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StateError(f"{database}: cannot open the ledger to query it ({exc})") from None
    return db


def run_query(db: sqlite3.Connection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """One SQL statement's column names and rows.

    Raises:
        ConfigError: SQLite refused the statement (its reason is in the message).
    """
    try:
        cursor = db.execute(sql)
        rows = cursor.fetchall()
    except (sqlite3.Error, sqlite3.Warning) as exc:
        reason = str(exc)
        if "readonly" in reason or "query_only" in reason or "read-only" in reason:
            reason += " (query only reads: the ledger and the results stay as they are)"
        raise ConfigError(f"SQL: {reason}") from None
    return [column[0] for column in cursor.description or ()], rows
