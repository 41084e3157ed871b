"""``run --ledger postgresql://…`` on a real PostgreSQL: the shared ledger is the truth for
"done", claims keep concurrent runs from paying twice, and one rate is shared across them.

Every test gets a fresh database on one throwaway server (tests/pgserver.py); in CI a server
that cannot start fails these tests rather than skipping them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from octave_bulk.errors import ClaimRefused, StateError
from octave_bulk.limits.base import LimiterContext
from octave_bulk.limits.pg_factory import shared_limiter
from octave_bulk.limits.shared_pg import SharedRateLimiter
from octave_bulk.run import finish
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import Latency, parse_rate_limit
from octave_bulk.state.paths import OutputPaths
from octave_bulk.state.pg.dsn import LedgerUrl, connect
from octave_bulk.state.pg.store import open_pg_store
from octave_bulk.state.store import Group
from tests.conftest import TEST_KEY
from tests.helpers import read_lines, sim_settings, start_run, write_contacts
from tests.pgserver import PgServer


def ledger_contacts(db_url: str) -> dict[str, tuple[str, int, int]]:
    """requestId -> (state, paid calls, outcomes unknown) in the shared ledger."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT request_id, state, paid_calls, outcome_unknown FROM ob_contact"
        ).fetchall()
    return {rid: (state, paid, unknown) for rid, state, paid, unknown in rows}


async def test_a_run_on_the_shared_ledger_pays_once_and_a_second_run_pays_nothing(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    sim = make_sim()
    rids = write_contacts(tmp_path / "in.csv", 40)
    settings = sim_settings(sim.url, ledger=db_url)
    first = await run_batch(tmp_path / "in.csv", tmp_path / "a.ndjson", settings)
    assert first["exit_code"] == 0 and first["paid_calls"] == 40
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1)
    assert ledger_contacts(db_url) == dict.fromkeys(rids, ("done", 1, 0))
    assert len(read_lines(tmp_path / "a.ndjson")) == 40  # the local copy, for inspection
    # Another output, empty: only the database knows these contacts are done.
    second = await run_batch(tmp_path / "in.csv", tmp_path / "b.ndjson", settings)
    assert second["exit_code"] == 0 and second["paid_calls"] == 0
    assert second["counts"]["skipped_done"] == 40
    assert sim.stats()["calls"] == dict.fromkeys(rids, 1)
    assert not (tmp_path / "a.ledger.sqlite").exists()  # no SQLite beside the output
    assert not _mentioned(tmp_path, pg.password)


def _mentioned(folder: Path, secret: str) -> list[str]:
    """The files in ``folder`` whose text holds ``secret``."""
    return [p.name for p in folder.iterdir() if secret in p.read_text(errors="replace")]


async def test_a_contact_held_by_one_run_is_refused_to_another_and_a_late_answer_counts_twice(
    tmp_path: Path, db_url: str
) -> None:
    settings = sim_settings("http://127.0.0.1:9", ledger=db_url)
    paths = OutputPaths.for_output(tmp_path / "a.ndjson")
    async with open_pg_store(paths, settings) as first, open_pg_store(paths, settings) as second:
        await first.load()
        mine, theirs = first.claims(()), second.claims(())
        await mine.claim("c-1")
        with pytest.raises(ClaimRefused, match="held or settled by another worker"):
            await theirs.claim("c-1")
        ok_call = ("c-1", "r1", 1, 1.0, 2.0, 200, "success", 1.0, 0)
        await first.record(Group([(7, "c-1", "ok", "r1", 0)], [ok_call]))
        assert ledger_contacts(db_url)["c-1"] == ("done", 1, 0)
        with pytest.raises(ClaimRefused):  # settled: nobody claims it again
            await theirs.claim("c-1")
        # An answer for a claim it does not hold (a frozen worker's late call): paid twice,
        # the done contact left as it was.
        await second.record(Group([(7, "c-1", "permanent", "r2", 0)], [ok_call]))
        assert ledger_contacts(db_url)["c-1"] == ("done", 2, 0)
        view = await second.load()
        assert view.counts().results == 1 and view.counts().failed_permanent == 0
    with psycopg.connect(db_url) as conn:
        late = conn.execute("SELECT late_answers FROM ob_contact").fetchone()
        workers = conn.execute("SELECT DISTINCT state FROM ob_worker").fetchall()
    assert late == (1,) and workers == [("left",)]


