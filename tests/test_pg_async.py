"""``run --mode async --ledger postgresql://…`` on a real PostgreSQL: a submit's handle is
committed with the claim's move to ``submitted``, so a contact is submitted once in all, and
any run polls the handles a run that left or died submitted (docs/scale-out.md, "Async mode on
several hosts").

Every test gets a fresh database on one throwaway server (tests/pgserver.py); in CI a server
that cannot start fails these tests rather than skipping them.
"""

from __future__ import annotations

import asyncio
import csv
import functools
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from octave_bulk.cli import cli
from octave_bulk.errors import ClaimRefused
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import parse_latency
from octave_bulk.state.jobs import PendingJob
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.pg.store import open_pg_store
from octave_bulk.state.store import Group
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, side, sim_settings, write_contacts
from tests.pgserver import PgServer
from tests.ports import free_port

FAST_POLLS = {"mode": "async", "poll_interval_min": 0.05, "poll_interval_max": 0.5}


def _ledger(db_url: str) -> dict[str, tuple[str, int, str | None]]:
    """requestId -> (state, paid calls, handle) in the shared ledger."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT request_id, state, paid_calls, handle FROM ob_contact")
        return {rid: (state, paid, handle) for rid, state, paid, handle in rows.fetchall()}


def _submits(sim: Any) -> int:
    return int(sim.stats()["totals"].get("async_submits", 0))


async def test_two_async_runs_at_once_submit_each_contact_once_and_settle_it_once(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    sim = make_sim(latency=parse_latency("300ms:0.2"))
    rids = write_contacts(tmp_path / "in.csv", 60)
    settings = sim_settings(sim.url, ledger=db_url, concurrency=4, **FAST_POLLS)
    outs = [tmp_path / "a.ndjson", tmp_path / "b.ndjson"]
    summaries = await asyncio.gather(
        *(run_batch(tmp_path / "in.csv", out, settings) for out in outs)
    )
    assert all(summary["exit_code"] == 0 for summary in summaries), summaries
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1)  # one paid submit per contact
    assert _submits(sim) == 60
    ledger = _ledger(db_url)
    assert {rid: (state, paid) for rid, (state, paid, _) in ledger.items()} == dict.fromkeys(
        rids, ("done", 1)
    )
    # Each result is written once, by the run that submitted it, with the handle on record.
    results = [line for out in outs for line in read_lines(out)]
    assert Counter(line["requestId"] for line in results) == Counter(rids)
    assert all(ledger[line["requestId"]][2] == line["asyncHandle"] for line in results)
    assert sum(s["async_jobs"]["submitted"] for s in summaries) == 60
    # A third run finds everything done: it submits and polls nothing.
    polls = sim.stats()["totals"]["status_polls"]
    third = await run_batch(tmp_path / "in.csv", tmp_path / "c.ndjson", settings)
    assert third["exit_code"] == 0 and third["counts"]["skipped_done"] == 60
    assert _submits(sim) == 60 and sim.stats()["totals"]["status_polls"] == polls
    assert all(pg.password not in text for text in _texts(tmp_path))
    assert TEST_KEY not in _database_text(db_url)  # the key is in no row either


def _database_text(db_url: str) -> str:
    """Every row of the shared ledger's tables, as text."""
    with psycopg.connect(db_url) as conn:
        tables = conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'ob\\_%'"
        ).fetchall()
        return "\n".join(
            str(
                conn.execute(
                    sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(table))
                ).fetchall()
            )
            for (table,) in tables
        )


