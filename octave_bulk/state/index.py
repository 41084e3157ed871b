"""The ledger's index of one output: every line of its files, every call, each person's
latest outcome, and a start-up snapshot.

Contract: four tables of the ledger database (``state/history.py`` opens and migrates it)
describe each output's files; ``OUT.ndjson`` and ``OUT.errors.ndjson`` stay the source of truth.

- ``outcomes``: one row per line of the two files, appended in file order - the person (hashed
  person key, ``octave_bulk.identity``), requestId, state (``ok`` for a results line,
  ``retryable`` or ``permanent`` for an errors line), run, the line's byte offset in its file.
- ``calls``: every attempt - requestId, run, attempt number, sent and answered (UNIX times),
  HTTP status, outcome (``success`` or an error kind), credits, and whether the call may have
  paid a second time for a contact in flight when an earlier run died. Calls indexed from the
  files (a catch-up or a rebuild) have attempt 0 and no times: the files do not keep them. An
  async submit's call (outcome ``submitted``) gets ``job_settled`` once its job's outcome is
  durable: the submits without it are the jobs in flight (:meth:`OutputIndex.unsettled_submits`,
  a partial index keeps them few to read).
- ``contacts``: one row per person, folded from ``outcomes``: the latest requestId, its state
  and run; the latest *success*: its requestId, run and byte offset in ``OUT.ndjson``; first
  and last seen; the CRM ids of the person's other records (input rows rejected as the same
  person, so that a write-back reaches them all). The requestId is the content fingerprint:
  derived from person key and content, it changes for one person exactly when the content does.
- ``outputs``: per output, how many bytes of each file the rows cover, the last ``outcomes``
  row folded into ``contacts``, and a *snapshot* of the start-up state (done-set, people,
  failed sets, as ``IdSet`` bytes) with the offsets it covers.

:meth:`OutputIndex.record` runs in the sink's group commit right after the fsync: a group's
``outcomes`` and ``calls`` rows (appended: cheap) and the new coverage in one transaction. A
kill between the two leaves lines past the coverage; the next start indexes them
(:class:`CatchUp`), so after every start the ledger and the files agree. A file shorter than
the coverage (replaced, cut by hand) is indexed again from the start. :meth:`OutputIndex.fold`
brings ``contacts`` up to date in one transaction (each person's page touched once, instead of
a random-key upsert per group: measured 7-24 us a row in 256-row transactions), at the end of
a run and after a catch-up. The snapshot is what makes start-up fast: a million people load as
a few blobs instead of a million rows or a million scanned lines.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from octave_bulk.state.history import RunHistory
from octave_bulk.state.idset import IdSet
from octave_bulk.state.rows import CallRow, OutcomeRow

__all__ = ["CallRow", "CatchUp", "OutcomeRow", "OutputIndex", "Snapshot", "signed"]


_INSERT_OUTCOME = "INSERT INTO outcomes VALUES (NULL, ?, ?, ?, ?, ?, ?, ?)"
_FOLD = """
INSERT INTO contacts (output_id, person, request_id, state, run_id, success_request_id,
    success_run_id, success_offset, first_seen, last_seen)
SELECT output_id, person, request_id, state, run_id,
    CASE WHEN state = 'ok' THEN request_id END, CASE WHEN state = 'ok' THEN run_id END,
    CASE WHEN state = 'ok' THEN line_offset END, at, at
FROM outcomes WHERE output_id = ? AND seq > ? ORDER BY seq
ON CONFLICT (output_id, person) DO UPDATE SET
    request_id = excluded.request_id, state = excluded.state, run_id = excluded.run_id,
    last_seen = excluded.last_seen,
    success_request_id = COALESCE(excluded.success_request_id, success_request_id),
    success_run_id = COALESCE(excluded.success_run_id, success_run_id),
    success_offset = COALESCE(excluded.success_offset, success_offset)
