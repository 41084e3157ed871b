"""Several hosts on one shared ledger and one workspace limit, on a real PostgreSQL (a
throwaway server, as the tests start one) and the simulator over loopback.

* ``hosts`` (the matrix): N = 1, 2, 3 ``octave-bulk run`` processes, a contact list each (an
  agency's clients against one workspace), on one database and one simulator, in three
  regimes: ``known`` (a 20/s limit, ``--rate 20/s``), ``unknown`` (the same limit, no
  ``--rate``: the one judge searches it), ``cap`` (16 calls in flight at most, 2-s calls,
  ``--concurrency 16``: one shared window). Per cell: the accepted calls per second over the
  limit (``throughput_per_limit``), the 429 share and its ratio to one host's, the database
  round trips per contact (every statement the database ran in the cell, from
  ``pg_stat_statements``: ledger, limiter, judge, heartbeats, start-up; also without the
  schema's creation, which ``ledger init`` does once per database, and broken down by what
  each statement is, ``trips_by_kind``, printed per cell), paid calls per
  contact. Plus ``more hosts help``: a per-host cap (each process's open-file limit lets it
  hold 8 calls of 1 s) under a shared 20/s: throughput grows with N up to the limit.
* ``claims``: C contacts enqueued, then claimed in batches of B and settled one by one by one
  worker: database round trips per contact for the claim and for the settle.
* ``acquire``: the shared rate limiter's ``acquire`` at a rate far above what is asked (so it
  never waits for its turn): the latency it adds to every attempt, p50 and p99, with 1 and with
  3 worker processes booking turns on the same row at once.
* ``kills`` (``_scaleout_kills.py``): one job worked by three ``worker`` processes, one killed
  with kill -9 and replaced K times, in sync and in async mode: paid calls per contact, the
  outcomes unknown, and whether paid - contacts <= outcomes unknown held.

Targets (docs/scale-out.md): throughput / limit >= 0.95 at N = 3 with the limit unknown; 429
share <= 1.5 x one host's; <= 3 round trips per contact. The server runs with ``fsync=off``
(as in the tests): commit latency on real disks is higher.

    python benchmarks/bench_scaleout.py [--contacts 600] [--acquires 2000] [--kills 5] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import report
from _scaleout_kills import kills_row

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' throwaway server

import psycopg  # noqa: E402

from octave_bulk.limits.shared_pg import SharedRateLimiter  # noqa: E402
from octave_bulk.simulator import (  # noqa: E402
    Latency,
    SimulatorConfig,
    parse_rate_limit,
    serve_simulator,
)
from octave_bulk.state.pg.claims import Outcome, WorkItem, WorkQueue  # noqa: E402
from octave_bulk.state.pg.dsn import LedgerUrl, PgConnection  # noqa: E402
from octave_bulk.state.pg.leases import WorkerLease  # noqa: E402
from octave_bulk.state.pg.schema import migrate  # noqa: E402
from tests.pgserver import PgServer, outputs_released_together, running_postgres  # noqa: E402

KEY = "bench-key"  # the simulator's API key (any: it checks only that one is sent)
RATE = 20.0  # the shared rate limit, calls per second
CAP, CAP_LATENCY = 16, 2.0  # the cap regime: calls in flight at most, and their duration
HOST_CAP_FILES = 80  # open files a "more hosts help" host may hold: 8 calls in flight
REGIMES: dict[str, dict[str, Any]] = {
    "known": {
        "sim": {"rate_limit": f"{RATE:g}:2", "latency": (0.05, 0.2)},
        "flags": ["--rate", f"{RATE:g}/s"],
        "limit": RATE,
    },
    "unknown": {
        "sim": {"rate_limit": f"{RATE:g}:2", "latency": (0.05, 0.2)},
        "flags": [],
        "limit": RATE,
    },
    "cap": {
        "sim": {"max_inflight": CAP, "latency": (CAP_LATENCY, 0.1)},
        "flags": ["--concurrency", str(CAP)],
        "limit": CAP / CAP_LATENCY,
    },
    "more hosts help": {
        "sim": {"rate_limit": f"{RATE:g}:2", "latency": (1.0, 0.1)},
        "flags": ["--rate", f"{RATE:g}/s"],
        "limit": RATE,
        "files": HOST_CAP_FILES,
    },
}


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


SCHEMA = "ledger init (once per database)"
STATEMENT_KINDS = (  # (what a statement is, a fragment only its text holds), first match wins
    ("queue claim (batch)", "ORDER BY seq LIMIT"),
    ("booking + call claim", "SELECT claim_seq FROM claimed"),
    ("call claim (sending)", "INSERT INTO ob_contact (job, request_id, body, state, claim_seq"),
    ("booking (+ outcomes)", "UPDATE ob_rate SET tat = greatest"),
    ("judge read", "DELETE FROM ob_outcome"),
    ("judge publish", "UPDATE ob_rate SET rate ="),
    ("judge lock try", "pg_try_advisory_lock"),
    ("settle group", "AS g(request_id, claim_seq"),
    ("settle lock", "pg_advisory_xact_lock_shared"),
    ("heartbeat", "UPDATE ob_worker SET heartbeat_at"),
    ("permit take", "UPDATE ob_permit p SET holder"),
    ("permit renew", "UPDATE ob_permit SET expires_at"),
    ("permit hand back", "UPDATE ob_permit SET holder = $"),
    ("turn refund", "UPDATE ob_rate SET tat = tat -"),
    ("left to do", "count(*) FILTER"),
    ("give back", "AND NOT request_id = ANY"),
    ("reap", "ended_at = clock_timestamp() WHERE state"),
    ("worker leaves", "ended_at = clock_timestamp() WHERE worker"),
    (SCHEMA, "ob_schema_version"),
    (SCHEMA, "CREATE "),
    (SCHEMA, "ALTER TABLE"),
    ("transaction", "BEGIN"),
    ("transaction", "COMMIT"),
)


def statement_kind(query: str) -> str:
    """What a statement is (``STATEMENT_KINDS``), else the first 50 characters of its text."""
    for kind, fragment in STATEMENT_KINDS:
        if fragment in query:
            return kind
    return re.sub(r"\s+", " ", query)[:50]


def statements(url: str) -> tuple[int, dict[str, int]]:
    """The statements the database ran since the last reset (``pg_stat_statements``), in all
    and by what they are (:func:`statement_kind`), most run first."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT calls, query FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    kinds: dict[str, int] = {}
    for calls, query in rows:
        kind = statement_kind(query)
        kinds[kind] = kinds.get(kind, 0) + int(calls)
    ranked = dict(sorted(kinds.items(), key=lambda item: -item[1]))
    return sum(ranked.values()), ranked


