"""The shared ledger's run history: the :class:`~octave_bulk.state.store.RunRecords` of
``ob_run``, and the ``--budget``'s holds shared by every run of a job on every host.

Contract: a run's row is ``ob_run`` with its ``run_id`` and fields in ``summary`` (JSON, the
password masked); :meth:`PgRuns.hold_calls` counts the calls held or paid since a time by
every run of the job and takes a hold in **one transaction** under a transaction-level
advisory lock on the job, so two hosts never both hold the budget's last calls. The methods
are synchronous (the store contract says why): a blocking connection of their own. A database
error is a :class:`~octave_bulk.errors.StateError` naming the server, never the password.
Series samples are not kept on the shared ledger (``report --job`` shows no series charts).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from octave_bulk.errors import StateError
from octave_bulk.state.pg.dsn import LedgerUrl, describe_failure

__all__ = ["PgRuns"]

_SPENT = """
SELECT coalesce(sum(CASE WHEN summary ? 'held' THEN (summary->>'held')::int
                         ELSE coalesce((summary->>'paid_calls')::int, 0) END), 0)
FROM ob_run WHERE job = %s AND started_at >= to_timestamp(%s)
"""


class PgRuns:
    """The run history of one job in the shared ledger (see the module docstring).

    Args:
        url: the shared ledger.
        job: the job whose runs these are.
        worker: the worker the runs belong to.
    """

    def __init__(self, url: LedgerUrl, job: str, worker: str) -> None:
        self.url, self.job, self.worker = url, job, worker
        self._lock = threading.Lock()  # one statement at a time on the connection
        self._conn = self._connect()

    def close(self) -> None:
        self._conn.close()

    def _usable(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The connection, opened again when it broke (a server restarted)."""
        if self._conn.broken or self._conn.closed:
            self._conn.close()
            self._conn = self._connect()
        return self._conn

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        try:
            return psycopg.connect(
                self.url.dsn,
                autocommit=True,
                application_name="octave-bulk runs",
                connect_timeout=10,
            )
        except psycopg.Error as exc:
            raise StateError(describe_failure(self.url, exc)) from None

    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                cur = self._usable().execute(sql.encode(), params)
                return cur.fetchall() if cur.description else []
            except psycopg.Error as exc:
                raise StateError(describe_failure(self.url, exc)) from None

    def _json(self, fields: dict[str, Any]) -> Jsonb:
        text = self.url.hide(orjson.dumps(fields, default=str).decode())
        return Jsonb(orjson.loads(text))

    def start(self, run_id: str, output: str, **fields: Any) -> None:
        self._execute(
            "INSERT INTO ob_run (job, worker, summary) VALUES (%s, %s, %s)",
            (self.job, self.worker, self._json({"run_id": run_id, "output": output, **fields})),
        )

    def update(self, run_id: str, **fields: Any) -> None:
        ended = "exit_code" in fields
        self._execute(
            "UPDATE ob_run SET summary = summary || %s, exit_code = coalesce(%s, exit_code),"
            " ended_at = CASE WHEN %s THEN clock_timestamp() ELSE ended_at END"
            " WHERE job = %s AND summary->>'run_id' = %s",
            (self._json(fields), fields.get("exit_code"), ended, self.job, run_id),
        )

    def hold_calls(
        self, run_id: str, limit: int, since: float, batch: Callable[[int], int]
    ) -> tuple[int, int]:
        with self._lock:
            try:
                conn = self._usable()
                with conn.transaction():
                    conn.execute(
                        "SELECT pg_advisory_xact_lock(hashtext('ob_budget:' || %s))", (self.job,)
                    )
                    row = conn.execute(_SPENT.encode(), (self.job, since)).fetchone()
                    spent = int(row[0]) if row else 0
                    granted = batch(limit - spent) if limit > spent else 0
                    if granted > 0:
                        conn.execute(
                            "UPDATE ob_run SET summary = jsonb_set(summary, '{held}',"
                            " to_jsonb(coalesce((summary->>'held')::int, 0) + %s))"
                            " WHERE job = %s AND summary->>'run_id' = %s",
                            (granted, self.job, run_id),
                        )
            except psycopg.Error as exc:
                raise StateError(describe_failure(self.url, exc)) from None
        return granted, spent

    def release_calls(self, run_id: str, calls: int) -> None:
        self._execute(
            "UPDATE ob_run SET summary = jsonb_set(summary, '{held}',"
            " to_jsonb(greatest(coalesce((summary->>'held')::int, 0) - %s, 0)))"
            " WHERE job = %s AND summary->>'run_id' = %s",
            (calls, self.job, run_id),
        )

    def add_series(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Not kept on the shared ledger (see the module docstring)."""