"""
_INSERT_CALL = (
    "INSERT INTO calls (output_id, request_id, run_id, attempt, sent_at, answered_at, status, "
    "outcome, credits, paid_twice) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SETTLE_SUBMIT = (
    "UPDATE calls SET job_settled = 1 WHERE output_id = ? AND request_id = ? "
    "AND outcome = 'submitted' AND job_settled IS NULL"
)
_CATCH_UP_ROWS = 20_000  # rows per transaction while indexing the files (bounded memory)


def signed(key: int) -> int:
    """A 64-bit ``id_key`` as SQLite stores integers (signed)."""
    return key - (1 << 64) if key >= 1 << 63 else key


@dataclass
class Snapshot:
    """The start-up state saved at the end of a run, and the file offsets it covers."""

    results_bytes: int
    results_lines: int
    bad_lines: int
    errors_bytes: int
    tail: bytes
    """The last bytes before ``results_bytes``: the file must still hold them."""
    done: IdSet
    persons: IdSet
    permanent: set[int]
    retryable: set[int]

    def to_bytes(self) -> bytes:
        blobs = [
            self.done.to_bytes(),
            self.persons.to_bytes(),
            _keys(self.permanent),
            _keys(self.retryable),
        ]
        header = {
            "results_bytes": self.results_bytes,
            "results_lines": self.results_lines,
            "bad_lines": self.bad_lines,
            "errors_bytes": self.errors_bytes,
            "tail": self.tail.hex(),
            "blobs": [len(blob) for blob in blobs],
        }
        encoded = json.dumps(header).encode()
        return struct.pack("<I", len(encoded)) + encoded + b"".join(blobs)

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        """ValueError when ``data`` is not a snapshot."""
        (length,) = struct.unpack_from("<I", data)
        header = json.loads(data[4 : 4 + length])
        blobs, at = [], 4 + length
        for size in header["blobs"]:
            blobs.append(data[at : at + size])
            at += size
        if at != len(data) or len(blobs) != 4:
            raise ValueError("truncated snapshot")
        return cls(
            header["results_bytes"],
            header["results_lines"],
            header["bad_lines"],
            header["errors_bytes"],
            bytes.fromhex(header["tail"]),
            IdSet.from_bytes(blobs[0]),
            IdSet.from_bytes(blobs[1]),
            set(struct.unpack(f"<{len(blobs[2]) // 8}Q", blobs[2])),
            set(struct.unpack(f"<{len(blobs[3]) // 8}Q", blobs[3])),
        )


def _keys(keys: set[int]) -> bytes:
    return struct.pack(f"<{len(keys)}Q", *keys)


class OutputIndex:
    """One output's rows in the ledger (see the module docstring).

    Args:
        history: the open ledger database.
        output: ``OUT.ndjson`` (its resolved path names its rows).
        readonly: for readers (status, dry run): the output's row is looked up, not created.
    """

    def __init__(self, history: RunHistory, output: Path, *, readonly: bool = False) -> None:
        self.history, self.path = history, str(output.resolve())
        self.output_id: int | None = None
        if not readonly:
            with history.transaction() as db:  # another output's run may be creating its own
                db.execute("INSERT OR IGNORE INTO outputs (path) VALUES (?)", (self.path,))
        found = history.query("SELECT output_id FROM outputs WHERE path = ?", (self.path,))
        if found:
            self.output_id = int(found[0][0])

    def coverage(self) -> tuple[int, int]:
        """Bytes of (results, errors) that the rows cover."""
        rows = self.history.query(
            "SELECT results_bytes, errors_bytes FROM outputs WHERE output_id = ?",
            (self.output_id,),
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)

    def snapshot(self) -> Snapshot | None:
        """The saved start-up state, None when there is none (or it cannot be read)."""
        rows = self.history.query(
            "SELECT snapshot FROM outputs WHERE output_id = ?", (self.output_id,)
        )
        if not rows or rows[0][0] is None:
            return None
        try:
            return Snapshot.from_bytes(rows[0][0])
        except (ValueError, KeyError, struct.error):
            return None

    def save_snapshot(self, snapshot: Snapshot) -> None:
        with self.history.transaction() as db:
            db.execute(
                "UPDATE outputs SET snapshot = ? WHERE output_id = ?",
                (snapshot.to_bytes(), self.output_id),
            )

    def record(
        self,
        outcomes: Sequence[OutcomeRow],
        calls: Sequence[CallRow],
        coverage: tuple[int, int],
        settled_jobs: Sequence[str] = (),
    ) -> None:
        """Index a group of lines and their calls, mark the submits of ``settled_jobs``
        (requestIds of async jobs whose outcome is in the group) and move the coverage to
        ``coverage``, in one transaction."""
        now, oid = time.time(), self.output_id
        lines = [
            (oid, signed(person), rid, state, run, offset, now)
            for person, rid, state, run, offset in outcomes
        ]
        with self.history.transaction() as db:
            db.executemany(_INSERT_OUTCOME, lines)
            db.executemany(_INSERT_CALL, [(oid, *call) for call in calls])
            db.executemany(_SETTLE_SUBMIT, [(oid, rid) for rid in settled_jobs])
            db.execute(
                "UPDATE outputs SET results_bytes = ?, errors_bytes = ? WHERE output_id = ?",
                (*coverage, oid),
            )

    def unsettled_submits(self) -> list[str]:
        """requestIds of the async submits whose job has no durable outcome yet."""
        rows = self.history.query(
            "SELECT DISTINCT request_id FROM calls "
            "WHERE output_id = ? AND outcome = 'submitted' AND job_settled IS NULL",
            (self.output_id,),
        )
        return [row[0] for row in rows]

    def fold(self) -> None:
        """Bring ``contacts`` up to date with the outcomes recorded since the last fold."""
        with self.history.transaction() as db:
            (folded,) = db.execute(
                "SELECT folded FROM outputs WHERE output_id = ?", (self.output_id,)
            ).fetchone()
            (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outcomes").fetchone()
            if last > folded:
                db.execute(_FOLD, (self.output_id, folded))
                db.execute(
                    "UPDATE outputs SET folded = ? WHERE output_id = ?", (last, self.output_id)
                )

    def latest_successes(self) -> dict[int, tuple[str, int]]:
        """Person -> (requestId, byte offset) of their latest success, folded or not."""
        rows = self.history.query(
            "SELECT person, success_request_id, success_offset FROM contacts "
            "WHERE output_id = ? AND success_request_id IS NOT NULL",
            (self.output_id,),
        )
        latest = {row[0]: (row[1], row[2]) for row in rows}
        unfolded = self.history.query(
            "SELECT person, request_id, line_offset FROM outcomes WHERE output_id = ? AND "
            "seq > (SELECT folded FROM outputs WHERE output_id = ?) AND state = 'ok' "
            "ORDER BY seq",
            (self.output_id, self.output_id),
        )
        latest.update((row[0], (row[1], row[2])) for row in unfolded)
        return latest

    def add_other_records(self, records: Sequence[tuple[int, list[str]]]) -> None:
        """Note the CRM ids of a person's other records (rows rejected as the same person),
        kept in ``contacts.crm_ids`` for a write-back to reach them all."""
        if not records or self.output_id is None:
            return
        merged: dict[int, set[str]] = {}
        for person, ids in records:
            merged.setdefault(signed(person), set()).update(ids)
        with self.history.transaction() as db:
            for person, found in merged.items():
                row = db.execute(
                    "SELECT crm_ids FROM contacts WHERE output_id = ? AND person = ?",
                    (self.output_id, person),
                ).fetchone()
                if row is not None:
                    known = set(json.loads(row[0])) if row[0] else set()
                    db.execute(
                        "UPDATE contacts SET crm_ids = ? WHERE output_id = ? AND person = ?",
                        (json.dumps(sorted(known | found)), self.output_id, person),
                    )

    def other_records(self) -> dict[int, str]:
        """Person (``id_key``) -> the CRM ids of their other records, ``;``-separated."""
        rows = self.history.query(
            "SELECT person, crm_ids FROM contacts WHERE output_id = ? AND crm_ids IS NOT NULL",
            (self.output_id,),
        )
        return {row[0] % (1 << 64): ";".join(json.loads(row[1])) for row in rows}

    def reset(self) -> None:
        """Forget the output's rows, coverage and snapshot (before indexing it again)."""
        with self.history.transaction() as db:
            for table in ("contacts", "calls", "outcomes"):
                db.execute(f"DELETE FROM {table} WHERE output_id = ?", (self.output_id,))  # noqa: S608
            db.execute(
                "UPDATE outputs SET results_bytes = 0, errors_bytes = 0, snapshot = NULL "
                "WHERE output_id = ?",
                (self.output_id,),
            )

    def counts(self) -> dict[str, Any]:
        """People by state, calls, and calls that may have paid twice."""
        oid = (self.output_id,)
        people = self.history.query(
            "SELECT state, COUNT(*) FROM contacts WHERE output_id = ? GROUP BY state", oid
        )
        calls = self.history.query(
            "SELECT COUNT(*), COALESCE(SUM(paid_twice), 0) FROM calls WHERE output_id = ?", oid
        )
        return {
            "people": {row[0]: int(row[1]) for row in people},
            "calls": int(calls[0][0]),
            "paid_twice": int(calls[0][1]),
        }


