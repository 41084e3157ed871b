"""``enqueue`` and ``worker`` on a real PostgreSQL: one named job, N worker processes that
split it evenly, share one rate and one cap, and pay each contact once through kills, a frozen
worker and a database restart.

Every test gets a fresh database on one throwaway server (tests/pgserver.py) and talks to the
simulator over loopback with real ``octave-bulk`` processes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from octave_bulk.simulator import Latency, parse_rate_limit
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, write_contacts
from tests.pgserver import PgServer

_LEASE_FLAGS = ("--timeout", "2")  # with OCTAVE_DRAIN_TIMEOUT=1: a 5 s lease


def _env(db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    return env | {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_DRAIN_TIMEOUT": "1", "OCTAVE_LEDGER": db_url}


def _enqueue(db_url: str, url: str, contacts: Path, job: str = "nightly") -> str:
    done = subprocess.run(
        [
            sys.executable, "-m", "octave_bulk", "enqueue", str(contacts), "--job", job,
            "--agent", "ca_test", "--base-url", url,
        ],
        env=_env(db_url), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _worker(db_url: str, out: Path, *extra: str, job: str = "nightly") -> subprocess.Popen[str]:
    cmd = [
        sys.executable, "-m", "octave_bulk", "worker", "--job", job, "-o", str(out),
        "--no-progress", *_LEASE_FLAGS, *extra,
    ]  # fmt: skip
    with open(out.with_suffix(".log"), "a") as log:  # the process keeps its own copy
        return subprocess.Popen(cmd, env=_env(db_url), stdout=log, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen[str], out: Path, code: int = 0) -> str:
    process.wait(timeout=240)
    text = out.with_suffix(".log").read_text(errors="replace")
    assert process.returncode == code, text[-3000:]
    return text


def _contacts(db_url: str) -> dict[str, tuple[str, int, int]]:
    """requestId -> (state, paid calls, outcomes unknown) in the shared ledger."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT request_id, state, paid_calls, outcome_unknown FROM ob_contact"
        ).fetchall()
    return {rid: (state, paid, unknown) for rid, state, paid, unknown in rows}


def _lines(path: Path) -> int:
    return len(read_lines(path)) if path.exists() else 0


def test_enqueue_twice_adds_nothing_and_the_job_keeps_no_secret(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    sim = make_sim()
    rids = write_contacts(tmp_path / "in.csv", 40)
    first = _enqueue(db_url, sim.url, tmp_path / "in.csv")
    assert "to send: 40 contacts" in first and "40 contacts added" in first, first
    again = _enqueue(db_url, sim.url, tmp_path / "in.csv")
    assert "0 contacts added" in again, again
    write_contacts(tmp_path / "more.csv", 45)  # the same 40, and 5 new
    assert "5 contacts added" in _enqueue(db_url, sim.url, tmp_path / "more.csv")
    ledger = _contacts(db_url)
    assert len(ledger) == 45 and set(rids) < set(ledger)
    assert {state for state, _, _ in ledger.values()} == {"todo"}
    assert sim.stats()["totals"].get("calls", 0) == 0  # enqueueing pays nothing
    with psycopg.connect(db_url) as conn:
        job = conn.execute("SELECT agent, settings::text FROM ob_job").fetchall()
    assert job[0][0] == "sequence" and "ca_test" in job[0][1]
    assert TEST_KEY not in job[0][1] and pg.password not in job[0][1]
    assert pg.password not in first + again


def test_a_worker_on_a_job_never_enqueued_is_refused_before_any_call(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim = make_sim()
    log = _finish(_worker(db_url, tmp_path / "w.ndjson", job="nope"), tmp_path / "w.ndjson", 2)
    assert "no job 'nope'" in log and "enqueue" in log
    assert sim.stats()["totals"].get("calls", 0) == 0


def test_three_workers_split_one_job_evenly_and_pay_each_contact_once(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    sim = make_sim(latency=Latency(0.1, 0.2))
    rids = write_contacts(tmp_path / "in.csv", 240)
    _enqueue(db_url, sim.url, tmp_path / "in.csv")
    # One shared rate makes the job last ~8 s: longer than the workers take to start.
    flags = ("--concurrency", "4", "--rate", "30/s", "--base-url", sim.url)
    outs = [tmp_path / f"w{n}.ndjson" for n in range(3)]
    workers = [_worker(db_url, out, *flags) for out in outs]
    logs = [_finish(process, out) for process, out in zip(workers, outs, strict=True)]
    done_by = [_lines(out) for out in outs]
    assert sum(done_by) == 240 and min(done_by) >= 40, done_by  # each a fair share
    assert _contacts(db_url) == dict.fromkeys(rids, ("done", 1, 0))
    assert sim.stats()["successes"] == dict.fromkeys(rids, 1)
    assert sum(sim.stats()["calls"].values()) == 240  # paid calls = contacts
    assert all(pg.password not in log and TEST_KEY not in log for log in logs)