async def test_a_claim_riding_on_the_shared_limiters_booking_is_taken_and_refused_alike(
    tmp_path: Path, db_url: str
) -> None:
    settings = sim_settings("http://127.0.0.1:9", ledger=db_url, rate="50/s", adaptive=False)
    paths = OutputPaths.for_output(tmp_path / "a.ndjson")
    limiter = shared_limiter(LimiterContext(settings))
    assert isinstance(limiter, SharedRateLimiter)
    elsewhere = SharedRateLimiter(lambda: connect(LedgerUrl.parse(db_url)), key="k", rate=50.0)
    async with open_pg_store(paths, settings) as first, open_pg_store(paths, settings) as second:
        await first.load()
        await limiter.open()
        await elsewhere.open()
        try:
            await first.claims(()).claim("c-1")
            theirs = second.claims(())
            held = theirs.rider("c-1")
            ticket = await limiter.acquire_carrying(held)
            with pytest.raises(ClaimRefused, match="held or settled by another worker"):
                await held.claim()
            await limiter.release(ticket)
            free = theirs.rider("c-2")
            await limiter.acquire_carrying(free)
            assert ledger_holders(db_url) == {"c-1": first.worker, "c-2": second.worker}
            await free.claim()
            # A limiter that does not book in the ledger's database carries no claim: the
            # claim is taken alone, right before the call.
            alone = theirs.rider("c-3")
            await elsewhere.acquire_carrying(alone)
            assert "c-3" not in ledger_holders(db_url)
            await alone.claim()
            assert ledger_holders(db_url)["c-3"] == second.worker
            # Reaped (silent past its lease, say), the worker fences itself at its next
            # renewal: no booking carries its claims any more, and none is taken.
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute(
                    "UPDATE ob_worker SET state = 'reaped' WHERE worker = %s", (second.worker,)
                )
            assert not await second.lease.renew(0)
            fenced = theirs.rider("c-4")
            await limiter.acquire_carrying(fenced)
            with pytest.raises(ClaimRefused, match="lease is not renewed"):
                await fenced.claim()
            assert "c-4" not in ledger_holders(db_url)
        finally:
            await elsewhere.aclose()
            await limiter.aclose()


def ledger_holders(db_url: str) -> dict[str, str]:
    """requestId -> the worker holding its claim, with its call marked as on the wire."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT request_id, holder FROM ob_contact WHERE state = 'claimed' AND sending"
        ).fetchall()
    return dict(rows)


async def test_a_budget_is_held_across_runs_on_the_shared_ledger(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 30)
    settings = sim_settings(sim.url, ledger=db_url, budget="12/day", concurrency=4)
    first = await run_batch(tmp_path / "in.csv", tmp_path / "a.ndjson", settings)
    assert first["stop_reason"] == "budget" and first["paid_calls"] == 12
    second = await run_batch(tmp_path / "in.csv", tmp_path / "b.ndjson", settings)
    assert second["stop_reason"] == "budget" and second["paid_calls"] == 0
    assert sum(sim.stats()["successes"].values()) == 12


def _wait_for_lines(path: Path, count: int) -> None:
    """Until ``path`` holds ``count`` whole lines (a line being written is not counted)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path.name}: fewer than {count} lines after 120 s")


def _finish(process: subprocess.Popen[str], out: Path, codes: tuple[int, ...] = (0,)) -> str:
    process.wait(timeout=240)
    text = out.with_suffix(".log").read_text(errors="replace")
    assert process.returncode in codes, text[-3000:]
    return text


