"""The run history: every run of an output, in a SQLite database beside it.

Contract: ``OUT.ledger.sqlite`` (or the ``ledger`` setting, which several outputs may share:
each row names its output) holds one row per run - when it started and finished, the input,
the settings' fingerprint and the settings with the key redacted, its counts, paid calls,
credits, calls possibly paid twice, exit code, stop reason and the limits it found. A run
inserts its row before its first call, updates its paid calls every few seconds while it goes
and writes the whole row at the end; a run killed with -9 keeps the row of its last update
(``finished_at`` empty). ``history`` prints these rows. Table ``budget_holds`` keeps the calls
each run with ``--budget`` held before sending them (``run/spend.py``); the budget sums them,
and the paid calls of runs that hold none.
Table ``export_marks`` keeps, per output and preset, how many results lines ``export --new``
has already written out (and their bytes, and the mark before, for ``export --undo-mark``). Tables ``outputs``, ``outcomes``, ``contacts`` and
``calls`` index each output's files (``state/index.py``); table ``series`` keeps each run's
counters once a second (``observe/series.py``).

The NDJSON files stay the source of truth for results; this database adds what they do not
keep (the runs, every call's times) and an index of them that makes start-up fast. SQLite (stdlib ``sqlite3``) in WAL mode with ``synchronous=NORMAL``: one
writer at a time (a busy timeout waits for the other), readers never blocked. The schema is
migrated in code: ``PRAGMA user_version`` is the number of :data:`MIGRATIONS` applied.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from octave_bulk.errors import StateError
from octave_bulk.state.files import open_private

__all__ = ["MIGRATIONS", "RunHistory"]

MIGRATIONS = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        output TEXT NOT NULL,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL,
        input_path TEXT,
        input_identity TEXT,
        settings_fingerprint TEXT,
        settings TEXT,
        read INTEGER NOT NULL DEFAULT 0,
        succeeded INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        rejected INTEGER NOT NULL DEFAULT 0,
        skipped_done INTEGER NOT NULL DEFAULT 0,
        paid_calls INTEGER NOT NULL DEFAULT 0,
        credits REAL NOT NULL DEFAULT 0,
        paid_twice INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER,
        stop_reason TEXT,
        limits TEXT
    )""",
    "CREATE INDEX runs_by_start ON runs (started_at)",
    """CREATE TABLE export_marks (
        output TEXT NOT NULL,
        preset TEXT NOT NULL,
        lines INTEGER NOT NULL,
        exported_at REAL NOT NULL,
        PRIMARY KEY (output, preset)
    )""",
    # 2: the index of each output's files (state/index.py).
    """CREATE TABLE outputs (
        output_id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        results_bytes INTEGER NOT NULL DEFAULT 0,
        errors_bytes INTEGER NOT NULL DEFAULT 0,
        folded INTEGER NOT NULL DEFAULT 0,
        snapshot BLOB
    )""",
    """CREATE TABLE outcomes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        output_id INTEGER NOT NULL,
        person INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        state TEXT NOT NULL,
        run_id TEXT,
        line_offset INTEGER NOT NULL,
        at REAL NOT NULL
    )""",
    """CREATE TABLE contacts (
        output_id INTEGER NOT NULL,
        person INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        state TEXT NOT NULL,
        run_id TEXT,
        success_request_id TEXT,
        success_run_id TEXT,
        success_offset INTEGER,
        crm_ids TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        PRIMARY KEY (output_id, person)
    ) WITHOUT ROWID""",
    """CREATE TABLE calls (
        output_id INTEGER NOT NULL,
        request_id TEXT NOT NULL,
        run_id TEXT,
        attempt INTEGER NOT NULL,
        sent_at REAL,
        answered_at REAL,
        status INTEGER,
        outcome TEXT NOT NULL,
        credits REAL NOT NULL DEFAULT 0,
        paid_twice INTEGER NOT NULL DEFAULT 0
    )""",
    # 3: an export mark also says where its lines end, so that export --new seeks there.
    "ALTER TABLE export_marks ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0",
    # 4: each run's counters once a second (observe/series.py), for ``octave-bulk report``.
    """CREATE TABLE series (
        run_id TEXT NOT NULL,
        at REAL NOT NULL,
        calls INTEGER NOT NULL,
        succeeded INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        rate_limited INTEGER NOT NULL,
        retried INTEGER NOT NULL,
        timeouts INTEGER NOT NULL,
        in_flight INTEGER NOT NULL,
        retrying INTEGER NOT NULL,
        credits REAL NOT NULL,
        rate REAL,
        window INTEGER,
        paused INTEGER NOT NULL,
        p50_ms REAL,
        p95_ms REAL,
        p99_ms REAL,
        PRIMARY KEY (run_id, at)
    ) WITHOUT ROWID""",
    # 5: --budget's holds (run/spend.py): calls a run may send, durable before it sends them.
    """CREATE TABLE budget_holds (
        run_id TEXT NOT NULL,
        at REAL NOT NULL,
        calls INTEGER NOT NULL
    )""",
    "CREATE INDEX budget_holds_by_run ON budget_holds (run_id)",
    # 6: an export mark keeps the one before it, for ``export --undo-mark``.
    "ALTER TABLE export_marks ADD COLUMN previous_lines INTEGER",
    "ALTER TABLE export_marks ADD COLUMN previous_bytes INTEGER",
    # 7: an async submit's call is marked once its job's outcome is durable; the submits not
    # marked are the jobs in flight (state/jobs.py compares them with OUT.jobs.ndjson). The
    # submits of earlier versions count as settled (nothing tells).
    "ALTER TABLE calls ADD COLUMN job_settled INTEGER",
    "UPDATE calls SET job_settled = 1 WHERE outcome = 'submitted'",
    """CREATE INDEX calls_unsettled_submits ON calls (output_id, request_id)
        WHERE outcome = 'submitted' AND job_settled IS NULL""",
)
"""The schema, one step per entry; a database at version N gets steps N+1.. applied."""

