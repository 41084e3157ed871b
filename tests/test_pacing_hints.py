"""What a 429 says of its rate limit (``X-RateLimit-*``, IETF ``RateLimit-*``) reaches the
limiter as :class:`~octave_bulk.errors.RefusalHints` and is used as evidence (issue 23): a
refusal whose quota is spent (remaining 0) is a rate's, never a cap's, so a bucket's first
burst at slow calls is not read as a cap; a cap that says nothing of the kind is still found
exactly. Virtual time (tests/limiter_model.py) for the pacing, the simulator for the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from octave_bulk.cli import cli
from octave_bulk.errors import RefusalHints
from octave_bulk.http.retry import refusal_hints, status_error
from octave_bulk.limits.base import LimiterContext, Ticket
from octave_bulk.run.engine import run_batch
from octave_bulk.simulator import RetryAfterMix, parse_latency, parse_rate_limit
from octave_bulk.state.limits import RememberedLimits
from tests.helpers import sim_settings, write_contacts
from tests.limiter_model import Server, simulate
from tests.test_pacing_slow_calls import span_ratio
from tests.test_seam_limiter import TokenWindow
from tests.test_simulator import HEADERS, RUN, asgi_client, contact

# --- reading the headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "hints"),
    [
        (
            {"x-ratelimit-limit": "120", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "30"},
            RefusalHints(limit=120, remaining=0, reset=30.0),
        ),
        (
            {"ratelimit-limit": "10, 10;w=1", "ratelimit-remaining": "0"},
            RefusalHints(limit=10, remaining=0, window=1.0),
        ),
        ({"ratelimit": "limit=10, remaining=3, reset=4"}, RefusalHints(10, 3, 4.0)),
        (
            {"ratelimit": '"default";r=0;t=6', "ratelimit-policy": '"default";q=10;w=60'},
            RefusalHints(limit=10, remaining=0, reset=6.0, window=60.0),
        ),
        ({"retry-after": "3"}, None),
        ({"x-ratelimit-limit": "many"}, None),
    ],
)
def test_a_429_s_rate_limit_headers_become_hints(
    headers: dict[str, str], hints: RefusalHints | None
) -> None:
    assert refusal_hints(httpx.Headers(headers)) == hints


def test_only_a_429_carries_hints_and_they_say_what_they_mean() -> None:
    request = httpx.Request("POST", "http://api.test/x")
    said = {"x-ratelimit-limit": "5", "x-ratelimit-remaining": "0", "ratelimit-policy": "5;w=1"}
    refused = status_error(httpx.Response(429, headers=said, request=request), "r1")
    failed = status_error(httpx.Response(503, headers=said, request=request), "r2")
    assert refused.hints is not None and refused.hints.rate_spent
    assert refused.hints.announced_rate == 5.0
    assert failed.hints is None
    assert not RefusalHints(limit=100, remaining=57).rate_spent  # quota left: not the rate


# --- the limiter ---------------------------------------------------------------------------


def test_a_bucket_s_first_burst_with_rate_headers_is_paced_as_a_rate_not_a_cap() -> None:
    # 0.5/s with a burst of 2 and 10-s calls, no --rate: the search's first burst is refused
    # before anything comes back, level by level, as a cap of 2 would refuse it. Its 429s say
    # X-RateLimit-Remaining: 0, so they are a rate's: no window of 2 (1.25x without them).
    server = Server(rate=0.5, burst=2.0, latency=10.0, headers=True)
    limiter = simulate(server, 61, rate_ceiling=None, window_ceiling=512, first_window=32)
    assert span_ratio(server, 61, 0.5) <= 1.10
    assert limiter.report().concurrency_limited_at is None


def test_an_announced_limit_per_window_is_a_candidate_rate_not_a_setting() -> None:
    # A bucket of 0.5/s without burst says it allows 1 call per 2-s window (IETF policy): the
    # first cut goes to that rather than to the share a burst got through (1.10x without).
    server = Server(rate=0.5, latency=10.0, headers=True, policy=True)
    server.take = _understated(server, limit=1, window=2.0)  # type: ignore[method-assign]
    simulate(server, 151, rate_ceiling=None, window_ceiling=512, first_window=32)
    assert span_ratio(server, 151, 0.5) <= 1.08
    # ... and one that says far less than it allows is probed past, like any other guess.
    lying = Server(rate=5.0, shape="moving", latency=3.0, headers=True, policy=True)
    lying.take = _understated(lying, limit=1, window=1.0)  # type: ignore[method-assign]
    simulate(lying, 601, rate_ceiling=None, window_ceiling=512, first_window=32)
    assert span_ratio(lying, 601, 5.0) <= 1.25


def _understated(server: Server, limit: int, window: float) -> Any:
    """The server's take, its 429s announcing ``limit`` calls per ``window`` seconds."""
    take = server.take

    def said_less(now: float) -> bool:
        accepted = take(now)
        if server.hints is not None:
            server.hints = RefusalHints(limit, 0, server.hints.reset, window)
        return accepted

    return said_less


