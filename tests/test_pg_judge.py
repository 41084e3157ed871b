"""One adaptive judge across hosts: ``octave-bulk run`` processes sharing a PostgreSQL ledger,
with no ``--rate``, search the simulator's limit together and pace to it in all.

The rates and 429 shares are read from the simulator's arrivals (every call that reached it,
with its outcome), never from the test's own duration. The comparison has its control: three
hosts on their own file ledgers (each pacing alone: they must reach far more 429s, so the test
tells one shared search from three).
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from octave_bulk.simulator import Latency, RunningSimulator, parse_rate_limit
from tests.helpers import start_run, write_contacts

RATE = 20.0  # the simulator's limit, calls per second; nobody tells the workers
LIMIT = f"{RATE:g}:2"


def finish(
    processes: list[subprocess.Popen[str]], outs: list[Path], codes: tuple[int, ...] = (0,)
) -> None:
    for process, out in zip(processes, outs, strict=True):
        process.wait(timeout=300)
        log = out.with_suffix(".log").read_text(errors="replace")
        assert process.returncode in codes, log[-3000:]


def lists(tmp_path: Path, count: int, each: int, first: int = 0) -> list[Path]:
    """``count`` contact lists of ``each`` contacts, none shared (an agency's clients: one
    workspace limit, a list each)."""
    paths = [tmp_path / f"list{first + n}.csv" for n in range(count)]
    for n, path in enumerate(paths):
        write_contacts(path, each, start=(first + n) * each)
    return paths


def run_workers(
    sim: RunningSimulator,
    tmp_path: Path,
    name: str,
    inputs: list[Path],
    ledger: str | None,
    *extra: str,
    codes: tuple[int, ...] = (0,),
) -> None:
    """One worker per list, all at once, until each is done (exiting with one of ``codes``)."""
    outs = [tmp_path / f"{name}-{n}.ndjson" for n in range(len(inputs))]
    workers = [
        start_run(sim.url, path, out, ledger, *extra)
        for path, out in zip(inputs, outs, strict=True)
    ]
    finish(workers, outs, codes)


def accepted_rate(sim: RunningSimulator, skip: float = 0.25, since: int = 0) -> tuple[float, float]:
    """The calls accepted per second, the ``skip`` share of the first left out (the search's
    first steps), and the share of all calls refused with a 429 (of the calls after the
    first ``since``)."""
    stats = sim.stats()
    outcomes = list(zip(stats["arrivals"], stats["arrival_outcomes"], strict=True))[since:]
    ok = sorted(at for at, outcome in outcomes if outcome == "ok")
    tail = ok[int(len(ok) * skip) :]
    refused = sum(outcome == "429" for _, outcome in outcomes)
    return (len(tail) - 1) / (tail[-1] - tail[0]), refused / len(outcomes)


def shared_row(db_url: str) -> tuple[float, int, str | None]:
    """The shared row's rate, epoch and judge ((0, 0, None) before the first run made it)."""
    with psycopg.connect(db_url) as conn:
        try:
            row = conn.execute("SELECT rate, epoch, judge FROM ob_rate").fetchone()
        except psycopg.errors.UndefinedTable:
            row = None
    return (0.0, 0, None) if row is None else (float(row[0]), int(row[1]), row[2])


def remembered(db_url: str) -> float | None:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT rate FROM ob_limit").fetchone()
    return None if row is None else float(row[0])


def simulator(make_sim: Any) -> RunningSimulator:
    sim: RunningSimulator = make_sim(rate_limit=parse_rate_limit(LIMIT), latency=Latency(0.05, 0.2))
    return sim