_BUSY_MS = 10_000  # how long a writer waits for another one, milliseconds
# A new mark; the one it replaces (0 for the first) becomes the previous one.
_SET_MARK = """
INSERT OR REPLACE INTO export_marks
    (output, preset, lines, exported_at, bytes, previous_lines, previous_bytes)
VALUES (:output, :preset, :lines, :at, :bytes,
    COALESCE((SELECT lines FROM export_marks WHERE output = :output AND preset = :preset), 0),
    COALESCE((SELECT bytes FROM export_marks WHERE output = :output AND preset = :preset), 0))
"""
_HOLDS_KEPT = 8 * 86_400  # seconds budget holds are kept: longer than the longest period

# Calls spent within a budget's period: the holds of the runs that hold (run/spend.py), and
# the paid calls of the runs that do not (no --budget, or a version before the holds).
_INSERT_SERIES = f"INSERT OR REPLACE INTO series VALUES ({', '.join('?' * 17)})"  # noqa: S608

_SPENT = """
SELECT (SELECT COALESCE(SUM(calls), 0) FROM budget_holds WHERE at >= :since)
     + (SELECT COALESCE(SUM(paid_calls), 0) FROM runs WHERE updated_at >= :since
        AND run_id NOT IN (SELECT run_id FROM budget_holds))
"""


