"""One rate shared through PostgreSQL: 1, 2 or 3 worker processes get R in all, not N x R.

The rates are measured from the times each ``acquire`` returned in the worker processes
(merged), never from the test's own duration. The control runs three processes with a limiter
of their own each (separate rows): they must reach about 3 R, so the test tells a shared rate
from independent ones. Run as ``python -m tests.test_pg_limiter URL KEY RATE COUNT TASKS WINDOW
HOLD``, this
file is one such worker process: it prints ``ready``, waits for a line on stdin, acquires COUNT
turns with TASKS concurrent tasks (under a shared WINDOW of permits when not 0, each held HOLD
seconds), and prints each turn's (acquired, answered) monotonic times as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from octave_bulk.errors import RefusalHints
from octave_bulk.limits.pg_judge import REFUSED, SENT, JudgeSettings, lock_id
from octave_bulk.limits.shared_pg import SharedRateLimiter
from octave_bulk.state.pg.dsn import LedgerUrl, PgConnection, connect
from octave_bulk.state.pg.schema import migrate
from tests.pgserver import PgServer, outputs_released_together

ROOT = Path(__file__).resolve().parent.parent
RATE = 40.0
TURNS = 200  # ~5 s at 40/s in all


@pytest.fixture(scope="module")
def db_url(pg: PgServer) -> str:
    url = pg.create_database(f"limiter{os.getpid()}")

    async def schema() -> None:
        async with await connect(LedgerUrl.parse(url)) as conn:
            await migrate(conn)

    asyncio.run(schema())
    return url


@pytest.fixture
async def limiters(db_url: str) -> AsyncIterator[list[SharedRateLimiter]]:
    made: list[SharedRateLimiter] = []
    yield made
    for limiter in made:
        await limiter.aclose()


def _limiter(db_url: str, key: str, rate: float, **kw: Any) -> SharedRateLimiter:
    url = LedgerUrl.parse(db_url)

    async def open_connection() -> PgConnection:
        return await connect(url)

    return SharedRateLimiter(open_connection, key=key, rate=rate, **kw)


def _run_workers(
    db_url: str,
    keys: list[str],
    turns_each: int,
    *,
    window: int = 0,
    hold: float = 0.0,
    rate: float = RATE,
) -> list[tuple[float, float]]:
    """Start one worker process per key, release them together; returns every attempt's
    (acquired, answered) times."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")}
    env["PYTHONPATH"] = str(ROOT)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.test_pg_limiter", db_url, key, str(rate), str(turns_each), "4", str(window), str(hold)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for key in keys
    ]  # fmt: skip
    times: list[tuple[float, float]] = []
    for out in outputs_released_together(workers):
        times.extend((start, end) for start, end in json.loads(out))
    return sorted(times)


def _rate(times: list[tuple[float, float]]) -> float:
    return (len(times) - 1) / (times[-1][0] - times[0][0])