class CatchUp:
    """Indexes the lines a scan reads past the index's coverage, ``_CATCH_UP_ROWS`` rows per
    transaction, each moving the coverage to the first line not yet indexed.

    Args:
        index: the output's index.
        covered: its coverage, (results bytes, errors bytes).
        sizes: the files' sizes (complete lines): a coverage beyond them means the files were
            cut or replaced, and the output is indexed again from the start (``covered`` then
            reads (0, 0)).
    """

    def __init__(self, index: OutputIndex, covered: tuple[int, int], sizes: tuple[int, int]):
        if covered[0] > sizes[0] or covered[1] > sizes[1]:
            index.reset()
            covered = (0, 0)
        self.index, self.covered = index, covered
        self._pending: list[OutcomeRow] = []
        self._results_end: int | None = None  # set once the results file is read
        self.flushed = False
        """Whether rows were indexed (``contacts`` then needs a :meth:`OutputIndex.fold`)."""

    def add_result(self, row: OutcomeRow) -> None:
        """A results line (``row[4]``: its offset)."""
        if row[4] >= self.covered[0]:
            if len(self._pending) >= _CATCH_UP_ROWS:
                self._flush((row[4], self.covered[1]))
            self._pending.append(row)

    def results_read(self, size: int) -> None:
        """The results file is read up to ``size``: later flushes cover all of it."""
        self._results_end = size

    def add_error(self, row: OutcomeRow) -> None:
        """An errors line (after every results line)."""
        if row[4] >= self.covered[1]:
            if len(self._pending) >= _CATCH_UP_ROWS:
                self._flush((self._results_end or self.covered[0], row[4]))
            self._pending.append(row)

    def finish(self, errors_size: int) -> None:
        """Both files are read: index the rest, and fold it into ``contacts``."""
        sizes = (self._results_end or self.covered[0], errors_size)
        if self._pending or sizes != self.covered:
            self._flush(sizes)
        if self.flushed:
            self.index.fold()

    def _flush(self, coverage: tuple[int, int]) -> None:
        calls: list[CallRow] = [
            (rid, run, 0, None, None, None, "success" if state == "ok" else state, 0.0, 0)
            for _, rid, state, run, _ in self._pending
        ]
        self.index.record(self._pending, calls, coverage)
        self._pending, self.covered = [], coverage
        self.flushed = True