async def test_a_budget_holds_async_submits_across_runs_on_the_shared_ledger(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim = make_sim(latency=parse_latency("100ms"))
    write_contacts(tmp_path / "in.csv", 30)
    settings = sim_settings(sim.url, ledger=db_url, budget="12/day", concurrency=4, **FAST_POLLS)
    first = await run_batch(tmp_path / "in.csv", tmp_path / "a.ndjson", settings)
    assert first["stop_reason"] == "budget" and first["async_jobs"]["submitted"] == 12
    second = await run_batch(tmp_path / "in.csv", tmp_path / "b.ndjson", settings)
    assert second["stop_reason"] == "budget" and second["async_jobs"]["submitted"] == 0
    assert _submits(sim) == 12 and len(read_lines(tmp_path / "a.ndjson")) == 12


def _texts(folder: Path) -> list[str]:
    return [path.read_text(errors="replace") for path in folder.iterdir()]


async def test_a_handle_submitted_by_a_run_that_left_is_polled_by_the_next_and_exported_once(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim = make_sim(latency=parse_latency("200ms"))
    rids = write_contacts(tmp_path / "in.csv", 30)
    settings = sim_settings(sim.url, ledger=db_url, **FAST_POLLS)
    # The first run submits every contact and leaves without polling (--detach).
    first = await run_batch(
        tmp_path / "in.csv", tmp_path / "a.ndjson", settings.model_copy(update={"detach": True})
    )
    assert first["async_jobs"]["submitted"] == 30 and not read_lines(tmp_path / "a.ndjson")
    submitted = {
        line["handle"]: line["requestId"]
        for line in read_lines(side(tmp_path / "a.ndjson", ".jobs.ndjson"))
    }
    assert {rid: (state, handle) for rid, (state, _, handle) in _ledger(db_url).items()} == {
        rid: ("submitted", handle) for handle, rid in submitted.items()
    }
    polls = sim.stats()["totals"].get("status_polls", 0)
    # A second run, another output: it polls those handles and submits nothing.
    second = await run_batch(tmp_path / "in.csv", tmp_path / "b.ndjson", settings)
    assert second["exit_code"] == 0, second
    assert second["async_jobs"]["carried_from_earlier_runs"] == 30
    assert second["async_jobs"]["submitted"] == 0 and _submits(sim) == 30
    assert sim.stats()["totals"]["status_polls"] - polls >= 30
    results = read_lines(tmp_path / "b.ndjson")
    assert {line["asyncHandle"]: line["requestId"] for line in results} == submitted
    assert {rid: state for rid, (state, _, _) in _ledger(db_url).items()} == dict.fromkeys(
        rids, "done"
    )
    exported = CliRunner().invoke(
        cli, ["export", str(tmp_path / "b.ndjson"), "-o", str(tmp_path / "b.csv")]
    )
    assert exported.exit_code == 0, exported.output
    emails = [row["email"] for row in _csv_rows(tmp_path / "b.csv")]
    assert sorted(emails) == sorted(f"p{n}@example.com" for n in range(30))  # each once


async def test_a_submitted_contact_is_claimed_by_nobody_and_polled_by_the_next_run(
    tmp_path: Path, db_url: str
) -> None:
    settings = sim_settings("http://127.0.0.1:9", ledger=db_url, mode="async")
    paths = OutputPaths.for_output(tmp_path / "a.ndjson")
    job = PendingJob("c-1", "asyncReqID_1", {"email": "p1@example.com"}, time.time())
    submit = ("c-1", "r1", 1, 1.0, 2.0, 200, "submitted", 0.0, 0)
    async with open_pg_store(paths, settings) as first:
        await first.load()
        await first.claims(()).claim("c-1")
        await first.record(Group([], [submit], submitted=[job]))
        assert _ledger(db_url) == {"c-1": ("submitted", 1, "asyncReqID_1")}
        async with open_pg_store(paths, settings) as second:
            assert not (await second.load()).awaited_jobs()  # the first run, live, polls it
            with pytest.raises(ClaimRefused):  # never submitted again, by anyone
                await second.claims(()).claim("c-1")
    # The first run left with its job pending: the next run polls it, and its answer settles.
    async with open_pg_store(paths, settings) as third:
        view = await third.load()
        assert list(view.awaited_jobs()) == [job] and view.awaiting == {"c-1"}
        await third.record(Group([(7, "c-1", "ok", "r3", 0)], [], settled_jobs=["c-1"]))
    assert _ledger(db_url) == {"c-1": ("done", 1, "asyncReqID_1")}
    assert _ledger_counts(db_url) == {"done": 1, "paid": 1, "unknown": 0, "late": 0}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _start(
    url: str, contacts: Path, out: Path, ledger: str, config: Path
) -> subprocess.Popen[bytes]:
    """``octave-bulk run --mode async`` in a process on the shared ledger (``OCTAVE_LEDGER``);
    calls time out after 2 s and a drain lasts 1 s, so a worker's lease is 5 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env |= {"OCTAVE_API_KEY": TEST_KEY, "OCTAVE_DRAIN_TIMEOUT": "1", "OCTAVE_LEDGER": ledger}
    cmd = [
        sys.executable, "-m", "octave_bulk", "run", str(contacts), "-o", str(out),
        "--agent", "ca_test", "--base-url", url, "--no-progress", "--timeout", "2",
        "--mode", "async", "--rate", "50/s", "--concurrency", "8", "--config", str(config),
    ]  # fmt: skip
    with open(out.with_suffix(".log"), "wb") as log:  # the process keeps its own copy
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait(what: str, ready: Any, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"not after {timeout} s: {what}"
        time.sleep(0.02)


def _paid_in_ledger(db_url: str) -> int:
    """The paid calls the shared ledger holds (0 before a run made its tables)."""
    with psycopg.connect(db_url) as conn:
        try:
            row = conn.execute("SELECT coalesce(sum(paid_calls), 0) FROM ob_contact").fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
    return int(row[0]) if row else 0


def _paused(sim: Any, db_url: str, before: int) -> bool:
    """Whether more than ``before`` submits were paid, each committed in the ledger, and none
    came for 0.3 s."""
    submits = _submits(sim)
    if submits < before + 10 or _paid_in_ledger(db_url) != submits:
        return False
    time.sleep(0.3)
    return _submits(sim) == submits == _paid_in_ledger(db_url)


def _leases_out(db_url: str) -> bool:
    """Whether every live worker has been silent for longer than its lease (may be reaped)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ob_worker WHERE state = 'live'"
            " AND heartbeat_at > clock_timestamp() - make_interval(secs => lease_seconds)"
        ).fetchone()
    return row is not None and row[0] == 0


def _three_second_jobs(make_sim: Any, folder: Path, contacts: int) -> tuple[Any, list[str], Path]:
    """A simulator of 3-s jobs, ``contacts`` in ``folder/in.csv`` and an async config: 20 jobs
    awaited at most (a run pauses its submits there), polls 0.1-0.5 s apart."""
    config = folder / "async.toml"
    config.write_text(
        "max_pending = 20\nfsync_interval = 0.05\npoll_interval_min = 0.1\n"
        "poll_interval_max = 0.5\n"
    )
    sim = make_sim(latency=parse_latency("3s:0.1"))
    return sim, write_contacts(folder / "in.csv", contacts), config


@pytest.mark.slow
def test_async_runs_killed_after_their_submits_pay_nothing_again_the_next_polls_their_handles(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim, rids, config = _three_second_jobs(make_sim, tmp_path, 100)
    left_at_kill: list[dict[str, str]] = []
    for kill in range(3):
        out = tmp_path / f"killed-{kill}.ndjson"
        before = _submits(sim)
        run = _start(sim.url, tmp_path / "in.csv", out, db_url, config)
        # Killed once it has submitted more jobs and paused (max_pending: its next submit
        # waits for a job to end, 3 s after its submit), every paid submit's handle committed:
        # the same counts twice, 0.3 s apart (no submit on the wire).
        _wait(f"run {kill} paused after its submits", lambda b=before: _paused(sim, db_url, b))
        run.kill()
        run.wait()
        left = {h: rid for rid, (state, _, h) in _ledger(db_url).items() if state == "submitted"}
        assert left, out.with_suffix(".log").read_text(errors="replace")[-3000:]
        print(f"kill {kill}: {_submits(sim)} submitted, {len(left)} awaited at the kill")
        left_at_kill.append({h: rid for h, rid in left.items() if h is not None})
        _wait("the killed run's lease to run out", lambda: _leases_out(db_url))
    last = tmp_path / "last.ndjson"
    final = _start(sim.url, tmp_path / "in.csv", last, db_url, config)
    final.wait(timeout=240)
    log = last.with_suffix(".log").read_text(errors="replace")
    assert final.returncode == 0, log[-3000:]
    # 0 extra paid: one submit per contact in all, however many runs were killed.
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1) and _submits(sim) == 100
    assert _ledger_counts(db_url) == {"done": 100, "paid": 100, "unknown": 0, "late": 0}
    outs = [tmp_path / f"killed-{kill}.ndjson" for kill in range(3)] + [last]
    written = {
        line["asyncHandle"]: (n, line["requestId"])
        for n, out in enumerate(outs)
        for line in read_lines(out)
    }
    assert Counter(rid for _, rid in written.values()) == Counter(rids)  # each result once
    for kill, left in enumerate(left_at_kill):  # polled by a later run, not submitted again
        assert {h: written[h][1] for h in left} == left
        assert all(written[h][0] > kill for h in left)


@pytest.mark.slow
def test_a_run_polls_the_handles_of_a_run_killed_beside_it_once_its_lease_ran_out(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim, rids, config = _three_second_jobs(make_sim, tmp_path, 120)
    killed = _start(sim.url, tmp_path / "in.csv", tmp_path / "a.ndjson", db_url, config)
    beside = _start(sim.url, tmp_path / "in.csv", tmp_path / "b.ndjson", db_url, config)
    _wait("both runs paused after their submits", lambda: _paused(sim, db_url, 20))
    killed.kill()
    killed.wait()
    left = {h: rid for rid, (state, _, h) in _ledger(db_url).items() if state == "submitted"}
    beside.wait(timeout=240)
    log = tmp_path.joinpath("b.log").read_text(errors="replace")
    assert beside.returncode == 0, log[-3000:]
    # The run beside it took the killed run's jobs over (once its lease ran out) and polled
    # them: every contact done by the two runs, each submitted once.
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1) and _submits(sim) == 120
    assert {state for state, _, _ in _ledger(db_url).values()} == {"done"}
    results = {line["asyncHandle"]: line["requestId"] for line in read_lines(tmp_path / "b.ndjson")}
    theirs = {line["handle"] for line in read_lines(side(tmp_path / "a.ndjson", ".jobs.ndjson"))}
    killed_jobs = {h: rid for h, rid in left.items() if h in theirs}
    assert killed_jobs and all(results.get(h) == rid for h, rid in killed_jobs.items())


_REFUSE_ADOPTION = """
CREATE FUNCTION ob_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the ledger refuses this'; END $$;
CREATE TRIGGER ob_refuse BEFORE UPDATE ON ob_contact FOR EACH ROW
WHEN (OLD.state = 'submitted' AND NEW.state = 'submitted' AND NEW.holder IS NOT NULL
      AND NEW.holder IS DISTINCT FROM OLD.holder) EXECUTE FUNCTION ob_refuse();
"""
"""Every take-over of a submitted job refused (a policy, a trigger): nothing else is."""


@pytest.mark.slow
def test_a_take_over_the_ledger_refuses_stops_the_run_beside_and_the_next_run_polls_them(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    sim, rids, config = _three_second_jobs(make_sim, tmp_path, 120)
    killed = _start(sim.url, tmp_path / "in.csv", tmp_path / "a.ndjson", db_url, config)
    beside = _start(sim.url, tmp_path / "in.csv", tmp_path / "b.ndjson", db_url, config)
    try:
        _wait("both runs paused after their submits", lambda: _paused(sim, db_url, 20))
        killed.kill()
        killed.wait()
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(_REFUSE_ADOPTION)
        beside.wait(timeout=120)  # before: it waited for ever for the killed run's jobs
    finally:
        for run in (killed, beside):
            if run.poll() is None:
                run.kill()
                run.wait()
    log = tmp_path.joinpath("b.log").read_text(errors="replace")
    assert beside.returncode == 6, log[-3000:]  # submits were paid: "resume"
    assert "the ledger refuses this" in log and "ledger_failed" in log
    assert pg.password not in log
    submits = _submits(sim)
    early = _start(sim.url, tmp_path / "in.csv", tmp_path / "c0.ndjson", db_url, config)
    early.wait(timeout=120)  # not mended yet: refused as it starts, before any call
    log = tmp_path.joinpath("c0.log").read_text(errors="replace")
    assert early.returncode == 2 and "the ledger refuses this" in log, log[-3000:]
    assert "Traceback" not in log and _submits(sim) == submits
    with psycopg.connect(db_url, autocommit=True) as conn:  # mended: the next run polls them
        conn.execute("DROP FUNCTION ob_refuse() CASCADE")
    last = _start(sim.url, tmp_path / "in.csv", tmp_path / "c.ndjson", db_url, config)
    last.wait(timeout=240)
    log = tmp_path.joinpath("c.log").read_text(errors="replace")
    assert last.returncode == 0, log[-3000:]
    # Nothing paid twice: every contact submitted once in all, and done.
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1) and _submits(sim) == 120
    assert {state for state, _, _ in _ledger(db_url).values()} == {"done"}


def _ledger_counts(db_url: str) -> dict[str, int]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'done'), sum(paid_calls), sum(outcome_unknown),"
            " sum(late_answers) FROM ob_contact"
        ).fetchone()
    assert row is not None
    return {"done": row[0], "paid": row[1], "unknown": row[2], "late": row[3]}


