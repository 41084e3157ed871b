"""The ``kills`` rows of ``bench_scaleout.py``: paid calls per contact when workers die.

A job of C contacts is enqueued on a fresh database, three ``octave-bulk worker`` processes
work it, and every C / (K + 1) contacts settled one of them, chosen at random, is killed with
SIGKILL (``kill -9``: its calls in flight are lost) and a new one started in its place, K
times. Once the job is drained: paid calls (the simulator's count: answered calls in sync
mode, submits in async mode) per contact, the outcomes unknown the reapers counted, and
whether every contact is done exactly once in the database. The promise measured
(docs/scale-out.md, "Paying once"): paid - contacts <= outcomes unknown, and in async mode
no contact is submitted twice, since a submit's handle is committed with its claim.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from octave_bulk.simulator import Latency, SimulatorConfig, serve_simulator

__all__ = ["kills_row"]

KEY = "bench-key"
_SETTLED = "SELECT count(*) FROM ob_contact WHERE state = 'done'"
_LEDGER = (
    "SELECT count(*) FILTER (WHERE state = 'done'), count(*),"
    " coalesce(sum(outcome_unknown), 0), coalesce(sum(late_answers), 0) FROM ob_contact"
)


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    return env | {"OCTAVE_API_KEY": KEY, "OCTAVE_DRAIN_TIMEOUT": "1", "OCTAVE_LEDGER": url}


def _settled(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(_SETTLED).fetchone()
    return int(row[0]) if row else 0


def kills_row(
    server: Any, folder: Path, write_list: Any, mode: str, contacts: int, kills: int
) -> dict[str, Any]:
    """One job worked by three workers, one killed and replaced ``kills`` times (see the
    module docstring); ``write_list(path, first, count)`` writes the contacts."""
    url = server.create_database(f"kills_{mode}_{os.getpid()}")
    env = _env(url)
    path = folder / f"kills-{mode}.csv"
    write_list(path, 0, contacts)
    # 0.5-s calls (async: jobs of 0.5 s, polled) at 40/s: about 20 calls in flight in all.
    config = SimulatorConfig(latency=Latency(0.5, 0.2))
    flags = ["--rate", "40/s", "--concurrency", "8", "--timeout", "2", "--no-progress"]
    started = time.monotonic()
    with serve_simulator(config) as sim:
        enqueue = [sys.executable, "-m", "octave_bulk", "enqueue", str(path), "--job", "kills",
                   "--agent", "ca_bench", "--base-url", sim.url, "--mode", mode]  # fmt: skip
        subprocess.run(enqueue, env=env, capture_output=True, check=True, timeout=120)
        number = 0

        def start() -> subprocess.Popen[bytes]:
            nonlocal number
            number += 1
            out = folder / f"kills-{mode}-w{number}.ndjson"
            cmd = [sys.executable, "-m", "octave_bulk", "worker", "--job", "kills", "-o",
                   str(out), "--base-url", sim.url, *flags]  # fmt: skip
            with open(out.with_suffix(".log"), "wb") as log:  # the process keeps its copy
                return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

        running = [start() for _ in range(3)]
        chance = random.Random(27)
        with contextlib.ExitStack() as workers:
            for proc in running:
                workers.callback(proc.kill)  # interrupted: no worker outlives the bench
            for kill in range(1, kills + 1):
                deadline = time.monotonic() + 300
                while _settled(url) < contacts * kill // (kills + 1):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"kills ({mode}): stuck; logs in {folder}")
                    time.sleep(0.02)
                victim = running.pop(chance.randrange(len(running)))
                victim.kill()  # kill -9: its calls in flight are outcomes unknown
                victim.wait()
                running.append(start())
                workers.callback(running[-1].kill)
            for proc in running:
                proc.wait(timeout=600)
        stats = sim.stats()
    with psycopg.connect(url) as conn:
        done, rows, unknown, late = conn.execute(_LEDGER).fetchone() or (0, 0, 0, 0)
    totals = stats["totals"]
    paid = totals.get("async_submits", 0) if mode == "async" else totals.get("successes", 0)
    return {
        "case": "kills",
        "mode": mode,
        "workers": 3,
        "kills": kills,
        "contacts": contacts,
        "done_once": done == rows == contacts,
        "paid_per_contact": paid / contacts,
        "paid_minus_contacts": paid - contacts,
        "outcomes_unknown": int(unknown),
        "late_answers": int(late),
        "within_promise": paid - contacts <= unknown,
        "failed_workers": sum(1 for proc in running if proc.returncode != 0),
        "seconds": time.monotonic() - started,
    }
