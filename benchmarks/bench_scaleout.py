"""The shared ledger's costs on a real PostgreSQL (a throwaway server, as the tests start one).

* ``claims``: C contacts enqueued, then claimed in batches of B and settled one by one by one
  worker: database round trips (statements sent) per contact for the claim and for the settle,
  and the contacts settled per second on one connection.
* ``acquire``: the shared rate limiter's ``acquire`` at a rate far above what is asked (so it
  never waits for its turn): the latency it adds to every attempt, p50 and p99, with 1 and with
  3 worker processes booking turns on the same row at once.

Targets (docs/scale-out.md): at most 3 round trips per contact (claim + settle + the
heartbeats' share); acquire p99 well under the calls' own latency (tens of ms at most).
The server runs with ``fsync=off`` (as in the tests): commit latency on real disks is higher.

    python benchmarks/bench_scaleout.py [--contacts 5000] [--acquires 2000] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import report

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' throwaway server

import psycopg  # noqa: E402

from octave_bulk.limits.shared_pg import SharedRateLimiter  # noqa: E402
from octave_bulk.state.pg.claims import Outcome, WorkItem, WorkQueue  # noqa: E402
from octave_bulk.state.pg.dsn import LedgerUrl, PgConnection  # noqa: E402
from octave_bulk.state.pg.leases import WorkerLease  # noqa: E402
from octave_bulk.state.pg.schema import migrate  # noqa: E402
from tests.pgserver import outputs_released_together, running_postgres  # noqa: E402


class CountingConnection(psycopg.AsyncConnection[tuple[Any, ...]]):
    """A connection that counts the statements it sends (one round trip each)."""

    statements = 0

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        self.statements += 1
        return await super().execute(*args, **kwargs)


async def counting(url: str) -> CountingConnection:
    return await CountingConnection.connect(url, autocommit=True)


async def claims(url: str, contacts: int, batch: int) -> dict[str, Any]:
    async with await counting(url) as conn:
        queue = WorkQueue(conn, "bench")
        await queue.open_job(agent="ca_bench")
        items = (WorkItem(f"c-{n:07d}", {"email": f"p{n}@example.com"}, n) for n in range(contacts))
        await queue.enqueue(items)
        worker = WorkerLease(conn, worker="bench-1", job="bench", lease=60.0)
        await worker.register()
        claim_statements = settle_statements = 0
        started = time.perf_counter()
        while True:
            before = conn.statements
            got = await queue.claim("bench-1", batch)
            claim_statements += conn.statements - before
            if not got:
                break
            before = conn.statements
            for claim in got:
                await queue.settle(claim, Outcome(done=True, result={"ok": True}, credits=1.0))
            settle_statements += conn.statements - before
        elapsed = time.perf_counter() - started
        counts = await queue.counts()
    assert counts["done"] == contacts and counts["paid_calls"] == contacts, counts
    return {
        "case": "claims",
        "contacts": contacts,
        "batch": batch,
        "claim_trips_per_contact": claim_statements / contacts,
        "settle_trips_per_contact": settle_statements / contacts,
        "settled_per_s": contacts / elapsed,
    }


async def acquire_latencies(url: str, key: str, count: int, go: bool = False) -> list[float]:
    async def connect() -> PgConnection:
        return await psycopg.AsyncConnection.connect(url, autocommit=True)

    limiter = SharedRateLimiter(connect, key=key, rate=1e6)
    await limiter.open()
    if go:  # a worker process: wait for the others
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        ticket = await limiter.acquire()
        latencies.append(time.perf_counter() - started)
        await limiter.on_answer(ticket)
    await limiter.aclose()
    return latencies


def acquire_row(url: str, count: int, workers: int) -> dict[str, Any]:
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--acquire-worker", url, str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(workers)
    ]  # fmt: skip
    latencies: list[float] = []
    for out in outputs_released_together(procs):
        latencies.extend(json.loads(out))
    latencies.sort()
    return {
        "case": "acquire",
        "workers": workers,
        "acquires": len(latencies),
        "acquire_p50_ms": statistics.median(latencies) * 1e3,
        "acquire_p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=5000)
    parser.add_argument("--acquires", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="500 contacts, 300 acquires")
    parser.add_argument(
        "--acquire-worker", nargs=2, metavar=("URL", "COUNT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.acquire_worker:
        url, count = args.acquire_worker
        print(json.dumps(asyncio.run(acquire_latencies(url, "bench", int(count), go=True))))
        return
    contacts, acquires = (500, 300) if args.smoke else (args.contacts, args.acquires)
    rows = []
    with running_postgres() as server:
        url = server.create_database("bench")

        async def schema() -> None:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await migrate(conn)

        asyncio.run(schema())
        rows.append(asyncio.run(claims(url, contacts, batch=10)))
        rows.extend(acquire_row(url, acquires, workers) for workers in (1, 3))
        display = LedgerUrl.parse(url).display
    columns = {key: None for row in rows for key in row}
    rows = [columns | row for row in rows]
    extra = {
        "server": f"throwaway PostgreSQL (fsync=off) at {display}",
        "target": "<= 3 round trips per contact; acquire p99 in ms, far below a call",
    }
    report("scaleout", rows, extra, smoke=args.smoke)


if __name__ == "__main__":
    main()