@pytest.mark.parametrize("refused", [False, True], ids=["taken-over", "take-over-refused"])
async def test_a_callback_for_a_job_a_run_that_left_submitted_brings_its_poll_and_settles_it(
    make_sim: Any, tmp_path: Path, db_url: str, refused: bool, caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_sim(latency=parse_latency("5s"))
    write_contacts(tmp_path / "b.csv", 3)
    theirs = write_contacts(tmp_path / "a.csv", 3, start=100)
    port = free_port()
    listening = {
        "callback_url": f"http://127.0.0.1:{port}/octave",
        "callback_listen": f"127.0.0.1:{port}",
    }
    settings = sim_settings(sim.url, ledger=db_url, **FAST_POLLS)
    # Run B listens for callbacks; its own jobs keep it running for 5 s.
    b_out = tmp_path / "b.ndjson"
    running = asyncio.create_task(
        run_batch(tmp_path / "b.csv", b_out, settings.model_copy(update=listening))
    )
    committed = functools.partial(_wait, "B's submits", lambda: _paid_in_ledger(db_url) >= 3)
    await asyncio.to_thread(committed)  # B has started, and committed its submits
    # Run A submits three jobs and leaves without polling them (B started before: it does not
    # poll them either).
    a_settings = settings.model_copy(update={"detach": True})
    await run_batch(tmp_path / "a.csv", tmp_path / "a.ndjson", a_settings)
    handles = {rid: handle for rid, (_, _, handle) in _ledger(db_url).items() if rid in theirs}
    if refused:  # B may not take them over: it stops, and the next run polls them
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(_REFUSE_ADOPTION)
    token = side(b_out, ".callback-token").read_text().strip()
    async with httpx.AsyncClient() as client:  # the callbacks Octave would send to B
        for handle in [*handles.values(), "asyncReqID_forged"]:
            answer = await client.post(
                f"http://127.0.0.1:{port}/octave/{token}", json={"requestId": handle}
            )
            assert answer.status_code == 200
    with caplog.at_level(logging.ERROR, logger="octave_bulk"):
        summary = await running
    results = {line["requestId"]: line["asyncHandle"] for line in read_lines(b_out)}
    if refused:  # B had claimed all it would: its own jobs done, A's left to the next run
        assert summary["exit_code"] == 0, summary
        assert not results.keys() & theirs
        said = [r.getMessage() for r in caplog.records if r.getMessage() == "ledger_refused"]
        assert len(said) == len(handles)  # each callback's take-over refused, said
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DROP FUNCTION ob_refuse() CASCADE")
        last = await run_batch(tmp_path / "a.csv", tmp_path / "c.ndjson", settings)
        assert last["exit_code"] == 0, last
        polled = {
            line["requestId"]: line["asyncHandle"] for line in read_lines(tmp_path / "c.ndjson")
        }
        assert {rid: polled[rid] for rid in theirs} == handles  # polled, not submitted again
        assert _submits(sim) == 6 and {s for s, _, _ in _ledger(db_url).values()} == {"done"}
        return
    assert summary["exit_code"] == 0, summary
    assert {rid: results[rid] for rid in theirs} == handles  # B polled A's jobs: done by B
    assert all(_ledger(db_url)[rid][0] == "done" for rid in results)
    assert _submits(sim) == 6 and "asyncReqID_forged" not in results.values()
    assert summary["async_jobs"]["callbacks"]["received"] >= 4
