"""What ``plan`` and ``run --dry-run`` count against with a shared ledger.

Contract: :func:`plan_view` reads the job a run would work on (``--job``, else the agent), read
only: its done and failed contacts and those submitted (polled, never sent again). A ledger
not initialised yet holds nothing. Kept apart from ``state/pg/enqueue.py``, which builds on the
plan (``run/plan.py``), so that the plan can read the ledger without an import circle.
"""

from __future__ import annotations

import psycopg

from octave_bulk.errors import ConfigError, StateError
from octave_bulk.settings.model import Settings
from octave_bulk.state.pg.dsn import LedgerUrl, connect, describe_failure
from octave_bulk.state.pg.store import job_name
from octave_bulk.state.pg.view import PgView, read_view

__all__ = ["plan_view"]


async def plan_view(settings: Settings) -> PgView:
    """What the shared ledger holds for the job a run would work on, read only.

    Raises:
        ConfigError: no ledger URL.
        StateError: the ledger is out of reach.
    """
    if settings.ledger_url is None:
        raise ConfigError("--ledger postgresql://… (or OCTAVE_LEDGER) is required for a job")
    url = LedgerUrl.parse(settings.ledger_url.get_secret_value())
    job = job_name(settings)
    async with await connect(url) as conn:
        try:
            view = await read_view(conn, job)
            cur = await conn.execute(
                "SELECT request_id FROM ob_contact WHERE job = %s AND state = 'submitted'",
                (job,),
            )
            view.awaiting = frozenset(row[0] for row in await cur.fetchall())
        except psycopg.errors.UndefinedTable:  # never initialised: nothing done yet
            return PgView([])
        except psycopg.Error as exc:
            raise StateError(describe_failure(url, exc)) from None
    return view
