"""The pacer's rules on a fake clock: pauses, AIMD decrease and growth, Retry-After parsing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from octave_bulk.pacing import Pacer, parse_retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_parse_retry_after_both_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("1.5") == 1.5  # decimals exist in the wild
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    date = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1)
    past = format_datetime(datetime.fromtimestamp(now, UTC) - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


def test_429_pauses_the_pool_for_retry_after() -> None:
    clock = Clock()
    pacer = Pacer(10.0, clock=clock)
    assert pacer.on_429(sent_at=clock.now, retry_after=2.0) == 2.0
    assert pacer.paused_until == clock.now + 2.0
    pacer.on_429(sent_at=clock.now, retry_after=900.0)  # clamped so the run stays alive
    assert pacer.paused_until == clock.now + 600.0


def test_429_without_retry_after_backs_off_exponentially_with_jitter() -> None:
    clock = Clock()
    pacer = Pacer(10.0, pause_backoff=1.0, pause_backoff_max=8.0, clock=clock)
    pauses = [pacer.on_429(sent_at=clock.now, retry_after=None) for _ in range(6)]
    assert 0.5 <= pauses[0] <= 1.0 and 1.0 <= pauses[1] <= 2.0 and 2.0 <= pauses[2] <= 4.0
    assert all(4.0 <= p <= 8.0 for p in pauses[3:])
    pacer.on_accepted()  # success resets the backoff
    assert pacer.on_429(sent_at=clock.now, retry_after=None) <= 1.0


def test_decrease_once_per_epoch_to_the_accepted_rate() -> None:
    clock = Clock()
    pacer = Pacer(100.0, clock=clock)
    clock.now += 2.0
    for _ in range(60):  # the server accepted 30/s over the last two seconds
        pacer.on_accepted()
    sent_before = clock.now - 0.1
    pacer.on_429(sent_at=sent_before, retry_after=0.0)
    assert pacer.rate == pytest.approx(27.0)  # 0.9 x accepted
    pacer.on_429(sent_at=sent_before, retry_after=0.0)  # same epoch: no second decrease
    assert pacer.rate == pytest.approx(27.0)


def test_rate_grows_back_toward_the_ceiling_without_429s() -> None:
    clock = Clock()
    pacer = Pacer(50.0, clock=clock)
    pacer.on_429(sent_at=clock.now, retry_after=0.0)
    low = pacer.rate
    assert low is not None and low == pytest.approx(45.0)
    clock.now += 5
    pacer._grow()
    assert pacer.rate == pytest.approx(45.0 * 1.01**5)
    clock.now += 3600
    pacer._grow()
    assert pacer.rate == 50.0


def test_non_adaptive_pauses_but_keeps_the_rate() -> None:
    clock = Clock()
    pacer = Pacer(50.0, adaptive=False, clock=clock)
    pacer.on_429(sent_at=clock.now, retry_after=1.0)
    assert pacer.rate == 50.0 and pacer.paused_until == clock.now + 1.0


async def test_acquire_waits_out_the_pause() -> None:
    pacer = Pacer(None)
    pacer.on_429(sent_at=0.0, retry_after=0.2)
    started = time.monotonic()
    await pacer.acquire()
    assert time.monotonic() - started >= 0.19