def _most_in_flight(times: list[tuple[float, float]]) -> int:
    """The most attempts held at once (an answer at the same instant as a start ends first)."""
    events = sorted([(start, 1) for start, _ in times] + [(end, -1) for _, end in times])
    level = most = 0
    for _, step in events:
        level += step
        most = max(most, level)
    return most


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_sharing_one_row_get_the_rate_in_all(db_url: str, workers: int) -> None:
    times = _run_workers(db_url, [f"shared-{workers}"] * workers, TURNS // workers)
    assert len(times) == TURNS // workers * workers
    assert _rate(times) == pytest.approx(RATE, rel=0.05)


@pytest.mark.slow
def test_control_three_independent_limiters_reach_three_times_the_rate(db_url: str) -> None:
    times = _run_workers(db_url, ["own-a", "own-b", "own-c"], TURNS // 2)
    assert _rate(times) > 2.5 * RATE


@pytest.mark.slow
def test_a_shared_window_is_never_exceeded_by_all_workers_together(db_url: str) -> None:
    shared = _run_workers(db_url, ["window"] * 3, 30, window=4, hold=0.02, rate=1000.0)
    assert len(shared) == 90 and 2 <= _most_in_flight(shared) <= 4
    # control: a window of 4 each, not shared, lets more through at once
    own = _run_workers(db_url, ["win-a", "win-b", "win-c"], 30, window=4, hold=0.02, rate=1000.0)
    assert _most_in_flight(own) > 4


async def test_a_dead_holders_permit_is_free_again_after_its_lease(
    db_url: str, limiters: list[SharedRateLimiter]
) -> None:
    dead = _limiter(db_url, "lease", 100.0, window=1, permit_lease=0.5)
    other = _limiter(db_url, "lease", 100.0, window=1, permit_lease=0.5)
    limiters += [dead, other]
    await dead.open()
    await other.open()
    held = await dead.acquire()
    assert held.permit == 1  # never handed back: its holder "died"
    before = time.monotonic()
    ticket = await other.acquire()
    assert ticket.permit == 1 and time.monotonic() - before >= 0.3
    await other.on_answer(ticket)


async def test_a_429_pauses_every_worker_sharing_the_row(
    db_url: str, limiters: list[SharedRateLimiter]
) -> None:
    first, second = _limiter(db_url, "pause", 50.0), _limiter(db_url, "pause", 50.0)
    limiters += [first, second]
    await first.open()
    await second.open()
    ticket = await first.acquire()
    pause = await first.on_429(ticket, retry_after=1.5)
    assert 1.0 < pause <= 1.5
    before = time.monotonic()
    await second.on_answer(await second.acquire())  # the other worker waits out the pause
    assert time.monotonic() - before >= pause - 0.1
    assert first.report().refused == 1 and second.report().accepted == 1
    clamped = await first.on_429(await first.acquire(), retry_after=3600)
    assert clamped <= 60.0 and first.report().retry_after_clamped == 1


async def test_a_released_turn_goes_back_to_the_schedule(
    db_url: str, limiters: list[SharedRateLimiter]
) -> None:
    slow = _limiter(db_url, "refund", 0.1)  # a turn every 10 s
    limiters.append(slow)
    await slow.open()
    ticket = await slow.acquire()
    await slow.release(ticket)
    before = time.monotonic()
    second = await slow.acquire()  # without the refund this turn would be 10 s away
    assert second.send_at - before < 5.0
    await slow.on_answer(second)
    report = slow.report()
    assert report.released == 1 and report.accepted == 1 and report.rate == 0.1


async def test_stop_wakes_a_waiter_at_once(db_url: str, limiters: list[SharedRateLimiter]) -> None:
    slow = _limiter(db_url, "stop", 0.05)  # a turn every 20 s
    limiters.append(slow)
    await slow.open()
    await slow.on_answer(await slow.acquire())
    waiter = asyncio.ensure_future(slow.acquire())
    await asyncio.sleep(0.2)
    assert not waiter.done()
    slow.stop()
    ticket = await asyncio.wait_for(waiter, timeout=10)
    assert ticket.send_at - time.monotonic() > 5.0  # its turn had not come: it was woken
    await slow.release(ticket)


@contextlib.asynccontextmanager
async def _unjudged_worker(
    db_url: str, key: str, limiters: list[SharedRateLimiter]
) -> AsyncIterator[tuple[PgConnection, SharedRateLimiter]]:
    """A worker with a judge's settings whose judge never judges: another session (yielded)
    holds the lock, so the outcomes the worker tells stay in ``ob_outcome`` to be read."""
    settings = JudgeSettings(
        rate_ceiling=None, window_ceiling=None, search_from=16.0, workspace="w", agent="a", lease=5
    )
    async with await connect(LedgerUrl.parse(db_url)) as judging:
        await judging.execute("SELECT pg_advisory_lock(%s)", (lock_id(key),))
        worker = _limiter(db_url, key, 50.0, judge=settings)
        limiters.append(worker)
        await worker.open()
        yield judging, worker


async def test_a_429_s_rate_limit_headers_reach_the_judge_with_its_outcome(
    db_url: str, limiters: list[SharedRateLimiter]
) -> None:
    """What a refusal's headers said goes to the judge with the refusal (as the search on one
    host hears it). Another session holds the judge's lock, so the outcomes stay to be read."""
    async with _unjudged_worker(db_url, "hints", limiters) as (judging, worker):
        said = RefusalHints(limit=120, remaining=0, reset=30.0)
        await worker.on_429(await worker.acquire(), 30.0, said)
        await worker.on_answer(await worker.acquire())  # its booking carries the refusal
        cur = await judging.execute(
            "SELECT hints FROM ob_outcome WHERE key = 'hints' AND kind = %s", (REFUSED,)
        )
        rows = await cur.fetchall()
    assert [row[0] for row in rows] == [
        {"limit": 120, "remaining": 0, "reset": 30.0, "window": None}
    ]


async def test_a_429_reaches_the_judge_at_once_not_with_the_next_booking(
    db_url: str, limiters: list[SharedRateLimiter]
) -> None:
    """A refusal is told as it comes (with the sends kept before it): waiting for the next
    booking, it would reach the judge after the judge counted the refused send as accepted
    (unrefused for three refusal round trips), and its verdicts would miss it."""
    async with _unjudged_worker(db_url, "at-once", limiters) as (judging, worker):
        await worker.on_429(await worker.acquire(), 1.0)  # no booking after it
        cur = await judging.execute("SELECT kind FROM ob_outcome WHERE key = 'at-once' ORDER BY id")
        kinds = [row[0] for row in await cur.fetchall()]
    assert kinds == [SENT, REFUSED]


async def _acquire_for_a_worker(
    url: str, key: str, rate: float, count: int, tasks: int, window: int, hold: float
) -> None:
    limiter = _limiter(url, key, rate, window=window or None)
    await limiter.open()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    times: list[tuple[float, float]] = []
    left = [count]

    async def task() -> None:
        while left[0] > 0:
            left[0] -= 1
            ticket = await limiter.acquire()
            acquired = time.monotonic()
            if hold:
                await asyncio.sleep(hold)
            times.append((acquired, time.monotonic()))
            await limiter.on_answer(ticket)

    await asyncio.gather(*(task() for _ in range(tasks)))
    await limiter.aclose()
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
    url, key, rate, count, tasks, window, hold = sys.argv[1:8]
    asyncio.run(
        _acquire_for_a_worker(
            url, key, float(rate), int(count), int(tasks), int(window), float(hold)
        )
    )