@pytest.mark.parametrize("cap_says", [None, RefusalHints(limit=100, remaining=57)])
def test_a_cap_is_still_found_exactly_whatever_its_429s_say_of_a_rate(
    cap_says: RefusalHints | None,
) -> None:
    # A cap of 8 whose 429s say nothing, or carry a rate's headers with quota left: no rate's
    # quota is spent, so the refusals are judged as before, and the cap is found exactly.
    server = Server(cap=8, latency=3.0)
    take = server.take

    def refused_by_cap(now: float) -> bool:
        accepted = take(now)
        if not accepted:
            server.hints = cap_says
        return accepted

    server.take = refused_by_cap  # type: ignore[method-assign]
    limiter = simulate(server, 480, rate_ceiling=None, window_ceiling=64)
    found = limiter.report().summary()
    assert limiter.window == 8
    assert found["concurrency_limited_at"] == 9
    assert found["rate"] is None


# --- the wire: the simulator's headers reach the limiter ---------------------------------------


async def test_the_simulator_s_rate_limit_says_its_quota_is_spent_and_its_cap_does_not() -> None:
    seconds = RetryAfterMix(seconds=1.0, date=0.0, absent=0.0)
    async with asgi_client(
        rate_limit=parse_rate_limit("fixed:2/min"), rate_limit_headers=True, retry_after_mix=seconds
    ) as client:
        answers = [await client.post(RUN, json=contact(f"h{i}"), headers=HEADERS) for i in range(3)]
    refused = answers[2]
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit"] == "2"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert 55 <= int(refused.headers["x-ratelimit-reset"]) <= 60
    async with asgi_client(
        rate_limit=parse_rate_limit("fixed:2/min"), retry_after_mix=seconds
    ) as client:  # off by default
        answers = [await client.post(RUN, json=contact(f"o{i}"), headers=HEADERS) for i in range(3)]
    assert "x-ratelimit-remaining" not in answers[2].headers


class HintsHeard(TokenWindow):
    """The seam's test limiter, keeping what each 429 said."""

    def __init__(self, context: LimiterContext) -> None:
        super().__init__(context, window=4)
        self.hints: list[RefusalHints | None] = []

    async def on_429(
        self, ticket: Ticket, retry_after: float | None, hints: RefusalHints | None = None
    ) -> float:
        self.hints.append(hints)
        return await super().on_429(ticket, retry_after, hints)


async def test_a_run_hands_each_429_s_hints_to_its_limiter(make_sim: Any, tmp_path: Path) -> None:
    sim = make_sim(
        rate_limit=parse_rate_limit("2/s:1"),
        rate_limit_headers=True,
        max_inflight=3,
        latency=parse_latency("2s:0"),
        time_scale=50.0,
        retry_after_mix=RetryAfterMix(1.0, 0.0, 0.0),
    )
    write_contacts(tmp_path / "in.csv", 40)
    built: list[HintsHeard] = []

    def factory(context: LimiterContext) -> HintsHeard:
        built.append(HintsHeard(context))
        return built[-1]

    summary = await run_batch(
        tmp_path / "in.csv",
        tmp_path / "out.ndjson",
        sim_settings(sim.url, max_attempts=20),
        limiter=factory,
    )
    assert summary["counts"]["succeeded"] == 40
    heard, totals = built[0].hints, sim.stats()["totals"]
    rate_refusals = totals["rate_limited"] - totals["over_capacity"]
    assert rate_refusals > 0 and totals["over_capacity"] > 0
    spent = [h for h in heard if h is not None]
    assert len(spent) == rate_refusals and all(h.rate_spent and h.limit == 2 for h in spent)
    assert heard.count(None) == totals["over_capacity"]  # the cap's 429s say nothing