def count_statements(server: PgServer) -> None:
    """Load ``pg_stat_statements`` (a restart): every statement the workers send is counted."""
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    server.pg_ctl("-m", "fast", "-w", "stop")
    server.start()


def write_list(path: Path, first: int, count: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["requestId", "email", "firstName", "lastName", "companyName", "jobTitle"])
        for n in range(first, first + count):
            out.writerow([f"c-{n:06d}", f"p{n}@example.com", f"F{n}", "Doe", "Acme", "VP"])


def host_cell(
    server: PgServer, folder: Path, regime: str, hosts: int, contacts: int
) -> dict[str, Any]:
    """N hosts, a list each, on a fresh database and simulator: what they got in all."""
    spec = REGIMES[regime]
    name = f"h{hosts}_{regime.replace(' ', '_')}_{os.getpid()}"
    url = server.create_database(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
    sim_spec = dict(spec["sim"])
    latency = Latency(*sim_spec.pop("latency"))
    if "rate_limit" in sim_spec:
        sim_spec["rate_limit"] = parse_rate_limit(sim_spec["rate_limit"])
    each = contacts // hosts
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env |= {"OCTAVE_API_KEY": KEY, "OCTAVE_DRAIN_TIMEOUT": "1", "OCTAVE_LEDGER": url}
    files = spec.get("files")

    def capped() -> None:  # a host that holds only so many connections
        if files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))

    with serve_simulator(SimulatorConfig(latency=latency, **sim_spec)) as sim:
        procs = []
        for host in range(hosts):
            path = folder / f"{name}-{host}.csv"
            write_list(path, host * each, each)
            cmd = [
                sys.executable, "-m", "octave_bulk", "run", str(path),
                "-o", str(path.with_suffix(".ndjson")), "--agent", "ca_bench",
                "--base-url", sim.url, "--no-progress", *spec["flags"],
            ]  # fmt: skip
            log = open(path.with_suffix(".log"), "w")  # noqa: SIM115 (closed with the process)
            procs.append(
                subprocess.Popen(
                    cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=capped
                )
            )
        try:
            for proc in procs:
                proc.wait(timeout=900)
        finally:  # interrupted: no worker outlives the bench
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        stats = sim.stats()
    failed = [proc.args for proc in procs if proc.returncode != 0]
    trips, kinds = statements(url)
    contacts_done = each * hosts
    arrivals = list(zip(stats["arrivals"], stats["arrival_outcomes"], strict=True))
    ok = sorted(at for at, outcome in arrivals if outcome == "ok")
    span = ok[-1] - arrivals[0][0] if ok else float("nan")
    totals = stats["totals"]
    paid = sum(stats["successes"].values())
    return {
        "case": "hosts",
        "regime": regime,
        "workers": hosts,
        "contacts": each * hosts,
        "limit_per_s": spec["limit"],
        "accepted_per_s": len(ok) / span,
        "throughput_per_limit": len(ok) / span / spec["limit"],
        "share_429": totals.get("rate_limited", 0) / max(1, totals.get("calls", 0)),
        "trips_per_contact": trips / contacts_done,
        "trips_per_contact_after_init": (trips - kinds.get(SCHEMA, 0)) / contacts_done,
        "paid_per_contact": paid / (each * hosts),
        "failed_workers": len(failed),
        "trips_by_kind": {
            kind: round(calls / contacts_done, 3)
            for kind, calls in kinds.items()
            if calls / contacts_done >= 0.005
        },
    }


