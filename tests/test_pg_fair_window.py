"""A binding shared window is fair to a host that starts late, and costs no throughput.

Runs on one job share a window of C permits (``--concurrency C`` on every host) against the
simulator's cap of C calls in flight, so the window binds: every permit is busy all the time.
A run that starts while the others hold every permit gets its fair share of them (the window
over the hosts), and two hungry runs keep the throughput one run alone gets. The cap is never
exceeded. Throughput is measured from the simulator's arrival times, as a ratio of two runs in
the same test, never from the test's own clock. And a permit an answer freed stays its host's
for its linger (``LINGER x permit_poll``) from that answer (not swept back with older ones: permits leaked between
hosts so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from octave_bulk.limits.pg_window import LINGER
from octave_bulk.limits.shared_pg import SharedRateLimiter
from octave_bulk.simulator import Latency
from octave_bulk.state.pg.dsn import LedgerUrl, PgConnection, connect
from octave_bulk.state.pg.schema import migrate
from tests.helpers import read_lines, start_run, wait_for_lines, write_contacts

WINDOW = 6  # the simulator's cap and every run's --concurrency: the window binds
CALL = 0.2  # seconds per call: WINDOW / CALL = 30 calls a second in all
# the rate never binds; no search: the window alone paces the runs
FLAGS = ("--concurrency", str(WINDOW), "--rate", "1000/s", "--no-adaptive")


def _finish(process: Any, out: Path) -> None:
    process.wait(timeout=240)
    log = out.with_suffix(".log").read_text(errors="replace")
    assert process.returncode == 0, log[-3000:]


def _lines(out: Path) -> int:
    return len(read_lines(out)) if out.exists() else 0


def _accepted_per_s(stats: dict[str, Any]) -> float:
    """Calls let through per second, from the first arrival to the last (simulator's clock)."""
    arrivals = zip(stats["arrivals"], stats["arrival_outcomes"], strict=True)
    ok = [at for at, outcome in arrivals if outcome == "ok"]
    return (len(ok) - 1) / (ok[-1] - ok[0])


def _never_over_the_cap(stats: dict[str, Any]) -> None:
    assert stats["max_in_flight"] <= WINDOW
    assert stats["totals"].get("over_capacity", 0) == 0  # no call ever found the cap full


@pytest.mark.slow
def test_a_run_that_starts_late_gets_a_fair_share_of_a_binding_window(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim = make_sim(max_inflight=WINDOW, latency=Latency(CALL, 0.1))
    contacts = tmp_path / "in.csv"
    rids = write_contacts(contacts, 900)  # ~30 s at 30/s
    early = [tmp_path / f"early-{n}.ndjson" for n in range(2)]
    runs = [start_run(sim.url, contacts, out, db_url, *FLAGS) for out in early]
    wait_for_lines(early[0], 30)  # the early runs hold every permit (and use them)
    before = sum(_lines(out) for out in early)
    late_out = tmp_path / "late.ndjson"
    late = start_run(sim.url, contacts, late_out, db_url, *FLAGS)
    for process, out in zip([*runs, late], [*early, late_out], strict=True):
        _finish(process, out)
    done = [_lines(out) for out in [*early, late_out]]
    assert sum(done) == len(rids)
    # A fair share of what was left when it started is a third, less its start-up time (266
    # of 845 measured); without one it got a permit only once the others ran out of work (6).
    assert done[2] >= (len(rids) - before) / 5, (before, done)
    stats = sim.stats()
    assert stats["successes"] == dict.fromkeys(rids, 1)  # each paid once
    _never_over_the_cap(stats)


@pytest.mark.slow
def test_two_hungry_runs_on_a_binding_window_keep_one_runs_throughput(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    alone_sim = make_sim(max_inflight=WINDOW, latency=Latency(CALL, 0.1))
    write_contacts(tmp_path / "alone.csv", 240)
    alone = start_run(
        alone_sim.url, tmp_path / "alone.csv", tmp_path / "alone.ndjson", db_url, *FLAGS
    )
    _finish(alone, tmp_path / "alone.ndjson")
    one_run = _accepted_per_s(alone_sim.stats())

    sim = make_sim(max_inflight=WINDOW, latency=Latency(CALL, 0.1))
    rids = write_contacts(tmp_path / "in.csv", 480, start=1000)
    outs = [tmp_path / f"pair-{n}.ndjson" for n in range(2)]
    first = start_run(sim.url, tmp_path / "in.csv", outs[0], db_url, *FLAGS)
    wait_for_lines(outs[0], 30)  # the first run holds every permit: the second must get some
    second = start_run(sim.url, tmp_path / "in.csv", outs[1], db_url, *FLAGS)
    for process, out in zip([first, second], outs, strict=True):
        _finish(process, out)
    done = [_lines(out) for out in outs]
    assert sum(done) == len(rids) and done[1] >= len(rids) / 5, done
    # Handing permits back whenever another host asked stalled both (10.4/s against 20/s),
    # handing back aged ones stalled every host at once (15.6/s): both far below this.
    two_runs = _accepted_per_s(sim.stats())
    assert two_runs >= 0.85 * one_run, (two_runs, one_run)
    _never_over_the_cap(sim.stats())
    _never_over_the_cap(alone_sim.stats())


@pytest.mark.slow
async def test_an_answers_permit_goes_back_to_every_host_only_once_unused_for_its_linger(
    db_url: str,
) -> None:
    url = LedgerUrl.parse(db_url)
    async with await connect(url) as conn:
        await migrate(conn)

    async def open_connection() -> PgConnection:
        return await connect(url)

    linger = 3.0  # a spare permit of ours goes back to every host after 3 s unused
    limiter = SharedRateLimiter(
        open_connection, key="spare", rate=1000.0, window=2, permit_poll=linger / LINGER
    )
    await limiter.open()
    try:
        first, second = await limiter.acquire(), await limiter.acquire()
        early, late = first.permit, second.permit
        await limiter.on_answer(first)  # unused from now: back to every host in 3 s
        await anyio.sleep(linger / 2)
        await limiter.on_answer(second)  # unused from now: still ours 3 s on
        await anyio.sleep(linger * 3 / 4)  # past the first's 3 s, 1.5 s before the second's
        with psycopg.connect(db_url) as conn:
            rows = conn.execute("SELECT slot, holder FROM ob_permit WHERE key = 'spare'")
            holders = dict(rows.fetchall())
        assert holders == {early: None, late: limiter.holder}
    finally:
        await limiter.aclose()
