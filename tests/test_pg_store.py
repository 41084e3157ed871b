"""The shared ledger on a real PostgreSQL: schema, claims before paying, settling, leases.

Every test gets a fresh database on one throwaway server (tests/pgserver.py); in CI a server
that cannot start fails these tests rather than skipping them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from octave_bulk.state.pg.claims import Claim, Outcome, Settled, WorkItem, WorkQueue
from octave_bulk.state.pg.dsn import LedgerUrl, PgConnection, connect
from octave_bulk.state.pg.leases import WorkerLease, reap
from octave_bulk.state.pg.schema import LATEST, migrate
from tests.pgserver import PgServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[PgConnection]:
    """A connection to a fresh database with the schema in place."""
    async with await connect(LedgerUrl.parse(db_url)) as connection:
        await migrate(connection)
        yield connection


async def _job(conn: PgConnection, contacts: int, job: str = "nightly") -> WorkQueue:
    queue = WorkQueue(conn, job)
    await queue.open_job(agent="ca_test", input_name="contacts.csv", rate_ceiling=2.0)
    items = (WorkItem(f"c-{n:05d}", {"email": f"p{n}@example.com"}, n) for n in range(contacts))
    assert await queue.enqueue(items) == contacts
    return queue


async def _worker(conn: PgConnection, name: str, lease: float = 30.0, **kw: Any) -> WorkerLease:
    worker = WorkerLease(conn, worker=name, job="nightly", lease=lease, **kw)
    await worker.register()
    return worker


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    return subprocess.run(
        [sys.executable, "-m", "octave_bulk", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean | (env or {}),
    )


def test_ledger_init_twice_is_a_no_op(pg: PgServer, db_url: str) -> None:
    first = _cli("ledger", "init", env={"OCTAVE_LEDGER": db_url})
    assert first.returncode == 0, first.stderr
    assert '"changed": true' in first.stdout and f'"schema_version": {LATEST}' in first.stdout
    second = _cli("ledger", "init", "--ledger", db_url)
    assert second.returncode == 0, second.stderr
    assert '"changed": false' in second.stdout
    assert f'"schema_version_before": {LATEST}' in second.stdout
    for output in (first, second):
        assert pg.password not in output.stdout + output.stderr
        assert f"postgresql://postgres@127.0.0.1:{pg.port}/" in output.stdout
    with psycopg.connect(db_url) as check:
        versions = check.execute("SELECT version FROM ob_schema_version").fetchall()
    assert versions == [(v,) for v in range(1, LATEST + 1)]


def test_the_urls_password_is_scrubbed_from_errors(pg: PgServer, db_url: str) -> None:
    wrong = "Wr0ng-Passw0rd-for-the-ledger"
    refused = _cli("ledger", "init", "--ledger", pg.url(db_url.rsplit("/", 1)[1], password=wrong))
    assert refused.returncode == 2
    assert "password authentication failed" in refused.stderr
    assert f"postgresql://postgres@127.0.0.1:{pg.port}/" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr
    # Nothing listening: the driver's message names the server, never the password.
    closed = _cli("ledger", "init", "--ledger", f"postgresql://bob:{wrong}@127.0.0.1:1/x")
    assert closed.returncode == 2 and "postgresql://bob@127.0.0.1:1/x" in closed.stderr
    assert wrong not in closed.stdout + closed.stderr
    not_a_url = _cli("ledger", "init", "--ledger", "mysql://bob@db/x")
    assert not_a_url.returncode == 2 and "postgresql://" in not_a_url.stderr


async def test_enqueueing_the_same_contacts_again_adds_nothing(conn: PgConnection) -> None:
    queue = await _job(conn, 50)
    again = (WorkItem(f"c-{n:05d}", {"email": "other@example.com"}, n) for n in range(60))
    assert await queue.enqueue(again) == 10
    assert (await queue.counts())["todo"] == 60


def test_concurrent_claimers_never_get_the_same_contact(db_url: str) -> None:
    contacts, workers = 400, 4

    async def prepare() -> None:
        async with await connect(LedgerUrl.parse(db_url)) as setup:
            await migrate(setup)
            await _job(setup, contacts)

    asyncio.run(prepare())
    claimed: dict[str, list[str]] = {}

    def work(name: str) -> None:
        async def loop() -> list[str]:
            seen: list[str] = []
            async with await connect(LedgerUrl.parse(db_url)) as own:
                await _worker(own, name)
                queue = WorkQueue(own, "nightly")
                while batch := await queue.claim(name, 3):
                    for claim in batch:
                        seen.append(claim.request_id)
                        assert await queue.settle(claim, Outcome(done=True, result={"by": name}))
            return seen

        claimed[name] = asyncio.run(loop())

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    every = [rid for seen in claimed.values() for rid in seen]
    assert len(claimed) == workers and sorted(every) == [f"c-{n:05d}" for n in range(contacts)]
    assert sum(1 for seen in claimed.values() if seen) >= 2  # they did run side by side

    async def counts() -> dict[str, int]:
        async with await connect(LedgerUrl.parse(db_url)) as check:
            return await WorkQueue(check, "nightly").counts()

    totals = asyncio.run(counts())
    assert totals["done"] == contacts and totals["paid_calls"] == contacts
    assert totals["late_answers"] == 0


async def test_settle_writes_result_state_and_call_row_together(conn: PgConnection) -> None:
    queue = await _job(conn, 1)
    await _worker(conn, "w1")
    [claim] = await queue.claim("w1", 5)
    with pytest.raises(psycopg.errors.CheckViolation):  # the call row is refused ...
        await queue.settle(claim, Outcome(done=True, result={"emails": 3}, credits=-1.0))
    # ... so the contact's result and state were not written either
    assert await _contact(conn, claim) == ("claimed", None, 0)
    assert await _calls(conn, claim) == []
    assert await queue.settle(claim, Outcome(done=True, result={"emails": 3}, credits=1.0))
    assert await _contact(conn, claim) == ("done", {"emails": 3}, 1)
    assert await _calls(conn, claim) == [("call", "done", True)]


async def test_a_late_duplicate_is_counted_as_paid_twice_and_never_overwrites(
    conn: PgConnection,
) -> None:
    queue = await _job(conn, 2)
    first = await _worker(conn, "slow")
    slow_claims = await queue.claim("slow", 2, sending=True)  # their calls on the wire
    assert [c.request_id for c in slow_claims] == ["c-00000", "c-00001"]
    reaped = await reap(conn, lease=0.0)  # silent for longer than a lease of 0 s
    assert {r.request_id for r in reaped} == {"c-00000", "c-00001"}
    await _worker(conn, "fresh")
    fresh_claims = await queue.claim("fresh", 1)
    assert [c.request_id for c in fresh_claims] == ["c-00000"]
    assert not await first.renew() and not first.may_send()
    # c-00000: the fresh worker answers first, the reaped worker's late answer is a duplicate.
    assert await queue.settle(fresh_claims[0], Outcome(done=True, result={"by": "fresh"})) == (
        Settled.FIRST
    )
    late = await queue.settle(slow_claims[0], Outcome(done=True, result={"by": "slow"}))
    assert late == Settled.DUPLICATE
    assert await _contact(conn, slow_claims[0]) == ("done", {"by": "fresh"}, 2)
    # c-00001: reaped, not claimed again yet: the late success is kept; nobody re-sends it.
    assert await queue.settle(slow_claims[1], Outcome(done=True, result={"by": "slow"})) == (
        Settled.LATE
    )
    assert await _contact(conn, slow_claims[1]) == ("done", {"by": "slow"}, 1)
    assert await queue.claim("fresh", 5) == []
    counts = await queue.counts()
    assert counts["paid_calls"] == 3 and counts["outcome_unknown"] == 2
    assert counts["late_answers"] == 2 and counts["done"] == 2


async def test_a_silent_workers_claims_are_reaped_once(conn: PgConnection, db_url: str) -> None:
    queue = await _job(conn, 5)
    silent = await _worker(conn, "silent")
    claims = await queue.claim("silent", 3, sending=True)  # their calls on the wire
    await queue.submitted(claims[2], "job-handle-1")
    await queue.claim("silent", 1)  # reserved, its call never sent
    async with (
        await connect(LedgerUrl.parse(db_url)) as other,
        await connect(LedgerUrl.parse(db_url)) as third,
    ):
        results = await asyncio.gather(reap(conn, lease=0.0), reap(other, lease=0.0), reap(third))
    reaped = [r for result in results for r in result]
    assert sorted((r.request_id, r.outcome_unknown) for r in reaped) == [
        ("c-00000", True),
        ("c-00001", True),
        ("c-00002", False),  # submitted: its handle is kept, polling it costs nothing
        ("c-00003", False),  # only reserved: given back, no outcome unknown
    ]
    assert await reap(conn, lease=0.0) == []
    assert not await silent.renew() and silent.fenced
    assert await queue.claim("silent", 5) == []  # a reaped worker claims nothing more
    counts = await queue.counts()
    assert counts["todo"] == 4 and counts["submitted"] == 1 and counts["outcome_unknown"] == 2
    rows = await (
        await conn.execute("SELECT request_id FROM ob_call WHERE kind = 'reap' ORDER BY 1")
    ).fetchall()
    assert rows == [("c-00000",), ("c-00001",)]
    handle = await (
        await conn.execute("SELECT handle FROM ob_contact WHERE request_id = 'c-00002'")
    ).fetchone()
    assert handle == ("job-handle-1",)


async def test_a_live_worker_is_not_reaped_and_a_drained_one_gives_its_claims_back(
    conn: PgConnection,
) -> None:
    queue = await _job(conn, 3)
    worker = await _worker(conn, "live", lease=60.0)
    claims = await queue.claim("live", 2)
    assert await reap(conn) == []  # its own lease (60 s) has not run out
    assert await queue.unclaim(claims[0])  # never sent: back to do, nothing counted
    assert not await queue.unclaim(claims[0])
    await worker.leave()
    counts = await queue.counts()
    assert counts["todo"] == 3 and counts["outcome_unknown"] == 0 and counts["paid_calls"] == 0
    assert not worker.may_send()


async def test_a_worker_that_cannot_renew_within_half_its_lease_stops_sending(
    conn: PgConnection,
) -> None:
    now = [100.0]
    worker = await _worker(conn, "w1", lease=10.0, clock=lambda: now[0])
    assert worker.may_send()
    now[0] = 104.9
    assert worker.may_send()
    now[0] = 105.0  # half the lease since the last renewal was sent: stop sending
    assert not worker.may_send() and worker.send_deadline() == 105.0
    assert await worker.renew(in_flight=0)
    assert worker.may_send() and worker.send_deadline() == 110.0


async def test_what_was_committed_survives_a_crash_of_the_server(pg: PgServer, db_url: str) -> None:
    async with await connect(LedgerUrl.parse(db_url)) as conn:
        await migrate(conn)
        queue = await _job(conn, 6)
        await _worker(conn, "w1")
        claims = await queue.claim("w1", 4)
        for claim in claims[:3]:
            await queue.settle(claim, Outcome(done=True, result={"n": claim.request_id}))
        pg.restart_immediate()  # pg_ctl stop -m immediate: no shutdown checkpoint
        with pytest.raises(psycopg.OperationalError):
            await queue.counts()  # the old connection is gone: nothing is sent without it
    async with await connect(LedgerUrl.parse(db_url)) as again:
        counts = await WorkQueue(again, "nightly").counts()
        assert counts["done"] == 3 and counts["claimed"] == 1 and counts["todo"] == 2
        # the claim committed before the crash is still held: its answer settles as first
        assert await WorkQueue(again, "nightly").settle(claims[3], Outcome(done=True)) == (
            Settled.FIRST
        )


@pytest.mark.slow
def test_a_frozen_worker_fences_itself_is_reaped_once_and_its_late_answers_are_counted(
    db_url: str,
) -> None:
    async def prepare() -> None:
        async with await connect(LedgerUrl.parse(db_url)) as setup:
            await migrate(setup)
            await _job(setup, 2)

    asyncio.run(prepare())
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env["PYTHONPATH"] = str(ROOT)
    frozen = subprocess.Popen(
        [sys.executable, "-m", "tests.test_pg_store", db_url],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert frozen.stdout is not None and frozen.stdout.readline().strip() == "ready"
        frozen.send_signal(signal.SIGSTOP)  # SIGSTOP: frozen mid-call, past its 2 s lease

        async def meanwhile() -> list[str]:
            async with await connect(LedgerUrl.parse(db_url)) as conn:
                reaped = []
                for _ in range(300):  # its own lease (2 s) runs out on the server's clock
                    reaped = await reap(conn)
                    if reaped:
                        break
                    await asyncio.sleep(0.1)
                await _worker(conn, "fresh")
                queue = WorkQueue(conn, "nightly")
                [claim] = await queue.claim("fresh", 1)
                assert await queue.settle(claim, Outcome(done=True, result={"by": "fresh"}))
                return [r.request_id for r in reaped if r.outcome_unknown]

        assert asyncio.run(meanwhile()) == ["c-00000", "c-00001"]
        time.sleep(1.0)  # frozen well past the 1.5 s gap the child takes for a freeze
        frozen.send_signal(signal.SIGCONT)
        out, _ = frozen.communicate(timeout=60)
    finally:
        if frozen.poll() is None:
            frozen.kill()
            frozen.wait()
        if frozen.stdout is not None:
            frozen.stdout.close()  # not left for a later test's garbage collection
    woken = json.loads(out)
    assert woken["may_send_on_waking"] is False  # it had not renewed within half its lease
    assert woken["fenced"] is True
    assert woken["settled"] == {"c-00000": "duplicate", "c-00001": "late"}

    async def after() -> tuple[dict[str, int], list[Any]]:
        async with await connect(LedgerUrl.parse(db_url)) as conn:
            return await WorkQueue(conn, "nightly").counts(), await reap(conn, lease=0.0)

    counts, reaped_again = asyncio.run(after())
    assert reaped_again == []  # reaped once
    assert counts["done"] == 2 and counts["outcome_unknown"] == 2
    assert counts["paid_calls"] == 3 and counts["late_answers"] == 2  # paid twice: c-00000


async def _frozen_worker(url: str) -> None:
    """The child of the test above: claims, heartbeats, is frozen, wakes and answers late."""
    async with (
        await connect(LedgerUrl.parse(url)) as conn,
        await connect(LedgerUrl.parse(url)) as beats,
    ):
        lease = await _worker(beats, "frozen", lease=2.0)
        claims = await WorkQueue(conn, "nightly").claim("frozen", 2, sending=True)
        renewing = asyncio.ensure_future(lease.keep_renewed())
        # The clock is read before "ready": the freeze may land at once, and a reading taken
        # after it would hide the gap (the loop below then watches for a minute).
        last, may_send_on_waking = time.monotonic(), None
        print("ready", flush=True)
        for _ in range(3000):  # its calls are in flight: it watches whether it may still send
            await asyncio.sleep(0.02)
            now = time.monotonic()
            if now - last > 1.5:  # it was frozen (the test holds it 2.5 s at least)
                may_send_on_waking = lease.may_send()
                break
            last = now
        await renewing  # its next heartbeat finds it reaped: fenced, the beats stop
        queue = WorkQueue(conn, "nightly")
        settled = {c.request_id: await queue.settle(c, Outcome(done=True)) for c in claims}
    print(
        json.dumps(
            {"may_send_on_waking": may_send_on_waking, "fenced": lease.fenced, "settled": settled}
        )
    )


async def _contact(conn: PgConnection, claim: Claim) -> tuple[Any, ...]:
    cur = await conn.execute(
        "SELECT state, result, paid_calls FROM ob_contact WHERE job = %s AND request_id = %s",
        (claim.job, claim.request_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _calls(conn: PgConnection, claim: Claim) -> list[tuple[Any, ...]]:
    cur = await conn.execute(
        "SELECT kind, outcome, paid FROM ob_call WHERE job = %s AND request_id = %s ORDER BY id",
        (claim.job, claim.request_id),
    )
    return [tuple(row) for row in await cur.fetchall()]


if __name__ == "__main__":
    asyncio.run(_frozen_worker(sys.argv[1]))