class RunHistory:
    """The runs of one ledger database; open with :meth:`open` (a context manager)."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db, self.path = connection, path
        self._lock = threading.Lock()  # one transaction at a time on the shared connection
        self._columns = {row[1] for row in connection.execute("PRAGMA table_info(runs)")}

    @classmethod
    @contextlib.contextmanager
    def open(
        cls, path: Path, *, readonly: bool = False, timeout: float = _BUSY_MS / 1000
    ) -> Iterator[RunHistory]:
        """Open (creating and migrating unless ``readonly``) the database at ``path``;
        ``timeout``: how long a write waits for another writer, seconds.

        Raises:
            StateError: the file is not a database, is newer than this version, or is locked
                for longer than the busy timeout.
        """
        if readonly and not path.exists():
            raise StateError(f"{path}: no run history yet (no run has written it)")
        try:
            if not readonly:
                _private(path)
        except OSError as exc:
            raise StateError(f"{path}: cannot open the ledger ({exc.strerror})") from None
        try:
            uri = f"{path.resolve().as_uri()}?mode=ro" if readonly else str(path)
            db = sqlite3.connect(
                uri,
                uri=readonly,
                timeout=timeout,
                isolation_level=None,
                check_same_thread=False,  # the run updates it from a worker thread, in turn
            )
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the ledger ({exc})") from None
        try:
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {round(timeout * 1000)}")
            if not readonly:
                _wal(db, timeout)
                db.execute("PRAGMA synchronous = NORMAL")
                _migrate(db, path)
                for suffix in ("-wal", "-shm"):  # SQLite copies the database's mode; old ones
                    _private(path.with_name(path.name + suffix), create=False)
            yield cls(db, path)
        except sqlite3.DatabaseError as exc:
            raise StateError(
                f"{path}: the ledger cannot be used ({exc}); results are in the NDJSON files: "
                "move the ledger aside to start a new history"
            ) from None
        finally:
            db.close()

    def start(self, run_id: str, output: str | Path, **fields: Any) -> None:
        """Insert a run's row before its first call (``fields``: columns of the table)."""
        now = time.time()
        row = {"run_id": run_id, "output": str(output), "started_at": now, "updated_at": now}
        row |= {k: _column(v) for k, v in fields.items()}
        names = ", ".join(self._checked(row))
        marks = ", ".join(f":{name}" for name in row)
        self._write(f"INSERT INTO runs ({names}) VALUES ({marks})", row)  # noqa: S608 (checked names)

    def update(self, run_id: str, **fields: Any) -> None:
        """Update columns of a run's row (``updated_at`` too)."""
        row = {k: _column(v) for k, v in fields.items()} | {"updated_at": time.time()}
        assignments = ", ".join(f"{name} = :{name}" for name in self._checked(row))
        self._write(
            f"UPDATE runs SET {assignments} WHERE run_id = :run_id",  # noqa: S608 (checked names)
            row | {"run_id": run_id},
        )

    def hold_calls(
        self, run_id: str, limit: int, since: float, batch: Callable[[int], int]
    ) -> tuple[int, int]:
        """In one write transaction: the calls spent since ``since`` by every run of the
        ledger (holds, and the paid calls of runs without holds), and a hold for ``run_id``
        of ``batch(left)`` calls when ``left = limit - spent`` is above 0. Returns (calls
        held now, calls spent before)."""
        with self.transaction() as db:
            spent = int(db.execute(_SPENT, {"since": since}).fetchone()[0])
            left = limit - spent
            granted = batch(left) if left > 0 else 0
            if granted:
                db.execute(
                    "INSERT INTO budget_holds VALUES (?, ?, ?)", (run_id, time.time(), granted)
                )
        return granted, spent

    def release_calls(self, run_id: str, calls: int) -> None:
        """Give back ``calls`` of the run's holds, newest first (and forget holds older than
        any period)."""
        with self.transaction() as db:
            holds = db.execute(
                "SELECT rowid, calls FROM budget_holds WHERE run_id = ? ORDER BY rowid DESC",
                (run_id,),
            ).fetchall()
            for rowid, held in holds:
                if calls <= 0:
                    break
                cut = min(held, calls)
                db.execute("UPDATE budget_holds SET calls = ? WHERE rowid = ?", (held - cut, rowid))
                calls -= cut
            db.execute("DELETE FROM budget_holds WHERE at < ?", (time.time() - _HOLDS_KEPT,))

    def add_series(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Samples of the run's counters (``observe/series.py``: run id, then the columns of
        table ``series`` in order), in one transaction."""
        with self.transaction() as db:
            db.executemany(_INSERT_SERIES, rows)

    def runs(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The runs, newest first (JSON columns decoded)."""
        query = "SELECT * FROM runs ORDER BY started_at DESC"
        rows = self._db.execute(query + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        return [_decoded(row) for row in rows]

    def export_mark(self, output: Path, preset: str) -> tuple[int, int]:
        """The results lines already exported with ``export --new`` for this preset, and the
        bytes they take (0 when unknown)."""
        rows = self.query(
            "SELECT lines, bytes FROM export_marks WHERE output = ? AND preset = ?",
            (str(output.resolve()), preset),
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def set_export_mark(self, output: Path, preset: str, lines: int, size: int) -> None:
        """Record that the first ``lines`` results lines (``size`` bytes) were exported
        (once written); the mark it replaces is kept for :meth:`undo_export_mark`."""
        values = {"output": str(output.resolve()), "preset": preset, "lines": lines}
        self._write(
            _SET_MARK,
            values | {"at": time.time(), "bytes": size},
        )

    def undo_export_mark(self, output: Path, preset: str) -> tuple[int, int] | None:
        """Move the preset's mark back to where the last ``export --new`` found it; returns
        (lines marked before the undo, lines marked now), None when there is nothing to undo
        (no mark, or undone already: one step back only)."""
        key = {"output": str(output.resolve()), "preset": preset}
        with self.transaction() as db:
            row = db.execute(
                "SELECT lines, previous_lines FROM export_marks "
                "WHERE output = :output AND preset = :preset",
                key,
            ).fetchone()
            if row is None or row[1] is None:
                return None
            db.execute(
                "UPDATE export_marks SET lines = previous_lines, bytes = previous_bytes, "
                "previous_lines = NULL, previous_bytes = NULL, exported_at = :at "
                "WHERE output = :output AND preset = :preset",
                key | {"at": time.time()},
            )
        return int(row[0]), int(row[1])

    def _checked(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """The row, once every name in it is a column of ``runs`` (names go into the SQL
        text; values are bound)."""
        unknown = set(row) - self._columns
        if unknown:
            raise ValueError(f"not columns of runs: {sorted(unknown)}")
        return row

    def _write(self, sql: str, values: Mapping[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(sql, values)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed or rolled back; a database
        locked past the busy timeout or broken raises StateError. Thread-safe: the run
        writes from the committer's thread and from the event loop's."""
        try:
            with self._lock, self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield self._db
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot write the ledger ({exc})") from None

    def query(self, sql: str, values: Any = ()) -> list[sqlite3.Row]:
        """The rows of one read-only statement."""
        with self._lock:
            return self._db.execute(sql, values).fetchall()


def _private(path: Path, *, create: bool = True) -> None:
    """Make ``path`` mode 0600 (creating it empty when ``create``) before SQLite opens it:
    the ledger holds settings, paths and CRM ids, and SQLite creates its ``-wal`` and
    ``-shm`` with the database's mode. A file of another owner (a shared ledger) is left."""
    try:
        os.close(open_private(path, os.O_RDWR | (os.O_CREAT if create else 0)))
    except FileNotFoundError:
        if create:
            raise
    except PermissionError:
        pass


def _wal(db: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL. The switch needs the database to itself, and SQLite answers "locked"
    at once (no busy wait) while another process opens a new database: try again until
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StateError(
            f"{path}: the ledger was written by a newer octave-bulk (schema {version}); "
            "upgrade to use it"
        )
    if version == len(MIGRATIONS):
        return
    with db:
        db.execute("BEGIN IMMEDIATE")
        # Read again under the write lock: another process may have migrated meanwhile (two
        # runs starting at once on a new shared ledger).
        version = db.execute("PRAGMA user_version").fetchone()[0]
        for step in MIGRATIONS[version:]:
            db.execute(step)
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")


def _column(value: Any) -> Any:
    """A value as stored: dicts and lists as JSON text, enums as their value."""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return getattr(value, "value", value)


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    for name in ("input_identity", "settings", "limits"):
        if isinstance(record.get(name), str):
            record[name] = json.loads(record[name])
    return record
