"""A window the judge finds (no ``--concurrency``) is enforced across hosts through the
shared window's leased permits, and only while the judge publishes one.

Without ``--concurrency`` a shared-ledger worker creates permits 1..the safety bound and
takes none while ``ob_rate.window_size`` is NULL (the judge publishes NULL while its search's
window sits at the bound: no cap found), so the rate regime makes no permit statement. Once
a booking reads a window, every attempt takes a permit of slots 1..that window, and when the
judge clears it again, attempts waiting for a permit go on without one. Counted from the
database's rows (the permits' holders, a statement trigger on ``ob_permit``), never from the
test's clock.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest

from octave_bulk.limits.adaptive import WINDOW_BOUND
from octave_bulk.limits.shared_pg import SharedRateLimiter
from octave_bulk.simulator import Latency, parse_rate_limit
from octave_bulk.state.pg.dsn import LedgerUrl, PgConnection, connect
from octave_bulk.state.pg.schema import migrate
from tests.helpers import start_run
from tests.test_pg_judge import finish, lists


def _held(db_url: str, key: str) -> dict[int, str]:
    """The permits held now: slot -> holder."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT slot, holder FROM ob_permit WHERE key = %s AND holder IS NOT NULL", (key,)
        )
        return dict(rows.fetchall())


def _publish(db_url: str, key: str, window: int | None) -> None:
    """What the judge does when its search finds a window (or clears it)."""
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE ob_rate SET window_size = %s WHERE key = %s", (window, key))


async def _migrated(db_url: str) -> LedgerUrl:
    url = LedgerUrl.parse(db_url)
    async with await connect(url) as conn:
        await migrate(conn)
    return url


@pytest.mark.slow
async def test_a_found_window_takes_permits_only_while_the_judge_publishes_one(
    db_url: str,
) -> None:
    url = await _migrated(db_url)

    async def open_connection() -> PgConnection:
        return await connect(url)

    key = "found"
    limiter = SharedRateLimiter(
        open_connection, key=key, rate=1000.0, found_window=WINDOW_BOUND, permit_poll=0.05
    )
    await limiter.open()
    try:
        unbounded = [await limiter.acquire() for _ in range(4)]  # no window published
        assert [t.permit for t in unbounded] == [None] * 4 and _held(db_url, key) == {}
        _publish(db_url, key, 2)  # the judge found a window of 2
        learnt = await limiter.acquire()  # its booking reads the window: enforced from now
        first, second = await limiter.acquire(), await limiter.acquire()
        assert {first.permit, second.permit} == {1, 2}
        assert set(_held(db_url, key)) == {1, 2}
        waiting = asyncio.create_task(limiter.acquire())  # both permits busy: it waits
        for ticket in [*unbounded, learnt]:  # calls sent before the window hold no permit
            await limiter.on_answer(ticket)
        await asyncio.sleep(0.3)
        assert not waiting.done()
        _publish(db_url, key, None)  # the judge cleared it
        freed = first.permit
        await limiter.on_answer(first)  # the waiter takes its permit, and its booking reads
        third = await waiting  # the window cleared: no permit taken from then on
        fourth = await limiter.acquire()
        assert third.permit == freed and fourth.permit is None
        for ticket in (second, third, fourth):
            await limiter.on_answer(ticket)
        await asyncio.sleep(0.3)  # hand backs run in the background
        assert _held(db_url, key) == {}  # not enforced: every permit handed back at once
    finally:
        await limiter.aclose()


@pytest.mark.slow
def test_in_the_rate_regime_no_window_is_published_and_no_permit_statement_made(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    asyncio.run(_migrated(db_url))
    with psycopg.connect(db_url, autocommit=True) as conn:  # counts every statement on permits
        conn.execute("CREATE TABLE permit_statements (n serial)")
        conn.execute(
            "CREATE FUNCTION count_permit_statement() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO permit_statements DEFAULT VALUES; RETURN NULL; END $$"
        )
        conn.execute(
            "CREATE TRIGGER counted AFTER UPDATE OR DELETE ON ob_permit"
            " FOR EACH STATEMENT EXECUTE FUNCTION count_permit_statement()"
        )
    sim = make_sim(rate_limit=parse_rate_limit("20:2"), latency=Latency(0.05, 0.2))
    inputs = lists(tmp_path, 2, 120)
    outs = [tmp_path / f"rate-{n}.ndjson" for n in range(2)]
    runs = [start_run(sim.url, path, out, db_url) for path, out in zip(inputs, outs, strict=True)]
    finish(runs, outs)
    assert sim.stats()["totals"].get("rate_limited", 0) > 0  # the limit was met: a rate
    with psycopg.connect(db_url) as conn:
        permits = conn.execute("SELECT count(*) FROM ob_permit").fetchone()
        statements = conn.execute("SELECT count(*) FROM permit_statements").fetchone()
        window = conn.execute("SELECT window_size FROM ob_rate").fetchone()
    assert permits == (WINDOW_BOUND,)  # created, as many as the judge may publish
    assert window == (None,) and statements[0] <= len(runs)  # each run's close, no call's
