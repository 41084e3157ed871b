"""A binding shared window across hosts that start one after another: the split and the
throughput, in the scale-out benchmark's cap regime (16 calls in flight at most, 2-s calls,
``--concurrency 16`` on every host: one shared window that binds).

N = 1, 2, 3 ``octave-bulk run`` processes on one job (one contact list, one database, one
simulator). Host k starts once the hosts before it have 16 x k results (they hold and use the
whole window). Per cell: the accepted calls per second over the cap's limit (16 / 2 s), each
host's contacts, each host's share of the results while every host had work (from the
simulator's timestamp on each result: a fair share is 1 / N), the cap never exceeded, and the
database round trips per contact (``pg_stat_statements``, as ``bench_scaleout.py`` counts).

    python benchmarks/bench_fair_window.py [--contacts 240] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import report
from bench_scaleout import CAP, CAP_LATENCY, KEY, REGIMES, count_statements, statements, write_list

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' throwaway server

import psycopg  # noqa: E402

from octave_bulk.simulator import Latency, SimulatorConfig, serve_simulator  # noqa: E402
from octave_bulk.state.pg.dsn import LedgerUrl  # noqa: E402
from tests.pgserver import PgServer, running_postgres  # noqa: E402


def results_at(out: Path) -> list[float]:
    """When each of a host's results was answered (the simulator's timestamp), in order."""
    if not out.exists():
        return []
    stamps = []
    for line in out.read_bytes().splitlines():
        stamp = json.loads(line)["response"]["_metadata"]["timestamp"]
        stamps.append(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return sorted(stamps)


def lines(out: Path) -> int:
    return out.read_bytes().count(b"\n") if out.exists() else 0


def cell(server: PgServer, folder: Path, hosts: int, contacts: int) -> dict[str, Any]:
    name = f"fair{hosts}_{os.getpid()}"
    url = server.create_database(name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env |= {"OCTAVE_API_KEY": KEY, "OCTAVE_DRAIN_TIMEOUT": "1", "OCTAVE_LEDGER": url}
    contacts_csv = folder / f"{name}.csv"
    write_list(contacts_csv, 0, contacts)  # one list: one job for every host
    outs = [folder / f"{name}-{host}.ndjson" for host in range(hosts)]
    config = SimulatorConfig(max_inflight=CAP, latency=Latency(CAP_LATENCY, 0.1))
    with serve_simulator(config) as sim, contextlib.ExitStack() as started:
        procs: list[subprocess.Popen[bytes]] = []
        for host, out in enumerate(outs):
            while sum(lines(o) for o in outs[:host]) < CAP * host:
                time.sleep(0.05)  # the hosts before hold and use the whole window
            cmd = [
                sys.executable, "-m", "octave_bulk", "run", str(contacts_csv), "-o", str(out),
                "--agent", "ca_bench", "--base-url", sim.url, "--no-progress",
                *REGIMES["cap"]["flags"],
            ]  # fmt: skip
            with open(out.with_suffix(".log"), "w") as log:
                procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log))
            started.callback(procs[-1].kill)  # interrupted: no host outlives the bench
        for proc in procs:
            proc.wait(timeout=900)
        stats = sim.stats()
    trips, most = statements(url)
    arrivals = zip(stats["arrivals"], stats["arrival_outcomes"], strict=True)
    ok = [at for at, outcome in arrivals if outcome == "ok"]
    at = [results_at(out) for out in outs]
    start, end = max(a[0] for a in at), min(a[-1] for a in at)  # every host had work
    during = [sum(start <= t <= end for t in a) for a in at]
    return {
        "hosts": hosts,
        "contacts": contacts,
        "throughput_per_limit": (len(ok) - 1) / (ok[-1] - ok[0]) / (CAP / CAP_LATENCY),
        "split": "/".join(str(len(a)) for a in at),
        "share_while_all_ran": "/".join(f"{n / max(1, sum(during)):.2f}" for n in during),
        "seconds_all_ran": end - start,
        "over_capacity": stats["totals"].get("over_capacity", 0),
        "max_in_flight": stats["max_in_flight"],
        "trips_per_contact": trips / contacts,
        "failed_hosts": sum(proc.returncode != 0 for proc in procs),
        "most_run": "; ".join(
            f"{calls / contacts:.2f} {kind}" for kind, calls in list(most.items())[:5]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, default=240, help="per cell")
    parser.add_argument("--smoke", action="store_true", help="N = 1, 2; 96 contacts")
    args = parser.parse_args()
    counts, contacts = ((1, 2), 96) if args.smoke else ((1, 2, 3), args.contacts)
    with running_postgres() as server:
        count_statements(server)
        folder = server.data_dir.parent / "fair"
        folder.mkdir(exist_ok=True)
        rows = []
        for hosts in counts:
            rows.append(cell(server, folder, hosts, contacts))
            print(rows[-1], flush=True)
        display = LedgerUrl.parse(server.url()).display
    extra = {
        "server": f"throwaway PostgreSQL (fsync=off) at {display}",
        "target": "throughput/limit ~1.0 for every N; each host ~1/N of the results while all ran",
    }
    report("fair_window", rows, extra, smoke=args.smoke)


if __name__ == "__main__":
    main()