@pytest.mark.slow
def test_two_runs_on_one_ledger_at_once_never_pay_twice_and_share_one_rate(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    rate = 20
    sim = make_sim(rate_limit=parse_rate_limit(f"{rate}/s:2"), latency=Latency(0.05, 0.2))
    rids = write_contacts(tmp_path / "in.csv", 160)
    # --no-adaptive: each run paces at --rate whatever the 429s (the control then shows the
    # whole excess, not what an adaptive search would win back).
    limits = ("--rate", f"{rate}/s", "--concurrency", "8", "--no-adaptive")
    runs = [
        (start_run(sim.url, tmp_path / "in.csv", tmp_path / f"{n}.ndjson", db_url, *limits), n)
        for n in "ab"
    ]
    logs = [_finish(process, tmp_path / f"{n}.ndjson") for process, n in runs]
    shared = sim.stats()
    assert shared["successes"] == dict.fromkeys(rids, 1)  # each contact paid once in all
    assert ledger_contacts(db_url) == dict.fromkeys(rids, ("done", 1, 0))
    done_by = [len(read_lines(tmp_path / f"{n}.ndjson")) for n in "ab"]
    assert sum(done_by) == 160  # each result written once, by whichever run claimed it
    assert all(pg.password not in log for log in logs)
    assert not _mentioned(tmp_path, pg.password)
    # The control: two runs on their own file ledgers, each pacing to the whole limit alone.
    alone = make_sim(rate_limit=parse_rate_limit(f"{rate}/s:2"), latency=Latency(0.05, 0.2))
    control = [
        (start_run(alone.url, tmp_path / "in.csv", tmp_path / f"own-{n}.ndjson", None, *limits), n)
        for n in "ab"
    ]
    for process, n in control:  # 1: at twice the limit a contact may be refused all its tries
        _finish(process, tmp_path / f"own-{n}.ndjson", codes=(0, 1))
    refused_alone = alone.stats()["totals"].get("rate_limited", 0)
    refused_shared = shared["totals"].get("rate_limited", 0)
    assert sum(alone.stats()["successes"].values()) >= 0.98 * 320  # each paid for ~every contact
    # Measured 26 and more refused alone, 0-2 shared: how much the two lone runs overlap
    # varies with how fast each starts on a loaded machine, so the bound is a wide one.
    assert refused_alone >= 12 and refused_shared * 4 < refused_alone, (
        refused_shared,
        refused_alone,
    )


@pytest.mark.slow
def test_a_run_killed_mid_run_and_restarted_leaves_every_contact_done_once(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim = make_sim(latency=Latency(0.3, 0.2))
    rids = write_contacts(tmp_path / "in.csv", 120)
    limits = ("--rate", "40/s", "--concurrency", "8")
    first = start_run(sim.url, tmp_path / "in.csv", tmp_path / "a.ndjson", db_url, *limits)
    _wait_for_lines(tmp_path / "a.ndjson", 30)
    first.kill()
    first.wait()
    with psycopg.connect(db_url) as conn:  # claims whose calls were on the wire at the kill
        rows = conn.execute(
            "SELECT request_id FROM ob_contact WHERE state = 'claimed' AND sending"
        ).fetchall()
    held = [rid for (rid,) in rows]
    assert held  # calls were in flight at the kill (a reserved claim, never sent, is not)
    time.sleep(6)  # the killed worker's lease (5 s) runs out: its claims may be reaped
    _finish(
        start_run(sim.url, tmp_path / "in.csv", tmp_path / "b.ndjson", db_url, *limits),
        tmp_path / "b.ndjson",
    )
    ledger = ledger_contacts(db_url)
    assert {state for state, _, _ in ledger.values()} == {"done"} and set(ledger) == set(rids)
    unknown = sum(u for _, _, u in ledger.values())
    assert unknown == len(held)  # each claim of the dead worker reaped once
    paid = sum(sim.stats()["successes"].values())
    assert 0 <= paid - len(rids) <= unknown
    assert all(sim.stats()["successes"][rid] == 1 for rid in rids if rid not in held)


@pytest.mark.slow
def test_a_run_through_a_postgresql_restart_loses_no_result_and_pays_nothing_unknown_twice(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer
) -> None:
    sim = make_sim(latency=Latency(0.1, 0.2))
    rids = write_contacts(tmp_path / "in.csv", 150)
    limits = ("--rate", "30/s", "--concurrency", "4")
    first = start_run(sim.url, tmp_path / "in.csv", tmp_path / "a.ndjson", db_url, *limits)
    _wait_for_lines(tmp_path / "a.ndjson", 30)
    pg.restart_immediate()  # as a crash would: every connection cut
    log = _finish(first, tmp_path / "a.ndjson")
    assert pg.password not in log
    written = {line["requestId"] for line in read_lines(tmp_path / "a.ndjson")}
    ledger = ledger_contacts(db_url)
    assert all(ledger[rid][0] == "done" for rid in written)  # every local result settled
    # What the cut left to do (not sent while the database was away) is done by the next run.
    _finish(
        start_run(sim.url, tmp_path / "in.csv", tmp_path / "b.ndjson", db_url, *limits),
        tmp_path / "b.ndjson",
    )
    ledger = ledger_contacts(db_url)
    assert set(ledger) == set(rids) and {state for state, _, _ in ledger.values()} == {"done"}
    unknown = sum(u for _, _, u in ledger.values())
    assert 0 <= sum(sim.stats()["successes"].values()) - len(rids) <= unknown


async def test_a_summary_that_cannot_be_written_on_the_shared_ledger_is_the_runs_error(
    make_sim: Any, tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run's own error reaches the caller as it was raised, not wrapped in the heartbeat's
    # task group (an ExceptionGroup the CLI did not read: a traceback and exit 1).
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 10)
    real_write = finish.write_json_atomic

    def refuse_summary(path: Path, document: Any) -> None:
        if path.name.endswith(".summary.json"):
            raise OSError(28, "No space left on device")
        real_write(path, document)

    monkeypatch.setattr(finish, "write_json_atomic", refuse_summary)
    settings = sim_settings(sim.url, ledger=db_url)
    with pytest.raises(StateError, match="cannot write the summary") as caught:
        await run_batch(tmp_path / "in.csv", tmp_path / "a.ndjson", settings)
    assert caught.value.calls_sent == 10  # exit 6: they were paid
    assert sum(sim.stats()["successes"].values()) == 10


def test_a_shared_ledger_out_of_reach_stops_the_run_before_any_call_and_hides_the_password(
    make_sim: Any, tmp_path: Path
) -> None:
    sim = make_sim()
    write_contacts(tmp_path / "in.csv", 3)
    secret = "S3cret-Ledger-Pw"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    done = subprocess.run(
        [
            sys.executable, "-m", "octave_bulk", "run", str(tmp_path / "in.csv"),
            "-o", str(tmp_path / "a.ndjson"), "--agent", "ca_test", "--base-url", sim.url,
            "--no-progress", "--ledger", f"postgresql://bob:{secret}@127.0.0.1:1/octave",
        ],
        env=env | {"OCTAVE_API_KEY": TEST_KEY},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "postgresql://bob@127.0.0.1:1/octave" in done.stderr
    assert secret not in done.stdout + done.stderr and not _mentioned(tmp_path, secret)
    assert sim.stats()["totals"].get("calls", 0) == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])  # async: submits and polls both book turns
@pytest.mark.parametrize("refused", ["rate", "heartbeat", "settle"])
def test_a_statement_the_ledger_refuses_mid_run_stops_the_run_and_the_next_run_finishes(
    make_sim: Any, tmp_path: Path, db_url: str, pg: PgServer, mode: str, refused: str
) -> None:
    sim = make_sim(latency=Latency(0.05, 0.1))
    rids = write_contacts(tmp_path / "in.csv", 300)
    limits = ("--rate", "20/s", "--concurrency", "4", "--mode", mode)
    first = start_run(sim.url, tmp_path / "in.csv", tmp_path / "a.ndjson", db_url, *limits)
    try:
        _wait_for_lines(tmp_path / "a.ndjson", 20)
        # What no wait mends (a DBA's mistake, a schema of another version, a policy or a
        # revoked grant), the rest still working: the shared rate's table goes missing; or,
        # by a trigger, the workers' rows refuse an update (its heartbeat, and its leave at
        # the end), or the contacts' rows refuse to be done (no outcome can be settled: a
        # sync call paid would be paid again).
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(_REFUSE[refused])
        first.wait(timeout=90)  # before: it waited for ever, or paid for every call
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    log = (tmp_path / "a.log").read_text(errors="replace")
    assert first.returncode == 6, log[-3000:]  # calls were sent: "may be paid, resume"
    assert _REFUSED_SAYS[refused] in log and "ledger_failed" in log
    assert pg.password not in log
    summary = json.loads((tmp_path / "a.summary.json").read_text())
    assert summary["stop_reason"] == "ledger" and summary["exit_code"] == 6
    written = {line["requestId"] for line in read_lines(tmp_path / "a.ndjson")}
    assert written and len(set(sim.stats()["successes"])) < len(rids)
    if refused == "rate":  # every answer kept: sync, each paid call's; async, the jobs
        # polled (those submitted and not polled yet are the next run's to poll, not to submit)
        paid = set(sim.stats()["successes"])
        assert written == paid if mode == "sync" else written <= paid
    with psycopg.connect(db_url, autocommit=True) as conn:  # mended: the next run finishes
        conn.execute(_MEND[refused])
    _finish(
        start_run(sim.url, tmp_path / "in.csv", tmp_path / "b.ndjson", db_url, *limits),
        tmp_path / "b.ndjson",
    )
    then = {line["requestId"] for line in read_lines(tmp_path / "b.ndjson")}
    assert written | then == set(rids)  # every contact done in the end
    paid_times = sim.stats()["successes"]
    if refused != "settle":  # each paid once and written once in all
        assert paid_times == dict.fromkeys(rids, 1) and not written & then
    else:  # paid again: only those whose settles were refused, each kept in the first output
        assert "groups of results" in log and "count as outcomes unknown" in log
        again = {rid for rid, times in paid_times.items() if times > 1}
        assert again <= written and max(paid_times.values()) <= 2
        assert len(again) < 100  # the run stopped at the first refusal, not at its end


_TRIGGER = """
CREATE FUNCTION ob_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the ledger refuses this'; END $$;
CREATE TRIGGER ob_refuse BEFORE {} FOR EACH ROW {} EXECUTE FUNCTION ob_refuse();
"""
_REFUSE = {
    "rate": "ALTER TABLE ob_rate RENAME TO ob_rate_away",
    "heartbeat": _TRIGGER.format("UPDATE ON ob_worker", ""),
    "settle": _TRIGGER.format("UPDATE ON ob_contact", "WHEN (NEW.state = 'done')"),
}
_MEND = dict.fromkeys(_REFUSE, "DROP FUNCTION ob_refuse() CASCADE")
_MEND["rate"] = "ALTER TABLE ob_rate_away RENAME TO ob_rate"
_REFUSED_SAYS = dict.fromkeys(_REFUSE, "the ledger refuses this")
_REFUSED_SAYS["rate"] = 'relation "ob_rate" does not exist'