@pytest.mark.slow
@pytest.mark.timeout(400)  # real processes, one after another: minutes on a loaded machine
def test_three_hosts_with_no_rate_find_one_limit_together_not_three(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    shared = simulator(make_sim)
    thirds = lists(tmp_path, 3, 100)
    run_workers(shared, tmp_path, "shared", thirds, db_url)
    rate_shared, refused_shared = accepted_rate(shared)
    found = (rate_shared, refused_shared)
    print("shared rate, 429 share:", found)
    # Near the limit in all (the search's own cost: probes, cuts). How its 429 share compares
    # with one host alone is a benchmark's figure (benchmarks/bench_scaleout.py), not a test's.
    assert 0.75 * RATE <= rate_shared <= 1.1 * RATE, found
    assert sum(shared.stats()["successes"].values()) == 300  # each contact paid once in all
    # The limit met together, for the next night. Seen 0.99-1.05 of it; 0.55 and 0.77 before
    # the last host's slow tail stopped lowering the rate proven (limits/proven.py).
    memory = remembered(db_url)
    assert memory is not None and 0.8 * RATE <= memory <= 1.1 * RATE, memory
    # The control: three hosts on their own file ledgers, each pacing to the whole limit (as
    # each would with a limit of its own): measured 31 % refused, against 10 % shared.
    control = simulator(make_sim)
    pacing = ("--rate", f"{RATE:g}/s", "--no-adaptive")
    # 1: at three times the limit, a contact may be refused all its attempts (left for later)
    run_workers(control, tmp_path, "own", thirds, None, *pacing, codes=(0, 1))
    _, refused_control = accepted_rate(control)
    print("control 429 share:", refused_control)
    assert refused_control > 2 * refused_shared, (refused_control, refused_shared)


@pytest.mark.slow
@pytest.mark.timeout(400)  # real processes, one after another: minutes on a loaded machine
def test_when_the_judge_is_killed_another_worker_takes_over_and_the_search_goes_on(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim = simulator(make_sim)
    outs = [tmp_path / f"w{n}.ndjson" for n in range(3)]
    inputs = lists(tmp_path, 3, 150)
    workers = [
        start_run(sim.url, path, out, db_url) for path, out in zip(inputs, outs, strict=True)
    ]
    by_pid = {process.pid: process for process in workers}
    deadline = time.monotonic() + 120
    while (judge := shared_row(db_url)[2]) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert judge is not None
    first = by_pid[int(judge.split(":")[1])]
    time.sleep(3)  # the search under way
    first.send_signal(signal.SIGKILL)
    first.wait()
    _, epoch_at_kill, _ = shared_row(db_url)
    while (now := shared_row(db_url))[2] == judge and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now[2] is not None and now[2] != judge  # another worker judges
    assert int(now[2].split(":")[1]) in by_pid
    left = [n for n, process in enumerate(workers) if process is not first]
    finish([workers[n] for n in left], [outs[n] for n in left])
    rate, epoch, _ = shared_row(db_url)
    assert epoch > epoch_at_kill  # the new judge published (and searched on)
    assert rate == pytest.approx(RATE, rel=0.2)
    tail_rate, _ = accepted_rate(sim)
    assert tail_rate == pytest.approx(RATE, rel=0.15)


@pytest.mark.slow
@pytest.mark.timeout(400)  # real processes, one after another: minutes on a loaded machine
def test_a_second_night_starts_from_the_limit_remembered_and_is_not_slower(
    make_sim: Any, tmp_path: Path, db_url: str
) -> None:
    sim = simulator(make_sim)  # one workspace: its limits are remembered under its URL
    nights = []
    for night in range(2):
        since = len(sim.stats()["arrivals"])
        run_workers(sim, tmp_path, f"night{night}", lists(tmp_path, 2, 200, 2 * night), db_url)
        nights.append(accepted_rate(sim, skip=0.0, since=since))
        if night == 0:
            memory = remembered(db_url)
            print("remembered after the first night:", memory)
            assert memory is not None and 0.8 * RATE <= memory <= 1.1 * RATE  # as above
            # The next night starts where this one settled (the row is stale by then).
            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("UPDATE ob_rate SET updated_at = '-infinity'")
    (first_rate, first_refused), (second_rate, second_refused) = nights
    found = (first_rate, second_rate, first_refused, second_refused)
    print("first and second night: rate, 429 share", found)
    # Both nights pace at the limit: their rates measured 0.95-1.05 of each other on a loaded
    # machine (nights of 20 s: shorter, the search's noise was +-15 %).
    assert second_rate >= 0.92 * first_rate, found
    # Its judge started from the memory (the log's "judge" line: where the search began).
    lines = [
        line.split()
        for path in tmp_path.glob("night1-*.log")
        for line in path.read_text().splitlines()
        if " judge holder=" in line
    ]
    started = [float(words[-1].removeprefix("rate=")) for words in lines]
    assert memory is not None and started and started[0] == pytest.approx(memory, rel=0.01)
