"""Reading a job on the shared ledger: its results, counts, runs and ``export --new`` marks,
for ``status/history/export/report --job NAME`` (docs/scale-out.md, "Reading a job").

Contract:

- :func:`stored_record` is how a settled outcome's NDJSON line becomes ``ob_contact.result`` or
  ``.error`` (``state/pg/store.py``): the line with every registered secret scrubbed
  (:mod:`octave_bulk.redact`, as the NDJSON writer does) and each ``\\u0000`` escape made
  ``\\ufffd`` (PostgreSQL's ``jsonb`` cannot hold a NUL character). A line that is not strict
  JSON (a body passed on verbatim with ``NaN`` or ``1e400`` in it) is re-encoded, those numbers
  ``null``; one that cannot be (a lone surrogate) is stored as ``{"unstorable": ...}``: no
  record can make a group's settle fail.
- :data:`SETTLING`, taken in every settle (a CTE of the one settle statement, before any
  ``settled_seq`` is drawn), takes the job's settle lock *shared*; :meth:`JobReader.horizon`
  takes it exclusively for an instant and reads the highest ``settled_seq`` then: every settle that drew a lower number has committed, and every later
  one draws a higher number. So an export up to the horizon never skips a row that commits
  late (``settled_seq`` is drawn in the settle, committed some milliseconds after).
- :class:`JobReader` opens a job (a blocking connection; :class:`~octave_bulk.errors.StateError`
  naming the server without its password when it is out of reach, or naming the job when the
  ledger has none of that name) and reads it: :meth:`~JobReader.status` (counts by state, paid
  calls, outcomes unknown, late answers, live workers), :meth:`~JobReader.runs` (``ob_run``
  rows shaped as the local history's), :meth:`~JobReader.result_lines` (the done contacts'
  records in ``settled_seq`` order, streamed by a server-side cursor: memory stays flat),
  :meth:`~JobReader.errors` and :meth:`~JobReader.calls` (for the report), and
  :meth:`~JobReader.export_mark` (an ``export --new`` increment under the mark's row lock, so
  two hosts exporting the same mark queue, and never repeat or skip a row).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg

from octave_bulk.errors import StateError
from octave_bulk.redact import scrub
from octave_bulk.state.pg.dsn import LedgerUrl, describe_failure

__all__ = ["SETTLING", "ExportIncrement", "JobReader", "stored_record"]

_SETTLE_CLASS = 0x0B5E7  # the first key of the job's settle lock (the second: the job's hash)
SETTLING = f"SELECT pg_advisory_xact_lock_shared({_SETTLE_CLASS}, hashtext(%(job)s))"
"""The job's settle lock, shared (``%(job)s``), taken before a settle draws a ``settled_seq``:
see the module docstring."""

_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")

_STATUS = """
SELECT state, count(*), coalesce(sum(paid_calls), 0), coalesce(sum(outcome_unknown), 0),
       coalesce(sum(late_answers), 0)
FROM ob_contact WHERE job = %s GROUP BY state
"""

_WORKERS = """
SELECT host, pid, extract(epoch FROM clock_timestamp() - heartbeat_at), in_flight, worker
FROM ob_worker WHERE job = %s AND state = 'live' ORDER BY started_at
"""

_RUNS = """
SELECT summary, worker, extract(epoch FROM started_at),
       extract(epoch FROM coalesce(ended_at, clock_timestamp())), exit_code
FROM ob_run WHERE job = %s ORDER BY started_at DESC, id DESC
"""

_RESULTS = b"""
SELECT result::text FROM ob_contact
WHERE job = %s AND state = 'done' AND result IS NOT NULL
  AND settled_seq > %s AND settled_seq <= coalesce(%s, settled_seq)
