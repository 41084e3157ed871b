"""The pacer's rules on a fake clock: pauses, the bracketing rate search, Retry-After parsing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from octave_bulk.http.retry import parse_retry_after
from octave_bulk.limits.adaptive import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def quiet_period(pacer: Pacer, clock: Clock, seconds: float = 2.5, calls: int = 20) -> None:
    """Simulate sending ``calls`` calls without a 429 over ``seconds``."""
    for _ in range(calls):
        clock.now += seconds / calls
        pacer._calls_since_quiet += 1
    pacer._climb()


def overload(pacer: Pacer, clock: Clock, retry_after: float | None = 1.0) -> None:
    """Two 429s close together for calls sent at the current rate: the server's limit."""
    pacer.on_429(sent_at=clock.now, retry_after=retry_after)
    clock.now += 0.01
    pacer.on_429(sent_at=clock.now - 0.005, retry_after=retry_after)


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
    assert pacer.on_429(sent_at=clock.now, retry_after=0.0) == 0.25  # a date in the past


def test_429_without_retry_after_backs_off_exponentially_with_jitter() -> None:
    clock = Clock()
    pacer = Pacer(10.0, adaptive=False, pause_backoff=1.0, pause_backoff_max=8.0, clock=clock)
    pauses = [pacer.on_429(sent_at=clock.now, retry_after=None) for _ in range(6)]
    assert 0.5 <= pauses[0] <= 1.0 and 1.0 <= pauses[1] <= 2.0 and 2.0 <= pauses[2] <= 4.0
    assert all(4.0 <= p <= 8.0 for p in pauses[3:])
    pacer.on_answer(clock.now)  # an answer resets the backoff
    assert pacer.on_429(sent_at=clock.now, retry_after=None) <= 1.0


def test_a_lone_429_at_low_volume_pauses_but_keeps_the_rate() -> None:
    clock = Clock()
    pacer = Pacer(50.0, clock=clock)
    for _ in range(3):  # sporadic 429s with the rate holding in between: noise, not a limit
        pacer.on_429(sent_at=clock.now, retry_after=0.5)
        assert pacer.paused_until == clock.now + 0.5
        clock.now += 0.5
        quiet_period(pacer, clock)
    assert pacer.rate == 50.0 and pacer.failed is None


def accepted(pacer: Pacer, clock: Clock, count: int, seconds: float = 1.0) -> None:
    """``count`` answers that were not 429s, spread over ``seconds``."""
    for _ in range(count):
        clock.now += seconds / count
        pacer.on_answer(clock.now)


def test_an_isolated_429_among_many_answers_neither_pauses_nor_slows_the_pool() -> None:
    clock = Clock()
    pacer = Pacer(50.0, clock=clock)
    for _ in range(5):  # 1 % sporadic 429s while 50/s is being accepted
        accepted(pacer, clock, 99, seconds=2.0)
        assert pacer.on_429(sent_at=clock.now - 0.05, retry_after=1.0) == 0.0
        assert pacer.paused_until <= clock.now
    assert pacer.rate == 50.0 and pacer.failed is None
    pacer._calls_since_quiet += 50
    pacer._climb()  # ... but the quiet period restarted with the last one: no climb yet
    assert pacer.rate == 50.0


def test_429s_over_five_percent_of_recent_answers_pause_and_step_down() -> None:
    clock = Clock()
    pacer = Pacer(55.0, clock=clock)
    accepted(pacer, clock, 40)
    pauses = []
    for _ in range(4):  # 429s on a growing share: the rate is over the limit
        clock.now += 0.05
        pauses.append(pacer.on_429(sent_at=clock.now - 0.02, retry_after=1.0))
    assert pauses[:2] == [0.0, 0.0]  # 1 and 2 of 41-42 answers: under 5 %
    assert pauses[2:] == [1.0, 1.0] and pacer.paused_until == pytest.approx(clock.now + 1.0)
    assert pacer.failed == 55.0 and pacer.rate is not None and pacer.rate < 55.0  # two strikes


