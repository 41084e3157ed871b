"""Pacing when calls are slower than the gaps between sends (issue 23): rate limits of every
shape (token buckets with little burst, fixed and moving windows, per-minute quotas) are paced
at their rate, never read as a concurrency cap; a real cap is found exactly without leaving a
phantom rate behind; a remembered limit never makes a run slower; with no --concurrency the
in-flight window is not held at 32. Virtual time (tests/limiter_model.py): runs of thousands of
3-s to 45-s calls take a fraction of a second, deterministically."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from octave_bulk.http.retry import status_error
from octave_bulk.run.engine import run_batch
from octave_bulk.settings.model import Settings
from octave_bulk.simulator import RetryAfterMix, parse_latency, parse_rate_limit
from tests.conftest import TEST_KEY
from tests.helpers import simulator_process, write_contacts
from tests.limiter_model import Server, simulate
from tests.test_simulator import HEADERS, RUN, asgi_client, contact


def span_ratio(server: Server, contacts: int, rate: float) -> float:
    """Time from the first call to the last accepted one, over the ideal (contacts - 1) / R."""
    assert server.first is not None
    return (server.last_accepted - server.first) / ((contacts - 1) / rate)


def sustained(server: Server, start: float, end: float) -> float:
    """Calls accepted per second between ``start`` and ``end`` seconds after the first call."""
    assert server.first is not None
    first = server.first
    return sum(first + start <= t < first + end for t in server.accepted_at) / (end - start)


def two_nights(server: Callable[[], Server], contacts: int, **first: Any) -> tuple[Server, Server]:
    """A first run (``--concurrency`` unset), then a second on a fresh server that starts from
    the rate the first remembered; both servers, for their counts."""
    options: dict[str, Any] = {"window_ceiling": 512, "first_window": 32}
    night = server()
    found = simulate(night, contacts, **{"rate_ceiling": None, **options, **first})
    remembered = found.report().summary()["rate"]
    again = server()
    simulate(again, contacts, rate_ceiling=None, start_rate=remembered, **options)
    return night, again


def test_a_token_bucket_with_little_burst_is_paced_at_its_rate_not_as_a_cap() -> None:
    # The first case: 2/s, burst 2, 3-s calls, --rate 8/s. Two 429s in the first
    # second used to fix the window at 2 (0.65 calls/s, 2.96x the ideal time).
    server = Server(rate=2.0, burst=2.0, latency=3.0)
    limiter = simulate(server, 600, rate_ceiling=8.0, window_ceiling=64)
    assert sustained(server, 30.0, 280.0) >= 0.9 * 2.0
    assert span_ratio(server, 600, 2.0) <= 1.10
    assert limiter.report().concurrency_limited_at is None
    assert server.refused <= 0.10 * server.calls  # probes past a burst of 2 cost 429s


@pytest.mark.parametrize("shape", ["moving", "fixed"])
def test_a_window_of_5_per_second_with_3_s_calls_is_paced_at_5_per_second(shape: str) -> None:
    server = Server(rate=5.0, shape=shape, latency=3.0)
    limiter = simulate(server, 1500, rate_ceiling=None, window_ceiling=64)
    assert sustained(server, 30.0, 280.0) >= 0.9 * 5.0
    assert span_ratio(server, 1500, 5.0) <= 1.10
    assert limiter.report().concurrency_limited_at is None


def test_a_per_minute_quota_is_paced_at_its_rate_and_its_reset_wait_is_not_a_rate() -> None:
    # 120 calls a minute, counted in fixed minutes, with Retry-After at the reset: the wait
    # until the reset is no slower rate; the rate remembered is the quota's, 2/s.
    server = Server(rate=2.0, shape="fixed", period=60.0, latency=5.0)
    limiter = simulate(server, 600, rate_ceiling=None, window_ceiling=64)
    assert span_ratio(server, 600, 2.0) <= 1.20
    assert limiter.report().summary()["rate"] == pytest.approx(2.0, rel=0.10)


def test_a_real_cap_of_8_is_found_exactly_and_leaves_no_phantom_rate() -> None:
    server = Server(cap=8, latency=3.0)
    limiter = simulate(server, 480, rate_ceiling=None, window_ceiling=64)
    found = limiter.report().summary()
    assert limiter.window == 8
    assert found["concurrency_limited_at"] == 9
    assert found["rate"] is None  # no rate limit was met: none to remember
    assert server.first is not None
    assert server.last_answer - server.first <= 1.20 * 480 * 3.0 / 8
    assert server.refused <= 0.06 * server.calls


def test_a_remembered_rate_far_below_what_holds_is_abandoned_within_a_few_latencies() -> None:
    # Last night's run left 0.32/s (a quota's exhaustion cut it there); the server allows 2/s.
    server = Server(rate=2.0, shape="moving", period=60.0, latency=5.0)
    simulate(server, 600, rate_ceiling=None, window_ceiling=64, start_rate=0.32)
    assert sustained(server, 30.0, 280.0) >= 0.9 * 2.0
    assert span_ratio(server, 600, 2.0) <= 1.15


@pytest.mark.parametrize("shape", ["fixed", "moving"])
def test_a_remembered_per_minute_quota_does_not_hold_a_full_window_for_a_minute(
    shape: str,
) -> None:
    # A second night from a per-minute quota remembered (1.94/s, its 60-s period), calls of
    # 37-39 s: the window, doubled from 32 to 64, fills just as the first answers come back,
    # so it is judged by its outcomes, not at once. The period must not make that epoch last
    # a minute's outcomes (117) before the window grows again: one window's is enough
    # (the window's verdict is no rate's, which a window of a minute shows only at its end).
    slowest = []
    for latency in (37.0, 38.0, 39.0):
        for seed in (1, 2, 3):
            server = Server(
                rate=2.0, shape=shape, period=60.0, latency=latency, sigma=0.2, seed=seed
            )
            simulate(
                server,
                301,
                rate_ceiling=None,
                window_ceiling=512,
                first_window=32,
                start_rate=1.94,
                start_period=60.0,
            )
            slowest.append(sustained(server, 30.0, 90.0))
    assert min(slowest) >= 0.9 * 2.0


@pytest.mark.parametrize("remembered", [1.85, 1.94])
def test_a_quota_a_probe_from_memory_spent_early_is_waited_for_not_cut(remembered: float) -> None:
    # A second night in front of 120 calls a minute (fixed windows, Retry-After at the
    # reset), 45-s calls, from a rate and a period remembered. The first probe from memory
    # (25 % up) spends the minute's quota before its end: every call until the reset is
    # refused, whatever the rate. One such 429, pointing at the reset believed, is a spent
    # window: waited for, not eight refusals read as a rate (which cut a real run to 0.87x
    # of the quota and left that for the next night).
    server = Server(rate=2.0, shape="fixed", period=60.0, latency=45.0, sigma=0.2)
    options = {"window_ceiling": 512, "first_window": 32, "start_period": 60.7}
    simulate(server, 601, rate_ceiling=None, start_rate=remembered, **options)
    assert server.refused <= 2
    assert span_ratio(server, 601, 2.0) <= 1.05


def test_a_remembered_rate_in_front_of_a_bucket_without_burst_is_no_slower() -> None:
    # A bucket of 2/s that lets no two calls through closer than 0.5 s, 45-s calls. A new
    # rate (a probe's) must not send its first call at once after the last one: each probe
    # up from the remembered rate was refused at its first call, and the run from memory
    # took 1.08x where the first took 1.03x.
    first, second = two_nights(partial(Server, rate=2.0, burst=1.0, latency=45.0, sigma=0.2), 601)
    assert span_ratio(second, 601, 2.0) <= min(1.05, span_ratio(first, 601, 2.0))


def test_a_rate_probe_refused_once_goes_back_at_once() -> None:
    # A second night in front of a bucket of 2/s with a burst of 2, 45-s calls, from the rate
    # the first remembered. A probe a few percent over 2/s holds for its burst, then costs a
    # 429 every few seconds: it must go back at its first 429, not be kept until enough add
    # up (3.2 % of the calls were refused).
    _, second = two_nights(partial(Server, rate=2.0, burst=2.0, latency=45.0, sigma=0.2), 601)
    assert second.refused <= 0.025 * second.calls
    assert span_ratio(second, 601, 2.0) <= 1.05


def test_the_rate_remembered_is_the_one_that_held_not_a_probe_cut_short() -> None:
    # A fixed window of 2 calls a second, 45-s calls: the run ends while a probe to 2.09/s
    # is under way, not judged yet. What the next night starts from is the rate that held
    # below the limit, not the probe (which would cost it a 429 every few seconds).
    server = Server(rate=2.0, shape="fixed", latency=45.0, sigma=0.2)
    limiter = simulate(server, 601, rate_ceiling=None, window_ceiling=512, first_window=32)
    assert limiter.report().summary()["rate"] <= 2.0


def test_a_rate_held_a_few_percent_below_a_window_is_probed_closer() -> None:
    # A moving window of 2 calls a second, 45-s calls, --rate 8/s, then a second night from
    # what the first remembered: a rate held 5 % below the limit (its probes one step past
    # it refused, too close to bisect) must probe half way into that gap, not the step past
    # the limit again each time (1.06x the ideal time).
    _, second = two_nights(
        partial(Server, rate=2.0, shape="moving", latency=45.0, sigma=0.2), 601, rate_ceiling=8.0
    )
    assert span_ratio(second, 601, 2.0) <= 1.05


def test_a_window_full_as_a_new_epoch_begins_still_grows() -> None:
    # A one-minute night (121 calls) in front of a fixed window of 2/s, 45-s calls, from the
    # rate the first run remembered. The window of 64 fills just as a new epoch begins (the
    # rate moves back from a probe): it must still grow at once, not wait for an answer to
    # free a slot and a send to fill it again (5 s at 1.2 calls/s: 1.10x the ideal time).
    first, second = two_nights(
        partial(Server, rate=2.0, shape="fixed", latency=45.0, sigma=0.2), 121
    )
    assert span_ratio(second, 121, 2.0) <= min(1.05, span_ratio(first, 121, 2.0) + 0.01)


def test_a_remembered_window_below_a_rate_limit_is_abandoned() -> None:
    # A wrong cap of 5 remembered in front of a moving window of 5/s with 3-s calls (15 in
    # flight): 5 in flight never meets a refusal, and the window must still grow.
    server = Server(rate=5.0, shape="moving", latency=3.0)
    simulate(server, 1500, rate_ceiling=None, window_ceiling=64, start_window=5)
    assert sustained(server, 30.0, 280.0) >= 0.9 * 5.0


def test_with_no_concurrency_given_the_window_grows_past_32_to_what_the_rate_needs() -> None:
    # 2/s with 45-s calls: 90 calls in flight. --concurrency unset: the window starts at 32
    # and is searched up to the safety bound.
    server = Server(rate=2.0, burst=2.0, latency=45.0)
    simulate(server, 1200, rate_ceiling=None, window_ceiling=512, first_window=32)
    assert server.max_in_flight >= 80
    assert span_ratio(server, 1200, 2.0) <= 1.10


# --- the simulator's windows ----------------------------------------------------------------


@pytest.mark.parametrize("shape", ["fixed", "moving"])
async def test_the_simulator_s_windows_refuse_until_the_reset_and_say_when(shape: str) -> None:
    limit = parse_rate_limit(f"{shape}:3/min")
    seconds = RetryAfterMix(seconds=1.0, date=0.0, absent=0.0)
    async with asgi_client(rate_limit=limit, retry_after_mix=seconds) as client:
        answers = [await client.post(RUN, json=contact(f"w{i}"), headers=HEADERS) for i in range(5)]
        stats = (await client.get("/__simulator/stats")).json()
    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429]
    waits = [int(r.headers["retry-after"]) for r in answers[3:]]
    assert all(55 <= wait <= 60 for wait in waits)  # the reset, a minute after the first
    assert stats["totals"]["rate_limited"] == 2
    with pytest.raises(ValueError, match="bad fixed window"):
        parse_rate_limit("fixed:3/hour")


async def test_a_clock_window_s_first_reset_comes_at_its_phase_not_a_period_after_the_first_call() -> (
    None
):
    # fixed:3/min@40: the first call comes 40 s into a minute of the clock, so that minute
    # resets 20 s later (a gateway counting per calendar minute), not 60 s after it.
    limit = parse_rate_limit("fixed:3/min@40")
    seconds = RetryAfterMix(seconds=1.0, date=0.0, absent=0.0)
    async with asgi_client(rate_limit=limit, retry_after_mix=seconds) as client:
        answers = [await client.post(RUN, json=contact(f"c{i}"), headers=HEADERS) for i in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert 15 <= int(answers[3].headers["retry-after"]) <= 20
    for bad, error in [
        ("moving:3/min@40", "only a fixed window"),
        ("fixed:3/min@60", "below its period"),
    ]:
        with pytest.raises(ValueError, match=error):
            parse_rate_limit(bad)


# --- the engine: no --concurrency ------------------------------------------------------------


async def test_with_no_concurrency_given_a_run_holds_more_than_32_calls_in_flight(
    make_sim: Any, tmp_path: Path
) -> None:
    # 1-s calls, no limit at all: the search's rate soon sends over 32 a second, and the window
    # (the old default ceiling of 32) follows it up, towards the safety bound.
    sim = make_sim(latency=parse_latency("1s:0"))
    write_contacts(tmp_path / "in.csv", 400)
    settings = Settings.load(
        base_url=sim.url, api_key=TEST_KEY, agent_oid="ca_test", rate="none", progress=False
    )
    assert "concurrency" not in settings.model_fields_set
    summary = await run_batch(tmp_path / "in.csv", tmp_path / "out.ndjson", settings)
    assert summary["counts"]["succeeded"] == 400
    assert sim.stats()["max_in_flight"] > 32


SCALE = 30.0  # the time scale of the real run below: 45-s calls take 1.5 s


@pytest.mark.slow
def test_a_per_minute_quota_s_first_burst_is_no_cap_when_its_429s_say_to_wait(
    tmp_path: Path,
) -> None:
    # Octave's regime (45-s calls, 2/s, no limit set) behind a moving window of 120 a minute,
    # a real run against the simulator at a time scale of 30 (1.5-s calls, 60/s; refusals
    # on the loopback come back in a millisecond or two, 30-60 ms of the regime). The first
    # burst goes through, then every call is refused until the window moves, before any call
    # came back: refused level after level, that read as a cap at ~122 (remembered for the
    # next night) in 5 runs of 6. The 429s say to wait tens of seconds, which a cap cannot.
    write_contacts(tmp_path / "in.csv", 601)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCTAVE_")} | {
        "OCTAVE_API_KEY": TEST_KEY,
        "OCTAVE_START_RATE": f"{16 * SCALE:g}",  # the settings of 45-s calls, scaled
        "OCTAVE_REFUSAL_ROUND_TRIP": f"{0.1 / SCALE:g}",
        "OCTAVE_BACKOFF_INITIAL": f"{1 / SCALE:g}",
        "OCTAVE_BACKOFF_MAX": f"{60 / SCALE:g}",
    }
    with simulator_process(
        "--latency", "45s:0.2", "--rate-limit", "moving:120/min",
        "--time-scale", f"{SCALE:g}", "--retry-after-mix", "seconds=1,absent=1",
    ) as url:  # fmt: skip
        cmd = [
            sys.executable, "-m", "octave_bulk", "run", str(tmp_path / "in.csv"),
            "-o", str(tmp_path / "out.ndjson"), "--agent", "ca_test", "--base-url", url,
            "--no-progress", "--rate", "none",
        ]  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        totals = httpx.get(f"{url}/__simulator/stats", timeout=60).json()["totals"]
    assert done.returncode == 0, done.stderr[-3000:]
    remembered = json.loads((tmp_path / "out.limits.json").read_text())
    assert [limit["window"] for limit in remembered.values()] == [None], remembered  # no cap
    assert totals["rate_limited"] <= 0.05 * totals["calls"]


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"retry-after": "7"}, 7.0),  # Retry-After first, whatever else is said
        ({"retry-after": "7", "x-ratelimit-reset": "30"}, 7.0),
        (
            {"x-ratelimit-limit": "120", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "30"},
            30.0,
        ),
        ({"ratelimit-limit": "5", "ratelimit-remaining": "0", "ratelimit-reset": "2.5"}, 2.5),
        ({"ratelimit": "limit=10, remaining=0, reset=4"}, 4.0),  # the IETF draft's field
        ({"ratelimit": '"default";r=0;t=6', "ratelimit-policy": '"default";q=10;w=60'}, 6.0),
        ({"x-ratelimit-reset": str(int(1_900_000_000 + 12))}, 12.0),  # a UNIX time
        ({"x-ratelimit-reset": "1700000000"}, None),  # a UNIX time in the past: no evidence
        ({"x-ratelimit-reset": "soon"}, None),
        ({}, None),
    ],
)
def test_a_429_says_when_its_window_resets_with_rate_limit_headers(
    headers: dict[str, str], wait: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers that send no Retry-After often send X-RateLimit-* or IETF RateLimit-* headers:
    their reset is the wait (and teaches the limiter the window); never trusted past them."""
    monkeypatch.setattr("octave_bulk.http.retry.time.time", lambda: 1_900_000_000.0)
    request = httpx.Request("POST", "http://api.test/x")
    refused = httpx.Response(429, headers=headers, json={"message": "slow down"}, request=request)
    error = status_error(refused, "r1")
    assert error.retry_after == (pytest.approx(wait) if wait is not None else None)