def hosts_rows(
    server: PgServer, folder: Path, contacts: int, regimes: list[str], counts: list[int]
) -> list[dict[str, Any]]:
    rows = []
    for regime in regimes:
        scale = CAP / CAP_LATENCY / RATE if regime == "cap" else 1.0
        one_host: float | None = None
        for hosts in counts:
            row = host_cell(server, folder, regime, hosts, max(hosts, int(contacts * scale)))
            one_host = row["share_429"] if hosts == 1 else one_host
            row["share_429_vs_one_host"] = row["share_429"] / one_host if one_host else None
            print({k: v for k, v in row.items() if k != "trips_by_kind"}, flush=True)
            for kind, per_contact in row["trips_by_kind"].items():
                print(f"    {per_contact:6.3f} per contact  {kind}", flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=5000, help="the claims case")
    parser.add_argument("--cell-contacts", type=int, default=600, help="per matrix cell")
    parser.add_argument("--acquires", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="250 contacts, 300 acquires")
    parser.add_argument(
        "--regimes",
        nargs="+",
        choices=list(REGIMES),
        help="matrix cells (default: all; smoke: known)",
    )
    parser.add_argument("--hosts", nargs="+", type=int, help="N (default 1 2 3; smoke: 1 2)")
    parser.add_argument(
        "--only-hosts", action="store_true", help="skip the claims and acquire rows"
    )
    parser.add_argument(
        "--kills", type=int, default=5, help="workers killed with kill -9 in the kills rows"
    )
    parser.add_argument(
        "--acquire-worker", nargs=2, metavar=("URL", "COUNT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.acquire_worker:
        url, count = args.acquire_worker
        print(json.dumps(asyncio.run(acquire_latencies(url, "bench", int(count), go=True))))
        return
    contacts, acquires = (250, 300) if args.smoke else (args.contacts, args.acquires)
    cell_contacts = 60 if args.smoke else args.cell_contacts
    rows = []
    with running_postgres() as server:
        count_statements(server)
        url = server.create_database("bench")

        async def schema() -> None:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await migrate(conn)

        asyncio.run(schema())
        if not args.only_hosts:
            rows.append(asyncio.run(claims(url, contacts, batch=10)))
            rows.extend(acquire_row(url, acquires, workers) for workers in (1, 3))
        folder = server.data_dir.parent / "hosts"
        folder.mkdir(exist_ok=True)
        regimes = args.regimes or (["known"] if args.smoke else list(REGIMES))
        counts = args.hosts or ([1, 2] if args.smoke else [1, 2, 3])
        rows.extend(hosts_rows(server, folder, cell_contacts, regimes, counts))
        if not args.only_hosts:  # paid per contact with workers killed, sync and async
            killed, kills = (120, 2) if args.smoke else (600, args.kills)
            for mode in ("sync", "async"):
                row = kills_row(server, folder, write_list, mode, killed, kills)
                print(row, flush=True)
                rows.append(row)
        display = LedgerUrl.parse(url).display
    columns = {key: None for row in rows for key in row}
    rows = [columns | row for row in rows]
    extra = {
        "server": f"throwaway PostgreSQL (fsync=off) at {display}",
        "target": (
            "throughput/limit >= 0.95 at N = 3 unknown; 429 share <= 1.5x one host's;"
            " <= 3 round trips per contact; acquire p99 in ms, far below a call"
        ),
    }
    report("scaleout", rows, extra, smoke=args.smoke)


if __name__ == "__main__":
    main()
