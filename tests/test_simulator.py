"""The simulator as a client sees it: over a real loopback socket, and via ASGITransport."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner

from octave_bulk.agents.sequence import SequenceResponse
from octave_bulk.cli import cli
from octave_bulk.simulator import (
    FAULT_KINDS,
    RateLimit,
    RetryAfterMix,
    Simulator,
    SimulatorConfig,
    parse_faults,
    parse_forced,
    parse_latency,
    parse_limit_change,
    parse_rate_limit,
    parse_retry_after_mix,
)
from tests.conftest import TEST_KEY, load_json

RUN = "/api/v2/agents/sequence/run"
HEADERS = {"api_key": TEST_KEY}


def contact(rid: str = "r1", **extra: Any) -> dict[str, Any]:
    return {
        "agentOId": "ca_test",
        "email": "maria.lopez@northwind.io",
        "firstName": "Maria",
        "lastName": "Lopez",
        "jobTitle": "VP Revenue Operations",
        "companyName": "Northwind Traders",
        "companyDomain": "northwind.io",
        "requestId": rid,
        **extra,
    }


def asgi_client(**config: Any) -> httpx.AsyncClient:
    app = Simulator(SimulatorConfig(**config))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


# --- auth and validation -------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"api_key": ""}])
async def test_missing_or_empty_key_is_401_with_envelope(headers: dict[str, str]) -> None:
    async with asgi_client() as client:
        response = await client.post(RUN, json=contact(), headers=headers)
    assert response.status_code == 401
    body = response.json()
    assert body["message"] == "Invalid API key"
    assert body["_metadata"]["message"] == "Unauthorized"
    assert body["_metadata"]["usage"] == 0


async def test_configured_key_rejects_others() -> None:
    async with asgi_client(api_key="right") as client:
        wrong = await client.post(RUN, json=contact(), headers={"api_key": "wrong"})
        right = await client.post(RUN, json=contact(), headers={"api_key": "right"})
    assert (wrong.status_code, right.status_code) == (401, 200)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"runtimeContext": {"step1": "x"}}, "runtimeContext: key 'step1' is not allowed"),
        ({"outputFormat": "pdf"}, "outputFormat: Input should be 'text', 'html' or 'markdown'"),
        ({"agentOId": None}, "exactly one of agentOId or experimentOId"),
        ({"experimentOId": "ae_1"}, "exactly one of agentOId or experimentOId"),
        ({"firstName": 7}, "firstName: Input should be a valid string"),
    ],
)
async def test_bad_body_is_400_naming_the_field(body: dict[str, Any], fragment: str) -> None:
    async with asgi_client() as client:
        response = await client.post(RUN, json=contact(**body), headers=HEADERS)
    assert response.status_code == 400
    assert fragment in response.json()["message"]


async def test_invalid_json_body_is_400() -> None:
    async with asgi_client() as client:
        response = await client.post(RUN, content=b"{not json", headers=HEADERS)
    assert response.status_code == 400
    assert "Invalid JSON" in response.json()["message"]


async def test_validate_key_route_reports_credits() -> None:
    async with asgi_client(usage_per_run=2.5, credits_max=100) as client:
        await client.post(RUN, json=contact(), headers=HEADERS)
        response = await client.get("/api/v2/api-key/validate", headers=HEADERS)
        unauthorised = await client.get("/api/v2/api-key/validate")
    assert unauthorised.status_code == 401
    credits = response.json()["data"]["credits"]
    assert credits["totalUsed"] == 2.5
    assert credits["totalRemaining"] == 97.5
    assert set(credits) >= {"totalMax", "quotaUsed", "quotaAvailable", "quotaMax", "period"}


# --- content --------------------------------------------------------------------------------


async def test_seed_example_gets_a_schema_valid_personalised_answer() -> None:
    body = load_json("seed_example_1.json")
    async with asgi_client() as client:
        response = await client.post(RUN, json=body, headers=HEADERS)
    assert response.status_code == 200
    assert 3_000 <= len(response.content) <= 7_000
    parsed = SequenceResponse.model_validate_json(response.content)
    assert parsed.found and 2 <= len(parsed.emails) <= 3
    assert parsed.metadata.credits == 1.0
    for step, email in enumerate(parsed.emails, start=1):
        assert email.email is not None and email.subject is not None
        assert "Sarah" in email.email
        assert 4 <= len(email.subject.split()) <= 10
        assert 60 <= len(email.email.split()) <= 150
        # runtimeContext.all reaches every step; instructions "1" only the first.
        assert "NICE Ltd expanded their AI partner program" in email.email
        assert ("Lead with a specific detail" in email.email) == (step == 1)


async def test_email_count_is_configurable() -> None:
    async with asgi_client(emails_min=4, emails_max=4) as client:
        response = await client.post(RUN, json=contact(), headers=HEADERS)
    assert len(response.json()["data"]["emails"]) == 4


async def test_step_keys_reach_only_their_step() -> None:
    extra = {"runtimeContext": {"2": "the team opened a Lisbon office last month"}}
    async with asgi_client(emails_min=3, emails_max=3) as client:
        response = await client.post(RUN, json=contact(**extra), headers=HEADERS)
    texts = [e["email"] for e in response.json()["data"]["emails"]]
    assert ["Lisbon office" in t for t in texts] == [False, True, False]


@pytest.mark.parametrize(
    ("fmt", "check"),
    [
        ("text", lambda t: "<p>" not in t and "**" not in t and "\n\n" in t),
        ("html", lambda t: t.startswith("<p>") and t.endswith("</p>")),
        ("markdown", lambda t: "**" in t and "<p>" not in t),
    ],
)
async def test_output_format_shapes_the_text(fmt: str, check: Any) -> None:
    async with asgi_client() as client:
        response = await client.post(RUN, json=contact(outputFormat=fmt), headers=HEADERS)
    assert all(check(e["email"]) for e in response.json()["data"]["emails"])


@pytest.mark.parametrize(
    ("lang", "greeting"), [("es", ("Hola", "Buenos")), ("de", ("Hallo", "Guten"))]
)
async def test_lang_is_honoured(lang: str, greeting: tuple[str, ...]) -> None:
    async with asgi_client() as client:
        response = await client.post(RUN, json=contact(lang=lang), headers=HEADERS)
    first = response.json()["data"]["emails"][0]["sections"]["greeting"]
    assert first.startswith(greeting)


async def test_same_seed_same_content_other_seed_other_content() -> None:
    async with asgi_client(seed=1) as a, asgi_client(seed=1) as b, asgi_client(seed=2) as c:
        texts = [
            (await client.post(RUN, json=contact(), headers=HEADERS)).json()["data"]["emails"]
            for client in (a, b, c)
        ]
    assert texts[0] == texts[1] != texts[2]


# --- latency ---------------------------------------------------------------------------------


async def test_latency_follows_the_configured_median() -> None:
    latency = parse_latency("100ms:0.2")
    async with asgi_client(latency=latency) as client:

        async def timed(i: int) -> float:
            start = time.perf_counter()
            await client.post(RUN, json=contact(f"lat{i}"), headers=HEADERS)
            return time.perf_counter() - start

        durations = sorted(await asyncio.gather(*(timed(i) for i in range(40))))
    median = durations[len(durations) // 2]
    assert 0.07 <= median <= 0.2
    assert durations[0] < durations[-1]  # a distribution, not a constant


def test_latency_presets() -> None:
    assert parse_latency("instant").median == 0
    assert parse_latency("fast").median == pytest.approx(0.05)
    assert parse_latency("realistic").median == pytest.approx(40)
    with pytest.raises(ValueError, match="bad duration"):
        parse_latency("soon")


# --- rate limit -----------------------------------------------------------------------------


async def test_rate_limit_actually_limits() -> None:
    limit = parse_rate_limit("4/s:2")
    async with asgi_client(rate_limit=limit) as client:
        first = await asyncio.gather(
            *(client.post(RUN, json=contact(f"rl{i}"), headers=HEADERS) for i in range(10))
        )
        await asyncio.sleep(0.6)  # two more tokens
        later = await asyncio.gather(
            *(client.post(RUN, json=contact(f"rl2-{i}"), headers=HEADERS) for i in range(4))
        )
        stats = (await client.get("/__simulator/stats")).json()
    assert sorted(r.status_code for r in first) == [200, 200] + [429] * 8
    assert sorted(r.status_code for r in later) == [200, 200, 429, 429]
    assert stats["totals"]["rate_limited"] == 10


@pytest.mark.parametrize("form", ["seconds", "date", "absent"])
async def test_429_retry_after_forms(form: str) -> None:
    mix = RetryAfterMix(**{k: float(k == form) for k in ("seconds", "date", "absent")})
    async with asgi_client(rate_limit=parse_rate_limit("1/min:1"), retry_after_mix=mix) as client:
        await client.post(RUN, json=contact("a"), headers=HEADERS)
        limited = await client.post(RUN, json=contact("b"), headers=HEADERS)
    assert limited.status_code == 429
    header = limited.headers.get("retry-after")
    if form == "seconds":
        assert header is not None and 1 <= int(header) <= 60
    elif form == "date":
        assert header is not None and parsedate_to_datetime(header).tzinfo is not None
    else:
        assert header is None
    assert limited.json()["_metadata"]["message"] == "Too many requests"


# --- concurrency cap ------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [False, True])
async def test_concurrency_cap_refuses_calls_beyond_it_at_once(
    make_sim: Any, retry_after: bool
) -> None:
    sim = make_sim(
        latency=parse_latency("800ms:0"), max_inflight=3, inflight_retry_after=retry_after
    )
    async with httpx.AsyncClient(base_url=sim.url, headers=HEADERS, timeout=5) as client:

        async def timed(i: int) -> tuple[httpx.Response, float]:
            start = time.perf_counter()
            response = await client.post(RUN, json=contact(f"cap{i}"))
            return response, time.perf_counter() - start

        answers = await asyncio.gather(*(timed(i) for i in range(6)))
    refused = [(r, took) for r, took in answers if r.status_code == 429]
    assert sorted(r.status_code for r, _ in answers) == [200] * 3 + [429] * 3
    for response, took in refused:
        assert took < 0.6  # at once, not after the latency
        assert response.headers.get("retry-after") == ("1" if retry_after else None)
        assert response.json()["_metadata"]["message"] == "Too many requests"
    for _ in range(100):  # the server counts a call out just after its answer has left
        if (stats := sim.stats())["in_flight"] == 0:
            break
        await asyncio.sleep(0.01)
    assert stats["max_in_flight"] == 3 and stats["in_flight"] == 0
    assert stats["totals"]["over_capacity"] == stats["totals"]["rate_limited"] == 3
    assert sorted(stats["arrival_outcomes"]) == ["429"] * 3 + ["ok"] * 3


async def test_a_call_refused_by_the_cap_takes_no_token() -> None:
    config = {"latency": parse_latency("300ms:0"), "max_inflight": 1}
    async with asgi_client(**config, rate_limit=parse_rate_limit("1/min:2")) as client:
        slow = asyncio.create_task(client.post(RUN, json=contact("a"), headers=HEADERS))
        await asyncio.sleep(0.1)
        refused = await client.post(RUN, json=contact("b"), headers=HEADERS)  # over the cap
        await slow
        second = await client.post(RUN, json=contact("c"), headers=HEADERS)  # the 2nd token
        third = await client.post(RUN, json=contact("d"), headers=HEADERS)  # no token left
        stats = (await client.get("/__simulator/stats")).json()
    assert [refused.status_code, second.status_code, third.status_code] == [429, 200, 429]
    assert stats["totals"]["over_capacity"] == 1 and stats["totals"]["rate_limited"] == 2
    assert stats["arrival_outcomes"] == ["ok", "429", "ok", "429"]


# --- a limit that changes, and the time scale -----------------------------------------------


async def test_rate_that_halves_at_the_given_time() -> None:
    # 3/s (burst 3) halving 5 s after the first call, ten times faster: 30/s, 15/s from 0.5 s.
    limit, change = parse_rate_limit("3/s:3"), parse_limit_change("5s:0.5")
    app = Simulator(SimulatorConfig(rate_limit=limit, rate_limit_change=change, time_scale=10))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        end = time.monotonic() + 1.3

        async def hammer(worker: int) -> None:
            for i in itertools.count():
                if time.monotonic() >= end:
                    return
                await client.post(RUN, json=contact(f"h{worker}-{i}"), headers=HEADERS)
                await asyncio.sleep(0.002)  # still far above 30/s, with CPU left for others

        await asyncio.gather(*(hammer(w) for w in range(3)))
    stats = app.stats()
    first, change_at, last = stats["first_call_at"], stats["limit_change_at"], end
    assert change_at == pytest.approx(first + 0.5)
    assert stats["time_scale"] == 10
    assert stats["limits"] == {"max_inflight": None, "rate": 1.5, "burst": 1.5}
    outcomes = stats["arrival_outcomes"]
    assert len(outcomes) == len(stats["arrivals"]) > 100  # far more offered than accepted
    accepted = [at for at, seen in zip(stats["arrivals"], outcomes, strict=True) if seen == "ok"]
    # Accepted calls per simulated second (real seconds x 10). The bucket starts with its
    # burst of 3; the burst also absorbs a client stalled for up to 0.1 s on a busy machine.
    before = (sum(at < change_at for at in accepted) - 3) / (change_at - first) / 10
    after = sum(at >= change_at for at in accepted) / (last - change_at) / 10
    assert (before, after) == (pytest.approx(3, rel=0.25), pytest.approx(1.5, rel=0.25))


async def test_concurrency_cap_changes_too() -> None:
    config = {"latency": parse_latency("400ms:0"), "max_inflight": 5}
    async with asgi_client(**config, rate_limit_change=(0.0, 0.5)) as client:
        statuses = await asyncio.gather(
            *(client.post(RUN, json=contact(f"c{i}"), headers=HEADERS) for i in range(6))
        )
        stats = (await client.get("/__simulator/stats")).json()
    # 5 * 0.5 = 2.5 rounds half up to 3.
    assert sorted(r.status_code for r in statuses) == [200] * 3 + [429] * 3
    assert stats["max_in_flight"] == 3 and stats["limits"]["max_inflight"] == 3


async def test_time_scale_shortens_latency() -> None:
    async with asgi_client(latency=parse_latency("1s:0"), time_scale=10) as client:
        start = time.perf_counter()
        response = await client.post(RUN, json=contact(), headers=HEADERS)
        took = time.perf_counter() - start
    assert response.status_code == 200
    assert 0.09 <= took < 0.6


def test_time_scale_shortens_a_hang(make_sim: Any) -> None:
    sim = make_sim(faults={"hang": 1.0}, hang_seconds=3.0, time_scale=10)
    start = time.perf_counter()
    assert post(sim.url, "x").status_code == 504
    assert 0.25 <= time.perf_counter() - start < 2


@pytest.mark.parametrize(
    ("scale", "config", "expected"),
    [
        (5, {"faults": {"429": 1.0}}, "0.2"),
        (5, {"faults": {"503": 1.0}}, "0.2"),
        (3, {"faults": {"429": 1.0}}, "0.334"),  # rounded up: never shorter than asked
        (0.4, {"faults": {"429": 1.0}}, "3"),  # whole seconds when slowed down
        (1, {"faults": {"503": 1.0}}, "1"),
        (5, {"rate_limit": RateLimit(rate=1 / 60, burst=1)}, "12"),  # 60 s, 5 times faster
    ],
)
async def test_time_scale_divides_retry_after(
    scale: float, config: dict[str, Any], expected: str
) -> None:
    mix = RetryAfterMix(seconds=1, date=0, absent=0)
    async with asgi_client(time_scale=scale, retry_after_mix=mix, **config) as client:
        responses = [await client.post(RUN, json=contact(r), headers=HEADERS) for r in "ab"]
    assert responses[-1].status_code in {429, 503}
    assert responses[-1].headers["retry-after"] == expected


async def test_time_scale_divides_the_cap_retry_after() -> None:
    config = {"latency": parse_latency("2s:0"), "max_inflight": 1, "inflight_retry_after": True}
    async with asgi_client(**config, time_scale=5) as client:
        slow = asyncio.create_task(client.post(RUN, json=contact("a"), headers=HEADERS))
        await asyncio.sleep(0.05)
        refused = await client.post(RUN, json=contact("b"), headers=HEADERS)
        await slow
    assert (refused.status_code, refused.headers["retry-after"]) == (429, "0.2")


# --- faults, one per kind, over a real socket ----------------------------------------------


def post(url: str, rid: str, timeout: float = 5.0) -> httpx.Response:
    return httpx.post(url + RUN, json=contact(rid), headers=HEADERS, timeout=timeout)


def _server_error(kind: str) -> Callable[[str], None]:
    def check(url: str) -> None:
        response = post(url, "x")
        assert response.status_code == int(kind)
        assert response.json()["_metadata"]["usage"] == 0

    return check


def _html_502(url: str) -> None:
    response = post(url, "x")
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        orjson.loads(response.content)


def _503_retry_after(url: str) -> None:
    response = post(url, "x")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


def _429(url: str) -> None:
    response = post(url, "x")
    assert response.status_code == 429
    assert response.json()["_metadata"]["usage"] == 0


def _hang_outlasts_the_client_timeout(url: str) -> None:
    start = time.perf_counter()
    with pytest.raises(httpx.ReadTimeout):
        post(url, "x", timeout=0.5)
    assert time.perf_counter() - start < 3


def _reset_drops_the_connection(url: str) -> None:
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        post(url, "x")


def _truncated_body(url: str) -> None:
    with httpx.stream("POST", url + RUN, json=contact("x"), headers=HEADERS) as response:
        assert response.status_code == 200
        declared = int(response.headers["content-length"])
        received = b""
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in response.iter_raw():
                received += chunk
    assert 0 < len(received) < declared


def _invalid_json_body(url: str) -> None:
    response = post(url, "x")
    assert response.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


def _not_found(url: str) -> None:
    response = post(url, "x")
    assert response.status_code == 200
    parsed = SequenceResponse.model_validate_json(response.content)
    assert parsed.found is False and parsed.emails == []


FAULT_CHECKS: dict[str, Callable[[str], None]] = {
    "429": _429,
    "500": _server_error("500"),
    "502": _html_502,
    "503": _503_retry_after,
    "504": _server_error("504"),
    "hang": _hang_outlasts_the_client_timeout,
    "reset": _reset_drops_the_connection,
    "truncate": _truncated_body,
    "invalid_json": _invalid_json_body,
    "not_found": _not_found,
}
"""What a client sees for each injectable fault kind, one check per kind."""


@pytest.mark.parametrize("kind", sorted(FAULT_CHECKS))
def test_fault_kind_as_a_client_sees_it(make_sim: Any, kind: str) -> None:
    sim = make_sim(faults={kind: 1.0})
    FAULT_CHECKS[kind](sim.url)
    # The simulator confirms that this call met this fate, and only this one.
    fates = {k: v for k, v in sim.stats()["totals"].items() if k.startswith("fate_")}
    assert fates == {f"fate_{kind}": 1}


def test_hang_ends_with_504_after_hang_seconds(make_sim: Any) -> None:
    response = post(make_sim(faults={"hang": 1.0}, hang_seconds=0.2).url, "x")
    assert response.status_code == 504


def test_every_fault_kind_has_a_test() -> None:
    """Both sides come from code: a kind added to the simulator without a check fails here."""
    [mark] = [m for m in test_fault_kind_as_a_client_sees_it.pytestmark if m.name == "parametrize"]
    argnames, values = mark.args[:2]
    assert argnames == "kind"
    assert sorted(values) == sorted(FAULT_KINDS)


@pytest.mark.parametrize(
    ("kind", "status"), [("400", 400), ("401", 401), ("402", 402), ("403", 403)]
)
def test_forced_kinds_for_one_request_id(make_sim: Any, kind: str, status: int) -> None:
    sim = make_sim(forced={"victim": kind})
    assert post(sim.url, "victim").status_code == status
    assert post(sim.url, "bystander").status_code == 200


def test_fault_rates_are_rates(make_sim: Any) -> None:
    sim = make_sim(faults={"500": 0.3}, seed=5)
    with httpx.Client(base_url=sim.url, headers=HEADERS) as client:
        statuses = [client.post(RUN, json=contact(f"r{i}")).status_code for i in range(200)]
    assert 40 <= statuses.count(500) <= 80
    assert statuses.count(200) + statuses.count(500) == 200


# --- determinism and stats ------------------------------------------------------------------


async def _fates(url: str, concurrency: int, ids: list[str], attempts: int) -> dict[str, list[int]]:
    fates: dict[str, list[int]] = {rid: [] for rid in ids}
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:

        async def one(rid: str) -> None:
            for _ in range(attempts):
                async with gate:
                    response = await client.post(RUN, json=contact(rid), headers=HEADERS)
                fates[rid].append(response.status_code)

        await asyncio.gather(*(one(rid) for rid in ids))
    return fates


async def test_fates_do_not_depend_on_concurrency_or_timing(make_sim: Any) -> None:
    faults = parse_faults("500=0.1,502=0.1,503=0.1,504=0.1,429=0.1")
    latency = parse_latency("5ms:1.0")
    ids = [f"c{i}" for i in range(40)]
    one = await _fates(make_sim(seed=7, faults=faults, latency=latency).url, 1, ids, 3)
    many = await _fates(make_sim(seed=7, faults=faults, latency=latency).url, 32, ids, 3)
    other = await _fates(make_sim(seed=8, faults=faults, latency=latency).url, 32, ids, 3)
    assert one == many
    assert one != other
    assert any(status != 200 for statuses in one.values() for status in statuses)


def test_stats_count_calls_and_successes_per_request_id_and_reset(make_sim: Any) -> None:
    sim = make_sim(forced={"bad": "500"})
    for rid in ("a", "a", "b", "bad", "bad"):
        post(sim.url, rid)
    stats = httpx.get(sim.url + "/__simulator/stats").json()
    assert stats["calls"] == {"a": 2, "b": 1, "bad": 2}
    assert stats["successes"] == {"a": 2, "b": 1}
    assert stats["totals"]["calls"] == 5
    assert stats["by_status"] == {"200": 3, "500": 2}
    assert "calls" not in httpx.get(sim.url + "/__simulator/stats?detail=0").json()
    httpx.post(sim.url + "/__simulator/reset")
    assert httpx.get(sim.url + "/__simulator/stats").json()["calls"] == {}


def test_stats_keep_the_arrival_time_of_the_latest_calls(make_sim: Any) -> None:
    sim = make_sim(arrivals_kept=3)
    sent = []
    for rid in "abcde":
        sent.append(time.monotonic())
        post(sim.url, rid)
    httpx.post(sim.url + RUN, json=contact("no-key"))  # refused (401): not a call
    sent.append(time.monotonic())
    stats = httpx.get(sim.url + "/__simulator/stats").json()
    assert stats["totals"]["calls"] == 5
    # The last three calls (c, d, e), each seen between its send and the next one.
    arrivals = stats["arrivals"]
    assert len(arrivals) == 3
    for seen, before, after in zip(arrivals, sent[2:5], sent[3:6], strict=True):
        assert before <= seen <= after
    assert "arrivals" not in httpx.get(sim.url + "/__simulator/stats?detail=0").json()
    httpx.post(sim.url + "/__simulator/reset")
    assert httpx.get(sim.url + "/__simulator/stats").json()["arrivals"] == []


async def test_max_in_flight_is_counted(make_sim: Any) -> None:
    sim = make_sim(latency=parse_latency("200ms:0"))
    async with httpx.AsyncClient(base_url=sim.url) as client:
        await asyncio.gather(
            *(client.post(RUN, json=contact(f"m{i}"), headers=HEADERS) for i in range(5))
        )
    assert sim.stats()["max_in_flight"] == 5


# --- bursts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "burst"), [("2/s:5", 5), ("2/s:1", 1), ("1/min:2.5", 2)])
async def test_burst_calls_pass_at_once_then_the_rate(text: str, burst: int) -> None:
    async with asgi_client(rate_limit=parse_rate_limit(text)) as client:
        answers = await asyncio.gather(
            *(client.post(RUN, json=contact(f"b{i}"), headers=HEADERS) for i in range(8))
        )
    assert sorted(r.status_code for r in answers) == [200] * burst + [429] * (8 - burst)


def test_default_burst_is_a_tenth_of_a_second_at_least_one() -> None:
    assert parse_rate_limit("50/s") == RateLimit(rate=50, burst=5)
    assert parse_rate_limit("90/min") == RateLimit(rate=1.5, burst=1)
    for bad in ("2/s:0.5", "2/s:x", "0/s"):
        with pytest.raises(ValueError):
            parse_rate_limit(bad)
    with pytest.raises(ValueError, match="burst"):
        RateLimit(rate=1, burst=0)


# --- the simulate command ---------------------------------------------------------------------


def test_simulate_help_lists_the_limit_options() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--help"])
    assert result.exit_code == 0
    for option in (
        "--max-inflight K",
        "--inflight-retry-after / --no-inflight-retry-after",
        "--limit-change AT:FACTOR",
        "--time-scale F",
        "RATE[:BURST]",
    ):
        assert option in result.output


def test_simulate_builds_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import octave_bulk.simulator.server as server

    served: list[Simulator] = []

    def run_forever(app: Simulator, sock: Any) -> None:
        sock.close()
        served.append(app)

    monkeypatch.setattr(server, "run_forever", run_forever)
    args = ["simulate", "--port", "0", "--rate-limit", "50/s:5", "--max-inflight", "8"]
    args += ["--inflight-retry-after", "--limit-change", "30s:0.5", "--time-scale", "10"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = served[0].config
    assert config.rate_limit == RateLimit(rate=50, burst=5)
    assert (config.max_inflight, config.inflight_retry_after) == (8, True)
    assert (config.rate_limit_change, config.time_scale) == ((30.0, 0.5), 10.0)
    defaults = CliRunner().invoke(cli, ["simulate", "--port", "0"])
    assert defaults.exit_code == 0, defaults.output
    assert served[1].config == SimulatorConfig()


@pytest.mark.parametrize(
    "bad", [["--max-inflight", "0"], ["--limit-change", "30s"], ["--time-scale", "0"]]
)
def test_simulate_rejects_bad_limit_options(bad: list[str]) -> None:
    result = CliRunner().invoke(cli, ["simulate", *bad])
    assert result.exit_code == 2


# --- config parsing -------------------------------------------------------------------------


def test_config_parsers() -> None:
    assert parse_rate_limit("none") is None
    limit = parse_rate_limit("90/min")
    assert limit is not None and limit.rate == pytest.approx(1.5) and limit.burst == 1
    assert parse_faults("all=0.2")["reset"] == pytest.approx(0.02)
    assert parse_forced("a=ok,b=401") == {"a": "ok", "b": "401"}
    assert parse_retry_after_mix("seconds=1").date == 0
    for bad, parser in [
        ("fire=0.1", parse_faults),
        ("500=2", parse_faults),
        ("5/fortnight", parse_rate_limit),
        ("a=boom", parse_forced),
        ("soon=1", parse_retry_after_mix),
    ]:
        with pytest.raises(ValueError):
            parser(bad)  # type: ignore[operator]
    with pytest.raises(ValueError, match="add up to more than 1"):
        SimulatorConfig(faults={"500": 0.7, "502": 0.7})
    with pytest.raises(ValueError, match="arrivals_kept"):
        SimulatorConfig(arrivals_kept=-1)
    with pytest.raises(ValueError, match="max_inflight"):
        SimulatorConfig(max_inflight=0)
    assert parse_limit_change("30s:0.5") == (30.0, 0.5)
    assert parse_limit_change("2m:2") == (120.0, 2.0)
    assert parse_limit_change("none") is None
    for bad in ("30s", "soon:0.5", "30s:0", "30s:-1", "30s:x"):
        with pytest.raises(ValueError):
            parse_limit_change(bad)
    with pytest.raises(ValueError, match="time_scale"):
        SimulatorConfig(time_scale=0)
    with pytest.raises(ValueError, match="rate_limit_change"):
        SimulatorConfig(rate_limit_change=(-1.0, 0.5))
