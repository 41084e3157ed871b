"""Database round trips per contact on the shared ledger, counted by the server itself
(``pg_stat_statements``) on a real PostgreSQL: contacts are claimed from the queue in
batches, turns booked several at once when several tasks wait, a group settled in one
statement, and still exactly one claim marking each paid call as sent.

The module's server is restarted once with ``pg_stat_statements`` loaded; every test counts
the statements of its own fresh database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from octave_bulk.limits.pg_turns import HORIZON
from octave_bulk.limits.shared_pg import SharedRateLimiter, SharedRateTicket
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import Latency
from octave_bulk.state.pg.dsn import PgConnection
from octave_bulk.state.pg.schema import migrate
from tests.helpers import sim_settings, start_run, write_contacts
from tests.pgserver import PgServer


@pytest.fixture(scope="module")
def counting_pg(pg: PgServer) -> Iterator[PgServer]:
    """The module's server, restarted with ``pg_stat_statements`` loaded."""
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    pg.pg_ctl("-m", "fast", "-w", "stop")
    pg.start()
    yield pg


def counted_database(server: PgServer, name: str) -> str:
    url = server.create_database(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
    return url


def statements(url: str) -> list[tuple[int, str]]:
    """(calls, text) of every statement the database ran since its counts were reset."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT calls, query FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    return [(int(calls), str(query)) for calls, query in rows]


CLAIM = "INSERT INTO ob_contact (job, request_id, body, state, claim_seq"  # before a paid call
BOOKING = "UPDATE ob_rate SET tat = greatest"  # a shared turn's booking


def calls_of(rows: list[tuple[int, str]], fragment: str) -> int:
    return sum(calls for calls, query in rows if fragment in query)


async def counted_run(
    sim: Any, tmp_path: Path, server: PgServer, name: str, contacts: int, **settings: Any
) -> list[tuple[int, str]]:
    """One run of ``contacts`` contacts on a fresh counted database: its statements."""
    url = counted_database(server, name)
    write_contacts(tmp_path / "in.csv", contacts)
    options = sim_settings(sim.url, ledger=url, timeout=2.0, **settings)
    summary = await run_batch(tmp_path / "in.csv", tmp_path / "out.ndjson", options)
    assert summary["exit_code"] == 0 and summary["paid_calls"] == contacts
    return statements(url)


@pytest.mark.slow
async def test_a_run_costs_at_most_three_statements_per_contact_and_one_claim_per_paid_call(
    make_sim: Any, tmp_path: Path, counting_pg: PgServer
) -> None:
    contacts = 80
    sim = make_sim(latency=Latency(0.05, 0.2))
    rows = await counted_run(
        sim, tmp_path, counting_pg, "one_run", contacts,
        rate="40/s", adaptive=False, concurrency=64,
    )  # fmt: skip
    assert sum(sim.stats()["successes"].values()) == contacts
    # Exactly one claim marks each paid call as sent, right before it (the exact count of
    # outcomes unknown rests on it).
    assert calls_of(rows, CLAIM) == contacts
    # The queue is claimed in batches (one statement for several contacts), not per contact.
    assert calls_of(rows, "ORDER BY seq LIMIT") <= contacts / 3
    # Turns are booked several at once while several tasks wait for one.
    assert calls_of(rows, BOOKING) <= contacts / 2
    # A group settles in one statement that takes the settle lock itself: the lock is never
    # a statement (and a transaction) of its own.
    assert calls_of(rows, "AS g(request_id, claim_seq") >= 1
    assert not [q for _, q in rows if q.lstrip().startswith("SELECT pg_advisory_xact_lock_shared")]
    schema = sum(
        calls
        for calls, query in rows
        if "ob_schema_version" in query or query.lstrip().startswith(("CREATE ", "ALTER TABLE"))
    )
    every = sum(calls for calls, _ in rows)
    assert (every - schema) / contacts <= 3.0, sorted(rows, reverse=True)[:8]


async def test_a_turn_and_its_calls_claim_cost_one_statement_when_tasks_come_one_at_a_time(
    make_sim: Any, tmp_path: Path, counting_pg: PgServer
) -> None:
    # One task: every turn is booked alone, and the booking carries the claim of the call it
    # is for (the same database). Booked apart they were two statements per paid call.
    contacts = 12
    sim = make_sim(latency=Latency(0.01, 0.02))
    rows = await counted_run(
        sim, tmp_path, counting_pg, "carried", contacts,
        rate="50/s", adaptive=False, concurrency=1,
    )  # fmt: skip
    carried = calls_of(rows, "SELECT claim_seq FROM claimed")
    assert calls_of(rows, CLAIM) == contacts  # still exactly one claim per paid call
    assert calls_of(rows, BOOKING) == carried == contacts


@pytest.mark.slow
async def test_the_judge_reads_seldom_when_few_calls_come(
    make_sim: Any, tmp_path: Path, counting_pg: PgServer
) -> None:
    # Two calls a second (Octave's own regime is a few): a read of the outcomes every 0.5 s
    # would be one statement per contact; the judge stretches its reads while each brings
    # fewer sends than a verdict needs (and no 429), up to one every 4 s.
    contacts = 16
    sim = make_sim(latency=Latency(0.05, 0.1))
    rows = await counted_run(sim, tmp_path, counting_pg, "few_calls", contacts, rate="2/s")
    reads = calls_of(rows, "RETURNING id, epoch, worker, ticket, kind")
    assert 1 <= reads <= contacts / 2


@pytest.mark.slow
def test_hosts_sharing_a_binding_window_look_for_a_free_permit_only_when_one_is_free(
    make_sim: Any, tmp_path: Path, counting_pg: PgServer
) -> None:
    # Three runs share a window of 6 permits against a cap of 6 (1-s calls): every permit is
    # busy all the time. Each booking reads how many are free; a host whose permits are all
    # in use looks for another only once one is. It looked every second, whatever was free:
    # 0.51 statements per contact at three hosts (benchmarks/bench_scaleout.py, cap row).
    window, contacts = 6, 120
    sim = make_sim(max_inflight=window, latency=Latency(1.0, 0.1))
    url = counted_database(counting_pg, "binding_window")
    write_contacts(tmp_path / "in.csv", contacts)
    flags = ("--concurrency", str(window), "--rate", "1000/s", "--no-adaptive")
    outs = [tmp_path / f"host-{n}.ndjson" for n in range(3)]
    runs = [start_run(sim.url, tmp_path / "in.csv", out, url, *flags) for out in outs]
    for run, out in zip(runs, outs, strict=True):
        run.wait(timeout=240)
        assert run.returncode == 0, out.with_suffix(".log").read_text(errors="replace")[-3000:]
    stats = sim.stats()
    assert sum(stats["successes"].values()) == contacts and stats["max_in_flight"] <= window
    looks = calls_of(statements(url), "UPDATE ob_permit p SET holder")
    assert looks <= contacts / 4, looks


class CountingConnection(psycopg.AsyncConnection[tuple[Any, ...]]):
    """A connection that counts the statements it sends (one round trip each)."""

    statements = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.statements += 1
        return await super().execute(*args, **kwargs)


async def test_tasks_waiting_at_once_book_their_turns_in_fewer_statements_still_one_rate_apart(
    counting_pg: PgServer,
) -> None:
    url = counted_database(counting_pg, "bookings")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate(conn)
    opened: list[CountingConnection] = []

    async def connect() -> PgConnection:
        conn = await CountingConnection.connect(url, autocommit=True)
        opened.append(conn)
        return conn

    rate, tasks = 40.0, 12
    limiter = SharedRateLimiter(connect, key="bookings", rate=rate)
    await limiter.open()
    try:
        before = opened[0].statements
        tickets = await asyncio.gather(*(limiter.acquire() for _ in range(tasks)))
        booked = opened[0].statements - before
    finally:
        await limiter.aclose()
    # At most HORIZON seconds of turns per booking: 4 at 40/s; one booking each before.
    assert booked <= tasks / 2
    assert booked >= tasks / (rate * HORIZON)
    turns = sorted(ticket.send_at for ticket in tickets if isinstance(ticket, SharedRateTicket))
    assert len(turns) == tasks
    # The schedule still spaces every turn 1/rate apart, whichever booking it came from.
    gaps = [later - earlier for earlier, later in zip(turns, turns[1:], strict=False)]
    assert min(gaps) >= 0.8 / rate