def test_a_rate_just_above_the_limit_draws_one_429_per_cycle_and_steps_down() -> None:
    clock = Clock()
    pacer = Pacer(56.0, clock=clock)
    quiet_period(pacer, clock)  # settled at 56 (a burst allowance hid the overshoot)
    for _ in range(2):  # run ~0.85 s, one 429, pause 1 s: shorter than a quiet period
        clock.now += 0.85
        pacer._calls_since_quiet += 40
        pacer.on_429(sent_at=clock.now, retry_after=1.0)
        clock.now += 1.0
    assert pacer.rate == pytest.approx(56.0 * 0.9)


def test_stale_429s_neither_extend_the_pause_nor_escalate() -> None:
    clock = Clock()
    pacer = Pacer(100.0, clock=clock)
    pacer.on_429(sent_at=clock.now, retry_after=None)
    first = pacer.on_429(sent_at=clock.now, retry_after=None)
    paused_until = pacer.paused_until
    for _ in range(5):  # calls that were already on the wire when the pool paused
        pacer.on_429(sent_at=clock.now - 0.01, retry_after=None)
    assert pacer.paused_until == paused_until and pacer.rate == 50.0
    clock.now = paused_until + 0.1
    assert first <= 2.0
    assert pacer.on_429(sent_at=clock.now, retry_after=None) <= 4.0  # backoff level 2, not 7


def test_search_halves_then_settles_below_the_limit() -> None:
    clock = Clock()
    pacer = Pacer(200.0, clock=clock)
    overload(pacer, clock)
    assert pacer.rate == 100.0 and pacer.failed == 200.0
    stale = clock.now - 0.5  # sent before the change: says nothing about 100/s
    pacer.on_429(sent_at=stale, retry_after=1.0)
    pacer.on_429(sent_at=stale, retry_after=1.0)
    assert pacer.rate == 100.0
    clock.now += 1.5
    overload(pacer, clock)
    assert pacer.rate == 50.0 and pacer.failed == 100.0
    clock.now += 1.0  # the pause
    quiet_period(pacer, clock)
    assert pacer.good == 50.0 and pacer.rate == pytest.approx(55.0)
    overload(pacer, clock)
    assert pacer.rate == 50.0 and pacer.failed == pytest.approx(55.0)  # back to the good rate
    clock.now += 1.0
    quiet_period(pacer, clock)
    assert pacer.rate == 50.0  # 55 failed: one more step would land on it, so hold
    overload(pacer, clock)  # and now 50 fails too
    assert pacer.rate == pytest.approx(45.0) and pacer.good is None


def test_a_failed_rate_is_forgiven_and_the_ceiling_is_reached_again() -> None:
    clock = Clock()
    pacer = Pacer(60.0, clock=clock)
    overload(pacer, clock, retry_after=0.5)
    assert pacer.rate == 30.0
    clock.now += 0.5
    for _ in range(60):  # a long quiet stretch: 2.5 minutes without a 429
        quiet_period(pacer, clock)
    assert pacer.rate == 60.0 and pacer.failed is None


def test_calls_before_a_quiet_period_ends_do_not_climb() -> None:
    clock = Clock()
    pacer = Pacer(100.0, clock=clock)
    overload(pacer, clock, retry_after=0.5)
    clock.now += 3.0
    pacer._climb()  # time passed, but no calls were sent at the new rate yet
    assert pacer.rate == 50.0


def test_non_adaptive_pauses_but_keeps_the_rate() -> None:
    clock = Clock()
    pacer = Pacer(50.0, adaptive=False, clock=clock)
    pacer.on_429(sent_at=clock.now, retry_after=1.0)
    assert pacer.rate == 50.0 and pacer.paused_until == clock.now + 1.0


async def test_acquire_waits_out_the_pause() -> None:
    pacer = Pacer(None)
    pacer.on_429(sent_at=time.monotonic(), retry_after=0.3)
    started = time.monotonic()
    await pacer.acquire()
    assert time.monotonic() - started >= 0.29


async def test_acquire_spaces_calls_at_the_effective_rate() -> None:
    pacer = Pacer(1000.0)
    pacer.rate = 50.0  # as after a 429: GCRA spacing applies below the ceiling
    started = time.monotonic()
    for _ in range(11):
        await pacer.acquire()
    assert time.monotonic() - started == pytest.approx(0.2, abs=0.05)