# --- memory: the quota's period ---------------------------------------------------------------


def _quota_night(tmp_path: Path) -> tuple[float, Server]:
    """One night of 601 45-s calls against a moving window of 120 calls a minute, starting
    from what ``OUT.limits.json`` remembers (and remembering what it learnt there)."""
    memory, key = RememberedLimits(tmp_path / "out.limits.json"), "http://sim ca_test"
    rate, _ = memory.get(key)
    server = Server(rate=2.0, shape="moving", period=60.0, latency=45.0, sigma=0.2)
    limiter = simulate(
        server,
        601,
        rate_ceiling=None,
        window_ceiling=512,
        first_window=32,
        start_rate=rate,
        start_period=memory.period(key) if rate is not None else None,
    )
    memory.keep(key, limiter.report())
    return span_ratio(server, 601, 2.0), server


def test_a_second_night_against_a_per_minute_quota_remembers_its_period(tmp_path: Path) -> None:
    # The first night learns the quota's minute from its reset-time Retry-After and keeps it
    # with the rate; the second starts there and paces at the minute's scale: no faster
    # probes into the quota's end, so never slower than the first (it was, without the period).
    first, _ = _quota_night(tmp_path)
    kept = orjson.loads((tmp_path / "out.limits.json").read_bytes())["http://sim ca_test"]
    assert kept["period"] == pytest.approx(60.0, abs=2.0)
    second, server = _quota_night(tmp_path)
    assert second <= first and second <= 1.05
    assert server.refused <= 0.03 * server.calls


def test_a_limits_file_written_before_the_period_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "out.limits.json"
    path.write_bytes(orjson.dumps({"u a": {"rate": 1.5, "window": None, "saved_at": "x"}}))
    memory = RememberedLimits(path)
    assert (memory.get("u a"), memory.period("u a")) == ((1.5, None), None)
    memory.put("u a", 1.5, None, 60.0)
    assert (memory.get("u a"), memory.period("u a")) == ((1.5, None), 60.0)


def test_simulate_sends_rate_limit_headers_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import octave_bulk.simulator.server as server

    served: list[Any] = []

    def run_forever(app: Any, sock: Any) -> None:
        sock.close()
        served.append(app)

    monkeypatch.setattr(server, "run_forever", run_forever)
    for flag in ("--rate-limit-headers", "--no-rate-limit-headers"):
        args = ["simulate", "--port", "0", "--rate-limit", "fixed:120/min", flag]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
    assert [app.config.rate_limit_headers for app in served] == [True, False]


def test_a_second_night_from_a_remembered_rate_fills_the_window_past_32_at_once() -> None:
    # 2/s with a burst of 2 and 45-s calls (90 in flight). The remembered rate is probed up at
    # once; its isolated 429 at the full window's top level is the rate's, not a cap's, so
    # the window still doubles when full (else it held 32 for a whole latency: 1.11x).
    first_server = Server(rate=2.0, burst=2.0, latency=45.0, sigma=0.2)
    first = simulate(first_server, 601, rate_ceiling=None, window_ceiling=512, first_window=32)
    remembered = first.report().summary()["rate"]
    server = Server(rate=2.0, burst=2.0, latency=45.0, sigma=0.2)
    simulate(
        server, 601, rate_ceiling=None, window_ceiling=512, first_window=32, start_rate=remembered
    )
    assert span_ratio(server, 601, 2.0) <= min(1.05, span_ratio(first_server, 601, 2.0) + 0.01)