ORDER BY settled_seq LIMIT %s
"""

_RUN_DEFAULTS: dict[str, Any] = {
    "read": 0, "succeeded": 0, "failed": 0, "rejected": 0, "skipped_done": 0, "paid_calls": 0,
    "credits": 0.0, "paid_twice": 0, "finished_at": None, "stop_reason": None, "limits": None,
}  # fmt: skip


def stored_record(line: bytes) -> str:
    """An outcome's NDJSON line as ``ob_contact`` stores it (see the module docstring)."""
    line = scrub(line).rstrip(b"\n")
    if b"\\u0000" in line:
        line = _NUL.sub(rb"\1\\ufffd", line)
    try:
        orjson.loads(line)  # strict JSON: what jsonb takes
        return line.decode()
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        pass
    try:  # a body the API sent verbatim with NaN or 1e400 in it: those become null
        return orjson.dumps(json.loads(line.decode("utf-8", "replace"))).decode()
    except (ValueError, TypeError):  # a lone surrogate...: never a group the database refuses
        return '{"unstorable": "the record is not JSON the database can hold"}'


@dataclass
class ExportIncrement:
    """An ``export --new`` increment: the rows settled after ``after`` up to ``upto``."""

    after: int
    upto: int


class JobReader:
    """A job of the shared ledger, opened for reading (see the module docstring).

    Raises:
        StateError: the server is out of reach, or it holds no job ``job``.
    """

    def __init__(self, url: LedgerUrl, job: str) -> None:
        self.url, self.job = url, job
        try:
            self.conn = psycopg.connect(
                url.dsn, autocommit=True, application_name="octave-bulk read", connect_timeout=10
            )
        except psycopg.Error as exc:
            raise StateError(describe_failure(url, exc)) from None
        try:
            row = self._one("SELECT agent FROM ob_job WHERE job = %s", (job,))
        except StateError:
            self.conn.close()
            raise
        if row is None:
            self.conn.close()
            raise StateError(f"no job {job!r} in the shared ledger {url.display}")
        self.agent = str(row[0])

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> JobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql.encode(), params).fetchall()
        except psycopg.errors.UndefinedTable:
            raise StateError(
                f"no job {self.job!r} in the shared ledger {self.url.display} "
                "(it has no octave-bulk tables: `octave-bulk ledger init`)"
            ) from None
        except psycopg.Error as exc:
            raise StateError(describe_failure(self.url, exc)) from None

    def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def status(self) -> dict[str, Any]:
        """The job's counts by state, paid calls, outcomes unknown, late answers (after their claim was lost)
        and live workers (host, pid, heartbeat age in seconds, calls in flight)."""
        states = dict.fromkeys(("todo", "claimed", "submitted", "done", "failed"), 0)
        paid = unknown = late = 0
        for state, count, paid_calls, outcome_unknown, late_answers in self._all(
            _STATUS, (self.job,)
        ):
            states[str(state)] = int(count)
            paid, unknown = paid + int(paid_calls), unknown + int(outcome_unknown)
            late += int(late_answers)
        workers = [
            {"host": host, "pid": pid, "heartbeat_age_s": round(float(age), 1),
             "in_flight": in_flight, "worker": worker}
            for host, pid, age, in_flight, worker in self._all(_WORKERS, (self.job,))
        ]  # fmt: skip
        return {
            "job": self.job,
            "agent": self.agent,
            "ledger": self.url.display,
            "contacts": sum(states.values()),
            **states,
            "paid_calls": paid,
            "outcome_unknown": unknown,
            "late_answers": late,
            "workers": workers,
        }

    def runs(self, last: int | None = None) -> list[dict[str, Any]]:
        """The job's runs, newest first, with the local history's fields (``started_at``,
        ``updated_at``, ``finished_at`` as UNIX times) and the ``worker`` that ran each."""
        runs = []
        for summary, worker, started, updated, exit_code in self._all(_RUNS, (self.job,)):
            run = {**_RUN_DEFAULTS, **summary, "worker": worker}
            run.update(started_at=float(started), updated_at=float(updated))
            run["exit_code"] = exit_code
            runs.append(run)
        return runs[:last] if last else runs

    def result_lines(
        self, after: int = 0, upto: int | None = None, count: int | None = None
    ) -> Iterator[bytes]:
        """The done contacts' records settled after ``after`` (up to ``upto``; the first
        ``count``), in ``settled_seq`` order, one NDJSON line each (a server-side cursor)."""
        params = (self.job, after, upto, count)
        try:
            with self.conn.transaction(), self.conn.cursor(name="ob_results") as cursor:
                cursor.itersize = 500
                for (text,) in cursor.execute(_RESULTS, params):
                    yield text.encode() + b"\n"
        except psycopg.Error as exc:
            raise StateError(describe_failure(self.url, exc)) from None

    def errors(self, run_id: str) -> list[dict[str, Any]]:
        """The error records the run settled (the contacts whose last outcome it was)."""
        rows = self._all(
            "SELECT error FROM ob_contact WHERE job = %s AND error->>'runId' = %s"
            " ORDER BY settled_seq",
            (self.job, run_id),
        )
        return [row[0] for row in rows]

    def latencies_ms(self, run_id: str) -> list[float]:
        """The latencies of the run's successes whose result is still the contact's."""
        rows = self._all(
            "SELECT (result->>'latencyMs')::float8 FROM ob_contact WHERE job = %s"
            " AND result->>'runId' = %s AND result ? 'latencyMs'",
            (self.job, run_id),
        )
        return [float(row[0]) for row in rows]

    def calls(self, worker: str | None) -> tuple[dict[str, int], int]:
        """The worker's calls by outcome, and how many were a contact's second call or later."""
        rows = self._all(
            "SELECT outcome, count(*), count(*) - count(DISTINCT request_id) FROM ob_call"
            " WHERE job = %s AND worker = %s AND kind = 'call' GROUP BY outcome",
            (self.job, worker),
        )
        return {str(row[0]): int(row[1]) for row in rows}, sum(int(row[2]) for row in rows)

    def horizon(self) -> int:
        """The highest ``settled_seq`` below which every settle has committed."""
        key = (_SETTLE_CLASS, self.job)
        self._all("SELECT pg_advisory_lock(%s, hashtext(%s))", key)
        try:
            row = self._one(
                "SELECT coalesce(max(settled_seq), 0) FROM ob_contact WHERE job = %s", (self.job,)
            )
        finally:
            self._all("SELECT pg_advisory_unlock(%s, hashtext(%s))", key)
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def export_mark(self, mark: str) -> Iterator[ExportIncrement]:
        """The increment after the mark ``mark`` (per job), its row locked while the caller
        writes it; the mark moves to the increment's end when the block ends without an error
        (on an error it stays, and the next export writes those rows again)."""
        try:
            writer = psycopg.connect(
                self.url.dsn, application_name="octave-bulk export", connect_timeout=10
            )
        except psycopg.Error as exc:
            raise StateError(describe_failure(self.url, exc)) from None
        try:
            with writer, writer.transaction():
                writer.execute(
                    "INSERT INTO ob_export_mark (job, mark, upto) VALUES (%s, %s, 0)"
                    " ON CONFLICT DO NOTHING",
                    (self.job, mark),
                )
                row = writer.execute(
                    "SELECT upto FROM ob_export_mark WHERE job = %s AND mark = %s FOR UPDATE",
                    (self.job, mark),
                ).fetchone()
                increment = ExportIncrement(after=int(row[0]) if row else 0, upto=0)
                increment.upto = max(self.horizon(), increment.after)
                yield increment
                writer.execute(
                    "UPDATE ob_export_mark SET upto = %s, at = clock_timestamp()"
                    " WHERE job = %s AND mark = %s",
                    (increment.upto, self.job, mark),
                )
        except psycopg.Error as exc:
            raise StateError(describe_failure(self.url, exc)) from None
