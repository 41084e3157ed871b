"""Reading a job of the shared ledger (issue 27): the results' bodies settle in the database
(the key scrubbed), and ``status/history/export/report --job NAME`` read it, whichever host
ran the contacts.

Real PostgreSQL (tests/pgserver.py: a fresh database per test), the simulator on loopback and
real CLI processes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import psycopg

from octave_bulk.redact import register_secret
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import Latency, SimulatorConfig, serve_simulator
from octave_bulk.simulator.hostile import HostileConfig, serve_hostile
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.pg.read import SETTLING, stored_record
from octave_bulk.state.pg.store import open_pg_store
from octave_bulk.state.store import Group
from tests.conftest import TEST_KEY
from tests.helpers import Run, read_lines, sim_settings, wait_for_lines, write_contacts
from tests.pgserver import PgServer

JOB = "ca_test"  # a job is named by its agent


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    return subprocess.run(
        [sys.executable, "-m", "octave_bulk", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _request_ids(path: Path) -> list[str]:
    header, rows = _csv(path)
    column = header.index("request_id")
    return [row[column] for row in rows]


def _two_hosts(url: str, tmp_path: Path, db_url: str, contacts: Path, count: int) -> list[Path]:
    """Two runs of the job at once, each with its own local output (two hosts): the first
    stops after half the calls (``--max-calls``), the second starts once the first has results,
    so each does some of the contacts."""
    outs = [tmp_path / "host-a" / "out.ndjson", tmp_path / "host-b" / "out.ndjson"]
    for out in outs:
        out.parent.mkdir()
    shared = ("--ledger", db_url, "--concurrency", "2")
    first = Run(url, contacts, outs[0], *shared, "--max-calls", str(count // 2))
    wait_for_lines(outs[0], 3)
    second = Run(url, contacts, outs[1], *shared)
    code, log = first.finish(timeout=180)
    assert code in (0, 5), log[-3000:]  # 5: its --max-calls
    code, log = second.finish(timeout=180)
    assert code == 0, log[-3000:]
    return outs


def test_export_job_writes_every_contact_once_as_the_union_of_the_hosts_outputs(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim = make_sim(latency=Latency(0.05, 0.1))
    rids = write_contacts(tmp_path / "in.csv", 60)
    host_a, host_b = _two_hosts(sim.url, tmp_path, db_url, tmp_path / "in.csv", 60)
    local = read_lines(host_a) + read_lines(host_b)
    assert sorted(line["requestId"] for line in local) == sorted(rids)  # each host did some
    union = tmp_path / "union.ndjson"
    union.write_bytes(host_a.read_bytes() + host_b.read_bytes())

    done = _cli("export", "--job", JOB, "--ledger", db_url, "-o", str(tmp_path / "job.csv"))
    assert done.returncode == 0, done.stderr
    assert "exported 60 contacts" in done.stderr
    files = _cli("export", str(union), "-o", str(tmp_path / "union.csv"))
    assert files.returncode == 0, files.stderr

    job_header, job_rows = _csv(tmp_path / "job.csv")
    union_header, union_rows = _csv(tmp_path / "union.csv")
    assert job_header == union_header
    assert sorted(job_rows) == sorted(union_rows)  # the same cells, whichever host wrote them
    assert sorted(_request_ids(tmp_path / "job.csv")) == sorted(rids)  # each exactly once


def test_export_new_across_hosts_repeats_and_skips_nothing(
    live_sim: Any, tmp_path: Path, db_url: str
) -> None:
    first = write_contacts(tmp_path / "in1.csv", 30)
    settings = sim_settings(live_sim.url, ledger=db_url)
    Path(tmp_path / "a").mkdir()
    Path(tmp_path / "b").mkdir()

    def export_new(host: str, name: str) -> list[str]:
        target = tmp_path / host / name
        done = _cli("export", "--job", JOB, "--ledger", db_url, "--new", "-o", str(target))
        assert done.returncode == 0, done.stderr
        return _request_ids(target)

    anyio.run(run_batch, tmp_path / "in1.csv", tmp_path / "a" / "out.ndjson", settings)
    assert sorted(export_new("a", "1.csv")) == sorted(first)
    second = write_contacts(tmp_path / "in2.csv", 20, start=30)
    anyio.run(run_batch, tmp_path / "in2.csv", tmp_path / "b" / "out.ndjson", settings)
    # Both hosts export the same increment at once: the mark's row lock queues them.
    both: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda h=host: both.append(export_new(h, "2.csv")))
        for host in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(both[0] + both[1]) == sorted(second)  # once, by one host or the other
    assert export_new("a", "3.csv") == [] == export_new("b", "3.csv")


def test_export_new_waits_for_a_settle_in_progress_instead_of_skipping_its_row(
    live_sim: Any, tmp_path: Path, db_url: str
) -> None:
    rids = write_contacts(tmp_path / "in.csv", 4)
    settings = sim_settings(live_sim.url, ledger=db_url)
    anyio.run(run_batch, tmp_path / "in.csv", tmp_path / "out.ndjson", settings)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE ob_contact SET state = 'todo', settled_seq = NULL WHERE request_id = %s",
            (rids[0],),
        )
        # A settle in progress: it drew its number, and a later settle committed first.
        late = psycopg.connect(db_url)
        late.execute(SETTLING, {"job": JOB})  # as a settle takes it
        late.execute(
            "UPDATE ob_contact SET state = 'done', settled_seq = nextval('ob_settled_seq')"
            " WHERE request_id = %s",
            (rids[0],),
        )
        conn.execute(
            "UPDATE ob_contact SET settled_seq = nextval('ob_settled_seq') WHERE request_id = %s",
            (rids[1],),
        )
        target = tmp_path / "new.csv"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
        export = subprocess.Popen(
            [sys.executable, "-m", "octave_bulk", "export", "--job", JOB, "--ledger", db_url,
             "--new", "-o", str(target)],
            env=env, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while not conn.execute(  # the export waits on the settle lock
            "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone():
            assert export.poll() is None, export.communicate()[1]
            time.sleep(0.05)
        late.commit()
        late.close()
        _, err = export.communicate(timeout=120)
    assert export.returncode == 0, err
    assert sorted(_request_ids(target)) == sorted(rids)


def test_a_result_or_error_stored_in_the_database_never_holds_the_key(
    tmp_path: Path, db_url: str
) -> None:
    rids = write_contacts(tmp_path / "in.csv", 6)
    forced = {rids[0]: "echo_500", rids[1]: "echo_not_found"}
    with serve_hostile(SimulatorConfig(), HostileConfig(forced=forced)) as sim:
        settings = sim_settings(sim.url, ledger=db_url, max_attempts=2)
        anyio.run(run_batch, tmp_path / "in.csv", tmp_path / "out.ndjson", settings)
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT request_id, state, result::text, error::text FROM ob_contact"
        ).fetchall()
    stored = {rid: (state, result, error) for rid, state, result, error in rows}
    assert all(stored[rid][0] == "done" and stored[rid][1] for rid in rids[2:])
    assert TEST_KEY not in repr(stored)
    assert "error for key ***" in stored[rids[0]][2]  # the echoed error, scrubbed
    assert "***" in stored[rids[1]][2]


def test_status_history_and_report_of_a_job_read_the_database(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    sim = make_sim(latency=Latency(0.05, 0.1))
    write_contacts(tmp_path / "in.csv", 40)
    _two_hosts(sim.url, tmp_path, db_url, tmp_path / "in.csv", 40)

    status = _cli("status", "--job", JOB, "--ledger", db_url, "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert (info["contacts"], info["done"], info["todo"], info["claimed"]) == (40, 40, 0, 0)
    assert (info["paid_calls"], info["outcome_unknown"], info["late_answers"]) == (40, 0, 0)
    assert info["workers"] == [] and info["agent"] == "sequence"
    text = _cli("status", "--job", JOB, "--ledger", db_url)
    assert "done: 40" in text.stdout and "0 live workers" in text.stdout
    assert pg.password not in text.stdout + text.stderr

    history = _cli("history", "--job", JOB, "--ledger", db_url, "--json")
    assert history.returncode == 0, history.stderr
    runs = json.loads(history.stdout)
    assert len(runs) == 2 and sum(run["succeeded"] for run in runs) == 40
    assert runs[0]["exit_code"] == 0 and runs[1]["exit_code"] in (0, 5)  # newest first
    assert all(run["finished_at"] for run in runs)
    table = _cli("history", "--job", JOB, "--ledger", db_url).stdout.splitlines()
    assert len(table) == 3 and all(run["run_id"] in "\n".join(table) for run in runs)

    report = _cli("report", "--job", JOB, "--ledger", db_url, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    page = (tmp_path / f"{JOB}.report.html").read_text()
    assert runs[0]["run_id"] in page and "<html" in page


def test_an_unknown_job_or_a_server_out_of_reach_exits_2_naming_it(
    tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    write_contacts(tmp_path / "in.csv", 2)
    with serve_simulator(SimulatorConfig()) as sim:
        settings = sim_settings(sim.url, ledger=db_url)
        anyio.run(run_batch, tmp_path / "in.csv", tmp_path / "out.ndjson", settings)
    for command in ("status", "history", "export", "report"):
        done = _cli(command, "--job", "ca_nobody", "--ledger", db_url, "-o", "-")
        if command in ("status", "history"):
            done = _cli(command, "--job", "ca_nobody", "--ledger", db_url)
        assert done.returncode == 2, (command, done.stderr)
        assert "no job 'ca_nobody'" in done.stderr
        assert pg.password not in done.stderr
    away = db_url.replace(f":{pg.port}/", ":9/")
    done = _cli("status", "--job", JOB, "--ledger", away)
    assert done.returncode == 2 and "postgresql://" in done.stderr
    assert pg.password not in done.stderr


async def test_a_late_duplicate_never_overwrites_the_stored_result(
    tmp_path: Path, db_url: str
) -> None:
    settings = sim_settings("http://127.0.0.1:9", ledger=db_url)
    paths = OutputPaths.for_output(tmp_path / "a.ndjson")
    first_line = b'{"requestId":"c-1","runId":"r1","response":{"n":1}}\n'
    late_line = b'{"requestId":"c-1","runId":"r2","response":{"n":2}}\n'
    ok = ("c-1", "r", 1, 1.0, 2.0, 200, "success", 1.0, 0)
    async with open_pg_store(paths, settings) as first, open_pg_store(paths, settings) as second:
        await first.load()
        await first.claims(()).claim("c-1")
        await first.record(Group([(7, "c-1", "ok", "r1", 0)], [ok], lines=[first_line]))
        await second.record(Group([(7, "c-1", "ok", "r2", 0)], [ok], lines=[late_line]))
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT result, paid_calls, late_answers FROM ob_contact WHERE request_id = 'c-1'"
        ).fetchone()
    assert row == ({"requestId": "c-1", "runId": "r1", "response": {"n": 1}}, 2, 1)


def test_every_record_is_one_the_database_takes_and_none_holds_the_key(db_url: str) -> None:
    register_secret(TEST_KEY)
    lines = [
        b'{"requestId":"a","response":{"usage":NaN,"big":1e400}}\n',  # a body passed verbatim
        b'{"requestId":"b","response":{"text":"\\u0000 and \\\\u0000"}}\n',
        b'{"requestId":"c","response":{"text":"\\ud800"}}\n',  # a lone surrogate
        b'{"requestId":"d","error":{"message":"error for key ' + TEST_KEY.encode() + b'"}}\n',
    ]
    with psycopg.connect(db_url) as conn:
        stored = [
            conn.execute("SELECT %s::jsonb", (stored_record(line),)).fetchone()[0]  # type: ignore[index]
            for line in lines
        ]
    assert stored[0] == {"requestId": "a", "response": {"usage": None, "big": None}}
    assert stored[1] == {"requestId": "b", "response": {"text": "\ufffd and \\u0000"}}
    assert "unstorable" in stored[2]
    assert stored[3]["error"]["message"] == "error for key ***"
